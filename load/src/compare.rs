//! `blaze-load compare BASE.json NEW.json`: the differences between two
//! reports of the same scenario, and whether any is a regression beyond
//! the allowed share (throughput down, latency or time to first token up,
//! or more errors).

use std::fmt::Write as _;

use crate::report::Report;
use crate::stats::Summary;

/// Why two reports cannot be compared, or a limit is not understood.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("`{text}` is not a share (say 10%)")]
    NotAShare { text: String },
    #[error("`{text}` is not within 0% and 1000%")]
    ShareOutOfRange { text: String },
    #[error("the reports are of different scenarios ({base} and {new})")]
    DifferentScenarios { base: String, new: String },
}

/// One figure of one request in both runs.
#[derive(Debug, Clone)]
pub struct Difference {
    pub request: String,
    pub metric: &'static str,
    pub base: f64,
    pub new: f64,
    /// Positive: worse.
    pub worse_by: f64,
    pub regression: bool,
}

#[derive(Debug)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    pub missing: Vec<String>,
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        !self.missing.is_empty() || self.differences.iter().any(|difference| difference.regression)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "{:<22} {:<22} {:>12} {:>12} {:>9}", "request", "metric", "base", "new", "change");
        for difference in &self.differences {
            let change = if difference.metric == "error_ratio" {
                format!("{:+.2} pt", difference.worse_by * 100.0)
            } else {
                format!("{:+.1}%", signed_change(difference) * 100.0)
            };
            let _ = writeln!(
                out,
                "{:<22} {:<22} {:>12.3} {:>12.3} {:>9} {}",
                difference.request,
                difference.metric,
                difference.base,
                difference.new,
                change,
                if difference.regression { "REGRESSION" } else { "" }
            );
        }
        for request in &self.missing {
            let _ = writeln!(out, "{request:<22} missing from the new run: REGRESSION");
        }
        let _ = writeln!(out, "{}", if self.regressed() { "regression" } else { "no regression" });
        out
    }
}

fn signed_change(difference: &Difference) -> f64 {
    if difference.base == 0.0 {
        0.0
    } else {
        (difference.new - difference.base) / difference.base
    }
}

/// `10%`, `10` or `0.1` -> 0.1.
pub fn parse_share(text: &str) -> Result<f64, CompareError> {
    let trimmed = text.trim();
    let (number, percent) = match trimmed.strip_suffix('%') {
        Some(number) => (number, true),
        None => (trimmed, false),
    };
    let value: f64 = number.trim().parse().map_err(|_| CompareError::NotAShare { text: text.to_owned() })?;
    let share = if percent || value > 1.0 { value / 100.0 } else { value };
    if !(0.0..=10.0).contains(&share) {
        return Err(CompareError::ShareOutOfRange { text: text.to_owned() });
    }
    Ok(share)
}

/// Higher is better for rates; lower for latencies.
fn figures(summary: &Summary) -> Vec<(&'static str, f64, bool)> {
    let mut figures = vec![
        ("rate_per_s", summary.rate_per_s, true),
        ("latency_p50_ms", summary.latency_ms.p50, false),
        ("latency_p99_ms", summary.latency_ms.p99, false),
    ];
    if let Some(stream) = &summary.stream {
        figures.push(("ttft_p50_ms", stream.ttft_ms.p50, false));
        figures.push(("tokens_per_s_p50", stream.tokens_per_s.p50, true));
    }
    figures
}

/// Compares every request of the base run (and the whole run) with the
/// new one. `max_regression` is a share (0.1); `max_error_increase` is in
/// points of error ratio (0.001 = 0.1 point).
pub fn compare(base: &Report, new: &Report, max_regression: f64, max_error_increase: f64) -> Comparison {
    let mut differences = Vec::new();
    let mut missing = Vec::new();
    for base_summary in base.requests.iter().chain(std::iter::once(&base.total)) {
        let new_summary = if base_summary.name == "all" && std::ptr::eq(base_summary, &base.total) {
            Some(&new.total)
        } else {
            new.requests.iter().find(|summary| summary.name == base_summary.name)
        };
        let Some(new_summary) = new_summary else {
            missing.push(base_summary.name.clone());
            continue;
        };
        let new_figures = figures(new_summary);
        for (metric, base_value, higher_is_better) in figures(base_summary) {
            let Some((_, new_value, _)) = new_figures.iter().find(|(name, _, _)| *name == metric) else {
                missing.push(format!("{} {metric}", base_summary.name));
                continue;
            };
            let change = if base_value == 0.0 { 0.0 } else { (new_value - base_value) / base_value };
            let worse_by = if higher_is_better { -change } else { change };
            differences.push(Difference {
                request: base_summary.name.clone(),
                metric,
                base: base_value,
                new: *new_value,
                worse_by,
                regression: worse_by > max_regression,
            });
        }
        let worse_by = new_summary.error_ratio - base_summary.error_ratio;
        differences.push(Difference {
            request: base_summary.name.clone(),
            metric: "error_ratio",
            base: base_summary.error_ratio,
            new: new_summary.error_ratio,
            worse_by,
            regression: worse_by > max_error_increase,
        });
    }
    Comparison { differences, missing }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_as_percent_or_fraction() {
        assert_eq!(parse_share("10%").unwrap(), 0.1);
        assert_eq!(parse_share("0.25").unwrap(), 0.25);
        assert_eq!(parse_share("5").unwrap(), 0.05);
        assert!(matches!(parse_share("ten"), Err(CompareError::NotAShare { .. })));
        assert!(matches!(parse_share("-3%"), Err(CompareError::ShareOutOfRange { .. })));
    }
}
