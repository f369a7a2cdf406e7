//! Scenarios: the YAML files under `load/scenarios/`, parsed strictly
//! (unknown keys are errors), checked against the safety limits, and
//! compiled into what the engine runs: request templates, the arrival
//! model, the weighted step mix and the thresholds.

use std::time::Duration;

use serde::Deserialize;

use crate::template::{Template, Variable, VariableSpec};

mod raw;

use self::raw::{compile, yaml_to_json, RawScenario};

/// The scenarios bundled into the binary (the same files as
/// `load/scenarios/`), so `blaze-load run health` works from anywhere.
pub const BUNDLED: &[(&str, &str)] = &[
    ("baseline", include_str!("../../scenarios/baseline.yaml")),
    ("health", include_str!("../../scenarios/health.yaml")),
    ("models", include_str!("../../scenarios/models.yaml")),
    ("embeddings", include_str!("../../scenarios/embeddings.yaml")),
    ("chat-cached", include_str!("../../scenarios/chat-cached.yaml")),
    ("chat-generate", include_str!("../../scenarios/chat-generate.yaml")),
    ("chat-stream-sse", include_str!("../../scenarios/chat-stream-sse.yaml")),
    ("ws-stream", include_str!("../../scenarios/ws-stream.yaml")),
    ("auth-flow", include_str!("../../scenarios/auth-flow.yaml")),
    ("mixed", include_str!("../../scenarios/mixed.yaml")),
    ("seed-targets", include_str!("../../scenarios/seed-targets.yaml")),
];

/// The safety limits: a scenario or flag beyond them is refused.
pub mod limits {
    use std::time::Duration;
    pub const MAX_DURATION: Duration = Duration::from_secs(3600);
    pub const MAX_WARMUP: Duration = Duration::from_secs(600);
    pub const MAX_REQUESTS: u64 = 1_000_000_000;
    pub const DEFAULT_MAX_REQUESTS: u64 = 50_000_000;
    pub const MAX_USERS: usize = 20_000;
    pub const MAX_RATE: f64 = 1_000_000.0;
    pub const MAX_THINK: Duration = Duration::from_secs(60);
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
    pub const MAX_BODY_BYTES: usize = 16 << 20;
    pub const MAX_STEPS: usize = 64;
}

/// How a request travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, the whole answer read.
    #[default]
    Http,
    /// HTTP/1.1 answered with server-sent events, read event by event.
    Sse,
    /// Blaze's WebSocket protocol on `/v1/ws`.
    Websocket,
}

/// A condition the run must meet; a failed one makes the run exit 3.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// A request's name, or absent for the whole run.
    #[serde(default)]
    pub request: Option<String>,
    pub metric: Metric,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    P50Ms,
    P90Ms,
    P99Ms,
    P999Ms,
    MaxMs,
    RatePerS,
    ErrorRatio,
    TtftP99Ms,
    /// The most connections open at once during the measurement.
    PeakConnections,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "model")]
pub enum Arrival {
    Closed {
        users: usize,
        #[serde(with = "crate::duration_ms")]
        think_time: Duration,
        think_jitter: f64,
        #[serde(with = "crate::duration_ms")]
        ramp_up: Duration,
    },
    Open {
        rate: f64,
        ramp_to: Option<f64>,
        connections: usize,
    },
}

impl Arrival {
    /// The most connections the run may open.
    pub fn connections(&self) -> usize {
        match self {
            Arrival::Closed { users, .. } => *users,
            Arrival::Open { connections, .. } => *connections,
        }
    }
}

/// One request of a step, compiled.
#[derive(Debug)]
pub struct Request {
    pub name: String,
    pub protocol: Protocol,
    pub method: String,
    pub path: Template,
    pub frame_type: String,
    pub headers: Vec<(String, Template)>,
    pub body: Option<Template>,
    pub auth: Auth,
    pub expect: u16,
    pub capture: Vec<(String, String)>,
}

#[derive(Debug)]
pub enum Auth {
    Key,
    None,
    Bearer(Template),
}

#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub weight: f64,
    /// Indexes into [`Scenario::requests`].
    pub requests: Vec<usize>,
}

#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub against_reference: bool,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    pub timeout: Duration,
    pub arrival: Arrival,
    pub variables: Vec<Variable>,
    pub requests: Vec<Request>,
    pub steps: Vec<Step>,
    pub thresholds: Vec<Threshold>,
}

/// What the command line changes in a scenario.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub duration: Option<Duration>,
    pub warmup: Option<Duration>,
    pub users: Option<usize>,
    pub rate: Option<f64>,
    pub connections: Option<usize>,
    pub max_requests: Option<u64>,
    /// `--var name=value`: replaces a variable of the scenario (or adds a
    /// fixed one).
    pub variables: Vec<(String, String)>,
}

/// Finds a scenario by bundled name or reads it from a path.
pub fn source(name_or_path: &str) -> Result<String, String> {
    if let Some((_, text)) = BUNDLED.iter().find(|(name, _)| *name == name_or_path) {
        return Ok((*text).to_owned());
    }
    std::fs::read_to_string(name_or_path).map_err(|error| {
        let names: Vec<&str> = BUNDLED.iter().map(|(name, _)| *name).collect();
        format!(
            "{name_or_path}: not a bundled scenario ({}) and not a readable file: {error}",
            names.join(", ")
        )
    })
}

impl Scenario {
    /// Parses, applies the overrides, and checks every limit; all the
    /// problems found are reported at once.
    pub fn parse(text: &str, overrides: &Overrides) -> Result<Self, String> {
        let documents =
            yaml_rust2::YamlLoader::load_from_str(text).map_err(|error| format!("YAML: {error}"))?;
        let document = documents.first().ok_or("the scenario file is empty")?;
        let json = yaml_to_json(document)?;
        let raw: RawScenario = serde_path_to_error::deserialize(json).map_err(|error| {
            let path = error.path().to_string();
            format!("{path}: {}", error.into_inner())
        })?;
        compile(raw, overrides)
    }
}
