//! Inference: the engines behind one trait per model kind, each kind with
//! its pool of workers.
//!
//! - `embed/`: embeddings on [`Bert`], a packed-batch BERT encoder in f32.
//!   Each model has an [`EmbeddingPool`]: a bounded queue that sheds load at
//!   admission, and workers that batch requests across callers.
//! - `chat/`: chat on [`ChatModel`], a GGUF model through llama.cpp. Each
//!   model has a [`ChatPool`] whose workers each own a [`Decoder`]: one
//!   context running several completions together, a new one joining
//!   between steps.
//!
//! Shared by both: [`InferenceWorker`], the actor owning one worker thread
//! of a pool (`actor.rs`); the engine traits and their errors
//! (`engine.rs`); how a request fails or is refused (`pool.rs`).

mod actor;
mod chat;
mod embed;
mod engine;
mod pool;

pub use self::actor::{EmbeddingLoader, InferenceWorker};
pub use self::chat::{
    llama_has_amx, tools, Alternative, ChatEvent, ChatEvents, ChatModel, ChatPool, Decoder, FinishReason,
    Grammar, GrammarError, Progress, SamplingParams, Sequence, StageTimes, Timing, TokenLogprob,
    ToolFunction, MOST_CHOICES, MOST_NESTING, MOST_REPETITION, MOST_TOP_LOGPROBS,
};
pub use self::embed::{
    BatchSettings, Bert, BertTokenizer, EmbeddingPool, EmbeddingResult, Kernels, Truncation,
};
pub use self::engine::{ChatDecoder, ChatEngine, ChatSequence, EmbeddingEngine, EngineError, MAX_SLOTS};
pub use self::pool::{Lifecycle, Refused, WorkError, WorkerExit};
