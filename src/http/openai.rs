//! The OpenAI endpoints over HTTP: each handler builds the request's
//! [`Origin`](crate::openai::Origin) and hands the typed body to the
//! pipeline (`crate::openai`); the answer comes back as JSON or Server-Sent
//! Events. Same field names and shapes as OpenAI's, so the official SDKs
//! work unchanged.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::Caller;
use super::exchange::{origin, respond};
use super::json::{JsonBytes, StrictJson};
use super::routing::{resource, Route};
use super::AppState;
use crate::error::ApiError;
use crate::openai::{
    self, DetokenizeRequest, Gate, RerankRequest, ResponsesRequest, ScoreRequest, TokenizeRequest,
};
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(resource(Route::ChatCompletions, limits).route(web::post().to(chat_completions)))
        .service(resource(Route::Completions, limits).route(web::post().to(completions)))
        .service(resource(Route::Responses, limits).route(web::post().to(responses)))
        .service(resource(Route::Embeddings, limits).route(web::post().to(embeddings)))
        .service(resource(Route::Rerank, limits).route(web::post().to(rerank)))
        .service(resource(Route::Score, limits).route(web::post().to(score)))
        .service(resource(Route::Tokenize, limits).route(web::post().to(tokenize)))
        .service(resource(Route::Detokenize, limits).route(web::post().to(detokenize)))
        .service(super::get(Route::Models, limits, list_models))
        .service(super::get(Route::Model, limits, get_model));
}

async fn chat_completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    let origin = origin(&request, caller.0, gate);
    openai::chat_from_bytes(&state.pipeline, &origin, &body.0).await.map(respond)
}

async fn completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    let origin = origin(&request, caller.0, gate);
    openai::completion_from_bytes(&state.pipeline, &origin, &body.0).await.map(respond)
}

async fn responses(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: StrictJson<ResponsesRequest>,
) -> Result<HttpResponse, ApiError> {
    let origin = origin(&request, caller.0, gate);
    openai::responses(&state.pipeline, &origin, body.into_inner()).await.map(respond)
}

async fn embeddings(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: JsonBytes,
) -> Result<HttpResponse, ApiError> {
    let origin = origin(&request, caller.0, gate);
    openai::embeddings_from_bytes(&state.pipeline, &origin, &body.0).await.map(respond)
}

async fn rerank(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: StrictJson<RerankRequest>,
) -> Result<HttpResponse, ApiError> {
    let origin = origin(&request, caller.0, gate);
    openai::rerank(&state.pipeline, &origin, body.into_inner()).await.map(respond)
}

async fn score(
    state: web::Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    gate: Gate,
    body: StrictJson<ScoreRequest>,
) -> Result<HttpResponse, ApiError> {
    let origin = origin(&request, caller.0, gate);
    openai::score(&state.pipeline, &origin, body.into_inner()).await.map(respond)
}

async fn tokenize(
    state: web::Data<AppState>,
    body: StrictJson<TokenizeRequest>,
) -> Result<HttpResponse, ApiError> {
    openai::tokenize(&state.pipeline, body.into_inner()).await.map(respond)
}

async fn detokenize(
    state: web::Data<AppState>,
    body: StrictJson<DetokenizeRequest>,
) -> Result<HttpResponse, ApiError> {
    openai::detokenize(&state.pipeline, body.into_inner()).await.map(respond)
}

async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type(ContentType::json()).body(openai::model_list(&state.pipeline))
}

async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let body = openai::describe_model(&state.pipeline, &id)?;
    Ok(HttpResponse::Ok().content_type(ContentType::json()).body(body))
}
