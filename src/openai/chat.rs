//! `/v1/chat/completions` and `/v1/completions`, read top to bottom: the
//! body validated (with the grammar of a structured output or of the
//! calls of its tools), its texts
//! screened, the prompt tokenized, the request
//! admitted with its tokens reserved, the answer looked up in the cache or
//! generated, the output screened, the reservation settled and the answer
//! recorded. Whole JSON, or a stream of chunks with `stream: true`.

use std::time::Duration;

use blaze_actors::cache::{CacheKey, Lookup};
use blaze_actors::inference::ChatPool;
use blaze_actors::router::ModelHandle;
use futures_util::StreamExt;

use super::admit::{Charge, Settlement};
use super::answer::{Answer, Body};
use super::caching::{deterministic, generation_key, Caching, Record};
use super::generation::{cached_or_generated, sampling_params, Job, OutputAsks};
use super::origin::Origin;
use super::reply::{Kind, Reply};
use super::request::{parse, ChatRequest, CompletionRequest, Sampling};
use super::screen::{screen_input, screen_output, CONTENT_FILTER};
use super::stream::{chunks, StreamParts};
use super::tools::ToolAsk;
use super::validate::{
    chat_turns, check_other_fields, check_sampling, check_text, check_text_fits, choices, invalid,
};
use super::{find_model_waited, Endpoint, Pipeline};
use crate::error::{ApiError, ErrorCode};
use crate::routes::Route;
use crate::settings::ValidationSettings;

/// A chat completions body, from either transport.
pub async fn chat_from_bytes(pipeline: &Pipeline, origin: &Origin, bytes: &[u8]) -> Result<Answer, ApiError> {
    let body: ChatRequest = parse(bytes)?;
    if let Some(route) = pipeline.gateway.route(&body.model) {
        return super::routed::routed(pipeline, origin, route, Endpoint::Chat, bytes).await;
    }
    chat(pipeline, origin, body).await
}

/// A completions body, from either transport.
pub async fn completion_from_bytes(
    pipeline: &Pipeline,
    origin: &Origin,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    let body: CompletionRequest = parse(bytes)?;
    if let Some(route) = pipeline.gateway.route(&body.model) {
        return super::routed::routed(pipeline, origin, route, Endpoint::Completions, bytes).await;
    }
    completion(pipeline, origin, body).await
}

/// `POST /v1/chat/completions`.
pub async fn chat(pipeline: &Pipeline, origin: &Origin, body: ChatRequest) -> Result<Answer, ApiError> {
    // Validate: the fields, the model, the messages, their size.
    check_other_fields(&body.other, Endpoint::Chat)?;
    let (pool, waited) = chat_pool(pipeline, &body.model).await?;
    origin.meter.model(&body.model);
    let asks = OutputAsks::of(&pool, &body.other, Endpoint::Chat)?;
    let mut turns = chat_turns(body.messages, &pipeline.validation)?;
    check_text_fits(&pool, turns.iter().map(|(role, text)| role.len() + text.len()).sum(), "messages")?;
    // Screen what will reach the model (redacted in place).
    screen_input(pipeline, origin, turns.iter_mut().map(|(_, text)| text), |index| {
        format!("messages[{index}].content")
    })?;
    // The prompt: the turns (and the tools) through the model's template.
    let tools = asks.tools.as_ref().map_or(&[][..], |tools| tools.definitions.as_slice());
    let prompt = chat_prompt(&pool, &turns, tools)?;
    let call = Call::new(pipeline, &pool, origin, &body.model, Kind::Chat).after(waited);
    generate(call, prompt, &body.sampling, asks).await
}

/// `POST /v1/completions`.
pub async fn completion(
    pipeline: &Pipeline,
    origin: &Origin,
    mut body: CompletionRequest,
) -> Result<Answer, ApiError> {
    check_other_fields(&body.other, Endpoint::Completions)?;
    check_text(&body.prompt, || "prompt".to_owned(), &pipeline.validation)?;
    let (pool, waited) = chat_pool(pipeline, &body.model).await?;
    origin.meter.model(&body.model);
    let asks = OutputAsks::of(&pool, &body.other, Endpoint::Completions)?;
    check_text_fits(&pool, body.prompt.len(), "prompt")?;
    screen_input(pipeline, origin, [&mut body.prompt], |_| "prompt".to_owned())?;
    let prompt = pool.model().tokenize(&body.prompt, true);
    let call = Call::new(pipeline, &pool, origin, &body.model, Kind::Text).after(waited);
    generate(call, prompt, &body.sampling, asks).await
}

/// What a generation runs with, besides its prompt and sampling.
struct Call<'a> {
    pipeline: &'a Pipeline,
    pool: &'a ChatPool,
    origin: &'a Origin,
    model: &'a str,
    kind: Kind,
    caching: Option<Caching>,
    /// How long the request waited for the model to load again.
    waited: Duration,
}

impl<'a> Call<'a> {
    fn new(
        pipeline: &'a Pipeline,
        pool: &'a ChatPool,
        origin: &'a Origin,
        model: &'a str,
        kind: Kind,
    ) -> Self {
        let caching = Caching::of(pipeline, origin.cache_allowed, &origin.principal);
        Self { pipeline, pool, origin, model, kind, caching, waited: Duration::ZERO }
    }

    /// The request waited `waited` for the model to load again: its time
    /// to first token counts it.
    fn after(self, waited: Duration) -> Self {
        Self { waited, ..self }
    }
}

/// The stages after the prompt is known: admit, cache lookup, infer,
/// screen output, settle, record.
async fn generate(
    call: Call<'_>,
    prompt: Vec<u32>,
    sampling: &Sampling,
    asks: OutputAsks,
) -> Result<Answer, ApiError> {
    let Call { pipeline, pool, origin, model, kind, caching, waited } = call;
    let reads_calls = asks.tools.as_ref().is_some_and(ToolAsk::reads_calls);
    let params = sampling_params(sampling, prompt.len(), pool, &pipeline.validation, asks)?;
    let choices = choices(sampling);
    // Admit: the prompt and the most the completions may take are reserved;
    // the settlement corrects that with the real count when it drops.
    let charge = Charge {
        model,
        prompt_tokens: prompt.len() as u64,
        completion_tokens: (choices * params.max_tokens) as u64,
    };
    let admitted = origin.gate.admit_charge(charge).await?;
    let mut settlement = Settlement::new(admitted, prompt.len(), model, &origin.meter);
    let cached = caching.filter(|_| deterministic(sampling)).map(|caching| {
        let key = generation_key(&caching, endpoint(kind), model, &prompt, &params, sampling);
        (caching, key)
    });
    let reply = Reply::new(kind, model, prompt.len(), params.logprobs.is_some()).reading_calls(reads_calls);
    let job = Job { pool, model, prompt, params, choices, waited };
    if sampling.stream {
        let include_usage = sampling.stream_options.as_ref().is_some_and(|options| options.include_usage);
        return stream(pipeline, job, cached, StreamStart { reply, include_usage, settlement }).await;
    }
    // Cache lookup, else infer; a client that hangs up gives its place up.
    let (records, lookup) = tokio::select! {
        answer = cached_or_generated(job, cached.as_ref()) => answer?,
        () = origin.hangup.wait() => return Err(ApiError::client_closed()),
    };
    settlement.used += records.iter().map(|record| record.completion_tokens as u64).sum::<u64>();
    settlement.cached = records.iter().map(|record| record.cached_tokens as u64).max().unwrap_or(0);
    let records: Vec<Record> = records.into_iter().map(|record| screened(pipeline, record)).collect();
    Ok(Answer::cached(Body::Json(reply.body(&records)), lookup, cached.map(|(_, key)| key)))
}

/// The route a generation's cache entries are filed under.
fn endpoint(kind: Kind) -> &'static str {
    match kind {
        Kind::Chat => Route::ChatCompletions.pattern(),
        Kind::Text => Route::Completions.pattern(),
    }
}

/// What a stream starts with.
struct StreamStart {
    reply: Reply,
    include_usage: bool,
    settlement: Settlement,
}

/// A streamed answer: a cached one replayed, or the generation's events
/// (recorded in the cache when they complete).
async fn stream(
    pipeline: &Pipeline,
    job: Job<'_>,
    cached: Option<(Caching, CacheKey)>,
    start: StreamStart,
) -> Result<Answer, ApiError> {
    let (events, lookup, key, store) = match cached {
        Some((caching, key)) => match cached_records(&caching, &key).await {
            Some((records, tier)) => {
                let replays = records.into_iter().map(Record::replay).collect();
                (replays, Lookup::Hit(tier), Some(key), None)
            }
            None => (job.stream()?, Lookup::Miss, Some(key.clone()), Some((caching, key))),
        },
        None => (job.stream()?, Lookup::Bypass, None, None),
    };
    let guard = &pipeline.guard;
    let screen = guard.screens_output().then(|| guard.rules());
    let StreamStart { reply, include_usage, settlement } = start;
    let parts = StreamParts { reply, include_usage, settlement, store, screen };
    Ok(Answer::cached(Body::Stream(chunks(parts, events).boxed_local()), lookup, key))
}

async fn cached_records(
    caching: &Caching,
    key: &CacheKey,
) -> Option<(Vec<Record>, blaze_actors::cache::Tier)> {
    let (bytes, tier) = caching.cache().get(key).await?;
    serde_json::from_slice::<Vec<Record>>(&bytes).ok().map(|records| (records, tier))
}

/// The answer as the client may see it: screened by the guard when it
/// screens output.
fn screened(pipeline: &Pipeline, mut record: Record) -> Record {
    if !pipeline.guard.screens_output() {
        return record;
    }
    match screen_output(&pipeline.guard, record.pieces.concat()) {
        // The screen may rewrite the text: its tokens' log probabilities
        // go with it whole.
        Some(text) => {
            let logprobs = record.logprobs.take().map(|logprobs| vec![logprobs.concat()]);
            Record { pieces: vec![text], logprobs, ..record }
        }
        None => Record {
            pieces: Vec::new(),
            finish_reason: CONTENT_FILTER.to_owned(),
            logprobs: record.logprobs.as_ref().map(|_| Vec::new()),
            ..record
        },
    }
}

/// The chat model `id`'s pool, and how long the request waited for the
/// model to load again.
pub(super) async fn chat_pool(pipeline: &Pipeline, id: &str) -> Result<(ChatPool, Duration), ApiError> {
    let (model, waited) = find_model_waited(pipeline, id).await?;
    match &model.handle {
        ModelHandle::Chat(pool) => Ok((pool.clone(), waited.unwrap_or_default())),
        ModelHandle::Embedding(_) => Err(invalid(
            ErrorCode::InvalidModel,
            "model",
            format!("{id} is an embedding model; use /v1/embeddings"),
        )),
    }
}

/// The prompt's tokens: the turns (and the tools the model may call)
/// through the model's template.
pub(super) fn chat_prompt(
    pool: &ChatPool,
    turns: &[(String, String)],
    tools: &[serde_json::Value],
) -> Result<Vec<u32>, ApiError> {
    pool.model()
        .prompt_tokens(turns, tools)
        .map_err(|error| invalid(ErrorCode::InvalidMessages, "messages", error.to_string()))
}

/// A chat body parsed and checked as far as no model, client or guard is
/// needed: the first steps of [`chat`], in their order.
pub fn check_chat_body(bytes: &[u8], limits: &ValidationSettings) -> Result<(), ApiError> {
    check_chat_request(parse(bytes)?, limits)
}

/// A chat request checked as [`check_chat_body`] checks one.
pub fn check_chat_request(body: ChatRequest, limits: &ValidationSettings) -> Result<(), ApiError> {
    check_other_fields(&body.other, Endpoint::Chat)?;
    OutputAsks::check(&body.other, Endpoint::Chat)?;
    chat_turns(body.messages, limits)?;
    check_sampling(&body.sampling, limits).map(drop)
}

/// A completions body checked as [`check_chat_body`] checks a chat's.
pub fn check_completion_body(bytes: &[u8], limits: &ValidationSettings) -> Result<(), ApiError> {
    let body: CompletionRequest = parse(bytes)?;
    check_other_fields(&body.other, Endpoint::Completions)?;
    OutputAsks::check(&body.other, Endpoint::Completions)?;
    check_text(&body.prompt, || "prompt".to_owned(), limits)?;
    check_sampling(&body.sampling, limits).map(drop)
}
