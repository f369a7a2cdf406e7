//! HTTP request metrics, recorded per worker.
//!
//! Each HTTP worker owns a [`RequestRecorder`]: it maps a request path to
//! its route once, and keeps that route's counters and latency buckets in
//! cells only this worker writes. A request then costs one local lookup and
//! a few uncontended atomic additions; the cells of all workers are summed
//! when Prometheus scrapes. (Through the shared metrics registry the same
//! work was two label lookups and two contended atomic updates per request,
//! 3% of the CPU of a `/health` load, measured with perf.)

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;
use parking_lot::Mutex;

use super::core::{RouteWindow, Telemetry};

const REQUESTS_TOTAL: &str = "blaze_http_requests_total";
const REQUEST_DURATION: &str = "blaze_http_request_duration_seconds";

/// Latency bucket bounds in seconds, from sub-millisecond cache hits to the
/// longest request the server allows.
const DURATION_BOUNDS: [f64; 19] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
];

/// Paths remembered per worker with their route. Past this many distinct
/// matched paths (ids in paths), the route is looked up for each request.
const CACHED_PATHS: usize = 1024;

/// The label of requests that matched no route, so unknown paths cannot
/// grow the label set.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Requests answered, for one (method, route, status) on one worker.
pub(crate) struct CounterCell {
    method: &'static str,
    route: Arc<str>,
    status: u16,
    count: AtomicU64,
}

/// Latency buckets, for one (method, route) on one worker. `buckets` are
/// per bucket (not cumulative), the last one above every bound.
pub(crate) struct DurationCell {
    method: &'static str,
    route: Arc<str>,
    buckets: [AtomicU64; DURATION_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Every worker's cells, for rendering.
#[derive(Default)]
pub(crate) struct RequestSeries {
    counters: Mutex<Vec<Arc<CounterCell>>>,
    durations: Mutex<Vec<Arc<DurationCell>>>,
    pub(crate) in_flight: Arc<AtomicI64>,
}

type SeriesKey = (&'static str, Arc<str>);

impl RequestSeries {
    /// Appends both families in the Prometheus text format, all workers
    /// summed.
    pub(crate) fn render(&self, out: &mut String) {
        let mut counts: BTreeMap<(SeriesKey, u16), u64> = BTreeMap::new();
        for cell in self.counters.lock().iter() {
            let key = ((cell.method, cell.route.clone()), cell.status);
            *counts.entry(key).or_default() += cell.count.load(Ordering::Relaxed);
        }
        let _ = writeln!(
            out,
            "# HELP {REQUESTS_TOTAL} HTTP requests answered, by method, route pattern and status."
        );
        let _ = writeln!(out, "# TYPE {REQUESTS_TOTAL} counter");
        for (((method, route), status), count) in &counts {
            let route = escape(route);
            let _ = writeln!(
                out,
                r#"{REQUESTS_TOTAL}{{method="{method}",route="{route}",status="{status}"}} {count}"#
            );
        }

        let mut durations: BTreeMap<SeriesKey, ([u64; DURATION_BOUNDS.len() + 1], u64)> = BTreeMap::new();
        for cell in self.durations.lock().iter() {
            let entry = durations.entry((cell.method, cell.route.clone())).or_default();
            for (total, bucket) in entry.0.iter_mut().zip(&cell.buckets) {
                *total += bucket.load(Ordering::Relaxed);
            }
            entry.1 += cell.sum_nanos.load(Ordering::Relaxed);
        }
        let _ =
            writeln!(out, "# HELP {REQUEST_DURATION} HTTP request duration, by method and route pattern.");
        let _ = writeln!(out, "# TYPE {REQUEST_DURATION} histogram");
        for ((method, route), (buckets, sum_nanos)) in &durations {
            let labels = format!(r#"method="{method}",route="{}""#, escape(route));
            let mut cumulative = 0;
            for (bound, count) in DURATION_BOUNDS.iter().zip(buckets) {
                cumulative += count;
                let _ = writeln!(out, r#"{REQUEST_DURATION}_bucket{{{labels},le="{bound}"}} {cumulative}"#);
            }
            cumulative += buckets[DURATION_BOUNDS.len()];
            let _ = writeln!(out, r#"{REQUEST_DURATION}_bucket{{{labels},le="+Inf"}} {cumulative}"#);
            let _ = writeln!(out, "{REQUEST_DURATION}_sum{{{labels}}} {}", *sum_nanos as f64 / 1e9);
            let _ = writeln!(out, "{REQUEST_DURATION}_count{{{labels}}} {cumulative}");
        }
    }
}

/// Label values per the Prometheus text format.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n")
}

/// Counts one request in flight until dropped.
pub struct InFlight(Arc<AtomicI64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A route as one recorder knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(usize);

/// One route's cells, as one worker uses them.
struct RouteHandles {
    name: Arc<str>,
    window: Arc<Mutex<RouteWindow>>,
    durations: Vec<Arc<DurationCell>>,
    counts: Vec<Arc<CounterCell>>,
}

#[derive(Default)]
struct Routes {
    handles: Vec<RouteHandles>,
    by_name: HashMap<Arc<str>, usize, RandomState>,
    by_path: HashMap<Box<str>, usize, RandomState>,
}

/// One HTTP worker's recorder; see the module docs. Not `Send`: each worker
/// makes its own with [`Telemetry::recorder`].
pub struct RequestRecorder {
    telemetry: Arc<Telemetry>,
    routes: RefCell<Routes>,
}

impl RequestRecorder {
    pub(crate) fn new(telemetry: Arc<Telemetry>) -> Self {
        Self { telemetry, routes: RefCell::default() }
    }

    pub fn request_started(&self) -> InFlight {
        let in_flight = &self.telemetry.requests().in_flight;
        in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(in_flight.clone())
    }

    /// The route of `path`; `pattern` gives the route pattern (None: no
    /// route matched) and is called only for paths not seen before.
    pub fn route(&self, path: &str, pattern: impl FnOnce() -> Option<String>) -> RouteId {
        let mut routes = self.routes.borrow_mut();
        if let Some(&index) = routes.by_path.get(path) {
            return RouteId(index);
        }
        let pattern = pattern();
        // Unknown paths are not remembered: junk requests cannot crowd out
        // the real routes.
        let remember = pattern.is_some() && routes.by_path.len() < CACHED_PATHS;
        let name = pattern.unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
        let index = match routes.by_name.get(name.as_str()) {
            Some(&index) => index,
            None => {
                let name: Arc<str> = Arc::from(name);
                let window = self.telemetry.new_window(&name);
                routes.handles.push(RouteHandles {
                    name: name.clone(),
                    window,
                    durations: Vec::new(),
                    counts: Vec::new(),
                });
                let index = routes.handles.len() - 1;
                routes.by_name.insert(name, index);
                index
            }
        };
        if remember {
            routes.by_path.insert(Box::from(path), index);
        }
        RouteId(index)
    }

    /// The route pattern, for logs.
    pub fn route_name(&self, route: RouteId) -> Arc<str> {
        let routes = self.routes.borrow();
        routes.handles.get(route.0).map_or_else(|| Arc::from(UNMATCHED_ROUTE), |handles| handles.name.clone())
    }

    /// Records one answered request.
    pub fn record(&self, route: RouteId, method: &'static str, status: u16, elapsed: Duration) {
        let mut routes = self.routes.borrow_mut();
        let Some(handles) = routes.handles.get_mut(route.0) else { return };
        let series = self.telemetry.requests();
        let count =
            match handles.counts.iter().position(|cell| cell.method == method && cell.status == status) {
                Some(index) => index,
                None => {
                    let cell = Arc::new(CounterCell {
                        method,
                        route: handles.name.clone(),
                        status,
                        count: AtomicU64::new(0),
                    });
                    series.counters.lock().push(cell.clone());
                    handles.counts.push(cell);
                    handles.counts.len() - 1
                }
            };
        handles.counts[count].count.fetch_add(1, Ordering::Relaxed);
        let duration = match handles.durations.iter().position(|cell| cell.method == method) {
            Some(index) => index,
            None => {
                let cell = Arc::new(DurationCell {
                    method,
                    route: handles.name.clone(),
                    buckets: Default::default(),
                    sum_nanos: AtomicU64::new(0),
                });
                series.durations.lock().push(cell.clone());
                handles.durations.push(cell);
                handles.durations.len() - 1
            }
        };
        let duration = &handles.durations[duration];
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BOUNDS.partition_point(|bound| *bound < seconds);
        duration.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        duration.sum_nanos.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        handles.window.lock().record(status, elapsed);
    }
}
