//! Scenarios: the YAML files under `load/scenarios/`, parsed strictly
//! (unknown keys are errors), checked against the safety limits, and
//! compiled into what the engine runs: request templates, the arrival
//! model, the weighted step mix and the thresholds.

use std::time::Duration;

use serde::Deserialize;

use crate::template::{Template, Variable, VariableSpec};

mod error;
mod raw;

pub use self::error::{Problem, RequestError, ScenarioError};
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
pub fn source(name_or_path: &str) -> Result<String, ScenarioError> {
    if let Some((_, text)) = BUNDLED.iter().find(|(name, _)| *name == name_or_path) {
        return Ok((*text).to_owned());
    }
    std::fs::read_to_string(name_or_path)
        .map_err(|source| ScenarioError::NotFound { name_or_path: name_or_path.to_owned(), source })
}

impl Scenario {
    /// Parses, applies the overrides, and checks every limit; all the
    /// problems found are reported at once.
    pub fn parse(text: &str, overrides: &Overrides) -> Result<Self, ScenarioError> {
        let documents = yaml_rust2::YamlLoader::load_from_str(text)?;
        let document = documents.first().ok_or(ScenarioError::Empty)?;
        let json = yaml_to_json(document)?;
        let raw: RawScenario = serde_path_to_error::deserialize(json).map_err(|error| {
            let path = error.path().to_string();
            ScenarioError::Shape { path, source: error.into_inner() }
        })?;
        compile(raw, overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once_one_a_line() {
        let text = "name: x\nduration: 2h\narrival: { closed: { users: 0 } }\nsteps:\n  - name: s\n    weight: 0\n    request: { path: health }\n  - name: t\n    request: { path: '/{{nope}}' }\n";
        let error = Scenario::parse(text, &Overrides::default()).unwrap_err();
        assert!(matches!(&error, ScenarioError::Invalid(problems) if problems.len() == 5), "{error:?}");
        assert_eq!(
            error.to_string(),
            "steps.s.weight: must be a positive number\n\
             steps.s: s: path `health` must start with /\n\
             steps.t: `{{nope}}` is not a variable of the scenario nor captured before it\n\
             duration: 2h is over the limit of 1h\n\
             arrival.closed.users: 0 is not within 1..=20000"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_where_it_is() {
        let text = "name: x\nduration: 1s\narrival: { closed: { users: 1 } }\nsteps:\n  - name: x\n    request: { path: /health, colour: red }\n";
        let error = Scenario::parse(text, &Overrides::default()).unwrap_err();
        assert!(
            matches!(&error, ScenarioError::Shape { path, .. } if path == "steps[0].request.colour"),
            "{error:?}"
        );
        assert!(error.to_string().starts_with("steps[0].request.colour: unknown field `colour`"), "{error}");
    }

    #[test]
    fn a_missing_scenario_lists_the_bundled_ones() {
        let error = source("no-such-scenario").unwrap_err().to_string();
        assert!(error.starts_with("no-such-scenario: not a bundled scenario (baseline, health, "), "{error}");
    }
}
