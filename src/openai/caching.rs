//! The response cache's stage of the pipeline: whether a request may use
//! it, whose entries it sees, the key of a generation, and the record a
//! finished completion is kept as.

use std::sync::Arc;

use blaze_actors::auth::Principal;
use blaze_actors::cache::{CacheKey, ResponseCache};
use blaze_actors::inference::{ChatEvent, ChatEvents, FinishReason, Grammar, SamplingParams, TokenLogprob};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::request::Sampling;
use super::validate::choices;
use super::Pipeline;

/// The cache as the pipeline sees it.
#[derive(Clone)]
pub struct CacheAccess {
    pub cache: Arc<ResponseCache>,
    /// Entries are shared by every user, not kept per user.
    pub shared: bool,
}

/// Where one request may read and write: its cache and its scope.
pub struct Caching {
    cache: Arc<ResponseCache>,
    scope: String,
}

impl Caching {
    /// A request's access to the cache: none when the cache is off or the
    /// client asked not to be answered from it.
    pub fn of(pipeline: &Pipeline, allowed: bool, caller: &Principal) -> Option<Self> {
        let access = pipeline.cache.as_ref()?;
        if !allowed {
            return None;
        }
        let scope = if access.shared { "shared".to_owned() } else { format!("user:{}", caller.user_id) };
        Some(Self { cache: access.cache.clone(), scope })
    }

    /// Access in a fixed scope (the warming file's).
    pub fn scoped(access: &CacheAccess, user_id: Option<&str>) -> Self {
        let scope = match (access.shared, user_id) {
            (false, Some(user)) => format!("user:{user}"),
            _ => "shared".to_owned(),
        };
        Self { cache: access.cache.clone(), scope }
    }

    pub fn key(&self, endpoint: &str, model: &str, fields: &serde_json::Value) -> CacheKey {
        CacheKey::new(endpoint, model, &self.scope, fields)
    }

    /// Whose entries it sees: `shared`, or `user:<id>`.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn cache(&self) -> &Arc<ResponseCache> {
        &self.cache
    }
}

/// Whether a request's answer is always the same: greedy, or seeded.
pub fn deterministic(sampling: &Sampling) -> bool {
    sampling.temperature == Some(0.0) || sampling.seed.is_some()
}

/// The cache key of a generation on the endpoint with `pattern`: the
/// prompt's tokens (the messages through the template) and every parameter
/// that changes the output, the grammar of a structured output and the
/// number of choices included. The entry is the list of the choices'
/// [`Record`]s.
pub fn generation_key(
    caching: &Caching,
    pattern: &str,
    model: &str,
    prompt: &[u32],
    params: &SamplingParams,
    sampling: &Sampling,
) -> CacheKey {
    // The prompt by its digest: hashing the tokens' bytes is much cheaper
    // than writing them out as JSON.
    let mut digest = sha2::Sha256::new();
    for token in prompt {
        digest.update(token.to_le_bytes());
    }
    let grammar =
        params.grammar.as_ref().map(|grammar| format!("{:x}", sha2::Sha256::digest(grammar.gbnf())));
    let fields = serde_json::json!({
        "prompt_sha256": format!("{:x}", digest.finalize()),
        "grammar_sha256": grammar,
        "grammar_trigger": params.grammar.as_ref().and_then(Grammar::trigger),
        "logprobs": params.logprobs,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "seed": if params.temperature == 0.0 { None } else { sampling.seed },
        "stop": params.stop,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "n": choices(sampling),
    });
    caching.key(pattern, model, &fields)
}

/// A finished completion (one choice) as the cache keeps it: enough to
/// answer again as JSON, or as a stream of the same chunks.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub pieces: Vec<String>,
    pub finish_reason: String,
    pub completion_tokens: usize,
    /// Prompt tokens its worker's cache held (prefix reuse).
    #[serde(default)]
    pub cached_tokens: usize,
    /// When asked for: the log probabilities of each piece's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<Vec<TokenLogprob>>>,
}

impl Record {
    fn finish_reason(&self) -> FinishReason {
        if self.finish_reason == "length" {
            FinishReason::Length
        } else {
            FinishReason::Stop
        }
    }

    /// The completion's events again, for the stream that replays it.
    pub fn replay(self) -> ChatEvents {
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let finish_reason = self.finish_reason();
        let mut logprobs = self.logprobs.unwrap_or_default().into_iter();
        for piece in self.pieces {
            if let Some(entries) = logprobs.next() {
                let _ = sender.send(ChatEvent::Logprobs(entries));
            }
            let _ = sender.send(ChatEvent::Text(piece));
        }
        let _ = sender.send(ChatEvent::Done {
            finish_reason,
            completion_tokens: self.completion_tokens,
            cached_tokens: self.cached_tokens,
            timing: Default::default(),
        });
        events
    }
}
