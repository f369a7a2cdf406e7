//! Structured outputs: what a completion's text must match, read from
//! OpenAI's `response_format` (chat: `json_object`, `json_schema`) or from
//! Blaze's `structured_outputs` extension (both endpoints, in the style of
//! vLLM's guided decoding: exactly one of `json`, `regex`, `choice`,
//! `grammar`), made into the grammar the sampler enforces, and checked
//! against the model before the request is admitted.

use std::collections::BTreeMap;

use blaze_actors::inference::{ChatPool, Grammar, GrammarError};
use serde_json::{Map, Value};

use super::Endpoint;
use crate::error::{ApiError, ErrorCode};

/// The grammar a request asks its completion to match, checked against
/// the model that will enforce it.
pub fn grammar_for(
    pool: &ChatPool,
    other: &BTreeMap<String, Value>,
    endpoint: Endpoint,
) -> Result<Option<Grammar>, ApiError> {
    let Some((grammar, param)) = requested(other, endpoint)? else {
        return Ok(None);
    };
    pool.model()
        .check_grammar(&grammar)
        .map_err(|error| refused(ErrorCode::InvalidResponseFormat, param, error.to_string()))?;
    Ok(Some(grammar))
}

/// The grammar a request asks for, and the field that asked, as far as no
/// model is needed.
pub fn requested(
    other: &BTreeMap<String, Value>,
    endpoint: Endpoint,
) -> Result<Option<(Grammar, &'static str)>, ApiError> {
    let response_format = other.get("response_format").filter(|value| !value.is_null());
    let structured = other.get("structured_outputs").filter(|value| !value.is_null());
    match (response_format, structured) {
        (Some(_), Some(_)) => Err(refused(
            ErrorCode::InvalidResponseFormat,
            "structured_outputs",
            "send either response_format or structured_outputs, not both".to_owned(),
        )),
        (Some(format), None) if endpoint == Endpoint::Chat => response_format_grammar(format),
        (Some(_), None) => Err(refused(
            ErrorCode::UnknownParameter,
            "response_format",
            "Unrecognized request argument supplied: response_format (use structured_outputs on /v1/completions)"
                .to_owned(),
        )),
        (None, Some(structured)) => structured_outputs_grammar(structured).map(Some),
        (None, None) => Ok(None),
    }
}

/// OpenAI's `response_format`.
fn response_format_grammar(format: &Value) -> Result<Option<(Grammar, &'static str)>, ApiError> {
    const PARAM: &str = "response_format";
    let fields = object(format, PARAM)?;
    only_fields(fields, &["type", "json_schema"], PARAM)?;
    let kind = fields.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "json_schema" && fields.contains_key("json_schema") {
        return Err(unknown("response_format.json_schema"));
    }
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some((Grammar::json_object(), PARAM))),
        "json_schema" => json_schema_grammar(fields.get("json_schema")).map(Some),
        _ => Err(refused(
            ErrorCode::InvalidResponseFormat,
            "response_format.type",
            "response_format.type must be text, json_object or json_schema".to_owned(),
        )),
    }
}

/// `response_format.json_schema`: `name`, `schema`, `strict`, `description`.
fn json_schema_grammar(json_schema: Option<&Value>) -> Result<(Grammar, &'static str), ApiError> {
    const PARAM: &str = "response_format.json_schema";
    const SCHEMA: &str = "response_format.json_schema.schema";
    let fields = object(json_schema.unwrap_or(&Value::Null), PARAM)?;
    only_fields(fields, &["name", "schema", "strict", "description"], PARAM)?;
    let name = fields.get("name").and_then(Value::as_str).unwrap_or_default();
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'));
    if !valid_name {
        let message = "response_format.json_schema.name must be 1 to 64 letters, digits, _ or -".to_owned();
        return Err(refused(ErrorCode::InvalidResponseFormat, "response_format.json_schema.name", message));
    }
    if fields.get("description").is_some_and(|description| !description.is_string() && !description.is_null())
    {
        let message = "response_format.json_schema.description must be a string".to_owned();
        return Err(refused(
            ErrorCode::InvalidResponseFormat,
            "response_format.json_schema.description",
            message,
        ));
    }
    let strict = match fields.get("strict") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(strict)) => *strict,
        Some(_) => {
            let message = "response_format.json_schema.strict must be true or false".to_owned();
            return Err(refused(
                ErrorCode::InvalidResponseFormat,
                "response_format.json_schema.strict",
                message,
            ));
        }
    };
    let schema = fields.get("schema").ok_or_else(|| {
        refused(
            ErrorCode::InvalidResponseFormat,
            SCHEMA,
            "response_format.json_schema.schema is required".to_owned(),
        )
    })?;
    let grammar = Grammar::from_json_schema(schema, strict).map_err(|error| grammar_error(error, SCHEMA))?;
    Ok((grammar, SCHEMA))
}

/// Blaze's `structured_outputs`: exactly one of `json`, `regex`, `choice`,
/// `grammar`. A `json` schema is enforced as a strict one.
fn structured_outputs_grammar(structured: &Value) -> Result<(Grammar, &'static str), ApiError> {
    const PARAM: &str = "structured_outputs";
    let fields = object(structured, PARAM)?;
    only_fields(fields, &["json", "regex", "choice", "grammar"], PARAM)?;
    if fields.len() != 1 {
        let message = "structured_outputs takes exactly one of json, regex, choice and grammar".to_owned();
        return Err(refused(ErrorCode::InvalidResponseFormat, PARAM, message));
    }
    let (name, value) = fields.iter().next().ok_or_else(|| unknown(PARAM))?;
    let (grammar, param) = match name.as_str() {
        "json" => (Grammar::from_json_schema(value, true), "structured_outputs.json"),
        "regex" => {
            (Grammar::from_regex(text(value, "structured_outputs.regex")?), "structured_outputs.regex")
        }
        "grammar" => {
            (Grammar::from_gbnf(text(value, "structured_outputs.grammar")?), "structured_outputs.grammar")
        }
        _ => {
            let choices: Option<Vec<String>> = value.as_array().and_then(|choices| {
                choices.iter().map(|choice| choice.as_str().map(str::to_owned)).collect()
            });
            let choices = choices.ok_or_else(|| {
                let message = "structured_outputs.choice must be an array of strings".to_owned();
                refused(ErrorCode::InvalidResponseFormat, "structured_outputs.choice", message)
            })?;
            (Grammar::from_choices(&choices), "structured_outputs.choice")
        }
    };
    Ok((grammar.map_err(|error| grammar_error(error, param))?, param))
}

fn text<'a>(value: &'a Value, param: &str) -> Result<&'a str, ApiError> {
    value
        .as_str()
        .ok_or_else(|| refused(ErrorCode::InvalidResponseFormat, param, format!("{param} must be a string")))
}

fn object<'a>(value: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    value
        .as_object()
        .ok_or_else(|| refused(ErrorCode::InvalidResponseFormat, param, format!("{param} must be an object")))
}

fn only_fields(fields: &Map<String, Value>, known: &[&str], param: &str) -> Result<(), ApiError> {
    match fields.keys().find(|name| !known.contains(&name.as_str())) {
        Some(name) => Err(unknown(&format!("{param}.{name}"))),
        None => Ok(()),
    }
}

fn unknown(param: &str) -> ApiError {
    refused(ErrorCode::UnknownParameter, param, format!("Unrecognized request argument supplied: {param}"))
}

fn grammar_error(error: GrammarError, param: &str) -> ApiError {
    let code = match error {
        GrammarError::UnsupportedKeyword { .. } | GrammarError::UnsupportedRegex(_) => {
            ErrorCode::UnsupportedSchema
        }
        _ => ErrorCode::InvalidResponseFormat,
    };
    refused(code, param, error.to_string())
}

fn refused(code: ErrorCode, param: &str, message: String) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}
