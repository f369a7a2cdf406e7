//! The OpenAI response bodies Blaze sends, as typed structs: the same field
//! names and shapes as OpenAI's, so the official SDKs read them unchanged.

use std::collections::BTreeMap;

use serde::Serialize;

/// Now, in Unix seconds: the `created` of the bodies below.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// Of the prompt's tokens, those the model did not read again because
/// its worker's cache held them (prefix reuse).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: None,
        }
    }

    /// A generation's usage: how many of the prompt's tokens were cached.
    pub fn with_cached(self, cached_tokens: usize) -> Self {
        Self { prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }), ..self }
    }
}

/// `chat.completion`, `chat.completion.chunk` and `text_completion`: one
/// envelope around the endpoint's choices.
#[derive(Debug, Serialize)]
pub struct Completion<'a, C> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    /// Always null: no fingerprint of the serving configuration is given.
    pub system_fingerprint: Option<&'static str>,
    pub choices: Vec<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A choice of `chat.completion`.
#[derive(Debug, Serialize)]
pub struct ChatChoice<'a> {
    pub index: usize,
    pub message: AssistantMessage<'a>,
    /// Null unless asked for.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'a str,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    /// Null when the message is only tool calls.
    pub content: Option<&'a str>,
    pub refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
}

/// A call of one of the request's tools.
#[derive(Debug, Serialize)]
pub struct ToolCall<'a> {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionCall<'a> {
    pub name: &'a str,
    /// JSON text, as OpenAI gives it.
    pub arguments: &'a str,
}

/// What a chunk adds to one call: its id, type and name first (with empty
/// arguments), then fragments of its arguments.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta<'a> {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

/// A choice of `chat.completion.chunk`.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice<'a> {
    pub index: usize,
    pub delta: Delta<'a>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'a str>,
}

/// What a chunk adds to the message: the role on the first, then text or
/// part of a tool call.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

/// A choice of `text_completion`, whole or streamed.
#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    pub index: usize,
    pub text: &'a str,
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: Option<&'a str>,
}

/// Chat's `logprobs` of a choice or a chunk.
#[derive(Debug, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    pub refusal: Option<()>,
}

#[derive(Debug, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatAlternative>,
}

#[derive(Debug, Serialize)]
pub struct ChatAlternative {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// Completions' `logprobs`: parallel lists, and where each token starts
/// in the completion's text (in characters).
#[derive(Debug, Serialize)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct EmbeddingList<'a> {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: &'a str,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// `GET /v1/models/{id}`, and each entry of the list.
#[derive(Debug, Serialize)]
pub struct Model<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// What Blaze tells beyond OpenAI's fields.
    pub blaze: ModelDetails,
}

/// A catalog model's kind, state and shape (the shape while it is loaded).
#[derive(Debug, Serialize)]
pub struct ModelDetails {
    pub kind: &'static str,
    /// `ready`, `loading`, `failed` or `unloaded`; a gateway route whose
    /// targets are all taken out is `unavailable`.
    pub state: &'static str,
    /// Unloaded: by whom, `admin` or `idle` (the next request loads it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unloaded_by: Option<&'static str>,
    /// Bytes the model holds in memory now: weights, and each worker's
    /// cache (chat) or copy of the weights (embeddings); 0 unless loaded.
    pub memory_bytes: u64,
    /// Chat: tokens of one sequence's window (prompt and completion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// Embeddings: the vector's size, and the most tokens of one input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<usize>,
    /// Chat: the GGUF's weight type, its parameters and the bytes its
    /// weights hold (once, shared by the workers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_bytes: Option<u64>,
}

impl ModelDetails {
    /// A model of this kind in this state, its shape unknown.
    pub fn new(kind: &'static str, state: &'static str) -> Self {
        Self {
            kind,
            state,
            unloaded_by: None,
            memory_bytes: 0,
            context_length: None,
            dimensions: None,
            max_input_tokens: None,
            quantization: None,
            parameters: None,
            weights_bytes: None,
        }
    }
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<Model<'a>>,
}
