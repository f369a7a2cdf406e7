//! The identity API: tokens (`/auth/*`), users (`/admin/users`, admins
//! only) and API keys (`/admin/keys`: every user manages their own keys,
//! admins every key). Payloads reject unknown fields, so no request can
//! slip in a role or a limit it may not set.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use blaze_actors::auth::{
    AdminError, Failure, KeyRecord, KeyRequest, NewUser, Page, Role, User, UserStatus, UserUpdate,
};
use blaze_actors::ratelimit::Limits;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{client_address, failed, AdminCaller, Caller};
use super::routing::{resource, Route};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(resource(Route::AuthToken, limits).route(web::post().to(token)))
        .service(resource(Route::AuthRefresh, limits).route(web::post().to(refresh)))
        .service(resource(Route::AuthLogout, limits).route(web::post().to(logout)))
        .service(
            resource(Route::Users, limits)
                .route(web::post().to(create_user))
                .route(web::get().to(list_users)),
        )
        .service(
            resource(Route::User, limits)
                .route(web::get().to(get_user))
                .route(web::patch().to(update_user))
                .route(web::delete().to(disable_user)),
        )
        .service(
            resource(Route::Keys, limits).route(web::post().to(create_key)).route(web::get().to(list_keys)),
        )
        .service(
            resource(Route::Key, limits).route(web::get().to(get_key)).route(web::delete().to(revoke_key)),
        )
        .service(resource(Route::KeyRotate, limits).route(web::post().to(rotate_key)));
}

fn admin_error(error: AdminError) -> ApiError {
    match error {
        AdminError::NotFound(what) => ApiError::no_such(what, "given"),
        AdminError::Conflict(message) => ApiError::conflict(ErrorCode::Conflict, message),
        AdminError::KeyLimit { .. } => ApiError::conflict(ErrorCode::KeyLimitReached, error.to_string()),
        AdminError::Forbidden(message) => ApiError::forbidden(message),
        AdminError::InsufficientScope(scope) => ApiError::insufficient_scope(&scope),
        AdminError::Busy => ApiError::sign_ins_busy(),
        AdminError::Invalid(message) => ApiError::bad_request(ErrorCode::InvalidValue, message),
        AdminError::Store(store) => {
            tracing::warn!(error = %store, "identity store failed");
            ApiError::unauthenticated(Failure::StoreUnavailable)
        }
        AdminError::Secret(secret) => ApiError::internal_failure("making a secret", &secret),
    }
}

fn not_found<'a>(what: &'a str, id: &'a str) -> impl FnOnce(AdminError) -> ApiError + 'a {
    move |error| match error {
        AdminError::NotFound(_) => ApiError::no_such(what, id),
        other => admin_error(other),
    }
}

fn seconds(millis: i64) -> i64 {
    millis / 1000
}

fn user_json(user: &User) -> Value {
    json!({
        "object": "user",
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "status": user.status,
        "has_password": user.password_hash.is_some(),
        "rate_limits": limits_json(&user.limits),
        "created_at": seconds(user.created_at),
        "updated_at": seconds(user.updated_at),
    })
}

/// Unset budgets show as null: the configured default applies.
fn limits_json(limits: &Limits) -> Value {
    json!({
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
    })
}

/// Budgets an admin sets: at least 1 each (null keeps the default).
fn checked_limits(limits: Option<Limits>) -> Result<Option<Limits>, ApiError> {
    const MOST: u64 = 1_000_000_000_000;
    let valid = |value: Option<u64>| value.is_none_or(|value| (1..=MOST).contains(&value));
    match limits {
        Some(limits) if !valid(limits.requests_per_minute) || !valid(limits.tokens_per_minute) => {
            Err(ApiError::bad_request(
                ErrorCode::InvalidValue,
                "`rate_limits`: requests_per_minute and tokens_per_minute are 1 to 10^12, or null for the default",
            )
            .with_param("rate_limits"))
        }
        limits => Ok(limits),
    }
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

fn page_json<T>(page: &Page<T>, render: fn(&T) -> Value, id: fn(&T) -> &str) -> Value {
    json!({
        "object": "list",
        "data": page.items.iter().map(render).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "last_id": page.items.last().map(id),
    })
}

// ---- tokens ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    api_key: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

async fn token(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let auth = &state.auth;
    let client = client_address(&request);
    let body = body.into_inner();
    let pair = match (body.api_key, body.email, body.password) {
        (Some(key), None, None) => {
            auth.token_for_key(&key).await.map_err(|failure| failed(auth, client, Some(&key), failure))?
        }
        // Counts its own failures (per address and per account) and
        // refuses a cooling one before hashing.
        (None, Some(email), Some(password)) => {
            auth.token_for_password(&email, &password, client).await.map_err(ApiError::unauthenticated)?
        }
        _ => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidGrant,
                "Send either `api_key`, or `email` and `password`",
            ))
        }
    };
    Ok(HttpResponse::Ok().insert_header(no_store()).json(pair))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let auth = &state.auth;
    let client = client_address(&request);
    let pair =
        auth.refresh(&body.refresh_token).await.map_err(|failure| failed(auth, client, None, failure))?;
    Ok(HttpResponse::Ok().insert_header(no_store()).json(pair))
}

async fn logout(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    state.auth.logout(&caller.0).await.map_err(admin_error)?;
    Ok(HttpResponse::NoContent().finish())
}

fn no_store() -> (actix_web::http::header::HeaderName, &'static str) {
    (actix_web::http::header::CACHE_CONTROL, "no-store")
}

// ---- users ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default = "default_role")]
    role: Role,
    password: Option<String>,
    rate_limits: Option<Limits>,
}

fn default_role() -> Role {
    Role::User
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    after: Option<String>,
    user_id: Option<String>,
}

impl ListQuery {
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit.unwrap_or(20) {
            limit @ 1..=100 => Ok(limit),
            _ => Err(ApiError::bad_request(ErrorCode::InvalidValue, "`limit` must be 1 to 100")
                .with_param("limit")),
        }
    }
}

async fn create_user(
    state: web::Data<AppState>,
    _admin: AdminCaller,
    body: web::Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.name.chars().count() > 200 {
        return Err(ApiError::bad_request(ErrorCode::InvalidValue, "`name` must be at most 200 characters")
            .with_param("name"));
    }
    let limits = checked_limits(body.rate_limits)?.unwrap_or_default();
    let new =
        NewUser { email: body.email, name: body.name, role: body.role, password: body.password, limits };
    let user = state.auth.create_user(new).await.map_err(admin_error)?;
    Ok(HttpResponse::Created().json(user_json(&user)))
}

async fn list_users(
    state: web::Data<AppState>,
    _admin: AdminCaller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    if query.user_id.is_some() {
        return Err(ApiError::bad_request(ErrorCode::InvalidQuery, "`user_id` filters keys, not users")
            .with_param("user_id"));
    }
    let page = state.auth.users(query.after.clone(), query.limit()?).await.map_err(admin_error)?;
    Ok(HttpResponse::Ok().json(page_json(&page, user_json, |user| &user.id)))
}

async fn get_user(
    state: web::Data<AppState>,
    _admin: AdminCaller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = state.auth.user(&id).await.map_err(not_found("user", &id))?;
    Ok(HttpResponse::Ok().json(user_json(&user)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    name: Option<String>,
    role: Option<Role>,
    status: Option<UserStatus>,
    password: Option<String>,
    rate_limits: Option<Limits>,
}

async fn update_user(
    state: web::Data<AppState>,
    caller: AdminCaller,
    id: web::Path<String>,
    body: web::Json<UpdateUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let update = UserUpdate {
        name: body.name,
        role: body.role,
        status: body.status,
        password: body.password,
        limits: checked_limits(body.rate_limits)?,
    };
    let user = state.auth.update_user(&caller.0, &id, update).await.map_err(not_found("user", &id))?;
    Ok(HttpResponse::Ok().json(user_json(&user)))
}

async fn disable_user(
    state: web::Data<AppState>,
    caller: AdminCaller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = state
        .auth
        .update_user(&caller.0, &id, UserUpdate { status: Some(UserStatus::Disabled), ..Default::default() })
        .await
        .map_err(not_found("user", &id))?;
    Ok(HttpResponse::Ok().json(user_json(&user)))
}

// ---- keys ----

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
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = state.auth.revoke_key(&caller.0, &id).await.map_err(not_found("API key", &id))?;
    Ok(HttpResponse::Ok().json(key_json(&key)))
}

async fn rotate_key(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (record, key, retired) =
        state.auth.rotate_key(&caller.0, &id).await.map_err(not_found("API key", &id))?;
    let mut body = key_json(&record);
    body["key"] = Value::String(key.text);
    body["replaces"] = key_json(&retired);
    Ok(HttpResponse::Created().insert_header(no_store()).json(body))
}
