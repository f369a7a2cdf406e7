//! What a quota is: its scope (key, user, team), window (UTC day or
//! month), unit (requests, tokens, cost), the limits of one subject, and a
//! model's price.

use serde::{Deserialize, Serialize};

use super::{calendar, Spent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaScope {
    Key,
    User,
    Team,
}

impl QuotaScope {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaScope::Key => "key",
            QuotaScope::User => "user",
            QuotaScope::Team => "team",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Key, Self::User, Self::Team].into_iter().find(|scope| scope.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Day,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    pub(super) fn bounds(self, at: i64) -> (i64, i64) {
        match self {
            Window::Day => (calendar::day_start(at), calendar::next_day_start(at)),
            Window::Month => (calendar::month_start(at), calendar::next_month_start(at)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaUnit {
    Requests,
    Tokens,
    /// Millionths of the configured currency.
    Cost,
}

impl QuotaUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaUnit::Requests => "requests",
            QuotaUnit::Tokens => "tokens",
            QuotaUnit::Cost => "cost",
        }
    }

    pub(super) fn of(self, spent: Spent) -> u64 {
        match self {
            QuotaUnit::Requests => spent.requests,
            QuotaUnit::Tokens => spent.tokens,
            QuotaUnit::Cost => spent.cost_micros,
        }
    }
}

/// The quotas of one key, user or team; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaLimits {
    pub requests_per_day: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub cost_micros_per_day: Option<u64>,
    pub requests_per_month: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub cost_micros_per_month: Option<u64>,
}

pub(super) const WINDOWS: [Window; 2] = [Window::Day, Window::Month];
pub(super) const UNITS: [QuotaUnit; 3] = [QuotaUnit::Requests, QuotaUnit::Tokens, QuotaUnit::Cost];

impl QuotaLimits {
    pub fn get(&self, window: Window, unit: QuotaUnit) -> Option<u64> {
        match (window, unit) {
            (Window::Day, QuotaUnit::Requests) => self.requests_per_day,
            (Window::Day, QuotaUnit::Tokens) => self.tokens_per_day,
            (Window::Day, QuotaUnit::Cost) => self.cost_micros_per_day,
            (Window::Month, QuotaUnit::Requests) => self.requests_per_month,
            (Window::Month, QuotaUnit::Tokens) => self.tokens_per_month,
            (Window::Month, QuotaUnit::Cost) => self.cost_micros_per_month,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        WINDOWS.iter().all(|&window| UNITS.iter().all(|&unit| self.get(window, unit).is_none()))
    }
}

/// A model's price per 1,000 tokens, in the configured currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Price {
    pub prompt_per_1k: f64,
    pub completion_per_1k: f64,
}
