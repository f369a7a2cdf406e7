//! Brute-force defence: failures counted per client address, account and
//! key id, and a cool-down once one has failed too often. Only failures
//! are ever refused for it, so a flood from one address cannot lock out
//! a caller who presents a valid credential (a cooling address only has
//! the store reads of its uncached keys rationed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Authenticator, Failure};

/// Failures allowed from one client address, account or key id before
/// further failures from it are cooled down.
#[derive(Debug, Clone)]
pub struct BruteForceConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

/// Whose failures a cool-down counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailureSubject {
    Address(IpAddr),
    /// An account, by the peppered digest of its normalized email, for
    /// password sign-ins.
    Account(String),
    /// An API key id that was presented with a wrong secret.
    Key(String),
}

impl FailureSubject {
    /// How the subject is named in the log.
    fn logged(&self) -> String {
        match self {
            FailureSubject::Address(address) => format!("address {address}"),
            // Accounts are kept by digest (the email is personal data).
            FailureSubject::Account(digest) => format!("account {}", digest.get(..12).unwrap_or_default()),
            FailureSubject::Key(id) => format!("key {id}"),
        }
    }
}

/// Store reads a cooling address may cause per second (cache misses for
/// key ids): enough for the real clients behind it, too few to load the
/// store with guessed ids.
const COOLING_STORE_READS_PER_SECOND: u32 = 10;

/// Failures of one subject in the current window.
pub(super) struct FailureWindow {
    started: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    /// Store reads while cooling: the second they count in, and how many.
    reads: (Instant, u32),
}

impl Authenticator {
    /// How long the longest cool-down among `subjects` still lasts, if
    /// any. Only failures are ever refused for it: a credential that
    /// validates is accepted whatever others did.
    pub fn cooldown_left(&self, subjects: &[FailureSubject]) -> Option<Duration> {
        let now = Instant::now();
        subjects
            .iter()
            .filter_map(|subject| {
                let window = self.failures.get(subject)?;
                let until = window.lock().blocked_until?;
                until.checked_duration_since(now).filter(|left| !left.is_zero())
            })
            .max()
    }

    /// Whether a credential from `client` may cost a store read now: any
    /// number unless it is cooling down, then at most
    /// `COOLING_STORE_READS_PER_SECOND`.
    pub(super) fn may_read_store(&self, client: IpAddr) -> bool {
        let Some(window) = self.failures.get(&FailureSubject::Address(client)) else { return true };
        let mut window = window.lock();
        let now = Instant::now();
        if window.blocked_until.is_none_or(|until| until <= now) {
            return true;
        }
        if now.duration_since(window.reads.0) >= Duration::from_secs(1) {
            window.reads = (now, 0);
        }
        window.reads.1 += 1;
        window.reads.1 <= COOLING_STORE_READS_PER_SECOND
    }

    /// Counts a failure: metrics always, and against each subject.
    pub fn record_failure(&self, subjects: &[FailureSubject], failure: Failure) {
        metrics::counter!("blaze_auth_failures_total", "reason" => failure.reason()).increment(1);
        if !failure.is_guess() && !matches!(failure, Failure::CoolingDown(_)) {
            return;
        }
        for subject in subjects {
            self.count_failure(subject);
        }
    }

    fn count_failure(&self, subject: &FailureSubject) {
        let brute = &self.config.brute_force;
        let window = self.failures.get_with_by_ref(subject, || {
            let now = Instant::now();
            Arc::new(Mutex::new(FailureWindow {
                started: now,
                failures: 0,
                blocked_until: None,
                reads: (now, 0),
            }))
        });
        let mut window = window.lock();
        let now = Instant::now();
        if now.duration_since(window.started) > brute.window {
            window.started = now;
            window.failures = 0;
        }
        window.failures = window.failures.saturating_add(1);
        if window.failures >= brute.max_failures && window.blocked_until.is_none_or(|until| until <= now) {
            window.blocked_until = Some(now + brute.cooldown);
            window.started = now;
            window.failures = 0;
            metrics::counter!("blaze_auth_cooldowns_total").increment(1);
            tracing::warn!(
                subject = subject.logged(),
                cooldown_s = brute.cooldown.as_secs(),
                "too many authentication failures; failures from it cooled down"
            );
        }
    }
}
