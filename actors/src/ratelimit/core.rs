//! The limiter handlers call directly: builds a request's buckets from its
//! limits, asks the backend once, and turns the answer into what the HTTP
//! layer says (admitted or 429, and the x-ratelimit figures). It also owns
//! the Redis fail mode: while Redis is unreachable, fail open onto a local
//! share of each limit, or fail closed.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gcra::{Pace, Standing};
use super::local::LocalBuckets;
use super::redis::RedisBuckets;
use crate::redis::RedisError;

/// Per-minute budgets of one subject; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

impl Limits {
    /// Each set field of `self`, else `fallback`'s.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute.or(fallback.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(fallback.tokens_per_minute),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_minute.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
}

/// One bucket of a check.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Unique within the subject: `requests`, `tokens`,
    /// `route:/v1/embeddings:requests` (only a route's is made per check).
    pub name: Cow<'static, str>,
    pub unit: Unit,
    /// Units a minute, as the client is told.
    pub limit: u64,
    pub pace: Pace,
    pub cost: u64,
}

/// A backend's answer: all buckets paid, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub admitted: bool,
    pub retry_after_us: u64,
    /// One per bucket, in the order asked.
    pub standings: Vec<Standing>,
}

/// What one request asks for.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    /// Whose budget: `key:<id>`, `user:<id>`, `ip:<address>`.
    pub subject: &'a str,
    pub limits: Limits,
    /// A route with its own budget for this subject, on top of `limits`.
    pub route: Option<(&'a str, Limits)>,
    /// Tokens reserved (prompt plus max_tokens); 0 for requests without
    /// tokens.
    pub tokens: u64,
}

/// One budget as the client is told it (the most constrained bucket of its
/// unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Until the budget is whole again.
    pub reset: Duration,
}

/// A request that can never pass: it costs more than a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub unit: Unit,
    pub cost: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    Redis,
}

/// What a settlement needs: where the tokens were paid.
#[derive(Debug, Clone)]
pub struct Ticket {
    subject: String,
    buckets: Vec<Bucket>,
    backend: Backend,
    reserved: u64,
}

impl Ticket {
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub admitted: bool,
    pub retry_after: Duration,
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
    pub too_large: Option<TooLarge>,
    /// Set when tokens were reserved, for [`RateLimiter::settle`].
    pub ticket: Option<Ticket>,
}

impl Decision {
    fn unlimited() -> Self {
        Decision {
            admitted: true,
            retry_after: Duration::ZERO,
            requests: None,
            tokens: None,
            too_large: None,
            ticket: None,
        }
    }
}

/// What to do while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Limit locally at limit / replicas.
    FailOpen,
    /// Refuse with 503.
    FailClosed,
}

/// Redis is configured but unreachable, and the fail mode is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rate limiter's Redis is unreachable")]
pub struct Unavailable;

#[derive(Debug, Clone)]
pub struct RateLimiterOptions {
    /// Cluster-wide limits in this Redis; `None`: in-process.
    pub redis_url: Option<String>,
    /// The longest any one Redis call may take.
    pub redis_timeout: Duration,
    pub fail_mode: FailMode,
    /// How many replicas share the limits: while Redis is down each one
    /// allows this share of every limit.
    pub replicas: u64,
    /// How many seconds of its rate a bucket holds (the burst).
    pub burst_seconds: u64,
}

/// The labels of `blaze_ratelimit_checks_total`, in its counters' order.
const CHECK_BACKENDS: [&str; 3] = ["local", "redis", "fallback"];
const CHECK_RESULTS: [&str; 3] = ["admitted", "limited", "too_large"];

pub struct RateLimiter {
    local: LocalBuckets,
    redis: Option<RedisBuckets>,
    redis_up: AtomicBool,
    options: RateLimiterOptions,
    /// `blaze_ratelimit_checks_total` by backend and result, each made on
    /// its first count (when the metrics recorder is installed; one never
    /// counted is never shown): every request counts one, and a lookup by
    /// labels costs a hash of them each time.
    checks: [[OnceLock<metrics::Counter>; 3]; 3],
}

impl RateLimiter {
    pub fn new(options: RateLimiterOptions) -> Result<Arc<Self>, RedisError> {
        let redis = match &options.redis_url {
            Some(url) => Some(RedisBuckets::connect(url, options.redis_timeout)?),
            None => None,
        };
        metrics::gauge!("blaze_ratelimit_redis_up").set(if redis.is_some() { 1.0 } else { 0.0 });
        Ok(Arc::new(Self {
            local: LocalBuckets::default(),
            redis,
            redis_up: AtomicBool::new(true),
            options,
            checks: Default::default(),
        }))
    }

    pub fn backend_name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "local"
        }
    }

    /// Whether checks go to Redis now (false while it is down, and without
    /// Redis).
    pub fn redis_up(&self) -> bool {
        self.redis.is_some() && self.redis_up.load(Ordering::Acquire)
    }

    fn burst(&self, per_minute: u64, share: u64) -> (u64, Pace) {
        let limit = (per_minute / share).max(1);
        let burst = (limit.saturating_mul(self.options.burst_seconds) / 60).max(1);
        (limit, Pace::new(limit, burst))
    }

    /// The buckets of `admission`, each limit divided by `share`.
    fn buckets(&self, admission: &Admission<'_>, share: u64) -> Vec<Bucket> {
        let mut buckets = Vec::with_capacity(4);
        let mut add = |route: Option<&str>, limits: Limits| {
            let units = [
                (Unit::Requests, "requests", limits.requests_per_minute, 1),
                (Unit::Tokens, "tokens", limits.tokens_per_minute, admission.tokens),
            ];
            for (unit, unit_name, per_minute, cost) in units {
                if let Some(per_minute) = per_minute {
                    let (limit, pace) = self.burst(per_minute, share);
                    let name = match route {
                        None => Cow::Borrowed(unit_name),
                        Some(route) => Cow::Owned(format!("route:{route}:{unit_name}")),
                    };
                    buckets.push(Bucket { name, unit, limit, pace, cost });
                }
            }
        };
        add(None, admission.limits);
        if let Some((route, limits)) = admission.route {
            add(Some(route), limits);
        }
        buckets
    }

    /// Admits a request or says when to come back. One backend call.
    pub async fn check(&self, admission: &Admission<'_>) -> Result<Decision, Unavailable> {
        if admission.limits.is_unlimited() && admission.route.is_none_or(|(_, limits)| limits.is_unlimited())
        {
            return Ok(Decision::unlimited());
        }
        if let Some(redis) = self.redis.as_ref().filter(|_| self.redis_up.load(Ordering::Acquire)) {
            let (buckets, too_large) = self.plan(admission, 1);
            match redis.check(admission.subject, &buckets).await {
                Ok(verdict) => {
                    return Ok(self.decide(admission, buckets, verdict, Backend::Redis, too_large))
                }
                Err(error) => self.mark_down(&error),
            }
        }
        let share = if self.redis.is_some() {
            if self.options.fail_mode == FailMode::FailClosed {
                metrics::counter!("blaze_ratelimit_fail_closed_total").increment(1);
                return Err(Unavailable);
            }
            metrics::counter!("blaze_ratelimit_fallback_total").increment(1);
            self.options.replicas.max(1)
        } else {
            1
        };
        let (buckets, too_large) = self.plan(admission, share);
        let verdict = self.local.check(admission.subject, &buckets);
        Ok(self.decide(admission, buckets, verdict, Backend::Local, too_large))
    }

    /// The buckets to look at; when the request can never pass, it only
    /// looks (costs 0), so the client is told the true standing.
    fn plan(&self, admission: &Admission<'_>, share: u64) -> (Vec<Bucket>, Option<TooLarge>) {
        let mut buckets = self.buckets(admission, share);
        let too_large = buckets.iter().find(|bucket| !bucket.pace.fits(bucket.cost)).map(|bucket| TooLarge {
            unit: bucket.unit,
            cost: bucket.cost,
            limit: bucket.limit,
        });
        if too_large.is_some() {
            buckets.iter_mut().for_each(|bucket| bucket.cost = 0);
        }
        (buckets, too_large)
    }

    fn decide(
        &self,
        admission: &Admission<'_>,
        buckets: Vec<Bucket>,
        verdict: Verdict,
        backend: Backend,
        too_large: Option<TooLarge>,
    ) -> Decision {
        let admitted = verdict.admitted && too_large.is_none();
        let result = match (admitted, too_large) {
            (true, _) => 0,
            (false, None) => 1,
            (false, Some(_)) => 2,
        };
        let backend_index = match (backend, self.redis.is_some()) {
            (Backend::Local, false) => 0,
            (Backend::Redis, _) => 1,
            (Backend::Local, true) => 2,
        };
        self.checks[backend_index][result]
            .get_or_init(|| {
                let (backend, result) = (CHECK_BACKENDS[backend_index], CHECK_RESULTS[result]);
                metrics::counter!("blaze_ratelimit_checks_total", "backend" => backend, "result" => result)
            })
            .increment(1);
        let quota = |unit: Unit| {
            buckets
                .iter()
                .zip(&verdict.standings)
                .filter(|(bucket, _)| bucket.unit == unit)
                .map(|(bucket, standing)| Quota {
                    limit: bucket.limit,
                    remaining: standing.remaining,
                    reset: Duration::from_micros(standing.reset_us),
                })
                .min_by_key(|quota| (quota.remaining, std::cmp::Reverse(quota.reset)))
        };
        let requests = quota(Unit::Requests);
        let tokens = quota(Unit::Tokens);
        let ticket = (admitted && admission.tokens > 0).then(|| Ticket {
            subject: admission.subject.to_owned(),
            buckets: buckets.into_iter().filter(|bucket| bucket.unit == Unit::Tokens).collect(),
            backend,
            reserved: admission.tokens,
        });
        Decision {
            admitted,
            retry_after: Duration::from_micros(verdict.retry_after_us),
            requests,
            tokens,
            too_large,
            ticket: ticket.filter(|ticket| !ticket.buckets.is_empty()),
        }
    }

    /// Corrects a reservation with the tokens really used.
    pub async fn settle(&self, ticket: Ticket, used: u64) {
        let delta = used as i64 - ticket.reserved as i64;
        if delta == 0 {
            return;
        }
        match (ticket.backend, &self.redis) {
            (Backend::Redis, Some(redis)) => {
                if let Err(error) = redis.settle(&ticket.subject, &ticket.buckets, delta).await {
                    metrics::counter!("blaze_ratelimit_redis_errors_total").increment(1);
                    tracing::debug!(%error, "cannot settle a token reservation in Redis");
                }
            }
            _ => self.local.settle(&ticket.subject, &ticket.buckets, delta),
        }
    }

    fn mark_down(&self, error: &RedisError) {
        metrics::counter!("blaze_ratelimit_redis_errors_total").increment(1);
        if self.redis_up.swap(false, Ordering::AcqRel) {
            metrics::gauge!("blaze_ratelimit_redis_up").set(0.0);
            tracing::warn!(%error, fail_mode = ?self.options.fail_mode, "rate limiter: Redis is unreachable");
        }
    }

    /// Checks on Redis while it is down; back to it when it answers. The
    /// local fallback buckets are dropped then: Redis holds the truth.
    pub async fn probe(&self) {
        let Some(redis) = &self.redis else { return };
        if self.redis_up.load(Ordering::Acquire) || !redis.ping().await {
            return;
        }
        self.local.clear();
        self.redis_up.store(true, Ordering::Release);
        metrics::gauge!("blaze_ratelimit_redis_up").set(1.0);
        tracing::info!("rate limiter: Redis answers again; limits are cluster-wide again");
    }

    /// Drops local buckets that are full again.
    pub fn sweep(&self) -> usize {
        self.local.sweep()
    }

    /// Forgets every bucket of an admission's subject, on Redis and
    /// locally.
    pub async fn forget(&self, admission: &Admission<'_>) -> Result<(), RedisError> {
        self.local.clear();
        match &self.redis {
            Some(redis) => redis.forget(admission.subject, &self.buckets(admission, 1)).await,
            None => Ok(()),
        }
    }
}
