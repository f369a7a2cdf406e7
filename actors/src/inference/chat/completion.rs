//! What a chat completion asks for, and what each decoding step gives
//! back: the vocabulary between the chat pool and any chat engine.

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
