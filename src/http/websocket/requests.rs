//! The requests of one socket: each runs on its own task through the same
//! pipeline the HTTP handlers call, and ends as frames.

use tokio::sync::Notify;

use crate::error::ApiError;

use crate::http::routing::{Route, RouteRule};
use crate::http::AppState;
use crate::openai::{self, Answer, Origin};

/// Requests whose tasks ended, for the socket to forget: pushed by the
/// tasks, taken by the socket's loop (one thread; nothing allocated while
/// the socket idles, unlike a channel's first block).
#[derive(Default)]
pub(super) struct Ended {
    pub(super) requests: std::cell::RefCell<Vec<(String, u64)>>,
    pub(super) notify: Notify,
}

/// A request in `blaze_ws_requests_in_flight`, for as long as it lives.
pub(super) struct InFlight;

impl InFlight {
    pub(super) fn start() -> Self {
        metrics::gauge!("blaze_ws_requests_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("blaze_ws_requests_in_flight").decrement(1.0);
    }
}

/// The endpoint's answer: the same functions the HTTP handlers call.
pub(super) async fn answer(
    state: &AppState,
    origin: &Origin,
    endpoint: &RouteRule,
    body: &[u8],
) -> Result<Answer, ApiError> {
    let pipeline = &state.pipeline;
    match endpoint.route {
        Route::ChatCompletions => openai::chat_from_bytes(pipeline, origin, body).await,
        Route::Completions => openai::completion_from_bytes(pipeline, origin, body).await,
        Route::Responses => openai::responses_from_bytes(pipeline, origin, body).await,
        Route::Tokenize | Route::Detokenize => {
            // As the checkpoint admits routes that count no tokens.
            origin.gate.admit(0).await?;
            match endpoint.route {
                Route::Tokenize => openai::tokenize_from_bytes(pipeline, body).await,
                _ => openai::detokenize_from_bytes(pipeline, body).await,
            }
        }
        Route::Embeddings => openai::embeddings_from_bytes(pipeline, origin, body).await,
        Route::Rerank => openai::rerank_from_bytes(pipeline, origin, body).await,
        Route::Score => openai::score_from_bytes(pipeline, origin, body).await,
        // Every other route the table gives a frame type (models.list).
        _ => {
            // As the checkpoint admits routes that count no tokens.
            origin.gate.admit(0).await?;
            Ok(Answer::json(openai::model_list(pipeline)))
        }
    }
}
