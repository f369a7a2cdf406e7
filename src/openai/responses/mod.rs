//! `POST /v1/responses`, OpenAI's Responses API, stateless: the body is
//! read into a chat request (`instructions` and the `input` items as
//! messages, function tools, `text.format` as a response format,
//! `max_output_tokens`) that runs through the chat pipeline, so the
//! validation, the guard, the rate limits, the cache and tool calling are
//! the same; its answer is written back as a `response` object
//! (`output.rs`), or streamed as the Responses events (`events.rs`).
//! Nothing is stored: `previous_response_id` is refused, and `store` is
//! answered `false`.

mod events;
mod input;
mod output;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use self::input::chat_request;
use self::output::Echo;
use super::answer::{Answer, Body};
use super::chat::chat;
use super::origin::Origin;
use super::request::parse;
use super::Pipeline;
use crate::error::ApiError;
use crate::settings::ValidationSettings;

/// `POST /v1/responses`: OpenAI's fields; any other is refused by name.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or a list of items.
    pub input: Value,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Blaze's extension, as chat's `seed`: the same seed, the same output.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub text: Option<TextOptions>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub truncation: Option<String>,
    #[serde(default)]
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub max_tool_calls: Option<usize>,
    #[serde(default)]
    pub top_logprobs: Option<usize>,
    #[serde(default)]
    pub stream_options: Option<Value>,
}

/// `text`: the output's format.
#[derive(Debug, Deserialize)]
pub struct TextOptions {
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub verbosity: Option<String>,
}

/// A Responses body, from either transport.
pub async fn responses_from_bytes(
    pipeline: &Pipeline,
    origin: &Origin,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    responses(pipeline, origin, parse(bytes)?).await
}

/// `POST /v1/responses`.
pub async fn responses(
    pipeline: &Pipeline,
    origin: &Origin,
    body: ResponsesRequest,
) -> Result<Answer, ApiError> {
    let echo = Echo::of(&body);
    let (request, sources) = chat_request(body, &pipeline.validation)?;
    let answer = chat(pipeline, origin, request).await.map_err(|error| sources.renamed(error))?;
    let body = match answer.body {
        Body::Json(bytes) => Body::Json(echo.whole(&bytes)?),
        Body::Stream(pieces) => Body::Stream(events::events(echo, pieces)),
    };
    Ok(Answer { body, ..answer })
}

/// A Responses body checked as far as no model, client or guard is
/// needed (the request fuzz target drives it).
pub fn check_responses_body(bytes: &[u8], limits: &ValidationSettings) -> Result<(), ApiError> {
    let body: ResponsesRequest = parse(bytes)?;
    let (request, sources) = chat_request(body, limits)?;
    super::chat::check_chat_request(request, limits).map_err(|error| sources.renamed(error))
}
