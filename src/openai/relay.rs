//! An upstream's stream relayed to the client event by event, as it comes
//! (nothing is held back): each event's JSON checked, the usage chunk the
//! gateway asked for kept from the client, each choice's text released as
//! the output screen allows when the guard screens output (its holdback),
//! the usage settled when the stream ends however it ends. A stream that
//! breaks, sends something that is not JSON or an error, or ends without
//! `[DONE]` ends with an error event.

use std::collections::VecDeque;
use std::sync::Arc;

use actix_web::web::Bytes;
use blaze_actors::guard::OutputFilter;
use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::admit::Settlement;
use super::answer::Piece;
use super::routed::{count_tokens, Peek};
use super::screen::CONTENT_FILTER;
use super::Pipeline;
use crate::error::ApiError;
use crate::gateway::{EventSplitter, Failure, InFlight, Target};

/// Most of a stream's text kept for counting its tokens when the upstream
/// reports no usage; past it the rest is estimated by its size.
const MOST_COUNTED_TEXT: usize = 1 << 20;

/// What a relayed stream holds until it ends.
pub struct Relay {
    pub route: String,
    pub target: Arc<Target>,
    pub tokenizer: Option<String>,
    pub pipeline: Pipeline,
    /// The gateway asked for the usage chunk; the client did not.
    pub usage_added: bool,
    pub prompt_estimate: u64,
    pub settlement: Option<Settlement>,
    /// Held until the stream ends: the target's request in flight and
    /// its connection slot.
    pub _in_flight: InFlight,
    pub _permit: OwnedSemaphorePermit,
}

struct State {
    relay: Relay,
    body: reqwest::Response,
    splitter: EventSplitter,
    pending: VecDeque<Bytes>,
    /// The completion's text so far (for the count), and bytes past it.
    text: String,
    uncounted_bytes: usize,
    usage: Option<(u64, u64)>,
    /// The output screen of each choice, by index, when the guard screens
    /// output.
    filters: Option<Vec<OutputFilter>>,
    over: bool,
}

/// What to do with one event.
enum Step {
    Send(Bytes),
    Skip,
    Done,
    Fail(Failure),
}

impl Relay {
    /// The client's stream: `first` (bytes already read), then the rest
    /// of `body`.
    pub fn stream(self, first: Bytes, body: reqwest::Response) -> LocalBoxStream<'static, Piece> {
        let mut state = State {
            relay: self,
            body,
            splitter: EventSplitter::default(),
            pending: VecDeque::new(),
            text: String::new(),
            uncounted_bytes: 0,
            usage: None,
            filters: None,
            over: false,
        };
        if state.relay.pipeline.guard.screens_output() {
            state.filters = Some(Vec::new());
        }
        let early = state.take(&first);
        futures_util::stream::unfold((state, early), |(mut state, mut early)| async move {
            if let Some(failure) = early.take() {
                return Some((state.fail(failure), (state, None)));
            }
            loop {
                if state.over {
                    return None;
                }
                if let Some(event) = state.pending.pop_front() {
                    match state.inspect(&event) {
                        Step::Send(bytes) => {
                            if let Some(settlement) = &state.relay.settlement {
                                settlement.sent();
                            }
                            return Some((Piece::Chunk(bytes), (state, None)));
                        }
                        Step::Skip => continue,
                        Step::Done => return None,
                        Step::Fail(failure) => return Some((state.fail(failure), (state, None))),
                    }
                }
                let failure = match state.body.chunk().await {
                    Ok(Some(bytes)) => state.take(&bytes),
                    Ok(None) if state.splitter.has_partial() => {
                        Some(Failure::Invalid("its stream was cut mid-event"))
                    }
                    Ok(None) => Some(Failure::Invalid("its stream ended before [DONE]")),
                    Err(error) if error.is_timeout() => Some(Failure::Timeout),
                    Err(_) => Some(Failure::Invalid("its stream broke off")),
                };
                if let Some(failure) = failure {
                    return Some((state.fail(failure), (state, None)));
                }
            }
        })
        .boxed_local()
    }
}

impl State {
    /// Bytes of the body split into events; a failure if they are wrong.
    fn take(&mut self, bytes: &[u8]) -> Option<Failure> {
        match self.splitter.push(bytes) {
            Ok(events) => {
                self.pending.extend(events);
                None
            }
            Err(_) => Some(Failure::Invalid("an event of its stream is too large")),
        }
    }

    fn inspect(&mut self, event: &Bytes) -> Step {
        if event.as_ref() == b"[DONE]" {
            return Step::Done;
        }
        let Ok(peek) = serde_json::from_slice::<Peek>(event) else {
            return Step::Fail(Failure::Invalid("an event of its stream is not JSON"));
        };
        if peek.error.is_some() {
            return Step::Fail(Failure::Invalid("it sent an error during the stream"));
        }
        if let Some(usage) = &peek.usage {
            self.usage = Some((usage.prompt_tokens, usage.completion_tokens.unwrap_or(0)));
        }
        let choices = peek.choices.unwrap_or_default();
        for choice in &choices {
            let text = choice.text();
            if self.text.len() + text.len() <= MOST_COUNTED_TEXT {
                self.text.push_str(text);
            } else {
                self.uncounted_bytes += text.len();
            }
        }
        if self.relay.usage_added && choices.is_empty() && peek.usage.is_some() {
            return Step::Skip;
        }
        if self.filters.is_some() && !choices.is_empty() {
            return self.screened(event);
        }
        Step::Send(event.clone())
    }

    /// The event with each choice's text as far as the output screen
    /// releases it; a blocked choice ends with `content_filter`, and the
    /// stream with it.
    fn screened(&mut self, event: &Bytes) -> Step {
        let Ok(mut chunk) = serde_json::from_slice::<Value>(event) else {
            return Step::Fail(Failure::Invalid("an event of its stream is not JSON"));
        };
        let rules = self.relay.pipeline.guard.rules();
        let filters = self.filters.get_or_insert_with(Vec::new);
        let mut blocked = false;
        for choice in chunk["choices"].as_array_mut().into_iter().flatten() {
            let index = choice["index"].as_u64().unwrap_or(0).min(127) as usize;
            while filters.len() <= index {
                filters.push(OutputFilter::new(rules.clone()));
            }
            let finishing = !choice["finish_reason"].is_null();
            let pointer = if choice.pointer("/delta/content").is_some_and(Value::is_string) {
                "/delta/content"
            } else {
                "/text"
            };
            let text = choice.pointer_mut(pointer).filter(|text| text.is_string());
            let piece = text.as_ref().and_then(|text| text.as_str()).unwrap_or_default().to_owned();
            let mut released = filters[index].push(&piece);
            if finishing {
                released = released.and_then(|mut text| {
                    text.push_str(&filters[index].finish()?);
                    Ok(text)
                });
            }
            match (released, text) {
                (Ok(released), Some(text)) => *text = Value::String(released),
                (Ok(released), None) if !released.is_empty() => {
                    choice["delta"]["content"] = Value::String(released);
                }
                (Ok(_), None) => {}
                (Err(_), text) => {
                    if let Some(text) = text {
                        *text = Value::String(String::new());
                    }
                    choice["finish_reason"] = Value::String(CONTENT_FILTER.to_owned());
                    blocked = true;
                }
            }
        }
        let bytes = Bytes::from(serde_json::to_vec(&chunk).unwrap_or_default());
        if blocked {
            // The rest of the answer is not the client's; nothing follows.
            self.pending.clear();
            self.pending.push_back(Bytes::from_static(b"[DONE]"));
        }
        Step::Send(bytes)
    }

    fn fail(&mut self, failure: Failure) -> Piece {
        self.over = true;
        self.relay.target.health.failed(failure.class());
        tracing::warn!(gateway_target = %self.relay.target.id, class = failure.class(), "gateway: upstream stream failed");
        Piece::Failed(ApiError::upstream_failed(&self.relay.route, &failure))
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let Some(mut settlement) = self.relay.settlement.take() else { return };
        let (prompt, completion) = match self.usage {
            Some(usage) => usage,
            None => {
                let counted = count_tokens(&self.relay.pipeline, self.relay.tokenizer.as_deref(), &self.text);
                (self.relay.prompt_estimate, counted + self.uncounted_bytes.div_ceil(4) as u64)
            }
        };
        settlement.correct(prompt, completion);
    }
}
