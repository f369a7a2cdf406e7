//! The OpenAI-compatible API: `/v1/embeddings`, `/v1/models`. Same field
//! names and shapes as OpenAI's, so the official SDKs work unchanged.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use blaze_actors::cache::{CacheKey, Lookup, Tier};
use blaze_actors::inference::{EmbeddingPool, EngineError, WorkError};
use blaze_actors::router::{ModelHandle, ModelState, ServedModel};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::cache::Caching;
use super::exchange::{respond, Answer, Body, Origin};
use super::guard::screen_input;
use super::json::{parse, StrictJson};
use super::ratelimit::Gate;
use super::routing::{resource, Route};
use super::validate::{check_count, check_text};
use super::AppState;
use crate::error::ApiError;
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(resource(Route::Embeddings, limits).route(web::post().to(embeddings)))
        .service(super::get(Route::Models, limits, list_models))
        .service(super::get(Route::Model, limits, get_model));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: EmbeddingInput,
    model: String,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many inputs, and each text within the limits.
    fn check(&self, limits: &crate::settings::ValidationSettings) -> Result<(), ApiError> {
        match self {
            EmbeddingInput::Text(text) => check_text(text, || "input".to_owned(), limits),
            EmbeddingInput::Texts(texts) => {
                check_count(texts.len(), limits.max_embedding_inputs, "input")?;
                for (index, text) in texts.iter().enumerate() {
                    check_text(text, || format!("input[{index}]"), limits)?;
                }
                Ok(())
            }
            EmbeddingInput::Tokens(_) => Ok(()),
            EmbeddingInput::TokenLists(lists) => {
                check_count(lists.len(), limits.max_embedding_inputs, "input")
            }
        }
    }

    /// The texts to screen (token ids are not text).
    fn texts_mut(&mut self) -> Vec<&mut String> {
        match self {
            EmbeddingInput::Text(text) => vec![text],
            EmbeddingInput::Texts(texts) => texts.iter_mut().collect(),
            EmbeddingInput::Tokens(_) | EmbeddingInput::TokenLists(_) => Vec::new(),
        }
    }
}

/// An embeddings body parsed and its inputs checked, as the handler
/// does before it needs the model. What the request fuzz target drives.
pub fn check_body(bytes: &[u8], limits: &crate::settings::ValidationSettings) -> Result<(), ApiError> {
    parse::<EmbeddingsRequest>(bytes)?.input.check(limits)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The served model `id`: 404 when the catalog has no such model, 503 while
/// it is still loading or its load failed.
pub(crate) fn find_model(state: &AppState, id: &str) -> Result<Arc<ServedModel>, ApiError> {
    match state.models.get(id) {
        Some(model) => Ok(model),
        None => match state.models.state(id) {
            ModelState::Unknown => Err(ApiError::model_not_found(id)),
            _ => Err(ApiError::model_not_ready(id)),
        },
    }
}

async fn embeddings(
    state: web::Data<AppState>,
    http_request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: StrictJson<EmbeddingsRequest>,
) -> Result<HttpResponse, ApiError> {
    let origin = Origin::http(&http_request, caller.0, gate);
    embed(&state, &origin, body.into_inner()).await.map(respond)
}

/// An embeddings body, from either surface.
pub async fn embeddings_from_bytes(
    state: &AppState,
    origin: &Origin,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    embed(state, origin, parse(bytes)?).await
}

async fn embed(
    state: &AppState,
    origin: &Origin,
    mut request: EmbeddingsRequest,
) -> Result<Answer, ApiError> {
    request.input.check(&state.validation)?;
    let model = find_model(state, &request.model)?;
    let ModelHandle::Embedding(pool) = &model.handle else {
        let message = format!("{} is a chat model; use /v1/chat/completions", request.model);
        return Err(ApiError::bad_request("invalid_model", message).with_param("model"));
    };
    let single = matches!(request.input, EmbeddingInput::Text(_));
    screen_input(state, origin, request.input.texts_mut(), |index| {
        if single {
            "input".to_owned()
        } else {
            format!("input[{index}]")
        }
    })?;
    let dimensions = pool.tokenizer().dimensions();
    if request.dimensions.is_some_and(|asked| asked != dimensions) {
        let message = format!(
            "{} gives {dimensions} dimensions; omit `dimensions` or set it to {dimensions}",
            request.model
        );
        return Err(ApiError::bad_request("invalid_dimensions", message).with_param("dimensions"));
    }
    let tokens = tokenize(pool, request.input).await?;
    let prompt_tokens = tokens.iter().map(Vec::len).sum();
    // The exact count is known: nothing to settle later.
    origin.gate.admit(prompt_tokens as u64).await?;
    let caching = Caching::of(state, origin.cache_allowed, &origin.principal);
    let (vectors, lookup, key) = tokio::select! {
        answer = answer(pool, &request.model, caching.as_ref(), tokens) => answer?,
        () = origin.hangup.wait() => return Err(ApiError::client_closed()),
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingData {
            object: "embedding",
            index,
            embedding: encode(vector, request.encoding_format),
        })
        .collect();
    let response = EmbeddingsResponse {
        object: "list",
        data,
        model: request.model,
        usage: Usage { prompt_tokens, total_tokens: prompt_tokens },
    };
    let body = serde_json::to_vec(&response).map_err(|_| ApiError::internal("answer"))?;
    Ok(Answer::cached(Body::Json(body.into()), lookup, key))
}

/// Answers one embeddings request of the warming file into the cache.
pub async fn warm(state: &AppState, caching: Caching, body: serde_json::Value) -> Result<Lookup, ApiError> {
    let mut request: EmbeddingsRequest = serde_json::from_value(body)
        .map_err(|error| ApiError::bad_request("invalid_request_body", error.to_string()))?;
    request.input.check(&state.validation)?;
    state
        .guard
        .screen_input("warm", request.input.texts_mut())
        .map_err(|blocked| ApiError::content_blocked(&blocked.category, "input"))?;
    let model = find_model(state, &request.model)?;
    let ModelHandle::Embedding(pool) = &model.handle else {
        return Err(ApiError::bad_request(
            "invalid_model",
            format!("{} is not an embedding model", request.model),
        ));
    };
    let tokens = tokenize(pool, request.input).await?;
    Ok(answer(pool, &request.model, Some(&caching), tokens).await?.1)
}

fn vector_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|value| value.to_le_bytes()).collect()
}

fn vector_of(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])).collect()
}

/// The vectors of every input: each one cached on its own (the model and
/// its tokens), so inputs already cached are not computed again inside a
/// larger batch; one input alone computes once however many ask at once.
/// Returns what the lookup found (the slowest tier when every input was
/// cached; a miss when any was computed) and, for one input, its key.
async fn answer(
    pool: &EmbeddingPool,
    model: &str,
    caching: Option<&Caching>,
    tokens: Vec<Vec<u32>>,
) -> Result<(Vec<Vec<f32>>, Lookup, Option<CacheKey>), ApiError> {
    let Some(caching) = caching else {
        return Ok((compute(pool, tokens).await?, Lookup::Bypass, None));
    };
    let keys: Vec<CacheKey> = tokens
        .iter()
        .map(|tokens| {
            caching.key(Route::Embeddings.pattern(), model, &serde_json::json!({ "tokens": tokens }))
        })
        .collect();
    if let [key] = keys.as_slice() {
        let compute = async { compute(pool, tokens).await.map(|vectors| vector_bytes(&vectors[0])) };
        let (bytes, lookup) =
            caching.cache().get_or_compute(key, compute).await.map_err(|error| (*error).clone())?;
        return Ok((vec![vector_of(&bytes)], lookup, Some(key.clone())));
    }
    let found = futures_util::future::join_all(keys.iter().map(|key| caching.cache().get(key))).await;
    let missing: Vec<usize> = (0..keys.len()).filter(|&index| found[index].is_none()).collect();
    let mut vectors: Vec<Vec<f32>> =
        found.iter().map(|hit| hit.as_ref().map_or_else(Vec::new, |(bytes, _)| vector_of(bytes))).collect();
    if missing.is_empty() {
        let slowest = found.iter().flatten().map(|(_, tier)| *tier).max_by_key(|tier| match tier {
            Tier::Memory => 0,
            Tier::Redis => 1,
            Tier::Disk => 2,
        });
        return Ok((vectors, slowest.map_or(Lookup::Miss, Lookup::Hit), None));
    }
    let inputs: Vec<Vec<u32>> = missing.iter().map(|&index| tokens[index].clone()).collect();
    let computed = compute(pool, inputs).await?;
    for (&index, vector) in missing.iter().zip(computed) {
        caching.cache().put(&keys[index], vector_bytes(&vector)).await;
        vectors[index] = vector;
    }
    Ok((vectors, Lookup::Miss, None))
}

/// The model's tokens of every input, checked; on the blocking pool when
/// there are many, so the HTTP worker stays free.
async fn tokenize(pool: &EmbeddingPool, input: EmbeddingInput) -> Result<Vec<Vec<u32>>, ApiError> {
    let input_error = |message: String| ApiError::bad_request("invalid_input", message).with_param("input");
    let count = match &input {
        EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
        EmbeddingInput::Texts(texts) => texts.len(),
        EmbeddingInput::TokenLists(lists) => lists.len(),
    };
    if count == 0 {
        return Err(input_error("`input` must not be empty".to_owned()));
    }
    let pool = pool.clone();
    let work = move || -> Result<Vec<Vec<u32>>, ApiError> {
        let tokenizer = pool.tokenizer();
        let from_texts = |texts: Vec<String>| {
            texts
                .into_iter()
                .enumerate()
                .map(|(index, text)| {
                    if text.is_empty() {
                        return Err(input_error(format!("input[{index}] is an empty string")));
                    }
                    tokenizer.tokenize(&text).map_err(|error| engine_error(error, index))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let tokens = match input {
            EmbeddingInput::Text(text) => from_texts(vec![text])?,
            EmbeddingInput::Texts(texts) => from_texts(texts)?,
            EmbeddingInput::Tokens(tokens) => vec![tokens],
            EmbeddingInput::TokenLists(lists) => lists,
        };
        for (index, tokens) in tokens.iter().enumerate() {
            tokenizer.check_tokens(tokens).map_err(|error| engine_error(error, index))?;
        }
        Ok(tokens)
    };
    if count <= 16 {
        work()
    } else {
        actix_web::rt::task::spawn_blocking(work).await.map_err(|_| ApiError::internal("tokenizer"))?
    }
}

fn engine_error(error: EngineError, index: usize) -> ApiError {
    match error {
        EngineError::TooLong { tokens, limit } => ApiError::bad_request(
            "context_length_exceeded",
            format!("input[{index}] has {tokens} tokens; this model takes at most {limit} per input"),
        )
        .with_param("input"),
        EngineError::Input(message) => {
            ApiError::bad_request("invalid_input", format!("input[{index}]: {message}")).with_param("input")
        }
        EngineError::Load(_) => ApiError::unavailable("the model is not loaded"),
    }
}

async fn compute(pool: &EmbeddingPool, tokens: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ApiError> {
    #[cfg(feature = "test-hooks")]
    let receiver = if tokens.first().is_some_and(|first| is_test_panic(pool, first)) {
        pool.submit_panicking(tokens)
    } else {
        pool.submit(tokens)
    };
    #[cfg(not(feature = "test-hooks"))]
    let receiver = pool.submit(tokens);
    let receiver =
        receiver.map_err(|overloaded| ApiError::overloaded(pool.model(), overloaded.retry_after_s))?;
    match receiver.await {
        Ok(Ok(vectors)) => Ok(vectors),
        Ok(Err(WorkError::Engine(error))) => Err(engine_error(error, 0)),
        Ok(Err(WorkError::WorkerFailed)) | Err(_) => Err(ApiError::worker_failed(pool.model())),
    }
}

/// Test hook: the text `__blaze_test_panic__` makes the worker panic.
#[cfg(feature = "test-hooks")]
fn is_test_panic(pool: &EmbeddingPool, tokens: &[u32]) -> bool {
    pool.tokenizer().tokenize("__blaze_test_panic__").is_ok_and(|marker| marker == tokens)
}

fn encode(vector: Vec<f32>, format: EncodingFormat) -> EmbeddingValue {
    match format {
        EncodingFormat::Float => EmbeddingValue::Float(vector),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
            EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

fn model_object(model: &ServedModel) -> ModelObject<'_> {
    ModelObject { id: &model.id, object: "model", created: model.created, owned_by: "blaze" }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

thread_local! {
    /// This worker's serialized model list and the registry generation it
    /// shows: SDKs ask for the list often, and it changes only when a
    /// model is published.
    static MODEL_LIST: std::cell::RefCell<Option<(u64, web::Bytes)>> = const { std::cell::RefCell::new(None) };
}

async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type(actix_web::http::header::ContentType::json()).body(model_list(&state))
}

/// The served models, as `GET /v1/models` lists them (serialized).
pub fn model_list(state: &AppState) -> web::Bytes {
    let generation = state.models.generation();
    MODEL_LIST.with_borrow_mut(|cached| match cached {
        Some((shown, body)) if *shown == generation => body.clone(),
        _ => {
            let (generation, models) = state.models.all_with_generation();
            let list =
                ModelList { object: "list", data: models.iter().map(|model| model_object(model)).collect() };
            let body = web::Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
            *cached = Some((generation, body.clone()));
            body
        }
    })
}

async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let model = find_model(&state, &id)?;
    Ok(HttpResponse::Ok().json(model_object(&model)))
}
