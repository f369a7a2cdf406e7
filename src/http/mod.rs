//! The HTTP surface: routes, the request middleware, extractor limits and
//! the mapping of every error to the OpenAI error body.

mod admin;
pub mod auth;
pub mod cache;
mod chat;
mod compression;
pub mod disconnect;
pub mod exchange;
pub mod guard;
mod json;
mod observe;
mod openai;
pub mod ratelimit;
mod routes;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod validate;
pub mod websocket;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use blaze_actors::health::HealthState;
use blaze_actors::metrics::Telemetry;

pub use self::auth::Authenticate;
pub use self::compression::Compression;
pub use self::observe::{Observe, RequestId, REQUEST_ID};
pub use self::ratelimit::{Limiting, RateLimit};
use crate::error::{self, ApiError};

/// The body of the OpenAI endpoint at `path` (`/v1/chat/completions`,
/// `/v1/completions`, `/v1/embeddings`) parsed and checked as far as no
/// model, client or guard is needed: the handlers' own first steps. The
/// request fuzz target (fuzz/) drives it with arbitrary bytes.
pub fn check_body(
    path: &str,
    bytes: &[u8],
    limits: &crate::settings::ValidationSettings,
) -> Result<(), ApiError> {
    match path {
        "/v1/chat/completions" => chat::check_body(validate::Endpoint::Chat, bytes, limits),
        "/v1/completions" => chat::check_body(validate::Endpoint::Completions, bytes, limits),
        "/v1/embeddings" => openai::check_body(bytes, limits),
        _ => Err(ApiError::not_found("POST", path)),
    }
}

/// What handlers read; cheap to clone into every worker.
#[derive(Clone)]
pub struct AppState {
    pub health: Arc<HealthState>,
    pub telemetry: Arc<Telemetry>,
    pub supervisor: actix::Addr<blaze_actors::supervisor::Supervisor>,
    pub models: blaze_actors::router::ModelRegistry,
    pub auth: Arc<blaze_actors::auth::Authenticator>,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<cache::CacheAccess>,
    pub guard: Arc<blaze_actors::guard::Guard>,
    pub validation: crate::settings::ValidationSettings,
    /// Rate limits, for requests that come through no middleware
    /// (WebSocket frames).
    pub limiting: Arc<Limiting>,
    pub sockets: Arc<websocket::Sockets>,
}

/// Registers every route, the extractor limits and the fallbacks.
pub fn configure(config: &mut web::ServiceConfig, state: AppState, max_body: usize) {
    config
        .app_data(web::Data::new(state))
        .app_data(json::BodyLimit(max_body))
        .app_data(web::PayloadConfig::new(max_body))
        .app_data(
            web::JsonConfig::default()
                .limit(max_body)
                .error_handler(move |error, _| error::from_json_error(&error, max_body).into()),
        )
        .app_data(web::QueryConfig::default().error_handler(|error, _| {
            ApiError::bad_request("invalid_query", format!("Invalid query string: {error}")).into()
        }))
        .app_data(web::PathConfig::default().error_handler(|error, _| {
            ApiError::bad_request("invalid_path", format!("Invalid path parameter: {error}")).into()
        }));
    routes::configure(config);
    openai::configure(config);
    chat::configure(config);
    admin::configure(config);
    cache::configure(config);
    websocket::configure(config);
    #[cfg(feature = "test-hooks")]
    test_hooks::configure(config);
    config.default_service(web::to(not_found));
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    ApiError::not_found(request.method().as_str(), request.path()).error_response()
}

async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    ApiError::method_not_allowed(request.method().as_str(), request.path()).error_response()
}

/// A resource answering GET and HEAD, and 405 in the OpenAI format for any
/// other method.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(method_not_allowed))
}
