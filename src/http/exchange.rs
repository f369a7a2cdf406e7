//! What the OpenAI endpoints take besides the body and what they give
//! back, the same for both surfaces: an [`Origin`] (who asks, the rate
//! limit gate, whether the cache may answer, how to notice the client has
//! gone) in, an [`Answer`] (a whole JSON body, or a stream of chunks) out.
//! HTTP frames an answer as a response or Server-Sent Events here; the
//! WebSocket surface frames it as result or chunk frames. Neither holds
//! any of the endpoints' logic.

use actix_web::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use blaze_actors::auth::Principal;
use blaze_actors::cache::{CacheKey, Lookup};
use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;

use super::auth::subject_of;
use super::cache::{mark, refuses_cache};
use super::disconnect::Hangup;
use super::observe::RequestId;
use super::ratelimit::Gate;
use crate::error::ApiError;

/// Who asks, and how their answer may be made.
pub struct Origin {
    pub principal: Principal,
    /// Whose budgets and guard score the request spends: `key:<id>` or
    /// `user:<id>`.
    pub subject: String,
    /// For the logs.
    pub request_id: RequestId,
    pub gate: Gate,
    /// False when the client asked not to be answered from the cache.
    pub cache_allowed: bool,
    pub hangup: Hangup,
}

impl Origin {
    /// An HTTP request's origin, behind the auth and rate limit middleware.
    pub fn http(request: &HttpRequest, principal: Principal, gate: Gate) -> Self {
        let subject = subject_of(Some(&principal), request).unwrap_or_default();
        // A shared header value: nothing is copied on the request path.
        let request_id = request.extensions().get::<RequestId>().cloned().unwrap_or_else(RequestId::generate);
        Self {
            principal,
            subject,
            request_id,
            gate,
            cache_allowed: !refuses_cache(request),
            hangup: Hangup::of(request),
        }
    }
}

/// One piece of a streamed answer.
pub enum Piece {
    /// A chunk, serialized (the same JSON on both surfaces).
    Chunk(Bytes),
    /// The stream failed; nothing follows.
    Failed(ApiError),
}

pub enum Body {
    /// The whole answer, serialized.
    Json(Bytes),
    /// Chunks until the stream ends (done) or fails.
    Stream(LocalBoxStream<'static, Piece>),
}

/// An endpoint's answer, and what the cache did for it.
pub struct Answer {
    pub body: Body,
    /// `None` for endpoints the cache never answers.
    pub lookup: Option<Lookup>,
    pub key: Option<CacheKey>,
}

impl Answer {
    pub fn json(body: Bytes) -> Self {
        Self { body: Body::Json(body), lookup: None, key: None }
    }

    pub fn cached(body: Body, lookup: Lookup, key: Option<CacheKey>) -> Self {
        Self { body, lookup: Some(lookup), key }
    }
}

/// The HTTP response of an answer: JSON, or an SSE stream (`data: {chunk}`
/// events, `data: [DONE]` at the end; a failure is an error event, never
/// followed by `[DONE]`).
pub fn respond(answer: Answer) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if let Some(lookup) = answer.lookup {
        mark(&mut response, lookup, answer.key.as_ref());
    }
    match answer.body {
        Body::Json(bytes) => {
            response.insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json"))).body(bytes)
        }
        Body::Stream(pieces) => response
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/event-stream")))
            .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .streaming(server_sent_events(pieces)),
    }
}

fn event(json: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(json.len() + 8);
    framed.extend_from_slice(b"data: ");
    framed.extend_from_slice(json);
    framed.extend_from_slice(b"\n\n");
    Bytes::from(framed)
}

fn server_sent_events(
    pieces: LocalBoxStream<'static, Piece>,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    futures_util::stream::unfold(Some(pieces), |pieces| async move {
        let mut pieces = pieces?;
        match pieces.next().await {
            Some(Piece::Chunk(json)) => Some((Ok(event(&json)), Some(pieces))),
            Some(Piece::Failed(error)) => {
                let body = serde_json::to_vec(&error.body(None)).unwrap_or_default();
                Some((Ok(event(&body)), None))
            }
            None => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), None)),
        }
    })
}
