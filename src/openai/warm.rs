//! Cache warming: the requests of `cache.warm_file` answered into the cache
//! at start-up, through the same stages a client's request takes (no
//! client, no rate limit), so that their keys are the ones clients compute.

use std::path::PathBuf;
use std::time::Duration;

use blaze_actors::cache::Lookup;
use serde::Deserialize;
use serde_json::Value;

use super::caching::{deterministic, generation_key, Caching};
use super::chat::{chat_pool, chat_prompt};
use super::generation::{cached_or_generated, sampling_params, Job, OutputAsks};
use super::request::{ChatRequest, CompletionRequest};
use super::screen::screen_warm;
use super::validate::{chat_turns, check_other_fields, check_text, choices};
use super::{Endpoint, Pipeline};
use crate::error::{ApiError, ErrorCode};
use crate::routes::Route;

/// One line of the warming file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmLine {
    endpoint: String,
    body: Value,
    /// Whose entry it becomes; required unless entries are shared.
    user_id: Option<String>,
}

/// Answers every request of the warming file into the cache, in the
/// background, logging progress; waits first for the models to be served.
pub async fn warm(pipeline: Pipeline, path: PathBuf) {
    let Some(access) = pipeline.cache.clone() else { return };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(error) => {
            return tracing::warn!(path = %path.display(), error = %error, "cache warming: cannot read the file")
        }
    };
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    for _ in 0..1500 {
        if pipeline.models.registry().settled() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (total, mut warmed, mut failed) = (lines.len(), 0usize, 0usize);
    tracing::info!(path = %path.display(), total, "cache warming: started");
    let started = std::time::Instant::now();
    for (number, line) in lines.iter().enumerate() {
        let outcome = match serde_json::from_str::<WarmLine>(line) {
            Err(error) => Err(format!("not a warming line: {error}")),
            Ok(line) if !access.shared && line.user_id.is_none() => {
                Err("`user_id` is required unless cache.shared_across_users is set".to_owned())
            }
            Ok(line) => {
                let caching = Caching::scoped(&access, line.user_id.as_deref());
                warm_line(&pipeline, caching, &line.endpoint, line.body)
                    .await
                    .map_err(|error| error.to_string())
            }
        };
        match outcome {
            Ok(()) => warmed += 1,
            Err(error) => {
                failed += 1;
                tracing::warn!(line = number + 1, error, "cache warming: a line failed");
            }
        }
        let done = number + 1;
        if done == total || done % (total / 10).max(1) == 0 {
            tracing::info!(done, total, warmed, failed, "cache warming: progress");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(total, warmed, failed, seconds, "cache warming: finished");
}

async fn warm_line(
    pipeline: &Pipeline,
    caching: Caching,
    endpoint: &str,
    body: Value,
) -> Result<(), ApiError> {
    match Route::for_pattern(endpoint).map(|rule| rule.route) {
        Some(Route::Embeddings) => super::embeddings::warm(pipeline, caching, body).await.map(drop),
        Some(Route::ChatCompletions) => {
            warm_generation(pipeline, caching, Endpoint::Chat, body).await.map(drop)
        }
        Some(Route::Completions) => {
            warm_generation(pipeline, caching, Endpoint::Completions, body).await.map(drop)
        }
        _ => Err(ApiError::bad_request(ErrorCode::InvalidValue, format!("cannot warm `{endpoint}`"))
            .with_param("endpoint")),
    }
}

/// Answers one chat or completions request into the cache, in `caching`'s
/// scope; a request that is not deterministic is refused.
async fn warm_generation(
    pipeline: &Pipeline,
    caching: Caching,
    endpoint: Endpoint,
    body: Value,
) -> Result<Lookup, ApiError> {
    let not_schema =
        |error: serde_json::Error| ApiError::bad_request(ErrorCode::InvalidRequestBody, error.to_string());
    let (pool, prompt, sampling, asks, pattern, model) = match endpoint {
        Endpoint::Chat => {
            let request: ChatRequest = serde_json::from_value(body).map_err(not_schema)?;
            check_other_fields(&request.other, Endpoint::Chat)?;
            let (pool, _) = chat_pool(pipeline, &request.model).await?;
            let asks = OutputAsks::of(&pool, &request.other, Endpoint::Chat)?;
            let mut turns = chat_turns(request.messages, &pipeline.validation)?;
            screen_warm(&pipeline.guard, turns.iter_mut().map(|(_, text)| text), "body")?;
            let tools = asks.tools.as_ref().map_or(&[][..], |tools| tools.definitions.as_slice());
            let prompt = chat_prompt(&pool, &turns, tools)?;
            (pool, prompt, request.sampling, asks, Route::ChatCompletions.pattern(), request.model)
        }
        _ => {
            let mut request: CompletionRequest = serde_json::from_value(body).map_err(not_schema)?;
            check_other_fields(&request.other, Endpoint::Completions)?;
            check_text(&request.prompt, || "prompt".to_owned(), &pipeline.validation)?;
            let (pool, _) = chat_pool(pipeline, &request.model).await?;
            let asks = OutputAsks::of(&pool, &request.other, Endpoint::Completions)?;
            screen_warm(&pipeline.guard, [&mut request.prompt], "body")?;
            let prompt = pool.model().tokenize(&request.prompt, true);
            (pool, prompt, request.sampling, asks, Route::Completions.pattern(), request.model)
        }
    };
    if !deterministic(&sampling) {
        let message = "set temperature 0 or a seed: only those are cached";
        return Err(ApiError::bad_request(ErrorCode::NotCacheable, message));
    }
    let params = sampling_params(&sampling, prompt.len(), &pool, &pipeline.validation, asks)?;
    let key = generation_key(&caching, pattern, &model, &prompt, &params, &sampling);
    let job = Job {
        pool: &pool,
        model: &model,
        prompt,
        params,
        choices: choices(&sampling),
        waited: Duration::ZERO,
    };
    Ok(cached_or_generated(job, Some(&(caching, key))).await?.1)
}
