//! Rate limits on the HTTP surface: the [`Gate`] a token-counting handler
//! finds in its request (left there by the checkpoint), and the headers
//! every limited response carries: OpenAI's `x-ratelimit-*`, and the IETF
//! `RateLimit-Policy` and `RateLimit` fields.

use std::fmt::Write as _;
use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::web::BytesMut;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use blaze_actors::ratelimit::{Decision, Quota};
use blaze_actors::usage::QuotaStanding;

use crate::error::ApiError;
use crate::openai::{write_go_duration, Gate};

impl FromRequest for Gate {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(request.extensions().get::<Gate>().cloned().unwrap_or_else(|| Gate::new(None))))
    }
}

/// The header names of one budget's unit.
struct UnitNames {
    unit: &'static str,
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

static REQUESTS: UnitNames = UnitNames {
    unit: "requests",
    limit: HeaderName::from_static("x-ratelimit-limit-requests"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-requests"),
    reset: HeaderName::from_static("x-ratelimit-reset-requests"),
};
static TOKENS: UnitNames = UnitNames {
    unit: "tokens",
    limit: HeaderName::from_static("x-ratelimit-limit-tokens"),
    remaining: HeaderName::from_static("x-ratelimit-remaining-tokens"),
    reset: HeaderName::from_static("x-ratelimit-reset-tokens"),
};
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The rate limit headers of a decision. Every limited response carries
/// them, so their values are written into one buffer and each header
/// holds a slice of it: one allocation for all of them.
pub fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
    let budgets: Vec<(Quota, &UnitNames)> = [(decision.requests, &REQUESTS), (decision.tokens, &TOKENS)]
        .into_iter()
        .filter_map(|(quota, names)| quota.map(|quota| (quota, names)))
        .collect();
    if budgets.is_empty() {
        return;
    }
    // Each value is written after the one before; a field remembers where
    // its value ends.
    let mut text = BytesMut::with_capacity(320);
    let mut fields: Vec<(HeaderName, usize)> = Vec::with_capacity(8);
    for (quota, names) in &budgets {
        let _ = write!(text, "{}", quota.limit);
        fields.push((names.limit.clone(), text.len()));
        let _ = write!(text, "{}", quota.remaining);
        fields.push((names.remaining.clone(), text.len()));
        write_go_duration(&mut text, quota.reset);
        fields.push((names.reset.clone(), text.len()));
    }
    for (index, (quota, names)) in budgets.iter().enumerate() {
        let separator = if index > 0 { ", " } else { "" };
        let _ = write!(text, "{separator}\"{}\";q={};w=60", names.unit, quota.limit);
    }
    fields.push((RATELIMIT_POLICY, text.len()));
    for (index, (quota, names)) in budgets.iter().enumerate() {
        let separator = if index > 0 { ", " } else { "" };
        let reset = quota.reset.as_secs() + u64::from(quota.reset.subsec_nanos() > 0);
        let _ = write!(text, "{separator}\"{}\";r={};t={reset}", names.unit, quota.remaining);
    }
    fields.push((RATELIMIT, text.len()));
    let text = text.freeze();
    let mut start = 0;
    for (name, end) in fields {
        if let Ok(value) = HeaderValue::from_maybe_shared(text.slice(start..end)) {
            headers.insert(name, value);
        }
        start = end;
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
