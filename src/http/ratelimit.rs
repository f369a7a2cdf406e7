//! Rate limits on the HTTP surface: the [`Gate`] a token-counting handler
//! finds in its request (left there by the checkpoint), and the headers
//! every limited response carries: OpenAI's `x-ratelimit-*`, and the IETF
//! `RateLimit-Policy` and `RateLimit` fields.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use blaze_actors::ratelimit::Decision;
use blaze_actors::usage::QuotaStanding;

use crate::error::ApiError;
use crate::openai::{go_duration, Gate};

impl FromRequest for Gate {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(request.extensions().get::<Gate>().cloned().unwrap_or_else(|| Gate::new(None))))
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// The rate limit headers of a decision.
pub fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
    let mut policies = Vec::new();
    let mut standings = Vec::new();
    let budgets = [(decision.requests, "requests"), (decision.tokens, "tokens")];
    for (quota, unit) in budgets.iter().filter_map(|(quota, unit)| quota.map(|quota| (quota, *unit))) {
        let (limit, remaining, reset) = match unit {
            "requests" => {
                ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
            }
            _ => ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        };
        insert(headers, limit, quota.limit.to_string());
        insert(headers, remaining, quota.remaining.to_string());
        insert(headers, reset, go_duration(quota.reset));
        policies.push(format!("\"{unit}\";q={};w=60", quota.limit));
        standings.push(format!(
            "\"{unit}\";r={};t={}",
            quota.remaining,
            quota.reset.as_secs_f64().ceil() as u64
        ));
    }
    if !policies.is_empty() {
        insert(headers, "ratelimit-policy", policies.join(", "));
        insert(headers, "ratelimit", standings.join(", "));
    }
}

/// The quota headers: for the tightest quota of each unit and window,
/// `x-blaze-quota-limit-<unit>-<window>`, `x-blaze-quota-remaining-<unit>-<window>`
/// and `x-blaze-quota-reset-<window>` (seconds until it resets).
pub fn add_quota_headers(headers: &mut HeaderMap, standing: &QuotaStanding) {
    let now = blaze_actors::auth::now_ms();
    for (window, unit, limit, remaining, resets_at) in &standing.quotas {
        let (window, unit) = (window.as_str(), unit.as_str());
        let values = [
            (format!("x-blaze-quota-limit-{unit}-{window}"), limit.to_string()),
            (format!("x-blaze-quota-remaining-{unit}-{window}"), remaining.to_string()),
            (format!("x-blaze-quota-reset-{window}"), ((resets_at - now).max(0) / 1000).to_string()),
        ];
        for (name, value) in values {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                headers.insert(name, value);
            }
        }
    }
}
