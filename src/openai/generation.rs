//! The infer stage for chat and completions: the generation's parameters
//! fixed against the model's window, the prompt submitted to the model's
//! pool, and the whole completion collected, from the cache or generated
//! once for every identical request missing at the same time.

use std::collections::BTreeMap;
use std::time::Duration;

use blaze_actors::cache::Lookup;
use blaze_actors::inference::{
    ChatEvent, ChatEvents, ChatPool, EngineError, Grammar, SamplingParams, WorkError,
};

use serde_json::Value;

use super::caching::Record;
use super::logprobs::{self, Collected};
use super::request::Sampling;
use super::structured::{self, grammar_for};
use super::tools::{self, ToolAsk};
use super::validate::{check_sampling, invalid, CheckedSampling};
use super::Endpoint;
use crate::error::{ApiError, ErrorCode};
use crate::settings::ValidationSettings;

/// What a request asks of its output besides the sampling fields.
#[derive(Debug, Clone, Default)]
pub struct OutputAsks {
    /// What the text must match (a structured output, or tool calls).
    pub grammar: Option<Grammar>,
    /// Log probabilities, with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// The tools the model may call (chat).
    pub tools: Option<ToolAsk>,
}

impl OutputAsks {
    /// What the body's fields ask of the output, the grammar checked
    /// against the model that will enforce it.
    pub fn of(
        pool: &ChatPool,
        other: &BTreeMap<String, Value>,
        endpoint: Endpoint,
    ) -> Result<Self, ApiError> {
        let tools = match endpoint {
            Endpoint::Chat => tools::requested(other)?,
            _ => None,
        };
        let grammar = match tools.as_ref().map(ToolAsk::grammar).transpose()?.flatten() {
            Some(calls) => {
                pool.model()
                    .check_grammar(&calls)
                    .map_err(|error| invalid(ErrorCode::InvalidTools, "tools", error.to_string()))?;
                Some(calls)
            }
            None => grammar_for(pool, other, endpoint)?,
        };
        Ok(Self { grammar, logprobs: logprobs::requested(other, endpoint)?, tools })
    }

    /// The same fields checked as far as no model is needed.
    pub fn check(other: &BTreeMap<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
        structured::requested(other, endpoint)?;
        if endpoint == Endpoint::Chat {
            if let Some(tools) = tools::requested(other)? {
                tools.grammar()?;
            }
        }
        logprobs::requested(other, endpoint).map(drop)
    }
}

/// Checks the sampling fields and fixes the generation's parameters: the
/// completion may take what the window leaves after the prompt, and gives
/// what `asks` asks.
pub fn sampling_params(
    sampling: &Sampling,
    prompt_tokens: usize,
    pool: &ChatPool,
    limits: &ValidationSettings,
    asks: OutputAsks,
) -> Result<SamplingParams, ApiError> {
    let CheckedSampling { temperature, top_p, stop, max_tokens } = check_sampling(sampling, limits)?;
    let window = pool.model().context_length();
    let max_tokens = max_tokens.unwrap_or_else(|| window.saturating_sub(prompt_tokens));
    pool.model().check_window(prompt_tokens, max_tokens).map_err(|_| {
        invalid(
            ErrorCode::ContextLengthExceeded,
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
        seed: sampling.seed.map_or_else(random_seed, |seed| seed as u32),
        presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
        frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
        stop,
        grammar: asks.grammar,
        logprobs: asks.logprobs,
    })
}

fn random_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// Queues the prompt's `choices` completions on the model's pool, choice
/// `index` seeded `seed + index`: their events, or 429 when the pool's
/// queue is full.
fn submit(job: Job<'_>) -> Result<Vec<ChatEvents>, ApiError> {
    let Job { pool, prompt, params, choices, waited, .. } = job;
    let seeded = (0..choices)
        .map(|index| SamplingParams { seed: params.seed.wrapping_add(index as u32), ..params.clone() })
        .collect();
    pool.submit_choices_after(prompt, seeded, waited)
        .map_err(|refused| ApiError::refused(pool.model_id(), refused))
}

/// What the client may take from a worker's failure.
pub fn work_error(error: WorkError, model: &str) -> ApiError {
    match error {
        WorkError::Engine(EngineError::TooLong { tokens, limit }) => invalid(
            ErrorCode::ContextLengthExceeded,
            "messages",
            format!("This model's maximum context length is {limit} tokens; you requested {tokens}"),
        ),
        WorkError::Engine(error) => invalid(ErrorCode::InvalidInput, "messages", error.to_string()),
        WorkError::WorkerFailed => ApiError::worker_failed(model),
    }
}

/// The whole completion, piece by piece.
async fn collect(mut events: ChatEvents, model: &str, logprobs: bool) -> Result<Record, ApiError> {
    let mut collected = Collected::new(logprobs);
    while let Some(event) = events.recv().await {
        match event {
            ChatEvent::Logprobs(entries) => collected.on_logprobs(entries),
            ChatEvent::Text(piece) => collected.on_text(piece),
            ChatEvent::Done { finish_reason, completion_tokens, cached_tokens, timing } => {
                crate::telemetry::record_generation(&tracing::Span::current(), &timing);
                let finish_reason = finish_reason.as_str().to_owned();
                let (pieces, logprobs) = collected.finish();
                return Ok(Record { pieces, finish_reason, completion_tokens, cached_tokens, logprobs });
            }
            ChatEvent::Failed(error) => return Err(work_error(error, model)),
        }
    }
    Err(ApiError::worker_failed(model))
}

/// One generation to run: the pool, the prompt, its parameters and how
/// many choices to make of it.
pub struct Job<'a> {
    pub pool: &'a ChatPool,
    pub model: &'a str,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub choices: usize,
    /// How long the request waited for the model to load again.
    pub waited: Duration,
}

impl Job<'_> {
    /// Generates every choice whole, in order.
    pub async fn run(self) -> Result<Vec<Record>, ApiError> {
        let logprobs = self.params.logprobs.is_some();
        let model = self.model;
        let events = submit(self)?;
        futures_util::future::join_all(events.into_iter().map(|events| collect(events, model, logprobs)))
            .await
            .into_iter()
            .collect()
    }

    /// Generates the streams of each choice's events.
    pub fn stream(self) -> Result<Vec<ChatEvents>, ApiError> {
        submit(self)
    }
}

/// The whole completion (every choice): from the cache under `key`, or
/// generated once for every identical request missing at the same time.
pub async fn cached_or_generated(
    job: Job<'_>,
    cached: Option<&(super::caching::Caching, blaze_actors::cache::CacheKey)>,
) -> Result<(Vec<Record>, Lookup), ApiError> {
    let Some((caching, key)) = cached else {
        return Ok((job.run().await?, Lookup::Bypass));
    };
    let compute = async {
        let records = job.run().await?;
        serde_json::to_vec(&records).map_err(|error| ApiError::internal_failure("cache record", &error))
    };
    let (bytes, lookup) =
        caching.cache().get_or_compute(key, compute).await.map_err(|error| (*error).clone())?;
    let records =
        serde_json::from_slice(&bytes).map_err(|error| ApiError::internal_failure("cache record", &error))?;
    Ok((records, lookup))
}
