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

use crate::error::ApiError;

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
        let limit = request.app_data::<BodyLimit>().map_or(usize::MAX, |limit| limit.0);
        let json = is_json(request);
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let body = Decompress::from_headers(payload.take(), request.headers());
        Box::pin(async move {
            if !json {
                return Err(ApiError::unsupported_media_type());
            }
            let bytes = read_body(body, declared, limit).await?;
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
            _ => ApiError::bad_request("invalid_body", "The request body could not be read"),
        })?;
        if buffer.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// `bytes` as a `T`, or the 400 that names the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<T>(bytes).map_err(|error| describe::<T>(bytes, &error))
}

/// The 400 for a body that did not parse: where, and what was wrong.
pub fn describe<T: DeserializeOwned>(bytes: &[u8], error: &serde_json::Error) -> ApiError {
    if !error.is_data() {
        return ApiError::bad_request("invalid_json", format!("The request body is not valid JSON: {error}"));
    }
    let path =
        match serde_path_to_error::deserialize::<_, T>(&mut serde_json::Deserializer::from_slice(bytes)) {
            Err(located) => located.path().to_string(),
            Ok(_) => ".".to_owned(),
        };
    let message = error.to_string();
    if let Some(field) = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()) {
        // The path names the unknown key itself (older serde_path_to_error
        // stopped at the object holding it).
        let param = if path == field || path.ends_with(&format!(".{field}")) {
            path
        } else if path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return ApiError::bad_request(
            "unknown_parameter",
            format!("Unrecognized request argument supplied: {field}"),
        )
        .with_param(param);
    }
    if message.contains("untagged enum EmbeddingInput") {
        return ApiError::bad_request(
            "invalid_input",
            "`input` must be a string, an array of strings, an array of token ids, \
             or an array of arrays of token ids",
        )
        .with_param("input");
    }
    // serde_json's message ends with where in the text; the path says it better.
    let problem = message.split(" at line ").next().unwrap_or(&message);
    if path == "." {
        return ApiError::bad_request(
            "invalid_request_body",
            format!("The request body is invalid: {problem}"),
        );
    }
    ApiError::bad_request("invalid_request_body", format!("`{path}`: {problem}")).with_param(path)
}
