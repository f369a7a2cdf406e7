//! Inference: the engines behind one trait per model kind.
//!
//! Embeddings run on [`Bert`], a packed-batch BERT encoder in f32. Each
//! model has an [`EmbeddingPool`]: a bounded queue that sheds load at
//! admission, and [`InferenceWorker`] actors, each owning a dedicated
//! thread that batches requests across callers.
//!
//! Chat runs on [`ChatModel`], a GGUF model through llama.cpp. Each model
//! has a [`ChatPool`] whose workers each own a [`Decoder`]: one context
//! running several completions together, a new one joining between steps.

mod actor;
mod amx;
mod bert;
mod chat;
mod engine;
mod kernels;
mod llama;
mod pool;

pub use self::actor::InferenceWorker;
pub use self::bert::{Bert, BertTokenizer};
pub use self::chat::{ChatEvent, ChatEvents, ChatPool};
pub use self::engine::{EmbeddingEngine, EngineError};
pub use self::llama::{
    llama_has_amx, ChatModel, Decoder, FinishReason, Progress, SamplingParams, Sequence, MAX_SLOTS,
};
pub use self::pool::{BatchSettings, EmbeddingPool, EmbeddingResult, Overloaded, WorkError, WorkerExit};
