//! What is wrong with a scenario: where its text was looked for, its YAML,
//! its shape, and each value the compilation refuses. Compilation goes on
//! past a refused value, so a scenario's author sees every problem at once.

use std::time::Duration;

use super::{Metric, BUNDLED};
use crate::template::{TemplateError, VariableError};

/// Why a scenario cannot be found, read or compiled.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(
        "{name_or_path}: not a bundled scenario ({}) and not a readable file: {source}",
        bundled_names()
    )]
    NotFound { name_or_path: String, source: std::io::Error },
    #[error("YAML: {0}")]
    Yaml(#[from] yaml_rust2::ScanError),
    #[error("the scenario file is empty")]
    Empty,
    #[error("{text} is not a number")]
    NotANumber { text: String },
    #[error("{text} is not finite")]
    NotFinite { text: String },
    #[error("a mapping key must be a string, not {key:?}")]
    MappingKey { key: yaml_rust2::Yaml },
    #[error("unsupported YAML (an alias or a bad value)")]
    UnsupportedYaml,
    /// The document is not shaped as a scenario (an unknown key, a missing
    /// one, a value of the wrong type); `path` is where in the document.
    #[error("{path}: {source}")]
    Shape { path: String, source: serde_json::Error },
    /// Every problem found, one a line.
    #[error("{}", lines(.0))]
    Invalid(Vec<Problem>),
}

/// One value of a well-shaped scenario that is refused.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{key}: `{text}` is not a duration ({source}); say 10s, 500ms, 2m")]
    NotADuration { key: &'static str, text: String, source: humantime::DurationError },
    #[error("{key}: {} is over the limit of {}", human(.value), human(.limit))]
    OverLimit { key: &'static str, value: Duration, limit: Duration },
    #[error("duration: at least {}", human(.minimum))]
    DurationTooShort { minimum: Duration },
    #[error("max_requests: {max_requests} is not within 1..={limit}")]
    MaxRequests { max_requests: u64, limit: u64 },
    #[error("{key}: {users} is not within 1..={limit}")]
    Users { key: &'static str, users: usize, limit: usize },
    #[error("{key}: {rate} requests/s is not within (0, {limit}]")]
    Rate { key: &'static str, rate: f64, limit: f64 },
    #[error("arrival.closed.think_jitter: {think_jitter} is not within 0..=1")]
    ThinkJitter { think_jitter: f64 },
    #[error("steps: between 1 and {limit} steps")]
    StepCount { limit: usize },
    #[error("steps.{step}.weight: must be a positive number")]
    StepWeight { step: String },
    #[error("steps.{step}: give either `request` or a non-empty `sequence`")]
    StepRequests { step: String },
    #[error("steps.{step}: the request name `{request}` is used twice")]
    DuplicateRequest { step: String, request: String },
    #[error("steps.{step}: {source}")]
    Request { step: String, source: RequestError },
    #[error("thresholds: {metric:?} needs exactly one of min and max")]
    ThresholdBounds { metric: Metric },
    #[error("thresholds: no request is named `{request}`")]
    ThresholdRequest { request: String },
    #[error("target: `{target}` is not known (only `reference`; give other targets with --target)")]
    UnknownTarget { target: String },
    #[error(transparent)]
    Variable(#[from] VariableError),
}

/// Why one request of a step is refused; `request` is its name.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{request}: the body is over {limit} bytes")]
    BodyTooLarge { request: String, limit: usize },
    #[error("{request}: path `{path}` must start with /")]
    RelativePath { request: String, path: String },
    #[error("{request}: a path is needed")]
    NoPath { request: String },
    #[error("{request}: a websocket request needs `type`")]
    NoFrameType { request: String },
    #[error("{request}: `type` is for websocket requests")]
    FrameTypeOutsideWebsocket { request: String },
    #[error("{request}: method `{method}` is not supported")]
    Method { request: String, method: String },
    #[error("{request}: `{header}` is not a header name")]
    HeaderName { request: String, header: String },
    /// The drivers write these to frame the request; a second value from
    /// the scenario would contradict them.
    #[error("{request}: the driver sets `{header}` itself")]
    DriverHeader { request: String, header: String },
    #[error("{request}: capture `{variable}`: `{pointer}` is not a JSON pointer (like /access_token)")]
    CapturePointer { request: String, variable: String, pointer: String },
}

fn bundled_names() -> String {
    let names: Vec<&str> = BUNDLED.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

fn human(duration: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(*duration)
}

fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}
