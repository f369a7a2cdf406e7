//! Rate limits on the HTTP surface: the budgets of one request, checked
//! once against the [`RateLimiter`]: by the checkpoint before the handler
//! for most routes, by the handler for the routes that count tokens (it
//! knows the count only after tokenizing). Every limited response carries
//! OpenAI's `x-ratelimit-*` headers and the IETF `RateLimit-Policy` and
//! `RateLimit` fields.

use std::cell::RefCell;
use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use blaze_actors::auth::Principal;
use blaze_actors::ratelimit::{Admission, Decision, Limits, Quota, RateLimiter, Ticket, Unavailable, Unit};

use crate::error::ApiError;

/// The limiter and the budgets that apply when a key or user sets none.
pub struct Limiting {
    pub limiter: Arc<RateLimiter>,
    pub defaults: Limits,
    pub anonymous: Limits,
    pub routes: Vec<(String, Limits)>,
}

/// One request's budget holder and what it was told.
pub(super) struct Pending {
    limiting: Arc<Limiting>,
    subject: String,
    limits: Limits,
    route: Option<(String, Limits)>,
    decision: RefCell<Option<Decision>>,
}

impl Pending {
    /// The budgets of `principal` (anonymous when `None`) on the route
    /// with `pattern`; `None` when nothing limits them.
    pub(super) fn new(
        limiting: &Arc<Limiting>,
        principal: Option<&Principal>,
        subject: String,
        pattern: &str,
    ) -> Option<Self> {
        let limits = match principal {
            Some(principal) => principal.limits.or(limiting.defaults),
            None => limiting.anonymous,
        };
        let route = limiting.routes.iter().find(|(route, _)| route == pattern).cloned();
        if limits.is_unlimited() && route.is_none() {
            return None;
        }
        Some(Self { limiting: limiting.clone(), subject, limits, route, decision: RefCell::new(None) })
    }

    /// Checks the budgets once, reserving `tokens`; remembers the answer
    /// for the response headers.
    pub(super) async fn check(&self, tokens: u64) -> Result<(Decision, Option<Ticket>), Unavailable> {
        let admission = Admission {
            subject: &self.subject,
            limits: self.limits,
            route: self.route.as_ref().map(|(route, limits)| (route.as_str(), *limits)),
            tokens,
        };
        let mut decision = self.limiting.limiter.check(&admission).await?;
        let ticket = decision.ticket.take();
        *self.decision.borrow_mut() = Some(decision.clone());
        Ok((decision, ticket))
    }
}

/// What a token-counting handler admits its request through. Without a
/// budget to spend (unlimited) it admits everything.
#[derive(Clone)]
pub struct Gate(pub(super) Option<Rc<Pending>>);

impl FromRequest for Gate {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(request.extensions().get::<Gate>().cloned().unwrap_or(Gate(None))))
    }
}

impl Gate {
    /// The gate of one request that did not come through the checkpoint
    /// (a WebSocket frame): the caller's budgets, as on the route with
    /// `pattern` over HTTP.
    pub fn for_call(limiting: &Arc<Limiting>, principal: &Principal, subject: &str, pattern: &str) -> Self {
        Self(Pending::new(limiting, Some(principal), subject.to_owned(), pattern).map(Rc::new))
    }

    /// The recorded decision, for the response headers.
    pub(super) fn add_headers(&self, headers: &mut HeaderMap) {
        if let Some(decision) = self.0.as_ref().and_then(|pending| pending.decision.borrow().clone()) {
            add_headers(headers, &decision);
        }
    }

    /// A request that ended before its handler admitted it (a bad body,
    /// an unknown model) still spends one request, as on HTTP.
    pub async fn spend_unadmitted(&self) {
        if let Some(pending) = &self.0 {
            if pending.decision.borrow().is_none() {
                let _ = pending.check(0).await;
            }
        }
    }

    /// Admits the request, reserving `tokens` (prompt plus the most the
    /// completion may take), or refuses it (429, or 503 when closed).
    pub async fn admit(&self, tokens: u64) -> Result<Option<Reservation>, ApiError> {
        let Some(pending) = &self.0 else { return Ok(None) };
        match pending.check(tokens).await {
            Ok((decision, ticket)) if decision.admitted => {
                Ok(ticket.map(|ticket| Reservation { limiter: pending.limiting.limiter.clone(), ticket }))
            }
            Ok((decision, _)) => Err(refusal(&decision)),
            Err(Unavailable) => Err(ApiError::rate_limiter_unavailable()),
        }
    }
}

/// Tokens reserved at admission, to settle with what was really used.
pub struct Reservation {
    limiter: Arc<RateLimiter>,
    ticket: Ticket,
}

impl Reservation {
    pub fn reserved(&self) -> u64 {
        self.ticket.reserved()
    }

    /// Corrects the reservation with the real usage, off the request path.
    pub fn settle(self, used: u64) {
        let Reservation { limiter, ticket } = self;
        actix_web::rt::spawn(async move { limiter.settle(ticket, used).await });
    }
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Requests => "requests",
        Unit::Tokens => "tokens",
    }
}

/// The 429 for a refused decision, worded as OpenAI words it.
pub(super) fn refusal(decision: &Decision) -> ApiError {
    if let Some(too_large) = decision.too_large {
        let unit = unit_name(too_large.unit);
        let message = format!(
            "Request too large: it needs {} {unit} and the limit is {} {unit} per minute; \
             send a smaller request (fewer input tokens, or a lower max_tokens)",
            too_large.cost, too_large.limit
        );
        return ApiError::rate_limited(unit, message, None);
    }
    let exhausted = match (decision.requests, decision.tokens) {
        (Some(requests), _) if requests.remaining == 0 => (Unit::Requests, requests),
        (_, Some(tokens)) => (Unit::Tokens, tokens),
        (Some(requests), None) => (Unit::Requests, requests),
        (None, None) => (Unit::Requests, Quota { limit: 0, remaining: 0, reset: Duration::ZERO }),
    };
    let (unit, quota) = exhausted;
    let unit = unit_name(unit);
    let wait = decision.retry_after;
    let message = format!(
        "Rate limit reached on {unit} per minute: limit {}, remaining {}. Please try again in {}.",
        quota.limit,
        quota.remaining,
        go_duration(wait)
    );
    ApiError::rate_limited(unit, message, Some(wait.as_secs_f64().ceil().max(1.0) as u64))
}

/// A duration as OpenAI's headers write it (Go's format): `6m0s`, `1.5s`,
/// `20ms`.
pub fn go_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let (hours, minutes, seconds_ms) = (millis / 3_600_000, millis / 60_000 % 60, millis % 60_000);
    let mut seconds = format!("{}.{:03}", seconds_ms / 1000, seconds_ms % 1000);
    while seconds.ends_with('0') {
        seconds.pop();
    }
    let seconds = seconds.trim_end_matches('.');
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, minutes) => format!("{minutes}m{seconds}s"),
        (hours, minutes) => format!("{hours}h{minutes}m{seconds}s"),
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// The rate limit headers of a decision.
pub(super) fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_openai_writes_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(20), "20ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(61_250), "1m1.25s"),
            (Duration::from_secs(3_725), "1h2m5s"),
        ];
        for (duration, text) in cases {
            assert_eq!(go_duration(duration), text, "{duration:?}");
        }
    }
}
