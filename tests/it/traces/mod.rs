//! Traces: spans exported over real OTLP (protobuf over HTTP, and gRPC)
//! to receivers started by the tests, the caller's `traceparent` followed
//! and passed on to an upstream, sampling, and a full export queue that
//! drops (and counts) rather than waits.

mod receiver;

use serde_json::json;

use self::receiver::{names, Received, Receiver};
use crate::common::{self, client, decoding_turn, Server};
use crate::gateway::stub::Stub;
use crate::gateway::{upstream, UPSTREAM_KEY, UPSTREAM_KEY_VARIABLE};

const MODEL: &str = "smollm2-135m-instruct";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A server exporting to `endpoint` over `protocol`, with `extra` lines
/// in its `telemetry` section and `rest` after it.
async fn traced(
    endpoint: &str,
    protocol: &str,
    extra: &str,
    rest: &str,
) -> (Server, tempfile::NamedTempFile) {
    let text = format!(
        "telemetry:\n  otlp_endpoint: {endpoint}\n  otlp_protocol: {protocol}\n  export_interval_ms: 50\n  \
         service_name: blaze-under-test\n{extra}{rest}"
    );
    let file = common::config_file(&text);
    let path = file.path().to_str().unwrap().to_owned();
    let server = Server::start(&[(UPSTREAM_KEY_VARIABLE, UPSTREAM_KEY)], &["--config", &path]).await;
    (server, file)
}

fn traceparent(sampled: bool) -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{}", if sampled { "01" } else { "00" })
}

fn in_trace<'a>(spans: &'a [Received], trace: &str) -> Vec<&'a Received> {
    spans.iter().filter(|span| span.trace_id() == trace).collect()
}

/// The span called `name`; `request` is the server span (named
/// `METHOD /route`, as the HTTP conventions have it).
fn named<'a>(spans: &[&'a Received], name: &str) -> Option<&'a Received> {
    spans.iter().copied().find(|span| if name == "request" { is_request(span) } else { span.name() == name })
}

fn is_request(span: &Received) -> bool {
    span.span.kind == 2
}

#[tokio::test]
async fn a_chat_completion_is_traced_stage_by_stage_under_the_callers_trace() {
    let receiver = Receiver::http().await;
    let (server, _config) = traced(&receiver.endpoint, "http", "", "").await;
    let _turn = decoding_turn().await;
    let body = json!({"model": MODEL, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Name a trace."}]});
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("traceparent", traceparent(true))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();

    let wanted = ["request", "auth", "admission", "guard.input", "cache.lookup", "queue", "prompt", "decode"];
    let spans = receiver
        .wait_for("the request's stages", |spans| {
            let trace = in_trace(spans, CALLER_TRACE);
            wanted.iter().all(|name| named(&trace, name).is_some())
        })
        .await;
    let trace = in_trace(&spans, CALLER_TRACE);
    let request = named(&trace, "request").unwrap();
    assert_eq!(request.service, "blaze-under-test");
    assert_eq!(request.parent_span_id(), CALLER_SPAN, "the caller's span is its parent");
    assert_eq!(request.name(), "POST /v1/chat/completions");
    assert_eq!(request.attribute("http.route").as_deref(), Some("/v1/chat/completions"));
    assert_eq!(request.attribute("http.request.method").as_deref(), Some("POST"));
    assert_eq!(request.attribute("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(request.attribute("gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(request.attribute("gen_ai.request.model").as_deref(), Some(MODEL));
    let usage = &answer["usage"];
    assert_eq!(request.attribute("gen_ai.usage.input_tokens"), Some(usage["prompt_tokens"].to_string()));
    assert_eq!(request.attribute("gen_ai.usage.output_tokens"), Some(usage["completion_tokens"].to_string()));
    let first_token: f64 = request.attribute("gen_ai.response.time_to_first_token").unwrap().parse().unwrap();
    assert!(first_token > 0.0);
    for name in &wanted[1..] {
        let stage = named(&trace, name).unwrap();
        assert_eq!(stage.parent_span_id(), request.span_id(), "{name} is a stage of the request");
        assert!(
            stage.span.start_time_unix_nano >= request.span.start_time_unix_nano,
            "{name} starts inside it"
        );
        assert!(stage.span.end_time_unix_nano >= stage.span.start_time_unix_nano);
    }
    // The worker's stages follow each other.
    let [queue, prompt, decode] = ["queue", "prompt", "decode"].map(|name| named(&trace, name).unwrap());
    assert!(queue.span.end_time_unix_nano <= prompt.span.start_time_unix_nano + 1_000);
    assert!(prompt.span.end_time_unix_nano <= decode.span.start_time_unix_nano + 1_000);
    assert_eq!(
        named(&trace, "cache.lookup").unwrap().attribute("blaze.cache.tier").as_deref(),
        Some("memory")
    );

    // The same request again is a cache hit: its trace says so, and has no
    // worker stages.
    let again = client().post(server.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(again.headers()["x-blaze-cache"], "hit-memory");
    let spans = receiver
        .wait_for("the cached request's trace", |spans| {
            spans.iter().any(|span| {
                is_request(span) && span.attribute("blaze.cache").as_deref() == Some("hit-memory")
            })
        })
        .await;
    let hit =
        spans.iter().find(|span| span.attribute("blaze.cache").as_deref() == Some("hit-memory")).unwrap();
    assert_ne!(hit.trace_id(), CALLER_TRACE, "a request without traceparent starts its own trace");
    assert!(hit.parent_span_id().is_empty(), "and is its root");
    let own = in_trace(&spans, &hit.trace_id());
    assert!(named(&own, "decode").is_none(), "{:?}", names(&spans));
    assert!(receiver.malformed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_upstream_gets_the_trace_and_the_gateways_span_over_grpc() {
    let receiver = Receiver::grpc().await;
    let stub = Stub::start().await;
    let rest = format!(
        "models:\n  catalog:\n{}gateway:\n  probe_interval_s: 0\n",
        upstream("remote", &stub.base_url("ok"), "      model: gpt-stub\n")
    );
    let (server, _config) = traced(&receiver.endpoint, "grpc", "", &rest).await;
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("traceparent", traceparent(true))
        .json(&crate::gateway::chat_body("remote", "Say hello."))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let spans = receiver
        .wait_for("the gateway's upstream span", |spans| {
            named(&in_trace(spans, CALLER_TRACE), "upstream").is_some()
                && named(&in_trace(spans, CALLER_TRACE), "request").is_some()
        })
        .await;
    let trace = in_trace(&spans, CALLER_TRACE);
    let request = named(&trace, "request").unwrap();
    let upstream_span = named(&trace, "upstream").unwrap();
    assert_eq!(upstream_span.parent_span_id(), request.span_id());
    assert_eq!(upstream_span.span.kind, 3, "a client span");
    assert_eq!(upstream_span.attribute("blaze.gateway.target").as_deref(), Some("remote"));
    let seen = stub.requests("ok");
    assert_eq!(seen.len(), 1);
    let sent = seen[0].traceparent.clone().expect("the upstream got a traceparent");
    assert_eq!(
        sent,
        format!("00-{CALLER_TRACE}-{}-01", upstream_span.span_id()),
        "its parent is the gateway's span"
    );
}

#[tokio::test]
async fn sampling_drops_new_traces_but_follows_a_sampled_caller() {
    let receiver = Receiver::http().await;
    let (server, _config) = traced(&receiver.endpoint, "http", "  sampling_ratio: 0\n", "").await;
    let caller = client();
    for _ in 0..5 {
        let response = caller.get(server.url("/v1/models")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let unsampled =
        caller.get(server.url("/v1/models")).header("traceparent", traceparent(false)).send().await.unwrap();
    assert_eq!(unsampled.status(), 200);
    let sampled =
        caller.get(server.url("/v1/models")).header("traceparent", traceparent(true)).send().await.unwrap();
    assert_eq!(sampled.status(), 200);
    let spans = receiver
        .wait_for("the sampled caller's request", |spans| {
            named(&in_trace(spans, CALLER_TRACE), "request").is_some()
        })
        .await;
    // Give the others every chance to arrive: none may.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let spans = if receiver.spans().len() > spans.len() { receiver.spans() } else { spans };
    let requests: Vec<_> = spans.iter().filter(|span| is_request(span)).collect();
    assert_eq!(requests.len(), 1, "only the sampled caller's request: {:?}", names(&spans));
    assert!(spans.iter().all(|span| span.trace_id() == CALLER_TRACE), "{:?}", names(&spans));
}

#[tokio::test]
async fn hostile_traceparents_start_a_new_trace_and_are_not_echoed() {
    let receiver = Receiver::http().await;
    let (server, _config) = traced(&receiver.endpoint, "http", "", "").await;
    let zeros = format!("00-{}-{}-01", "0".repeat(32), "0".repeat(16));
    let long = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01-{}", "a".repeat(8000));
    let hostile = [
        zeros.as_str(),
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "not a traceparent at all",
        long.as_str(),
    ];
    for value in hostile {
        let response =
            client().get(server.url("/v1/models")).header("traceparent", value).send().await.unwrap();
        assert_eq!(response.status(), 200, "{value:.60}");
        assert!(response.headers().get("traceparent").is_none());
    }
    let spans = receiver
        .wait_for("every request's span", |spans| {
            spans.iter().filter(|span| is_request(span)).count() >= hostile.len()
        })
        .await;
    for span in spans.iter().filter(|span| is_request(span)) {
        assert_ne!(span.trace_id(), "0".repeat(32));
        assert_ne!(span.trace_id(), CALLER_TRACE, "an invalid traceparent is not followed: {:?}", span.span);
        assert!(span.parent_span_id().is_empty());
    }
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_dropped_spans_not_requests() {
    let receiver = Receiver::silent().await;
    let (server, _config) = traced(&receiver.endpoint, "http", "  max_queued_spans: 4\n", "").await;
    let caller = client();
    for _ in 0..40 {
        let response = caller.get(server.url("/v1/models")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let metrics = server.metrics().await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("blaze_trace_spans_dropped_total "))
        .unwrap_or_else(|| panic!("no blaze_trace_spans_dropped_total in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(dropped >= 30.0, "at most 4 spans queue while the export hangs; dropped {dropped}");
}
