//! The HTTP transport: the route table and its checkpoint, the handlers
//! (thin: the OpenAI endpoints hand their bodies to `crate::openai`), the
//! request middleware and the extractor limits.

mod admin;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod checkpoint;
pub mod client;
mod compression;
pub mod disconnect;
mod exchange;
mod health;
pub mod heap_profile;
mod json;
mod keys;
mod models_admin;
mod network;
mod observe;
mod openai;
mod profile;
mod quotas;
pub mod ratelimit;
pub mod routing;
#[cfg(feature = "test-hooks")]
mod test_hooks;
mod usage;
pub mod websocket;

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use blaze_actors::health::HealthState;
use blaze_actors::metrics::Telemetry;

pub use self::compression::Compression;
pub use self::observe::{Observe, REQUEST_ID};
use crate::error::{self, ApiError, ErrorCode};
pub use crate::openai::RequestId;

/// What handlers read; cheap to clone into every worker.
#[derive(Clone)]
pub struct AppState {
    pub health: Arc<HealthState>,
    pub telemetry: Arc<Telemetry>,
    pub supervisor: actix::Addr<blaze_actors::supervisor::Supervisor>,
    pub auth: Arc<blaze_actors::auth::Authenticator>,
    /// The OpenAI pipeline: models, guard, cache, limits.
    pub pipeline: crate::openai::Pipeline,
    pub sockets: Arc<websocket::Sockets>,
    /// Proxies trusted to name the client (`server.trusted_proxies`).
    pub proxies: Arc<client::TrustedProxies>,
    /// Who reads /metrics, the summary and /health/detailed.
    pub monitoring: checkpoint::MonitoringAccess,
    /// Largest body per kind of route.
    pub body_limits: crate::settings::BodyLimitSettings,
    /// The supervisor's view of the actors, for the runtime profile.
    pub board: blaze_actors::supervisor::ActorBoard,
    pub profiling: crate::settings::ProfilingSettings,
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
            ApiError::bad_request(ErrorCode::InvalidQuery, format!("Invalid query string: {error}")).into()
        }))
        .app_data(web::PathConfig::default().error_handler(|error, _| {
            ApiError::bad_request(ErrorCode::InvalidPath, format!("Invalid path parameter: {error}")).into()
        }));
    health::configure(config, &limits);
    openai::configure(config, &limits);
    admin::configure(config, &limits);
    keys::configure(config, &limits);
    cache::configure(config, &limits);
    models_admin::configure(config, &limits);
    profile::configure(config, &limits);
    usage::configure(config, &limits);
    quotas::configure(config, &limits);
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
