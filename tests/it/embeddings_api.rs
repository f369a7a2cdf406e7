//! /v1/embeddings and /v1/models over real HTTP on the real model.

use std::time::Duration;

use crate::common::{client, config_file, expect_error, Server};
use base64::Engine as _;
use serde_json::{json, Value};

const MODEL: &str = "all-minilm-l6-v2";

fn fixture() -> Vec<Value> {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/embeddings-all-minilm-l6-v2.json")).unwrap();
    fixture["cases"].as_array().unwrap().clone()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(a, b)| a * b).sum();
    dot / (a.iter().map(|a| a * a).sum::<f64>().sqrt() * b.iter().map(|b| b * b).sum::<f64>().sqrt())
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|number| number.as_f64().unwrap()).collect()
}

async fn embed(server: &Server, body: Value) -> reqwest::Response {
    client().post(server.url("/v1/embeddings")).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn models_are_listed_and_looked_up() {
    let server = Server::start(&[], &[]).await;
    let list: Value = client().get(server.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    let model =
        list["data"].as_array().unwrap().iter().find(|model| model["id"] == MODEL).expect("listed").clone();
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "blaze");
    assert!(model["created"].as_u64().unwrap() > 1_700_000_000);
    // all-MiniLM-L6-v2's 22.7 M parameters, held by its one worker: f32,
    // or its dense products packed to bf16 where the CPU has AMX.
    let memory = model["blaze"]["memory_bytes"].as_u64().unwrap();
    assert!((40_000_000..95_000_000).contains(&memory), "{model}");
    assert_eq!(
        model["blaze"],
        json!({"kind": "embedding", "state": "ready", "dimensions": 384, "max_input_tokens": 256, "memory_bytes": memory})
    );
    let chat = list["data"].as_array().unwrap().iter().find(|model| model["id"] == "smollm2-135m-instruct");
    let chat = &chat.expect("the chat model listed")["blaze"];
    assert_eq!((chat["kind"].as_str(), chat["state"].as_str()), (Some("chat"), Some("ready")), "{chat}");
    assert_eq!((chat["context_length"].as_u64(), chat["quantization"].as_str()), (Some(2048), Some("Q4_1")));
    assert!(
        chat["parameters"].as_u64().is_some_and(|count| (100_000_000..200_000_000).contains(&count)),
        "{chat}"
    );
    assert!(chat["weights_bytes"].as_u64().is_some_and(|bytes| bytes > 50_000_000), "{chat}");
    let one: Value =
        client().get(server.url(&format!("/v1/models/{MODEL}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(one, model);
    let missing = client().get(server.url("/v1/models/gpt-17")).send().await.unwrap();
    assert_eq!(expect_error(missing, 404, "model_not_found").await["param"], "model");
    let detailed: Value =
        client().get(server.url("/health/detailed")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        detailed["components"][format!("model:{MODEL}")]["status"],
        "up",
        "ready after a forward pass"
    );
}

#[tokio::test]
async fn every_input_shape_gives_the_reference_vectors_and_exact_usage() {
    let server = Server::start(&[], &[]).await;
    let cases = fixture();
    let texts: Vec<&str> = cases.iter().map(|case| case["input"].as_str().unwrap()).collect();
    let body: Value = embed(&server, json!({ "model": MODEL, "input": texts })).await.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MODEL);
    let expected_tokens: u64 = cases.iter().map(|case| case["tokens"].as_u64().unwrap()).sum();
    assert_eq!(body["usage"], json!({ "prompt_tokens": expected_tokens, "total_tokens": expected_tokens }));
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), cases.len());
    for (index, (item, case)) in data.iter().zip(&cases).enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], index);
        let vector = floats(&item["embedding"]);
        assert_eq!(vector.len(), 384);
        assert!(cosine(&vector, &floats(&case["embedding"])) >= 0.9999, "{}", case["input"]);
    }

    let single: Value =
        embed(&server, json!({ "model": MODEL, "input": texts[0] })).await.json().await.unwrap();
    assert_eq!(single["usage"]["prompt_tokens"], cases[0]["tokens"]);
    // Token ids of this model's vocabulary: [CLS] hello [SEP].
    let tokens: Value =
        embed(&server, json!({ "model": MODEL, "input": [101, 7592, 102] })).await.json().await.unwrap();
    let lists: Value = embed(&server, json!({ "model": MODEL, "input": [[101, 7592, 102], [101, 102]] }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(lists["data"].as_array().unwrap().len(), 2);
    assert_eq!(tokens["usage"]["prompt_tokens"], 3);
    let hello: Value =
        embed(&server, json!({ "model": MODEL, "input": "hello" })).await.json().await.unwrap();
    let (a, b) = (floats(&hello["data"][0]["embedding"]), floats(&tokens["data"][0]["embedding"]));
    assert!(cosine(&a, &b) > 0.99999, "token ids give the text's vector");
    assert!(cosine(&b, &floats(&lists["data"][0]["embedding"])) > 0.99999);
}

#[tokio::test]
async fn base64_is_little_endian_f32_and_equals_float() {
    let server = Server::start(&[], &[]).await;
    let input = "The quick brown fox jumps over the lazy dog.";
    let float: Value = embed(&server, json!({ "model": MODEL, "input": input })).await.json().await.unwrap();
    let encoded: Value =
        embed(&server, json!({ "model": MODEL, "input": input, "encoding_format": "base64" }))
            .await
            .json()
            .await
            .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> =
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let floats: Vec<f32> = float["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(decoded, floats);
}

#[tokio::test]
async fn bad_requests_get_400s_that_name_the_field() {
    let server = Server::start(&[], &[]).await;
    let cases = [
        (json!({ "model": MODEL, "input": [] }), "invalid_input", "input"),
        (json!({ "model": MODEL, "input": "" }), "invalid_input", "input"),
        (json!({ "model": MODEL, "input": vec!["x"; 2049] }), "too_many_items", "input"),
        (json!({ "model": MODEL, "input": ["x", "a\u{0}b"] }), "invalid_characters", "input[1]"),
        (json!({ "model": MODEL, "input": { "text": "x" } }), "invalid_input", "input"),
        (json!({ "model": MODEL, "input": "word ".repeat(300) }), "context_length_exceeded", "input"),
        (json!({ "model": MODEL, "input": [101, 99999, 102] }), "invalid_input", "input"),
        (json!({ "model": MODEL, "input": "x", "dimensions": 1536 }), "invalid_dimensions", "dimensions"),
        (
            json!({ "model": MODEL, "input": "x", "encoding_format": "hex" }),
            "invalid_request_body",
            "encoding_format",
        ),
        (json!({ "model": MODEL, "input": "x", "temperature": 1 }), "unknown_parameter", "temperature"),
    ];
    for (body, code, param) in cases {
        let error = expect_error(embed(&server, body.clone()).await, 400, code).await;
        if !param.is_empty() {
            assert_eq!(error["param"], param, "{body}");
        }
    }
    let limit = expect_error(
        embed(&server, json!({ "model": MODEL, "input": "word ".repeat(300) })).await,
        400,
        "context_length_exceeded",
    )
    .await;
    assert!(limit["message"].as_str().unwrap().contains("256"), "names the limit: {limit}");
    let unknown = embed(&server, json!({ "model": "text-embedding-3-small", "input": "x" })).await;
    expect_error(unknown, 404, "model_not_found").await;
}

#[tokio::test]
async fn concurrent_requests_batched_together_get_their_own_results() {
    let server = Server::start(&[], &[]).await;
    let cases = fixture();
    let requests = cases.iter().map(|case| {
        let server = &server;
        async move {
            let body: Value =
                embed(server, json!({ "model": MODEL, "input": case["input"] })).await.json().await.unwrap();
            (case, body)
        }
    });
    for (case, body) in futures_util::future::join_all(requests).await {
        let similarity = cosine(&floats(&body["data"][0]["embedding"]), &floats(&case["embedding"]));
        assert!(similarity >= 0.9999, "{}: {similarity}", case["input"]);
        assert_eq!(body["usage"]["prompt_tokens"], case["tokens"]);
    }
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("blaze_inference_batch_size_count{{model=\"{MODEL}\"}}")), "{metrics}");
    assert!(metrics.contains(&format!("blaze_tokens_total{{model=\"{MODEL}\",kind=\"prompt\"}}")));
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_at_once() {
    let file = config_file(&format!(
        "models:\n  catalog:\n    {MODEL}:\n      queue_capacity: 1\n      max_batch: 1\n      max_wait_ms: 0\n"
    ));
    let server = Server::start(&[], &["--config", file.path().to_str().unwrap()]).await;
    let texts: Vec<String> =
        (0..64).map(|index| format!("sentence number {index} of a long request")).collect();
    let requests = (0..12).map(|_| embed(&server, json!({ "model": MODEL, "input": texts })));
    let responses = futures_util::future::join_all(requests).await;
    let mut rejected = 0;
    for response in responses {
        if response.status() == 429 {
            let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry_after));
            let error = expect_error(response, 429, "model_overloaded").await;
            assert_eq!(error["type"], "rate_limit_exceeded");
            rejected += 1;
        } else {
            assert_eq!(response.status(), 200);
        }
    }
    assert!(rejected >= 1, "12 requests of 64 inputs against a queue of 1 must overflow it");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_queued_work() {
    let file = config_file(&format!(
        "models:\n  catalog:\n    {MODEL}:\n      max_batch: 1\n      max_wait_ms: 0\n"
    ));
    let server = Server::start(&[], &["--config", file.path().to_str().unwrap()]).await;
    // Two busy requests, one computed and one queued, keep the worker busy
    // well past the moment the impatient client gives up, however fast this
    // machine computes (one alone ended first on a fast one).
    let busy_request = |batch: usize| {
        let texts: Vec<String> = (0..512)
            .map(|index| format!("a busy worker computes sentence {index} of batch {batch}"))
            .collect();
        client().post(server.url("/v1/embeddings")).json(&json!({ "model": MODEL, "input": texts })).send()
    };
    let first = tokio::spawn(busy_request(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(busy_request(2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let gone = impatient
        .post(server.url("/v1/embeddings"))
        .bearer_auth(crate::common::ADMIN_KEY)
        .json(&json!({ "model": MODEL, "input": "nobody waits for this one" }))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up while the worker was busy");
    let mut busy_tokens = 0;
    for busy in [first, second] {
        let busy: Value = busy.await.unwrap().unwrap().json().await.unwrap();
        busy_tokens += busy["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let counted = format!("blaze_tokens_total{{model=\"{MODEL}\",kind=\"prompt\"}} {busy_tokens}\n");
    assert!(metrics.contains(&counted), "only the busy requests were computed: {metrics}");
}

#[tokio::test]
async fn a_model_that_cannot_load_is_named_by_readiness_and_the_others_serve() {
    let broken = tempfile::Builder::new().suffix(".gguf").tempfile().unwrap();
    std::fs::write(broken.path(), b"GGUF but not a model").unwrap();
    let file = config_file(&format!(
        "models:\n  catalog:\n    broken-chat:\n      kind: chat\n      source: {}\n      sha256: ''\n      workers: 1\n      threads: 1\n      max_batch: 1\n      max_wait_ms: 1\n      queue_capacity: 1\n",
        broken.path().display()
    ));
    let server = Server::listening(&[], &["--config", file.path().to_str().unwrap()]);
    let client = client();
    // The embedding model gets served while the broken one keeps failing.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut served = false;
    while std::time::Instant::now() < deadline && !served {
        served = embed(&server, json!({ "model": MODEL, "input": "still served" })).await.status() == 200;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the embedding model serves beside a broken one");

    // Readiness follows the probes, which run on an interval: wait until
    // the served model's probe has seen it serve.
    let mut failing = Value::Null;
    for _ in 0..100 {
        let ready = client.get(server.url("/health/ready")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        failing = ready.json::<Value>().await.unwrap()["failing"].clone();
        let names: Vec<&str> = failing.as_array().unwrap().iter().filter_map(Value::as_str).collect();
        if names.contains(&"model:broken-chat") && !names.contains(&format!("model:{MODEL}").as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = failing.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(names.contains(&"model:broken-chat"), "{failing}");
    assert!(!names.contains(&format!("model:{MODEL}").as_str()), "{failing}");
    // The probe's error says why, once a probe has run since the failure.
    let mut why = Value::Null;
    for _ in 0..100 {
        let detailed: Value =
            client.get(server.url("/health/detailed")).send().await.unwrap().json().await.unwrap();
        why = detailed["components"]["model:broken-chat"]["last_error"].clone();
        if why.as_str().is_some_and(|error| error.contains("cannot load")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(why.as_str().is_some_and(|error| error.contains("cannot load")), "{why}");

    let chat = client
        .post(server.url("/v1/chat/completions"))
        .json(&json!({ "model": "broken-chat", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.headers()["retry-after"], "1");
    let refused = expect_error(chat, 503, "model_loading").await;
    assert!(refused["message"].as_str().unwrap().contains("could not be loaded"), "{refused}");
    // The list shows every catalog model with its state.
    let listed: Value = client.get(server.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    let state_of = |id: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|model| model["id"] == id)
            .map(|model| model["blaze"].clone())
    };
    assert_eq!(state_of(MODEL).unwrap()["state"], "ready", "{listed}");
    let broken = state_of("broken-chat").unwrap();
    assert_eq!(
        (broken["state"].as_str(), broken["kind"].as_str()),
        (Some("failed"), Some("chat")),
        "{listed}"
    );
    assert_eq!(broken["memory_bytes"], 0, "{listed}");
    server.wait_event("actor stopped unexpectedly; restarting", |event| event["actor"] == "router").await;
}

/// The vector and the usage of one embeddings request.
async fn vector_and_usage(server: &Server, body: Value) -> (Vec<f64>, u64) {
    let response = embed(server, body.clone()).await;
    assert_eq!(response.status(), 200, "{body}");
    let answer: Value = response.json().await.unwrap();
    (floats(&answer["data"][0]["embedding"]), answer["usage"]["prompt_tokens"].as_u64().unwrap())
}

#[tokio::test]
async fn inputs_too_long_are_cut_to_fit_from_either_end_when_asked() {
    let server = Server::start(&[], &[]).await;
    // 300 words, 256 tokens at most: [CLS], 254 words, [SEP] when cut.
    let long = format!("alpha {}omega", "word ".repeat(300));
    let kept = "word ".repeat(254);
    let refused = expect_error(
        embed(&server, json!({"model": MODEL, "input": long})).await,
        400,
        "context_length_exceeded",
    )
    .await;
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("at most 256") && message.contains("\"truncate\": true"), "{message}");

    let (reference, reference_tokens) =
        vector_and_usage(&server, json!({"model": MODEL, "input": kept})).await;
    assert_eq!(reference_tokens, 256);
    for (direction, text) in
        [("right", format!("{kept}omega and more")), ("left", format!("alpha and more {kept}"))]
    {
        let body =
            json!({"model": MODEL, "input": text, "truncate": true, "truncation_direction": direction});
        let (vector, tokens) = vector_and_usage(&server, body).await;
        assert_eq!(tokens, 256, "usage counts the tokens embedded ({direction})");
        assert!(cosine(&vector, &reference) > 0.999_999, "{direction}: the kept end only");
    }
    // The whole long text, cut from the right: its start.
    let (_, tokens) =
        vector_and_usage(&server, json!({"model": MODEL, "input": long, "truncate": true})).await;
    assert_eq!(tokens, 256);

    // Token ids are cut as given, from either end.
    let ids: Vec<u32> = (1000..1400).collect();
    for (direction, kept_ids) in [("Right", &ids[..256]), ("Left", &ids[ids.len() - 256..])] {
        let cut = json!({"model": MODEL, "input": ids, "truncate": true, "truncation_direction": direction});
        let (vector, tokens) = vector_and_usage(&server, cut).await;
        let (expected, _) = vector_and_usage(&server, json!({"model": MODEL, "input": kept_ids})).await;
        assert_eq!((tokens, cosine(&vector, &expected) > 0.999_999), (256, true), "{direction}");
    }

    // Bad values name the field.
    for (field, value) in [("truncation_direction", json!("up")), ("truncate", json!("yes"))] {
        let body = json!({"model": MODEL, "input": "hi", field: value});
        let error = expect_error(embed(&server, body).await, 400, "invalid_request_body").await;
        assert_eq!(error["param"], field, "{error}");
    }
}

#[tokio::test]
async fn a_model_set_to_auto_truncate_cuts_unless_the_request_says_not_to() {
    let file = config_file(&format!("models:\n  catalog:\n    {MODEL}:\n      auto_truncate: true\n"));
    let server = Server::start(&[], &["--config", file.path().to_str().unwrap()]).await;
    let long = "word ".repeat(300);
    let (_, tokens) = vector_and_usage(&server, json!({"model": MODEL, "input": long})).await;
    assert_eq!(tokens, 256);
    let refused = embed(&server, json!({"model": MODEL, "input": long, "truncate": false})).await;
    expect_error(refused, 400, "context_length_exceeded").await;
}
