//! Routes that make the service misbehave on purpose, for the integration
//! tests. Compiled only with the `test-hooks` feature, which only the test
//! build enables.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use blaze_actors::supervisor::{FailChild, FailMode};

use super::AppState;
use crate::error::{ApiError, ErrorCode};

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/__test/sleep/{millis}", web::get().to(sleep))
        .route("/__test/panic", web::get().to(panic))
        .route("/__test/echo", web::post().to(echo))
        .route("/__test/actors/{name}/{mode}", web::post().to(fail_actor));
}

async fn sleep(millis: web::Path<u64>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(*millis)).await;
    HttpResponse::Ok().json(serde_json::json!({ "slept_ms": *millis }))
}

#[allow(clippy::panic)]
async fn panic() -> HttpResponse {
    panic!("test hook: handler told to panic");
}

async fn echo(body: web::Json<serde_json::Value>) -> HttpResponse {
    HttpResponse::Ok().json(body.into_inner())
}

async fn fail_actor(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (name, mode) = path.into_inner();
    let mode = match mode.as_str() {
        "panic" => FailMode::Panic,
        "stop" => FailMode::Stop,
        _ => return Err(ApiError::bad_request(ErrorCode::InvalidValue, "mode must be panic or stop")),
    };
    match state.supervisor.send(FailChild { name: name.clone(), mode }).await {
        Ok(true) => Ok(HttpResponse::Ok().json(serde_json::json!({ "failed": name }))),
        _ => Err(ApiError::bad_request(ErrorCode::NotFound, format!("no running actor named {name}"))),
    }
}
