//! The one mapping from errors to HTTP responses: a status code and the
//! OpenAI error body `{"error": {"message", "type", "param", "code"}}`.
//! Messages tell the client what to change; internal details go to the log
//! with the request id, never to the client.

use std::fmt;

mod codes;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use blaze_actors::auth::Failure;
use blaze_actors::inference::Refused;
use serde::Serialize;

pub use self::codes::ErrorCode;

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: ErrorCode,
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
    /// An error with `code`, whose status and type the code decides.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let (status, kind, message) = (code.status(), code.kind(), message.into());
        Self { status, kind, message, param: None, code, retry_after_s: None, challenge: false }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error, its `param` renamed: an endpoint that runs
    /// another's pipeline names its own fields.
    pub fn rename_param(mut self, rename: impl FnOnce(&str) -> String) -> Self {
        self.param = self.param.as_deref().map(rename);
        self
    }

    /// 400 (the codes of a bad request are all 400s).
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(code, message)
    }

    pub fn not_found(method: &str, path: &str) -> Self {
        let message = format!("Invalid URL ({method} {path}): no such route");
        Self::new(ErrorCode::UnknownUrl, message)
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        let message = format!("Method {method} is not allowed on {path}");
        Self::new(ErrorCode::MethodNotAllowed, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        let message =
            format!("The request body is larger than the limit of {limit} bytes; send a smaller body");
        Self::new(ErrorCode::RequestTooLarge, message)
    }

    pub fn unsupported_media_type() -> Self {
        let message = "The request body must be JSON, with Content-Type: application/json".to_owned();
        Self::new(ErrorCode::UnsupportedMediaType, message)
    }

    pub fn timeout(limit_s: u64) -> Self {
        let message = format!("The request took longer than the server's limit of {limit_s} s");
        Self::new(ErrorCode::Timeout, message)
    }

    pub fn internal(request_id: &str) -> Self {
        let message =
            format!("The server had an error while processing your request (request id {request_id})");
        Self::new(ErrorCode::InternalError, message)
    }

    /// A 500 for a failure of the server's own (`what` failed with
    /// `error`): the detail goes to the log, never to the client, whose
    /// response carries its request id in `x-request-id`.
    pub fn internal_failure(what: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(what, error = %error, "internal error");
        let message = "The server had an error while processing your request; \
                       the x-request-id response header names it in the logs"
            .to_owned();
        Self::new(ErrorCode::InternalError, message)
    }

    pub fn not_ready(failing: &[String]) -> Self {
        let message = format!("The service is not ready: {}", failing.join(", "));
        Self::new(ErrorCode::NotReady, message)
    }

    pub fn model_not_found(id: &str) -> Self {
        let message = format!("The model `{id}` does not exist; GET /v1/models lists the served models");
        Self::new(ErrorCode::ModelNotFound, message).with_param("model")
    }

    /// A catalog model being loaded (at start, by an admin, or again after
    /// an idle unload that outlasted `models.load_wait_s`).
    pub fn model_loading(id: &str) -> Self {
        let message = format!("The model `{id}` is loading and not served yet; retry in 1 s");
        let mut error = Self::new(ErrorCode::ModelLoading, message);
        error.retry_after_s = Some(1);
        error
    }

    /// A catalog model whose last load failed; the Router tries again.
    pub fn model_load_failed(id: &str) -> Self {
        let message = format!(
            "The model `{id}` could not be loaded; Blaze tries again (GET /health/detailed says why)"
        );
        let mut error = Self::new(ErrorCode::ModelLoading, message);
        error.retry_after_s = Some(1);
        error
    }

    /// A catalog model an admin unloaded: served again once loaded again.
    pub fn model_unloaded(id: &str) -> Self {
        let message =
            format!("The model `{id}` is unloaded; an admin loads it with POST /admin/models/{id}/load");
        Self::new(ErrorCode::ModelUnloaded, message)
    }

    /// Why a model's pool refused a request: its queue is full (429), or
    /// it was unloaded in the meantime (503).
    pub fn refused(model: &str, refused: Refused) -> Self {
        match refused {
            Refused::Full { retry_after_s, .. } => Self::overloaded(model, retry_after_s),
            Refused::Closed => {
                let message = format!("The model `{model}` was unloaded while this request came; retry it");
                let mut error = Self::new(ErrorCode::ModelUnloaded, message);
                error.retry_after_s = Some(1);
                error
            }
        }
    }

    /// The model's queue is full; `retry_after_s` goes in `Retry-After`.
    pub fn overloaded(model: &str, retry_after_s: u64) -> Self {
        let message =
            format!("The model `{model}` is busy and its queue is full; retry in {retry_after_s} s");
        let mut error = Self::new(ErrorCode::ModelOverloaded, message);
        error.retry_after_s = Some(retry_after_s);
        error
    }

    /// What a gateway route's client is told when its upstreams failed
    /// it (`model` is the public id it asked for).
    pub fn upstream_failed(model: &str, failure: &crate::gateway::Failure) -> Self {
        use crate::gateway::Failure;
        match failure {
            Failure::Connect | Failure::ServerError { .. } | Failure::Credentials { .. } => {
                let message = format!("No upstream of `{model}` could answer this request; retry it");
                Self::new(ErrorCode::UpstreamUnavailable, message)
            }
            Failure::Timeout => {
                let message = format!("No upstream of `{model}` answered in time; retry it");
                Self::new(ErrorCode::UpstreamTimeout, message)
            }
            Failure::Unavailable { status: 429, retry_after_s } => {
                let wait = retry_after_s.unwrap_or(1).clamp(1, 3600);
                let message = format!("The upstreams of `{model}` are busy; retry in {wait} s");
                Self::new(ErrorCode::UpstreamOverloaded, message).retry_after(wait)
            }
            Failure::Unavailable { retry_after_s, .. } => {
                let message = format!("The upstreams of `{model}` are unavailable; retry it");
                let error = Self::new(ErrorCode::UpstreamUnavailable, message);
                match retry_after_s {
                    Some(wait) => error.retry_after((*wait).clamp(1, 3600)),
                    None => error,
                }
            }
            Failure::Rejected { status, message } => {
                let message = if message.is_empty() {
                    format!("The upstream serving `{model}` refused the request (status {status})")
                } else {
                    format!("The upstream serving `{model}` refused the request (status {status}): {message}")
                };
                Self::new(ErrorCode::UpstreamRejected, message)
            }
            Failure::Invalid(what) => {
                let message = format!("The upstream serving `{model}` gave an invalid answer: {what}");
                Self::new(ErrorCode::UpstreamInvalidResponse, message)
            }
        }
    }

    /// The code, for deciding what a failure allows (another target).
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn worker_failed(model: &str) -> Self {
        let message = format!("The worker of `{model}` failed while computing this request; retry it");
        Self::new(ErrorCode::WorkerFailed, message)
    }

    /// The client closed the connection before the answer (nginx's 499);
    /// nobody reads it, but logs and metrics do.
    pub fn client_closed() -> Self {
        Self::new(ErrorCode::ClientClosedRequest, "The client closed the connection".to_owned())
    }

    /// The client cancelled the request (a WebSocket `cancel` frame).
    pub fn cancelled() -> Self {
        Self::new(ErrorCode::RequestCancelled, "The request was cancelled".to_owned())
    }

    /// 429 for a limit on what is open at once (connections, requests in
    /// flight), not on a rate.
    pub fn too_many(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(code, message)
    }

    pub fn unavailable(message: &str) -> Self {
        Self::new(ErrorCode::Unavailable, message.to_owned())
    }

    /// 401: the request is not authenticated. The message says what to
    /// fix and never echoes the credential.
    pub fn unauthenticated(failure: Failure) -> Self {
        let (code, message) = match failure {
            Failure::Missing => (
                ErrorCode::InvalidApiKey,
                "You didn't provide an API key. Send `Authorization: Bearer <key>` with an API key \
                 (blz_...) or an access token from POST /auth/token",
            ),
            Failure::Malformed => (ErrorCode::InvalidApiKey, "The API key or token is malformed"),
            Failure::Unknown => (ErrorCode::InvalidApiKey, "Incorrect API key provided"),
            Failure::Revoked => (ErrorCode::InvalidApiKey, "The API key or token has been revoked"),
            Failure::Expired => (ErrorCode::InvalidApiKey, "The API key or token has expired"),
            Failure::Invalid => (ErrorCode::InvalidApiKey, "The token is invalid"),
            Failure::WrongType => (
                ErrorCode::InvalidApiKey,
                "This is not an access token; a refresh token is exchanged at POST /auth/refresh",
            ),
            Failure::Disabled => (ErrorCode::InvalidApiKey, "The user of this API key or token is disabled"),
            Failure::BadPassword => (ErrorCode::InvalidCredentials, "Incorrect email or password"),
            Failure::CoolingDown(left) => return Self::auth_cooldown(left.as_secs().max(1)),
            Failure::Busy => return Self::sign_ins_busy(),
            Failure::NotCached => return Self::auth_cooldown(1),
            Failure::StoreUnavailable => return Self::new(
                ErrorCode::AuthUnavailable,
                "Credentials cannot be checked right now (the identity store is unreachable); retry shortly"
                    .to_owned(),
            )
            .retry_after(1),
        };
        let mut error = Self::new(code, message);
        error.challenge = true;
        error
    }

    /// 403: authenticated, but the role does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InsufficientPermissions, message.into())
    }

    /// 403: the key or token lacks the scope the route needs.
    pub fn insufficient_scope(scope: &str) -> Self {
        Self::new(
            ErrorCode::InsufficientScope,
            format!("This request needs the `{scope}` scope, which your API key or token does not hold"),
        )
    }

    /// 429: every password hashing thread is busy and its queue is full.
    pub fn sign_ins_busy() -> Self {
        Self::new(
            ErrorCode::TooManySignIns,
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
        Self::new(ErrorCode::TooManyAuthFailures, message).retry_after(retry_after_s)
    }

    /// 429: a rate limit refused the request. `budget` is `requests` or
    /// `tokens` (OpenAI's error type for it).
    pub fn rate_limited(budget: &'static str, message: String, retry_after_s: Option<u64>) -> Self {
        let mut error = Self::new(ErrorCode::RateLimitExceeded, message);
        error.kind = budget;
        match retry_after_s {
            Some(seconds) => error.retry_after(seconds),
            None => error,
        }
    }

    /// 503: rate limits are shared through Redis, Redis is unreachable,
    /// and the configured fail mode is closed.
    pub fn rate_limiter_unavailable() -> Self {
        let message = "Rate limits cannot be checked right now; retry in 1 s".to_owned();
        Self::new(ErrorCode::RateLimiterUnavailable, message).retry_after(1)
    }

    /// 429: a day or month quota of the caller's key, user or team would
    /// be overrun; it resets at the window's end.
    pub fn quota_exceeded(message: String, retry_after_s: u64) -> Self {
        Self::new(ErrorCode::QuotaExceeded, message).retry_after(retry_after_s)
    }

    /// 503: the quota counters cannot be read (Redis or the ledger down).
    pub fn quota_unavailable() -> Self {
        let message = "Quotas cannot be checked right now; retry in 1 s".to_owned();
        Self::new(ErrorCode::QuotaUnavailable, message).retry_after(1)
    }

    /// 400: the guard blocked a text bound for the model; the category is
    /// named, the matched text never echoed.
    pub fn content_blocked(category: &str, param: &str) -> Self {
        let message = format!(
            "The request was blocked by the content guard ({category}); rephrase it without that content"
        );
        Self::new(ErrorCode::ContentBlocked, message).with_param(param)
    }

    /// 429: this client's requests were blocked too often; it cools down.
    pub fn guard_cool_down(retry_after_s: u64) -> Self {
        let message = format!(
            "Too many of your requests were blocked by the content guard; retry in {retry_after_s} s"
        );
        Self::new(ErrorCode::ContentGuardCoolDown, message).retry_after(retry_after_s)
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(code, message)
    }

    /// 404 for a resource of the admin API.
    pub fn no_such(what: &str, id: &str) -> Self {
        let message = format!("No {what} with id `{id}`");
        Self::new(ErrorCode::NotFound, message)
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn detail(&self) -> Detail<'_> {
        Detail {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: Some(self.code.as_str()),
        }
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
        JsonPayloadError::Deserialize(error) if error.is_data() => ApiError::bad_request(
            ErrorCode::InvalidRequestBody,
            format!("The request body does not match the schema: {error}"),
        ),
        JsonPayloadError::Deserialize(error) => ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("The request body is not valid JSON: {error}"),
        ),
        _ => ApiError::bad_request(ErrorCode::InvalidBody, "The request body could not be read"),
    }
}
