//! A streamed completion: the worker's events turned into chunks, with the
//! output screen releasing text as it clears it, the tokens counted into
//! the settlement as they come, and a complete stream recorded in the
//! cache. Dropping the stream (the client went away, or cancelled) drops
//! the events' receiver, which stops the generation at its next token; a
//! block by the output screen ends the stream with finish_reason
//! content_filter and stops the generation the same way.

use blaze_actors::cache::CacheKey;
use blaze_actors::guard::OutputFilter;
use blaze_actors::inference::{ChatEvent, ChatEvents, FinishReason, TokenLogprob};
use futures_util::Stream;

use super::admit::Settlement;
use super::answer::Piece;
use super::caching::{Caching, Record};
use super::generation::work_error;
use super::logprobs::Collected;
use super::reply::{calls_finish_reason, ChunkLogprobs, Reply};
use super::screen::CONTENT_FILTER;
use super::tool_calls::{call_id, CallReader, ToolEvent};
use crate::error::ApiError;

/// What a stream is made with, besides its events.
pub struct StreamParts {
    pub reply: Reply,
    pub include_usage: bool,
    pub settlement: Settlement,
    /// Where a complete stream is cached (a miss that computed it).
    pub store: Option<(Caching, CacheKey)>,
    pub filter: Option<OutputFilter>,
}

struct Chunks {
    parts: StreamParts,
    events: ChatEvents,
    /// No chunk sent yet: the next carries the role.
    first: bool,
    finished: bool,
    /// Chunks to send before anything else, last first.
    queued: Vec<Piece>,
    /// The generated pieces (and their tokens' log probabilities), kept
    /// for the cache.
    collected: Collected,
    /// Log probabilities for the next chunk, and the characters sent so far.
    unsent: Vec<TokenLogprob>,
    sent_chars: usize,
    /// Reads the text for tool calls, when the request has tools; the ids
    /// given to the calls started.
    calls: Option<CallReader>,
    call_ids: Vec<String>,
}

/// The chunks of a streamed answer, until it ends or fails.
pub fn chunks(parts: StreamParts, events: ChatEvents) -> impl Stream<Item = Piece> {
    let collected = Collected::new(parts.reply.logprobs);
    let calls = parts.reply.reads_calls.then(CallReader::default);
    let chunks = Chunks {
        parts,
        events,
        first: true,
        finished: false,
        queued: Vec::new(),
        collected,
        unsent: Vec::new(),
        sent_chars: 0,
        calls,
        call_ids: Vec::new(),
    };
    futures_util::stream::unfold(chunks, |mut chunks| async move {
        let piece = chunks.next().await?;
        Some((piece, chunks))
    })
}

impl Chunks {
    async fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(piece) = self.queued.pop() {
                return Some(piece);
            }
            if self.finished {
                return None;
            }
            let released = match self.events.recv().await {
                Some(ChatEvent::Logprobs(entries)) => {
                    self.on_logprobs(entries);
                    Vec::new()
                }
                Some(ChatEvent::Text(piece)) => self.on_text(piece),
                Some(ChatEvent::Done { finish_reason, completion_tokens }) => {
                    self.on_done(finish_reason, completion_tokens).await;
                    Vec::new()
                }
                Some(ChatEvent::Failed(error)) => {
                    self.finished = true;
                    vec![Piece::Failed(work_error(error, &self.parts.reply.model))]
                }
                None => {
                    self.finished = true;
                    vec![Piece::Failed(ApiError::worker_failed(&self.parts.reply.model))]
                }
            };
            self.queued.extend(released.into_iter().rev());
        }
    }

    /// The log probabilities of the next piece's tokens: kept for the
    /// cache, and sent with the next chunk.
    fn on_logprobs(&mut self, entries: Vec<TokenLogprob>) {
        if self.parts.store.is_some() {
            self.collected.on_logprobs(entries.clone());
        }
        self.unsent.extend(entries);
    }

    /// A chunk, with the log probabilities not sent yet.
    fn chunk(&mut self, text: Option<&str>, finish: Option<&str>) -> Piece {
        let entries = std::mem::take(&mut self.unsent);
        let logprobs = ChunkLogprobs { entries: &entries, offset: self.sent_chars };
        let chunk = self.parts.reply.chunk(text, self.first, finish, logprobs);
        self.sent_chars += text.map_or(0, |text| text.chars().count());
        self.first = false;
        chunk
    }

    /// The chunks of released text: as content, or read for tool calls.
    fn released(&mut self, text: &str) -> Vec<Piece> {
        let Some(reader) = self.calls.as_mut() else {
            return vec![self.chunk(Some(text), None)];
        };
        let events = reader.push(text);
        self.call_chunks(events)
    }

    fn call_chunks(&mut self, events: Vec<ToolEvent>) -> Vec<Piece> {
        let mut pieces = Vec::with_capacity(events.len());
        for event in events {
            if let ToolEvent::Call { .. } = event {
                self.call_ids.push(call_id());
            }
            let id = match event {
                ToolEvent::Call { index, .. } => self.call_ids.get(index).map(String::as_str),
                _ => None,
            };
            let entries = std::mem::take(&mut self.unsent);
            let logprobs = ChunkLogprobs { entries: &entries, offset: self.sent_chars };
            pieces.push(self.parts.reply.call_chunk(&event, id, self.first, logprobs));
            self.first = false;
        }
        pieces
    }

    /// A generated piece: counted, kept for the cache, and sent as far as
    /// the output screen releases it.
    fn on_text(&mut self, piece: String) -> Vec<Piece> {
        self.parts.settlement.used += 1;
        let released = match &mut self.parts.filter {
            None => Ok(piece.clone()),
            Some(filter) => filter.push(&piece),
        };
        if self.parts.store.is_some() {
            self.collected.on_text(piece);
        }
        match released {
            Ok(text) if text.is_empty() => Vec::new(),
            Ok(text) => self.released(&text),
            Err(_) => {
                // Blocked: not cached, and the generation stops with the
                // receiver.
                self.parts.store = None;
                let used = self.parts.settlement.used as usize;
                let completion_tokens = used.saturating_sub(self.parts.reply.prompt_tokens);
                self.queued = self.ending(CONTENT_FILTER, completion_tokens, None);
                self.events.close();
                self.finished = true;
                Vec::new()
            }
        }
    }

    /// The generation finished: settle the exact usage, record the stream,
    /// release what the screen held back.
    async fn on_done(&mut self, finish_reason: FinishReason, completion_tokens: usize) {
        self.parts.settlement.used = (self.parts.reply.prompt_tokens + completion_tokens) as u64;
        if let Some((caching, key)) = self.parts.store.take() {
            let (pieces, logprobs) = std::mem::take(&mut self.collected).finish();
            let finish_reason = finish_reason.as_str().to_owned();
            let record = Record { pieces, finish_reason, completion_tokens, logprobs };
            if let Ok(bytes) = serde_json::to_vec(&record) {
                caching.cache().put(&key, bytes).await;
            }
        }
        let (reason, rest) = match self.parts.filter.as_mut().map(OutputFilter::finish) {
            None => (finish_reason.as_str(), None),
            Some(Ok(rest)) => (finish_reason.as_str(), Some(rest)),
            Some(Err(_)) => (CONTENT_FILTER, None),
        };
        self.queued = self.ending(reason, completion_tokens, rest);
        self.finished = true;
    }

    /// The chunks that end the stream, last first.
    fn ending(&mut self, finish_reason: &str, completion_tokens: usize, rest: Option<String>) -> Vec<Piece> {
        let mut out = Vec::new();
        if let Some(rest) = rest.filter(|rest| !rest.is_empty()) {
            out.extend(self.released(&rest));
        }
        let mut finish_reason = finish_reason;
        if let Some(reader) = self.calls.as_mut() {
            let events = reader.finish();
            let calls = reader.calls();
            out.extend(self.call_chunks(events));
            finish_reason = calls_finish_reason(finish_reason, calls);
        }
        out.push(self.chunk(None, Some(finish_reason)));
        if self.parts.include_usage {
            out.push(self.parts.reply.usage_chunk(completion_tokens));
        }
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use blaze_actors::inference::WorkError;
    use futures_util::StreamExt;
    use serde_json::Value;

    use super::*;
    use crate::openai::reply::Kind;

    fn parts() -> StreamParts {
        StreamParts {
            reply: Reply::new(Kind::Chat, "m", 3, false),
            include_usage: true,
            settlement: Settlement::new(None, 3),
            store: None,
            filter: None,
        }
    }

    /// The pieces of a stream whose worker sends `sent`, then hangs up.
    async fn pieces(sent: Vec<ChatEvent>) -> Vec<Piece> {
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        for event in sent {
            sender.send(event).unwrap();
        }
        drop(sender);
        chunks(parts(), events).collect().await
    }

    fn chunk(piece: &Piece) -> Value {
        match piece {
            Piece::Chunk(bytes) => serde_json::from_slice(bytes).unwrap(),
            Piece::Failed(error) => panic!("a chunk, not {error}"),
        }
    }

    fn failure(piece: &Piece) -> Value {
        match piece {
            Piece::Failed(error) => error.body(None),
            Piece::Chunk(bytes) => panic!("a failure, not {bytes:?}"),
        }
    }

    #[tokio::test]
    async fn a_worker_failure_mid_stream_ends_it_with_the_error_and_nothing_after() {
        let pieces = pieces(vec![
            ChatEvent::Text("Hel".to_owned()),
            ChatEvent::Failed(WorkError::WorkerFailed),
            ChatEvent::Text("never sent".to_owned()),
        ])
        .await;
        assert_eq!(pieces.len(), 2);
        let first = chunk(&pieces[0]);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(first["choices"][0]["delta"]["content"], "Hel");
        let error = failure(&pieces[1]);
        assert_eq!(
            (error["error"]["code"].as_str(), error["error"]["type"].as_str()),
            (Some("worker_failed"), Some("server_error"))
        );
    }

    #[tokio::test]
    async fn a_worker_that_goes_away_without_a_word_fails_the_stream() {
        let pieces = pieces(vec![ChatEvent::Text("Hel".to_owned())]).await;
        assert_eq!(pieces.len(), 2);
        assert_eq!(failure(&pieces[1])["error"]["code"], "worker_failed");
    }

    #[tokio::test]
    async fn a_finished_stream_ends_with_its_reason_then_usage() {
        let done = ChatEvent::Done { finish_reason: FinishReason::Length, completion_tokens: 2 };
        let pieces =
            pieces(vec![ChatEvent::Text("a".to_owned()), ChatEvent::Text("b".to_owned()), done]).await;
        let chunks: Vec<Value> = pieces.iter().map(chunk).collect();
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        assert_eq!(chunks[1]["choices"][0]["delta"]["role"], Value::Null, "the role comes once");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[3]["choices"], serde_json::json!([]));
        assert_eq!(chunks[3]["usage"]["total_tokens"], 5);
    }
}
