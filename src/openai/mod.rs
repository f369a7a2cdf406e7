//! The OpenAI pipeline, apart from any transport: what `/v1/chat/completions`,
//! `/v1/completions`, `/v1/responses` (a chat by another shape,
//! `responses/`), `/v1/embeddings`, `/v1/rerank` and `/v1/score` (on an
//! embedding model, `rerank.rs`), `/v1/models` and `/tokenize` and
//! `/detokenize` (`tokenize.rs`) do with a request
//! once its caller is known. HTTP (`crate::http`) and the WebSocket
//! (`crate::http::websocket`) only frame what it returns.
//!
//! A request goes through the same stages on every endpoint, in this order
//! (`chat.rs` reads them top to bottom for chat and completions):
//!
//! 1. authorize: done before the pipeline, by the transport, on the route
//!    the route table matched (`crate::routes`); the [`Origin`]
//!    carries the authorized caller;
//! 2. validate: the body against the model's limits (`validate.rs`),
//!    what a structured output must match (`structured.rs`), and the
//!    tools the model may call (`tools.rs`);
//! 3. screen: the guard reads what will reach the model (`screen.rs`);
//! 4. admit: the rate limiter reserves the request's tokens, counted once
//!    the prompt is tokenized (`admit.rs`);
//! 5. cache lookup (`caching.rs`), else infer on the model's pool
//!    (`generation.rs`, `embeddings.rs`);
//! 6. screen output, as a whole answer or as the stream releases it
//!    (`stream.rs`), read for tool calls where the request has tools
//!    (`tool_calls.rs`);
//! 7. settle: the reservation is corrected with the tokens really used;
//! 8. record: the answer goes to the cache; the transport records metrics
//!    and the access log.
//!
//! A model id that is a gateway route (`crate::gateway`) goes to
//! `routed.rs` instead, which runs these stages for its upstreams.
//!
//! Wire types: requests in `request.rs`, responses in `response.rs`.

mod admit;
mod answer;
mod caching;
mod chat;
mod embeddings;
mod generation;
mod logprobs;
mod meter;
mod models;
mod origin;
mod quota;
mod relay;
mod reply;
mod request;
mod rerank;
mod response;
mod responses;
mod routed;
mod screen;
mod semantic;
mod stream;
mod structured;
mod tokenize;
mod tool_calls;
mod tools;
mod validate;
pub mod warm;

use std::sync::Arc;

use blaze_actors::guard::Guard;
use blaze_actors::router::ModelManager;

pub use self::admit::{
    go_duration, refusal, write_go_duration, Admitted, Charge, Gate, Limiting, Pending, Reservation,
    Settlement,
};
pub use self::answer::{Answer, Body, Piece};
pub use self::caching::CacheAccess;
pub use self::chat::{chat, chat_from_bytes, completion, completion_from_bytes};
pub use self::embeddings::{embeddings, embeddings_from_bytes};
pub use self::meter::{Governance, Meter, Noted};
pub use self::models::{describe_model, find_model, find_model_waited, model_list};
pub use self::origin::{Hangup, Origin, RequestId};
pub use self::quota::QuotaGate;
pub use self::request::{parse, ChatRequest, CompletionRequest, EmbeddingsRequest};
pub use self::rerank::{rerank, rerank_from_bytes, score, score_from_bytes, RerankRequest, ScoreRequest};
pub use self::responses::{responses, responses_from_bytes, ResponsesRequest};
pub use self::tokenize::{
    detokenize, detokenize_from_bytes, tokenize, tokenize_from_bytes, DetokenizeRequest, TokenizeRequest,
};
use crate::error::ApiError;
use crate::settings::ValidationSettings;

/// What the pipeline reads: the models, the guard, the cache, the limits of
/// a request and the rate limiter. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    pub models: ModelManager,
    pub guard: Arc<Guard>,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<CacheAccess>,
    pub validation: ValidationSettings,
    pub limiting: Arc<Limiting>,
    pub governance: Arc<Governance>,
    /// The routes whose models are served by other models (upstreams).
    pub gateway: Arc<crate::gateway::Gateway>,
}

/// Which OpenAI endpoint a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

/// A body of `endpoint` parsed and checked as far as no model, client or
/// guard is needed: the pipeline's first steps, in their order. The request
/// fuzz target (fuzz/) drives it with arbitrary bytes.
pub fn check_body(endpoint: Endpoint, bytes: &[u8], limits: &ValidationSettings) -> Result<(), ApiError> {
    match endpoint {
        Endpoint::Chat => chat::check_chat_body(bytes, limits),
        Endpoint::Completions => chat::check_completion_body(bytes, limits),
        Endpoint::Embeddings => embeddings::check_body(bytes, limits),
        Endpoint::Responses => responses::check_responses_body(bytes, limits),
    }
}
