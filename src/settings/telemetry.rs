//! The `telemetry` section (OpenTelemetry traces exported over OTLP) and
//! the `profiling` one (on-demand profiles for admins).

use serde::{Deserialize, Serialize};

use super::Settings;

/// Traces of requests and their stages, exported over OTLP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector: `http://host:4318` (http) or `http://host:4317`
    /// (grpc). Empty: no traces, and no span is made.
    pub otlp_endpoint: String,
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces recorded, 0 to 1; a request whose
    /// `traceparent` says sampled (or not) follows its caller.
    pub sampling_ratio: f64,
    /// Spans waiting for export, at most; more are dropped and counted.
    pub max_queued_spans: usize,
    /// The longest a finished span waits before its batch is sent.
    pub export_interval_ms: u64,
    /// `service.name` of the spans.
    pub service_name: String,
}

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// Protobuf over HTTP: `POST <endpoint>/v1/traces`.
    Http,
    /// gRPC (`TraceService/Export`).
    Grpc,
}

impl TelemetrySettings {
    pub fn traces_enabled(&self) -> bool {
        !self.otlp_endpoint.trim().is_empty()
    }
}

/// `/admin/profile/*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilingSettings {
    pub enabled: bool,
    /// The longest CPU profile one request may take.
    pub max_cpu_seconds: u64,
    /// jemalloc samples allocations from start-up for heap profiles
    /// (with `enabled` only): a stack walk per 512 KiB allocated.
    pub heap_sampling: bool,
}

impl Settings {
    pub(super) fn telemetry_problems(&self) -> Vec<(&'static str, String)> {
        let telemetry = &self.telemetry;
        let mut problems = Vec::new();
        if !(1..=600).contains(&self.profiling.max_cpu_seconds) {
            problems.push(("profiling.max_cpu_seconds", "must be 1 to 600".to_owned()));
        }
        let endpoint = telemetry.otlp_endpoint.trim();
        if !endpoint.is_empty() {
            match reqwest::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => problems.push((
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL (or empty: no traces)".to_owned(),
                )),
            }
        }
        if !(0.0..=1.0).contains(&telemetry.sampling_ratio) {
            problems.push(("telemetry.sampling_ratio", "must be 0 to 1".to_owned()));
        }
        if !(1..=1_000_000).contains(&telemetry.max_queued_spans) {
            problems.push(("telemetry.max_queued_spans", "must be 1 to 1000000".to_owned()));
        }
        if !(10..=60_000).contains(&telemetry.export_interval_ms) {
            problems.push(("telemetry.export_interval_ms", "must be 10 to 60000".to_owned()));
        }
        if telemetry.service_name.trim().is_empty() {
            problems.push(("telemetry.service_name", "must not be empty".to_owned()));
        }
        problems
    }
}
