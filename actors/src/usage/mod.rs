//! Governance: what every metered request used (the usage ledger), what
//! admins changed (the audit log), and the long-window quotas that cap
//! keys, users and teams per day and per month. The rows live in the
//! identity store (the same SQLite file or PostgreSQL database, one schema:
//! `auth::store::schema`); the ledger writes them in batches off the
//! request path (`ledger.rs`); quotas reserve and settle at admission as
//! the per-minute limits do, in-process or exactly across replicas through
//! Redis (`quota.rs`).

mod calendar;
mod embedded;
mod ledger;
mod limits;
mod postgres;
mod quota;
mod quota_redis;
mod sql;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use self::calendar::{day_label, day_start, month_start, next_day_start, next_month_start, parse_day};
pub use self::ledger::{Ledger, LedgerOptions};
pub use self::quota::{
    Price, QuotaBook, QuotaCheck, QuotaCost, QuotaExceeded, QuotaLimits, QuotaOptions, QuotaReservation,
    QuotaScope, QuotaStanding, QuotaUnavailable, QuotaUnit, Quotas, Reserved, Window,
};
use crate::auth::StoreResult;

/// One metered request, as the ledger keeps it. Times are Unix
/// milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub at: i64,
    pub request_id: String,
    /// `None` for a caller signed in with a token not made from a key.
    pub key_id: Option<String>,
    /// The key's rotation lineage: key quotas span a rotation.
    pub key_lineage: Option<String>,
    pub user_id: String,
    pub team: Option<String>,
    pub model: String,
    /// The route's pattern (`/v1/chat/completions`).
    pub endpoint: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens a worker's cache already held (prefix reuse).
    pub cached_tokens: u64,
    /// Which cache tier answered (`memory`, `redis`, `disk`), or `miss`,
    /// `bypass`, `none`.
    pub cache: String,
    pub status: u16,
    pub latency_ms: u64,
    /// For streams: when the first token was sent.
    pub first_token_ms: Option<u64>,
    /// Millionths of the configured currency, at the prices in force.
    pub cost_micros: u64,
}

/// What usage rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Day,
    Model,
    Key,
    User,
    Team,
    Endpoint,
}

impl Dimension {
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Day => "day",
            Dimension::Model => "model",
            Dimension::Key => "key",
            Dimension::User => "user",
            Dimension::Team => "team",
            Dimension::Endpoint => "endpoint",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Day, Self::Model, Self::Key, Self::User, Self::Team, Self::Endpoint]
            .into_iter()
            .find(|dimension| dimension.name() == text)
    }
}

/// A usage report's bounds, filters and grouping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// Unix milliseconds, inclusive.
    pub start: i64,
    /// Unix milliseconds, exclusive.
    pub end: i64,
    pub group_by: Vec<Dimension>,
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
}

/// One group of a usage report: its values in the query's `group_by`
/// order (the day as Unix days), then the sums.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub group: Vec<Option<String>>,
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
}

/// The most groups a report returns; a query that would return more is
/// told to narrow.
pub const MAX_REPORT_ROWS: usize = 10_000;

/// One change an admin (or a key holder) made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Ordered as time: the time, zero-padded, then random digits, so a
    /// listing pages by id alone.
    pub id: String,
    pub at: i64,
    /// The user who acted; `None` for the server itself (a config reload).
    pub actor_id: Option<String>,
    /// `user.created`, `key.revoked`, `quota.set`, `cache.purged`, ...
    pub action: String,
    /// What was acted on: `user:<id>`, `key:<id>`, `model:<id>`, ...
    pub target: String,
    /// `{"before": ..., "after": ...}`, never a secret.
    pub change: serde_json::Value,
    pub address: Option<String>,
    pub request_id: Option<String>,
}

/// Filters of an audit listing, oldest first from `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// An entry's id: the listing continues after it.
    pub after: Option<String>,
    pub limit: u32,
}

/// Usage summed over a window, for one subject: what a quota has spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

/// Whose usage a sum covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Key(String),
    User(String),
    Team(String),
}

/// Where the ledger, the audit log and the quotas are stored: the identity
/// store's two backends.
pub trait GovernanceStore: Send + Sync + 'static {
    /// Appends usage rows in one transaction.
    /// Appends usage rows, and their sums to the hourly rollup, in one
    /// transaction (shared: the writer keeps them if it fails).
    fn insert_usage(&self, rows: std::sync::Arc<Vec<UsageRecord>>) -> BoxFuture<'_, StoreResult<()>>;
    fn usage_report(&self, query: UsageQuery) -> BoxFuture<'_, StoreResult<Vec<UsageRow>>>;
    /// What `subject` spent from `since` on.
    fn spent(&self, subject: Subject, since: i64) -> BoxFuture<'_, StoreResult<Spent>>;
    /// Deletes usage rows older than `before`; the count deleted.
    fn prune_usage(&self, before: i64) -> BoxFuture<'_, StoreResult<u64>>;

    fn append_audit(&self, entry: AuditEntry) -> BoxFuture<'_, StoreResult<()>>;
    fn audit(&self, query: AuditQuery) -> BoxFuture<'_, StoreResult<Vec<AuditEntry>>>;

    /// Every quota set on a key, user or team.
    fn quotas(&self) -> BoxFuture<'_, StoreResult<Vec<(QuotaScope, String, QuotaLimits)>>>;
    /// Sets (or with `None` removes) the quotas of one subject.
    fn set_quota(
        &self,
        scope: QuotaScope,
        subject: String,
        limits: Option<QuotaLimits>,
        at: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;
}

/// A new audit entry's time (Unix ms) and id: the time in microseconds,
/// strictly increasing within this process (two entries of one
/// millisecond keep their order), then random digits (no two replicas
/// make the same id).
pub fn audit_stamp() -> (i64, String) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX));
    let previous = LAST.fetch_max(now, Ordering::Relaxed);
    let micros = if previous >= now { LAST.fetch_add(1, Ordering::Relaxed) + 1 } else { now };
    (micros / 1000, format!("{micros:016}{:012x}", rand::random::<u64>() >> 16))
}
