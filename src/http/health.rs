//! Health and metrics endpoints. They read what the health monitor and the
//! metrics aggregator publish; none waits on an actor.

use actix_web::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::routing::Route;
use super::{get, AppState};
use crate::error::ApiError;
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(get(Route::Health, limits, liveness))
        .service(get(Route::Livez, limits, liveness))
        .service(get(Route::HealthReady, limits, readiness))
        .service(get(Route::Readyz, limits, readiness))
        .service(get(Route::HealthDetailed, limits, detailed))
        .service(get(Route::Metrics, limits, prometheus))
        .service(get(Route::MetricsSummary, limits, summary));
}

const LIVE_BODY: &str = r#"{"status":"ok"}"#;

/// Health answers are never cached by proxies. Static values: no
/// formatting or allocation on the probe path.
fn no_store() -> (actix_web::http::header::HeaderName, HeaderValue) {
    (CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// Liveness: the process answers. No dependency is checked.
async fn liveness() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(LIVE_BODY)
}

/// Readiness: every required component is up and the server is not draining.
async fn readiness(state: web::Data<AppState>) -> HttpResponse {
    let readiness = state.health.readiness();
    if readiness.ready {
        return HttpResponse::Ok().insert_header(no_store()).json(serde_json::json!({ "status": "ready" }));
    }
    let error = ApiError::not_ready(&readiness.failing);
    HttpResponse::build(error.status())
        .insert_header(no_store())
        .json(error.body(Some(("failing", serde_json::json!(readiness.failing)))))
}

async fn detailed(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().insert_header(no_store()).json(state.health.detailed())
}

async fn prometheus(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.telemetry.render())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryQuery {
    /// Only the newest `last` rollups.
    last: Option<usize>,
}

async fn summary(state: web::Data<AppState>, query: web::Query<SummaryQuery>) -> HttpResponse {
    HttpResponse::Ok().json(state.telemetry.summary(query.last))
}
