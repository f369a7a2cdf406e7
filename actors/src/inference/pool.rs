//! What every model's worker pool shares, whatever it computes: how a
//! request fails, the refusal at admission, and why a worker loop ended.

use super::engine::EngineError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The worker failed (panicked) while it held the request.
    #[error("the model's worker failed while computing this request")]
    WorkerFailed,
}

/// The queue is full: come back in `retry_after_s`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the model's queue is full ({queued} waiting); retry in {retry_after_s} s")]
pub struct Overloaded {
    pub queued: usize,
    pub retry_after_s: u64,
}

/// Why a worker loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    Stopped,
    Panicked,
}
