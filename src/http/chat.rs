//! `/v1/chat/completions` and `/v1/completions`: JSON, or Server-Sent
//! Events with `stream: true` (`data: {chunk}` events, `data: [DONE]` at
//! the end; an error during a stream is an error event, never followed by
//! `[DONE]`).

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use blaze_actors::cache::{CacheKey, Lookup};
use blaze_actors::guard::{Guard, OutputFilter};
use blaze_actors::inference::{
    ChatEvent, ChatEvents, ChatPool, EngineError, FinishReason, SamplingParams, WorkError,
};
use blaze_actors::router::ModelHandle;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;

use super::auth::Caller;
use super::cache::Caching;
use super::chat_request::{ChatRequest, CompletionRequest, Content, Message, Sampling, Stop};
use super::exchange::{respond, Answer, Body, Origin, Piece};
use super::guard::screen_input;
use super::json::{parse, StrictJson};
use super::ratelimit::{Gate, Reservation};
use super::routing::{resource, Route};
use super::validate::{check_count, check_other_fields, check_text, Endpoint};
use super::AppState;
use crate::error::ApiError;
use crate::settings::BodyLimitSettings;
use crate::settings::ValidationSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(resource(Route::ChatCompletions, limits).route(web::post().to(chat_completions)))
        .service(resource(Route::Completions, limits).route(web::post().to(completions)));
}

/// Refuses a text too long to fit the model's window whatever its tokens,
/// before the guard, the template or the tokenizer copy it.
fn check_text_fits(pool: &ChatPool, bytes: usize, param: &str) -> Result<(), ApiError> {
    let model = pool.model();
    if bytes <= model.most_text_bytes() {
        return Ok(());
    }
    Err(invalid(
        "context_length_exceeded",
        param,
        format!(
            "This model's maximum context length is {} tokens; your {param} hold {bytes} bytes of text, more than that many tokens can",
            model.context_length()
        ),
    ))
}

fn invalid(code: &'static str, param: &str, message: String) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}

fn chat_pool(state: &AppState, id: &str) -> Result<ChatPool, ApiError> {
    let model = super::openai::find_model(state, id)?;
    match &model.handle {
        ModelHandle::Chat(pool) => Ok(pool.clone()),
        ModelHandle::Embedding(_) => {
            Err(invalid("invalid_model", "model", format!("{id} is an embedding model; use /v1/embeddings")))
        }
    }
}

/// The sampling fields as far as no model decides them.
struct CheckedSampling {
    temperature: f32,
    top_p: f32,
    stop: Vec<String>,
    /// What the client asked for, if anything.
    max_tokens: Option<usize>,
}

/// Checks the ranges, `n`, the stop sequences and the `max_tokens` limit.
fn check_sampling(sampling: &Sampling, limits: &ValidationSettings) -> Result<CheckedSampling, ApiError> {
    if sampling.n.is_some_and(|n| n != 1) {
        return Err(invalid("invalid_n", "n", "only n = 1 is supported".to_owned()));
    }
    let temperature = sampling.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(
            "invalid_temperature",
            "temperature",
            "temperature must be between 0 and 2".to_owned(),
        ));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid("invalid_top_p", "top_p", "top_p must be above 0 and at most 1".to_owned()));
    }
    for (name, value) in
        [("presence_penalty", sampling.presence_penalty), ("frequency_penalty", sampling.frequency_penalty)]
    {
        if value.is_some_and(|value| !(-2.0..=2.0).contains(&value)) {
            return Err(invalid("invalid_penalty", name, format!("{name} must be between -2 and 2")));
        }
    }
    let stop = match &sampling.stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop.clone()],
        Some(Stop::Many(stops)) => stops.clone(),
    };
    if stop.len() > limits.max_stop_sequences || stop.iter().any(String::is_empty) {
        let message = format!("stop takes at most {} non-empty strings", limits.max_stop_sequences);
        return Err(invalid("invalid_stop", "stop", message));
    }
    for (index, sequence) in stop.iter().enumerate() {
        check_text(sequence, || format!("stop[{index}]"), limits)?;
    }
    let max_tokens = match sampling.max_completion_tokens.or(sampling.max_tokens) {
        Some(0) => {
            return Err(invalid(
                "invalid_max_tokens",
                "max_tokens",
                "max_tokens must be at least 1".to_owned(),
            ))
        }
        Some(max) if max > limits.max_tokens => {
            let message = format!("max_tokens is {max}; at most {} is accepted", limits.max_tokens);
            return Err(invalid("invalid_max_tokens", "max_tokens", message));
        }
        asked => asked,
    };
    Ok(CheckedSampling { temperature, top_p, stop, max_tokens })
}

/// Checks the sampling fields and fixes the generation's parameters.
fn sampling_params(
    sampling: &Sampling,
    prompt_tokens: usize,
    pool: &ChatPool,
    limits: &ValidationSettings,
) -> Result<SamplingParams, ApiError> {
    let CheckedSampling { temperature, top_p, stop, max_tokens } = check_sampling(sampling, limits)?;
    let window = pool.model().context_length();
    let max_tokens = max_tokens.unwrap_or_else(|| window.saturating_sub(prompt_tokens));
    pool.model().check_window(prompt_tokens, max_tokens).map_err(|_| {
        invalid(
            "context_length_exceeded",
            "messages",
            format!(
                "This model's maximum context length is {window} tokens; you requested {} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion)",
                prompt_tokens + max_tokens
            ),
        )
    })?;
    Ok(SamplingParams {
        max_tokens,
        temperature,
        top_p,
        seed: sampling.seed.map_or_else(rand_seed, |seed| seed as u32),
        presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
        frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
        stop,
    })
}

/// A chat or completions body parsed and checked as far as no model,
/// client or guard is needed: the handlers' first steps, in their order.
/// What the request fuzz target drives.
pub fn check_body(endpoint: Endpoint, bytes: &[u8], limits: &ValidationSettings) -> Result<(), ApiError> {
    let sampling = match endpoint {
        Endpoint::Chat => {
            let body: ChatRequest = parse(bytes)?;
            check_other_fields(&body.other, Endpoint::Chat)?;
            chat_turns(body.messages, limits)?;
            body.sampling
        }
        Endpoint::Completions => {
            let body: CompletionRequest = parse(bytes)?;
            check_other_fields(&body.other, Endpoint::Completions)?;
            check_text(&body.prompt, || "prompt".to_owned(), limits)?;
            body.sampling
        }
    };
    check_sampling(&sampling, limits).map(drop)
}

fn rand_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

fn text_of(content: Option<Content>, index: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|part| match (part.kind.as_str(), &part.text) {
                ("text", Some(text)) => Ok(text.as_str()),
                _ => Err(invalid(
                    "invalid_content",
                    &format!("messages[{index}].content"),
                    "only text content parts are supported".to_owned(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("")),
    }
}

async fn chat_completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: StrictJson<ChatRequest>,
) -> Result<HttpResponse, ApiError> {
    let origin = Origin::http(&request, caller.0, gate);
    chat(&state, &origin, body.into_inner()).await.map(respond)
}

/// A chat completions body, from either surface.
pub async fn chat_from_bytes(state: &AppState, origin: &Origin, bytes: &[u8]) -> Result<Answer, ApiError> {
    chat(state, origin, parse(bytes)?).await
}

async fn chat(state: &AppState, origin: &Origin, body: ChatRequest) -> Result<Answer, ApiError> {
    check_other_fields(&body.other, Endpoint::Chat)?;
    let pool = chat_pool(state, &body.model)?;
    let mut turns = chat_turns(body.messages, &state.validation)?;
    check_text_fits(&pool, turns.iter().map(|(role, text)| role.len() + text.len()).sum(), "messages")?;
    screen_input(state, origin, turns.iter_mut().map(|(_, text)| text), |index| {
        format!("messages[{index}].content")
    })?;
    let (prompt, panic) = chat_prompt(&pool, &turns)?;
    let call = Call::new(state, &pool, origin, &body.model, Kind::Chat);
    run(call, prompt, &body.sampling, panic).await
}

/// The messages as (role, text) turns, developer read as system; the
/// texts are moved, not copied.
fn chat_turns(
    messages: Vec<Message>,
    limits: &ValidationSettings,
) -> Result<Vec<(String, String)>, ApiError> {
    if messages.is_empty() {
        return Err(invalid("invalid_messages", "messages", "messages must not be empty".to_owned()));
    }
    check_count(messages.len(), limits.max_messages, "messages")?;
    let mut turns = Vec::with_capacity(messages.len());
    for (index, message) in messages.into_iter().enumerate() {
        if !matches!(message.role.as_str(), "system" | "developer" | "user" | "assistant") {
            let message = format!("messages[{index}].role must be system, developer, user or assistant");
            return Err(invalid("invalid_role", &format!("messages[{index}].role"), message));
        }
        let role = if message.role == "developer" { "system".to_owned() } else { message.role };
        let text = text_of(message.content, index)?;
        check_text(&text, || format!("messages[{index}].content"), limits)?;
        turns.push((role, text));
    }
    Ok(turns)
}

/// The prompt's tokens: the turns through the model's template. Also
/// whether a test asked the worker to panic.
fn chat_prompt(pool: &ChatPool, turns: &[(String, String)]) -> Result<(Vec<u32>, bool), ApiError> {
    let prompt = pool
        .model()
        .prompt_tokens(turns)
        .map_err(|error| invalid("invalid_messages", "messages", error.to_string()))?;
    #[cfg(feature = "test-hooks")]
    let panic = turns.iter().any(|(_, text)| text == "__blaze_test_panic__");
    #[cfg(not(feature = "test-hooks"))]
    let panic = false;
    Ok((prompt, panic))
}

/// Answers one request of the warming file into the cache, in `caching`'s
/// scope; a request that is not deterministic is refused.
pub async fn warm(state: &AppState, caching: Caching, route: Route, body: Value) -> Result<Lookup, ApiError> {
    let not_schema =
        |error: serde_json::Error| ApiError::bad_request("invalid_request_body", error.to_string());
    let (pool, prompt, sampling, kind, model) = match route {
        Route::ChatCompletions => {
            let request: ChatRequest = serde_json::from_value(body).map_err(not_schema)?;
            check_other_fields(&request.other, Endpoint::Chat)?;
            let pool = chat_pool(state, &request.model)?;
            let mut turns = chat_turns(request.messages, &state.validation)?;
            screen_warm(state, turns.iter_mut().map(|(_, text)| text))?;
            let (prompt, _) = chat_prompt(&pool, &turns)?;
            (pool, prompt, request.sampling, Kind::Chat, request.model)
        }
        _ => {
            let mut request: CompletionRequest = serde_json::from_value(body).map_err(not_schema)?;
            check_other_fields(&request.other, Endpoint::Completions)?;
            check_text(&request.prompt, || "prompt".to_owned(), &state.validation)?;
            let pool = chat_pool(state, &request.model)?;
            screen_warm(state, [&mut request.prompt])?;
            let prompt = pool.model().tokenize(&request.prompt, true);
            (pool, prompt, request.sampling, Kind::Text, request.model)
        }
    };
    if !deterministic(&sampling) {
        return Err(ApiError::bad_request(
            "not_cacheable",
            "set temperature 0 or a seed: only those are cached",
        ));
    }
    let params = sampling_params(&sampling, prompt.len(), &pool, &state.validation)?;
    let key = cache_key(&caching, kind, &model, &prompt, &params, &sampling);
    let cached = Some((caching, key));
    Ok(answer(&pool, &model, prompt, params, false, cached.as_ref()).await?.1)
}

/// A warming request is screened as a client's would be, so that its
/// cache key is the one a client's (redacted) request computes.
fn screen_warm<'a>(
    state: &AppState,
    texts: impl IntoIterator<Item = &'a mut String>,
) -> Result<(), ApiError> {
    state
        .guard
        .screen_input("warm", texts)
        .map(drop)
        .map_err(|blocked| ApiError::content_blocked(&blocked.category, "body"))
}

fn submit(
    pool: &ChatPool,
    prompt: Vec<u32>,
    params: SamplingParams,
    panic: bool,
) -> Result<ChatEvents, ApiError> {
    #[cfg(feature = "test-hooks")]
    let submitted = if panic { pool.submit_panicking(prompt, params) } else { pool.submit(prompt, params) };
    #[cfg(not(feature = "test-hooks"))]
    let submitted = {
        let _ = panic;
        pool.submit(prompt, params)
    };
    submitted.map_err(|overloaded| ApiError::overloaded(pool.model_id(), overloaded.retry_after_s))
}

/// The whole completion: from the cache, or generated once for every
/// identical request missing at the same time.
async fn answer(
    pool: &ChatPool,
    model: &str,
    prompt: Vec<u32>,
    params: SamplingParams,
    panic: bool,
    cached: Option<&(Caching, CacheKey)>,
) -> Result<(Record, Lookup), ApiError> {
    let Some((caching, key)) = cached else {
        return Ok((collect(submit(pool, prompt, params, panic)?, model).await?, Lookup::Bypass));
    };
    let compute = async {
        let record = collect(submit(pool, prompt, params, panic)?, model).await?;
        serde_json::to_vec(&record).map_err(|_| ApiError::internal("cache record"))
    };
    let (bytes, lookup) =
        caching.cache().get_or_compute(key, compute).await.map_err(|error| (*error).clone())?;
    let record = serde_json::from_slice(&bytes).map_err(|_| ApiError::internal("cache record"))?;
    Ok((record, lookup))
}

async fn completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: StrictJson<CompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let origin = Origin::http(&request, caller.0, gate);
    completion(&state, &origin, body.into_inner()).await.map(respond)
}

/// A completions body, from either surface.
pub async fn completion_from_bytes(
    state: &AppState,
    origin: &Origin,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    completion(state, origin, parse(bytes)?).await
}

async fn completion(
    state: &AppState,
    origin: &Origin,
    mut body: CompletionRequest,
) -> Result<Answer, ApiError> {
    check_other_fields(&body.other, Endpoint::Completions)?;
    check_text(&body.prompt, || "prompt".to_owned(), &state.validation)?;
    let pool = chat_pool(state, &body.model)?;
    check_text_fits(&pool, body.prompt.len(), "prompt")?;
    screen_input(state, origin, [&mut body.prompt], |_| "prompt".to_owned())?;
    let prompt = pool.model().tokenize(&body.prompt, true);
    let call = Call::new(state, &pool, origin, &body.model, Kind::Text);
    run(call, prompt, &body.sampling, false).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// What a generation runs with, besides its prompt and sampling.
struct Call<'a> {
    pool: &'a ChatPool,
    origin: &'a Origin,
    guard: &'a Guard,
    limits: &'a ValidationSettings,
    model: &'a str,
    kind: Kind,
    caching: Option<Caching>,
}

impl<'a> Call<'a> {
    fn new(state: &'a AppState, pool: &'a ChatPool, origin: &'a Origin, model: &'a str, kind: Kind) -> Self {
        let caching = Caching::of(state, origin.cache_allowed, &origin.principal);
        Self { pool, origin, guard: &state.guard, limits: &state.validation, model, kind, caching }
    }
}

/// A finished completion as the cache keeps it: enough to answer again as
/// JSON, or as a stream of the same chunks.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    pieces: Vec<String>,
    finish_reason: String,
    completion_tokens: usize,
}

impl Record {
    fn finish_reason(&self) -> FinishReason {
        if self.finish_reason == "length" {
            FinishReason::Length
        } else {
            FinishReason::Stop
        }
    }

    /// The answer as the client may see it: screened by the guard when it
    /// screens output (the cache keeps answers unscreened, so a change of
    /// the patterns applies to them too).
    fn screened(self, guard: &Guard) -> Self {
        if !guard.screens_output() {
            return self;
        }
        let mut text = self.pieces.concat();
        match guard.screen_output(&mut text) {
            Ok(_) => Self { pieces: vec![text], ..self },
            Err(_) => Self { pieces: Vec::new(), finish_reason: CONTENT_FILTER.to_owned(), ..self },
        }
    }

    /// The completion's events again, for the stream that replays it.
    fn replay(self) -> ChatEvents {
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let finish_reason = self.finish_reason();
        for piece in self.pieces {
            let _ = sender.send(ChatEvent::Text(piece));
        }
        let _ = sender.send(ChatEvent::Done { finish_reason, completion_tokens: self.completion_tokens });
        events
    }
}

/// OpenAI's finish reason for an answer its content filter stopped.
const CONTENT_FILTER: &str = "content_filter";

/// Whether a request's answer is always the same: greedy, or seeded.
fn deterministic(sampling: &Sampling) -> bool {
    sampling.temperature == Some(0.0) || sampling.seed.is_some()
}

/// The cache key of a generation: the prompt's tokens (the messages
/// through the template) and every parameter that changes the output.
fn cache_key(
    caching: &Caching,
    kind: Kind,
    model: &str,
    prompt: &[u32],
    params: &SamplingParams,
    sampling: &Sampling,
) -> CacheKey {
    let endpoint = match kind {
        Kind::Chat => Route::ChatCompletions.pattern(),
        Kind::Text => Route::Completions.pattern(),
    };
    // The prompt by its digest: hashing the tokens' bytes is much cheaper
    // than writing them out as JSON.
    let mut digest = sha2::Sha256::new();
    for token in prompt {
        digest.update(token.to_le_bytes());
    }
    let fields = json!({
        "prompt_sha256": format!("{:x}", digest.finalize()),
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": if params.temperature == 0.0 { None } else { sampling.seed },
        "stop": params.stop,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    });
    caching.key(endpoint, model, &fields)
}

/// A token reservation that settles when dropped, with the tokens counted
/// so far: the prompt, then each generated piece, then the exact usage.
struct Settlement {
    reservation: Option<Reservation>,
    used: u64,
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(self.used);
        }
    }
}

async fn run(call: Call<'_>, prompt: Vec<u32>, sampling: &Sampling, panic: bool) -> Result<Answer, ApiError> {
    let Call { pool, origin, guard, limits, model, kind, caching } = call;
    let params = sampling_params(sampling, prompt.len(), pool, limits)?;
    let prompt_tokens = prompt.len();
    let reservation = origin.gate.admit((prompt_tokens + params.max_tokens) as u64).await?;
    let mut settlement = Settlement { reservation, used: prompt_tokens as u64 };
    let cached = caching.filter(|_| deterministic(sampling)).map(|caching| {
        let key = cache_key(&caching, kind, model, &prompt, &params, sampling);
        (caching, key)
    });
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        Kind::Text => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
    };
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let reply = Reply { id, created, model: model.to_owned(), kind, prompt_tokens };
    if sampling.stream {
        let include_usage = sampling.stream_options.as_ref().is_some_and(|options| options.include_usage);
        let (events, lookup, store) = match cached {
            Some((caching, key)) => match caching.cache().get(&key).await.and_then(|(bytes, tier)| {
                serde_json::from_slice::<Record>(&bytes).ok().map(|record| (record, tier))
            }) {
                Some((record, tier)) => (record.replay(), Lookup::Hit(tier), Some((caching, key, false))),
                None => (submit(pool, prompt, params, panic)?, Lookup::Miss, Some((caching, key, true))),
            },
            None => (submit(pool, prompt, params, panic)?, Lookup::Bypass, None),
        };
        let key = store.as_ref().map(|(_, key, _)| key.clone());
        let store = store.and_then(|(caching, key, write)| write.then_some((caching, key)));
        let filter = guard.screens_output().then(|| OutputFilter::new(guard.rules()));
        let chunks = chunks(reply, events, include_usage, settlement, store, filter);
        return Ok(Answer::cached(Body::Stream(chunks.boxed_local()), lookup, key));
    }
    let (record, lookup) = tokio::select! {
        answer = answer(pool, model, prompt, params, panic, cached.as_ref()) => answer?,
        () = origin.hangup.wait() => return Err(ApiError::client_closed()),
    };
    settlement.used += record.completion_tokens as u64;
    let record = record.screened(guard);
    let body = serde_json::to_vec(&reply.body(&record)).map_err(|_| ApiError::internal("answer"))?;
    Ok(Answer::cached(Body::Json(body.into()), lookup, cached.map(|(_, key)| key)))
}

struct Reply {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "system_fingerprint": null, "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }

    fn delta(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(text) = text {
                    delta["content"] = json!(text);
                }
                json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }])
            }
            Kind::Text => {
                json!([{ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish }])
            }
        }
    }
}

impl Reply {
    /// The whole answer as JSON.
    fn body(&self, record: &Record) -> Value {
        let text = record.pieces.concat();
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text, "refusal": null },
                "logprobs": null,
                "finish_reason": record.finish_reason,
            }),
            Kind::Text => {
                json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": record.finish_reason })
            }
        };
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "system_fingerprint": null, "choices": [choice], "usage": self.usage(record.completion_tokens),
        })
    }
}

fn work_error(error: WorkError, model: &str) -> ApiError {
    match error {
        WorkError::Engine(EngineError::TooLong { tokens, limit }) => invalid(
            "context_length_exceeded",
            "messages",
            format!("This model's maximum context length is {limit} tokens; you requested {tokens}"),
        ),
        WorkError::Engine(error) => invalid("invalid_input", "messages", error.to_string()),
        WorkError::WorkerFailed => ApiError::worker_failed(model),
    }
}

/// The whole completion, piece by piece.
async fn collect(mut events: ChatEvents, model: &str) -> Result<Record, ApiError> {
    let mut pieces = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            ChatEvent::Text(piece) => pieces.push(piece),
            ChatEvent::Done { finish_reason, completion_tokens } => {
                return Ok(Record {
                    pieces,
                    finish_reason: finish_reason.as_str().to_owned(),
                    completion_tokens,
                });
            }
            ChatEvent::Failed(error) => return Err(work_error(error, model)),
        }
    }
    Err(ApiError::worker_failed(model))
}

fn chunk(value: &Value) -> Piece {
    Piece::Chunk(Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
}

/// The chunks of a streamed answer. Dropping the stream (the client went
/// away, or cancelled) drops the receiver, which stops the generation at
/// its next token. With an output filter, text reaches the client as the
/// filter releases it; a block ends the stream with finish_reason
/// content_filter (and stops the generation).
fn chunks(
    reply: Reply,
    events: ChatEvents,
    include_usage: bool,
    settlement: Settlement,
    store: Option<(Caching, CacheKey)>,
    filter: Option<OutputFilter>,
) -> impl futures_util::Stream<Item = Piece> {
    struct State {
        reply: Reply,
        events: ChatEvents,
        first: bool,
        finished: bool,
        queued: Vec<Piece>,
        settlement: Settlement,
        /// Where a complete stream is cached, with its pieces so far.
        store: Option<(Caching, CacheKey)>,
        pieces: Vec<String>,
        filter: Option<OutputFilter>,
        include_usage: bool,
    }

    impl State {
        /// The chunks that end the stream, in sending order.
        fn ending(
            &mut self,
            finish_reason: &str,
            completion_tokens: usize,
            rest: Option<String>,
        ) -> Vec<Piece> {
            let reply = &self.reply;
            let mut out = Vec::new();
            if let Some(rest) = rest.filter(|rest| !rest.is_empty()) {
                out.push(chunk(&reply.chunk(reply.delta(Some(&rest), self.first, None), None)));
                self.first = false;
            }
            out.push(chunk(&reply.chunk(reply.delta(None, self.first, Some(finish_reason)), None)));
            if self.include_usage {
                out.push(chunk(&reply.chunk(json!([]), Some(reply.usage(completion_tokens)))));
            }
            out.reverse();
            out
        }
    }

    let state = State {
        reply,
        events,
        first: true,
        finished: false,
        queued: Vec::new(),
        settlement,
        store,
        pieces: Vec::new(),
        filter,
        include_usage,
    };
    futures_util::stream::unfold(state, move |mut state| async move {
        loop {
            if let Some(piece) = state.queued.pop() {
                return Some((piece, state));
            }
            if state.finished {
                return None;
            }
            match state.events.recv().await {
                Some(ChatEvent::Text(piece)) => {
                    state.settlement.used += 1;
                    let released = match &mut state.filter {
                        None => Ok(piece.clone()),
                        Some(filter) => filter.push(&piece),
                    };
                    if state.store.is_some() {
                        state.pieces.push(piece);
                    }
                    match released {
                        Ok(text) if text.is_empty() => continue,
                        Ok(text) => {
                            let reply = &state.reply;
                            let piece =
                                chunk(&reply.chunk(reply.delta(Some(&text), state.first, None), None));
                            state.first = false;
                            return Some((piece, state));
                        }
                        Err(_) => {
                            // Blocked: not cached, and the generation stops
                            // with the receiver.
                            state.store = None;
                            let used = state.settlement.used as usize;
                            let completion_tokens = used.saturating_sub(state.reply.prompt_tokens);
                            state.queued = state.ending(CONTENT_FILTER, completion_tokens, None);
                            state.events.close();
                            state.finished = true;
                        }
                    }
                }
                Some(ChatEvent::Done { finish_reason, completion_tokens }) => {
                    state.settlement.used = (state.reply.prompt_tokens + completion_tokens) as u64;
                    if let Some((caching, key)) = state.store.take() {
                        let pieces = std::mem::take(&mut state.pieces);
                        let finish_reason = finish_reason.as_str().to_owned();
                        let record = Record { pieces, finish_reason, completion_tokens };
                        if let Ok(bytes) = serde_json::to_vec(&record) {
                            caching.cache().put(&key, bytes).await;
                        }
                    }
                    let (reason, rest) = match state.filter.as_mut().map(OutputFilter::finish) {
                        None => (finish_reason.as_str(), None),
                        Some(Ok(rest)) => (finish_reason.as_str(), Some(rest)),
                        Some(Err(_)) => (CONTENT_FILTER, None),
                    };
                    state.queued = state.ending(reason, completion_tokens, rest);
                    state.finished = true;
                }
                Some(ChatEvent::Failed(error)) => {
                    state.finished = true;
                    return Some((Piece::Failed(work_error(error, &state.reply.model)), state));
                }
                None => {
                    state.finished = true;
                    return Some((Piece::Failed(ApiError::worker_failed(&state.reply.model)), state));
                }
            }
        }
    })
}
