//! The one mapping from errors to HTTP responses: a status code and the
//! OpenAI error body `{"error": {"message", "type", "param", "code"}}`.
//! Messages tell the client what to change; internal details go to the log
//! with the request id, never to the client.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use blaze_actors::auth::Failure;
use serde::Serialize;

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after_s: Option<u64>,
    /// 401s name the scheme to use (`WWW-Authenticate: Bearer`).
    challenge: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        Self { status, kind, message, param: None, code: Some(code), retry_after_s: None, challenge: false }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message.into())
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        let message = format!("Invalid URL ({method} {path}): no such route");
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", message)
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        let message = format!("Method {method} is not allowed on {path}");
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed", message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        let message =
            format!("The request body is larger than the limit of {limit} bytes; send a smaller body");
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "request_too_large", message)
    }

    pub fn unsupported_media_type() -> Self {
        let message = "The request body must be JSON, with Content-Type: application/json".to_owned();
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            message,
        )
    }

    pub fn timeout(limit_s: u64) -> Self {
        let message = format!("The request took longer than the server's limit of {limit_s} s");
        Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout", message)
    }

    pub fn internal(request_id: &str) -> Self {
        let message =
            format!("The server had an error while processing your request (request id {request_id})");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error", message)
    }

    pub fn not_ready(failing: &[String]) -> Self {
        let message = format!("The service is not ready: {}", failing.join(", "));
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "not_ready", message)
    }

    pub fn model_not_found(id: &str) -> Self {
        let message = format!("The model `{id}` does not exist; GET /v1/models lists the served models");
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found", message)
            .with_param("model")
    }

    /// A catalog model that is not served yet (loading, or its load failed
    /// and the Router tries again).
    pub fn model_not_ready(id: &str) -> Self {
        let message = format!("The model `{id}` is loading and not served yet; retry in 1 s");
        let mut error =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "model_not_ready", message);
        error.retry_after_s = Some(1);
        error
    }

    /// The model's queue is full; `retry_after_s` goes in `Retry-After`.
    pub fn overloaded(model: &str, retry_after_s: u64) -> Self {
        let message =
            format!("The model `{model}` is busy and its queue is full; retry in {retry_after_s} s");
        let mut error =
            Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "model_overloaded", message);
        error.retry_after_s = Some(retry_after_s);
        error
    }

    pub fn worker_failed(model: &str) -> Self {
        let message = format!("The worker of `{model}` failed while computing this request; retry it");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "worker_failed", message)
    }

    /// The client closed the connection before the answer (nginx's 499);
    /// nobody reads it, but logs and metrics do.
    pub fn client_closed() -> Self {
        let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        Self::new(
            status,
            "invalid_request_error",
            "client_closed_request",
            "The client closed the connection".to_owned(),
        )
    }

    /// The client cancelled the request (a WebSocket `cancel` frame).
    pub fn cancelled() -> Self {
        let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        Self::new(
            status,
            "invalid_request_error",
            "request_cancelled",
            "The request was cancelled".to_owned(),
        )
    }

    /// 429 for a limit on what is open at once (connections, requests in
    /// flight), not on a rate.
    pub fn too_many(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "invalid_request_error", code, message.into())
    }

    pub fn unavailable(message: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "unavailable", message.to_owned())
    }

    /// 401: the request is not authenticated. The message says what to
    /// fix and never echoes the credential.
    pub fn unauthenticated(failure: Failure) -> Self {
        let (code, message) = match failure {
            Failure::Missing => (
                "invalid_api_key",
                "You didn't provide an API key. Send `Authorization: Bearer <key>` with an API key \
                 (blz_...) or an access token from POST /auth/token",
            ),
            Failure::Malformed => ("invalid_api_key", "The API key or token is malformed"),
            Failure::Unknown => ("invalid_api_key", "Incorrect API key provided"),
            Failure::Revoked => ("invalid_api_key", "The API key or token has been revoked"),
            Failure::Expired => ("invalid_api_key", "The API key or token has expired"),
            Failure::Invalid => ("invalid_api_key", "The token is invalid"),
            Failure::WrongType => (
                "invalid_api_key",
                "This is not an access token; a refresh token is exchanged at POST /auth/refresh",
            ),
            Failure::Disabled => ("invalid_api_key", "The user of this API key or token is disabled"),
            Failure::BadPassword => ("invalid_credentials", "Incorrect email or password"),
            Failure::CoolingDown(left) => return Self::auth_cooldown(left.as_secs().max(1)),
            Failure::Busy => return Self::sign_ins_busy(),
            Failure::NotCached => return Self::auth_cooldown(1),
            Failure::StoreUnavailable => return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "auth_unavailable",
                "Credentials cannot be checked right now (the identity store is unreachable); retry shortly"
                    .to_owned(),
            )
            .retry_after(1),
        };
        let mut error =
            Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", code, message.to_owned());
        error.challenge = true;
        error
    }

    /// 403: authenticated, but the role does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "invalid_request_error", "insufficient_permissions", message.into())
    }

    /// 403: the key or token lacks the scope the route needs.
    pub fn insufficient_scope(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "insufficient_scope",
            format!("This request needs the `{scope}` scope, which your API key or token does not hold"),
        )
    }

    /// 429: every password hashing thread is busy and its queue is full.
    pub fn sign_ins_busy() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "too_many_sign_ins",
            "The server is checking as many passwords as it may; retry in a second".to_owned(),
        )
        .retry_after(1)
    }

    /// 429: this client address, account or key failed authentication too
    /// often; only failing attempts are refused for it.
    pub fn auth_cooldown(retry_after_s: u64) -> Self {
        let message = format!(
            "Too many failed authentication attempts from your address or for this account; \
             retry in {retry_after_s} s"
        );
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "too_many_auth_failures", message)
            .retry_after(retry_after_s)
    }

    /// 429: a rate limit refused the request. `budget` is `requests` or
    /// `tokens` (OpenAI's error type for it).
    pub fn rate_limited(budget: &'static str, message: String, retry_after_s: Option<u64>) -> Self {
        let error = Self::new(StatusCode::TOO_MANY_REQUESTS, budget, "rate_limit_exceeded", message);
        match retry_after_s {
            Some(seconds) => error.retry_after(seconds),
            None => error,
        }
    }

    /// 503: rate limits are shared through Redis, Redis is unreachable,
    /// and the configured fail mode is closed.
    pub fn rate_limiter_unavailable() -> Self {
        let message = "Rate limits cannot be checked right now; retry in 1 s".to_owned();
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "rate_limiter_unavailable", message)
            .retry_after(1)
    }

    /// 400: the guard blocked a text bound for the model; the category is
    /// named, the matched text never echoed.
    pub fn content_blocked(category: &str, param: &str) -> Self {
        let message = format!(
            "The request was blocked by the content guard ({category}); rephrase it without that content"
        );
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "content_blocked", message)
            .with_param(param)
    }

    /// 429: this client's requests were blocked too often; it cools down.
    pub fn guard_cool_down(retry_after_s: u64) -> Self {
        let message = format!(
            "Too many of your requests were blocked by the content guard; retry in {retry_after_s} s"
        );
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "content_guard_cool_down", message)
            .retry_after(retry_after_s)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", code, message.into())
    }

    /// 404 for a resource of the admin API.
    pub fn no_such(what: &str, id: &str) -> Self {
        let message = format!("No {what} with id `{id}`");
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", message)
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn detail(&self) -> Detail<'_> {
        Detail { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code }
    }

    /// How long the client should wait before trying again, if it should.
    pub fn retry_after_s(&self) -> Option<u64> {
        self.retry_after_s
    }

    /// The error object alone (`message`, `type`, `param`, `code`),
    /// serialized: what a WebSocket error frame carries.
    pub fn detail_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.detail()).unwrap_or_default()
    }

    /// The response body as JSON, with extra top-level fields if any.
    pub fn body(&self, extra: Option<(&str, serde_json::Value)>) -> serde_json::Value {
        let mut value = serde_json::to_value(Body { error: self.detail() }).unwrap_or_default();
        if let (Some((name, extra)), Some(fields)) = (extra, value.as_object_mut()) {
            fields.insert(name.to_owned(), extra);
        }
        value
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({}): {}", self.status.as_u16(), self.kind, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after_s {
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds));
        }
        if self.challenge {
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer realm=\"blaze\""));
        }
        response.json(Body { error: self.detail() })
    }
}

/// Maps the JSON extractor's errors: what was wrong with the body, never
/// the body itself.
pub fn from_json_error(error: &actix_web::error::JsonPayloadError, limit: usize) -> ApiError {
    use actix_web::error::JsonPayloadError;
    match error {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::payload_too_large(limit)
        }
        JsonPayloadError::ContentType => ApiError::unsupported_media_type(),
        JsonPayloadError::Deserialize(error)
            if error.to_string().contains("untagged enum EmbeddingInput") =>
        {
            ApiError::bad_request(
                "invalid_input",
                "`input` must be a string, an array of strings, an array of token ids, \
                 or an array of arrays of token ids",
            )
            .with_param("input")
        }
        JsonPayloadError::Deserialize(error) if error.is_data() => ApiError::bad_request(
            "invalid_request_body",
            format!("The request body does not match the schema: {error}"),
        ),
        JsonPayloadError::Deserialize(error) => {
            ApiError::bad_request("invalid_json", format!("The request body is not valid JSON: {error}"))
        }
        _ => ApiError::bad_request("invalid_body", "The request body could not be read"),
    }
}
