//! The identity API: tokens (`/auth/*`) and users (`/admin/users`, admins
//! only; each change audited), and what the key routes (`keys.rs`) share
//! with them. Payloads reject unknown fields, so no request can slip in a
//! role, a team or a limit it may not set.

use actix_web::{web, HttpRequest, HttpResponse};
use blaze_actors::auth::{AdminError, Failure, NewUser, Page, Principal, Role, User, UserStatus, UserUpdate};
use blaze_actors::ratelimit::Limits;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::{self, Change};
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
        );
}

pub(super) fn admin_error(error: AdminError) -> ApiError {
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

pub(super) fn not_found<'a>(what: &'a str, id: &'a str) -> impl FnOnce(AdminError) -> ApiError + 'a {
    move |error| match error {
        AdminError::NotFound(_) => ApiError::no_such(what, id),
        other => admin_error(other),
    }
}

pub(super) fn seconds(millis: i64) -> i64 {
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
        "team": user.team,
        "created_at": seconds(user.created_at),
        "updated_at": seconds(user.updated_at),
    })
}

/// Unset budgets show as null: the configured default applies.
pub(super) fn limits_json(limits: &Limits) -> Value {
    json!({
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
    })
}

/// Budgets an admin sets: at least 1 each (null keeps the default).
pub(super) fn checked_limits(limits: Option<Limits>) -> Result<Option<Limits>, ApiError> {
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

pub(super) fn page_json<T>(page: &Page<T>, render: fn(&T) -> Value, id: fn(&T) -> &str) -> Value {
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

pub(super) fn no_store() -> (actix_web::http::header::HeaderName, &'static str) {
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
    team: Option<String>,
}

fn default_role() -> Role {
    Role::User
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<u32>,
    pub(super) after: Option<String>,
    pub(super) user_id: Option<String>,
}

impl ListQuery {
    pub(super) fn limit(&self) -> Result<u32, ApiError> {
        match self.limit.unwrap_or(20) {
            limit @ 1..=100 => Ok(limit),
            _ => Err(ApiError::bad_request(ErrorCode::InvalidValue, "`limit` must be 1 to 100")
                .with_param("limit")),
        }
    }
}

async fn create_user(
    state: web::Data<AppState>,
    admin: AdminCaller,
    request: HttpRequest,
    body: web::Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.name.chars().count() > 200 {
        return Err(ApiError::bad_request(ErrorCode::InvalidValue, "`name` must be at most 200 characters")
            .with_param("name"));
    }
    let limits = checked_limits(body.rate_limits)?.unwrap_or_default();
    let team = body.team.map(checked_team).transpose()?;
    let new = NewUser {
        email: body.email,
        name: body.name,
        role: body.role,
        password: body.password,
        limits,
        team,
    };
    let user = state.auth.create_user(new).await.map_err(admin_error)?;
    let after = user_json(&user);
    let change = Change {
        action: "user.created",
        target: format!("user:{}", user.id),
        before: Value::Null,
        after,
        actor: Some(&admin.0),
    };
    audit::record(&state, &request, change).await;
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
    /// Absent keeps the team; null takes the user out of it.
    #[serde(default, deserialize_with = "present")]
    team: Option<Option<String>>,
}

/// A field that is present (even as null) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// A team's name: 1 to 64 letters, digits, `.`, `_` or `-`.
fn checked_team(team: String) -> Result<String, ApiError> {
    let valid = (1..=64).contains(&team.len())
        && team.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    valid.then_some(team).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidValue,
            "`team` must be 1 to 64 letters, digits, `.`, `_` or `-`",
        )
        .with_param("team")
    })
}

async fn update_user(
    state: web::Data<AppState>,
    caller: AdminCaller,
    request: HttpRequest,
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
        team: body.team.map(|team| team.map(checked_team).transpose()).transpose()?,
    };
    changed_user(&state, &caller.0, &request, &id, update).await
}

async fn disable_user(
    state: web::Data<AppState>,
    caller: AdminCaller,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let update = UserUpdate { status: Some(UserStatus::Disabled), ..Default::default() };
    changed_user(&state, &caller.0, &request, &id, update).await
}

/// Applies an admin's change to a user and audits it (`user.disabled`
/// when it disables them, `user.changed` otherwise).
async fn changed_user(
    state: &AppState,
    actor: &Principal,
    request: &HttpRequest,
    id: &str,
    update: UserUpdate,
) -> Result<HttpResponse, ApiError> {
    let before = state.auth.user(id).await.map_err(not_found("user", id))?;
    let password_changed = update.password.is_some();
    let user = state.auth.update_user(actor, id, update).await.map_err(not_found("user", id))?;
    let action = if user.status == UserStatus::Disabled && before.status != UserStatus::Disabled {
        "user.disabled"
    } else {
        "user.changed"
    };
    let mut after = user_json(&user);
    // A new password is a change, said without any hash of it.
    after["password_changed"] = Value::Bool(password_changed);
    let change = Change {
        action,
        target: format!("user:{id}"),
        before: user_json(&before),
        after,
        actor: Some(actor),
    };
    audit::record(state, request, change).await;
    Ok(HttpResponse::Ok().json(user_json(&user)))
}
