//! Quotas per day and month on keys, users and teams, through the real
//! server: reserved at admission, refused with 429 quota_exceeded naming
//! the window and its reset, the headers showing what is left, kept
//! across a restart (rebuilt from the ledger), following a key through
//! its rotation, priced per model; and exact across two replicas sharing
//! PostgreSQL and Redis.

use std::time::{Duration, Instant};

use crate::common::{
    client, client_with_key, config_file, embed_as, expect_error, json_with_status, user_in_team, Schema,
    Server, POSTGRES_URL,
};
use serde_json::{json, Value};

const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
const REDIS_URL: &str = "redis://127.0.0.1:6379";

async fn set_quota(server: &Server, path: &str, limits: Value) {
    json_with_status(
        client().put(server.url(&format!("/admin/quotas/{path}"))).json(&limits).send().await.unwrap(),
        200,
    )
    .await;
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|value| value.to_str().unwrap().to_owned())
}

/// Waits (10 s at most) until the ledger shows `requests` spent today by
/// the quota subject at `path`.
async fn spent_reaching(server: &Server, path: &str, requests: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let quota = json_with_status(
            client().get(server.url(&format!("/admin/quotas/{path}"))).send().await.unwrap(),
            200,
        )
        .await;
        if quota["spent"]["day"]["requests"] == requests {
            return;
        }
        assert!(Instant::now() < deadline, "the ledger never showed {requests} requests: {quota}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_user_day_quota_refuses_the_request_past_it_even_after_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let directory = data_dir.path().to_str().unwrap().to_owned();
    let environment =
        [("BLAZE__STORAGE__DATA_DIR", directory.as_str()), ("BLAZE__USAGE__FLUSH_INTERVAL_MS", "50")];
    let server = Server::start(&environment, &[]).await;
    let (user_id, _, key) = user_in_team(&server, "quota@example.com", None).await;
    let caller = client_with_key(&key);
    set_quota(
        &server,
        &format!("user/{user_id}"),
        json!({"requests_per_day": 3, "tokens_per_month": 1000000}),
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let response = embed_as(&caller, &server, "within the quota").await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-blaze-quota-limit-requests-day").as_deref(), Some("3"));
        assert_eq!(header(&response, "x-blaze-quota-remaining-requests-day").as_deref(), Some(remaining));
        assert_eq!(header(&response, "x-blaze-quota-limit-tokens-month").as_deref(), Some("1000000"));
        let reset: u64 = header(&response, "x-blaze-quota-reset-day").unwrap().parse().unwrap();
        assert!(reset <= 86_400);
    }
    let refused = embed_as(&caller, &server, "one too many").await;
    let retry_after: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after));
    let error = expect_error(refused, 429, "quota_exceeded").await;
    assert_eq!(error["type"], "insufficient_quota");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("user quota of 3 requests per day") && message.contains("resets at"),
        "{message}"
    );
    // Other users are not concerned.
    let (_, _, other) = user_in_team(&server, "other@example.com", None).await;
    assert_eq!(embed_as(&client_with_key(&other), &server, "mine").await.status(), 200);

    // The ledger holds the spent requests (a refused one spent nothing);
    // a restart rebuilds the count.
    spent_reaching(&server, &format!("user/{user_id}"), 3).await;
    drop(server);
    let server = Server::start(&environment, &[]).await;
    expect_error(embed_as(&caller, &server, "after the restart").await, 429, "quota_exceeded").await;
    // Removing the quota lets the user through again.
    json_with_status(
        client().delete(server.url(&format!("/admin/quotas/user/{user_id}"))).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(embed_as(&caller, &server, "free again").await.status(), 200);
}

#[tokio::test]
async fn a_team_shares_its_quota_and_a_key_keeps_its_own_through_rotation() {
    let server = Server::start(&[("BLAZE__USAGE__FLUSH_INTERVAL_MS", "50")], &[]).await;
    let (_, _, first) = user_in_team(&server, "one@example.com", Some("research")).await;
    let (_, _, second) = user_in_team(&server, "two@example.com", Some("research")).await;
    let (_, _, outsider) = user_in_team(&server, "three@example.com", Some("sales")).await;
    set_quota(&server, "team/research", json!({"requests_per_month": 3})).await;
    assert_eq!(embed_as(&client_with_key(&first), &server, "a").await.status(), 200);
    assert_eq!(embed_as(&client_with_key(&second), &server, "b").await.status(), 200);
    assert_eq!(embed_as(&client_with_key(&first), &server, "c").await.status(), 200);
    let refused = embed_as(&client_with_key(&second), &server, "d").await;
    let error = expect_error(refused, 429, "quota_exceeded").await;
    assert!(error["message"].as_str().unwrap().contains("team quota of 3 requests per month"), "{error}");
    assert_eq!(embed_as(&client_with_key(&outsider), &server, "e").await.status(), 200);

    // A key's quota follows it through a rotation.
    let (_, key_id, key) = user_in_team(&server, "rotator@example.com", None).await;
    set_quota(&server, &format!("key/{key_id}"), json!({"requests_per_day": 2})).await;
    assert_eq!(embed_as(&client_with_key(&key), &server, "f").await.status(), 200);
    let rotated = json_with_status(
        client_with_key(&key).post(server.url(&format!("/admin/keys/{key_id}/rotate"))).send().await.unwrap(),
        201,
    )
    .await;
    let new_key = rotated["key"].as_str().unwrap();
    assert_eq!(embed_as(&client_with_key(new_key), &server, "g").await.status(), 200);
    expect_error(embed_as(&client_with_key(new_key), &server, "h").await, 429, "quota_exceeded").await;
}

#[tokio::test]
async fn a_cost_quota_budgets_in_currency_at_the_model_price() {
    let file = config_file(&format!(
        "quotas:\n  currency: EUR\n  prices:\n    {EMBEDDING_MODEL}: {{prompt_per_1k: 1.0, completion_per_1k: 0.0}}\n"
    ));
    let path = file.path().to_str().unwrap().to_owned();
    let server = Server::start(&[("BLAZE__USAGE__FLUSH_INTERVAL_MS", "50")], &["--config", &path]).await;
    let (user_id, _, key) = user_in_team(&server, "spender@example.com", None).await;
    // 1.0 per 1,000 tokens: 1,000 micros a token; 20,000 micros is 20 tokens.
    set_quota(&server, &format!("user/{user_id}"), json!({"cost_micros_per_day": 20000})).await;
    let caller = client_with_key(&key);
    let mut answered = 0;
    for index in 0..20 {
        let response = embed_as(&caller, &server, &format!("three words {index}")).await;
        if response.status() == 429 {
            let error = expect_error(response, 429, "quota_exceeded").await;
            assert!(error["message"].as_str().unwrap().contains("cost"), "{error}");
            break;
        }
        assert_eq!(response.status(), 200);
        answered += 1;
    }
    assert!((1..10).contains(&answered), "a few requests fit 20 tokens' price: {answered}");
    let report =
        json_with_status(client().get(server.url("/admin/usage?group_by=user")).send().await.unwrap(), 200)
            .await;
    assert_eq!(report["currency"], "EUR");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = json_with_status(
            client().get(server.url(&format!("/admin/usage?user_id={user_id}"))).send().await.unwrap(),
            200,
        )
        .await;
        let cost = report["data"].get(0).and_then(|row| row["cost"].as_f64()).unwrap_or(0.0);
        if cost > 0.0 {
            assert!(cost <= 0.02 + 1e-9, "{report}");
            break;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn quota_routes_refuse_what_they_should() {
    let server = Server::start(&[], &[]).await;
    let (user_id, key_id, key) = user_in_team(&server, "hostile@example.com", Some("red")).await;
    let admin = client();
    for (path, status, code) in [
        ("/admin/quotas/users/x".to_owned(), 404, "not_found"),
        ("/admin/quotas/user/nobody".to_owned(), 404, "not_found"),
        ("/admin/quotas/key/0123456789abcdef".to_owned(), 404, "not_found"),
        ("/admin/quotas/team/a%2Fb".to_owned(), 404, "not_found"),
        (format!("/admin/quotas/team/{}", "t".repeat(65)), 404, "not_found"),
    ] {
        let response =
            admin.put(server.url(&path)).json(&json!({"requests_per_day": 1})).send().await.unwrap();
        expect_error(response, status, code).await;
    }
    for body in [
        json!({"requests_per_day": 1, "role": "admin"}),
        json!({"requests_per_day": -1}),
        json!({"requests_per_day": "many"}),
        json!({"tokens_per_day": 1_000_000_000_000_000_001_u64}),
    ] {
        let response =
            admin.put(server.url(&format!("/admin/quotas/user/{user_id}"))).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
    // Not an admin: not even their own quota.
    let holder = client_with_key(&key);
    let response =
        holder.put(server.url(&format!("/admin/quotas/key/{key_id}"))).json(&json!({})).send().await.unwrap();
    expect_error(response, 403, "insufficient_permissions").await;
    expect_error(
        holder.get(server.url("/admin/quotas")).send().await.unwrap(),
        403,
        "insufficient_permissions",
    )
    .await;
    // A team quota is listed by the team's name.
    set_quota(&server, "team/red", json!({"tokens_per_day": 5})).await;
    let listing = json_with_status(admin.get(server.url("/admin/quotas")).send().await.unwrap(), 200).await;
    assert_eq!(listing["data"][0]["subject"], "red");
    assert_eq!(listing["data"][0]["limits"]["tokens_per_day"], 5);
    let team =
        json_with_status(admin.get(server.url("/admin/quotas/team/red")).send().await.unwrap(), 200).await;
    assert_eq!(team["source"], "set");
    let default = json_with_status(
        admin.get(server.url(&format!("/admin/quotas/user/{user_id}"))).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(default["source"], "default");
    assert_eq!(default["spent"]["day"]["requests"], 0);
    // The team's 5 tokens are less than one request's: refused, with no
    // tokens spent.
    expect_error(
        embed_as(&holder, &server, "a sentence of more than five tokens, surely").await,
        429,
        "quota_exceeded",
    )
    .await;
}

/// Two replicas sharing PostgreSQL and Redis, a user's day quota of 100
/// requests hit from both at once: 100 accepted (1% over at most).
#[tokio::test]
async fn a_day_quota_is_exact_across_two_replicas_sharing_redis() {
    let schema = Schema::new().await;
    let environment = [
        ("BLAZE__STORAGE__DATABASE_URL", POSTGRES_URL),
        ("BLAZE__STORAGE__POSTGRES__SCHEMA", schema.0.as_str()),
        ("BLAZE__STORAGE__POSTGRES__MIN_CONNECTIONS", "1"),
        ("BLAZE__STORAGE__REDIS_URL", REDIS_URL),
        ("BLAZE__SECURITY__PEPPER", "a-pepper-shared-by-the-two-replicas-32+"),
        ("BLAZE__USAGE__FLUSH_INTERVAL_MS", "50"),
        ("BLAZE__RATE_LIMITS__REQUESTS_PER_MINUTE", "0"),
    ];
    let first = Server::start(&environment, &[]).await;
    let second = Server::start(&environment, &[]).await;
    let (user_id, _, key) = user_in_team(&first, "shared@example.com", None).await;
    set_quota(&first, &format!("user/{user_id}"), json!({"requests_per_day": 100})).await;
    // The other replica reloads the quotas set within 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut tasks = Vec::new();
    for (replica, url) in [(0, first.url("/v1/embeddings")), (1, second.url("/v1/embeddings"))] {
        for worker in 0..4 {
            let (url, key) = (url.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let caller = client_with_key(&key);
                let (mut accepted, mut refused) = (0u32, 0u32);
                for index in 0..40 {
                    let body = json!({"model": EMBEDDING_MODEL, "input": format!("replica {replica} worker {worker} {index}")});
                    let response = caller.post(&url).json(&body).send().await.unwrap();
                    match response.status().as_u16() {
                        200 => accepted += 1,
                        429 => {
                            let body: Value = response.json().await.unwrap();
                            assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
                            refused += 1;
                        }
                        other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
                    }
                }
                (accepted, refused)
            }));
        }
    }
    let (mut accepted, mut refused) = (0, 0);
    for task in tasks {
        let (yes, no) = task.await.unwrap();
        accepted += yes;
        refused += no;
    }
    assert_eq!(accepted + refused, 320);
    assert!((100..=101).contains(&accepted), "accepted {accepted} of a quota of 100");
}
