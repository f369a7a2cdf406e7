//! The response cache on the HTTP surface: the client's `Cache-Control`
//! refusal, the `x-blaze-cache` headers, and `DELETE /admin/cache`.

use actix_web::http::header::{HeaderName, CACHE_CONTROL, PRAGMA};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use blaze_actors::cache::{CacheKey, Invalidation, Lookup};
use serde::Deserialize;
use serde_json::Value;

use super::audit::{self, Change};
use super::auth::AdminCaller;
use super::routing::{resource, Route};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::settings::BodyLimitSettings;

/// `Cache-Control: no-cache` / `no-store`, or `Pragma: no-cache`.
pub fn refuses_cache(request: &HttpRequest) -> bool {
    let says = |name, words: &[&str]| {
        request.headers().get_all(name).any(|value| {
            value.to_str().unwrap_or_default().split(',').any(|directive| {
                let directive = directive.trim().to_ascii_lowercase();
                words.contains(&directive.as_str())
            })
        })
    };
    says(CACHE_CONTROL, &["no-cache", "no-store"]) || says(PRAGMA, &["no-cache"])
}

/// The header that says what the cache did.
pub const CACHE_VERDICT: HeaderName = HeaderName::from_static("x-blaze-cache");

/// `x-blaze-cache` (and the entry's id when there is one, for
/// `DELETE /admin/cache`).
pub fn mark(response: &mut HttpResponseBuilder, lookup: Lookup, key: Option<&CacheKey>) {
    response.insert_header((CACHE_VERDICT, lookup.header()));
    if let Some(key) = key {
        response.insert_header(("x-blaze-cache-key", key.id.as_str()));
    }
}

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config.service(resource(Route::Cache, limits).route(web::delete().to(invalidate)));
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateQuery {
    model: Option<String>,
    key: Option<String>,
}

/// Drops cached answers on every tier and replica: all of them, a
/// model's, or one entry.
async fn invalidate(
    state: web::Data<AppState>,
    admin: AdminCaller,
    request: HttpRequest,
    query: web::Query<InvalidateQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some(access) = &state.pipeline.cache else {
        return Err(ApiError::conflict(ErrorCode::CacheDisabled, "The cache is off (cache.enabled: false)"));
    };
    let invalidation = match query.into_inner() {
        InvalidateQuery { model: None, key: None } => Invalidation::All,
        InvalidateQuery { model: Some(model), key: None } => Invalidation::Model(model),
        InvalidateQuery { model: None, key: Some(key) }
            if key.len() == 64 && key.bytes().all(|byte| byte.is_ascii_hexdigit()) =>
        {
            Invalidation::Key(key.to_ascii_lowercase())
        }
        InvalidateQuery { model: None, key: Some(_) } => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidValue,
                "`key` is the 64 hex digits of x-blaze-cache-key",
            )
            .with_param("key"))
        }
        InvalidateQuery { .. } => {
            return Err(ApiError::bad_request(ErrorCode::InvalidQuery, "Give `model` or `key`, not both"));
        }
    };
    access.cache.invalidate(invalidation.clone()).await;
    tracing::info!(invalidation = ?invalidation, "cache invalidated");
    let after = serde_json::json!({ "invalidated": invalidation });
    let change = Change {
        action: "cache.purged",
        target: "cache".to_owned(),
        before: Value::Null,
        after,
        actor: Some(&admin.0),
    };
    audit::record(&state, &request, change).await;
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "object": "cache.invalidation", "invalidated": invalidation })))
}
