//! The `usage` and `quotas` sections: the usage ledger's batching and
//! retention, and the long-window quotas' defaults, prices and backend.

use std::collections::BTreeMap;
use std::time::Duration;

use blaze_actors::usage::{LedgerOptions, Price, QuotaLimits};
use serde::{Deserialize, Serialize};

use super::{RateLimitBackend, Settings};

/// The usage ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSettings {
    /// One row per metered request in the identity store.
    pub enabled: bool,
    /// Rows per write, at most.
    pub batch_size: usize,
    /// The longest a row waits for its write: what a crash may lose.
    pub flush_interval_ms: u64,
    /// Rows waiting to be written, at most; more are dropped and counted.
    pub buffer: usize,
    /// Rows older than this many days are deleted; 0 keeps them.
    pub retention_days: u32,
}

impl UsageSettings {
    pub fn ledger_options(&self) -> LedgerOptions {
        LedgerOptions {
            batch_size: self.batch_size,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            buffer: self.buffer,
            retention_days: self.retention_days,
            prune_interval: Duration::from_secs(3600),
        }
    }
}

/// Quotas per UTC day and month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// What a key (its rotation chain), a user or a team gets when an
    /// admin set none of its own.
    pub defaults: QuotaDefaults,
    /// Price per 1,000 tokens by model id, to budget in `currency`.
    pub prices: BTreeMap<String, Price>,
    /// The currency's name in reports (it is not converted).
    pub currency: String,
    /// auto: Redis (storage.redis_url) when set, exact across replicas;
    /// else in-process. local or redis force one.
    pub backend: RateLimitBackend,
    pub redis_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaDefaults {
    pub key: QuotaLimits,
    pub user: QuotaLimits,
    pub team: QuotaLimits,
}

impl Settings {
    pub(super) fn governance_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let usage = &self.usage;
        if !(1..=10_000).contains(&usage.batch_size) {
            problems.push(("usage.batch_size", "must be 1 to 10000".to_owned()));
        }
        if !(10..=60_000).contains(&usage.flush_interval_ms) {
            problems.push(("usage.flush_interval_ms", "must be 10 to 60000".to_owned()));
        }
        if usage.buffer < usage.batch_size || usage.buffer > 10_000_000 {
            problems
                .push(("usage.buffer", "must be at least usage.batch_size and at most 10000000".to_owned()));
        }
        if usage.retention_days > 36_500 {
            problems.push(("usage.retention_days", "must be at most 36500".to_owned()));
        }
        let quotas = &self.quotas;
        for (model, price) in &quotas.prices {
            let valid = |value: f64| value.is_finite() && (0.0..=1_000_000.0).contains(&value);
            if !valid(price.prompt_per_1k) || !valid(price.completion_per_1k) {
                problems.push(("quotas.prices", format!("{model}: prices must be 0 to 1000000")));
            }
        }
        if !(1..=10_000).contains(&quotas.redis_timeout_ms) {
            problems.push(("quotas.redis_timeout_ms", "must be 1 to 10000".to_owned()));
        }
        let has_quotas = [quotas.defaults.key, quotas.defaults.user, quotas.defaults.team]
            .iter()
            .any(|limits| !limits.is_unlimited());
        if has_quotas && !usage.enabled {
            problems.push((
                "usage.enabled",
                "quotas need the usage ledger (they are rebuilt from it after a restart)".to_owned(),
            ));
        }
        problems
    }

    /// Where quota counters live: the Redis URL, or `None` in-process.
    pub fn quota_redis_url(&self) -> Option<String> {
        match self.quotas.backend {
            RateLimitBackend::Local => None,
            RateLimitBackend::Auto | RateLimitBackend::Redis => {
                Some(self.storage.redis_url.clone()).filter(|url| !url.is_empty())
            }
        }
    }
}
