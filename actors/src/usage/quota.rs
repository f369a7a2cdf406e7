//! Quotas over long windows: requests, tokens and cost per UTC day and
//! month, set on a key (its rotation lineage), a user or a team. A
//! metered request reserves its most (one request, its prompt and
//! max_tokens, their price) on every quota that covers it, all or none,
//! and settles with what it used. In-process the counters live in this
//! replica; with Redis they live there, checked and spent by one script,
//! so replicas share them exactly. A counter this process (or Redis) has
//! not seen in its window starts from what the ledger holds for it, so a
//! restart forgets nothing the ledger wrote.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use super::limits::{Price, QuotaLimits, QuotaScope, QuotaUnit, Window};
use super::limits::{UNITS, WINDOWS};
use super::quota_redis::QuotaRedis;
use super::{GovernanceStore, Spent, Subject};
use crate::auth::now_ms;
use crate::redis::RedisError;

pub struct QuotaOptions {
    /// What a key, user or team without quotas of its own gets.
    pub default_key: QuotaLimits,
    pub default_user: QuotaLimits,
    pub default_team: QuotaLimits,
    pub prices: HashMap<String, Price>,
    /// The currency's name, for messages.
    pub currency: String,
    /// Counters in Redis (exact across replicas); in-process when `None`.
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
}

/// The quotas set in the store, by scope and subject, reloaded on change.
#[derive(Default)]
pub struct QuotaBook {
    set: RwLock<HashMap<(QuotaScope, String), QuotaLimits>>,
}

impl QuotaBook {
    pub fn replace(&self, rows: Vec<(QuotaScope, String, QuotaLimits)>) {
        let set = rows.into_iter().map(|(scope, subject, limits)| ((scope, subject), limits)).collect();
        *self.set.write() = set;
    }

    fn get(&self, scope: QuotaScope, subject: &str) -> Option<QuotaLimits> {
        self.set.read().get(&(scope, subject.to_owned())).copied()
    }
}

/// Who a metered request is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaCheck {
    /// The key's rotation lineage.
    pub key: Option<String>,
    pub user: String,
    pub team: Option<String>,
}

/// What a request reserves besides its one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCost {
    pub tokens: u64,
    pub cost_micros: u64,
}

/// One counter a request spends: a quota of one subject in the current
/// period of its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Counter {
    pub name: String,
    pub scope: QuotaScope,
    pub subject: String,
    pub window: Window,
    pub unit: QuotaUnit,
    pub limit: u64,
    pub period_start: i64,
    pub resets_at: i64,
}

impl Counter {
    fn amount(&self, cost: QuotaCost) -> u64 {
        match self.unit {
            QuotaUnit::Requests => 1,
            QuotaUnit::Tokens => cost.tokens,
            QuotaUnit::Cost => cost.cost_micros,
        }
    }

    fn ledger_subject(&self) -> Subject {
        match self.scope {
            QuotaScope::Key => Subject::Key(self.subject.clone()),
            QuotaScope::User => Subject::User(self.subject.clone()),
            QuotaScope::Team => Subject::Team(self.subject.clone()),
        }
    }
}

/// The quota a request would overrun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub scope: QuotaScope,
    pub subject: String,
    pub window: Window,
    pub unit: QuotaUnit,
    pub limit: u64,
    pub used: u64,
    /// Unix milliseconds.
    pub resets_at: i64,
}

/// What is left of the tightest quota of each window and unit, for the
/// response headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaStanding {
    /// (window, unit, limit, remaining, resets_at)
    pub quotas: Vec<(Window, QuotaUnit, u64, u64, i64)>,
}

/// The answer of a reservation.
pub enum Reserved {
    Admitted(QuotaReservation, QuotaStanding),
    Exceeded(QuotaExceeded),
}

/// Counters spent by one request, to settle with what it used.
pub struct QuotaReservation {
    quotas: Arc<Quotas>,
    counters: Vec<Counter>,
    reserved: QuotaCost,
}

pub struct Quotas {
    pub book: QuotaBook,
    options: QuotaOptions,
    store: Arc<dyn GovernanceStore>,
    /// In-process counters: name to (used, end of its period).
    local: Mutex<HashMap<String, (u64, i64)>>,
    /// Counters this process has seeded from the ledger.
    seeded: Mutex<HashSet<String>>,
    redis: Option<QuotaRedis>,
}

impl Quotas {
    pub fn new(options: QuotaOptions, store: Arc<dyn GovernanceStore>) -> Result<Arc<Self>, RedisError> {
        let redis = match &options.redis_url {
            Some(url) => Some(QuotaRedis::connect(url, options.redis_timeout)?),
            None => None,
        };
        Ok(Arc::new(Self {
            book: QuotaBook::default(),
            options,
            store,
            local: Mutex::new(HashMap::new()),
            seeded: Mutex::new(HashSet::new()),
            redis,
        }))
    }

    pub fn currency(&self) -> &str {
        &self.options.currency
    }

    pub fn backend_name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "local"
        }
    }

    /// Reloads the quotas set in the store, and forgets counters of past
    /// periods.
    pub async fn reload(&self) -> Result<(), crate::auth::StoreError> {
        let rows = self.store.quotas().await?;
        self.book.replace(rows);
        let now = now_ms();
        let mut local = self.local.lock();
        local.retain(|_, (_, ends)| *ends > now);
        // Every seeded counter is in `local` until its period ends.
        self.seeded.lock().retain(|name| local.contains_key(name));
        Ok(())
    }

    /// Reloads the quotas set every `every`, so one set on another replica
    /// applies here within that time.
    pub fn keep_fresh(self: Arc<Self>, every: Duration) {
        #[expect(
            clippy::disallowed_methods,
            reason = "a reload loop for the server's life; it holds nothing that needs a stop"
        )]
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = self.reload().await {
                    tracing::warn!(%error, "cannot reload the quotas set");
                }
            }
        });
    }

    /// The quotas an admin set on a subject, if any.
    pub fn book_limits(&self, scope: QuotaScope, subject: &str) -> Option<QuotaLimits> {
        self.book.get(scope, subject)
    }

    /// The quotas of a subject: its own, else the configured default.
    pub fn limits_of(&self, scope: QuotaScope, subject: &str) -> QuotaLimits {
        self.book.get(scope, subject).unwrap_or(match scope {
            QuotaScope::Key => self.options.default_key,
            QuotaScope::User => self.options.default_user,
            QuotaScope::Team => self.options.default_team,
        })
    }

    /// Whether any quota could apply at all (a cheap test on the hot path).
    pub fn any(&self) -> bool {
        !self.book.set.read().is_empty()
            || !self.options.default_key.is_unlimited()
            || !self.options.default_user.is_unlimited()
            || !self.options.default_team.is_unlimited()
    }

    /// A request's price on `model`; 0 for a model without one.
    pub fn cost_micros(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> u64 {
        let Some(price) = self.options.prices.get(model) else { return 0 };
        let micros = prompt_tokens as f64 * price.prompt_per_1k * 1000.0
            + completion_tokens as f64 * price.completion_per_1k * 1000.0;
        micros.round().max(0.0) as u64
    }

    fn counters(&self, who: &QuotaCheck, at: i64) -> Vec<Counter> {
        let subjects = [
            who.key.as_deref().map(|key| (QuotaScope::Key, key)),
            Some((QuotaScope::User, who.user.as_str())),
            who.team.as_deref().map(|team| (QuotaScope::Team, team)),
        ];
        let mut counters = Vec::new();
        for (scope, subject) in subjects.into_iter().flatten() {
            let limits = self.limits_of(scope, subject);
            for window in WINDOWS {
                let (period_start, resets_at) = window.bounds(at);
                for unit in UNITS {
                    let Some(limit) = limits.get(window, unit) else { continue };
                    counters.push(Counter {
                        name: format!(
                            "{}:{subject}:{}:{period_start}:{}",
                            scope.as_str(),
                            window.as_str(),
                            unit.as_str()
                        ),
                        scope,
                        subject: subject.to_owned(),
                        window,
                        unit,
                        limit,
                        period_start,
                        resets_at,
                    });
                }
            }
        }
        counters
    }

    /// What the ledger holds for each counter's subject and period.
    pub(super) async fn ledger_seeds(
        &self,
        counters: &[Counter],
    ) -> Result<Vec<u64>, crate::auth::StoreError> {
        let mut sums: HashMap<(Subject, i64), Spent> = HashMap::new();
        let mut seeds = Vec::with_capacity(counters.len());
        for counter in counters {
            let subject = counter.ledger_subject();
            let spent = match sums.get(&(subject.clone(), counter.period_start)) {
                Some(spent) => *spent,
                None => {
                    let spent = self.store.spent(subject.clone(), counter.period_start).await?;
                    sums.insert((subject, counter.period_start), spent);
                    spent
                }
            };
            seeds.push(counter.unit.of(spent));
        }
        Ok(seeds)
    }

    /// Reserves one request and `cost` on every quota that covers `who`,
    /// or none of them.
    pub async fn reserve(
        self: &Arc<Self>,
        who: &QuotaCheck,
        cost: QuotaCost,
    ) -> Result<Reserved, QuotaUnavailable> {
        let counters = self.counters(who, now_ms());
        if counters.is_empty() {
            return Ok(Reserved::Admitted(self.reservation(Vec::new(), cost), QuotaStanding::default()));
        }
        let amounts: Vec<u64> = counters.iter().map(|counter| counter.amount(cost)).collect();
        let used = match &self.redis {
            Some(redis) => redis.reserve(self, &counters, &amounts).await.map_err(|error| {
                tracing::warn!(%error, "quota counters unreachable");
                QuotaUnavailable
            })?,
            None => self.reserve_locally(&counters, &amounts).await?,
        };
        match used {
            Err((index, used)) => {
                let counter = &counters[index];
                Ok(Reserved::Exceeded(QuotaExceeded {
                    scope: counter.scope,
                    subject: counter.subject.clone(),
                    window: counter.window,
                    unit: counter.unit,
                    limit: counter.limit,
                    used,
                    resets_at: counter.resets_at,
                }))
            }
            Ok(used_after) => {
                let standing = standing(&counters, &used_after);
                Ok(Reserved::Admitted(self.reservation(counters, cost), standing))
            }
        }
    }

    fn reservation(self: &Arc<Self>, counters: Vec<Counter>, reserved: QuotaCost) -> QuotaReservation {
        QuotaReservation { quotas: self.clone(), counters, reserved }
    }

    /// `Ok(used after)` for each counter, or `Err((index, used))` of the
    /// first it would overrun.
    async fn reserve_locally(
        &self,
        counters: &[Counter],
        amounts: &[u64],
    ) -> Result<Result<Vec<u64>, (usize, u64)>, QuotaUnavailable> {
        let unseeded: Vec<Counter> = {
            let seeded = self.seeded.lock();
            counters.iter().filter(|counter| !seeded.contains(&counter.name)).cloned().collect()
        };
        if !unseeded.is_empty() {
            let seeds = self.ledger_seeds(&unseeded).await.map_err(|error| {
                tracing::warn!(%error, "the ledger could not seed quota counters");
                QuotaUnavailable
            })?;
            let mut seeded = self.seeded.lock();
            let mut local = self.local.lock();
            for (counter, seed) in unseeded.iter().zip(seeds) {
                if seeded.insert(counter.name.clone()) {
                    let entry = local.entry(counter.name.clone()).or_insert((0, counter.resets_at));
                    entry.0 += seed;
                }
            }
        }
        let mut local = self.local.lock();
        for (index, (counter, amount)) in counters.iter().zip(amounts).enumerate() {
            let used = local.get(&counter.name).map_or(0, |(used, _)| *used);
            if used.saturating_add(*amount) > counter.limit {
                return Ok(Err((index, used)));
            }
        }
        let mut after = Vec::with_capacity(counters.len());
        for (counter, amount) in counters.iter().zip(amounts) {
            let entry = local.entry(counter.name.clone()).or_insert((0, counter.resets_at));
            entry.0 = entry.0.saturating_add(*amount);
            after.push(entry.0);
        }
        Ok(Ok(after))
    }

    async fn settle(&self, counters: Vec<Counter>, deltas: Vec<i64>) {
        match &self.redis {
            Some(redis) => {
                if let Err(error) = redis.settle(&counters, &deltas).await {
                    tracing::warn!(%error, "quota settlement lost: Redis unreachable");
                }
            }
            None => {
                let mut local = self.local.lock();
                for (counter, delta) in counters.iter().zip(deltas) {
                    if let Some((used, _)) = local.get_mut(&counter.name) {
                        *used = used.saturating_add_signed(delta);
                    }
                }
            }
        }
    }
}

/// The counters could not be read (Redis down, the ledger unreadable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUnavailable;

fn standing(counters: &[Counter], used_after: &[u64]) -> QuotaStanding {
    let mut quotas: Vec<(Window, QuotaUnit, u64, u64, i64)> = Vec::new();
    for (counter, used) in counters.iter().zip(used_after) {
        let remaining = counter.limit.saturating_sub(*used);
        match quotas.iter_mut().find(|(window, unit, ..)| *window == counter.window && *unit == counter.unit)
        {
            Some(tightest) if remaining < tightest.3 => {
                *tightest = (counter.window, counter.unit, counter.limit, remaining, counter.resets_at);
            }
            Some(_) => {}
            None => quotas.push((counter.window, counter.unit, counter.limit, remaining, counter.resets_at)),
        }
    }
    QuotaStanding { quotas }
}

impl QuotaReservation {
    /// Corrects the reservation with what the request used, off the
    /// request path.
    pub fn settle(self, used: QuotaCost) {
        let QuotaReservation { quotas, counters, reserved } = self;
        if counters.is_empty() || used == reserved {
            return;
        }
        let deltas: Vec<i64> = counters
            .iter()
            .map(|counter| match counter.unit {
                QuotaUnit::Requests => 0,
                QuotaUnit::Tokens => used.tokens as i64 - reserved.tokens as i64,
                QuotaUnit::Cost => used.cost_micros as i64 - reserved.cost_micros as i64,
            })
            .collect();
        #[expect(
            clippy::disallowed_methods,
            reason = "one settlement off the request path; lost at shutdown, the counter expires with its period"
        )]
        tokio::spawn(async move { quotas.settle(counters, deltas).await });
    }

    pub fn reserved(&self) -> QuotaCost {
        self.reserved
    }

    /// A request's price at the prices in force.
    pub fn cost_micros(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> u64 {
        self.quotas.cost_micros(model, prompt_tokens, completion_tokens)
    }
}
