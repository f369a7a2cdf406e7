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
    // Two workers' recorders: the rollup merges them by route.
    let (first, second) = (telemetry.recorder(), telemetry.recorder());
    let pattern = || Some("/rollup-test/{id}".to_owned());
    let (on_first, on_second) =
        (first.route("/rollup-test/1", pattern), second.route("/rollup-test/2", pattern));
    for millis in 1..=100 {
        let (recorder, route) = if millis % 2 == 0 { (&first, on_first) } else { (&second, on_second) };
        recorder.record(route, "GET", 200, Duration::from_millis(millis));
    }
    first.record(on_first, "GET", 503, Duration::from_millis(1));
    let other = second.route("/rollup-test/other", || Some("/rollup-test/other".to_owned()));
    second.record(other, "POST", 404, Duration::from_millis(1));
    assert_eq!(first.route("/rollup-test/1", || panic!("cached, not looked up again")), on_first);
    assert_eq!(&*first.route_name(on_first), "/rollup-test/{id}");
    let mut lookups = 0;
    for _ in 0..2 {
        let unknown = first.route("/no/such/path", || {
            lookups += 1;
            None
        });
        assert_eq!(&*first.route_name(unknown), UNMATCHED_ROUTE);
    }
    assert_eq!(lookups, 2, "unknown paths are looked up each time, never remembered");
    let in_flight = first.request_started();
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
    assert!(rendered.contains("# TYPE blaze_http_request_duration_seconds histogram"));
    assert!(rendered.contains(r#"blaze_http_request_duration_seconds_bucket{method="GET",route="/rollup-test/{id}",le="0.05"} 51"#), "{rendered}");
    assert!(rendered.contains(
        r#"blaze_http_request_duration_seconds_bucket{method="GET",route="/rollup-test/{id}",le="+Inf"} 101"#
    ));
    assert!(rendered.contains(
        r#"blaze_http_request_duration_seconds_count{method="GET",route="/rollup-test/{id}"} 101"#
    ));
    assert!(rendered
        .contains(r#"blaze_http_requests_total{method="GET",route="/rollup-test/{id}",status="200"} 100"#));
    assert!(rendered.contains("blaze_process_resident_memory_bytes"));
    assert!(rendered.contains("blaze_http_requests_in_flight 1"));
    drop(in_flight);
    assert!(telemetry.render().contains("blaze_http_requests_in_flight 0"));
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
