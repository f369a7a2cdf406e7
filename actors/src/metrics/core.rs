//! The recorder, the per-route windows and the bounded rollup history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use hdrhistogram::Histogram;
use metrics::{describe_counter, describe_gauge, describe_histogram, Gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use serde::Serialize;

use crate::BuildInfo;

/// The route label of requests that matched no route, so unknown paths
/// cannot grow the label set.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const REQUEST_DURATION: &str = "blaze_http_request_duration_seconds";

/// Bucket bounds in seconds, from sub-millisecond cache hits to the longest
/// request the server allows.
const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
];

/// Latencies above this (in microseconds) are clamped in the rollups.
const HIGHEST_TRACKED_MICROS: u64 = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot build the Prometheus recorder: {0}")]
    Recorder(String),
    #[error("cannot create a latency histogram: {0}")]
    Histogram(String),
}

/// The process-wide recorder. metrics' global recorder can be set once per
/// process, so every [`Telemetry`] in the process shares it.
static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), REQUEST_DURATION_BUCKETS)
        .map_err(|error| MetricsError::Recorder(error.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    // Losing the race to another thread leaves its recorder installed; use its handle.
    if metrics::set_global_recorder(recorder).is_err() {
        return PROMETHEUS
            .get()
            .cloned()
            .ok_or_else(|| MetricsError::Recorder("another recorder is installed".to_owned()));
    }
    Ok(PROMETHEUS.get_or_init(|| handle).clone())
}

fn describe_metrics() {
    describe_counter!(
        "blaze_http_requests_total",
        "HTTP requests answered, by method, route pattern and status."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request duration, by method and route pattern."
    );
    describe_gauge!("blaze_http_requests_in_flight", "HTTP requests being handled now.");
    describe_counter!("blaze_actor_restarts_total", "Restarts of each actor after it stopped or panicked.");
    describe_gauge!("blaze_actor_up", "1 while the actor runs, 0 while it is down.");
    describe_gauge!("blaze_build_info", "Always 1; the labels say which build runs.");
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteRollup {
    pub requests: u64,
    pub requests_per_s: f64,
    /// Share of responses with a 4xx status.
    pub client_error_rate: f64,
    /// Share of responses with a 5xx status.
    pub server_error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntervalRollup {
    pub start: String,
    pub end: String,
    pub duration_s: f64,
    pub total: RouteRollup,
    pub routes: BTreeMap<String, RouteRollup>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SummaryReport {
    pub collection_interval_s: f64,
    pub retention_s: f64,
    /// Oldest first.
    pub intervals: Vec<Arc<IntervalRollup>>,
}

struct RouteWindow {
    requests: u64,
    client_errors: u64,
    server_errors: u64,
    latency_micros: Histogram<u64>,
}

impl RouteWindow {
    fn new() -> Result<Self, MetricsError> {
        Ok(Self { requests: 0, client_errors: 0, server_errors: 0, latency_micros: new_histogram()? })
    }

    fn merge_into(&self, total: &mut RouteWindow) {
        total.requests += self.requests;
        total.client_errors += self.client_errors;
        total.server_errors += self.server_errors;
        // Same bounds on both sides, so adding cannot fail.
        let _ = total.latency_micros.add(&self.latency_micros);
    }

    fn rollup(&self, seconds: f64) -> RouteRollup {
        let share = |count: u64| if self.requests == 0 { 0.0 } else { count as f64 / self.requests as f64 };
        let millis = |quantile: f64| self.latency_micros.value_at_quantile(quantile) as f64 / 1000.0;
        RouteRollup {
            requests: self.requests,
            requests_per_s: if seconds > 0.0 { self.requests as f64 / seconds } else { 0.0 },
            client_error_rate: share(self.client_errors),
            server_error_rate: share(self.server_errors),
            p50_ms: millis(0.50),
            p95_ms: millis(0.95),
            p99_ms: millis(0.99),
            max_ms: self.latency_micros.max() as f64 / 1000.0,
        }
    }

    fn reset(&mut self) {
        self.requests = 0;
        self.client_errors = 0;
        self.server_errors = 0;
        self.latency_micros.reset();
    }
}

fn new_histogram() -> Result<Histogram<u64>, MetricsError> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKED_MICROS, 2)
        .map_err(|error| MetricsError::Histogram(error.to_string()))
}

struct History {
    window_started: SystemTime,
    rollups: VecDeque<Arc<IntervalRollup>>,
    capacity: usize,
}

/// Counts one request in flight until dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What the request path records into; see the module docs.
pub struct Telemetry {
    prometheus: PrometheusHandle,
    process: metrics_process::Collector,
    in_flight: Gauge,
    windows: DashMap<String, Mutex<RouteWindow>>,
    history: Mutex<History>,
    published: ArcSwap<Vec<Arc<IntervalRollup>>>,
    collection_interval: Duration,
    retention: Duration,
}

impl Telemetry {
    /// Installs the process-wide recorder (once) and describes every metric.
    pub fn install(
        build: &BuildInfo,
        collection_interval: Duration,
        retention: Duration,
    ) -> Result<Arc<Self>, MetricsError> {
        let prometheus = install_recorder()?;
        describe_metrics();
        let process = metrics_process::Collector::new("blaze_");
        process.describe();
        metrics::gauge!(
            "blaze_build_info",
            "version" => build.version,
            "git_sha" => build.git_sha,
            "rustc" => build.rustc,
            "profile" => build.profile
        )
        .set(1.0);
        let interval_s = collection_interval.as_secs_f64().max(0.001);
        let capacity = (retention.as_secs_f64() / interval_s).ceil().max(1.0) as usize;
        Ok(Arc::new(Self {
            prometheus,
            process,
            in_flight: metrics::gauge!("blaze_http_requests_in_flight"),
            windows: DashMap::new(),
            history: Mutex::new(History {
                window_started: SystemTime::now(),
                rollups: VecDeque::with_capacity(capacity.min(4096)),
                capacity,
            }),
            published: ArcSwap::default(),
            collection_interval,
            retention,
        }))
    }

    pub fn request_started(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }

    /// Records one answered request. `route` is the route pattern (or
    /// [`UNMATCHED_ROUTE`]), never the raw path.
    pub fn record_request(&self, method: &'static str, route: &str, status: u16, elapsed: Duration) {
        let route_label = metrics::SharedString::from(route.to_owned());
        metrics::counter!(
            "blaze_http_requests_total",
            "method" => method,
            "route" => route_label.clone(),
            "status" => status_label(status)
        )
        .increment(1);
        metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route_label)
            .record(elapsed.as_secs_f64());
        self.record_in_window(route, status, elapsed);
    }

    fn record_in_window(&self, route: &str, status: u16, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, HIGHEST_TRACKED_MICROS);
        let update = |window: &mut RouteWindow| {
            window.requests += 1;
            window.client_errors += u64::from((400..500).contains(&status));
            window.server_errors += u64::from(status >= 500);
            let _ = window.latency_micros.record(micros);
        };
        if let Some(window) = self.windows.get(route) {
            update(&mut window.lock());
            return;
        }
        if let Ok(mut window) = RouteWindow::new() {
            update(&mut window);
            match self.windows.entry(route.to_owned()) {
                dashmap::Entry::Occupied(existing) => update(&mut existing.get().lock()),
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(Mutex::new(window));
                }
            }
        }
    }

    /// Closes the current window into a rollup, keeps it, and publishes the
    /// history. Called by the aggregator each collection interval.
    pub fn roll(&self) {
        let mut history = self.history.lock();
        let end = SystemTime::now();
        let seconds = end.duration_since(history.window_started).unwrap_or_default().as_secs_f64();
        let Ok(mut total) = RouteWindow::new() else { return };
        let mut routes = BTreeMap::new();
        for entry in &self.windows {
            let mut window = entry.value().lock();
            if window.requests == 0 {
                continue;
            }
            window.merge_into(&mut total);
            routes.insert(entry.key().clone(), window.rollup(seconds));
            window.reset();
        }
        let rollup = IntervalRollup {
            start: humantime::format_rfc3339_millis(history.window_started).to_string(),
            end: humantime::format_rfc3339_millis(end).to_string(),
            duration_s: seconds,
            total: total.rollup(seconds),
            routes,
        };
        history.window_started = end;
        if history.rollups.len() == history.capacity {
            history.rollups.pop_front();
        }
        history.rollups.push_back(Arc::new(rollup));
        self.published.store(Arc::new(history.rollups.iter().cloned().collect()));
    }

    /// The published rollups, oldest first; `last` keeps only the newest.
    pub fn summary(&self, last: Option<usize>) -> SummaryReport {
        let published = self.published.load();
        let skip = last.map_or(0, |last| published.len().saturating_sub(last));
        SummaryReport {
            collection_interval_s: self.collection_interval.as_secs_f64(),
            retention_s: self.retention.as_secs_f64(),
            intervals: published.iter().skip(skip).cloned().collect(),
        }
    }

    /// The Prometheus text exposition, with fresh process metrics.
    pub fn render(&self) -> String {
        self.process.collect();
        self.prometheus.render()
    }

    pub fn upkeep(&self) {
        self.process.collect();
        self.prometheus.run_upkeep();
    }

    /// How many rollups the history holds at most.
    pub fn history_capacity(&self) -> usize {
        self.history.lock().capacity
    }
}

fn status_label(status: u16) -> metrics::SharedString {
    match status {
        200 => metrics::SharedString::const_str("200"),
        404 => metrics::SharedString::const_str("404"),
        other => metrics::SharedString::from(other.to_string()),
    }
}
