//! Admission: the budgets of one request, checked once against the
//! [`RateLimiter`], and the tokens it reserved, settled with what it really
//! used. The checkpoint admits the routes that count requests before their
//! handler; the routes that count tokens are admitted by the pipeline once
//! the prompt is tokenized (the count is known only then), through the
//! [`Gate`] the checkpoint left for them.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use blaze_actors::auth::Principal;
use blaze_actors::ratelimit::{Admission, Decision, Limits, Quota, RateLimiter, Ticket, Unavailable, Unit};
use blaze_actors::usage::{QuotaCost, QuotaReservation, QuotaStanding, Reserved};

use super::meter::Meter;
use super::quota::{quota_refusal, QuotaGate};
use crate::error::ApiError;

/// The limiter and the budgets that apply when a key or user sets none.
pub struct Limiting {
    pub limiter: Arc<RateLimiter>,
    pub defaults: Limits,
    pub anonymous: Limits,
    pub routes: Vec<(String, Limits)>,
}

/// One request's budget holder and what it was told.
pub struct Pending {
    limiting: Arc<Limiting>,
    subject: String,
    limits: Limits,
    route: Option<(String, Limits)>,
    decision: RefCell<Option<Decision>>,
}

impl Pending {
    /// The budgets of `principal` (anonymous when `None`) on the route
    /// with `pattern`; `None` when nothing limits them.
    pub fn new(
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
    async fn check(&self, tokens: u64) -> Result<(Decision, Option<Ticket>), Unavailable> {
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

/// What a request is admitted through: its rate limits, and on the
/// routes that call a model, its quotas. Without a budget to spend
/// (unlimited) it admits everything.
#[derive(Clone, Default)]
pub struct Gate {
    pending: Option<Rc<Pending>>,
    quota: Option<Rc<QuotaGate>>,
    /// Admitted already (a gateway route's request, for its local
    /// target): the next admission takes it instead of charging again.
    admitted: Option<Rc<RefCell<Option<Admitted>>>>,
}

/// What a model request reserves: its model (for its price), its prompt
/// and the most its completions may take.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub model: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What an admitted request holds until it settles.
#[derive(Default)]
pub struct Admitted {
    rate: Option<Reservation>,
    quota: Option<QuotaReservation>,
}

impl Gate {
    pub fn new(pending: Option<Pending>) -> Self {
        Self { pending: pending.map(Rc::new), quota: None, admitted: None }
    }

    /// The same gate, holding what its request was admitted with.
    pub fn preadmitted(&self, admitted: Admitted) -> Self {
        Self { admitted: Some(Rc::new(RefCell::new(Some(admitted)))), ..self.clone() }
    }

    /// What [`Self::preadmitted`] was given, if no admission took it.
    pub fn unused(&self) -> Option<Admitted> {
        self.admitted.as_ref()?.borrow_mut().take()
    }

    /// The same gate, charging the quotas of `principal` too.
    pub fn with_quotas(self, quota: Option<QuotaGate>) -> Self {
        Self { quota: quota.map(Rc::new), ..self }
    }

    /// The gate of one request that did not come through the checkpoint
    /// (a WebSocket frame): the caller's budgets, as on the route with
    /// `pattern` over HTTP.
    pub fn for_call(limiting: &Arc<Limiting>, principal: &Principal, subject: &str, pattern: &str) -> Self {
        Self::new(Pending::new(limiting, Some(principal), subject.to_owned(), pattern))
    }

    /// The decision the request was told, for the response headers.
    pub fn decision(&self) -> Option<Decision> {
        self.pending.as_ref().and_then(|pending| pending.decision.borrow().clone())
    }

    /// What is left of the caller's quotas after this request, for the
    /// response headers.
    pub fn quota_standing(&self) -> Option<QuotaStanding> {
        self.quota.as_ref().and_then(|quota| quota.standing.borrow().clone())
    }

    /// A request that ended before it was admitted (a bad body, an
    /// unknown model) still spends one request.
    pub async fn spend_unadmitted(&self) {
        if let Some(pending) = &self.pending {
            if pending.decision.borrow().is_none() {
                let _ = pending.check(0).await;
            }
        }
    }

    /// Admits the request, reserving `tokens` (prompt plus the most the
    /// completion may take), or refuses it (429, or 503 when closed).
    pub async fn admit(&self, tokens: u64) -> Result<Option<Reservation>, ApiError> {
        let Some(pending) = &self.pending else { return Ok(None) };
        match pending.check(tokens).await {
            Ok((decision, ticket)) if decision.admitted => {
                Ok(ticket.map(|ticket| Reservation { limiter: pending.limiting.limiter.clone(), ticket }))
            }
            Ok((decision, _)) => Err(refusal(&decision)),
            Err(Unavailable) => Err(ApiError::rate_limiter_unavailable()),
        }
    }

    /// Admits a model request: its rate limits, then its quotas (one
    /// request, the tokens, their price), all reserved or none.
    #[tracing::instrument(target = "blaze::trace", name = "admission", level = "info", skip_all)]
    pub async fn admit_charge(&self, charge: Charge<'_>) -> Result<Admitted, ApiError> {
        if let Some(admitted) = &self.admitted {
            // Admitted once for the route: a target that took the
            // admission and then refused (its queue filled meanwhile) does
            // not make the next one pay again.
            return Ok(admitted.borrow_mut().take().unwrap_or_default());
        }
        let tokens = charge.prompt_tokens + charge.completion_tokens;
        let rate = self.admit(tokens).await?;
        let Some(quota) = &self.quota else { return Ok(Admitted { rate, quota: None }) };
        let cost = QuotaCost {
            tokens,
            cost_micros: quota.quotas.cost_micros(
                charge.model,
                charge.prompt_tokens,
                charge.completion_tokens,
            ),
        };
        let refused = |rate: Option<Reservation>| {
            // Refused by a quota: the request spent its request, no tokens.
            if let Some(rate) = rate {
                rate.settle(0);
            }
        };
        match quota.quotas.reserve(&quota.who, cost).await {
            Ok(Reserved::Admitted(reservation, standing)) => {
                *quota.standing.borrow_mut() = Some(standing);
                Ok(Admitted { rate, quota: Some(reservation) })
            }
            Ok(Reserved::Exceeded(exceeded)) => {
                refused(rate);
                Err(quota_refusal(&exceeded, quota.quotas.currency()))
            }
            Err(_) => {
                refused(rate);
                Err(ApiError::quota_unavailable())
            }
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
        #[expect(
            clippy::disallowed_methods,
            reason = "one limiter round trip off the request path; lost at shutdown, the reservation expires with its window"
        )]
        actix_web::rt::spawn(async move { limiter.settle(ticket, used).await });
    }
}

/// A request's reservations, settled when dropped with the tokens counted
/// so far (the prompt, then each generated piece, then the exact usage),
/// and its usage told to the ledger's meter. Dropped with the answer or
/// its stream, whichever way it ends.
pub struct Settlement {
    admitted: Admitted,
    prompt: u64,
    pub used: u64,
    /// Prompt tokens a worker's cache held.
    pub cached: u64,
    model: String,
    meter: Meter,
}

impl Settlement {
    pub fn new(admitted: Admitted, prompt_tokens: usize, model: &str, meter: &Meter) -> Self {
        meter.model(model);
        let prompt = prompt_tokens as u64;
        Self { admitted, prompt, used: prompt, cached: 0, model: model.to_owned(), meter: meter.clone() }
    }

    /// The usage is known at last (an upstream's answer): the prompt
    /// estimated at admission and the completion, as they really were.
    pub fn correct(&mut self, prompt_tokens: u64, completion_tokens: u64) {
        self.prompt = prompt_tokens;
        self.used = prompt_tokens + completion_tokens;
    }

    /// The admission it holds, for another holder; it settles nothing.
    pub fn into_admitted(mut self) -> Admitted {
        std::mem::take(&mut self.admitted)
    }

    /// A chunk of a stream went out.
    pub fn sent(&self) {
        self.meter.first_token();
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let completion = self.used.saturating_sub(self.prompt);
        self.meter.tokens(self.prompt, completion, self.cached);
        if let Some(reservation) = self.admitted.rate.take() {
            if reservation.reserved() != self.used {
                reservation.settle(self.used);
            }
        }
        if let Some(reservation) = self.admitted.quota.take() {
            let cost_micros = reservation.cost_micros(&self.model, self.prompt, completion);
            reservation.settle(QuotaCost { tokens: self.used, cost_micros });
        }
    }
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Requests => "requests",
        Unit::Tokens => "tokens",
    }
}

/// The 429 for a refused decision, worded as OpenAI words it.
pub fn refusal(decision: &Decision) -> ApiError {
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

/// A duration as OpenAI writes it (Go's format): `6m0s`, `1.5s`, `20ms`.
pub fn go_duration(duration: Duration) -> String {
    let mut text = String::with_capacity(16);
    write_go_duration(&mut text, duration);
    text
}

/// [`go_duration`], written into `out`.
pub fn write_go_duration(out: &mut impl std::fmt::Write, duration: Duration) {
    let millis = duration.as_millis();
    if millis < 1000 {
        let _ = if millis == 0 { out.write_str("0s") } else { write!(out, "{millis}ms") };
        return;
    }
    let (hours, minutes, seconds_ms) = (millis / 3_600_000, millis / 60_000 % 60, millis % 60_000);
    let _ = match (hours, minutes) {
        (0, 0) => Ok(()),
        (0, minutes) => write!(out, "{minutes}m"),
        (hours, minutes) => write!(out, "{hours}h{minutes}m"),
    };
    // Seconds with their fraction's trailing zeros (and a bare point) cut.
    let (seconds, mut fraction) = (seconds_ms / 1000, seconds_ms % 1000);
    let _ = write!(out, "{seconds}");
    if fraction > 0 {
        let mut digits = 3;
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{fraction:0digits$}");
    }
    let _ = out.write_str("s");
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
