//! What a request may ask, checked before anything reaches a model or the
//! guard: text sizes and characters, counts of messages and inputs, the
//! sampling fields, the roles and contents of chat messages, and the
//! OpenAI fields Blaze accepts without acting on them (others are refused
//! by name, as OpenAI refuses arguments it does not know). What a
//! structured output asks for is read in `structured.rs`, tools in
//! `tools.rs`.

use std::collections::BTreeMap;

use serde_json::Value;

use blaze_actors::inference::ChatPool;

use super::request::{Content, Message, Sampling, Stop};
use super::tools::{assistant_text, result_text, MOST_TOOLS};
use super::Endpoint;
use crate::error::{ApiError, ErrorCode};
use crate::settings::ValidationSettings;

/// A text bound for a model: at most `max_text_chars` characters, and no
/// control character but tab, line feed and carriage return.
pub fn check_text(
    text: &str,
    field: impl Fn() -> String,
    limits: &ValidationSettings,
) -> Result<(), ApiError> {
    // Bytes bound characters from above: count only when it may matter.
    if text.len() > limits.max_text_chars {
        let characters = text.chars().count();
        if characters > limits.max_text_chars {
            let field = field();
            return Err(ApiError::bad_request(
                ErrorCode::TextTooLong,
                format!(
                    "`{field}` has {characters} characters; at most {} are accepted",
                    limits.max_text_chars
                ),
            )
            .with_param(field));
        }
    }
    if let Some(control) =
        text.bytes().find(|&byte| (byte < 0x20 && !matches!(byte, b'\t' | b'\n' | b'\r')) || byte == 0x7f)
    {
        let field = field();
        return Err(ApiError::bad_request(
            ErrorCode::InvalidCharacters,
            format!("`{field}` contains the control character U+{control:04X}; remove it"),
        )
        .with_param(field));
    }
    Ok(())
}

/// At most `limit` items of `field`.
pub fn check_count(count: usize, limit: usize, field: &str) -> Result<(), ApiError> {
    if count > limit {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyItems,
            format!("`{field}` has {count} items; at most {limit} are accepted"),
        )
        .with_param(field));
    }
    Ok(())
}

/// The fields of a body that its type does not name: OpenAI fields Blaze
/// accepts with no effect (or only with their neutral value), and nothing
/// else.
pub fn check_other_fields(other: &BTreeMap<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    let empty_object = |value: &Value| value.as_object().is_some_and(serde_json::Map::is_empty);
    let empty_array = |value: &Value| value.as_array().is_some_and(Vec::is_empty);
    for (name, value) in other {
        let chat = endpoint == Endpoint::Chat;
        let accepted = match name.as_str() {
            // Judged by `tools.rs`.
            "tools" | "tool_choice" | "parallel_tool_calls" if chat => true,
            "user" | "service_tier" | "reasoning_effort" => value.is_null() || value.is_string(),
            "metadata" => {
                value.is_null() || value.as_object().is_some_and(|map| map.values().all(Value::is_string))
            }
            "store" | "parallel_tool_calls" => value.is_null() || value.is_boolean(),
            "logit_bias" => value.is_null() || empty_object(value),
            // Judged by `logprobs.rs`.
            "logprobs" => true,
            "top_logprobs" if chat => true,
            // Judged by `structured.rs`, which names the field at fault.
            "response_format" | "structured_outputs" => true,
            "functions" if chat => value.is_null() || empty_array(value),
            "function_call" if chat => value.is_null() || matches!(value.as_str(), Some("none" | "auto")),
            "modalities" if chat => value.is_null() || *value == serde_json::json!(["text"]),
            "echo" if !chat => value.is_null() || *value == Value::Bool(false),
            "best_of" if !chat => value.is_null() || *value == 1,
            "suffix" if !chat => value.is_null() || value.as_str() == Some(""),
            _ => {
                return Err(ApiError::bad_request(
                    ErrorCode::UnknownParameter,
                    format!("Unrecognized request argument supplied: {name}"),
                )
                .with_param(name.as_str()));
            }
        };
        if !accepted {
            return Err(ApiError::bad_request(
                ErrorCode::UnsupportedParameter,
                format!("`{name}` is not supported with this value; omit it or send its default"),
            )
            .with_param(name.as_str()));
        }
    }
    Ok(())
}

pub fn invalid(code: ErrorCode, param: &str, message: String) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}

/// Refuses a text too long to fit the model's window whatever its tokens,
/// before the guard, the template or the tokenizer copy it.
pub fn check_text_fits(pool: &ChatPool, bytes: usize, param: &str) -> Result<(), ApiError> {
    let model = pool.model();
    if bytes <= model.most_text_bytes() {
        return Ok(());
    }
    Err(invalid(
        ErrorCode::ContextLengthExceeded,
        param,
        format!(
            "This model's maximum context length is {} tokens; your {param} hold {bytes} bytes of text, more than that many tokens can",
            model.context_length()
        ),
    ))
}

/// The most choices one request may ask for (`n`): each takes a decoder
/// slot and its own completion tokens.
pub const MOST_CHOICES: usize = 8;

/// The choices a checked request asks for.
pub fn choices(sampling: &Sampling) -> usize {
    sampling.n.unwrap_or(1)
}

/// The sampling fields as far as no model decides them.
pub struct CheckedSampling {
    pub temperature: f32,
    pub top_p: f32,
    pub stop: Vec<String>,
    /// What the client asked for, if anything.
    pub max_tokens: Option<usize>,
}

/// Checks the ranges, `n`, the stop sequences and the `max_tokens` limit.
pub fn check_sampling(sampling: &Sampling, limits: &ValidationSettings) -> Result<CheckedSampling, ApiError> {
    if sampling.n.is_some_and(|n| !(1..=MOST_CHOICES).contains(&n)) {
        let message = format!("n must be between 1 and {MOST_CHOICES}");
        return Err(invalid(ErrorCode::InvalidN, "n", message));
    }
    let temperature = sampling.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        let message = "temperature must be between 0 and 2".to_owned();
        return Err(invalid(ErrorCode::InvalidTemperature, "temperature", message));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(
            ErrorCode::InvalidTopP,
            "top_p",
            "top_p must be above 0 and at most 1".to_owned(),
        ));
    }
    for (name, value) in
        [("presence_penalty", sampling.presence_penalty), ("frequency_penalty", sampling.frequency_penalty)]
    {
        if value.is_some_and(|value| !(-2.0..=2.0).contains(&value)) {
            return Err(invalid(ErrorCode::InvalidPenalty, name, format!("{name} must be between -2 and 2")));
        }
    }
    let stop = check_stop(sampling.stop.as_ref(), limits)?;
    let max_tokens = check_max_tokens(sampling.max_completion_tokens.or(sampling.max_tokens), limits)?;
    Ok(CheckedSampling { temperature, top_p, stop, max_tokens })
}

fn check_stop(stop: Option<&Stop>, limits: &ValidationSettings) -> Result<Vec<String>, ApiError> {
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop.clone()],
        Some(Stop::Many(stops)) => stops.clone(),
    };
    if stop.len() > limits.max_stop_sequences || stop.iter().any(String::is_empty) {
        let message = format!("stop takes at most {} non-empty strings", limits.max_stop_sequences);
        return Err(invalid(ErrorCode::InvalidStop, "stop", message));
    }
    for (index, sequence) in stop.iter().enumerate() {
        check_text(sequence, || format!("stop[{index}]"), limits)?;
    }
    Ok(stop)
}

/// The one place `max_tokens` (or `max_completion_tokens`) is bounded by
/// the configuration; the model's window bounds it in `sampling_params`.
fn check_max_tokens(asked: Option<usize>, limits: &ValidationSettings) -> Result<Option<usize>, ApiError> {
    match asked {
        Some(0) => Err(invalid(
            ErrorCode::InvalidMaxTokens,
            "max_tokens",
            "max_tokens must be at least 1".to_owned(),
        )),
        Some(max) if max > limits.max_tokens => {
            let message = format!("max_tokens is {max}; at most {} is accepted", limits.max_tokens);
            Err(invalid(ErrorCode::InvalidMaxTokens, "max_tokens", message))
        }
        asked => Ok(asked),
    }
}

/// The messages as (role, text) turns, developer read as system; the
/// texts are moved, not copied. An assistant's earlier tool calls are
/// written after its text as the model writes them; a tool's result (it
/// must answer a call of the assistant message before it) becomes a user
/// turn, the results of one message's calls together.
pub fn chat_turns(
    messages: Vec<Message>,
    limits: &ValidationSettings,
) -> Result<Vec<(String, String)>, ApiError> {
    if messages.is_empty() {
        return Err(invalid(ErrorCode::InvalidMessages, "messages", "messages must not be empty".to_owned()));
    }
    check_count(messages.len(), limits.max_messages, "messages")?;
    let mut turns: Vec<(String, String)> = Vec::with_capacity(messages.len());
    // The ids of the calls the last assistant message made.
    let mut calls: Vec<String> = Vec::new();
    let mut after_result = false;
    for (index, message) in messages.into_iter().enumerate() {
        let Message { role, content, tool_calls, tool_call_id } = message;
        if !matches!(role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
            let message =
                format!("messages[{index}].role must be system, developer, user, assistant or tool");
            return Err(invalid(ErrorCode::InvalidRole, &format!("messages[{index}].role"), message));
        }
        let text = text_of(content, index)?;
        check_text(&text, || format!("messages[{index}].content"), limits)?;
        let is_result = role == "tool";
        let (role, text) = match role.as_str() {
            "developer" => ("system".to_owned(), text),
            "assistant" => {
                let tool_calls = tool_calls.unwrap_or_default();
                check_count(tool_calls.len(), MOST_TOOLS, &format!("messages[{index}].tool_calls"))?;
                calls = tool_calls.iter().map(|call| call.id.clone()).collect();
                let text = assistant_text(text, &tool_calls, index)?;
                check_text(&text, || format!("messages[{index}].tool_calls"), limits)?;
                (role, text)
            }
            "tool" => {
                if !tool_call_id.as_ref().is_some_and(|id| calls.contains(id)) {
                    let param = format!("messages[{index}].tool_call_id");
                    let message =
                        format!("{param} must be the id of a call the assistant message before it made");
                    return Err(invalid(ErrorCode::InvalidMessages, &param, message));
                }
                let text = result_text(&text);
                if after_result {
                    if let Some((_, last)) = turns.last_mut() {
                        last.push('\n');
                        last.push_str(&text);
                        continue;
                    }
                }
                ("user".to_owned(), text)
            }
            _ => {
                calls.clear();
                (role, text)
            }
        };
        after_result = is_result;
        turns.push((role, text));
    }
    Ok(turns)
}

fn text_of(content: Option<Content>, index: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|part| match (part.kind.as_str(), &part.text) {
                ("text", Some(text)) => Ok(text.as_str()),
                _ => Err(invalid(
                    ErrorCode::InvalidContent,
                    &format!("messages[{index}].content"),
                    "only text content parts are supported".to_owned(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("")),
    }
}
