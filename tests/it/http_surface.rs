//! The HTTP surface of the real binary: endpoints, errors, limits,
//! compression, metrics and logs.

use std::io::Read;
use std::time::Duration;

use crate::common::{client, expect_error, Server};

#[tokio::test]
async fn health_endpoints_and_their_aliases_answer() {
    let server = Server::start(&[], &[]).await;
    let client = client();
    for path in ["/health", "/livez"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    }
    for path in ["/health/ready", "/readyz"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["status"], "ready");
    }
    let head = client.head(server.url("/health")).send().await.unwrap();
    assert_eq!(head.status(), 200);

    let detailed: serde_json::Value =
        client.get(server.url("/health/detailed")).send().await.unwrap().json().await.unwrap();
    assert_eq!(detailed["status"], "ok");
    assert_eq!(detailed["ready"], true);
    assert_eq!(detailed["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(detailed["uptime_s"].as_f64().unwrap() > 0.0);
    for actor in ["actor:health_monitor", "actor:metrics_aggregator"] {
        let component = &detailed["components"][actor];
        assert_eq!(component["status"], "up", "{detailed}");
        assert_eq!(component["restarts"], 0);
        assert!(component.as_object().unwrap().contains_key("last_probe_latency_ms"));
        assert!(component.as_object().unwrap().contains_key("last_error"));
    }
}

#[tokio::test]
async fn probes_run_in_the_background_and_record_their_latency() {
    let server = Server::start(&[("BLAZE__MONITORING__PROBE_INTERVAL_S", "1")], &[]).await;
    let client = client();
    let mut latency = serde_json::Value::Null;
    for _ in 0..40 {
        let detailed: serde_json::Value =
            client.get(server.url("/health/detailed")).send().await.unwrap().json().await.unwrap();
        latency = detailed["components"]["actor:metrics_aggregator"]["last_probe_latency_ms"].clone();
        if latency.is_number() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(latency.as_f64().is_some_and(|ms| ms >= 0.0), "no probe recorded: {latency}");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = Server::start(&[], &[]).await;
    let client = client();
    let given =
        client.get(server.url("/health")).header("x-request-id", "trace-42.a:b_c").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-42.a:b_c");

    let generated = client.get(server.url("/health")).send().await.unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()));

    let unsafe_id =
        client.get(server.url("/health")).header("x-request-id", "a b<script>").send().await.unwrap();
    assert_ne!(unsafe_id.headers()["x-request-id"], "a b<script>");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_openai_errors() {
    let server = Server::start(&[], &[]).await;
    let client = client();
    let error =
        expect_error(client.get(server.url("/v1/nope")).send().await.unwrap(), 404, "unknown_url").await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("/v1/nope"));
    expect_error(client.delete(server.url("/health")).send().await.unwrap(), 405, "method_not_allowed").await;
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_bad_query_are_400s() {
    let server = Server::start(&[], &[]).await;
    let client = client();
    let post = |body: &'static str, content_type: &'static str| {
        client.post(server.url("/__test/echo")).header("content-type", content_type).body(body).send()
    };
    let echoed: serde_json::Value =
        post(r#"{"a":[1,2]}"#, "application/json").await.unwrap().json().await.unwrap();
    assert_eq!(echoed, serde_json::json!({"a": [1, 2]}));
    let error = expect_error(post("{\"a\": ", "application/json").await.unwrap(), 400, "invalid_json").await;
    assert_eq!(error["type"], "invalid_request_error");
    expect_error(post("{}", "text/plain").await.unwrap(), 415, "unsupported_media_type").await;
    let bad_query = client.get(server.url("/api/metrics/summary?last=lots")).send().await.unwrap();
    expect_error(bad_query, 400, "invalid_query").await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_whether_declared_or_streamed() {
    let server = Server::start(&[("BLAZE__SERVER__MAX_REQUEST_BYTES", "2048")], &[]).await;
    let client = client();
    let big = format!("{{\"text\":\"{}\"}}", "x".repeat(4096));
    let declared =
        client.post(server.url("/__test/echo")).header("content-type", "application/json").body(big.clone());
    expect_error(declared.send().await.unwrap(), 413, "request_too_large").await;

    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(big[..2000].to_owned()), Ok(big[2000..].to_owned())];
    let streamed = client
        .post(server.url("/__test/echo"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)));
    expect_error(streamed.send().await.unwrap(), 413, "request_too_large").await;

    let small =
        client.post(server.url("/__test/echo")).header("content-type", "application/json").body("[1]");
    assert_eq!(small.send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn requests_over_the_time_limit_get_504() {
    let server = Server::start(&[("BLAZE__SERVER__REQUEST_TIMEOUT_S", "1")], &[]).await;
    let client = client();
    let started = std::time::Instant::now();
    let error =
        expect_error(client.get(server.url("/__test/sleep/3000")).send().await.unwrap(), 504, "timeout")
            .await;
    assert!(started.elapsed() < Duration::from_millis(2500), "answered at the limit, not after the handler");
    assert_eq!(error["type"], "server_error");
    assert_eq!(client.get(server.url("/__test/sleep/10")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_panicking_handler_gives_500_and_the_server_keeps_serving() {
    let server = Server::start(&[], &[]).await;
    let client = client();
    for _ in 0..3 {
        let response = client.get(server.url("/__test/panic")).send().await.expect("a response, not a reset");
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let error = expect_error(response, 500, "internal_error").await;
        assert!(error["message"].as_str().unwrap().contains(&request_id));
        assert!(!error["message"].as_str().unwrap().contains("told to panic"), "panic text leaked");
    }
    assert_eq!(client.get(server.url("/health")).send().await.unwrap().status(), 200);
    server
        .wait_event("panic", |event| event["panic"].as_str().unwrap_or_default().contains("told to panic"))
        .await;
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut text).unwrap();
    text
}

fn unbrotli(bytes: &[u8]) -> String {
    let mut text = String::new();
    brotli::Decompressor::new(bytes, 4096).read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn responses_are_compressed_as_accept_encoding_asks() {
    let server = Server::start(&[], &[]).await;
    let client = client();
    let fetch = |encoding: &'static str| {
        client.get(server.url("/metrics")).header("accept-encoding", encoding).send()
    };

    let gzip = fetch("gzip").await.unwrap();
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    assert!(gunzip(&gzip.bytes().await.unwrap()).contains("blaze_build_info"));

    let brotli = fetch("br").await.unwrap();
    assert_eq!(brotli.headers()["content-encoding"], "br");
    assert!(unbrotli(&brotli.bytes().await.unwrap()).contains("blaze_build_info"));

    let preferred = fetch("gzip;q=0.5, br;q=1.0").await.unwrap();
    assert_eq!(preferred.headers()["content-encoding"], "br");

    let plain = fetch("identity").await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert!(plain.text().await.unwrap().contains("blaze_build_info"));
}

#[tokio::test]
async fn compression_can_be_switched_off() {
    let server = Server::start(&[("BLAZE__PERFORMANCE__COMPRESSION", "false")], &[]).await;
    let response =
        client().get(server.url("/metrics")).header("accept-encoding", "gzip, br").send().await.unwrap();
    assert!(response.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn metrics_use_route_patterns_and_prometheus_names() {
    let server = Server::start(&[], &[]).await;
    let client = client();
    client.get(server.url("/__test/sleep/7")).send().await.unwrap();
    client.get(server.url("/no/such/route/123")).send().await.unwrap();
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            r#"blaze_http_requests_total{method="GET",route="/__test/sleep/{millis}",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404"} 1"#));
    assert!(!text.contains("/__test/sleep/7"), "raw paths must not become labels");
    assert!(!text.contains("/no/such/route"));
    assert!(text.contains(
        r#"blaze_http_request_duration_seconds_bucket{method="GET",route="/__test/sleep/{millis}",le="0.01"}"#
    ));
    for name in [
        "# TYPE blaze_http_requests_in_flight gauge",
        "# TYPE blaze_http_request_duration_seconds histogram",
        "# TYPE blaze_process_resident_memory_bytes gauge",
        "# TYPE blaze_process_cpu_seconds_total counter",
        "# TYPE blaze_process_open_fds gauge",
        "# TYPE blaze_build_info gauge",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert!(text.contains(&format!(r#"blaze_build_info{{version="{}""#, env!("CARGO_PKG_VERSION"))));
    assert!(text.contains("blaze_http_requests_in_flight 1"), "the scrape itself is in flight");
}

#[tokio::test]
async fn the_summary_rolls_up_rates_errors_and_percentiles_per_route() {
    let server = Server::start(&[("BLAZE__MONITORING__COLLECTION_INTERVAL_S", "1")], &[]).await;
    let client = client();
    for _ in 0..5 {
        client.get(server.url("/__test/sleep/20")).send().await.unwrap();
    }
    client.get(server.url("/__test/panic")).send().await.unwrap();
    // The requests may straddle an interval's end: count them over all.
    let sleep_route = "/__test/sleep/{millis}";
    let sleeps = |intervals: &[serde_json::Value]| -> u64 {
        intervals
            .iter()
            .map(|interval| interval["routes"][sleep_route]["requests"].as_u64().unwrap_or(0))
            .sum()
    };
    let mut intervals = Vec::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let summary: serde_json::Value =
            client.get(server.url("/api/metrics/summary")).send().await.unwrap().json().await.unwrap();
        assert_eq!(summary["collection_interval_s"], 1.0);
        assert_eq!(summary["retention_s"], 86400.0);
        intervals = summary["intervals"].as_array().unwrap().clone();
        let panicked = intervals.iter().any(|interval| interval["routes"].get("/__test/panic").is_some());
        if sleeps(&intervals) >= 5 && panicked {
            break;
        }
    }
    assert_eq!(sleeps(&intervals), 5, "{intervals:?}");
    let sleep = intervals.iter().find_map(|interval| interval["routes"].get(sleep_route)).unwrap();
    assert!(sleep["p50_ms"].as_f64().unwrap() >= 19.0, "{sleep}");
    assert!(sleep["p99_ms"].as_f64().unwrap() >= sleep["p50_ms"].as_f64().unwrap());
    assert!(sleep["requests_per_s"].as_f64().unwrap() > 0.0);
    let panic = intervals.iter().find_map(|interval| interval["routes"].get("/__test/panic")).unwrap();
    assert_eq!(panic["server_error_rate"], 1.0);
    let last_one: serde_json::Value =
        client.get(server.url("/api/metrics/summary?last=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(last_one["intervals"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn access_logs_are_json_with_request_id_route_status_and_latency() {
    let server = Server::start(&[], &[]).await;
    let response = client()
        .get(server.url("/__test/sleep/1"))
        .header("x-request-id", "log-check-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = server.wait_event("request", |event| event["request_id"] == "log-check-1").await;
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "/__test/sleep/{millis}");
    assert_eq!(line["status"], 200);
    assert!(line["latency_ms"].as_f64().unwrap() >= 1.0);
    assert_eq!(line["level"], "INFO");
    for text in server.logs() {
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    }
}
