//! The semantic cache's stage of a gateway route: a request whose final
//! turn embeds (on the route's local embedding model) near the final turn
//! of an answered request with the same fingerprint (route, caller's
//! scope, every parameter, the earlier turns) gets that answer, with
//! `x-blaze-cache: hit-semantic` and `x-blaze-cache-similarity`. Answers
//! are kept from whole JSON answers and from streams that finished.
//!
//! Only single-turn requests by default: a later turn means what the
//! turns before it make it mean, and a cache keyed on it alone answers a
//! follow-up of one conversation with another's (the stale replays other
//! gateways are known for); with `multi_turn` the earlier turns are part
//! of the fingerprint, so they must match exactly.
//!
//! The answers live in the response cache (its tiers, shared through
//! Redis when it has one), under a key of the fingerprint and the text;
//! the index of texts is the route's (`blaze_actors::cache::semantic`).

use std::sync::Arc;

use actix_web::web::Bytes;
use blaze_actors::cache::{CacheKey, Lookup, SemanticEntry};
use serde_json::{Map, Value};
use sha2::Digest;

use super::answer::{Answer, Body, Piece};
use super::caching::Caching;
use super::embeddings::embed_text;
use super::origin::Origin;
use super::{Endpoint, Pipeline};
use crate::gateway::{Route, SemanticCache};

/// A request the semantic cache may answer, and where its answer goes.
pub struct SemanticAsk {
    route: Arc<Route>,
    fingerprint: u64,
    text: Arc<str>,
    vector: Vec<f32>,
    caching: Caching,
    endpoint: Endpoint,
}

/// What the semantic cache did for a request.
pub enum SemanticLookup {
    /// Not for it (off, streamed, several turns, n > 1, no-cache).
    Skipped,
    Hit(Answer),
    /// Not found: its answer is kept when it comes.
    Miss(SemanticAsk),
}

/// Looks the request up; an embedding failure only skips the cache.
pub async fn look_up(
    pipeline: &Pipeline,
    origin: &Origin,
    route: &Arc<Route>,
    endpoint: Endpoint,
    fields: &Map<String, Value>,
) -> SemanticLookup {
    let Some(semantic) = &route.semantic else { return SemanticLookup::Skipped };
    let Some(caching) = Caching::of(pipeline, origin.cache_allowed, &origin.principal) else {
        return SemanticLookup::Skipped;
    };
    let Some((text, context)) = final_turn(semantic, endpoint, fields) else {
        return SemanticLookup::Skipped;
    };
    let vector = match embed_text(pipeline, &semantic.spec.embedding_model, &text).await {
        Ok(vector) => vector,
        Err(error) => {
            tracing::warn!(route = %route.id, error = %error, "semantic cache: cannot embed; skipped");
            return SemanticLookup::Skipped;
        }
    };
    let fingerprint = fingerprint(&route.id, caching.scope(), endpoint, fields, &context);
    let threshold = semantic.spec.similarity_threshold;
    if let Some(hit) = semantic.index.nearest(fingerprint, &vector, &text, threshold) {
        let key = answer_key(&caching, &route.id, fingerprint, &hit.text);
        if let Some((bytes, _)) = caching.cache().get(&key).await {
            metrics::counter!("blaze_semantic_cache_requests_total", "route" => route.id.clone(), "result" => "hit")
                .increment(1);
            let stream = fields.get("stream").and_then(Value::as_bool) == Some(true);
            let include_usage =
                fields.get("stream_options").and_then(|options| options["include_usage"].as_bool())
                    == Some(true);
            let bytes = Bytes::copy_from_slice(&bytes);
            let body = if stream {
                Body::Stream(replay(&bytes, endpoint, include_usage))
            } else {
                Body::Json(bytes)
            };
            let mut answer = Answer::cached(body, Lookup::Semantic, Some(key));
            answer.similarity = Some(hit.similarity);
            return SemanticLookup::Hit(answer);
        }
    }
    metrics::counter!("blaze_semantic_cache_requests_total", "route" => route.id.clone(), "result" => "miss")
        .increment(1);
    let text = Arc::from(text);
    SemanticLookup::Miss(SemanticAsk { route: route.clone(), fingerprint, text, vector, caching, endpoint })
}

impl SemanticAsk {
    /// Keeps a whole JSON answer for the requests near this one.
    pub async fn keep(self, pipeline: &Pipeline, answer: &Bytes) {
        let answered = serde_json::from_slice::<Value>(answer).is_ok_and(|value| value["choices"].is_array());
        if !answered {
            return;
        }
        let key = answer_key(&self.caching, &self.route.id, self.fingerprint, &self.text);
        self.caching.cache().put(&key, answer.to_vec()).await;
        let entry = SemanticEntry { fingerprint: self.fingerprint, text: self.text, vector: self.vector };
        pipeline.gateway.keep_semantic(&self.route, entry);
    }
}

impl SemanticAsk {
    /// The same stream, read as it passes: when it ends with its choice
    /// finished (not failed, not dropped by the client), the whole answer
    /// it made is kept as a JSON answer would be.
    pub fn keep_stream(
        self,
        pipeline: &Pipeline,
        pieces: futures_util::stream::LocalBoxStream<'static, Piece>,
    ) -> futures_util::stream::LocalBoxStream<'static, Piece> {
        use futures_util::StreamExt;
        let answer = StreamedAnswer { chat: self.endpoint == Endpoint::Chat, ..StreamedAnswer::default() };
        let state = (pieces, answer, Some(self), pipeline.clone());
        futures_util::stream::unfold(state, |(mut pieces, mut answer, mut ask, pipeline)| async move {
            match pieces.next().await {
                Some(piece) => {
                    match &piece {
                        Piece::Chunk(bytes) => answer.read(bytes),
                        Piece::Event(..) | Piece::Failed(_) => answer.failed = true,
                    }
                    Some((piece, (pieces, answer, ask, pipeline)))
                }
                None => {
                    if let (Some(ask), Some(bytes)) = (ask.take(), answer.whole()) {
                        ask.keep(&pipeline, &bytes).await;
                    }
                    None
                }
            }
        })
        .boxed_local()
    }
}

/// A streamed answer put back together from its chunks.
#[derive(Default)]
struct StreamedAnswer {
    chat: bool,
    first: Option<Value>,
    content: String,
    finish_reason: Option<Value>,
    usage: Option<Value>,
    failed: bool,
}

impl StreamedAnswer {
    fn read(&mut self, bytes: &Bytes) {
        let Ok(chunk) = serde_json::from_slice::<Value>(bytes) else {
            self.failed = true;
            return;
        };
        if let Some(choices) = chunk["choices"].as_array() {
            for choice in choices {
                if choice["index"].as_u64().unwrap_or(0) != 0 {
                    self.failed = true;
                }
                if let Some(text) = choice["delta"]["content"].as_str().or(choice["text"].as_str()) {
                    self.content.push_str(text);
                }
                if !choice["finish_reason"].is_null() {
                    self.finish_reason = Some(choice["finish_reason"].clone());
                }
            }
        }
        if !chunk["usage"].is_null() {
            self.usage = Some(chunk["usage"].clone());
        }
        if self.first.is_none() {
            self.first = Some(chunk);
        }
    }

    /// The whole answer, if the stream finished whole.
    fn whole(&self) -> Option<Bytes> {
        let (first, finish_reason) = (self.first.as_ref()?, self.finish_reason.as_ref()?);
        if self.failed {
            return None;
        }
        let choice = if self.chat {
            serde_json::json!({"index": 0, "message": {"role": "assistant", "content": self.content}, "finish_reason": finish_reason})
        } else {
            serde_json::json!({"index": 0, "text": self.content, "finish_reason": finish_reason})
        };
        let answer = serde_json::json!({
            "id": first["id"],
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": first["created"],
            "model": first["model"],
            "choices": [choice],
            "usage": self.usage.clone().unwrap_or(Value::Null),
        });
        Some(Bytes::from(answer.to_string()))
    }
}

/// The final turn's text and what came before it (empty for a single
/// turn), or `None` when the request is not for the semantic cache.
fn final_turn(
    semantic: &SemanticCache,
    endpoint: Endpoint,
    fields: &Map<String, Value>,
) -> Option<(String, Value)> {
    if fields.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return None;
    }
    match endpoint {
        Endpoint::Chat => {
            let messages = fields.get("messages")?.as_array()?;
            let (last, earlier) = messages.split_last()?;
            if last["role"] != "user" {
                return None;
            }
            let conversation = earlier.iter().any(|message| message["role"] != "system");
            if conversation && !semantic.spec.multi_turn {
                return None;
            }
            let text = match &last["content"] {
                Value::String(text) => text.clone(),
                Value::Array(parts) => {
                    if parts.iter().any(|part| part["type"] != "text") {
                        return None;
                    }
                    parts.iter().filter_map(|part| part["text"].as_str()).collect::<Vec<_>>().join("\n")
                }
                _ => return None,
            };
            let mut final_message = last.clone();
            if let Some(message) = final_message.as_object_mut() {
                message.remove("content");
            }
            Some((text, Value::Array(earlier.iter().cloned().chain([final_message]).collect())))
        }
        Endpoint::Completions => Some((fields.get("prompt")?.as_str()?.to_owned(), Value::Null)),
        Endpoint::Embeddings | Endpoint::Responses => None,
    }
}

/// Everything that makes an answer what it is but the final turn's text.
fn fingerprint(
    route: &str,
    scope: &str,
    endpoint: Endpoint,
    fields: &Map<String, Value>,
    context: &Value,
) -> u64 {
    let mut digest = sha2::Sha256::new();
    for part in [route, scope, if endpoint == Endpoint::Chat { "chat" } else { "completions" }] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    let parameters: Map<String, Value> = fields
        .iter()
        .filter(|(name, _)| {
            !matches!(name.as_str(), "messages" | "prompt" | "stream" | "stream_options" | "user" | "model")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    digest.update(Value::Object(parameters).to_string().as_bytes());
    digest.update([0]);
    digest.update(context.to_string().as_bytes());
    let hash = digest.finalize();
    u64::from_le_bytes([hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7]])
}

/// Where the answer of the request with `fingerprint` and final `text` is.
fn answer_key(caching: &Caching, route: &str, fingerprint: u64, text: &str) -> CacheKey {
    let text_sha256 = format!("{:x}", sha2::Sha256::digest(text.as_bytes()));
    caching.key(
        "semantic",
        route,
        &serde_json::json!({ "fingerprint": fingerprint, "text_sha256": text_sha256 }),
    )
}

/// A cached whole answer as the chunks of a stream: the role, the text,
/// the finish reason, and the usage when asked for.
fn replay(
    answer: &Bytes,
    endpoint: Endpoint,
    include_usage: bool,
) -> futures_util::stream::LocalBoxStream<'static, Piece> {
    use futures_util::StreamExt;
    let answer: Value = serde_json::from_slice(answer).unwrap_or_default();
    let chat = endpoint == Endpoint::Chat;
    let base = |choices: Value| {
        serde_json::json!({
            "id": answer["id"],
            "object": if chat { "chat.completion.chunk" } else { "text_completion" },
            "created": answer["created"],
            "model": answer["model"],
            "choices": choices,
        })
    };
    let mut chunks = Vec::new();
    for choice in answer["choices"].as_array().into_iter().flatten() {
        let index = &choice["index"];
        if chat {
            let content = &choice["message"]["content"];
            chunks.push(base(serde_json::json!([{"index": index, "delta": {"role": "assistant", "content": content}, "finish_reason": null}])));
            chunks.push(base(
                serde_json::json!([{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]),
            ));
        } else {
            chunks.push(base(serde_json::json!([{"index": index, "text": choice["text"], "finish_reason": choice["finish_reason"]}])));
        }
    }
    if include_usage {
        let mut usage = base(serde_json::json!([]));
        usage["usage"] = answer["usage"].clone();
        chunks.push(usage);
    }
    let pieces: Vec<Piece> =
        chunks.into_iter().map(|chunk| Piece::Chunk(Bytes::from(chunk.to_string()))).collect();
    futures_util::stream::iter(pieces).boxed_local()
}
