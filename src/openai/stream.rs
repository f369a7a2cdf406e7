//! A streamed completion: the worker's events (one stream per choice)
//! turned into chunks, each choice's text released as the output screen
//! clears it, the tokens counted into the settlement as they come, and a
//! complete stream recorded in the cache. Dropping the stream (the client
//! went away, or cancelled) drops the events' receivers, which stops the
//! generation at its next token; a block by the output screen ends that
//! choice with finish_reason content_filter and stops its generation the
//! same way.

use std::sync::Arc;
use std::task::Poll;

use blaze_actors::cache::CacheKey;
use blaze_actors::guard::{OutputFilter, Rules};
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
    /// The output screen's rules when it screens output; each choice has a
    /// filter of its own.
    pub screen: Option<Arc<Rules>>,
}

struct Chunks {
    parts: StreamParts,
    choices: Vec<ChoiceStream>,
    ended: bool,
    /// Chunks to send before anything else, last first.
    queued: Vec<Piece>,
    /// The request's span: the stream is read after its handler returned.
    span: tracing::Span,
}

/// One choice's part of the stream.
struct ChoiceStream {
    index: usize,
    events: ChatEvents,
    /// No chunk sent yet: the next carries the role.
    first: bool,
    finished: bool,
    /// Its tokens: one per piece as they come, the exact count at the end.
    tokens: usize,
    /// Prompt tokens its worker's cache held, told at the end.
    cached_tokens: usize,
    /// The generated pieces (and their tokens' log probabilities), kept
    /// for the cache; its record once it finished.
    collected: Collected,
    record: Option<Record>,
    /// Log probabilities for the next chunk, and the characters sent so far.
    unsent: Vec<TokenLogprob>,
    sent_chars: usize,
    /// Reads the text for tool calls, when the request has tools; the ids
    /// given to the calls started.
    calls: Option<CallReader>,
    call_ids: Vec<String>,
    filter: Option<OutputFilter>,
}

/// The chunks of a streamed answer, until every choice ends or one fails.
pub fn chunks(parts: StreamParts, events: Vec<ChatEvents>) -> impl Stream<Item = Piece> {
    let choices = events
        .into_iter()
        .enumerate()
        .map(|(index, events)| ChoiceStream {
            index,
            events,
            first: true,
            cached_tokens: 0,
            finished: false,
            tokens: 0,
            collected: Collected::new(parts.reply.logprobs),
            record: None,
            unsent: Vec::new(),
            sent_chars: 0,
            calls: parts.reply.reads_calls.then(CallReader::default),
            call_ids: Vec::new(),
            filter: parts.screen.clone().map(OutputFilter::new),
        })
        .collect();
    let span = tracing::Span::current();
    let chunks = Chunks { parts, choices, ended: false, queued: Vec::new(), span };
    futures_util::stream::unfold(chunks, |mut chunks| async move {
        let piece = chunks.next().await?;
        Some((piece, chunks))
    })
}

impl Chunks {
    async fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(piece) = self.queued.pop() {
                self.parts.settlement.sent();
                return Some(piece);
            }
            if self.ended {
                return None;
            }
            if self.choices.iter().all(|choice| choice.finished) {
                self.end().await;
                continue;
            }
            let (index, event) = self.next_event().await;
            let keep = self.parts.store.is_some();
            let reply = &self.parts.reply;
            let choice = &mut self.choices[index];
            let released = match event {
                Some(ChatEvent::Logprobs(entries)) => {
                    choice.on_logprobs(keep, entries);
                    Vec::new()
                }
                Some(ChatEvent::Text(piece)) => {
                    let (released, blocked) = choice.on_text(reply, keep, piece);
                    if blocked {
                        // A choice cut short is not cached.
                        self.parts.store = None;
                    }
                    released
                }
                Some(ChatEvent::Done { finish_reason, completion_tokens, cached_tokens, timing }) => {
                    crate::telemetry::record_generation(&self.span, &timing);
                    choice.cached_tokens = cached_tokens;
                    self.parts.settlement.cached = self.parts.settlement.cached.max(cached_tokens as u64);
                    choice.on_done(reply, keep, finish_reason, completion_tokens)
                }
                Some(ChatEvent::Failed(error)) => {
                    self.ended = true;
                    vec![Piece::Failed(work_error(error, &reply.model))]
                }
                None => {
                    self.ended = true;
                    vec![Piece::Failed(ApiError::worker_failed(&reply.model))]
                }
            };
            let completion_tokens: usize = self.choices.iter().map(|choice| choice.tokens).sum();
            self.parts.settlement.used = (self.parts.reply.prompt_tokens + completion_tokens) as u64;
            self.queued.extend(released.into_iter().rev());
        }
    }

    /// The next event of any choice still running, with its choice.
    async fn next_event(&mut self) -> (usize, Option<ChatEvent>) {
        let choices = &mut self.choices;
        std::future::poll_fn(|context| {
            for choice in choices.iter_mut().filter(|choice| !choice.finished) {
                if let Poll::Ready(event) = choice.events.poll_recv(context) {
                    return Poll::Ready((choice.index, event));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Every choice finished: the stream is recorded when all of it was
    /// generated, and ends with the usage when asked for.
    async fn end(&mut self) {
        self.ended = true;
        if let Some((caching, key)) = self.parts.store.take() {
            let records: Option<Vec<Record>> =
                self.choices.iter_mut().map(|choice| choice.record.take()).collect();
            if let Some(bytes) = records.and_then(|records| serde_json::to_vec(&records).ok()) {
                caching.cache().put(&key, bytes).await;
            }
        }
        if self.parts.include_usage {
            let completion_tokens = self.choices.iter().map(|choice| choice.tokens).sum();
            let cached_tokens = self.choices.iter().map(|choice| choice.cached_tokens).max().unwrap_or(0);
            self.queued.push(self.parts.reply.usage_chunk(completion_tokens, cached_tokens));
        }
    }
}

impl ChoiceStream {
    /// The log probabilities of the next piece's tokens: kept for the
    /// cache, and sent with the next chunk.
    fn on_logprobs(&mut self, keep: bool, entries: Vec<TokenLogprob>) {
        if keep {
            self.collected.on_logprobs(entries.clone());
        }
        self.unsent.extend(entries);
    }

    /// A chunk, with the log probabilities not sent yet.
    fn chunk(&mut self, reply: &Reply, text: Option<&str>, finish: Option<&str>) -> Piece {
        let entries = std::mem::take(&mut self.unsent);
        let logprobs = ChunkLogprobs { entries: &entries, offset: self.sent_chars };
        let chunk = reply.chunk(self.index, text, self.first, finish, logprobs);
        self.sent_chars += text.map_or(0, |text| text.chars().count());
        self.first = false;
        chunk
    }

    /// The chunks of released text: as content, or read for tool calls.
    fn released(&mut self, reply: &Reply, text: &str) -> Vec<Piece> {
        let Some(reader) = self.calls.as_mut() else {
            return vec![self.chunk(reply, Some(text), None)];
        };
        let events = reader.push(text);
        self.call_chunks(reply, events)
    }

    fn call_chunks(&mut self, reply: &Reply, events: Vec<ToolEvent>) -> Vec<Piece> {
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
            pieces.push(reply.call_chunk(self.index, &event, id, self.first, logprobs));
            self.first = false;
        }
        pieces
    }

    /// A generated piece: counted, kept for the cache, and sent as far as
    /// the output screen releases it. Whether the screen blocked it.
    fn on_text(&mut self, reply: &Reply, keep: bool, piece: String) -> (Vec<Piece>, bool) {
        self.tokens += 1;
        let released = match &mut self.filter {
            None => Ok(piece.clone()),
            Some(filter) => filter.push(&piece),
        };
        if keep {
            self.collected.on_text(piece);
        }
        match released {
            Ok(text) if text.is_empty() => (Vec::new(), false),
            Ok(text) => (self.released(reply, &text), false),
            Err(_) => {
                // Blocked: its generation stops with the receiver.
                self.events.close();
                self.finished = true;
                (self.ending(reply, CONTENT_FILTER, None), true)
            }
        }
    }

    /// The choice finished: its exact usage and record, and what the
    /// screen held back.
    fn on_done(
        &mut self,
        reply: &Reply,
        keep: bool,
        finish_reason: FinishReason,
        completion_tokens: usize,
    ) -> Vec<Piece> {
        self.tokens = completion_tokens;
        self.finished = true;
        if keep {
            let (pieces, logprobs) = std::mem::take(&mut self.collected).finish();
            let finish_reason = finish_reason.as_str().to_owned();
            let cached_tokens = self.cached_tokens;
            self.record = Some(Record { pieces, finish_reason, completion_tokens, cached_tokens, logprobs });
        }
        let (reason, rest) = match self.filter.as_mut().map(OutputFilter::finish) {
            None => (finish_reason.as_str(), None),
            Some(Ok(rest)) => (finish_reason.as_str(), Some(rest)),
            Some(Err(_)) => (CONTENT_FILTER, None),
        };
        self.ending(reply, reason, rest)
    }

    /// The chunks that end the choice, in order.
    fn ending(&mut self, reply: &Reply, finish_reason: &str, rest: Option<String>) -> Vec<Piece> {
        let mut out = Vec::new();
        if let Some(rest) = rest.filter(|rest| !rest.is_empty()) {
            out.extend(self.released(reply, &rest));
        }
        let mut finish_reason = finish_reason;
        if let Some(reader) = self.calls.as_mut() {
            let events = reader.finish();
            let calls = reader.calls();
            out.extend(self.call_chunks(reply, events));
            finish_reason = calls_finish_reason(finish_reason, calls);
        }
        out.push(self.chunk(reply, None, Some(finish_reason)));
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
            settlement: Settlement::new(Default::default(), 3, "model", &Default::default()),
            store: None,
            screen: None,
        }
    }

    /// The pieces of a stream whose worker sends `sent`, then hangs up.
    async fn pieces(sent: Vec<ChatEvent>) -> Vec<Piece> {
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        for event in sent {
            sender.send(event).unwrap();
        }
        drop(sender);
        chunks(parts(), vec![events]).collect().await
    }

    fn chunk(piece: &Piece) -> Value {
        match piece {
            Piece::Chunk(bytes) => serde_json::from_slice(bytes).unwrap(),
            Piece::Failed(error) => panic!("a chunk, not {error}"),
            Piece::Event(name, _) => panic!("a chunk, not the event {name}"),
        }
    }

    fn failure(piece: &Piece) -> Value {
        match piece {
            Piece::Failed(error) => error.body(None),
            Piece::Chunk(bytes) | Piece::Event(_, bytes) => panic!("a failure, not {bytes:?}"),
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
    async fn choices_stream_side_by_side_each_with_its_index_and_one_usage_at_the_end() {
        let mut receivers = Vec::new();
        for (text, tokens) in [("a", 1), ("bc", 2)] {
            let (sender, events) = tokio::sync::mpsc::unbounded_channel();
            sender.send(ChatEvent::Text(text.to_owned())).unwrap();
            let done = ChatEvent::Done {
                finish_reason: FinishReason::Stop,
                completion_tokens: tokens,
                cached_tokens: 0,
                timing: Default::default(),
            };
            sender.send(done).unwrap();
            receivers.push(events);
        }
        let chunks: Vec<Value> =
            chunks(parts(), receivers).collect::<Vec<_>>().await.iter().map(chunk).collect();
        assert_eq!(chunks.len(), 5, "two chunks per choice, then usage: {chunks:?}");
        for index in 0..2 {
            let own: Vec<&Value> =
                chunks.iter().filter(|chunk| chunk["choices"][0]["index"] == index).collect();
            assert_eq!(own.len(), 2, "{chunks:?}");
            assert_eq!(own[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(own[1]["choices"][0]["finish_reason"], "stop");
        }
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 3);
    }

    #[tokio::test]
    async fn a_finished_stream_ends_with_its_reason_then_usage() {
        let done = ChatEvent::Done {
            finish_reason: FinishReason::Length,
            completion_tokens: 2,
            cached_tokens: 0,
            timing: Default::default(),
        };
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
