//! A streamed chat completion read as the Responses API's events:
//! `response.created` and `response.in_progress` first; the message as
//! `response.output_item.added`, `response.content_part.added`, one
//! `response.output_text.delta` per chunk of text and their `.done`
//! events; each function call as its item and
//! `response.function_call_arguments.delta` fragments; then
//! `response.completed` (or `response.incomplete`) with the whole
//! response. Every event carries its `type` and a `sequence_number`.

use std::collections::VecDeque;

use actix_web::web::Bytes;
use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::output::{function_call_item, item_id, message_item, text_part, usage, Echo, Status};
use crate::openai::answer::Piece;

/// The events of a response streamed from the chat completion's chunks.
pub fn events(echo: Echo, chunks: LocalBoxStream<'static, Piece>) -> LocalBoxStream<'static, Piece> {
    let events = Events {
        echo,
        chunks,
        sequence: 0,
        started: false,
        ended: false,
        output: Vec::new(),
        open: None,
        finish_reason: None,
        usage: None,
        queued: VecDeque::new(),
    };
    futures_util::stream::unfold(events, |mut events| async move {
        let piece = events.next().await?;
        Some((piece, events))
    })
    .boxed_local()
}

struct Events {
    echo: Echo,
    chunks: LocalBoxStream<'static, Piece>,
    sequence: u64,
    started: bool,
    ended: bool,
    /// The items finished so far.
    output: Vec<Value>,
    /// The item being streamed.
    open: Option<Open>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    queued: VecDeque<Piece>,
}

enum Open {
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String },
}

impl Events {
    async fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(piece) = self.queued.pop_front() {
                return Some(piece);
            }
            if self.ended {
                return None;
            }
            if !self.started {
                self.started = true;
                let response = self.echo.response(Status::InProgress, &[], None);
                self.emit("response.created", json!({"response": response.clone()}));
                self.emit("response.in_progress", json!({"response": response}));
                continue;
            }
            match self.chunks.next().await {
                Some(Piece::Chunk(bytes) | Piece::Event(_, bytes)) => self.on_chunk(&bytes),
                Some(Piece::Failed(error)) => {
                    self.ended = true;
                    self.queued.push_back(Piece::Failed(error));
                }
                None => {
                    self.finish();
                    self.ended = true;
                }
            }
        }
    }

    fn emit(&mut self, kind: &'static str, mut event: Value) {
        event["type"] = json!(kind);
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        // A tree of strings and numbers always serializes.
        let bytes = serde_json::to_vec(&event).unwrap_or_default();
        self.queued.push_back(Piece::Event(kind, Bytes::from(bytes)));
    }

    /// One chat chunk: its text, its calls' starts and fragments, its
    /// finish reason or the usage.
    fn on_chunk(&mut self, bytes: &[u8]) {
        let Ok(chunk) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        if let Some(counted) = chunk.get("usage").filter(|counted| !counted.is_null()) {
            self.usage = Some(usage(counted));
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|text| !text.is_empty()) {
            self.on_text(text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let function = &call["function"];
            if let Some(call_id) = call["id"].as_str() {
                self.open_call(call_id, function["name"].as_str().unwrap_or_default());
            }
            if let Some(fragment) = function["arguments"].as_str().filter(|fragment| !fragment.is_empty()) {
                self.on_arguments(fragment);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
    }

    fn open_message(&mut self) {
        self.close();
        let id = item_id("msg");
        let output_index = self.output.len();
        let item = message_item(&id, "", "in_progress");
        self.emit("response.output_item.added", json!({"output_index": output_index, "item": item}));
        let part =
            json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": text_part("")});
        self.emit("response.content_part.added", part);
        self.open = Some(Open::Message { id, text: String::new() });
    }

    fn on_text(&mut self, delta: &str) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.open_message();
        }
        let Some(Open::Message { id, text }) = &mut self.open else {
            return;
        };
        text.push_str(delta);
        let event = json!({
            "item_id": id, "output_index": self.output.len(), "content_index": 0, "delta": delta, "logprobs": [],
        });
        self.emit("response.output_text.delta", event);
    }

    fn open_call(&mut self, call_id: &str, name: &str) {
        self.close();
        let id = item_id("fc");
        let item = function_call_item(&id, call_id, name, "", "in_progress");
        self.emit("response.output_item.added", json!({"output_index": self.output.len(), "item": item}));
        let (call_id, name, arguments) = (call_id.to_owned(), name.to_owned(), String::new());
        self.open = Some(Open::Call { id, call_id, name, arguments });
    }

    fn on_arguments(&mut self, fragment: &str) {
        let Some(Open::Call { id, arguments, .. }) = &mut self.open else {
            return;
        };
        arguments.push_str(fragment);
        let event = json!({"item_id": id, "output_index": self.output.len(), "delta": fragment});
        self.emit("response.function_call_arguments.delta", event);
    }

    /// The open item is done.
    fn close(&mut self) {
        let output_index = self.output.len();
        let item = match self.open.take() {
            None => return,
            Some(Open::Message { id, text }) => {
                let done = json!({
                    "item_id": id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": [],
                });
                self.emit("response.output_text.done", done);
                let part = json!({
                    "item_id": id, "output_index": output_index, "content_index": 0, "part": text_part(&text),
                });
                self.emit("response.content_part.done", part);
                message_item(&id, &text, "completed")
            }
            Some(Open::Call { id, call_id, name, arguments }) => {
                let done = json!({"item_id": id, "output_index": output_index, "name": name, "arguments": arguments});
                self.emit("response.function_call_arguments.done", done);
                function_call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.emit("response.output_item.done", json!({"output_index": output_index, "item": item.clone()}));
        self.output.push(item);
    }

    /// The chat stream ended: the last item closes (an empty message if
    /// there was nothing), and the whole response comes last.
    fn finish(&mut self) {
        if self.open.is_none() && self.output.is_empty() {
            self.open_message();
        }
        self.close();
        let status = Status::of(self.finish_reason.as_deref());
        let response = self.echo.response(status, &self.output, self.usage.as_ref());
        let kind = if status == Status::Completed { "response.completed" } else { "response.incomplete" };
        self.emit(kind, json!({"response": response}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::responses::ResponsesRequest;

    fn chunk(value: Value) -> Piece {
        Piece::Chunk(Bytes::from(value.to_string()))
    }

    async fn events_of(chunks: Vec<Piece>) -> Vec<Value> {
        let body: ResponsesRequest = serde_json::from_value(json!({"model": "m", "input": "hi"})).unwrap();
        let pieces = events(Echo::of(&body), futures_util::stream::iter(chunks).boxed_local());
        pieces
            .map(|piece| match piece {
                Piece::Event(kind, bytes) => {
                    let event: Value = serde_json::from_slice(&bytes).unwrap();
                    assert_eq!(event["type"], kind);
                    event
                }
                _ => panic!("events only"),
            })
            .collect()
            .await
    }

    #[actix_rt::test]
    async fn text_then_a_call_stream_as_two_items_and_a_completed_response() {
        let delta = |delta: Value, finish: Value| {
            chunk(json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
        };
        let events = events_of(vec![
            delta(json!({"role": "assistant", "content": "Hi"}), Value::Null),
            delta(json!({"content": "!"}), Value::Null),
            delta(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}), Value::Null),
            delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), Value::Null),
            delta(json!({}), json!("tool_calls")),
            chunk(json!({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}})),
        ])
        .await;
        let kinds: Vec<&str> = events.iter().map(|event| event["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let numbers: Vec<u64> =
            events.iter().map(|event| event["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(numbers, (0..14).collect::<Vec<_>>());
        assert_eq!(events[6]["text"], "Hi!");
        assert_eq!(events[11]["arguments"], "{}");
        let response = &events[13]["response"];
        assert_eq!(response["status"], "completed");
        assert_eq!(response["output"][0]["content"][0]["text"], "Hi!");
        assert_eq!(response["output"][1]["call_id"], "call_1");
        assert_eq!(response["usage"]["total_tokens"], 6);
    }

    #[actix_rt::test]
    async fn a_stream_cut_at_max_tokens_ends_incomplete() {
        let events = events_of(vec![chunk(
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}),
        )])
        .await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(last["response"]["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(last["response"]["output"][0]["type"], "message", "an empty message: {last}");
    }
}
