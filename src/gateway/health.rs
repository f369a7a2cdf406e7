//! What the gateway knows of one target: whether it is taken out (passive
//! ejection after failures in a row, let back after a backoff that doubles
//! each time it fails again), its requests in flight and its recent
//! latency, and the metrics it is seen by.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// When a target is taken out and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Ejection {
    pub after_failures: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// Milliseconds since the first time a health was read: instants as atomics.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A target's state, shared by every worker thread.
pub struct TargetHealth {
    target: String,
    ejection: Ejection,
    failures: AtomicU32,
    /// Out until this time (`now_ms`), 0 when in.
    ejected_until: AtomicU64,
    /// The next ejection's length.
    backoff_ms: AtomicU64,
    /// Let back after an ejection and not yet proven: one failure takes
    /// it out again.
    probation: AtomicBool,
    outstanding: AtomicUsize,
    /// Recent latency to the first byte, microseconds (0: none seen yet).
    latency_us: AtomicU64,
    metrics: TargetMetrics,
}

struct TargetMetrics {
    requests: Counter,
    ejections: Counter,
    latency: Histogram,
    up: Gauge,
    outstanding: Gauge,
}

impl TargetHealth {
    pub fn new(target: &str, ejection: Ejection) -> Self {
        let label = target.to_owned();
        let metrics = TargetMetrics {
            requests: counter!("blaze_gateway_requests_total", "target" => label.clone()),
            ejections: counter!("blaze_gateway_ejections_total", "target" => label.clone()),
            latency: histogram!("blaze_gateway_latency_seconds", "target" => label.clone()),
            up: gauge!("blaze_gateway_target_up", "target" => label.clone()),
            outstanding: gauge!("blaze_gateway_outstanding_requests", "target" => label),
        };
        metrics.up.set(1.0);
        Self {
            target: target.to_owned(),
            ejection,
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(ejection.backoff.as_millis() as u64),
            probation: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            latency_us: AtomicU64::new(0),
            metrics,
        }
    }

    /// Whether it takes requests now.
    pub fn is_in(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms() < until {
            return false;
        }
        // Its backoff is over: let back, on probation.
        if self.ejected_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.probation.store(true, Ordering::Relaxed);
            self.metrics.up.set(1.0);
            tracing::info!(gateway_target = %self.target, "gateway: target let back after its backoff");
        }
        true
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Recent latency to the first byte, microseconds; 0 before any.
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// A request goes to it (in flight until [`Self::end`]).
    pub fn begin(&self) {
        self.metrics.requests.increment(1);
        let outstanding = self.outstanding.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.outstanding.set(outstanding as f64);
    }

    pub fn end(&self) {
        let outstanding = self.outstanding.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.metrics.outstanding.set(outstanding as f64);
    }

    /// It answered (its first byte came after `latency`).
    pub fn succeeded(&self, latency: Duration) {
        let sample = latency.as_micros() as u64;
        self.metrics.latency.record(latency.as_secs_f64());
        let old = self.latency_us.load(Ordering::Relaxed);
        let smoothed = if old == 0 { sample } else { (old * 4 + sample) / 5 };
        self.latency_us.store(smoothed.max(1), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        if self.probation.swap(false, Ordering::Relaxed) {
            self.backoff_ms.store(self.ejection.backoff.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// It failed, by a fault of its own (`class` names it for the
    /// metrics); taken out after enough failures in a row.
    pub fn failed(&self, class: &'static str) {
        counter!("blaze_gateway_errors_total", "target" => self.target.clone(), "class" => class)
            .increment(1);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let on_probation = self.probation.load(Ordering::Relaxed);
        if failures < self.ejection.after_failures && !on_probation {
            return;
        }
        self.eject(class);
    }

    fn eject(&self, class: &'static str) {
        let backoff = self.backoff_ms.load(Ordering::Relaxed);
        let until = now_ms() + backoff;
        if self.ejected_until.swap(until, Ordering::Relaxed) != 0 {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.probation.store(false, Ordering::Relaxed);
        let next = (backoff * 2).min(self.ejection.max_backoff.as_millis() as u64);
        self.backoff_ms.store(next, Ordering::Relaxed);
        self.metrics.ejections.increment(1);
        self.metrics.up.set(0.0);
        tracing::warn!(gateway_target = %self.target, class, backoff_ms = backoff, "gateway: target taken out");
    }

    /// The active probe found it answering: an ejected target comes back
    /// at once (on probation).
    pub fn probe_succeeded(&self) {
        if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            self.probation.store(true, Ordering::Relaxed);
            self.metrics.up.set(1.0);
            tracing::info!(gateway_target = %self.target, "gateway: target let back by its probe");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(after_failures: u32) -> TargetHealth {
        let ejection = Ejection {
            after_failures,
            backoff: Duration::from_millis(40),
            max_backoff: Duration::from_millis(100),
        };
        TargetHealth::new("test-target", ejection)
    }

    #[test]
    fn taken_out_after_failures_in_a_row_and_let_back_after_the_backoff() {
        let health = health(3);
        health.failed("connect");
        health.failed("connect");
        health.succeeded(Duration::from_millis(1));
        health.failed("connect");
        health.failed("connect");
        assert!(health.is_in(), "a success in between resets the count");
        health.failed("connect");
        assert!(!health.is_in());
        std::thread::sleep(Duration::from_millis(60));
        assert!(health.is_in(), "back after its backoff");
        // On probation, one failure takes it out again, for twice as long.
        health.failed("timeout");
        assert!(!health.is_in());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!health.is_in(), "the second backoff is doubled");
        std::thread::sleep(Duration::from_millis(40));
        assert!(health.is_in());
        health.succeeded(Duration::from_millis(1));
        health.failed("timeout");
        assert!(health.is_in(), "a proven target needs its failures in a row again");
    }

    #[test]
    fn a_probe_lets_an_ejected_target_back_at_once() {
        let health = health(1);
        health.failed("status_503");
        assert!(!health.is_in());
        health.probe_succeeded();
        assert!(health.is_in());
    }

    #[test]
    fn in_flight_requests_are_counted_until_they_end() {
        let health = health(1);
        health.begin();
        health.begin();
        assert_eq!(health.outstanding(), 2);
        health.end();
        health.end();
        assert_eq!(health.outstanding(), 0);
    }
}
