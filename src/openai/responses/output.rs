//! The `response` object: what every answer of one request repeats of it
//! ([`Echo`]), its output items (a `message` of `output_text`, and one
//! `function_call` per call), its status and its usage, as OpenAI writes
//! them; the whole answer read from the chat completion.

use actix_web::web::Bytes;
use serde_json::{json, Value};

use super::ResponsesRequest;
use crate::error::ApiError;

/// What the response object repeats of its request, and its identity.
pub struct Echo {
    id: String,
    created_at: u64,
    model: String,
    instructions: Option<String>,
    max_output_tokens: Option<usize>,
    temperature: f32,
    top_p: f32,
    tools: Value,
    tool_choice: Value,
    parallel_tool_calls: bool,
    text: Value,
    metadata: Value,
    user: Option<String>,
}

impl Echo {
    pub fn of(body: &ResponsesRequest) -> Self {
        let created_at = crate::openai::response::unix_seconds();
        let format = body.text.as_ref().and_then(|text| text.format.clone());
        Self {
            id: item_id("resp"),
            created_at,
            model: body.model.clone(),
            instructions: body.instructions.clone(),
            max_output_tokens: body.max_output_tokens,
            temperature: body.temperature.unwrap_or(1.0),
            top_p: body.top_p.unwrap_or(1.0),
            tools: Value::Array(body.tools.clone().unwrap_or_default()),
            tool_choice: body.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            parallel_tool_calls: body.parallel_tool_calls.unwrap_or(true),
            text: json!({"format": format.unwrap_or_else(|| json!({"type": "text"}))}),
            metadata: json!(body.metadata.clone().unwrap_or_default()),
            user: body.user.clone(),
        }
    }

    /// The response object at `status`, with its output so far.
    pub fn response(&self, status: Status, output: &[Value], usage: Option<&Value>) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status.name(),
            "background": false,
            "error": null,
            "incomplete_details": status.incomplete_reason().map(|reason| json!({"reason": reason})),
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": false,
            "temperature": self.temperature,
            "text": self.text,
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_logprobs": 0,
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": self.user,
            "metadata": self.metadata,
        })
    }

    /// The whole answer: the chat completion's first choice as a response.
    pub fn whole(&self, chat: &[u8]) -> Result<Bytes, ApiError> {
        let chat: Value = serde_json::from_slice(chat)
            .map_err(|error| ApiError::internal_failure("chat answer", &error))?;
        let choice = &chat["choices"][0];
        let message = &choice["message"];
        let calls = message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut output = Vec::with_capacity(calls.len() + 1);
        match message["content"].as_str() {
            Some(text) if !text.is_empty() || calls.is_empty() => {
                output.push(message_item(&item_id("msg"), text, "completed"));
            }
            _ => {}
        }
        for call in calls {
            let function = &call["function"];
            output.push(function_call_item(
                &item_id("fc"),
                call["id"].as_str().unwrap_or_default(),
                function["name"].as_str().unwrap_or_default(),
                function["arguments"].as_str().unwrap_or_default(),
                "completed",
            ));
        }
        let status = Status::of(choice["finish_reason"].as_str());
        let response = self.response(status, &output, Some(&usage(&chat["usage"])));
        serde_json::to_vec(&response)
            .map(Bytes::from)
            .map_err(|error| ApiError::internal_failure("response object", &error))
    }
}

/// Where a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    /// Cut by `max_output_tokens`.
    Length,
    /// Cut by the output screen.
    ContentFilter,
}

impl Status {
    /// The status of a chat completion that finished with `finish_reason`.
    pub fn of(finish_reason: Option<&str>) -> Self {
        match finish_reason {
            Some("length") => Self::Length,
            Some("content_filter") => Self::ContentFilter,
            _ => Self::Completed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Length | Self::ContentFilter => "incomplete",
        }
    }

    fn incomplete_reason(self) -> Option<&'static str> {
        match self {
            Self::Length => Some("max_output_tokens"),
            Self::ContentFilter => Some("content_filter"),
            Self::InProgress | Self::Completed => None,
        }
    }
}

/// A chat completion's usage as the Responses API counts it.
pub fn usage(chat: &Value) -> Value {
    let count = |field: &str| chat[field].as_u64().unwrap_or(0);
    json!({
        "input_tokens": count("prompt_tokens"),
        "input_tokens_details": {"cached_tokens": chat["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0)},
        "output_tokens": count("completion_tokens"),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": count("total_tokens"),
    })
}

/// A new item's id: `prefix` and 32 hex digits.
pub fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// An `output_text` content part.
pub fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The assistant's message item.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" { json!([]) } else { json!([text_part(text)]) };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// A function call item.
pub fn function_call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> Echo {
        let body: ResponsesRequest = serde_json::from_value(json!({"model": "m", "input": "hi"})).unwrap();
        Echo::of(&body)
    }

    #[test]
    fn a_chat_answer_reads_as_a_response() {
        let chat = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        });
        let response: Value =
            serde_json::from_slice(&echo().whole(chat.to_string().as_bytes()).unwrap()).unwrap();
        assert!(response["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(
            (response["object"].as_str(), response["status"].as_str()),
            (Some("response"), Some("completed"))
        );
        let output = response["output"].as_array().unwrap();
        assert_eq!(output.len(), 1, "no empty message beside the calls: {response}");
        assert_eq!(output[0]["type"], "function_call");
        assert_eq!((output[0]["call_id"].as_str(), output[0]["name"].as_str()), (Some("call_1"), Some("f")));
        assert_eq!(response["usage"]["input_tokens"], 5);
        assert_eq!(response["usage"]["output_tokens"], 3);
        assert_eq!(response["store"], false);
    }

    #[test]
    fn a_cut_answer_is_incomplete_with_its_reason() {
        let chat = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hel"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        });
        let response: Value =
            serde_json::from_slice(&echo().whole(chat.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(response["output"][0]["content"][0]["text"], "Hel");
    }
}
