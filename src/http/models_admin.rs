//! `POST /admin/models/{id}/load` and `/unload`: an admin loads or unloads
//! a catalog model while the others serve.

use actix_web::{web, HttpRequest, HttpResponse};
use blaze_actors::router::{LoadStarted, ModelState, Unloader};
use serde_json::json;

use super::audit::{self, Change};
use super::auth::AdminCaller;
use super::routing::{resource, Route};
use super::AppState;
use crate::error::ApiError;
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(resource(Route::ModelLoad, limits).route(web::post().to(load)))
        .service(resource(Route::ModelUnload, limits).route(web::post().to(unload)));
}

/// 202 while the model loads (poll `GET /v1/models/{id}`), 200 when it
/// is served already.
async fn load(
    state: web::Data<AppState>,
    admin: AdminCaller,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let models = &state.pipeline.models;
    let was = models.registry().state(&id);
    let started = models.load(&id, false).ok_or_else(|| ApiError::model_not_found(&id))?;
    let (before, after) = (json!({ "state": format!("{was:?}") }), json!({ "load": format!("{started:?}") }));
    let change = Change {
        action: "model.loaded",
        target: format!("model:{id}"),
        before,
        after,
        actor: Some(&admin.0),
    };
    audit::record(&state, &request, change).await;
    let body = |state: &str| json!({ "object": "model.load", "id": id.as_str(), "state": state });
    Ok(match started {
        LoadStarted::AlreadyServed => HttpResponse::Ok().json(body("ready")),
        LoadStarted::Began | LoadStarted::AlreadyLoading => HttpResponse::Accepted().json(body("loading")),
    })
}

/// 200 once the model takes no more requests; the ones it holds finish.
async fn unload(
    state: web::Data<AppState>,
    admin: AdminCaller,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let models = &state.pipeline.models;
    let was = models.registry().state(&id);
    models.unload(&id, Unloader::Admin).ok_or_else(|| ApiError::model_not_found(&id))?;
    let was_loaded = matches!(was, ModelState::Served | ModelState::Loading { .. });
    let (before, after) = (json!({ "state": format!("{was:?}") }), json!({ "state": "unloaded" }));
    let change = Change {
        action: "model.unloaded",
        target: format!("model:{id}"),
        before,
        after,
        actor: Some(&admin.0),
    };
    audit::record(&state, &request, change).await;
    Ok(HttpResponse::Ok().json(json!({
        "object": "model.unload",
        "id": id.as_str(),
        "state": "unloaded",
        "was_loaded": was_loaded,
    })))
}
