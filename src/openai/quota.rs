//! Quotas at admission: the [`QuotaGate`] a model request is charged
//! through (its key's lineage, its user, its team), and the 429 that names
//! the quota a request would overrun and when it resets.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use blaze_actors::auth::{now_ms, Principal};
use blaze_actors::usage::{day_label, QuotaCheck, QuotaExceeded, QuotaStanding, QuotaUnit, Quotas};

use super::admit::go_duration;
use crate::error::ApiError;

/// Whose quotas a request spends, and what it was told.
pub struct QuotaGate {
    pub(super) quotas: Arc<Quotas>,
    pub(super) who: QuotaCheck,
    pub(super) standing: RefCell<Option<QuotaStanding>>,
}

impl QuotaGate {
    /// `None` when no quota is set anywhere (nothing to check).
    pub fn of(quotas: &Arc<Quotas>, principal: &Principal) -> Option<Self> {
        quotas.any().then(|| Self {
            quotas: quotas.clone(),
            who: QuotaCheck {
                key: principal.lineage.clone(),
                user: principal.user_id.clone(),
                team: principal.team.clone(),
            },
            standing: RefCell::new(None),
        })
    }
}

fn amount(unit: QuotaUnit, value: u64, currency: &str) -> String {
    match unit {
        QuotaUnit::Cost => format!("{:.6} {currency} of cost", value as f64 / 1_000_000.0),
        QuotaUnit::Requests | QuotaUnit::Tokens => format!("{value} {}", unit.as_str()),
    }
}

/// The 429 for a quota a request would overrun.
pub fn quota_refusal(exceeded: &QuotaExceeded, currency: &str) -> ApiError {
    let wait = Duration::from_millis((exceeded.resets_at - now_ms()).max(0) as u64);
    let message = format!(
        "Quota exceeded: the {} quota of {} per {} is spent ({} used); it resets at {}T00:00:00Z, in {}.",
        exceeded.scope.as_str(),
        amount(exceeded.unit, exceeded.limit, currency),
        exceeded.window.as_str(),
        amount(exceeded.unit, exceeded.used, currency),
        day_label(exceeded.resets_at.div_euclid(86_400_000)),
        go_duration(Duration::from_secs(wait.as_secs())),
    );
    ApiError::quota_exceeded(message, wait.as_secs().max(1))
}
