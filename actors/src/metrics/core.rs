//! The recorder, the per-route windows and the bounded rollup history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hdrhistogram::Histogram as Hdr;
use metrics::{describe_counter, describe_gauge, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use serde::Serialize;

use super::requests::{RequestRecorder, RequestSeries};
use crate::BuildInfo;

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

/// Held while the recorder is installed: a second thread would otherwise
/// find the global recorder set but its handle not yet kept.
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let _installing = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let recorder = inference_buckets(PrometheusBuilder::new())?.build_recorder();
    let handle = recorder.handle();
    // Another recorder than ours (not Blaze's) may be installed.
    if metrics::set_global_recorder(recorder).is_err() {
        return PROMETHEUS
            .get()
            .cloned()
            .ok_or_else(|| MetricsError::Recorder("another recorder is installed".to_owned()));
    }
    Ok(PROMETHEUS.get_or_init(|| handle).clone())
}

/// The inference series are histograms (buckets can be summed across
/// replicas, unlike quantiles); the buckets fit what each one measures.
fn inference_buckets(builder: PrometheusBuilder) -> Result<PrometheusBuilder, MetricsError> {
    const SECONDS: &[f64] =
        &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
    const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    let seconds = [
        "blaze_inference_duration_seconds",
        "blaze_time_to_first_token_seconds",
        "blaze_time_per_output_token_seconds",
        "blaze_gateway_latency_seconds",
    ];
    let mut builder = builder;
    for name in seconds {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), SECONDS)
            .map_err(|error| MetricsError::Recorder(error.to_string()))?;
    }
    for name in ["blaze_inference_batch_size", "blaze_ws_socket_in_flight"] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), BATCH)
            .map_err(|error| MetricsError::Recorder(error.to_string()))?;
    }
    Ok(builder)
}

fn describe_metrics() {
    describe_gauge!("blaze_http_requests_in_flight", "HTTP requests being handled now.");
    describe_counter!("blaze_actor_restarts_total", "Restarts of each actor after it stopped or panicked.");
    describe_gauge!("blaze_actor_up", "1 while the actor runs, 0 while it is down.");
    describe_gauge!(
        "blaze_actor_mailbox_depth",
        "Messages waiting in each actor's mailbox at the last health round; one that stays above 0 is stuck."
    );
    describe_gauge!("blaze_build_info", "Always 1; the labels say which build runs.");
    describe_gauge!("blaze_ws_connections", "Open WebSocket connections.");
    describe_counter!("blaze_ws_frames_total", "WebSocket data frames, by direction (in, out).");
    describe_gauge!("blaze_ws_requests_in_flight", "Requests in flight on all WebSockets.");
    metrics::describe_histogram!(
        "blaze_ws_socket_in_flight",
        "Requests in flight on its socket when a WebSocket request starts."
    );
    describe_counter!("blaze_ws_closes_total", "WebSocket closes sent, by close code.");
    describe_counter!("blaze_ws_requests_total", "WebSocket requests, by type and HTTP-equivalent status.");
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

pub(crate) struct RouteWindow {
    requests: u64,
    client_errors: u64,
    server_errors: u64,
    latency_micros: Hdr<u64>,
}

impl RouteWindow {
    fn new(template: &Hdr<u64>) -> Self {
        let mut latency_micros = template.clone();
        latency_micros.reset();
        Self { requests: 0, client_errors: 0, server_errors: 0, latency_micros }
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

    pub(crate) fn record(&mut self, status: u16, elapsed: Duration) {
        self.requests += 1;
        self.client_errors += u64::from((400..500).contains(&status));
        self.server_errors += u64::from(status >= 500);
        let micros = (elapsed.as_micros() as u64).clamp(1, HIGHEST_TRACKED_MICROS);
        let _ = self.latency_micros.record(micros);
    }

    fn reset(&mut self) {
        self.requests = 0;
        self.client_errors = 0;
        self.server_errors = 0;
        self.latency_micros.reset();
    }
}

fn new_histogram() -> Result<Hdr<u64>, MetricsError> {
    Hdr::new_with_bounds(1, HIGHEST_TRACKED_MICROS, 2)
        .map_err(|error| MetricsError::Histogram(error.to_string()))
}

struct History {
    window_started: SystemTime,
    rollups: VecDeque<Arc<IntervalRollup>>,
    capacity: usize,
}

/// What the request path records into; see the module docs.
pub struct Telemetry {
    prometheus: PrometheusHandle,
    process: metrics_process::Collector,
    requests: RequestSeries,
    in_flight_gauge: Gauge,
    /// An empty latency histogram with the rollups' bounds, cloned for
    /// every new window.
    template: Hdr<u64>,
    /// Every worker's window of every route, merged by route at each roll.
    windows: Mutex<Vec<(String, Arc<Mutex<RouteWindow>>)>>,
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
            requests: RequestSeries::default(),
            in_flight_gauge: metrics::gauge!("blaze_http_requests_in_flight"),
            template: new_histogram()?,
            windows: Mutex::default(),
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

    /// A recorder for one HTTP worker.
    pub fn recorder(self: &Arc<Self>) -> RequestRecorder {
        RequestRecorder::new(self.clone())
    }

    /// HTTP requests being handled now.
    pub fn requests_in_flight(&self) -> i64 {
        self.requests.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> &RequestSeries {
        &self.requests
    }

    /// A new rollup window for one worker's view of `route`.
    pub(crate) fn new_window(&self, route: &str) -> Arc<Mutex<RouteWindow>> {
        let window = Arc::new(Mutex::new(RouteWindow::new(&self.template)));
        self.windows.lock().push((route.to_owned(), window.clone()));
        window
    }

    /// Closes the current window into a rollup, keeps it, and publishes the
    /// history. Called by the aggregator each collection interval.
    pub fn roll(&self) {
        let mut history = self.history.lock();
        let end = SystemTime::now();
        let seconds = end.duration_since(history.window_started).unwrap_or_default().as_secs_f64();
        let mut total = RouteWindow::new(&self.template);
        let mut merged: BTreeMap<String, RouteWindow> = BTreeMap::new();
        for (route, window) in self.windows.lock().iter() {
            let mut window = window.lock();
            if window.requests == 0 {
                continue;
            }
            let into = merged.entry(route.clone()).or_insert_with(|| RouteWindow::new(&self.template));
            window.merge_into(into);
            window.reset();
        }
        let mut routes = BTreeMap::new();
        for (route, window) in merged {
            window.merge_into(&mut total);
            routes.insert(route, window.rollup(seconds));
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
        self.in_flight_gauge.set(self.requests.in_flight.load(Ordering::Relaxed) as f64);
        self.process.collect();
        let mut text = self.prometheus.render();
        self.requests.render(&mut text);
        text
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
