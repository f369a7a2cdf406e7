//! What a chat completion asks for, and what each decoding step gives
//! back: the vocabulary between the chat pool and any chat engine.

use serde::{Deserialize, Serialize};

use super::grammar::Grammar;

/// How to sample one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stop: Vec<String>,
    /// What the text must match, if anything (structured outputs).
    pub grammar: Option<Grammar>,
    /// Each generated token's log probability, with this many of the most
    /// likely alternatives (0 to [`MOST_TOP_LOGPROBS`]); `None`: none.
    pub logprobs: Option<usize>,
}

/// The most alternatives a token's log probability comes with.
pub const MOST_TOP_LOGPROBS: usize = 20;

/// A generated token's log probability under the model's distribution at
/// its step: the raw logits that sampled it, before temperature,
/// penalties or a grammar shaped the choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at that step, most likely first.
    pub top: Vec<Alternative>,
}

/// One of the most likely tokens at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

impl SamplingParams {
    /// The most likely token each time, up to `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
            grammar: None,
            logprobs: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What one step did for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Its input is not all read yet; no token this step.
    Reading,
    /// Its next token was decided; the text now safe to send (may be empty:
    /// part of a character, or of a possible stop string).
    Text(String),
    /// The completion ended, with its last text.
    Finished { text: String, reason: FinishReason, completion_tokens: usize },
}
