//! The report of a run: the JSON document (its schema is
//! `load/report.schema.json`), the thresholds judged, the ratios to the
//! baseline, the terminal table, and the self-contained HTML page with its
//! plots (inline SVG drawn by plotters: it opens offline).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::Measured;
use crate::scenario::{Metric, Scenario, Threshold};
use crate::stats::{Summary, Tick};

pub const SCHEMA: &str = "blaze-load/report/1";

/// Why a report cannot be read, drawn or written; `path` is its file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a blaze-load report: {source}")]
    NotAReport { path: PathBuf, source: serde_json::Error },
    /// Reports of another schema are refused rather than half-read: a
    /// comparison of figures that mean different things would mislead.
    #[error("{path}: schema {schema} is not {}", SCHEMA)]
    Schema { path: PathBuf, schema: String },
    #[error("cannot serialize the report: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("drawing a plot: {0}")]
    Plot(#[from] plotters::drawing::DrawingAreaErrorKind<std::io::Error>),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdResult {
    pub request: Option<String>,
    pub metric: Metric,
    /// `max` or `min`.
    pub bound: String,
    pub limit: f64,
    /// None where there was nothing to measure (no streams, say).
    pub value: Option<f64>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratio {
    pub request: String,
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
}

/// The machine's ceiling, measured in the same run on the bare reference
/// server, and each request's figures as a ratio to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub scenario: String,
    pub target: String,
    pub rate_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ratios: Vec<Ratio>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema: String,
    pub scenario: String,
    pub description: String,
    pub target: String,
    pub started_at: String,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub measured_s: f64,
    pub arrival: serde_json::Value,
    pub max_requests: u64,
    pub stopped_by: String,
    pub unfinished: u64,
    pub not_sent: u64,
    pub peak_connections: u64,
    pub total: Summary,
    pub requests: Vec<Summary>,
    pub timeline: Vec<Tick>,
    pub thresholds: Vec<ThresholdResult>,
    pub passed: bool,
    pub baseline: Option<Baseline>,
}

fn metric_value(metric: Metric, summary: &Summary, peak_connections: u64) -> f64 {
    match metric {
        Metric::P50Ms => summary.latency_ms.p50,
        Metric::P90Ms => summary.latency_ms.p90,
        Metric::P99Ms => summary.latency_ms.p99,
        Metric::P999Ms => summary.latency_ms.p99_9,
        Metric::MaxMs => summary.latency_ms.max,
        Metric::RatePerS => summary.rate_per_s,
        Metric::ErrorRatio => summary.error_ratio,
        Metric::TtftP99Ms => summary.stream.as_ref().map_or(f64::NAN, |stream| stream.ttft_ms.p99),
        Metric::PeakConnections => peak_connections as f64,
    }
}

fn judge(threshold: &Threshold, report: &Report) -> ThresholdResult {
    let summary = match &threshold.request {
        Some(name) => report.requests.iter().find(|summary| &summary.name == name).unwrap_or(&report.total),
        None => &report.total,
    };
    let value = metric_value(threshold.metric, summary, report.peak_connections);
    // A threshold over no requests at all is not met.
    let value = (summary.requests > 0 && value.is_finite()).then_some(value);
    let (bound, limit, passed) = match (threshold.max, threshold.min) {
        (Some(max), _) => ("max", max, value.is_some_and(|value| value <= max)),
        (None, Some(min)) => ("min", min, value.is_some_and(|value| value >= min)),
        (None, None) => ("max", 0.0, false),
    };
    ThresholdResult {
        request: threshold.request.clone(),
        metric: threshold.metric,
        bound: bound.to_owned(),
        limit,
        value,
        passed,
    }
}

impl Report {
    pub fn new(scenario: &Scenario, target: &str, started_at: String, measured: Measured) -> Self {
        let mut report = Report {
            schema: SCHEMA.to_owned(),
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            target: target.to_owned(),
            started_at,
            warmup_s: scenario.warmup.as_secs_f64(),
            duration_s: scenario.duration.as_secs_f64(),
            measured_s: measured.measured_s,
            arrival: serde_json::to_value(&scenario.arrival).unwrap_or_default(),
            max_requests: scenario.max_requests,
            stopped_by: measured.stopped_by.to_owned(),
            unfinished: measured.unfinished,
            not_sent: measured.not_sent,
            peak_connections: measured.peak_connections,
            total: measured.total,
            requests: measured.requests,
            timeline: measured.timeline,
            thresholds: Vec::new(),
            passed: true,
            baseline: None,
        };
        report.thresholds = scenario.thresholds.iter().map(|threshold| judge(threshold, &report)).collect();
        report.passed = report.thresholds.iter().all(|result| result.passed);
        report
    }

    /// Reads a JSON report written by `run --json`.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ReportError::Read { path: path.to_owned(), source })?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|source| ReportError::NotAReport { path: path.to_owned(), source })?;
        if report.schema != SCHEMA {
            return Err(ReportError::Schema { path: path.to_owned(), schema: report.schema });
        }
        Ok(report)
    }

    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).map_err(ReportError::Serialize)?;
        std::fs::write(path, text).map_err(|source| ReportError::Write { path: path.to_owned(), source })
    }

    pub fn write_html(&self, path: &Path) -> Result<(), ReportError> {
        let page = html(self)?;
        std::fs::write(path, page).map_err(|source| ReportError::Write { path: path.to_owned(), source })
    }

    pub fn set_baseline(&mut self, baseline: &Report) {
        let ceiling = &baseline.total;
        let ratio = |value: f64, reference: f64| if reference > 0.0 { value / reference } else { 0.0 };
        let ratios = self
            .requests
            .iter()
            .chain(std::iter::once(&self.total))
            .map(|summary| Ratio {
                request: summary.name.clone(),
                rate: ratio(summary.rate_per_s, ceiling.rate_per_s),
                p50: ratio(summary.latency_ms.p50, ceiling.latency_ms.p50),
                p99: ratio(summary.latency_ms.p99, ceiling.latency_ms.p99),
            })
            .collect();
        self.baseline = Some(Baseline {
            scenario: baseline.scenario.clone(),
            target: baseline.target.clone(),
            rate_per_s: ceiling.rate_per_s,
            p50_ms: ceiling.latency_ms.p50,
            p99_ms: ceiling.latency_ms.p99,
            ratios,
        });
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ =
            writeln!(
            out,
            "{} against {}: {:.1} s measured after {:.1} s of warm-up, stopped by {}; peak connections {}",
            self.scenario, self.target, self.measured_s, self.warmup_s, self.stopped_by, self.peak_connections
        );
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "request",
            "requests",
            "rate/s",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "sent",
            "received"
        );
        for summary in self.requests.iter().chain(std::iter::once(&self.total)) {
            let latency = &summary.latency_ms;
            let _ = writeln!(
                out,
                "{:<22} {:>9} {:>10.1} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>10}",
                summary.name,
                summary.requests,
                summary.rate_per_s,
                summary.errors,
                latency.p50,
                latency.p90,
                latency.p99,
                latency.p99_9,
                latency.max,
                bytes(summary.bytes_sent),
                bytes(summary.bytes_received)
            );
        }
        for summary in &self.requests {
            if let Some(stream) = &summary.stream {
                let _ = writeln!(
                    out,
                    "{:<22} stream: {} tokens; time to first token p50 {:.2} ms p99 {:.2} ms; between tokens p50 {:.2} ms p99 {:.2} ms; {:.1} tokens/s a stream (p50)",
                    summary.name,
                    stream.tokens,
                    stream.ttft_ms.p50,
                    stream.ttft_ms.p99,
                    stream.inter_token_ms.p50,
                    stream.inter_token_ms.p99,
                    stream.tokens_per_s.p50
                );
            }
            for (kind, count) in &summary.errors_by_kind {
                let _ = writeln!(out, "{:<22} error {kind}: {count}", summary.name);
            }
        }
        if self.unfinished + self.not_sent > 0 {
            let _ = writeln!(
                out,
                "cut off at the end: {} in flight, {} scheduled but never sent",
                self.unfinished, self.not_sent
            );
        }
        if let Some(baseline) = &self.baseline {
            let _ = writeln!(
                out,
                "baseline ({} on {}): {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
                baseline.scenario, baseline.target, baseline.rate_per_s, baseline.p50_ms, baseline.p99_ms
            );
            for ratio in &baseline.ratios {
                let _ = writeln!(
                    out,
                    "  {:<20} rate {:.3}x   p50 {:.2}x   p99 {:.2}x the baseline",
                    ratio.request, ratio.rate, ratio.p50, ratio.p99
                );
            }
        }
        for result in &self.thresholds {
            let _ = writeln!(
                out,
                "threshold {} {:?} {} {}: {} -> {}",
                result.request.as_deref().unwrap_or("all"),
                result.metric,
                if result.bound == "max" { "<=" } else { ">=" },
                result.limit,
                result.value.map_or_else(|| "nothing measured".to_owned(), round),
                if result.passed { "pass" } else { "FAIL" }
            );
        }
        out
    }
}

fn round(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

fn bytes(count: u64) -> String {
    match count {
        0..1024 => format!("{count} B"),
        1024..1_048_576 => format!("{:.1} KiB", count as f64 / 1024.0),
        _ => format!("{:.1} MiB", count as f64 / 1_048_576.0),
    }
}

pub use crate::html::html;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_cannot_be_read_names_its_file() {
        let path = Path::new("/nonexistent/blaze-load/report.json");
        let error = Report::read(path).unwrap_err();
        assert!(matches!(&error, ReportError::Read { .. }), "{error:?}");
        assert!(
            error.to_string().starts_with("cannot read /nonexistent/blaze-load/report.json: "),
            "{error}"
        );
    }
}
