//! A Responses body read as the chat request it asks for: `instructions`
//! and the `input` items as messages, function tools and `tool_choice` in
//! chat's shape, `text.format` as `response_format`, `max_output_tokens`
//! as `max_tokens`; the fields Blaze cannot honour refused by name.
//! [`Sources`] names a chat error's field as the Responses body spells it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::ResponsesRequest;
use crate::error::{ApiError, ErrorCode};
use crate::openai::request::{
    ChatRequest, Content, ContentPart, FunctionCall, Message, MessageToolCall, Sampling, StreamOptions,
};
use crate::openai::validate::{check_count, invalid};
use crate::settings::ValidationSettings;

/// The most `metadata` pairs, and their keys' and values' most characters,
/// as OpenAI.
const MOST_METADATA: usize = 16;
const MOST_METADATA_KEY: usize = 64;
const MOST_METADATA_VALUE: usize = 512;

/// Where each message of the chat request came from in the Responses body.
pub struct Sources {
    messages: Vec<Source>,
}

/// Where one chat message came from.
enum Source {
    Instructions,
    /// `input` as one string.
    Input,
    /// A message item at this path.
    Message(String),
    /// Function call items, the first at this path.
    Calls(String),
    /// A function call output item at this path.
    Output(String),
}

impl Sources {
    /// A chat error, its `param` named as the Responses body names it.
    pub fn renamed(&self, error: ApiError) -> ApiError {
        error.rename_param(|param| self.param(param))
    }

    fn param(&self, param: &str) -> String {
        if let Some((index, field)) = param.strip_prefix("messages[").and_then(|rest| rest.split_once(']')) {
            let source = index.parse::<usize>().ok().and_then(|index| self.messages.get(index));
            return match source {
                Some(Source::Instructions) => "instructions".to_owned(),
                Some(Source::Message(at)) => format!("{at}{field}"),
                Some(Source::Calls(at)) => at.clone(),
                Some(Source::Output(at)) => match field {
                    ".tool_call_id" => format!("{at}.call_id"),
                    ".content" => format!("{at}.output"),
                    _ => at.clone(),
                },
                Some(Source::Input) | None => "input".to_owned(),
            };
        }
        if let Some(rest) = param.strip_prefix("response_format") {
            return format!("text.format{}", rest.strip_prefix(".json_schema").unwrap_or(rest));
        }
        if let Some((index, rest)) = param.strip_prefix("tools[").and_then(|rest| rest.split_once(']')) {
            return format!("tools[{index}]{}", rest.strip_prefix(".function").unwrap_or(rest));
        }
        if let Some(rest) = param.strip_prefix("tool_choice.function") {
            return format!("tool_choice{rest}");
        }
        match param {
            "messages" => "input",
            "max_tokens" | "max_completion_tokens" => "max_output_tokens",
            other => other,
        }
        .to_owned()
    }
}

/// The chat request a Responses body asks for, and where its messages
/// came from.
pub fn chat_request(
    body: ResponsesRequest,
    limits: &ValidationSettings,
) -> Result<(ChatRequest, Sources), ApiError> {
    refuse_unsupported(&body)?;
    let mut messages = Vec::new();
    let mut sources = Vec::new();
    if let Some(instructions) = body.instructions {
        messages.push(text_message("system", Content::Text(instructions)));
        sources.push(Source::Instructions);
    }
    match body.input {
        Value::String(text) => {
            messages.push(text_message("user", Content::Text(text)));
            sources.push(Source::Input);
        }
        Value::Array(items) => {
            check_count(items.len(), limits.max_messages, "input")?;
            for (index, item) in items.into_iter().enumerate() {
                read_item(item, index, &mut messages, &mut sources)?;
            }
        }
        _ => {
            let message = "input must be a string or an array of items".to_owned();
            return Err(invalid(ErrorCode::InvalidInput, "input", message));
        }
    }
    let mut other = BTreeMap::new();
    if let Some(tools) = body.tools {
        let tools = tools.into_iter().enumerate().map(|(index, tool)| chat_tool(index, tool));
        other.insert("tools".to_owned(), Value::Array(tools.collect::<Result<_, _>>()?));
    }
    if let Some(choice) = body.tool_choice {
        other.insert("tool_choice".to_owned(), chat_tool_choice(choice)?);
    }
    if let Some(parallel) = body.parallel_tool_calls {
        other.insert("parallel_tool_calls".to_owned(), Value::Bool(parallel));
    }
    if let Some(format) = body.text.and_then(|text| text.format) {
        if let Some(format) = response_format(format)? {
            other.insert("response_format".to_owned(), format);
        }
    }
    let stream = body.stream.unwrap_or(false);
    let sampling = Sampling {
        max_tokens: body.max_output_tokens,
        temperature: body.temperature,
        top_p: body.top_p,
        seed: body.seed,
        stream,
        // The usage goes into the last event's response.
        stream_options: stream.then_some(StreamOptions { include_usage: true }),
        ..Sampling::default()
    };
    let request = ChatRequest { model: body.model, messages, sampling, other };
    Ok((request, Sources { messages: sources }))
}

/// The fields of OpenAI's that a stateless server of one text model cannot
/// honour, unless sent with their neutral value.
fn refuse_unsupported(body: &ResponsesRequest) -> Result<(), ApiError> {
    let unsupported =
        |param: &str, message: &str| invalid(ErrorCode::UnsupportedParameter, param, message.to_owned());
    if body.previous_response_id.is_some() {
        let message = "Blaze stores no responses, so previous_response_id cannot be followed: \
                       send the earlier turns in input (their output items as they came back)";
        return Err(invalid(ErrorCode::PreviousResponseNotFound, "previous_response_id", message.to_owned()));
    }
    if body.background == Some(true) {
        return Err(unsupported(
            "background",
            "background responses are not supported: Blaze stores no responses",
        ));
    }
    if body.reasoning.as_ref().is_some_and(|reasoning| !reasoning.is_null() && *reasoning != json!({})) {
        return Err(unsupported(
            "reasoning",
            "reasoning options are not supported: the models do not reason",
        ));
    }
    if body.include.as_ref().is_some_and(|include| !include.is_empty()) {
        return Err(unsupported("include", "include is not supported: there is nothing more to include"));
    }
    if body.truncation.as_deref().is_some_and(|truncation| truncation != "disabled") {
        return Err(unsupported("truncation", "only truncation \"disabled\" is supported"));
    }
    if body.top_logprobs.is_some_and(|top| top > 0) {
        return Err(unsupported("top_logprobs", "log probabilities are given on /v1/chat/completions"));
    }
    if body.max_tool_calls.is_some() {
        return Err(unsupported(
            "max_tool_calls",
            "max_tool_calls is not supported; use parallel_tool_calls",
        ));
    }
    if body.service_tier.as_deref().is_some_and(|tier| !matches!(tier, "auto" | "default")) {
        return Err(unsupported("service_tier", "only service_tier \"auto\" or \"default\" is supported"));
    }
    if let Some(verbosity) = body.text.as_ref().and_then(|text| text.verbosity.as_deref()) {
        if verbosity != "medium" {
            return Err(unsupported("text.verbosity", "only text.verbosity \"medium\" is supported"));
        }
    }
    if let Some(metadata) = &body.metadata {
        check_metadata(metadata)?;
    }
    Ok(())
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let bad = |message: String| invalid(ErrorCode::InvalidValue, "metadata", message);
    if metadata.len() > MOST_METADATA {
        return Err(bad(format!("metadata has {} pairs; at most {MOST_METADATA}", metadata.len())));
    }
    for (key, value) in metadata {
        if key.chars().count() > MOST_METADATA_KEY || value.chars().count() > MOST_METADATA_VALUE {
            return Err(bad(format!(
                "metadata keys take at most {MOST_METADATA_KEY} characters and values {MOST_METADATA_VALUE}"
            )));
        }
    }
    Ok(())
}

fn text_message(role: &str, content: Content) -> Message {
    Message { role: role.to_owned(), content: Some(content), tool_calls: None, tool_call_id: None }
}

/// One item of `input`: a message, an earlier function call, or a call's
/// output.
fn read_item(
    item: Value,
    index: usize,
    messages: &mut Vec<Message>,
    sources: &mut Vec<Source>,
) -> Result<(), ApiError> {
    let at = format!("input[{index}]");
    let Value::Object(mut fields) = item else {
        return Err(invalid(ErrorCode::InvalidInput, &at, format!("{at} must be an object")));
    };
    let kind = match fields.get("type") {
        None => "message".to_owned(),
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => {
            return Err(invalid(
                ErrorCode::InvalidInput,
                &format!("{at}.type"),
                format!("{at}.type must be a string"),
            ))
        }
    };
    match kind.as_str() {
        "message" => {
            let role = string(&mut fields, &at, "role")?;
            let content = match fields.remove("content") {
                Some(content) => message_content(content, &at)?,
                None => return Err(missing(&at, "content")),
            };
            messages.push(text_message(&role, content));
            sources.push(Source::Message(at));
        }
        "function_call" => {
            let call = MessageToolCall {
                id: string(&mut fields, &at, "call_id")?,
                kind: Some("function".to_owned()),
                function: FunctionCall {
                    name: string(&mut fields, &at, "name")?,
                    arguments: string(&mut fields, &at, "arguments")?,
                },
            };
            // The calls of one turn go in one assistant message, after its
            // text if the item before was that text.
            match messages.last_mut().filter(|last| last.role == "assistant") {
                Some(last) => last.tool_calls.get_or_insert_with(Vec::new).push(call),
                None => messages.push(Message {
                    role: "assistant".to_owned(),
                    content: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                }),
            }
            if sources.len() < messages.len() {
                sources.push(Source::Calls(at));
            }
        }
        "function_call_output" => {
            let call_id = string(&mut fields, &at, "call_id")?;
            let output = match fields.remove("output") {
                Some(output) => message_content(output, &format!("{at}.output"))?,
                None => return Err(missing(&at, "output")),
            };
            messages.push(Message {
                role: "tool".to_owned(),
                content: Some(output),
                tool_calls: None,
                tool_call_id: Some(call_id),
            });
            sources.push(Source::Output(at));
        }
        other => {
            let message = format!(
                "input items of type {other} are not supported; message, function_call and function_call_output are"
            );
            return Err(invalid(ErrorCode::InvalidInput, &format!("{at}.type"), message));
        }
    }
    Ok(())
}

fn missing(at: &str, field: &str) -> ApiError {
    invalid(ErrorCode::InvalidInput, &format!("{at}.{field}"), format!("{at}.{field} is required"))
}

/// A string field of an item, taken out of it.
fn string(fields: &mut Map<String, Value>, at: &str, field: &str) -> Result<String, ApiError> {
    match fields.remove(field) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => {
            let param = format!("{at}.{field}");
            Err(invalid(ErrorCode::InvalidInput, &param, format!("{param} must be a string")))
        }
        None => Err(missing(at, field)),
    }
}

/// A message's content: a string, or text parts (`input_text`,
/// `output_text`).
fn message_content(content: Value, at: &str) -> Result<Content, ApiError> {
    let parts = match content {
        Value::String(text) => return Ok(Content::Text(text)),
        Value::Array(parts) => parts,
        _ => {
            let param = format!("{at}.content");
            return Err(invalid(
                ErrorCode::InvalidContent,
                &param,
                format!("{param} must be a string or a list of parts"),
            ));
        }
    };
    let mut texts = Vec::with_capacity(parts.len());
    for (index, part) in parts.into_iter().enumerate() {
        let param = format!("{at}.content[{index}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        match (kind, part.get("text")) {
            ("input_text" | "output_text", Some(Value::String(text))) => {
                texts.push(ContentPart { kind: "text".to_owned(), text: Some(text.clone()) });
            }
            _ => {
                let message =
                    format!("{param} must be an input_text or output_text part: the models read text only");
                return Err(invalid(ErrorCode::InvalidContent, &param, message));
            }
        }
    }
    Ok(Content::Parts(texts))
}

/// A Responses function tool (`{"type": "function", "name", ...}`) in
/// chat's shape (`{"type": "function", "function": {"name", ...}}`).
fn chat_tool(index: usize, tool: Value) -> Result<Value, ApiError> {
    let param = format!("tools[{index}]");
    let Value::Object(mut fields) = tool else {
        return Err(invalid(ErrorCode::InvalidTools, &param, format!("{param} must be an object")));
    };
    match fields.remove("type") {
        Some(Value::String(kind)) if kind == "function" => {}
        Some(Value::String(kind)) => {
            let message =
                format!("only function tools are supported; {kind} is one of OpenAI's hosted tools");
            return Err(invalid(ErrorCode::InvalidTools, &format!("{param}.type"), message));
        }
        _ => {
            let message = format!("{param}.type must be \"function\"");
            return Err(invalid(ErrorCode::InvalidTools, &format!("{param}.type"), message));
        }
    }
    Ok(json!({"type": "function", "function": Value::Object(fields)}))
}

/// `tool_choice`: the strings as chat's, `{"type": "function", "name"}`
/// as chat's named function.
fn chat_tool_choice(choice: Value) -> Result<Value, ApiError> {
    match &choice {
        Value::Object(fields) if fields.get("type") == Some(&json!("function")) => Ok(
            json!({"type": "function", "function": {"name": fields.get("name").cloned().unwrap_or(Value::Null)}}),
        ),
        Value::Object(_) => {
            let message =
                "tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": ...}";
            Err(invalid(ErrorCode::InvalidToolChoice, "tool_choice", message.to_owned()))
        }
        _ => Ok(choice),
    }
}

/// `text.format` as chat's `response_format`; none for plain text.
fn response_format(format: Value) -> Result<Option<Value>, ApiError> {
    let kind = format.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    match kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            let Value::Object(mut fields) = format else { return Ok(None) };
            fields.remove("type");
            Ok(Some(json!({"type": "json_schema", "json_schema": Value::Object(fields)})))
        }
        _ => {
            let message = "text.format.type must be text, json_object or json_schema".to_owned();
            Err(invalid(ErrorCode::InvalidResponseFormat, "text.format.type", message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_fields_are_named_as_the_responses_body_names_them() {
        let sources = Sources {
            messages: vec![
                Source::Instructions,
                Source::Message("input[0]".to_owned()),
                Source::Calls("input[1]".to_owned()),
                Source::Output("input[3]".to_owned()),
            ],
        };
        let cases = [
            ("messages[0].content", "instructions"),
            ("messages[1].role", "input[0].role"),
            ("messages[2].tool_calls", "input[1]"),
            ("messages[3].tool_call_id", "input[3].call_id"),
            ("messages[3].content", "input[3].output"),
            ("messages[7]", "input"),
            ("messages", "input"),
            ("max_tokens", "max_output_tokens"),
            ("response_format.json_schema.schema", "text.format.schema"),
            ("tools[2].function.parameters", "tools[2].parameters"),
            ("tool_choice.function.name", "tool_choice.name"),
            ("temperature", "temperature"),
        ];
        for (chat, responses) in cases {
            assert_eq!(sources.param(chat), responses, "{chat}");
        }
    }
}
