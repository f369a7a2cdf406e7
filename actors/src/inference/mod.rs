//! Inference: the engines behind one trait per model kind.
//!
//! Embeddings run on [`Bert`], a packed-batch BERT encoder in f32. The
//! InferenceWorker actors (a pool per model on dedicated threads, fed by a
//! bounded queue, batching across requests) and the chat engine join this
//! module next.

mod bert;
mod engine;
mod kernels;

pub use self::bert::Bert;
pub use self::engine::{EmbeddingEngine, EngineError};
