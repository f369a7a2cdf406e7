//! Log shipping: the JSON log lines reach an Elasticsearch stand-in
//! (`elastic.rs`) through the real bulk API, typed by the index template,
//! with the credential from its file; partial failures retried item by
//! item and never indexed twice; a server that is down or silent costs
//! dropped (and counted) lines, never a request's time.

mod elastic;

use std::io::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use self::elastic::{Behaviour, Elastic, REJECT, THROTTLE};
use crate::common::{self, client, decoding_turn, Server};

const MODEL: &str = "smollm2-135m-instruct";
const API_KEY: &str = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==";

/// A server shipping to `elastic` with `extra` lines in its `logging`
/// section; the files it names live as long as it does.
fn config(elastic: &Elastic, extra: &str) -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
    let mut key = tempfile::NamedTempFile::new().unwrap();
    writeln!(key, "{API_KEY}").unwrap();
    let text = format!(
        "logging:\n  elasticsearch_url: {}\n  elasticsearch_api_key_file: {}\n  flush_interval_ms: 50\n{extra}",
        elastic.url,
        key.path().display()
    );
    (common::config_file(&text), key)
}

async fn shipping(elastic: &Elastic, extra: &str) -> (Server, [tempfile::NamedTempFile; 2]) {
    let (file, key) = config(elastic, extra);
    let path = file.path().to_str().unwrap().to_owned();
    let server = Server::start(&[], &["--config", &path]).await;
    (server, [file, key])
}

fn with_request_id(id: &'static str) -> impl Fn(&Value) -> bool {
    move |document| document["request_id"] == id
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

#[tokio::test]
async fn access_lines_reach_elasticsearch_typed_with_model_and_tokens_and_the_key_stays_secret() {
    let elastic = Elastic::start(Behaviour {
        authorization: Some(format!("ApiKey {API_KEY}")),
        ..Behaviour::default()
    })
    .await;
    let (server, _files) = shipping(&elastic, "").await;
    let caller = client();
    let _turn = decoding_turn().await;
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4});
    let answer = caller
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "ship-chat")
        .json(&chat)
        .send()
        .await;
    assert_eq!(answer.unwrap().status(), 200);
    let stream = common::extend(chat.clone(), json!({"stream": true, "temperature": 0.9, "seed": 7}));
    let streamed = caller
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "ship-stream")
        .json(&stream)
        .send();
    let streamed = streamed.await.unwrap();
    assert_eq!(streamed.status(), 200);
    let _ = streamed.text().await.unwrap();
    let models =
        caller.get(server.url("/v1/models")).header("x-request-id", "ship-models").send().await.unwrap();
    assert_eq!(models.status(), 200);

    elastic
        .wait_for("the three requests' lines", |seen| {
            let has = |id: &str, message: &str| {
                seen.documents
                    .values()
                    .any(|document| document["request_id"] == id && document["message"] == message)
            };
            has("ship-chat", "request") && has("ship-stream", "usage") && has("ship-models", "request")
        })
        .await;
    let chat = &elastic.documents(with_request_id("ship-chat"))[0];
    assert_eq!(chat["target"], "blaze::access");
    assert_eq!(chat["level"], "INFO");
    assert_eq!(chat["route"], "/v1/chat/completions");
    assert_eq!(chat["method"], "POST");
    assert_eq!(chat["status"], 200);
    assert!(chat["latency_ms"].as_f64().unwrap() > 0.0, "{chat}");
    assert_eq!(chat["model"], MODEL);
    assert!(chat["input_tokens"].as_u64().unwrap() > 0, "{chat}");
    assert!((1..=4).contains(&chat["output_tokens"].as_u64().unwrap()), "{chat}");
    assert!(chat["timestamp"].as_str().is_some_and(|at| at.contains('T')), "{chat}");
    // A stream's access line goes out as it starts; its tokens follow in
    // a usage line of its own.
    let stream = elastic.documents(with_request_id("ship-stream"));
    let started = stream.iter().find(|document| document["message"] == "request").expect("its access line");
    assert_eq!(started["model"], MODEL);
    assert!(started.get("output_tokens").is_none(), "{started}");
    let usage = stream.iter().find(|document| document["message"] == "usage").unwrap();
    assert!(usage["output_tokens"].as_u64().unwrap() >= 1, "{usage}");
    assert_eq!(usage["model"], MODEL);
    let models = &elastic.documents(with_request_id("ship-models"))[0];
    assert!(models.get("model").is_none(), "not a model request: {models}");

    elastic.seen(|seen| {
        let template = &seen.templates["blaze-logs"];
        assert_eq!(template["index_patterns"], json!(["blaze-logs*"]));
        let fields = &template["template"]["mappings"]["properties"];
        for (field, kind) in [
            ("timestamp", "date"),
            ("level", "keyword"),
            ("request_id", "keyword"),
            ("route", "keyword"),
            ("status", "integer"),
            ("latency_ms", "double"),
            ("model", "keyword"),
            ("input_tokens", "long"),
            ("output_tokens", "long"),
        ] {
            assert_eq!(fields[field]["type"], kind, "{field}");
        }
        assert!(seen
            .authorizations
            .iter()
            .all(|given| given.as_deref() == Some(&format!("ApiKey {API_KEY}"))));
        assert!(seen.malformed.is_empty(), "{:?}", seen.malformed);
        assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    });
    let metrics = server.metrics().await;
    assert!(counter(&metrics, "blaze_log_lines_shipped_total") >= 3.0);
    assert!(!metrics.contains(API_KEY));
    assert!(server.logs().iter().all(|line| !line.contains(API_KEY)));
}

#[tokio::test]
async fn partial_failures_retry_only_what_may_succeed_and_nothing_is_indexed_twice() {
    // The first bulk request is refused whole (503), the next is applied
    // but answered too late (the shipper gives up and sends it again: the
    // ids make the second `create` a 409, not a copy), and per item a
    // document is refused for good (400) and one is throttled once (429).
    let elastic = Elastic::start(Behaviour {
        unavailable_for: 1,
        slow_once: Some(Duration::from_millis(1500)),
        ..Behaviour::default()
    })
    .await;
    let (server, _files) = shipping(&elastic, "  timeout_ms: 500\n  max_retries: 8\n").await;
    let caller = client();
    for id in ["first", REJECT, THROTTLE, "last"] {
        let response = caller.get(server.url("/v1/models")).header("x-request-id", id).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    elastic
        .wait_for("every line but the refused one", |seen| {
            let ids: Vec<_> =
                seen.documents.values().map(|document| document["request_id"].clone()).collect();
            ["first", THROTTLE, "last"].iter().all(|id| ids.contains(&json!(id)))
        })
        .await;
    let metrics = server.metrics().await;
    assert!(elastic.documents(with_request_id(REJECT)).is_empty());
    assert!(counter(&metrics, r#"blaze_log_lines_dropped_total{reason="rejected"}"#) >= 1.0);
    assert!(counter(&metrics, "blaze_log_shipping_retries_total") >= 2.0);
    elastic.seen(|seen| {
        assert!(seen.unavailable_answered >= 1);
        assert!(seen.item_statuses.contains(&429) && seen.item_statuses.contains(&400));
        assert!(seen.item_statuses.contains(&409), "the late batch was sent again: {:?}", seen.item_statuses);
        assert!(seen.malformed.is_empty(), "{:?}", seen.malformed);
        // Each request's access line once, whatever was retried.
        for id in ["first", THROTTLE, "last"] {
            let copies = seen
                .documents
                .values()
                .filter(|document| document["request_id"] == id && document["message"] == "request")
                .count();
            assert_eq!(copies, 1, "{id}");
        }
    });
}

#[tokio::test]
async fn a_silent_elasticsearch_costs_dropped_lines_not_requests_and_shutdown_does_not_wait_on_it() {
    let elastic = Elastic::start(Behaviour { silent: true, ..Behaviour::default() }).await;
    let (mut server, _files) =
        shipping(&elastic, "  max_buffered_lines: 5\n  batch_lines: 2\n  timeout_ms: 60000\n").await;
    let caller = client();
    for _ in 0..40 {
        let response = caller.get(server.url("/v1/models")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let metrics = server.metrics().await;
    assert!(counter(&metrics, r#"blaze_log_lines_dropped_total{reason="buffer_full"}"#) >= 20.0, "{metrics}");
    assert!(elastic.seen(|seen| !seen.authorizations.is_empty()), "a bulk request was sent");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(20)).await.code(), Some(0));
}

#[tokio::test]
async fn hostile_text_in_requests_cannot_break_the_bulk_format() {
    let elastic = Elastic::start(Behaviour::default()).await;
    let (server, _files) = shipping(&elastic, "").await;
    let caller = client();
    let injected = "%0A%7B%22delete%22%3A%7B%22_id%22%3A%22x%22%7D%7D%0A";
    let paths =
        [format!("/v1/models{injected}"), format!("/{injected}/health"), "/v1/%E2%80%A8%00".to_owned()];
    for path in &paths {
        let response = caller.get(server.url(path)).header("x-request-id", "hostile").send().await.unwrap();
        assert!(response.status().is_client_error(), "{path}");
    }
    let long_id = "x".repeat(8 * 1024);
    let response =
        caller.get(server.url("/v1/models")).header("x-request-id", long_id.as_str()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    elastic
        .wait_for("the hostile requests' lines", |seen| {
            seen.documents.values().filter(|document| document["request_id"] == "hostile").count()
                >= paths.len()
        })
        .await;
    elastic.seen(|seen| {
        assert!(seen.malformed.is_empty(), "{:?}", seen.malformed);
        assert!(seen.documents.values().all(|document| document["request_id"] != long_id.as_str()));
    });
}

#[test]
fn an_unreadable_credential_file_stops_the_start_with_the_setting_named() {
    let text = "logging:\n  elasticsearch_url: http://127.0.0.1:9\n  elasticsearch_api_key_file: /nonexistent/es-key\n";
    let file = common::config_file(text);
    let output = std::process::Command::new(common::BIN)
        .args(["serve", "--config", file.path().to_str().unwrap()])
        .env_remove("BLAZE_PROFILE")
        .env("BLAZE__SERVER__PORT", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("logging.elasticsearch_api_key_file") && said.contains("/nonexistent/es-key"),
        "{said}"
    );
}
