//! What every model's worker pool shares, whatever it computes: how a
//! request fails, the refusal at admission, why a worker loop ended, and
//! the pool's lifecycle (proven, closed for an unload, idle since when,
//! memory held).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::engine::EngineError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The worker failed (panicked) while it held the request.
    #[error("the model's worker failed while computing this request")]
    WorkerFailed,
}

/// Why a pool did not take a request.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Refused {
    /// The queue is full: come back in `retry_after_s`.
    #[error("the model's queue is full ({queued} waiting); retry in {retry_after_s} s")]
    Full { queued: usize, retry_after_s: u64 },
    /// The model was unloaded: its pool takes nothing more.
    #[error("the model was unloaded")]
    Closed,
}

/// Why a worker loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    Stopped,
    Panicked,
    /// The pool was closed (the model unloaded) and its queue is empty.
    Drained,
}

/// The state a pool's handles and workers share beside the queue.
pub struct Lifecycle {
    /// A worker has proven the model with a forward pass.
    ready: AtomicBool,
    /// Closed for an unload; a submission holds the read side while it
    /// queues, so that nothing is queued after the workers saw the pool
    /// closed and empty (it would wait forever).
    closed: RwLock<bool>,
    born: Instant,
    /// Milliseconds after `born` of the last submission or computation.
    active_at_ms: AtomicU64,
    /// Bytes the workers' engines hold (weights, caches) while they run.
    held_bytes: AtomicU64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            closed: RwLock::new(false),
            born: Instant::now(),
            active_at_ms: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
        }
    }
}

impl Lifecycle {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Runs `queue` unless the pool is closed; the close waits for it.
    pub(crate) fn admit<T>(&self, queue: impl FnOnce() -> Result<T, Refused>) -> Result<T, Refused> {
        let closed = self.closed.read();
        if *closed {
            return Err(Refused::Closed);
        }
        self.touch();
        queue()
    }

    /// Takes no more requests; the workers finish what is queued and end.
    pub fn close(&self) {
        *self.closed.write() = true;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.read()
    }

    /// Marks the pool as in use now.
    pub(crate) fn touch(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.active_at_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How long since the last submission or computation.
    pub fn idle_for(&self) -> Duration {
        let active_at = Duration::from_millis(self.active_at_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(active_at)
    }

    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Counts `bytes` as held until the guard drops (the worker ends).
    pub(crate) fn hold(&self, bytes: u64) -> Held<'_> {
        self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        Held { lifecycle: self, bytes }
    }
}

/// Memory a worker holds, counted in its pool while it lives.
pub(crate) struct Held<'a> {
    lifecycle: &'a Lifecycle,
    bytes: u64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.lifecycle.held_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
