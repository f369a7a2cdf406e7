//! The chat engine and its pool: [`ChatModel`], a GGUF model through
//! llama.cpp (`llama/`), and the [`ChatPool`] whose workers each own a
//! [`Decoder`]: one context running several completions together, a new
//! one joining between steps. The pool and its workers (`pool.rs`,
//! `worker.rs`) are written against the engine traits
//! ([`ChatEngine`](crate::inference::ChatEngine)), which the llama model
//! implements (`llama/engine.rs`); `tests.rs` runs them on a fake engine.
//! `grammar/` makes the grammars a constrained completion must match;
//! `tools.rs` is the format tool calls take in the model's text.

mod completion;
mod grammar;
mod llama;
mod pool;
#[cfg(test)]
mod tests;
pub mod tools;
mod worker;

pub use self::completion::{
    Alternative, FinishReason, Progress, SamplingParams, TokenLogprob, MOST_TOP_LOGPROBS,
};
pub use self::grammar::{Grammar, GrammarError, ToolFunction, MOST_CHOICES, MOST_NESTING, MOST_REPETITION};
pub use self::llama::{llama_has_amx, ChatModel, Decoder, Sequence};
pub use self::pool::{ChatEvent, ChatEvents, ChatPool, StageTimes, Timing};
