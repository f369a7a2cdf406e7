//! What a request may ask, checked before anything reaches a model or the
//! guard: text sizes and characters, counts of messages and inputs, and
//! the OpenAI fields Blaze accepts without acting on them (others are
//! refused by name, as OpenAI refuses arguments it does not know).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;
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
                "text_too_long",
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
            "invalid_characters",
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
            "too_many_items",
            format!("`{field}` has {count} items; at most {limit} are accepted"),
        )
        .with_param(field));
    }
    Ok(())
}

/// Which endpoint a body is for: some fields exist on one only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
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
            "user" | "service_tier" | "reasoning_effort" => value.is_null() || value.is_string(),
            "metadata" => {
                value.is_null() || value.as_object().is_some_and(|map| map.values().all(Value::is_string))
            }
            "store" | "parallel_tool_calls" => value.is_null() || value.is_boolean(),
            "logit_bias" => value.is_null() || empty_object(value),
            "logprobs" if chat => value.is_null() || *value == Value::Bool(false),
            "logprobs" => value.is_null() || *value == 0,
            "top_logprobs" if chat => value.is_null() || *value == 0,
            "response_format" if chat => {
                value.is_null() || value.get("type").and_then(Value::as_str) == Some("text")
            }
            "tools" | "functions" if chat => value.is_null() || empty_array(value),
            "tool_choice" | "function_call" if chat => {
                value.is_null() || matches!(value.as_str(), Some("none" | "auto"))
            }
            "modalities" if chat => value.is_null() || *value == serde_json::json!(["text"]),
            "echo" if !chat => value.is_null() || *value == Value::Bool(false),
            "best_of" if !chat => value.is_null() || *value == 1,
            "suffix" if !chat => value.is_null() || value.as_str() == Some(""),
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("Unrecognized request argument supplied: {name}"),
                )
                .with_param(name.as_str()));
            }
        };
        if !accepted {
            return Err(ApiError::bad_request(
                "unsupported_parameter",
                format!("`{name}` is not supported with this value; omit it or send its default"),
            )
            .with_param(name.as_str()));
        }
    }
    Ok(())
}
