//! A scenario file as written (the `Raw*` types serde reads, unknown keys
//! refused) and its compilation into a [`Scenario`]: durations parsed,
//! limits checked, templates compiled, every problem reported at once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    /// `reference`: the scenario runs against the bare reference server
    /// that blaze-load starts itself (the machine's ceiling).
    #[serde(default)]
    target: Option<String>,
    #[serde(default = "default_warmup")]
    warmup: String,
    duration: String,
    #[serde(default)]
    max_requests: Option<u64>,
    #[serde(default = "default_timeout")]
    timeout: String,
    arrival: RawArrival,
    #[serde(default)]
    variables: BTreeMap<String, VariableSpec>,
    steps: Vec<RawStep>,
    #[serde(default)]
    thresholds: Vec<Threshold>,
}

fn default_warmup() -> String {
    "0s".to_owned()
}

fn default_timeout() -> String {
    "30s".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawArrival {
    /// N virtual users, each sending its next request when the last one
    /// ended (after the think time).
    Closed {
        users: usize,
        #[serde(default)]
        think_time: Option<String>,
        /// Each think time drawn uniformly within this share of it (0.5:
        /// 1 s to 3 s for 2 s), so users do not move in lockstep.
        #[serde(default)]
        think_jitter: Option<f64>,
        #[serde(default)]
        ramp_up: Option<String>,
    },
    /// Requests at a rate whatever the answers do: constant, or ramped
    /// linearly to `ramp_to` over the measured duration.
    Open {
        rate: f64,
        #[serde(default)]
        ramp_to: Option<f64>,
        #[serde(default = "default_connections")]
        connections: usize,
    },
}

fn default_connections() -> usize {
    256
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    #[serde(default = "default_weight")]
    weight: f64,
    #[serde(default)]
    request: Option<RawRequest>,
    /// Several requests one after another (a flow): captures of one feed
    /// the next.
    #[serde(default)]
    sequence: Vec<RawRequest>,
}

fn default_weight() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    /// For `protocol: websocket`: the frame's type (`chat.completions`...).
    #[serde(default, rename = "type")]
    frame_type: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A mapping (sent as JSON) or a string, with `{{variables}}`.
    #[serde(default)]
    body: Option<Value>,
    /// `key` (the default: the run's key as a bearer token), `none`, or a
    /// template such as `{{access_token}}`.
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    expect: Option<u16>,
    /// Variable name -> JSON pointer into the answer.
    #[serde(default)]
    capture: BTreeMap<String, String>,
}

/// Parses YAML into JSON values: serde then checks the shape.
pub(super) fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Result<Value, ScenarioError> {
    use yaml_rust2::Yaml;
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(value) => Value::Bool(*value),
        Yaml::Integer(value) => Value::from(*value),
        Yaml::Real(text) => {
            let number: f64 = text.parse().map_err(|_| ScenarioError::NotANumber { text: text.clone() })?;
            serde_json::Number::from_f64(number)
                .map(Value::Number)
                .ok_or_else(|| ScenarioError::NotFinite { text: text.clone() })?
        }
        Yaml::String(text) => Value::String(text.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let key = match key {
                    Yaml::String(key) => key.clone(),
                    Yaml::Integer(key) => key.to_string(),
                    other => return Err(ScenarioError::MappingKey { key: other.clone() }),
                };
                object.insert(key, yaml_to_json(value)?);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err(ScenarioError::UnsupportedYaml),
    })
}

fn duration(key: &'static str, text: &str) -> Result<Duration, Problem> {
    humantime::parse_duration(text).map_err(|source| Problem::NotADuration {
        key,
        text: text.to_owned(),
        source,
    })
}

fn at_most(key: &'static str, value: Duration, limit: Duration) -> Result<Duration, Problem> {
    if value > limit {
        return Err(Problem::OverLimit { key, value, limit });
    }
    Ok(value)
}

pub(super) fn compile(raw: RawScenario, overrides: &Overrides) -> Result<Scenario, ScenarioError> {
    let mut problems = Vec::new();
    let warmup = overrides.warmup.map_or_else(|| duration("warmup", &raw.warmup), Ok);
    let warmup = warmup.and_then(|value| at_most("warmup", value, limits::MAX_WARMUP));
    let run_for = overrides.duration.map_or_else(|| duration("duration", &raw.duration), Ok);
    let run_for =
        run_for.and_then(|value| at_most("duration", value, limits::MAX_DURATION)).and_then(|value| {
            let minimum = Duration::from_millis(100);
            if value < minimum {
                Err(Problem::DurationTooShort { minimum })
            } else {
                Ok(value)
            }
        });
    let timeout =
        duration("timeout", &raw.timeout).and_then(|value| at_most("timeout", value, limits::MAX_TIMEOUT));
    let max_requests = overrides.max_requests.or(raw.max_requests).unwrap_or(limits::DEFAULT_MAX_REQUESTS);
    if max_requests == 0 || max_requests > limits::MAX_REQUESTS {
        problems.push(Problem::MaxRequests { max_requests, limit: limits::MAX_REQUESTS });
    }
    let arrival = arrival(raw.arrival, overrides);
    let mut variables = Vec::new();
    for (name, spec) in raw.variables {
        if overrides.variables.iter().any(|(given, _)| *given == name) {
            continue;
        }
        match Variable::compile(&name, spec) {
            Ok(variable) => variables.push(variable),
            Err(problem) => problems.push(Problem::Variable(problem)),
        }
    }
    for (name, value) in &overrides.variables {
        variables.push(Variable::fixed(name, value));
    }
    let names: Vec<String> = variables.iter().map(|variable| variable.name.clone()).collect();
    let mut requests = Vec::new();
    let mut steps = Vec::new();
    if raw.steps.is_empty() || raw.steps.len() > limits::MAX_STEPS {
        problems.push(Problem::StepCount { limit: limits::MAX_STEPS });
    }
    for step in raw.steps {
        if !(step.weight.is_finite() && step.weight > 0.0) {
            problems.push(Problem::StepWeight { step: step.name.clone() });
        }
        let raw_requests = match (step.request, step.sequence.is_empty()) {
            (Some(request), true) => vec![request],
            (None, false) => step.sequence,
            _ => {
                problems.push(Problem::StepRequests { step: step.name });
                continue;
            }
        };
        let single = raw_requests.len() == 1;
        let mut indexes = Vec::new();
        for (position, raw_request) in raw_requests.into_iter().enumerate() {
            let name = match (&raw_request.name, single) {
                (Some(name), _) => name.clone(),
                (None, true) => step.name.clone(),
                (None, false) => format!("{}.{position}", step.name),
            };
            if requests.iter().any(|request: &Request| request.name == name) {
                problems.push(Problem::DuplicateRequest { step: step.name.clone(), request: name });
                continue;
            }
            let mut known = names.clone();
            for earlier in &indexes {
                let earlier: &Request = &requests[*earlier];
                known.extend(earlier.capture.iter().map(|(variable, _)| variable.clone()));
            }
            // Captures of a flow live with the virtual user: a later run of
            // the flow may use them too.
            for request in &requests {
                known.extend(request.capture.iter().map(|(variable, _)| variable.clone()));
            }
            match compile_request(name, raw_request, &known) {
                Ok(request) => {
                    indexes.push(requests.len());
                    requests.push(request);
                }
                Err(source) => problems.push(Problem::Request { step: step.name.clone(), source }),
            }
        }
        steps.push(Step { name: step.name, weight: step.weight, requests: indexes });
    }
    for threshold in &raw.thresholds {
        if threshold.min.is_none() == threshold.max.is_none() {
            problems.push(Problem::ThresholdBounds { metric: threshold.metric });
        }
        if let Some(name) = &threshold.request {
            if !requests.iter().any(|request| &request.name == name) {
                problems.push(Problem::ThresholdRequest { request: name.clone() });
            }
        }
    }
    let against_reference = match raw.target.as_deref() {
        None => false,
        Some("reference") => true,
        Some(other) => {
            problems.push(Problem::UnknownTarget { target: other.to_owned() });
            false
        }
    };
    let (warmup, run_for, timeout, arrival) = match (warmup, run_for, timeout, arrival) {
        (Ok(warmup), Ok(run_for), Ok(timeout), Ok(arrival)) if problems.is_empty() => {
            (warmup, run_for, timeout, arrival)
        }
        (warmup, run_for, timeout, arrival) => {
            problems.extend(warmup.err());
            problems.extend(run_for.err());
            problems.extend(timeout.err());
            problems.extend(arrival.err());
            return Err(ScenarioError::Invalid(problems));
        }
    };
    Ok(Scenario {
        name: raw.name,
        description: raw.description,
        against_reference,
        warmup,
        duration: run_for,
        max_requests,
        timeout,
        arrival,
        variables,
        requests,
        steps,
        thresholds: raw.thresholds,
    })
}

fn arrival(raw: RawArrival, overrides: &Overrides) -> Result<Arrival, Problem> {
    let users_ok = |key: &'static str, users: usize| {
        if users == 0 || users > limits::MAX_USERS {
            Err(Problem::Users { key, users, limit: limits::MAX_USERS })
        } else {
            Ok(users)
        }
    };
    let rate_ok = |key: &'static str, rate: f64| {
        if !(rate.is_finite() && rate > 0.0 && rate <= limits::MAX_RATE) {
            Err(Problem::Rate { key, rate, limit: limits::MAX_RATE })
        } else {
            Ok(rate)
        }
    };
    match raw {
        RawArrival::Closed { users, think_time, think_jitter, ramp_up } => {
            let users = users_ok("arrival.closed.users", overrides.users.unwrap_or(users))?;
            let think_time = duration("arrival.closed.think_time", think_time.as_deref().unwrap_or("0s"))?;
            let think_time = at_most("arrival.closed.think_time", think_time, limits::MAX_THINK)?;
            let ramp_up = duration("arrival.closed.ramp_up", ramp_up.as_deref().unwrap_or("0s"))?;
            let ramp_up = at_most("arrival.closed.ramp_up", ramp_up, limits::MAX_WARMUP)?;
            let think_jitter = think_jitter.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&think_jitter) {
                return Err(Problem::ThinkJitter { think_jitter });
            }
            Ok(Arrival::Closed { users, think_time, think_jitter, ramp_up })
        }
        RawArrival::Open { rate, ramp_to, connections } => {
            let rate = rate_ok("arrival.open.rate", overrides.rate.unwrap_or(rate))?;
            let ramp_to = ramp_to.map(|to| rate_ok("arrival.open.ramp_to", to)).transpose()?;
            let connections = users_ok(
                "arrival.open.connections",
                overrides.connections.or(overrides.users).unwrap_or(connections),
            )?;
            Ok(Arrival::Open { rate, ramp_to, connections })
        }
    }
}

fn compile_request(name: String, raw: RawRequest, known: &[String]) -> Result<Request, RequestError> {
    let template = |text: &str, json_strings: bool| Template::parse(text, known, json_strings);
    let body = match raw.body {
        None => None,
        Some(Value::String(text)) => Some(template(&text, false)?),
        Some(value) => Some(template(&value.to_string(), true)?),
    };
    if let Some(body) = &body {
        if body.literal_len() > limits::MAX_BODY_BYTES {
            return Err(RequestError::BodyTooLarge { request: name, limit: limits::MAX_BODY_BYTES });
        }
    }
    let protocol = raw.protocol;
    let path = match (protocol, raw.path) {
        (Protocol::Websocket, Some(path)) => path,
        (Protocol::Websocket, None) => "/v1/ws".to_owned(),
        (_, Some(path)) if path.starts_with('/') => path,
        (_, Some(path)) => return Err(RequestError::RelativePath { request: name, path }),
        (_, None) => return Err(RequestError::NoPath { request: name }),
    };
    let frame_type = match (protocol, raw.frame_type) {
        (Protocol::Websocket, Some(kind)) => kind,
        (Protocol::Websocket, None) => return Err(RequestError::NoFrameType { request: name }),
        (_, Some(_)) => return Err(RequestError::FrameTypeOutsideWebsocket { request: name }),
        (_, None) => String::new(),
    };
    let method = raw.method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.to_owned());
    if !["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"].contains(&method.as_str()) {
        return Err(RequestError::Method { request: name, method });
    }
    let mut headers = Vec::new();
    for (header, value) in raw.headers {
        if header.bytes().any(|byte| !(byte.is_ascii_alphanumeric() || byte == b'-')) {
            return Err(RequestError::HeaderName { request: name, header });
        }
        let lower = header.to_ascii_lowercase();
        if ["content-length", "host", "connection", "transfer-encoding"].contains(&lower.as_str()) {
            return Err(RequestError::DriverHeader { request: name, header });
        }
        headers.push((header, template(&value, false)?));
    }
    let auth = match raw.auth.as_deref() {
        None | Some("key") => Auth::Key,
        Some("none") => Auth::None,
        Some(token) => Auth::Bearer(template(token, false)?),
    };
    for (variable, pointer) in &raw.capture {
        if !pointer.starts_with('/') {
            return Err(RequestError::CapturePointer {
                request: name,
                variable: variable.clone(),
                pointer: pointer.clone(),
            });
        }
    }
    Ok(Request {
        name,
        protocol,
        method,
        path: template(&path, false)?,
        frame_type,
        headers,
        body,
        auth,
        expect: raw.expect.unwrap_or(200),
        capture: raw.capture.into_iter().collect(),
    })
}
