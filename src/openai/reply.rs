//! The answer of one chat or completions request as the client reads it:
//! the whole `chat.completion` / `text_completion`, or each chunk of its
//! stream, serialized from the typed structs of `response.rs`.

use actix_web::web::Bytes;
use serde::Serialize;

use blaze_actors::inference::TokenLogprob;

use super::answer::Piece;
use super::caching::Record;
use super::logprobs::{chat_logprobs, text_logprobs};
use super::response::{
    AssistantMessage, ChatChoice, ChatChunkChoice, Completion, Delta, FunctionCall, FunctionDelta,
    TextChoice, ToolCall, ToolCallDelta, Usage,
};
use super::tool_calls::{call_id, read_whole, ReadCalls, ToolEvent};

/// Chat (messages in, an assistant message out) or text completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// What every chunk and the whole answer of one request share.
pub struct Reply {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub kind: Kind,
    pub prompt_tokens: usize,
    /// The client asked for log probabilities.
    pub logprobs: bool,
    /// The text is read for tool calls (`tool_calls.rs`).
    pub reads_calls: bool,
}

/// The log probabilities a chunk carries: those of the tokens decided
/// since the last chunk, the first `offset` characters into the text.
pub struct ChunkLogprobs<'a> {
    pub entries: &'a [TokenLogprob],
    pub offset: usize,
}

impl Reply {
    pub fn new(kind: Kind, model: &str, prompt_tokens: usize, logprobs: bool) -> Self {
        let id = match kind {
            Kind::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            Kind::Text => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
        };
        let created = super::response::unix_seconds();
        Self { id, created, model: model.to_owned(), kind, prompt_tokens, logprobs, reads_calls: false }
    }

    /// The same, its text read for tool calls when `reads_calls`.
    pub fn reading_calls(self, reads_calls: bool) -> Self {
        Self { reads_calls, ..self }
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn envelope<C>(&self, streaming: bool, choices: Vec<C>, usage: Option<Usage>) -> Completion<'_, C> {
        Completion {
            id: &self.id,
            object: self.object(streaming),
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        }
    }

    /// The whole answer, every choice in order, serialized.
    pub fn body(&self, records: &[Record]) -> Bytes {
        let completion_tokens = records.iter().map(|record| record.completion_tokens).sum();
        // The choices share one reading of the prompt.
        let cached_tokens = records.iter().map(|record| record.cached_tokens).max().unwrap_or(0);
        let usage = Some(Usage::new(self.prompt_tokens, completion_tokens).with_cached(cached_tokens));
        let whole: Vec<WholeChoice> = records.iter().map(|record| self.whole(record)).collect();
        match self.kind {
            Kind::Chat => {
                let choices =
                    whole.iter().enumerate().map(|(index, whole)| whole.chat_choice(index)).collect();
                serialized(&self.envelope(false, choices, usage))
            }
            Kind::Text => {
                let choices =
                    whole.iter().enumerate().map(|(index, whole)| whole.text_choice(index)).collect();
                serialized(&self.envelope(false, choices, usage))
            }
        }
    }

    /// One choice's text, read for calls when the request has tools.
    fn whole<'r>(&self, record: &'r Record) -> WholeChoice<'r> {
        let text = record.pieces.concat();
        let entries = record.logprobs.as_ref().filter(|_| self.logprobs).map(|logprobs| logprobs.concat());
        let calls = (self.kind == Kind::Chat && self.reads_calls).then(|| {
            let read = read_whole(&text);
            let ids = read.calls.iter().map(|_| call_id()).collect();
            (read, ids)
        });
        WholeChoice { text, entries, calls, finish_reason: &record.finish_reason }
    }

    /// A chunk of choice `index`'s stream: `text` (the role too on the
    /// choice's `first` chunk of a chat), or the `finish` reason; with log
    /// probabilities when the client asked for them.
    pub fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        first: bool,
        finish: Option<&str>,
        logprobs: ChunkLogprobs<'_>,
    ) -> Piece {
        let json = match self.kind {
            Kind::Chat => {
                let delta = Delta { role: first.then_some("assistant"), content: text, tool_calls: None };
                let logprobs = self.logprobs.then(|| chat_logprobs(logprobs.entries));
                let choice = ChatChunkChoice { index, delta, logprobs, finish_reason: finish };
                serialized(&self.envelope(true, vec![choice], None))
            }
            Kind::Text => {
                let text = text.unwrap_or("");
                let logprobs = self.logprobs.then(|| text_logprobs(logprobs.entries, logprobs.offset));
                let choice = TextChoice { index, text, logprobs, finish_reason: finish };
                serialized(&self.envelope(true, vec![choice], None))
            }
        };
        Piece::Chunk(json)
    }

    /// A chunk of a tool call of choice `choice`: its start (`id` and
    /// name), or a fragment of its arguments.
    pub fn call_chunk(
        &self,
        choice: usize,
        event: &ToolEvent,
        id: Option<&str>,
        first: bool,
        logprobs: ChunkLogprobs<'_>,
    ) -> Piece {
        let call = match event {
            ToolEvent::Call { index, name } => ToolCallDelta {
                index: *index,
                id,
                kind: Some("function"),
                function: FunctionDelta { name: Some(name.as_str()), arguments: "" },
            },
            ToolEvent::Arguments { index, fragment } => ToolCallDelta {
                index: *index,
                id: None,
                kind: None,
                function: FunctionDelta { name: None, arguments: fragment },
            },
            ToolEvent::Content(text) => return self.chunk(choice, Some(text), first, None, logprobs),
        };
        let delta = Delta { role: first.then_some("assistant"), content: None, tool_calls: Some([call]) };
        let logprobs = self.logprobs.then(|| chat_logprobs(logprobs.entries));
        let choice = ChatChunkChoice { index: choice, delta, logprobs, finish_reason: None };
        Piece::Chunk(serialized(&self.envelope(true, vec![choice], None)))
    }

    /// The last chunk when the client asked for usage: no choices.
    pub fn usage_chunk(&self, completion_tokens: usize, cached_tokens: usize) -> Piece {
        let usage = Some(Usage::new(self.prompt_tokens, completion_tokens).with_cached(cached_tokens));
        Piece::Chunk(serialized(&self.envelope::<TextChoice>(true, Vec::new(), usage)))
    }
}

/// One choice of a whole answer, ready to be written.
struct WholeChoice<'r> {
    text: String,
    entries: Option<Vec<TokenLogprob>>,
    /// What the text read as, and the ids given to its calls.
    calls: Option<(ReadCalls, Vec<String>)>,
    finish_reason: &'r str,
}

impl WholeChoice<'_> {
    fn chat_choice(&self, index: usize) -> ChatChoice<'_> {
        let logprobs = self.entries.as_ref().map(|entries| chat_logprobs(entries));
        let Some((read, ids)) = &self.calls else {
            let message = AssistantMessage {
                role: "assistant",
                content: Some(&self.text),
                refusal: None,
                tool_calls: None,
            };
            return ChatChoice { index, message, logprobs, finish_reason: self.finish_reason };
        };
        let tool_calls: Vec<ToolCall> = read
            .calls
            .iter()
            .zip(ids)
            .map(|((name, arguments), id)| ToolCall {
                id: id.clone(),
                kind: "function",
                function: FunctionCall { name, arguments },
            })
            .collect();
        let finish_reason = calls_finish_reason(self.finish_reason, tool_calls.len());
        let message = AssistantMessage {
            role: "assistant",
            content: read.content.as_deref(),
            refusal: None,
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        };
        ChatChoice { index, message, logprobs, finish_reason }
    }

    fn text_choice(&self, index: usize) -> TextChoice<'_> {
        let logprobs = self.entries.as_ref().map(|entries| text_logprobs(entries, 0));
        TextChoice { index, text: &self.text, logprobs, finish_reason: Some(self.finish_reason) }
    }
}

/// A generation that stopped by itself after making calls finished to
/// make them.
pub fn calls_finish_reason(finish_reason: &str, calls: usize) -> &str {
    if calls > 0 && finish_reason == "stop" {
        "tool_calls"
    } else {
        finish_reason
    }
}

fn serialized(value: &impl Serialize) -> Bytes {
    // Serializing these structs cannot fail: strings and numbers only.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    const NONE: ChunkLogprobs<'static> = ChunkLogprobs { entries: &[], offset: 0 };

    fn parsed(piece: Piece) -> Value {
        match piece {
            Piece::Chunk(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Piece::Failed(error) => panic!("a chunk, not {error}"),
            Piece::Event(name, _) => panic!("a chunk, not the event {name}"),
        }
    }

    #[test]
    fn a_chat_answer_has_openai_shape() {
        let reply = Reply::new(Kind::Chat, "m", 5, false);
        let record = Record {
            pieces: vec!["Hel".into(), "lo".into()],
            finish_reason: "stop".into(),
            completion_tokens: 2,
            cached_tokens: 4,
            logprobs: None,
        };
        let body: Value = serde_json::from_slice(&reply.body(&[record])).unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["system_fingerprint"], Value::Null);
        assert_eq!(
            body["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "Hello", "refusal": null}, "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 4}})
        );
    }

    #[test]
    fn every_choice_has_its_index_and_the_usage_sums_them() {
        let reply = Reply::new(Kind::Chat, "m", 5, false);
        let record = |text: &str, completion_tokens| Record {
            pieces: vec![text.into()],
            finish_reason: "stop".into(),
            completion_tokens,
            cached_tokens: 0,
            logprobs: None,
        };
        let body: Value = serde_json::from_slice(&reply.body(&[record("a", 1), record("b", 2)])).unwrap();
        assert_eq!(body["choices"][1]["index"], 1);
        assert_eq!(body["choices"][1]["message"]["content"], "b");
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 0}})
        );
    }

    #[test]
    fn chat_chunks_carry_the_role_first_and_usage_last() {
        let reply = Reply::new(Kind::Chat, "m", 3, false);
        let first = parsed(reply.chunk(0, Some("Hi"), true, None, NONE));
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": "Hi"}));
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        assert!(first.get("usage").is_none(), "usage only on the last chunk");
        let last = parsed(reply.chunk(0, None, false, Some("length"), NONE));
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let usage = parsed(reply.usage_chunk(4, 2));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 7);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    }

    #[test]
    fn text_completions_have_text_choices() {
        let reply = Reply::new(Kind::Text, "m", 1, false);
        let record = Record {
            pieces: vec!["x".into()],
            finish_reason: "length".into(),
            completion_tokens: 1,
            cached_tokens: 0,
            logprobs: None,
        };
        let body: Value = serde_json::from_slice(&reply.body(&[record])).unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(body["object"], "text_completion");
        assert_eq!(
            body["choices"],
            json!([{"index": 0, "text": "x", "logprobs": null, "finish_reason": "length"}])
        );
        let chunk = parsed(reply.chunk(0, None, true, Some("stop"), NONE));
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["choices"][0]["text"], "");
    }
}
