//! The response cache on the HTTP surface: whether a request may use it,
//! whose entries it sees, the `x-blaze-cache` headers, and
//! `DELETE /admin/cache`.

use std::sync::Arc;

use actix_web::http::header::{CACHE_CONTROL, PRAGMA};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use blaze_actors::auth::Principal;
use blaze_actors::cache::{CacheKey, Invalidation, Lookup, ResponseCache};
use serde::Deserialize;

use super::auth::AdminCaller;
use super::routing::{resource, Route};
use super::AppState;
use crate::error::ApiError;
use crate::settings::BodyLimitSettings;

/// The cache as the handlers see it.
#[derive(Clone)]
pub struct CacheAccess {
    pub cache: Arc<ResponseCache>,
    /// Entries are shared by every user, not kept per user.
    pub shared: bool,
}

/// Where one request may read and write: its cache and its scope.
pub struct Caching {
    cache: Arc<ResponseCache>,
    scope: String,
}

impl Caching {
    /// A request's access to the cache: none when the cache is off or the
    /// client asked not to be answered from it.
    pub fn of(state: &AppState, allowed: bool, caller: &Principal) -> Option<Self> {
        let access = state.cache.as_ref()?;
        if !allowed {
            return None;
        }
        let scope = if access.shared { "shared".to_owned() } else { format!("user:{}", caller.user_id) };
        Some(Self { cache: access.cache.clone(), scope })
    }

    /// Access in a fixed scope (the warming file's).
    pub fn scoped(access: &CacheAccess, user_id: Option<&str>) -> Self {
        let scope = match (access.shared, user_id) {
            (false, Some(user)) => format!("user:{user}"),
            _ => "shared".to_owned(),
        };
        Self { cache: access.cache.clone(), scope }
    }

    pub fn key(&self, endpoint: &str, model: &str, fields: &serde_json::Value) -> CacheKey {
        CacheKey::new(endpoint, model, &self.scope, fields)
    }

    pub fn cache(&self) -> &Arc<ResponseCache> {
        &self.cache
    }
}

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

/// `x-blaze-cache` (and the entry's id when there is one, for
/// `DELETE /admin/cache`).
pub fn mark(response: &mut HttpResponseBuilder, lookup: Lookup, key: Option<&CacheKey>) {
    response.insert_header(("x-blaze-cache", lookup.header()));
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
    _admin: AdminCaller,
    query: web::Query<InvalidateQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some(access) = &state.cache else {
        return Err(ApiError::conflict("cache_disabled", "The cache is off (cache.enabled: false)"));
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
                "invalid_value",
                "`key` is the 64 hex digits of x-blaze-cache-key",
            )
            .with_param("key"))
        }
        InvalidateQuery { .. } => {
            return Err(ApiError::bad_request("invalid_query", "Give `model` or `key`, not both"));
        }
    };
    access.cache.invalidate(invalidation.clone()).await;
    tracing::info!(invalidation = ?invalidation, "cache invalidated");
    Ok(HttpResponse::Ok()
        .json(serde_json::json!({ "object": "cache.invalidation", "invalidated": invalidation })))
}

/// One line of the warming file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmLine {
    endpoint: String,
    body: serde_json::Value,
    /// Whose entry it becomes; required unless entries are shared.
    user_id: Option<String>,
}

/// Answers every request of the warming file into the cache, in the
/// background, logging progress; waits first for the models to be served.
pub async fn warm(state: AppState, path: std::path::PathBuf) {
    let Some(access) = state.cache.clone() else { return };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(error) => {
            return tracing::warn!(path = %path.display(), error = %error, "cache warming: cannot read the file")
        }
    };
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    for _ in 0..1500 {
        if state.models.pending().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (total, mut warmed, mut failed) = (lines.len(), 0usize, 0usize);
    tracing::info!(path = %path.display(), total, "cache warming: started");
    let started = std::time::Instant::now();
    for (number, line) in lines.iter().enumerate() {
        let outcome = match serde_json::from_str::<WarmLine>(line) {
            Err(error) => Err(format!("not a warming line: {error}")),
            Ok(line) if !access.shared && line.user_id.is_none() => {
                let _ = line;
                Err("`user_id` is required unless cache.shared_across_users is set".to_owned())
            }
            Ok(line) => {
                let caching = Caching::scoped(&access, line.user_id.as_deref());
                let answered = match Route::for_pattern(&line.endpoint).map(|rule| rule.route) {
                    Some(Route::Embeddings) => super::openai::warm(&state, caching, line.body).await,
                    Some(route @ (Route::ChatCompletions | Route::Completions)) => {
                        super::chat::warm(&state, caching, route, line.body).await
                    }
                    _ => {
                        Err(ApiError::bad_request("unknown_url", format!("cannot warm `{}`", line.endpoint)))
                    }
                };
                answered.map(drop).map_err(|error| error.to_string())
            }
        };
        match outcome {
            Ok(()) => warmed += 1,
            Err(error) => {
                failed += 1;
                tracing::warn!(line = number + 1, error, "cache warming: a line failed");
            }
        }
        let done = number + 1;
        if done == total || done % (total / 10).max(1) == 0 {
            tracing::info!(done, total, warmed, failed, "cache warming: progress");
        }
    }
    tracing::info!(
        total,
        warmed,
        failed,
        seconds = started.elapsed().as_secs_f64(),
        "cache warming: finished"
    );
}
