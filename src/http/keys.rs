//! API keys (`/admin/keys`): every user manages their own keys, admins
//! every key; created, listed, read, rotated and revoked, each change
//! audited. A key's secret is in the response that makes it, once, and
//! nowhere else.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use blaze_actors::auth::{KeyRecord, KeyRequest};
use blaze_actors::ratelimit::Limits;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{
    admin_error, checked_limits, limits_json, no_store, not_found, page_json, seconds, ListQuery,
};
use super::audit::{self, Change};
use super::auth::Caller;
use super::routing::{resource, Route};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(
            resource(Route::Keys, limits).route(web::post().to(create_key)).route(web::get().to(list_keys)),
        )
        .service(
            resource(Route::Key, limits).route(web::get().to(get_key)).route(web::delete().to(revoke_key)),
        )
        .service(resource(Route::KeyRotate, limits).route(web::post().to(rotate_key)));
}

fn key_json(key: &KeyRecord) -> Value {
    let now = blaze_actors::auth::now_ms();
    let status = if key.revoked_at.is_some() {
        "revoked"
    } else if key.expires_at.is_some_and(|end| now >= end) {
        "expired"
    } else if key.replaced_by.is_some() {
        "rotated"
    } else {
        "active"
    };
    json!({
        "object": "api_key",
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "prefix": format!("{}{}", blaze_actors::auth::secrets::KEY_PREFIX, key.id),
        "scopes": key.scopes,
        "rate_limits": limits_json(&key.limits),
        "status": status,
        "created_at": seconds(key.created_at),
        "expires_at": key.expires_at.map(seconds),
        "revoked_at": key.revoked_at.map(seconds),
        "last_used_at": key.last_used_at.map(seconds),
        "replaced_by": key.replaced_by,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    name: String,
    user_id: Option<String>,
    scopes: Option<Vec<String>>,
    expires_in_s: Option<u64>,
    rate_limits: Option<Limits>,
}

async fn create_key(
    state: web::Data<AppState>,
    caller: Caller,
    http: HttpRequest,
    body: web::Json<CreateKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.name.chars().count() > 200 {
        return Err(ApiError::bad_request(ErrorCode::InvalidValue, "`name` must be at most 200 characters")
            .with_param("name"));
    }
    if let Some(scopes) = &body.scopes {
        let valid_scope = |scope: &String| {
            (1..=64).contains(&scope.len()) && scope.bytes().all(|byte| byte.is_ascii_graphic())
        };
        if scopes.is_empty() || scopes.len() > 32 || !scopes.iter().all(valid_scope) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidValue,
                "`scopes`: 1 to 32 of *, models, chat, completions, embeddings, keys, admin, metrics \
                 (default: the caller's own)",
            )
            .with_param("scopes"));
        }
    }
    if body.expires_in_s.is_some_and(|seconds| seconds == 0 || seconds > 10 * 365 * 86_400) {
        return Err(ApiError::bad_request(ErrorCode::InvalidValue, "`expires_in_s` must be 1 s to 10 years")
            .with_param("expires_in_s"));
    }
    let request = KeyRequest {
        user_id: body.user_id,
        name: body.name,
        scopes: body.scopes,
        expires_in: body.expires_in_s.map(Duration::from_secs),
        limits: checked_limits(body.rate_limits)?.unwrap_or_default(),
    };
    let (record, key) =
        state.auth.create_key(&caller.0, request).await.map_err(not_found("user", "given"))?;
    let change = Change {
        action: "key.created",
        target: format!("key:{}", record.id),
        before: Value::Null,
        after: key_json(&record),
        actor: Some(&caller.0),
    };
    audit::record(&state, &http, change).await;
    let mut body = key_json(&record);
    body["key"] = Value::String(key.text);
    Ok(HttpResponse::Created().insert_header(no_store()).json(body))
}

async fn list_keys(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit()?;
    let query = query.into_inner();
    let page = state.auth.keys(&caller.0, query.user_id, query.after, limit).await.map_err(admin_error)?;
    Ok(HttpResponse::Ok().json(page_json(&page, key_json, |key| &key.id)))
}

async fn get_key(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = state.auth.key(&caller.0, &id).await.map_err(not_found("API key", &id))?;
    Ok(HttpResponse::Ok().json(key_json(&key)))
}

async fn revoke_key(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let before = state.auth.key(&caller.0, &id).await.map_err(not_found("API key", &id))?;
    let key = state.auth.revoke_key(&caller.0, &id).await.map_err(not_found("API key", &id))?;
    let (before, after) = (key_json(&before), key_json(&key));
    let change =
        Change { action: "key.revoked", target: format!("key:{id}"), before, after, actor: Some(&caller.0) };
    audit::record(&state, &request, change).await;
    Ok(HttpResponse::Ok().json(key_json(&key)))
}

async fn rotate_key(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (record, key, retired) =
        state.auth.rotate_key(&caller.0, &id).await.map_err(not_found("API key", &id))?;
    let (before, after) = (key_json(&retired), key_json(&record));
    let change =
        Change { action: "key.rotated", target: format!("key:{id}"), before, after, actor: Some(&caller.0) };
    audit::record(&state, &request, change).await;
    let mut body = key_json(&record);
    body["key"] = Value::String(key.text);
    body["replaces"] = key_json(&retired);
    Ok(HttpResponse::Created().insert_header(no_store()).json(body))
}
