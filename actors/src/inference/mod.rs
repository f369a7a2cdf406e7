//! Inference: the engines behind one trait per model kind.
//!
//! Embeddings run on [`Bert`], a packed-batch BERT encoder in f32. Each
//! model has an [`EmbeddingPool`]: a bounded queue that sheds load at
//! admission, and [`InferenceWorker`] actors, each owning a dedicated
//! thread that batches requests across callers. The chat engine joins this
//! module next.

mod actor;
mod bert;
mod chat;
mod engine;
mod kernels;
mod llama;
mod pool;

pub use self::actor::InferenceWorker;
pub use self::bert::{Bert, BertTokenizer};
pub use self::chat::{ChatEvent, ChatPool};
pub use self::engine::{EmbeddingEngine, EngineError};
pub use self::llama::{ChatModel, FinishReason, SamplingParams};
pub use self::pool::{BatchSettings, EmbeddingPool, EmbeddingResult, Overloaded, WorkError, WorkerExit};
