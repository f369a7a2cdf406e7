//! Loading and unloading models at run time on the real binary and models:
//! `POST /admin/models/{id}/load` and `/unload`, the states and memory
//! `GET /v1/models` shows, the 503s meanwhile, unloading a model with a
//! generation in flight, and the idle unload with its reload on the next
//! request.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const CHAT: &str = "smollm2-135m-instruct";
const EMBEDDING: &str = "all-minilm-l6-v2";

/// SmolLM2-135M's KV cache per token: 30 layers x (key + value) x 3 KV
/// heads x 64 dimensions x 2 bytes (f16).
const CHAT_KV_BYTES_PER_TOKEN: u64 = 30 * 2 * 3 * 64 * 2;

async fn model(server: &Server, id: &str) -> Value {
    let response = client().get(server.url(&format!("/v1/models/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn chat(server: &Server) -> reqwest::Response {
    client()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({ "model": CHAT, "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 4, "temperature": 0 }))
        .send()
        .await
        .unwrap()
}

async fn embed(server: &Server) -> reqwest::Response {
    client()
        .post(server.url("/v1/embeddings"))
        .json(&json!({ "model": EMBEDDING, "input": "still served" }))
        .send()
        .await
        .unwrap()
}

async fn admin_post(server: &Server, path: &str) -> reqwest::Response {
    client().post(server.url(path)).send().await.unwrap()
}

/// Waits (at most 60 s) until the model's state is `state`.
async fn wait_state(server: &Server, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let described = model(server, id).await;
        if described["blaze"]["state"] == state {
            return described;
        }
        assert!(Instant::now() < deadline, "{id} never became {state}: {described}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn an_admin_unloads_and_loads_a_model_while_the_other_serves() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;

    // Loaded: the chat model holds its weights and one worker's KV cache
    // (8 slots of 2048 tokens); the embedding model its worker's weights.
    let loaded = model(&server, CHAT).await["blaze"].clone();
    assert_eq!(loaded["state"], "ready", "{loaded}");
    let weights = loaded["weights_bytes"].as_u64().unwrap();
    let cache = 8 * 2048 * CHAT_KV_BYTES_PER_TOKEN;
    assert_eq!(loaded["memory_bytes"].as_u64(), Some(weights + cache), "{loaded}");
    let embedding = model(&server, EMBEDDING).await["blaze"].clone();
    assert!(embedding["memory_bytes"].as_u64().unwrap() > 10_000_000, "{embedding}");

    let unloaded = admin_post(&server, &format!("/admin/models/{CHAT}/unload")).await;
    assert_eq!(unloaded.status(), 200);
    let unloaded: Value = unloaded.json().await.unwrap();
    assert_eq!(
        (unloaded["state"].as_str(), unloaded["was_loaded"].as_bool()),
        (Some("unloaded"), Some(true))
    );
    let refused = expect_error(chat(&server).await, 503, "model_unloaded").await;
    assert!(refused["message"].as_str().unwrap().contains("/load"), "{refused}");
    assert_eq!(embed(&server).await.status(), 200, "the other model serves on");
    // Its worker drains and leaves the tree; the memory goes with it.
    let worker = format!("worker:{CHAT}:0");
    server
        .wait_event_within("actor released", |event| event["actor"] == worker, Duration::from_secs(20))
        .await;
    let described = model(&server, CHAT).await["blaze"].clone();
    assert_eq!(described["state"], "unloaded", "{described}");
    assert_eq!(described["unloaded_by"], "admin", "{described}");
    assert_eq!(described["memory_bytes"], 0, "{described}");
    let listed: Value = client().get(server.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    let states: Vec<(&str, &str)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| (model["id"].as_str().unwrap(), model["blaze"]["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(EMBEDDING, "ready"), (CHAT, "unloaded")], "{listed}");
    // An unloaded model is deliberate: the service stays ready.
    let ready = anonymous_client().get(server.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    // Unloading it again changes nothing.
    let again: Value =
        admin_post(&server, &format!("/admin/models/{CHAT}/unload")).await.json().await.unwrap();
    assert_eq!(again["was_loaded"], false, "{again}");

    // Loading: 202, and 503 model_loading with Retry-After until served.
    let load = admin_post(&server, &format!("/admin/models/{CHAT}/load")).await;
    assert_eq!(load.status(), 202);
    assert_eq!(load.json::<Value>().await.unwrap()["state"], "loading");
    let loading = chat(&server).await;
    assert_eq!(loading.headers()["retry-after"], "1");
    expect_error(loading, 503, "model_loading").await;
    let twice = admin_post(&server, &format!("/admin/models/{CHAT}/load")).await;
    assert!([200, 202].contains(&twice.status().as_u16()), "a second load while loading is no error");
    let ready = wait_state(&server, CHAT, "ready").await["blaze"].clone();
    assert_eq!(ready["memory_bytes"].as_u64(), Some(weights + cache), "{ready}");
    assert_eq!(chat(&server).await.status(), 200);
    let served = admin_post(&server, &format!("/admin/models/{CHAT}/load")).await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.json::<Value>().await.unwrap()["state"], "ready");
    server.wait_event("audit", |event| event["action"] == "model.loaded").await;
}

#[tokio::test]
async fn only_admins_load_and_unload_and_only_catalog_models() {
    let server = Server::start(&[], &[]).await;
    let user = new_user_client(&server, "loader@example.com").await;
    for action in ["load", "unload"] {
        let path = format!("/admin/models/{CHAT}/{action}");
        let response = user.post(server.url(&path)).send().await.unwrap();
        expect_error(response, 403, "insufficient_permissions").await;
        let response = anonymous_client().post(server.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 401);
        let response = client().get(server.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 405);
        for id in ["no-such-model", "..%2F..%2Fetc", "smollm2-135m-instruct%00", &"m".repeat(5000)] {
            let response = admin_post(&server, &format!("/admin/models/{id}/{action}")).await;
            assert!([404, 414, 431].contains(&response.status().as_u16()), "{id}: {}", response.status());
            if response.status() == 404 {
                let error: Value = response.json().await.unwrap();
                assert!(["model_not_found", "not_found", "unknown_url"]
                    .contains(&error["error"]["code"].as_str().unwrap()));
            }
        }
    }
    // A huge body is refused before it is read, even from an admin.
    let huge = "x".repeat(17 << 20);
    let response = client().post(server.url(&format!("/admin/models/{CHAT}/unload"))).body(huge).send().await;
    assert!(response.map_or(true, |response| response.status() == 413), "over every body limit");
    // Nothing was unloaded by any of that.
    assert_eq!(model(&server, CHAT).await["blaze"]["state"], "ready");
    assert_eq!(embed(&server).await.status(), 200);
}

#[tokio::test]
async fn unloading_a_model_lets_the_generation_in_flight_finish() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let mut response = client()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({
            "model": CHAT,
            "messages": [{ "role": "user", "content": "Count from one to fifty in words." }],
            "max_tokens": 48,
            "temperature": 0,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = String::from_utf8(response.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert_eq!(admin_post(&server, &format!("/admin/models/{CHAT}/unload")).await.status(), 200);
    expect_error(chat(&server).await, 503, "model_unloaded").await;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let chunks = chunks(&body);
    let finish = chunks.iter().find_map(|chunk| chunk["choices"][0]["finish_reason"].as_str());
    assert!(matches!(finish, Some("stop" | "length")), "{body}");
    let worker = format!("worker:{CHAT}:0");
    server
        .wait_event_within("actor released", |event| event["actor"] == worker, Duration::from_secs(20))
        .await;
    assert!(server.events("worker thread ended; restarting the worker").is_empty(), "a drain is no failure");
}

#[tokio::test]
async fn an_idle_model_is_unloaded_and_the_next_request_waits_for_it() {
    let _turn = decoding_turn().await;
    let file = config_file(&format!("models:\n  catalog:\n    {CHAT}:\n      idle_unload_s: 1\n"));
    let server = Server::start(&[], &["--config", file.path().to_str().unwrap()]).await;
    server
        .wait_event_within(
            "model unloaded; its workers finish what they hold",
            |event| event["model"] == CHAT && event["by"] == "Idle",
            Duration::from_secs(20),
        )
        .await;
    let described = model(&server, CHAT).await["blaze"].clone();
    assert_eq!(
        (described["state"].as_str(), described["unloaded_by"].as_str()),
        (Some("unloaded"), Some("idle"))
    );
    // Still ready: an idle unload is no failure.
    assert_eq!(anonymous_client().get(server.url("/health/ready")).send().await.unwrap().status(), 200);
    // The embedding model has no idle_unload_s: it stays.
    assert_eq!(model(&server, EMBEDDING).await["blaze"]["state"], "ready");

    // The next request loads it again and waits for it.
    let answered = chat(&server).await;
    assert_eq!(answered.status(), 200, "{}", answered.text().await.unwrap());
    let metrics = server.metrics().await;
    let value = |name: &str| {
        let prefix = format!("{name}{{model=\"{CHAT}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}in {metrics}"))
    };
    assert_eq!(value("blaze_model_load_wait_seconds_count"), 1.0);
    let waited = value("blaze_model_load_wait_seconds_sum");
    assert!(waited > 0.0, "{metrics}");
    // Its time to first token counts the wait.
    assert_eq!(value("blaze_time_to_first_token_seconds_count"), 1.0);
    assert!(value("blaze_time_to_first_token_seconds_sum") >= waited, "{metrics}");
}
