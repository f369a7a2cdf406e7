//! `/v1/embeddings`, read top to bottom: the inputs validated and
//! screened, tokenized, the request admitted with its exact token count,
//! each input's vector looked up in the cache or computed on the model's
//! pool, the answer recorded.

use base64::Engine as _;
use blaze_actors::cache::{CacheKey, Lookup, Tier};
use blaze_actors::inference::{EmbeddingPool, EngineError, Truncation, WorkError};
use blaze_actors::router::ModelHandle;

use super::admit::{Charge, Settlement};
use super::answer::{Answer, Body};
use super::caching::Caching;
use super::origin::Origin;
use super::request::{parse, EmbeddingInput, EmbeddingsRequest, EncodingFormat, TruncationDirection};
use super::response::{Embedding, EmbeddingList, EmbeddingUsage, EmbeddingVector};
use super::screen::{screen_input, screen_warm};
use super::validate::{check_count, check_text};
use super::{find_model, Pipeline};
use crate::error::{ApiError, ErrorCode};
use crate::routes::Route;
use crate::settings::ValidationSettings;

/// An embeddings body, from either transport.
pub async fn embeddings_from_bytes(
    pipeline: &Pipeline,
    origin: &Origin,
    bytes: &[u8],
) -> Result<Answer, ApiError> {
    let request: EmbeddingsRequest = parse(bytes)?;
    if let Some(route) = pipeline.gateway.route(&request.model) {
        return super::routed::routed(pipeline, origin, route, super::Endpoint::Embeddings, bytes).await;
    }
    embeddings(pipeline, origin, request).await
}

/// An embeddings body parsed and its inputs checked, as [`embeddings`]
/// does before it needs the model.
pub fn check_body(bytes: &[u8], limits: &ValidationSettings) -> Result<(), ApiError> {
    parse::<EmbeddingsRequest>(bytes)?.input.check(limits)
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    pipeline: &Pipeline,
    origin: &Origin,
    mut request: EmbeddingsRequest,
) -> Result<Answer, ApiError> {
    request.input.check(&pipeline.validation)?;
    let model = find_model(pipeline, &request.model).await?;
    origin.meter.model(&request.model);
    let ModelHandle::Embedding(pool) = &model.handle else {
        let message = format!("{} is a chat model; use /v1/chat/completions", request.model);
        return Err(ApiError::bad_request(ErrorCode::InvalidModel, message).with_param("model"));
    };
    let single = matches!(request.input, EmbeddingInput::Text(_));
    screen_input(pipeline, origin, request.input.texts_mut(), |index| {
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
        return Err(ApiError::bad_request(ErrorCode::InvalidDimensions, message).with_param("dimensions"));
    }
    let truncation = truncation(request.truncate, request.truncation_direction, pool);
    let tokens = tokenize(pool, request.input, truncation, std::sync::Arc::new(input_name)).await?;
    let prompt_tokens = tokens.iter().map(Vec::len).sum();
    // The exact count is known: nothing to settle later.
    let charge = Charge { model: &request.model, prompt_tokens: prompt_tokens as u64, completion_tokens: 0 };
    let _settled = Settlement::new(
        origin.gate.admit_charge(charge).await?,
        prompt_tokens,
        &request.model,
        &origin.meter,
    );
    let caching = Caching::of(pipeline, origin.cache_allowed, &origin.principal);
    let (vectors, lookup, key) = tokio::select! {
        answer = answer(pool, &request.model, caching.as_ref(), tokens) => answer?,
        () = origin.hangup.wait() => return Err(ApiError::client_closed()),
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| Embedding {
            object: "embedding",
            index,
            embedding: encode(vector, request.encoding_format),
        })
        .collect();
    let response = EmbeddingList {
        object: "list",
        data,
        model: &request.model,
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    let body = serde_json::to_vec(&response).map_err(|error| ApiError::internal_failure("answer", &error))?;
    Ok(Answer::cached(Body::Json(body.into()), lookup, key))
}

/// How inputs too long are cut, if they are: as the request says
/// (`truncate`, `truncation_direction`), else as the model's
/// `auto_truncate` says.
pub(super) fn truncation(
    truncate: Option<bool>,
    direction: Option<TruncationDirection>,
    pool: &EmbeddingPool,
) -> Option<Truncation> {
    let truncate = truncate.unwrap_or_else(|| pool.tokenizer().auto_truncate());
    truncate.then_some(match direction {
        Some(TruncationDirection::Left) => Truncation::KeepEnd,
        Some(TruncationDirection::Right) | None => Truncation::KeepStart,
    })
}

/// How an error names the text at an index of what is embedded, as
/// `field[index]` or `field`; the part before `[` is the error's `param`.
pub(super) type TextNames = std::sync::Arc<dyn Fn(usize) -> String + Send + Sync>;

fn input_name(index: usize) -> String {
    format!("input[{index}]")
}

fn input_shape_error() -> ApiError {
    ApiError::bad_request(
        ErrorCode::InvalidInput,
        "`input` must be a string, an array of strings, an array of token ids, \
         or an array of arrays of token ids",
    )
    .with_param("input")
}

impl EmbeddingInput {
    /// How many inputs, and each text within the limits.
    fn check(&self, limits: &ValidationSettings) -> Result<(), ApiError> {
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
            EmbeddingInput::Invalid => Err(input_shape_error()),
        }
    }

    /// The texts to screen (token ids are not text).
    fn texts_mut(&mut self) -> Vec<&mut String> {
        match self {
            EmbeddingInput::Text(text) => vec![text],
            EmbeddingInput::Texts(texts) => texts.iter_mut().collect(),
            EmbeddingInput::Tokens(_) | EmbeddingInput::TokenLists(_) | EmbeddingInput::Invalid => Vec::new(),
        }
    }
}

/// Answers one embeddings request of the warming file into the cache.
pub async fn warm(
    pipeline: &Pipeline,
    caching: Caching,
    body: serde_json::Value,
) -> Result<Lookup, ApiError> {
    let mut request: EmbeddingsRequest = serde_json::from_value(body)
        .map_err(|error| ApiError::bad_request(ErrorCode::InvalidRequestBody, error.to_string()))?;
    request.input.check(&pipeline.validation)?;
    screen_warm(&pipeline.guard, request.input.texts_mut(), "input")?;
    let model = find_model(pipeline, &request.model).await?;
    let ModelHandle::Embedding(pool) = &model.handle else {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidModel,
            format!("{} is not an embedding model", request.model),
        ));
    };
    let truncation = truncation(request.truncate, request.truncation_direction, pool);
    let tokens = tokenize(pool, request.input, truncation, std::sync::Arc::new(input_name)).await?;
    Ok(answer(pool, &request.model, Some(&caching), tokens).await?.1)
}

/// The vector of one text on the embedding model `model` (cut to fit the
/// model): what the semantic cache compares.
pub(super) async fn embed_text(pipeline: &Pipeline, model: &str, text: &str) -> Result<Vec<f32>, ApiError> {
    let served = find_model(pipeline, model).await?;
    let ModelHandle::Embedding(pool) = &served.handle else {
        return Err(ApiError::unavailable("the semantic cache's embedding model is not an embedding model"));
    };
    let input = EmbeddingInput::Text(text.to_owned());
    let tokens = tokenize(pool, input, Some(Truncation::KeepStart), std::sync::Arc::new(input_name)).await?;
    let mut vectors = compute(pool, tokens).await?;
    vectors.pop().ok_or_else(|| ApiError::worker_failed(model))
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
pub(super) async fn answer(
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

/// The model's tokens of every input, cut to fit with `truncation`,
/// checked; on the blocking pool when there are many, so the HTTP worker
/// stays free. `names` names a text in errors.
pub(super) async fn tokenize(
    pool: &EmbeddingPool,
    input: EmbeddingInput,
    truncation: Option<Truncation>,
    names: TextNames,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let count = match &input {
        EmbeddingInput::Invalid => return Err(input_shape_error()),
        EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
        EmbeddingInput::Texts(texts) => texts.len(),
        EmbeddingInput::TokenLists(lists) => lists.len(),
    };
    if count == 0 {
        let name = names(0);
        let param = param_of(&name);
        return Err(ApiError::bad_request(ErrorCode::InvalidInput, format!("`{param}` must not be empty"))
            .with_param(param));
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
                        let name = names(index);
                        return Err(ApiError::bad_request(
                            ErrorCode::InvalidInput,
                            format!("{name} is an empty string"),
                        )
                        .with_param(param_of(&name)));
                    }
                    match truncation {
                        None => tokenizer.tokenize(&text),
                        Some(truncation) => tokenizer.tokenize_truncated(&text, truncation),
                    }
                    .map_err(|error| engine_error(error, &names(index)))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let from_ids = |lists: Vec<Vec<u32>>| match truncation {
            None => lists,
            Some(truncation) => {
                lists.into_iter().map(|ids| tokenizer.truncate_ids(ids, truncation)).collect()
            }
        };
        let tokens = match input {
            EmbeddingInput::Text(text) => from_texts(vec![text])?,
            EmbeddingInput::Texts(texts) => from_texts(texts)?,
            EmbeddingInput::Tokens(tokens) => from_ids(vec![tokens]),
            EmbeddingInput::TokenLists(lists) => from_ids(lists),
            EmbeddingInput::Invalid => return Err(input_shape_error()),
        };
        for (index, tokens) in tokens.iter().enumerate() {
            tokenizer.check_tokens(tokens).map_err(|error| engine_error(error, &names(index)))?;
        }
        Ok(tokens)
    };
    if count <= 16 {
        work()
    } else {
        actix_web::rt::task::spawn_blocking(work)
            .await
            .map_err(|error| ApiError::internal_failure("tokenizer", &error))?
    }
}

/// The part of a text's name before its index: the error's `param`.
fn param_of(name: &str) -> String {
    name.split('[').next().unwrap_or(name).to_owned()
}

fn engine_error(error: EngineError, name: &str) -> ApiError {
    match error {
        EngineError::TooLong { tokens, limit } => ApiError::bad_request(
            ErrorCode::ContextLengthExceeded,
            format!(
                "{name} has {tokens} tokens; this model takes at most {limit} per input \
                 (send \"truncate\": true to embed the first {limit})"
            ),
        )
        .with_param(param_of(name)),
        EngineError::Input(message) => {
            ApiError::bad_request(ErrorCode::InvalidInput, format!("{name}: {message}"))
                .with_param(param_of(name))
        }
        EngineError::Load(_) => ApiError::unavailable("the model is not loaded"),
    }
}

async fn compute(pool: &EmbeddingPool, tokens: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ApiError> {
    let receiver = pool.submit(tokens).map_err(|refused| ApiError::refused(pool.model(), refused))?;
    match receiver.await {
        Ok(Ok(vectors)) => Ok(vectors),
        Ok(Err(WorkError::Engine(error))) => Err(engine_error(error, "input[0]")),
        Ok(Err(WorkError::WorkerFailed)) | Err(_) => Err(ApiError::worker_failed(pool.model())),
    }
}

fn encode(vector: Vec<f32>, format: EncodingFormat) -> EmbeddingVector {
    match format {
        EncodingFormat::Float => EmbeddingVector::Float(vector),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
            EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}
