//! `/admin/quotas`: the day and month quotas of a key (its rotation
//! chain), a user or a team, set, read with what they have spent, and
//! removed; every change audited. Admins only.

use actix_web::{web, HttpRequest, HttpResponse};
use blaze_actors::auth::now_ms;
use blaze_actors::usage::{day_start, month_start, QuotaLimits, QuotaScope, Subject};
use serde_json::{json, Value};

use super::audit::{self, Change};
use super::auth::AdminCaller;
use super::routing::{resource, Route};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config.service(resource(Route::Quotas, limits).route(web::get().to(list))).service(
        resource(Route::Quota, limits)
            .route(web::get().to(get))
            .route(web::put().to(set))
            .route(web::delete().to(remove)),
    );
}

fn store_failed(error: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "the quota store failed");
    ApiError::unavailable("Quotas cannot be read or changed right now; retry shortly")
}

/// The most any quota may be.
const MOST: u64 = 1_000_000_000_000_000;

fn checked(limits: QuotaLimits) -> Result<QuotaLimits, ApiError> {
    let values = [
        limits.requests_per_day,
        limits.tokens_per_day,
        limits.cost_micros_per_day,
        limits.requests_per_month,
        limits.tokens_per_month,
        limits.cost_micros_per_month,
    ];
    if values.iter().flatten().all(|value| *value <= MOST) {
        Ok(limits)
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidValue,
            format!("each quota is 0 to {MOST}, or null (unlimited)"),
        ))
    }
}

/// The subject a quota is stored under: a key's lineage (so a rotation
/// keeps its quota), a user that exists, a team by its name.
async fn subject(
    state: &AppState,
    admin: &AdminCaller,
    scope: &str,
    id: &str,
) -> Result<(QuotaScope, String), ApiError> {
    let scope = QuotaScope::parse(scope).ok_or_else(|| ApiError::no_such("quota scope", scope))?;
    let subject = match scope {
        QuotaScope::Key => {
            state.auth.key(&admin.0, id).await.map_err(|_| ApiError::no_such("API key", id))?.lineage
        }
        QuotaScope::User => state.auth.user(id).await.map_err(|_| ApiError::no_such("user", id))?.id,
        QuotaScope::Team => {
            let valid = (1..=64).contains(&id.len())
                && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
            if !valid {
                return Err(ApiError::no_such("team", id));
            }
            id.to_owned()
        }
    };
    Ok((scope, subject))
}

fn limits_json(limits: &QuotaLimits) -> Value {
    serde_json::to_value(limits).unwrap_or(Value::Null)
}

async fn list(state: web::Data<AppState>, _admin: AdminCaller) -> Result<HttpResponse, ApiError> {
    let rows = state.pipeline.governance.store.quotas().await.map_err(|error| store_failed(&error))?;
    let data: Vec<Value> = rows
        .iter()
        .map(|(scope, subject, limits)| {
            json!({ "object": "quota", "scope": scope, "subject": subject, "limits": limits_json(limits) })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "object": "list", "data": data })))
}

/// A subject's quotas (its own, else the default) and what it has spent
/// this day and month, from the ledger.
async fn get(
    state: web::Data<AppState>,
    admin: AdminCaller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (scope, id) = path.into_inner();
    let (scope, subject) = subject(&state, &admin, &scope, &id).await?;
    let governance = &state.pipeline.governance;
    let own = governance.quotas.book_limits(scope, &subject);
    let ledger_subject = match scope {
        QuotaScope::Key => Subject::Key(subject.clone()),
        QuotaScope::User => Subject::User(subject.clone()),
        QuotaScope::Team => Subject::Team(subject.clone()),
    };
    let now = now_ms();
    let store = &governance.store;
    let day =
        store.spent(ledger_subject.clone(), day_start(now)).await.map_err(|error| store_failed(&error))?;
    let month = store.spent(ledger_subject, month_start(now)).await.map_err(|error| store_failed(&error))?;
    let spent = |spent: blaze_actors::usage::Spent| json!({ "requests": spent.requests, "tokens": spent.tokens, "cost_micros": spent.cost_micros });
    Ok(HttpResponse::Ok().json(json!({
        "object": "quota",
        "scope": scope,
        "subject": subject,
        "source": if own.is_some() { "set" } else { "default" },
        "limits": limits_json(&governance.quotas.limits_of(scope, &subject)),
        "spent": { "day": spent(day), "month": spent(month) },
    })))
}

async fn set(
    state: web::Data<AppState>,
    admin: AdminCaller,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<QuotaLimits>,
) -> Result<HttpResponse, ApiError> {
    let (scope, id) = path.into_inner();
    let (scope, subject) = subject(&state, &admin, &scope, &id).await?;
    let limits = checked(body.into_inner())?;
    change(&state, &admin, &request, scope, subject, Some(limits)).await
}

async fn remove(
    state: web::Data<AppState>,
    admin: AdminCaller,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (scope, id) = path.into_inner();
    let (scope, subject) = subject(&state, &admin, &scope, &id).await?;
    change(&state, &admin, &request, scope, subject, None).await
}

/// Stores the change, applies it here at once (other replicas within
/// seconds), and audits it.
async fn change(
    state: &AppState,
    admin: &AdminCaller,
    request: &HttpRequest,
    scope: QuotaScope,
    subject: String,
    limits: Option<QuotaLimits>,
) -> Result<HttpResponse, ApiError> {
    let governance = &state.pipeline.governance;
    let before = governance.quotas.book_limits(scope, &subject);
    governance
        .store
        .set_quota(scope, subject.clone(), limits, now_ms())
        .await
        .map_err(|error| store_failed(&error))?;
    if let Err(error) = governance.quotas.reload().await {
        tracing::warn!(%error, "the quotas set could not be reloaded; they apply at the next reload");
    }
    let action = if limits.is_some() { "quota.set" } else { "quota.removed" };
    let target = format!("{}:{subject}", scope.as_str());
    let (before, after) =
        (before.as_ref().map_or(Value::Null, limits_json), limits.as_ref().map_or(Value::Null, limits_json));
    audit::record(
        state,
        request,
        Change { action, target, before, after: after.clone(), actor: Some(&admin.0) },
    )
    .await;
    Ok(HttpResponse::Ok()
        .json(json!({ "object": "quota", "scope": scope, "subject": subject, "limits": after })))
}
