//! `POST /tokenize` and `POST /detokenize`, in the shape of vLLM's (and
//! llama.cpp's) servers: a text, or a chat conversation through the
//! model's template (its tools too), as the model's tokens; tokens back as
//! text. For counting a prompt before sending it and for checking what a
//! template makes; nothing is generated, screened or cached.

use std::collections::BTreeMap;

use actix_web::web::Bytes;
use blaze_actors::inference::EngineError;
use blaze_actors::router::ModelHandle;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::Answer;
use super::chat::chat_prompt;
use super::request::{parse, Message};
use super::validate::{chat_turns, check_text, check_text_fits, invalid};
use super::{find_model, tools, Pipeline};
use crate::error::{ApiError, ErrorCode};

/// The most token ids one `/detokenize` takes.
pub const MOST_DETOKENIZE_TOKENS: usize = 1 << 18;

/// `POST /tokenize`: `prompt`, or `messages` (chat models).
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    /// With `messages`: the tools the template renders into the prompt.
    #[serde(default)]
    pub tools: Option<Value>,
    /// With `prompt`: the model's special tokens around it (default true).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// With `messages`: the assistant's turn opened, as a completion's
    /// prompt has it (the only way Blaze renders a conversation).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// Each token's text too.
    #[serde(default)]
    pub return_token_strs: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: String,
    pub tokens: Vec<u32>,
}

#[derive(Serialize)]
struct Tokenized {
    count: usize,
    /// The most tokens the model takes: a chat model's window, an
    /// embedding model's input limit.
    max_model_len: usize,
    tokens: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_strs: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Detokenized {
    prompt: String,
}

/// A tokenize body, from either transport.
pub async fn tokenize_from_bytes(pipeline: &Pipeline, bytes: &[u8]) -> Result<Answer, ApiError> {
    tokenize(pipeline, parse(bytes)?).await
}

/// A detokenize body, from either transport.
pub async fn detokenize_from_bytes(pipeline: &Pipeline, bytes: &[u8]) -> Result<Answer, ApiError> {
    detokenize(pipeline, parse(bytes)?).await
}

/// `POST /tokenize`.
pub async fn tokenize(pipeline: &Pipeline, body: TokenizeRequest) -> Result<Answer, ApiError> {
    let model = find_model(pipeline, &body.model).await?;
    let strings = body.return_token_strs.unwrap_or(false);
    let (tokens, max_model_len, token_strs) = match (body.prompt, body.messages) {
        (Some(prompt), None) => {
            check_text(&prompt, || "prompt".to_owned(), &pipeline.validation)?;
            if body.tools.is_some() || body.add_generation_prompt.is_some() {
                let message = "tools and add_generation_prompt go with messages, not prompt".to_owned();
                return Err(invalid(ErrorCode::InvalidRequestBody, "prompt", message));
            }
            let special = body.add_special_tokens.unwrap_or(true);
            match &model.handle {
                ModelHandle::Chat(pool) => {
                    check_text_fits(pool, prompt.len(), "prompt")?;
                    let model = pool.model();
                    let tokens = model.tokenize(&prompt, special);
                    let texts = strings.then(|| chat_texts(model, &tokens)).transpose()?;
                    (tokens, model.context_length(), texts)
                }
                ModelHandle::Embedding(pool) => {
                    let tokenizer = pool.tokenizer();
                    let tokens = tokenizer.tokenize_with(&prompt, special).map_err(input_error)?;
                    let texts =
                        strings.then(|| tokenizer.token_texts(&tokens)).transpose().map_err(input_error)?;
                    (tokens, tokenizer.max_tokens(), texts)
                }
            }
        }
        (None, Some(messages)) => {
            let ModelHandle::Chat(pool) = &model.handle else {
                let message = format!("{} is an embedding model: send prompt", body.model);
                return Err(invalid(ErrorCode::InvalidModel, "messages", message));
            };
            if body.add_special_tokens.is_some() {
                let message =
                    "add_special_tokens goes with prompt; the template writes a conversation's".to_owned();
                return Err(invalid(ErrorCode::InvalidRequestBody, "add_special_tokens", message));
            }
            if body.add_generation_prompt == Some(false) {
                let message = "Blaze renders a conversation with the assistant's turn opened only".to_owned();
                return Err(invalid(ErrorCode::UnsupportedParameter, "add_generation_prompt", message));
            }
            let turns = chat_turns(messages, &pipeline.validation)?;
            let bytes = turns.iter().map(|(role, text)| role.len() + text.len()).sum();
            check_text_fits(pool, bytes, "messages")?;
            let other: BTreeMap<String, Value> =
                body.tools.into_iter().map(|tools| ("tools".to_owned(), tools)).collect();
            let asked = tools::requested(&other)?;
            let definitions = asked.as_ref().map_or(&[][..], |asked| asked.definitions.as_slice());
            let tokens = chat_prompt(pool, &turns, definitions)?;
            let texts = strings.then(|| chat_texts(pool.model(), &tokens)).transpose()?;
            (tokens, pool.model().context_length(), texts)
        }
        _ => {
            let message = "send either prompt or messages".to_owned();
            return Err(invalid(ErrorCode::InvalidRequestBody, "prompt", message));
        }
    };
    let answer = Tokenized { count: tokens.len(), max_model_len, tokens, token_strs };
    serialized(&answer)
}

/// `POST /detokenize`.
pub async fn detokenize(pipeline: &Pipeline, body: DetokenizeRequest) -> Result<Answer, ApiError> {
    if body.tokens.len() > MOST_DETOKENIZE_TOKENS {
        let message = format!("tokens has {} ids; at most {MOST_DETOKENIZE_TOKENS}", body.tokens.len());
        return Err(invalid(ErrorCode::TooManyItems, "tokens", message));
    }
    let model = find_model(pipeline, &body.model).await?;
    let prompt = match &model.handle {
        ModelHandle::Chat(pool) => pool.model().detokenize(&body.tokens),
        ModelHandle::Embedding(pool) => pool.tokenizer().detokenize(&body.tokens),
    }
    .map_err(|error| invalid(ErrorCode::InvalidInput, "tokens", error.to_string()))?;
    serialized(&Detokenized { prompt })
}

fn chat_texts(model: &blaze_actors::inference::ChatModel, tokens: &[u32]) -> Result<Vec<String>, ApiError> {
    let texts = model.token_texts(tokens).map_err(input_error)?;
    Ok(texts.iter().map(|bytes| String::from_utf8_lossy(bytes).into_owned()).collect())
}

fn input_error(error: EngineError) -> ApiError {
    invalid(ErrorCode::InvalidInput, "prompt", error.to_string())
}

fn serialized(value: &impl Serialize) -> Result<Answer, ApiError> {
    serde_json::to_vec(value)
        .map(|bytes| Answer::json(Bytes::from(bytes)))
        .map_err(|error| ApiError::internal_failure("tokenize answer", &error))
}
