//! Every error code the API answers with, and the one mapping from a code
//! to its HTTP status and OpenAI error type. `docs/errors.md` lists the
//! same codes; a test holds the two together.

use actix_web::http::StatusCode;

macro_rules! error_codes {
    ($($variant:ident = $text:literal, $status:literal, $kind:literal;)*) => {
        /// An error code of the OpenAI error body (`error.code`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of `docs/errors.md`.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            fn status_number(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// OpenAI's error type (`error.type`).
            pub fn kind(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $kind,)*
                }
            }
        }
    };
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        // Every number of the table is a valid status (a test checks it).
        StatusCode::from_u16(self.status_number()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

error_codes! {
    // The body and its fields.
    InvalidJson = "invalid_json", 400, "invalid_request_error";
    InvalidBody = "invalid_body", 400, "invalid_request_error";
    InvalidRequestBody = "invalid_request_body", 400, "invalid_request_error";
    UnknownParameter = "unknown_parameter", 400, "invalid_request_error";
    UnsupportedParameter = "unsupported_parameter", 400, "invalid_request_error";
    InvalidValue = "invalid_value", 400, "invalid_request_error";
    InvalidQuery = "invalid_query", 400, "invalid_request_error";
    InvalidPath = "invalid_path", 400, "invalid_request_error";
    TextTooLong = "text_too_long", 400, "invalid_request_error";
    InvalidCharacters = "invalid_characters", 400, "invalid_request_error";
    TooManyItems = "too_many_items", 400, "invalid_request_error";
    RequestTooLarge = "request_too_large", 413, "invalid_request_error";
    UnsupportedMediaType = "unsupported_media_type", 415, "invalid_request_error";
    // Models and generation.
    InvalidModel = "invalid_model", 400, "invalid_request_error";
    InvalidMessages = "invalid_messages", 400, "invalid_request_error";
    InvalidRole = "invalid_role", 400, "invalid_request_error";
    InvalidContent = "invalid_content", 400, "invalid_request_error";
    InvalidInput = "invalid_input", 400, "invalid_request_error";
    InvalidDimensions = "invalid_dimensions", 400, "invalid_request_error";
    InvalidN = "invalid_n", 400, "invalid_request_error";
    InvalidTemperature = "invalid_temperature", 400, "invalid_request_error";
    InvalidTopP = "invalid_top_p", 400, "invalid_request_error";
    InvalidPenalty = "invalid_penalty", 400, "invalid_request_error";
    InvalidStop = "invalid_stop", 400, "invalid_request_error";
    InvalidMaxTokens = "invalid_max_tokens", 400, "invalid_request_error";
    InvalidResponseFormat = "invalid_response_format", 400, "invalid_request_error";
    InvalidLogprobs = "invalid_logprobs", 400, "invalid_request_error";
    UnsupportedSchema = "unsupported_schema", 400, "invalid_request_error";
    InvalidTools = "invalid_tools", 400, "invalid_request_error";
    InvalidToolChoice = "invalid_tool_choice", 400, "invalid_request_error";
    ContextLengthExceeded = "context_length_exceeded", 400, "invalid_request_error";
    PreviousResponseNotFound = "previous_response_not_found", 400, "invalid_request_error";
    NotCacheable = "not_cacheable", 400, "invalid_request_error";
    ModelNotFound = "model_not_found", 404, "invalid_request_error";
    ModelLoading = "model_loading", 503, "server_error";
    ModelUnloaded = "model_unloaded", 503, "server_error";
    ModelOverloaded = "model_overloaded", 429, "rate_limit_exceeded";
    WorkerFailed = "worker_failed", 500, "server_error";
    // The gateway's upstreams.
    UpstreamUnavailable = "upstream_unavailable", 502, "server_error";
    UpstreamTimeout = "upstream_timeout", 504, "server_error";
    UpstreamOverloaded = "upstream_overloaded", 429, "rate_limit_exceeded";
    UpstreamRejected = "upstream_rejected", 400, "invalid_request_error";
    UpstreamInvalidResponse = "upstream_invalid_response", 502, "server_error";
    // Authentication and access.
    InvalidApiKey = "invalid_api_key", 401, "invalid_request_error";
    InvalidCredentials = "invalid_credentials", 401, "invalid_request_error";
    InvalidGrant = "invalid_grant", 400, "invalid_request_error";
    CredentialInUrl = "credential_in_url", 400, "invalid_request_error";
    InsufficientPermissions = "insufficient_permissions", 403, "invalid_request_error";
    InsufficientScope = "insufficient_scope", 403, "invalid_request_error";
    TooManyAuthFailures = "too_many_auth_failures", 429, "rate_limit_exceeded";
    TooManySignIns = "too_many_sign_ins", 429, "rate_limit_exceeded";
    AuthUnavailable = "auth_unavailable", 503, "server_error";
    // Limits.
    RateLimitExceeded = "rate_limit_exceeded", 429, "requests";
    RateLimiterUnavailable = "rate_limiter_unavailable", 503, "server_error";
    QuotaExceeded = "quota_exceeded", 429, "insufficient_quota";
    QuotaUnavailable = "quota_unavailable", 503, "server_error";
    TooManyConnections = "too_many_connections", 429, "invalid_request_error";
    TooManyInFlight = "too_many_in_flight", 429, "invalid_request_error";
    // The guard.
    ContentBlocked = "content_blocked", 400, "invalid_request_error";
    ContentGuardCoolDown = "content_guard_cool_down", 429, "rate_limit_exceeded";
    // The admin API.
    NotFound = "not_found", 404, "invalid_request_error";
    Conflict = "conflict", 409, "invalid_request_error";
    KeyLimitReached = "key_limit_reached", 409, "invalid_request_error";
    CacheDisabled = "cache_disabled", 409, "invalid_request_error";
    ProfilingDisabled = "profiling_disabled", 403, "invalid_request_error";
    ProfileInProgress = "profile_in_progress", 409, "invalid_request_error";
    ProfileFailed = "profile_failed", 500, "server_error";
    // The WebSocket frame protocol.
    InvalidUpgrade = "invalid_upgrade", 400, "invalid_request_error";
    InvalidFrame = "invalid_frame", 400, "invalid_request_error";
    BinaryFrame = "binary_frame", 400, "invalid_request_error";
    AlreadyAuthenticated = "already_authenticated", 400, "invalid_request_error";
    InvalidId = "invalid_id", 400, "invalid_request_error";
    InvalidType = "invalid_type", 400, "invalid_request_error";
    MissingBody = "missing_body", 400, "invalid_request_error";
    DuplicateId = "duplicate_id", 400, "invalid_request_error";
    UnknownRequest = "unknown_request", 400, "invalid_request_error";
    RequestCancelled = "request_cancelled", 499, "invalid_request_error";
    // The server.
    UnknownUrl = "unknown_url", 404, "invalid_request_error";
    MethodNotAllowed = "method_not_allowed", 405, "invalid_request_error";
    ClientClosedRequest = "client_closed_request", 499, "invalid_request_error";
    Timeout = "timeout", 504, "server_error";
    InternalError = "internal_error", 500, "server_error";
    NotReady = "not_ready", 503, "server_error";
    Unavailable = "unavailable", 503, "server_error";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of docs/errors.md's table: code, status, type.
    fn documented() -> Vec<(String, u16, String)> {
        include_str!("../../docs/errors.md")
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let unquote = |cell: &str| cell.trim_matches('`').to_owned();
                (unquote(cells[1]), cells[2].parse().unwrap_or(0), unquote(cells[3]))
            })
            .collect()
    }

    #[test]
    fn every_code_is_documented_with_its_status_and_type() {
        let documented = documented();
        let listed: Vec<(String, u16, String)> = ErrorCode::ALL
            .iter()
            .map(|code| (code.as_str().to_owned(), code.status().as_u16(), code.kind().to_owned()))
            .collect();
        assert_eq!(documented, listed, "docs/errors.md and ErrorCode differ");
    }

    #[test]
    fn codes_are_unique_and_statuses_valid() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert_eq!(code.status().as_u16(), code.status_number(), "{}", code.as_str());
        }
    }
}
