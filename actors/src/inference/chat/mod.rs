//! The chat engine and its pool: [`ChatModel`], a GGUF model through
//! llama.cpp, and the [`ChatPool`] whose workers each own a [`Decoder`]:
//! one context running several completions together, a new one joining
//! between steps.

mod completion;
mod llama;
mod pool;
mod worker;

pub use self::completion::{FinishReason, Progress, SamplingParams};
pub use self::llama::{llama_has_amx, ChatModel, Decoder, Sequence, MAX_SLOTS};
pub use self::pool::{ChatEvent, ChatEvents, ChatPool};
