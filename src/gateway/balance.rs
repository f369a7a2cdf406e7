//! The order in which one request tries a route's targets: one picked by
//! the route's strategy among those in, then (after a retryable failure)
//! another not yet tried while attempts and the retry budget last, then
//! the fallbacks in order. When every target is out, they are tried
//! anyway rather than refusing the request unseen.

use std::sync::Arc;

use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};

use super::{Route, Target};
use crate::settings::Strategy;

/// Why a target is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    First,
    /// Another target of the route, after a retryable failure.
    Retry,
    /// One of the route's fallbacks.
    Fallback,
}

pub struct Attempts<'a> {
    route: &'a Route,
    max_attempts: u32,
    budget: &'a TpsBudget,
    made: u32,
    /// Indices of the route's targets already tried.
    tried: Vec<usize>,
    next_fallback: usize,
    /// Retries were refused (attempts or budget spent): fallbacks only.
    retries_over: bool,
}

impl<'a> Attempts<'a> {
    pub(super) fn new(route: &'a Route, max_attempts: u32, budget: &'a TpsBudget) -> Self {
        Self {
            route,
            max_attempts,
            budget,
            made: 0,
            tried: Vec::new(),
            next_fallback: 0,
            retries_over: false,
        }
    }

    /// The next target to try, or `None` when there is none left.
    fn next_target(&mut self) -> Option<(Arc<Target>, Attempt)> {
        let route = self.route;
        if !self.retries_over && self.made < self.max_attempts {
            let index = self.pick(true).or_else(|| {
                // Every target is out: on the first attempt, and with no
                // fallback in, try one anyway.
                let fallback_in = route.fallbacks.iter().any(|target| target.health.is_in());
                (self.made == 0 && !fallback_in).then(|| self.pick(false)).flatten()
            });
            if let Some(index) = index {
                let kind = if self.made == 0 {
                    Some(Attempt::First)
                } else if self.budget.withdraw() {
                    route.retries.increment(1);
                    Some(Attempt::Retry)
                } else {
                    route.retries_refused.increment(1);
                    self.retries_over = true;
                    None
                };
                if let Some(kind) = kind {
                    self.made += 1;
                    self.tried.push(index);
                    return Some((route.targets[index].0.clone(), kind));
                }
            }
        }
        self.retries_over = true;
        self.fallback()
    }

    fn fallback(&mut self) -> Option<(Arc<Target>, Attempt)> {
        let route = self.route;
        let tried = |target: &Arc<Target>| {
            self.tried.iter().any(|&index| Arc::ptr_eq(&route.targets[index].0, target))
        };
        // Those in first, in order; then, when none is, the first not tried.
        let start = self.next_fallback;
        let found = route.fallbacks[start..]
            .iter()
            .position(|target| !tried(target) && target.health.is_in())
            .or_else(|| {
                let any_in = route.fallbacks[start..].iter().any(|target| target.health.is_in());
                (!any_in).then(|| route.fallbacks[start..].iter().position(|target| !tried(target))).flatten()
            });
        let offset = found?;
        self.next_fallback = start + offset + 1;
        route.fallbacks_taken.increment(1);
        Some((route.fallbacks[start + offset].clone(), Attempt::Fallback))
    }

    /// A target not yet tried, by the route's strategy; among those in
    /// only when `healthy_only`.
    fn pick(&self, healthy_only: bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.route.targets.len())
            .filter(|index| !self.tried.contains(index))
            .filter(|&index| !healthy_only || self.route.targets[index].0.health.is_in())
            .collect();
        if candidates.len() <= 1 {
            return candidates.first().copied();
        }
        let targets = &self.route.targets;
        let mut random = rand::rng();
        match self.route.strategy {
            Strategy::Weighted => Some(weighted(&candidates, targets, &mut random)),
            Strategy::LeastOutstanding => {
                // Fewest in flight per unit of weight; ties go to a random one.
                let start = random.random_range(0..candidates.len());
                (0..candidates.len())
                    .map(|offset| candidates[(start + offset) % candidates.len()])
                    .min_by_key(|&index| {
                        let (target, weight) = &targets[index];
                        (target.health.outstanding() as u64 * 1_000_000) / u64::from((*weight).max(1))
                    })
            }
            Strategy::LowestLatency => {
                // Two drawn by weight, the faster kept; one never measured
                // is tried first.
                let first = weighted(&candidates, targets, &mut random);
                let second = weighted(&candidates, targets, &mut random);
                let latency = |index: usize| targets[index].0.health.latency_us();
                Some(if latency(second) < latency(first) { second } else { first })
            }
        }
    }
}

impl Iterator for Attempts<'_> {
    type Item = (Arc<Target>, Attempt);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_target()
    }
}

/// One of `candidates` at random, in proportion to its weight.
fn weighted(candidates: &[usize], targets: &[(Arc<Target>, u32)], random: &mut impl Rng) -> usize {
    let total: u64 = candidates.iter().map(|&index| u64::from(targets[index].1)).sum();
    let mut draw = random.random_range(0..total.max(1));
    for &index in candidates {
        let weight = u64::from(targets[index].1);
        if draw < weight {
            return index;
        }
        draw -= weight;
    }
    candidates[candidates.len() - 1]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gateway::{Backend, Ejection, TargetHealth};

    fn target(id: &str) -> Arc<Target> {
        let ejection = Ejection {
            after_failures: 1,
            backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        };
        Arc::new(Target {
            id: id.to_owned(),
            backend: Backend::Local,
            health: TargetHealth::new(id, ejection),
        })
    }

    fn route(targets: &[(&str, u32)], strategy: Strategy, fallbacks: &[&str]) -> Route {
        Route::new(
            "route",
            targets.iter().map(|(id, weight)| (target(id), *weight)).collect(),
            strategy,
            fallbacks.iter().map(|id| target(id)).collect(),
        )
    }

    fn ids(attempts: &mut Attempts) -> Vec<(String, Attempt)> {
        attempts.map(|(target, kind)| (target.id.clone(), kind)).collect()
    }

    #[test]
    fn every_target_once_then_the_fallbacks_in_order() {
        let budget = TpsBudget::new(Duration::from_secs(10), 100, 0.2);
        let route = route(&[("a", 1), ("b", 1)], Strategy::Weighted, &["x", "y"]);
        let tried = ids(&mut Attempts::new(&route, 3, &budget));
        assert_eq!(tried.len(), 4, "{tried:?}");
        assert_eq!(tried[0].1, Attempt::First);
        assert_eq!(tried[1].1, Attempt::Retry);
        assert_ne!(tried[0].0, tried[1].0);
        assert_eq!(tried[2], ("x".to_owned(), Attempt::Fallback));
        assert_eq!(tried[3], ("y".to_owned(), Attempt::Fallback));
    }

    #[test]
    fn attempts_stop_at_the_limit_and_the_budget() {
        let budget = TpsBudget::new(Duration::from_secs(10), 100, 0.2);
        let route = route(&[("a", 1), ("b", 1), ("c", 1)], Strategy::Weighted, &[]);
        assert_eq!(ids(&mut Attempts::new(&route, 2, &budget)).len(), 2);
        // No budget at all: the first attempt only.
        let empty = TpsBudget::new(Duration::from_secs(10), 0, 0.0);
        assert_eq!(ids(&mut Attempts::new(&route, 3, &empty)).len(), 1);
    }

    #[test]
    fn targets_taken_out_are_skipped_unless_all_are() {
        let budget = TpsBudget::new(Duration::from_secs(10), 100, 0.2);
        let route = route(&[("a", 1), ("b", 1)], Strategy::LeastOutstanding, &[]);
        route.targets[0].0.health.failed("connect");
        for _ in 0..20 {
            let tried = ids(&mut Attempts::new(&route, 1, &budget));
            assert_eq!(tried, vec![("b".to_owned(), Attempt::First)]);
        }
        route.targets[1].0.health.failed("connect");
        assert_eq!(ids(&mut Attempts::new(&route, 1, &budget)).len(), 1, "all out: one is tried anyway");
    }

    #[test]
    fn an_out_target_goes_to_a_fallback_that_is_in() {
        let budget = TpsBudget::new(Duration::from_secs(10), 100, 0.2);
        let route = route(&[("local", 1)], Strategy::Weighted, &["remote"]);
        route.targets[0].0.health.failed("worker_failed");
        let tried = ids(&mut Attempts::new(&route, 3, &budget));
        assert_eq!(tried, vec![("remote".to_owned(), Attempt::Fallback)]);
    }

    #[test]
    fn weights_share_the_first_attempts() {
        let budget = TpsBudget::new(Duration::from_secs(10), 100, 0.2);
        let route = route(&[("heavy", 3), ("light", 1)], Strategy::Weighted, &[]);
        let heavy = (0..4000)
            .filter(|_| {
                Attempts::new(&route, 1, &budget).next().is_some_and(|(target, _)| target.id == "heavy")
            })
            .count();
        assert!((2700..3300).contains(&heavy), "{heavy} of 4000 to the weight-3 target");
    }

    #[test]
    fn least_outstanding_avoids_the_busy_target() {
        let budget = TpsBudget::new(Duration::from_secs(10), 100, 0.2);
        let route = route(&[("busy", 1), ("idle", 1)], Strategy::LeastOutstanding, &[]);
        let _in_flight = route.targets[0].0.start();
        for _ in 0..50 {
            let (target, _) = Attempts::new(&route, 1, &budget).next().expect("a target");
            assert_eq!(target.id, "idle");
        }
    }

    #[test]
    fn lowest_latency_prefers_the_faster_target() {
        let budget = TpsBudget::new(Duration::from_secs(10), 100, 0.2);
        let route = route(&[("slow", 1), ("fast", 1)], Strategy::LowestLatency, &[]);
        route.targets[0].0.health.succeeded(Duration::from_millis(50));
        route.targets[1].0.health.succeeded(Duration::from_millis(5));
        let fast = (0..1000)
            .filter(|_| {
                Attempts::new(&route, 1, &budget).next().is_some_and(|(target, _)| target.id == "fast")
            })
            .count();
        // Two drawn, the faster kept: 3 in 4.
        assert!((650..850).contains(&fast), "{fast} of 1000 to the faster target");
    }
}
