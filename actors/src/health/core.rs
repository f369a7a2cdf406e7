//! Component health: probes, the published snapshot, readiness.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::supervisor::{ActorState, ActorStatus};
use crate::BuildInfo;

/// A check of one external component (a database, a cache server, ...).
pub trait Probe: Send + Sync + 'static {
    /// The component's name in health reports.
    fn component(&self) -> &str;
    /// Whether readiness waits for this component.
    fn required(&self) -> bool;
    /// One check; errors say what is wrong, without secrets.
    fn check(&self) -> BoxFuture<'static, Result<(), ProbeError>>;
}

/// Why a component is not up, as its health report says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// It is coming up (a model loading).
    #[error("loading: {0}")]
    Loading(&'static str),
    /// Its last load failed, for this reason; it is tried again.
    #[error("cannot load: {0}")]
    LoadFailed(String),
    /// It answered with an error (its text, which holds no secrets).
    #[error("{0}")]
    Down(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentStatus {
    Up,
    Down,
    Starting,
}

/// The result of one probe.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    pub latency: Duration,
    pub result: Result<(), ProbeError>,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentHealth {
    pub status: ComponentStatus,
    pub required: bool,
    /// Actors only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    pub last_probe_latency_ms: Option<f64>,
    pub last_probe_at: Option<String>,
    pub last_error: Option<String>,
}

impl ComponentHealth {
    /// An actor's health from its supervisor state and its last ping.
    pub fn of_actor(state: &ActorState, last_ping: Option<&ProbeOutcome>) -> Self {
        let ping_failed = last_ping.and_then(|outcome| outcome.result.as_ref().err());
        let status = match state.status {
            ActorStatus::Up if ping_failed.is_none() => ComponentStatus::Up,
            ActorStatus::Starting => ComponentStatus::Starting,
            _ => ComponentStatus::Down,
        };
        let last_error = match state.status {
            ActorStatus::Up => ping_failed.map(ToString::to_string),
            _ => state.last_exit.clone(),
        };
        Self {
            status,
            required: state.required,
            restarts: Some(state.restarts),
            last_error,
            ..Self::probe_fields(last_ping)
        }
    }

    /// A probed component's health.
    pub fn of_probe(required: bool, outcome: Option<&ProbeOutcome>) -> Self {
        let (status, last_error) = match outcome.map(|outcome| &outcome.result) {
            None => (ComponentStatus::Starting, None),
            Some(Ok(())) => (ComponentStatus::Up, None),
            Some(Err(error)) => (ComponentStatus::Down, Some(error.to_string())),
        };
        Self { status, required, last_error, ..Self::probe_fields(outcome) }
    }

    fn probe_fields(outcome: Option<&ProbeOutcome>) -> Self {
        Self {
            status: ComponentStatus::Starting,
            required: false,
            restarts: None,
            last_probe_latency_ms: outcome.map(|o| o.latency.as_secs_f64() * 1000.0),
            last_probe_at: outcome.map(|o| humantime::format_rfc3339_millis(o.at).to_string()),
            last_error: None,
        }
    }
}

/// Every component's health at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthSnapshot {
    pub components: BTreeMap<String, ComponentHealth>,
}

/// What `/health/ready` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not ready: the failing required components, or `shutting_down`.
    pub failing: Vec<String>,
}

/// What `/health/detailed` answers.
#[derive(Debug, Clone, Serialize)]
pub struct DetailedReport {
    pub status: &'static str,
    pub ready: bool,
    pub draining: bool,
    pub uptime_s: f64,
    pub build: BuildInfo,
    pub components: BTreeMap<String, ComponentHealth>,
}

/// Health as the request path sees it: the last published snapshot and the
/// draining flag. Cheap to read from any thread.
pub struct HealthState {
    snapshot: ArcSwap<HealthSnapshot>,
    draining: AtomicBool,
    started: Instant,
    build: BuildInfo,
}

impl HealthState {
    pub fn new(build: BuildInfo) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::default(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            build,
        })
    }

    pub fn publish(&self, snapshot: HealthSnapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    pub fn snapshot(&self) -> Arc<HealthSnapshot> {
        self.snapshot.load_full()
    }

    /// From now on the service reports itself not ready, so load balancers
    /// move traffic away while in-flight requests finish.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn readiness(&self) -> Readiness {
        let mut failing: Vec<String> = self
            .snapshot
            .load()
            .components
            .iter()
            .filter(|(_, health)| health.required && health.status != ComponentStatus::Up)
            .map(|(name, _)| name.clone())
            .collect();
        if self.is_draining() {
            failing.insert(0, "shutting_down".to_owned());
        }
        Readiness { ready: failing.is_empty(), failing }
    }

    pub fn detailed(&self) -> DetailedReport {
        let readiness = self.readiness();
        let components = self.snapshot.load().components.clone();
        let all_up = components.values().all(|health| health.status == ComponentStatus::Up);
        let status = match (readiness.ready, all_up) {
            (true, true) => "ok",
            (true, false) => "degraded",
            (false, _) => "unavailable",
        };
        DetailedReport {
            status,
            ready: readiness.ready,
            draining: self.is_draining(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            build: self.build.clone(),
            components,
        }
    }
}
