//! Rate limits through the real server: exact budgets in-process and
//! across two processes sharing the real Redis, per-key and per-user
//! budgets, token reservations settled with real usage, route and
//! per-address budgets, the headers OpenAI and the IETF draft define, and
//! Redis outages in both fail modes (a redis-server of the test's own,
//! killed and restarted).

use std::time::Duration;

use crate::common::{
    anonymous_client, client, client_with_key, config_file, expect_error, OwnRedis, Server, ADMIN_KEY,
};
use serde_json::{json, Value};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
const CHAT_MODEL: &str = "smollm2-135m-instruct";

/// A fresh admin key, so Redis buckets of earlier runs never collide.
fn random_key() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    format!("blz_{}_{}", &id[..16], secret)
}

async fn new_key(server: &Server, admin: &reqwest::Client, body: Value) -> String {
    let response = admin.post(server.url("/admin/keys")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

/// Sends `count` GET /v1/models at once; the statuses.
async fn flood(client: &reqwest::Client, url: &str, count: usize) -> Vec<u16> {
    let requests = (0..count).map(|_| async { client.get(url).send().await.unwrap().status().as_u16() });
    futures_util::future::join_all(requests).await
}

#[tokio::test]
async fn in_process_budget_is_exact_and_every_response_says_where_it_stands() {
    let server = Server::start(&[("BLAZE__RATE_LIMITS__REQUESTS_PER_MINUTE", "100")], &[]).await;
    let key = new_key(&server, &client(), json!({"name": "flood"})).await;
    let caller = client_with_key(&key);

    let started = std::time::Instant::now();
    let first = caller.get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "100");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "99");
    assert_eq!(header(&first, "x-ratelimit-reset-requests"), "600ms");
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "2000000");
    assert_eq!(header(&first, "ratelimit-policy"), "\"requests\";q=100;w=60, \"tokens\";q=2000000;w=60");
    assert_eq!(header(&first, "ratelimit"), "\"requests\";r=99;t=1, \"tokens\";r=2000000;t=0");

    let statuses = flood(&caller, &server.url("/v1/models"), 1_000).await;
    // The bucket refills one request every 600 ms: a flood that lasts
    // longer may spend what came back meanwhile, and nothing more.
    let refilled = (started.elapsed().as_millis() / 600) as usize;
    let admitted = 1 + statuses.iter().filter(|status| **status == 200).count();
    assert!((100..=100 + refilled).contains(&admitted), "{admitted} admitted, {refilled} refilled");
    assert!(statuses.iter().all(|status| *status == 200 || *status == 429));

    // A request refilled in the meantime may still pass; the next is
    // refused.
    let mut extra_admitted = 0;
    let mut refused = caller.get(server.url("/v1/models")).send().await.unwrap();
    while refused.status() == 200 && extra_admitted < 3 {
        extra_admitted += 1;
        refused = caller.get(server.url("/v1/models")).send().await.unwrap();
    }
    assert!(extra_admitted < 3);
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&refused, "retry-after"), "1");
    let reset = header(&refused, "x-ratelimit-reset-requests").to_owned();
    assert!(reset.starts_with("59") || reset.starts_with("1m0"), "{reset}");
    let error = expect_error(refused, 429, "rate_limit_exceeded").await;
    assert_eq!(error["type"], "requests");
    assert!(error["message"].as_str().unwrap().contains("limit 100"), "{error}");

    // Other keys have their own budget; the refusals show in the metrics.
    assert_eq!(client().get(server.url("/v1/models")).send().await.unwrap().status(), 200);
    let metrics = server.metrics().await;
    let limited = 1 + statuses.iter().filter(|status| **status == 429).count();
    let series = format!("blaze_ratelimit_checks_total{{backend=\"local\",result=\"limited\"}} {limited}\n");
    assert!(metrics.contains(&series), "{metrics}");
}

#[tokio::test]
async fn budgets_set_on_a_key_or_a_user_override_the_defaults() {
    let server = Server::start(&[], &[]).await;
    let admin = client();
    let user: Value = admin
        .post(server.url("/admin/users"))
        .json(&json!({"email": "carol@example.com", "rate_limits": {"requests_per_minute": 3}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["rate_limits"], json!({"requests_per_minute": 3, "tokens_per_minute": null}));
    let user_id = user["id"].as_str().unwrap();
    let carol_key = new_key(&server, &admin, json!({"user_id": user_id})).await;
    let carol = client_with_key(&carol_key);
    // Only an admin sets budgets; a user cannot raise their own.
    let own = carol
        .post(server.url("/admin/keys"))
        .json(&json!({"rate_limits": {"requests_per_minute": 1000000}}))
        .send()
        .await
        .unwrap();
    expect_error(own, 403, "insufficient_permissions").await;
    let statuses = flood(&carol, &server.url("/v1/models"), 5).await;
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 2, "the user's budget of 3");

    // A key's own budget wins over its user's.
    let roomy =
        new_key(&server, &admin, json!({"user_id": user_id, "rate_limits": {"requests_per_minute": 5}}))
            .await;
    let statuses = flood(&client_with_key(&roomy), &server.url("/v1/models"), 8).await;
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 5, "the key's budget");

    let user_url = server.url(&format!("/admin/users/{user_id}"));
    let patch_user = |body: Value| admin.patch(&user_url).json(&body).send();
    let zero = patch_user(json!({"rate_limits": {"requests_per_minute": 0}})).await.unwrap();
    expect_error(zero, 400, "invalid_value").await;
    let unknown = patch_user(json!({"rate_limits": {"requests_per_hour": 5}})).await.unwrap();
    expect_error(unknown, 400, "invalid_request_body").await;
    let raised = patch_user(json!({"rate_limits": {"requests_per_minute": 50}})).await.unwrap();
    assert_eq!(raised.status(), 200);
    // The user's new budget applies at once (the event drops the cached
    // user); the bucket keeps the time already spent, so this may still
    // be refused, but it is told the new budget.
    let after = carol.get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(header(&after, "x-ratelimit-limit-requests"), "50");
}

#[tokio::test]
async fn tokens_are_reserved_at_admission_and_settled_with_real_usage() {
    let server = Server::start(&[("BLAZE__RATE_LIMITS__TOKENS_PER_MINUTE", "100")], &[]).await;
    let caller = client_with_key(&new_key(&server, &client(), json!({})).await);
    // An embedding input of a known size: ask the server.
    let probe: Value = caller
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": EMBEDDING_MODEL, "input": "the quick brown fox"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let size = probe["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(size >= 3, "{probe}");
    let requests = (0..50).map(|_| async {
        let response = caller
            .post(server.url("/v1/embeddings"))
            .json(&json!({"model": EMBEDDING_MODEL, "input": "the quick brown fox"}))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    });
    let statuses = futures_util::future::join_all(requests).await;
    let admitted = statuses.iter().filter(|status| **status == 200).count() as u64;
    assert!(admitted >= 1);
    // In-process the budget is exact: the probe and the admitted ones fit
    // in 100 tokens.
    assert!((admitted + 1) * size <= 100, "{admitted} admitted of {size} tokens each");
    assert!(statuses.iter().all(|status| *status == 200 || *status == 429));

    // A request larger than the whole budget is refused at once, and says so.
    let huge = caller
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": EMBEDDING_MODEL, "input": "word ".repeat(200)}))
        .send()
        .await
        .unwrap();
    assert!(huge.headers().get("retry-after").is_none());
    let error = expect_error(huge, 429, "rate_limit_exceeded").await;
    assert_eq!(error["type"], "tokens");
    assert!(error["message"].as_str().unwrap().contains("Request too large"), "{error}");
}

#[tokio::test]
async fn a_chat_reservation_is_settled_with_the_tokens_really_used() {
    let server = Server::start(&[("BLAZE__RATE_LIMITS__TOKENS_PER_MINUTE", "100000")], &[]).await;
    let caller = client_with_key(&new_key(&server, &client(), json!({})).await);
    let _turn = crate::common::decoding_turn().await;
    let body = json!({
        "model": CHAT_MODEL, "max_tokens": 400, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hi."}],
    });
    let response = caller.post(server.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let remaining_at_admission: u64 = header(&response, "x-ratelimit-remaining-tokens").parse().unwrap();
    let answer: Value = response.json().await.unwrap();
    let (prompt, completion) = (
        answer["usage"]["prompt_tokens"].as_u64().unwrap(),
        answer["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(remaining_at_admission, 100_000 - prompt - 400, "prompt plus max_tokens reserved");
    assert!(completion < 400, "{answer}");
    // Settled off the request path: the unused part comes back (the
    // bucket refills a little meanwhile, 1,667 tokens a second).
    let mut remaining = 0;
    for _ in 0..50 {
        let peek = caller.get(server.url("/v1/models")).send().await.unwrap();
        remaining = header(&peek, "x-ratelimit-remaining-tokens").parse::<u64>().unwrap();
        if remaining >= 100_000 - prompt - completion {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(remaining >= 100_000 - prompt - completion, "{remaining}");
}

#[tokio::test]
async fn route_and_address_budgets_apply_and_health_probes_are_never_limited() {
    let config = config_file(
        "rate_limits:\n  anonymous_requests_per_minute: 3\n  routes:\n    - {route: /v1/embeddings, requests_per_minute: 2}\n",
    );
    let server = Server::start(&[], &["--config", config.path().to_str().unwrap()]).await;
    let caller = client_with_key(&new_key(&server, &client(), json!({})).await);
    let embed = || {
        caller
            .post(server.url("/v1/embeddings"))
            .json(&json!({"model": EMBEDDING_MODEL, "input": "hello"}))
            .send()
    };
    assert_eq!(embed().await.unwrap().status(), 200);
    assert_eq!(embed().await.unwrap().status(), 200);
    let refused = embed().await.unwrap();
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), "2", "the tighter budget is reported");
    expect_error(refused, 429, "rate_limit_exceeded").await;
    assert_eq!(caller.get(server.url("/v1/models")).send().await.unwrap().status(), 200, "other routes");

    // Credential-free routes: per client address. Bad bodies count too.
    let anonymous = anonymous_client();
    for _ in 0..3 {
        let response =
            anonymous.post(server.url("/auth/token")).json(&json!({"api_key": "nope"})).send().await.unwrap();
        assert_ne!(response.status(), 429);
    }
    let refused =
        anonymous.post(server.url("/auth/token")).json(&json!({"api_key": ADMIN_KEY})).send().await.unwrap();
    expect_error(refused, 429, "rate_limit_exceeded").await;
    for path in ["/health", "/health/ready", "/livez", "/readyz"] {
        for _ in 0..10 {
            let response = anonymous.get(server.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            assert!(response.headers().get("x-ratelimit-limit-requests").is_none());
        }
    }
}

#[tokio::test]
async fn two_processes_sharing_redis_admit_the_budget_once() {
    let key = random_key();
    let environment = [
        ("BLAZE__STORAGE__REDIS_URL", REDIS_URL),
        ("BLAZE__AUTH__BOOTSTRAP_KEY", key.as_str()),
        ("BLAZE__RATE_LIMITS__REQUESTS_PER_MINUTE", "100"),
        ("BLAZE__RATE_LIMITS__FAIL_MODE", "fail_closed"),
        // The whole suite runs beside it on 2 cores: a Redis call starved
        // past the 100 ms default would fail closed (503), which is not
        // what this test is about (the fail modes have their own).
        ("BLAZE__RATE_LIMITS__REDIS_TIMEOUT_MS", "2000"),
    ];
    let (first, second) = (Server::start(&environment, &[]).await, Server::start(&environment, &[]).await);
    let caller = client_with_key(&key);
    let (first_url, second_url) = (first.url("/v1/models"), second.url("/v1/models"));
    let (a, b) = futures_util::join!(flood(&caller, &first_url, 500), flood(&caller, &second_url, 500));
    let admitted = a.iter().chain(&b).filter(|status| **status == 200).count();
    assert!((100..=101).contains(&admitted), "{admitted} admitted; Redis must run at {REDIS_URL}");
    let other: Vec<_> = a.iter().chain(&b).filter(|status| **status != 200 && **status != 429).collect();
    assert!(other.is_empty(), "statuses other than 200 and 429: {other:?}");
    let metrics = first.metrics().await;
    assert!(
        metrics.contains("blaze_ratelimit_checks_total{backend=\"redis\",result=\"admitted\"}"),
        "{metrics}"
    );
}

async fn until(mut check: impl AsyncFnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} within 10 s");
}

#[tokio::test]
async fn a_redis_outage_fails_open_to_a_local_share_or_fails_closed_and_recovers() {
    let mut redis = OwnRedis::on_free_port();
    let url = redis.url();
    let environment = |mode| {
        [
            ("BLAZE__STORAGE__REDIS_URL", url.as_str()),
            ("BLAZE__RATE_LIMITS__REPLICAS", "2"),
            ("BLAZE__RATE_LIMITS__FAIL_MODE", mode),
        ]
    };
    let open = Server::start(&environment("fail_open"), &[]).await;
    let closed = Server::start(&environment("fail_closed"), &[]).await;
    let admin = client();
    until(async || admin.get(open.url("/v1/models")).send().await.unwrap().status() == 200, "Redis answers")
        .await;

    redis.kill();
    // Fail open: still answered, at this replica's share (10 / 2).
    let ten_a_minute = json!({"rate_limits": {"requests_per_minute": 10}});
    let open_key = client_with_key(&new_key(&open, &admin, ten_a_minute.clone()).await);
    let statuses = flood(&open_key, &open.url("/v1/models"), 8).await;
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 5, "{statuses:?}");
    let metrics = open.metrics().await;
    assert!(metrics.contains("blaze_ratelimit_redis_up 0"), "{metrics}");
    assert!(metrics.contains("blaze_ratelimit_fallback_total"), "{metrics}");
    // Fail closed: 503 in the OpenAI format, with Retry-After.
    let refused = admin.get(closed.url("/v1/models")).send().await.unwrap();
    assert_eq!(header(&refused, "retry-after"), "1");
    expect_error(refused, 503, "rate_limiter_unavailable").await;

    // Redis comes back: both recover on their own.
    let _restarted = OwnRedis::start(redis.port);
    until(
        async || admin.get(closed.url("/v1/models")).send().await.unwrap().status() == 200,
        "fail_closed recovers",
    )
    .await;
    until(async || open.metrics().await.contains("blaze_ratelimit_redis_up 1"), "fail_open recovers").await;
    let fresh = client_with_key(&new_key(&open, &admin, ten_a_minute).await);
    let statuses = flood(&fresh, &open.url("/v1/models"), 12).await;
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 10, "the whole budget again");
}
