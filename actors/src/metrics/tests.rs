use std::time::Duration;

use super::*;
use crate::BuildInfo;

fn telemetry(interval_ms: u64, retention_ms: u64) -> std::sync::Arc<Telemetry> {
    let build = BuildInfo { version: "test", git_sha: "test", rustc: "test", profile: "test" };
    Telemetry::install(&build, Duration::from_millis(interval_ms), Duration::from_millis(retention_ms))
        .expect("recorder")
}

#[test]
fn rollups_give_rates_error_shares_and_percentiles_per_route() {
    let telemetry = telemetry(1000, 10_000);
    for millis in 1..=100 {
        telemetry.record_request("GET", "/rollup-test/{id}", 200, Duration::from_millis(millis));
    }
    telemetry.record_request("GET", "/rollup-test/{id}", 503, Duration::from_millis(1));
    telemetry.record_request("POST", "/rollup-test/other", 404, Duration::from_millis(1));
    telemetry.roll();

    let summary = telemetry.summary(None);
    let last = summary.intervals.last().expect("one rollup");
    let route = &last.routes["/rollup-test/{id}"];
    assert_eq!(route.requests, 101);
    assert!((route.server_error_rate - 1.0 / 101.0).abs() < 1e-9);
    assert!((49.0..=51.5).contains(&route.p50_ms), "p50 {}", route.p50_ms);
    assert!((98.0..=100.5).contains(&route.p99_ms), "p99 {}", route.p99_ms);
    assert_eq!(last.routes["/rollup-test/other"].client_error_rate, 1.0);
    assert!(last.total.requests >= 102);

    let rendered = telemetry.render();
    assert!(rendered
        .contains("blaze_http_requests_total{method=\"GET\",route=\"/rollup-test/{id}\",status=\"503\"} 1"));
    assert!(rendered.contains("blaze_http_request_duration_seconds_bucket"));
    assert!(rendered.contains("blaze_process_resident_memory_bytes"));
}

#[test]
fn history_is_bounded_by_retention_over_interval() {
    let telemetry = telemetry(100, 350);
    assert_eq!(telemetry.history_capacity(), 4);
    for _ in 0..10 {
        telemetry.roll();
    }
    assert_eq!(telemetry.summary(None).intervals.len(), 4);
    assert_eq!(telemetry.summary(Some(2)).intervals.len(), 2);
}
