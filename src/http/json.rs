//! The JSON body of the OpenAI endpoints: parsed straight into the
//! endpoint's typed request; when that fails, parsed again to find the
//! field at fault (serde_path_to_error), so the 400 names it in `param`.
//! The happy path pays nothing for the second parser.

use actix_web::dev::{Decompress, Payload};
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{mime, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

pub use crate::openai::parse;

use crate::error::{ApiError, ErrorCode};

/// The largest body, as the server is configured (for the 413 message).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A request body of type `T`, strictly parsed.
#[derive(Debug)]
pub struct StrictJson<T>(pub T);

impl<T> StrictJson<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// A JSON request body, read whole (at most the route's limit) and not
/// yet parsed: the endpoints that may forward it to a gateway's
/// upstream parse it themselves.
#[derive(Debug)]
pub struct JsonBytes(pub Bytes);

impl FromRequest for JsonBytes {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = json_body(request, payload);
        Box::pin(async move { body.await.map(JsonBytes) })
    }
}

/// The whole JSON body of a request, within the route's limit: 415 when
/// it is not JSON, 413 when it is too large.
fn json_body(
    request: &HttpRequest,
    payload: &mut Payload,
) -> impl std::future::Future<Output = Result<Bytes, ApiError>> + 'static {
    let limit = request.app_data::<BodyLimit>().map_or(usize::MAX, |limit| limit.0);
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    let json = is_json(request);
    let body = Decompress::from_headers(payload.take(), request.headers());
    async move {
        if !json {
            return Err(ApiError::unsupported_media_type());
        }
        read_body(body, declared, limit).await
    }
}

fn is_json(request: &HttpRequest) -> bool {
    match request.mime_type() {
        Ok(Some(mime)) => mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON),
        _ => false,
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for StrictJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = json_body(request, payload);
        Box::pin(async move {
            let bytes = body.await?;
            parse(&bytes).map(StrictJson)
        })
    }
}

/// The whole body, at most `limit` bytes. Read into one buffer the size the
/// client declared (a buffer grown by doubling would hold up to twice the
/// body, and copy it as it grows).
async fn read_body(
    mut body: Decompress<Payload>,
    declared: Option<usize>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| match error {
            PayloadError::Overflow => ApiError::payload_too_large(limit),
            _ => ApiError::bad_request(ErrorCode::InvalidBody, "The request body could not be read"),
        })?;
        if buffer.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}
