//! A request for a gateway route (`crate::gateway`), read top to bottom:
//! its texts validated and screened, the request admitted with an
//! estimate of its tokens, looked up in the cache (whole JSON answers of
//! deterministic requests) and the route's semantic cache, then its
//! targets tried in the route's order until one answers. A local target
//! runs the pipeline of its endpoint on the screened body with the
//! route's admission; an upstream gets the client's body (its model
//! renamed), its output screened and the admission settled with the usage
//! it reports (or counted). The answer is recorded in the caches.
//!
//! A failure moves on to the next target only while nothing went to the
//! client: never once a stream has started.

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::Bytes;
use blaze_actors::cache::{CacheKey, Lookup};
use blaze_actors::router::ModelHandle;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;
use tracing::Instrument;

use super::admit::{Charge, Settlement};
use super::answer::{Answer, Body};
use super::caching::Caching;
use super::origin::Origin;
use super::relay::Relay;
use super::request::parse;
use super::screen::{screen_input, screen_output, CONTENT_FILTER};
use super::semantic::{self, SemanticLookup};
use super::validate::{check_count, check_text};
use super::{chat, completion, embeddings, Endpoint, Pipeline};
use crate::error::{ApiError, ErrorCode};
use crate::gateway::{Backend, Exchange, Failure, Route, Target, Upstream, UpstreamPath};
use crate::routes::Route as HttpRoute;

/// A request of `endpoint` whose model is the gateway route `route`.
pub async fn routed(
    pipeline: &Pipeline,
    origin: &Origin,
    route: &Arc<Route>,
    endpoint: Endpoint,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    let mut forward = Forward::prepare(pipeline, origin, route, endpoint, bytes).await?;
    if let Some(answer) = forward.cached.take() {
        return Ok(answer);
    }
    let semantic = match semantic::look_up(pipeline, origin, route, endpoint, &forward.fields).await {
        SemanticLookup::Hit(answer) => {
            forward.settle_from(&answer);
            return Ok(answer);
        }
        SemanticLookup::Miss(ask) => Some(ask),
        SemanticLookup::Skipped => None,
    };
    let mut last_error = None;
    for (target, _) in pipeline.gateway.attempts(route) {
        let outcome = match &target.backend {
            Backend::Local => local(pipeline, origin, &target, &mut forward).await,
            Backend::Upstream(upstream) => {
                upstream_attempt(pipeline, origin, &target, upstream, &mut forward).await
            }
        };
        match outcome {
            Ok(mut answer) => {
                answer.served_by = Some(target.id.clone());
                if let Some(ask) = semantic {
                    answer.body = match answer.body {
                        Body::Json(bytes) => {
                            ask.keep(pipeline, &bytes).await;
                            Body::Json(bytes)
                        }
                        Body::Stream(pieces) => Body::Stream(ask.keep_stream(pipeline, pieces)),
                    };
                }
                return Ok(answer);
            }
            Err((error, true)) => last_error = Some(error),
            Err((error, false)) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| ApiError::upstream_failed(&route.id, &Failure::Connect)))
}

/// An answer, or an error and whether another target may be tried.
type Outcome = Result<Answer, (ApiError, bool)>;

/// What a local target's refusal allows: another target when the model
/// could not take the request (busy, loading, unloaded, its worker
/// failed before answering).
fn local_unavailable(error: &ApiError) -> bool {
    matches!(
        error.code(),
        ErrorCode::ModelOverloaded
            | ErrorCode::ModelLoading
            | ErrorCode::ModelUnloaded
            | ErrorCode::WorkerFailed
    )
}

/// A local target answers as if asked directly, with the body as the
/// guard left it and the route's admission (it is not charged again).
async fn local(pipeline: &Pipeline, origin: &Origin, target: &Arc<Target>, forward: &mut Forward) -> Outcome {
    let id = target.id.as_str();
    // A full queue overflows at once, before it takes the admission.
    let full = pipeline
        .models
        .registry()
        .get(id)
        .is_some_and(|model| matches!(&model.handle, ModelHandle::Chat(pool) if pool.is_full()));
    if full {
        return Err((ApiError::overloaded(id, 1), true));
    }
    let admitted = forward.settlement.take().map(Settlement::into_admitted).unwrap_or_default();
    let origin = origin.for_target(origin.gate.preadmitted(admitted));
    let body = forward.body_for(id, false);
    let _in_flight = target.start();
    let started = Instant::now();
    let answer = match forward.endpoint {
        Endpoint::Chat => match parse::<super::ChatRequest>(&body) {
            Ok(body) => chat(pipeline, &origin, body).await,
            Err(error) => Err(error),
        },
        Endpoint::Completions => match parse::<super::CompletionRequest>(&body) {
            Ok(body) => completion(pipeline, &origin, body).await,
            Err(error) => Err(error),
        },
        Endpoint::Embeddings | Endpoint::Responses => match parse::<super::EmbeddingsRequest>(&body) {
            Ok(body) => embeddings(pipeline, &origin, body).await,
            Err(error) => Err(error),
        },
    };
    if let Some(admitted) = origin.gate.unused() {
        // Refused before it was admitted: the next target takes it.
        let estimate = forward.prompt_estimate as usize;
        forward.settlement = Some(Settlement::new(admitted, estimate, &forward.route.id, &origin.meter));
    }
    match answer {
        Ok(answer) => {
            target.health.succeeded(started.elapsed());
            Ok(answer)
        }
        Err(error) if local_unavailable(&error) => {
            if error.code() != ErrorCode::ModelOverloaded {
                target.health.failed(error.code().as_str());
            }
            Err((error, true))
        }
        Err(error) => Err((error, false)),
    }
}

/// The request as the upstreams get it, and what it was admitted with.
struct Forward {
    route: Arc<Route>,
    endpoint: Endpoint,
    /// The client's body, its texts as screened.
    fields: Map<String, Value>,
    stream: bool,
    /// `stream_options.include_usage` was added for the count: the usage
    /// chunk is not the client's.
    usage_added: bool,
    prompt_estimate: u64,
    settlement: Option<Settlement>,
    /// A cached answer, taken by the first upstream attempt.
    cached: Option<Answer>,
    /// Where its answer is kept (a deterministic whole-JSON request).
    store: Option<(Caching, CacheKey)>,
}

impl Forward {
    async fn prepare(
        pipeline: &Pipeline,
        origin: &Origin,
        route: &Arc<Route>,
        endpoint: Endpoint,
        bytes: &[u8],
    ) -> Result<Self, ApiError> {
        let mut fields: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|_| ApiError::bad_request(ErrorCode::InvalidJson, "The body must be a JSON object"))?;
        let text_bytes = screen_texts(pipeline, origin, endpoint, &mut fields)?;
        let stream = fields.get("stream").and_then(Value::as_bool).unwrap_or(false);
        // An upstream is asked for the usage of a stream (the chunk is not
        // the client's unless it asked too).
        let usage_added = stream
            && fields.get("stream_options").and_then(|options| options["include_usage"].as_bool())
                != Some(true);
        // Admit with an estimate (4 bytes a token, and what the completion
        // may take); settled with the real usage.
        let prompt_estimate = (text_bytes / 4 + 1) as u64;
        let completion_most = match endpoint {
            Endpoint::Embeddings => 0,
            _ => ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|name| fields.get(*name).and_then(Value::as_u64))
                .unwrap_or(pipeline.validation.max_tokens as u64),
        };
        let charge =
            Charge { model: &route.id, prompt_tokens: prompt_estimate, completion_tokens: completion_most };
        let admitted = origin.gate.admit_charge(charge).await?;
        let settlement = Settlement::new(admitted, prompt_estimate as usize, &route.id, &origin.meter);
        let mut forward = Self {
            route: route.clone(),
            endpoint,
            fields,
            stream,
            usage_added,
            prompt_estimate,
            settlement: Some(settlement),
            cached: None,
            store: None,
        };
        forward.look_up(pipeline, origin).await;
        Ok(forward)
    }

    /// A whole-JSON request whose answer is always the same is looked up
    /// (by its whole body, in the caller's scope).
    async fn look_up(&mut self, pipeline: &Pipeline, origin: &Origin) {
        let deterministic = self.endpoint == Endpoint::Embeddings
            || self.fields.get("temperature").and_then(Value::as_f64) == Some(0.0)
            || self.fields.get("seed").is_some_and(|seed| !seed.is_null());
        if self.stream || !deterministic {
            return;
        }
        let Some(caching) = Caching::of(pipeline, origin.cache_allowed, &origin.principal) else { return };
        let body = serde_json::to_vec(&self.fields).unwrap_or_default();
        let digest = format!("{:x}", sha2::Sha256::digest(&body));
        let key = caching.key(
            pattern(self.endpoint),
            &self.route.id,
            &serde_json::json!({ "body_sha256": digest }),
        );
        if let Some((bytes, tier)) = caching.cache().get(&key).await {
            let answer =
                Answer::cached(Body::Json(Bytes::copy_from_slice(&bytes)), Lookup::Hit(tier), Some(key));
            self.settle_from(&answer);
            self.cached = Some(answer);
            return;
        }
        self.store = Some((caching, key));
    }

    /// An answer from a cache settles the admission with its usage.
    fn settle_from(&mut self, answer: &Answer) {
        let Some(mut settlement) = self.settlement.take() else { return };
        if let Body::Json(bytes) = &answer.body {
            if let Ok(Peek { usage: Some(usage), .. }) = serde_json::from_slice::<Peek>(bytes) {
                settlement.correct(usage.prompt_tokens, usage.completion_tokens.unwrap_or(0));
            }
        }
    }

    /// The body for a target that calls the model `model`; an upstream's
    /// (`upstream`) asks for a stream's usage.
    fn body_for(&mut self, model: &str, upstream: bool) -> Bytes {
        // Changed in place and put back: the body is not copied.
        let client_model = self.fields.insert("model".to_owned(), Value::String(model.to_owned()));
        let client_options = (upstream && self.usage_added).then(|| {
            let mut options = match self.fields.get("stream_options") {
                Some(Value::Object(options)) => options.clone(),
                _ => Map::new(),
            };
            options.insert("include_usage".to_owned(), Value::Bool(true));
            self.fields.insert("stream_options".to_owned(), Value::Object(options))
        });
        let body = Bytes::from(serde_json::to_vec(&self.fields).unwrap_or_default());
        restore(&mut self.fields, "model", client_model);
        if let Some(options) = client_options {
            restore(&mut self.fields, "stream_options", options);
        }
        body
    }
}

/// Puts a field back as the client sent it (or absent).
fn restore(fields: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    match value {
        Some(value) => fields.insert(name.to_owned(), value),
        None => fields.remove(name),
    };
}

/// The route's cache entries are filed under its endpoint's pattern.
fn pattern(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => HttpRoute::ChatCompletions.pattern(),
        Endpoint::Completions => HttpRoute::Completions.pattern(),
        Endpoint::Embeddings | Endpoint::Responses => HttpRoute::Embeddings.pattern(),
    }
}

/// Checks and screens the texts that reach the model (redacted in place);
/// returns their size.
fn screen_texts(
    pipeline: &Pipeline,
    origin: &Origin,
    endpoint: Endpoint,
    fields: &mut Map<String, Value>,
) -> Result<usize, ApiError> {
    let limits = &pipeline.validation;
    let (field, texts) = match endpoint {
        Endpoint::Chat => {
            let messages = fields.get_mut("messages").and_then(Value::as_array_mut);
            let messages = messages.ok_or_else(|| missing("messages"))?;
            check_count(messages.len(), limits.max_messages, "messages")?;
            let texts = messages.iter_mut().flat_map(|message| match message.get_mut("content") {
                Some(Value::String(text)) => vec![text],
                Some(Value::Array(parts)) => parts
                    .iter_mut()
                    .filter_map(|part| match part.get_mut("text") {
                        Some(Value::String(text)) => Some(text),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            });
            ("messages", texts.collect::<Vec<&mut String>>())
        }
        Endpoint::Completions => ("prompt", strings(fields.get_mut("prompt"))),
        Endpoint::Embeddings | Endpoint::Responses => {
            let texts = strings(fields.get_mut("input"));
            check_count(texts.len(), limits.max_embedding_inputs, "input")?;
            ("input", texts)
        }
    };
    let mut size = 0;
    for (index, text) in texts.iter().enumerate() {
        check_text(text, || format!("{field}[{index}]"), limits)?;
        size += text.len();
    }
    screen_input(pipeline, origin, texts, |index| format!("{field}[{index}]"))?;
    Ok(size)
}

fn missing(field: &str) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidBody, format!("`{field}` is required")).with_param(field)
}

/// A string, or the strings of an array.
fn strings(value: Option<&mut Value>) -> Vec<&mut String> {
    match value {
        Some(Value::String(text)) => vec![text],
        Some(Value::Array(items)) => items
            .iter_mut()
            .filter_map(|item| match item {
                Value::String(text) => Some(text),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The parts of an answer the gateway reads: its usage, and its texts
/// (when it reports no usage, they are counted).
#[derive(Deserialize)]
pub(super) struct Peek {
    pub usage: Option<UsagePeek>,
    pub choices: Option<Vec<ChoicePeek>>,
    pub data: Option<serde::de::IgnoredAny>,
    pub error: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct UsagePeek {
    pub prompt_tokens: u64,
    pub completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct ChoicePeek {
    pub message: Option<TextPeek>,
    pub delta: Option<TextPeek>,
    pub text: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct TextPeek {
    pub content: Option<String>,
}

impl ChoicePeek {
    pub fn text(&self) -> &str {
        fn content(peek: &Option<TextPeek>) -> Option<&str> {
            peek.as_ref().and_then(|peek| peek.content.as_deref())
        }
        content(&self.message).or(content(&self.delta)).or(self.text.as_deref()).unwrap_or_default()
    }
}

/// Tokens of `text`, by the upstream's tokenizer (a local chat model)
/// when it names one that is loaded, else 4 bytes a token.
pub(super) fn count_tokens(pipeline: &Pipeline, tokenizer: Option<&str>, text: &str) -> u64 {
    let model = tokenizer.and_then(|id| pipeline.models.registry().get(id));
    match model.as_deref().map(|model| &model.handle) {
        Some(ModelHandle::Chat(pool)) => pool.model().tokenize(text, false).len() as u64,
        _ => text.len().div_ceil(4) as u64,
    }
}

async fn upstream_attempt(
    pipeline: &Pipeline,
    origin: &Origin,
    target: &Arc<Target>,
    upstream: &Upstream,
    forward: &mut Forward,
) -> Outcome {
    let path = match forward.endpoint {
        Endpoint::Chat => UpstreamPath::ChatCompletions,
        Endpoint::Completions => UpstreamPath::Completions,
        Endpoint::Embeddings | Endpoint::Responses => UpstreamPath::Embeddings,
    };
    let body = forward.body_for(&upstream.model, true);
    let in_flight = target.start();
    let span = tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        "upstream",
        otel.kind = "client",
        blaze.gateway.target = target.id.as_str(),
        gen_ai.request.model = upstream.model.as_str(),
    );
    let sent = upstream.send(path, body, origin.request_id.as_str(), forward.stream).instrument(span).await;
    let route = forward.route.id.clone();
    let route = &route;
    let (exchange, latency) = match sent {
        Ok(answer) => answer,
        Err(failure) => {
            if failure.counts_against_target() {
                target.health.failed(failure.class());
            }
            tracing::warn!(
                request_id = origin.request_id.as_str(),
                gateway_target = %target.id,
                class = failure.class(),
                "gateway: upstream attempt failed"
            );
            return Err((ApiError::upstream_failed(route, &failure), failure.retryable()));
        }
    };
    match exchange {
        Exchange::Json(bytes) => match whole_answer(pipeline, upstream, forward, bytes) {
            Ok(bytes) => {
                target.health.succeeded(latency);
                if let Some((caching, key)) = forward.store.take() {
                    caching.cache().put(&key, bytes.to_vec()).await;
                    return Ok(Answer::cached(Body::Json(bytes), Lookup::Miss, Some(key)));
                }
                Ok(Answer::cached(Body::Json(bytes), Lookup::Bypass, None))
            }
            Err(failure) => {
                target.health.failed(failure.class());
                Err((ApiError::upstream_failed(route, &failure), false))
            }
        },
        Exchange::Stream { first, rest, permit } => {
            target.health.succeeded(latency);
            let relay = Relay {
                route: route.clone(),
                target: target.clone(),
                tokenizer: upstream.tokenizer.clone(),
                pipeline: pipeline.clone(),
                usage_added: forward.usage_added,
                prompt_estimate: forward.prompt_estimate,
                settlement: forward.settlement.take(),
                _in_flight: in_flight,
                _permit: permit,
            };
            Ok(Answer::cached(Body::Stream(relay.stream(first, rest)), Lookup::Bypass, None))
        }
    }
}

/// A whole JSON answer checked (its shape), screened (its texts, when the
/// guard screens output) and its usage settled.
fn whole_answer(
    pipeline: &Pipeline,
    upstream: &Upstream,
    forward: &mut Forward,
    bytes: Bytes,
) -> Result<Bytes, Failure> {
    let peek: Peek = serde_json::from_slice(&bytes).map_err(|_| Failure::Invalid("its body is not JSON"))?;
    let shaped = match forward.endpoint {
        Endpoint::Embeddings | Endpoint::Responses => peek.data.is_some(),
        _ => peek.choices.is_some(),
    };
    if !shaped {
        return Err(Failure::Invalid("its body lacks the endpoint's fields"));
    }
    let tokenizer = upstream.tokenizer.as_deref();
    let (prompt, completion) = match &peek.usage {
        Some(usage) => (usage.prompt_tokens, usage.completion_tokens.unwrap_or(0)),
        None => {
            let text: String = peek.choices.iter().flatten().map(ChoicePeek::text).collect();
            (forward.prompt_estimate, count_tokens(pipeline, tokenizer, &text))
        }
    };
    if let Some(mut settlement) = forward.settlement.take() {
        settlement.correct(prompt, completion);
    }
    if forward.endpoint == Endpoint::Embeddings || !pipeline.guard.screens_output() {
        return Ok(bytes);
    }
    let mut answer: Value =
        serde_json::from_slice(&bytes).map_err(|_| Failure::Invalid("its body is not JSON"))?;
    for choice in answer["choices"].as_array_mut().into_iter().flatten() {
        let text = match forward.endpoint {
            Endpoint::Chat => choice.pointer_mut("/message/content"),
            _ => choice.get_mut("text"),
        };
        let Some(Value::String(text)) = text else { continue };
        match screen_output(&pipeline.guard, std::mem::take(text)) {
            Some(screened) => *text = screened,
            None => choice["finish_reason"] = Value::String(CONTENT_FILTER.to_owned()),
        }
    }
    Ok(Bytes::from(serde_json::to_vec(&answer).unwrap_or_default()))
}
