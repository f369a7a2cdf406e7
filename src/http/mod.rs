//! The HTTP surface: routes, the request middleware, extractor limits and
//! the mapping of every error to the OpenAI error body.

mod admin;
pub mod auth;
pub mod cache;
mod chat;
mod chat_request;
pub mod checkpoint;
pub mod client;
mod compression;
pub mod disconnect;
pub mod exchange;
pub mod guard;
mod json;
mod observe;
mod openai;
pub mod ratelimit;
mod routes;
pub mod routing;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod validate;
pub mod websocket;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use blaze_actors::health::HealthState;
use blaze_actors::metrics::Telemetry;

pub use self::compression::Compression;
pub use self::observe::{Observe, RequestId, REQUEST_ID};
pub use self::ratelimit::Limiting;
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
    match routing::Route::for_pattern(path).map(|rule| rule.route) {
        Some(routing::Route::ChatCompletions) => chat::check_body(validate::Endpoint::Chat, bytes, limits),
        Some(routing::Route::Completions) => chat::check_body(validate::Endpoint::Completions, bytes, limits),
        Some(routing::Route::Embeddings) => openai::check_body(bytes, limits),
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
    /// Proxies trusted to name the client (`server.trusted_proxies`).
    pub proxies: Arc<client::TrustedProxies>,
    /// Who reads /metrics, the summary and /health/detailed.
    pub monitoring: checkpoint::MonitoringAccess,
    /// Largest body per kind of route.
    pub body_limits: crate::settings::BodyLimitSettings,
}

/// Registers every route of the table, the extractor limits and the
/// fallbacks.
pub fn configure(config: &mut web::ServiceConfig, state: AppState, max_body: usize) {
    let limits = state.body_limits;
    config
        .app_data(web::Data::new(state))
        .app_data(json::BodyLimit(max_body))
        .app_data(web::PayloadConfig::new(max_body))
        .app_data(json_config(max_body))
        .app_data(web::QueryConfig::default().error_handler(|error, _| {
            ApiError::bad_request("invalid_query", format!("Invalid query string: {error}")).into()
        }))
        .app_data(web::PathConfig::default().error_handler(|error, _| {
            ApiError::bad_request("invalid_path", format!("Invalid path parameter: {error}")).into()
        }));
    routes::configure(config, &limits);
    openai::configure(config, &limits);
    chat::configure(config, &limits);
    admin::configure(config, &limits);
    cache::configure(config, &limits);
    websocket::configure(config, &limits);
    #[cfg(feature = "test-hooks")]
    test_hooks::configure(config);
    config.default_service(web::to(not_found));
}

/// JSON bodies up to `limit` bytes, errors in the OpenAI format.
fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |error, _| error::from_json_error(&error, limit).into())
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    ApiError::not_found(request.method().as_str(), request.path()).error_response()
}

async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    ApiError::method_not_allowed(request.method().as_str(), request.path()).error_response()
}

/// The resource of `route` answering GET and HEAD with `handler` (and 405
/// in the OpenAI format for any other method).
fn get<F, Args>(
    route: routing::Route,
    limits: &crate::settings::BodyLimitSettings,
    handler: F,
) -> impl actix_web::dev::HttpServiceFactory
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    routing::resource(route, limits).route(web::get().to(handler.clone())).route(web::head().to(handler))
}
