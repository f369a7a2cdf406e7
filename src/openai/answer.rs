//! What the pipeline gives back, the same for both transports: an
//! [`Answer`], a whole JSON body or a stream of chunks, with what the cache
//! did for it. HTTP frames it as a response or Server-Sent Events; the
//! WebSocket as result or chunk frames.

use actix_web::web::Bytes;
use blaze_actors::cache::{CacheKey, Lookup};
use futures_util::stream::LocalBoxStream;

use crate::error::ApiError;

/// One piece of a streamed answer.
pub enum Piece {
    /// A chunk, serialized (the same JSON on both surfaces).
    Chunk(Bytes),
    /// A named event, serialized (the Responses API's): HTTP writes its
    /// name on the event's `event:` line, and ends a stream of them
    /// without `[DONE]`.
    Event(&'static str, Bytes),
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
    /// The gateway's target that answered (`x-blaze-served-by`).
    pub served_by: Option<String>,
    /// A semantic cache hit: how near the cached request was
    /// (`x-blaze-cache-similarity`).
    pub similarity: Option<f32>,
}

impl Answer {
    pub fn json(body: Bytes) -> Self {
        Self { body: Body::Json(body), lookup: None, key: None, served_by: None, similarity: None }
    }

    pub fn cached(body: Body, lookup: Lookup, key: Option<CacheKey>) -> Self {
        Self { body, lookup: Some(lookup), key, served_by: None, similarity: None }
    }
}
