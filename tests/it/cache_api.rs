//! The response cache through the real server and models: what is cached
//! and for whom, single flight, streams replayed from the cache, the disk
//! tier across a restart, invalidation, and the Redis tier shared by two
//! processes, killed and restarted under them.

use std::time::Duration;

use crate::common::{chunks, client, expect_error, new_user_client, OwnRedis, Server};
use serde_json::{json, Value};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
const CHAT_MODEL: &str = "smollm2-135m-instruct";

fn cache_header(response: &reqwest::Response) -> String {
    response.headers().get("x-blaze-cache").expect("x-blaze-cache").to_str().unwrap().to_owned()
}

/// A counter of the Prometheus exposition, 0 if absent.
async fn counter(server: &Server, series: &str) -> f64 {
    let metrics = server.metrics().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn embed(caller: &reqwest::Client, server: &Server, input: Value) -> (String, Value) {
    let response = caller
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": EMBEDDING_MODEL, "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = cache_header(&response);
    (header, response.json().await.unwrap())
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": CHAT_MODEL, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn embeddings_are_cached_per_input_and_per_user() {
    let server = Server::start(&[], &[]).await;
    let admin = client();
    let prompt_tokens = format!("blaze_tokens_total{{model=\"{EMBEDDING_MODEL}\",kind=\"prompt\"}}");

    let (first, body) = embed(&admin, &server, json!("a sentence to keep")).await;
    assert_eq!(first, "miss");
    let (second, again) = embed(&admin, &server, json!("a sentence to keep")).await;
    assert_eq!(second, "hit-memory");
    assert_eq!(body["data"], again["data"], "the same vector");
    assert_eq!(body["usage"], again["usage"]);

    // In a batch, only the new input is computed.
    let before = counter(&server, &prompt_tokens).await;
    let (batch, batch_body) = embed(&admin, &server, json!(["a sentence to keep", "a new one"])).await;
    assert_eq!(batch, "miss");
    let computed = counter(&server, &prompt_tokens).await - before;
    let (_, alone) = embed(&admin, &server, json!("a new one")).await;
    assert_eq!(computed, alone["usage"]["prompt_tokens"].as_f64().unwrap(), "only the new input's tokens");
    assert_eq!(batch_body["data"][0]["embedding"], body["data"][0]["embedding"]);
    let (all_cached, _) = embed(&admin, &server, json!(["a sentence to keep", "a new one"])).await;
    assert_eq!(all_cached, "hit-memory");

    // Another user never sees the admin's entries; no-cache bypasses.
    let dan = new_user_client(&server, "dan@example.com").await;
    assert_eq!(embed(&dan, &server, json!("a sentence to keep")).await.0, "miss", "scoped per user");
    let bypass = admin
        .post(server.url("/v1/embeddings"))
        .header("cache-control", "no-cache")
        .json(&json!({"model": EMBEDDING_MODEL, "input": "a sentence to keep"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&bypass), "bypass");
    let metrics = server.metrics().await;
    assert!(metrics.contains("blaze_cache_requests_total{tier=\"memory\",result=\"hit\"}"), "{metrics}");
}

#[tokio::test]
async fn identical_concurrent_chats_run_inference_once_and_streams_replay() {
    let server = Server::start(&[], &[]).await;
    let admin = client();
    let _turn = crate::common::decoding_turn().await;
    let completion_tokens = format!("blaze_tokens_total{{model=\"{CHAT_MODEL}\",kind=\"completion\"}}");
    let before = counter(&server, &completion_tokens).await;
    let body = chat_body("Name a fruit.", json!({}));
    let requests = (0..50).map(|_| async {
        let response = admin.post(server.url("/v1/chat/completions")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let header = cache_header(&response);
        let answer: Value = response.json().await.unwrap();
        (header, answer)
    });
    let answers = futures_util::future::join_all(requests).await;
    assert_eq!(answers.iter().filter(|(header, _)| header == "miss").count(), 1);
    assert!(answers.iter().all(|(header, _)| header == "miss" || header == "hit-memory"));
    let content = &answers[0].1["choices"][0]["message"]["content"];
    assert!(answers.iter().all(|(_, answer)| &answer["choices"][0]["message"]["content"] == content));
    let generated = counter(&server, &completion_tokens).await - before;
    assert_eq!(generated, answers[0].1["usage"]["completion_tokens"].as_f64().unwrap(), "one inference");

    // A stream of the same request replays the cached answer as chunks.
    let stream_body = chat_body("Name a fruit.", json!({"stream": true}));
    let response = admin.post(server.url("/v1/chat/completions")).json(&stream_body).send().await.unwrap();
    assert_eq!(cache_header(&response), "hit-memory");
    let replayed = chunks(&response.text().await.unwrap());
    let text: String =
        replayed.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(Value::String(text), *content);

    // A stream that misses is cached whole, and replays with the same
    // chunk shape as it streamed.
    let fresh = chat_body("Name a color.", json!({"stream": true}));
    let live = admin.post(server.url("/v1/chat/completions")).json(&fresh).send().await.unwrap();
    assert_eq!(cache_header(&live), "miss");
    let live = chunks(&live.text().await.unwrap());
    let cached = admin.post(server.url("/v1/chat/completions")).json(&fresh).send().await.unwrap();
    assert_eq!(cache_header(&cached), "hit-memory");
    let cached = chunks(&cached.text().await.unwrap());
    let shape = |chunks: &[Value]| -> Vec<Value> {
        chunks.iter().map(|chunk| json!([chunk["object"], chunk["choices"], chunk["model"]])).collect()
    };
    assert_eq!(shape(&live), shape(&cached));

    // Sampling without a seed is not deterministic: never cached.
    let random = chat_body("Name a fruit.", json!({"temperature": 0.8}));
    let response = admin.post(server.url("/v1/chat/completions")).json(&random).send().await.unwrap();
    assert_eq!(cache_header(&response), "bypass");
    let seeded = chat_body("Name a fruit.", json!({"temperature": 0.8, "seed": 7}));
    for expected in ["miss", "hit-memory"] {
        let response = admin.post(server.url("/v1/chat/completions")).json(&seeded).send().await.unwrap();
        assert_eq!(cache_header(&response), expected);
    }
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart_and_invalidation_reaches_it() {
    let data = tempfile::tempdir().unwrap();
    let directory = data.path().to_str().unwrap();
    let environment = [("BLAZE__STORAGE__DATA_DIR", directory)];
    let mut server = Server::start(&environment, &[]).await;
    let admin = client();
    let (first, _) = embed(&admin, &server, json!("kept across a restart")).await;
    assert_eq!(first, "miss");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).await.success());

    let server = Server::start(&environment, &[]).await;
    let response = admin
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": EMBEDDING_MODEL, "input": "kept across a restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&response), "hit-disk");
    let key = response.headers()["x-blaze-cache-key"].to_str().unwrap().to_owned();
    assert_eq!(key.len(), 64);

    // Invalidation: admins only; by key, by model, everything.
    let refused = admin.delete(server.url("/admin/cache?model=a&key=b")).send().await.unwrap();
    expect_error(refused, 400, "invalid_query").await;
    let dropped = admin.delete(server.url(&format!("/admin/cache?key={key}"))).send().await.unwrap();
    assert_eq!(dropped.status(), 200);
    assert_eq!(
        embed(&admin, &server, json!("kept across a restart")).await.0,
        "miss",
        "gone from every tier"
    );
    assert_eq!(embed(&admin, &server, json!("kept across a restart")).await.0, "hit-memory");
    let by_model =
        admin.delete(server.url(&format!("/admin/cache?model={EMBEDDING_MODEL}"))).send().await.unwrap();
    assert_eq!(by_model.status(), 200);
    assert_eq!(embed(&admin, &server, json!("kept across a restart")).await.0, "miss");
    let everything = admin.delete(server.url("/admin/cache")).send().await.unwrap();
    assert_eq!(everything.status(), 200);
    assert_eq!(embed(&admin, &server, json!("kept across a restart")).await.0, "miss");

    let eve = new_user_client(&server, "eve@example.com").await;
    let forbidden = eve.delete(server.url("/admin/cache")).send().await.unwrap();
    expect_error(forbidden, 403, "insufficient_permissions").await;
}

#[tokio::test]
async fn replicas_share_the_redis_tier_and_its_invalidations() {
    let shared = [
        ("BLAZE__STORAGE__REDIS_URL", REDIS_URL),
        ("BLAZE__CACHE__SHARED_ACROSS_USERS", "true"),
        ("BLAZE__CACHE__DISK_BYTES", "0"),
    ];
    let (first, second) = (Server::start(&shared, &[]).await, Server::start(&shared, &[]).await);
    let admin = client();
    let input = json!(format!("shared between replicas {}", uuid::Uuid::new_v4()));
    assert_eq!(embed(&admin, &first, input.clone()).await.0, "miss");
    let mut header = String::new();
    for _ in 0..50 {
        header = embed(&admin, &second, input.clone()).await.0;
        if header == "hit-redis" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(header, "hit-redis", "Redis must run at {REDIS_URL}");
    assert_eq!(embed(&admin, &second, input.clone()).await.0, "hit-memory", "promoted");

    // An invalidation on one replica drops the other's memory entry too.
    let dropped =
        admin.delete(first.url(&format!("/admin/cache?model={EMBEDDING_MODEL}"))).send().await.unwrap();
    assert_eq!(dropped.status(), 200);
    let mut missed = false;
    for _ in 0..50 {
        if embed(&admin, &second, input.clone()).await.0 == "miss" {
            missed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(missed, "the second replica dropped the entry");
}

#[tokio::test]
async fn a_redis_outage_is_skipped_and_nothing_fails() {
    let mut redis = OwnRedis::on_free_port();
    let url = redis.url();
    let server = Server::start(&[("BLAZE__STORAGE__REDIS_URL", url.as_str())], &[]).await;
    let admin = client();
    let mut up = false;
    for _ in 0..100 {
        if server.metrics().await.contains("blaze_cache_redis_up 1") {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the test's redis-server answers");
    assert_eq!(embed(&admin, &server, json!("before the outage")).await.0, "miss");

    redis.kill();
    assert_eq!(embed(&admin, &server, json!("during the outage")).await.0, "miss", "computed, not failed");
    assert_eq!(embed(&admin, &server, json!("during the outage")).await.0, "hit-memory");
    assert_eq!(embed(&admin, &server, json!("before the outage")).await.0, "hit-memory");
    let metrics = server.metrics().await;
    assert!(metrics.contains("blaze_cache_errors_total{tier=\"redis\"}"), "{metrics}");

    let _restarted = OwnRedis::start(redis.port);
    let mut back = false;
    for _ in 0..100 {
        let _ = embed(&admin, &server, json!(format!("after {}", uuid::Uuid::new_v4()))).await;
        if server.metrics().await.contains("blaze_cache_redis_up 1") {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the Redis tier is used again");
}

#[tokio::test]
async fn the_warming_file_fills_the_cache_in_the_background() {
    let lines = [
        json!({"endpoint": "/v1/embeddings", "body": {"model": EMBEDDING_MODEL, "input": "warmed sentence"}}),
        json!({"endpoint": "/v1/chat/completions", "body": chat_body("Say yes.", json!({"max_tokens": 4}))}),
        json!({"endpoint": "/v1/chat/completions", "body": chat_body("Say no.", json!({"temperature": 0.9}))}),
        json!({"endpoint": "/v1/nothing", "body": {}}),
    ];
    let text: String = lines.iter().map(|line| format!("{line}\nnot json\n")).collect::<String>();
    let file = crate::common::config_file(&text);
    let path = file.path().to_str().unwrap();
    let _turn = crate::common::decoding_turn().await;
    let server = Server::start(
        &[("BLAZE__CACHE__WARM_FILE", path), ("BLAZE__CACHE__SHARED_ACROSS_USERS", "true")],
        &[],
    )
    .await;
    // Warming waits for the models, then generates: minutes on a loaded CI
    // machine, seconds on a quiet one.
    let finished =
        server.wait_event_within("cache warming: finished", |_| true, Duration::from_secs(300)).await;
    assert_eq!((finished["warmed"].as_u64(), finished["failed"].as_u64()), (Some(2), Some(6)), "{finished}");
    assert!(!server.events("cache warming: progress").is_empty());
    let admin = client();
    assert_eq!(embed(&admin, &server, json!("warmed sentence")).await.0, "hit-memory");
    let chat = admin
        .post(server.url("/v1/chat/completions"))
        .json(&chat_body("Say yes.", json!({"max_tokens": 4})))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&chat), "hit-memory");
}
