//! The admin API for users and keys, brute-force cool-down, bootstrap,
//! replicas sharing PostgreSQL and Redis, and the proof that no secret is
//! stored or logged in the clear.

use std::time::{Duration, Instant};

use crate::common::{
    anonymous_client, client, client_with_key, expect_error, Schema, Server, ADMIN_KEY, POSTGRES_URL,
};
use serde_json::{json, Value};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const PEPPER: &str = "a test pepper that is at least thirty-two bytes long";

async fn post(client: &reqwest::Client, server: &Server, path: &str, body: Value) -> reqwest::Response {
    client.post(server.url(path)).json(&body).send().await.unwrap()
}

async fn created(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

async fn status_with(server: &Server, key: &str) -> u16 {
    client_with_key(key).get(server.url("/v1/models")).send().await.unwrap().status().as_u16()
}

fn shared_environment(schema: &Schema, redis: bool) -> Vec<(&'static str, String)> {
    let mut environment = vec![
        ("BLAZE__STORAGE__DATABASE_URL", POSTGRES_URL.to_owned()),
        ("BLAZE__STORAGE__POSTGRES__SCHEMA", schema.0.clone()),
        ("BLAZE__STORAGE__POSTGRES__MIN_CONNECTIONS", "1".to_owned()),
        ("BLAZE__SECURITY__PEPPER", PEPPER.to_owned()),
    ];
    if redis {
        environment.push(("BLAZE__STORAGE__REDIS_URL", REDIS_URL.to_owned()));
    }
    environment
}

fn borrowed<'a>(environment: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    environment.iter().map(|(name, value)| (*name, value.as_str())).collect()
}

#[tokio::test]
async fn keys_are_limited_rotated_with_grace_and_scoped_to_their_owner() {
    let server = Server::start(
        &[
            ("BLAZE__SECURITY__API_KEY__MAX_KEYS_PER_USER", "2"),
            ("BLAZE__SECURITY__API_KEY__ROTATION_GRACE_S", "2"),
            ("BLAZE__AUTH__LAST_USED_FLUSH_S", "1"),
        ],
        &[],
    )
    .await;
    let admin = client();
    let bob = created(
        post(&admin, &server, "/admin/users", json!({"email": "bob@example.com", "name": "Bob"})).await,
    )
    .await;
    let bob_id = bob["id"].as_str().unwrap();
    let first =
        created(post(&admin, &server, "/admin/keys", json!({"user_id": bob_id, "name": "one"})).await).await;
    let bob_key = first["key"].as_str().unwrap().to_owned();
    assert!(bob_key.starts_with(&format!("blz_{}_", first["id"].as_str().unwrap())));
    assert_eq!(first["prefix"], format!("blz_{}", first["id"].as_str().unwrap()));
    let bob_client = client_with_key(&bob_key);
    let second = created(post(&bob_client, &server, "/admin/keys", json!({"name": "two"})).await).await;
    assert_eq!(second["user_id"], bob_id, "a user creates keys for themself");
    let refused = post(&admin, &server, "/admin/keys", json!({"user_id": bob_id})).await;
    let error = expect_error(refused, 409, "key_limit_reached").await;
    assert!(error["message"].as_str().unwrap().contains("2 active API keys"), "{error}");

    // Bob sees his keys only, never a secret; the admin's keys are not found.
    let listed: Value = bob_client.get(server.url("/admin/keys")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|key| key["user_id"] == bob_id && key.get("key").is_none()));
    assert!(!listed.to_string().contains(&bob_key[21..]));
    let admin_key_id = &ADMIN_KEY[4..20];
    for request in [
        bob_client.get(server.url(&format!("/admin/keys/{admin_key_id}"))),
        bob_client.delete(server.url(&format!("/admin/keys/{admin_key_id}"))),
        bob_client.post(server.url(&format!("/admin/keys/{admin_key_id}/rotate"))),
    ] {
        expect_error(request.send().await.unwrap(), 404, "not_found").await;
    }
    let admin_user = admin.get(server.url(&format!("/admin/keys/{admin_key_id}"))).send().await.unwrap();
    let admin_user: Value = admin_user.json().await.unwrap();
    let for_admin =
        post(&bob_client, &server, "/admin/keys", json!({"user_id": admin_user["user_id"]})).await;
    expect_error(for_admin, 403, "insufficient_permissions").await;
    let others = bob_client
        .get(server.url(&format!("/admin/keys?user_id={}", admin_user["user_id"].as_str().unwrap())));
    expect_error(others.send().await.unwrap(), 403, "insufficient_permissions").await;
    expect_error(
        bob_client.get(server.url("/admin/users")).send().await.unwrap(),
        403,
        "insufficient_permissions",
    )
    .await;
    assert_eq!(status_with(&server, ADMIN_KEY).await, 200, "the admin key is untouched");

    // No mass assignment: unknown fields are refused.
    for (path, body) in [
        ("/admin/keys", json!({"name": "x", "max_keys": 100})),
        ("/admin/keys", json!({"name": "x", "role": "admin"})),
    ] {
        expect_error(post(&bob_client, &server, path, body).await, 400, "invalid_request_body").await;
    }

    // Rotation: a new key at once, the old one for the grace period.
    let rotated = created(
        bob_client
            .post(server.url(&format!("/admin/keys/{}/rotate", first["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["replaces"]["status"], "rotated");
    assert_eq!(status_with(&server, &new_key).await, 200);
    let within = client_with_key(&bob_key).get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(within.status(), 200, "within the grace period: {}", within.text().await.unwrap());
    let again = bob_client.post(server.url(&format!("/admin/keys/{}/rotate", first["id"].as_str().unwrap())));
    expect_error(again.send().await.unwrap(), 409, "conflict").await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let expired = client_with_key(&bob_key).get(server.url("/v1/models")).send().await.unwrap();
    let error = expect_error(expired, 401, "invalid_api_key").await;
    assert!(error["message"].as_str().unwrap().contains("expired"), "{error}");

    // Revocation is immediate; Bob revokes it with his other key.
    let new_id = rotated["id"].as_str().unwrap();
    let second_key = second["key"].as_str().unwrap();
    let revoked = client_with_key(second_key)
        .delete(server.url(&format!("/admin/keys/{new_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(revoked.json::<Value>().await.unwrap()["status"], "revoked");
    let error = expect_error(
        client_with_key(&new_key).get(server.url("/v1/models")).send().await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("revoked"), "{error}");

    // Last use is written in batches, not per request.
    assert_eq!(status_with(&server, second_key).await, 200);
    let mut last_used = Value::Null;
    for _ in 0..40 {
        let key: Value = admin
            .get(server.url(&format!("/admin/keys/{}", second["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last_used = key["last_used_at"].clone();
        if last_used.is_number() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last_used.is_number(), "last_used_at is recorded within the flush interval");

    // Disabling a user stops their keys at once.
    let disabled = admin.delete(server.url(&format!("/admin/users/{bob_id}"))).send().await.unwrap();
    assert_eq!(disabled.json::<Value>().await.unwrap()["status"], "disabled");
    let error = expect_error(
        client_with_key(second_key).get(server.url("/v1/models")).send().await.unwrap(),
        401,
        "invalid_api_key",
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("disabled"), "{error}");
}

#[tokio::test]
async fn users_are_managed_by_admins_with_pagination_and_validation() {
    let server = Server::start(&[], &[]).await;
    let admin = client();
    for index in 0..5 {
        created(
            post(&admin, &server, "/admin/users", json!({"email": format!("user{index}@example.com")})).await,
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let page: Value = admin
            .get(server.url(&format!("/admin/users?limit=2&after={after}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|user| user["email"].as_str().unwrap().to_owned()));
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().unwrap().to_owned();
    }
    seen.sort();
    assert_eq!(seen.len(), 6, "five users and the admin: {seen:?}");
    seen.dedup();
    assert_eq!(seen.len(), 6);

    let duplicate = post(&admin, &server, "/admin/users", json!({"email": "USER1@example.com"})).await;
    expect_error(duplicate, 409, "conflict").await;
    let bad_email = post(&admin, &server, "/admin/users", json!({"email": "not an email"})).await;
    expect_error(bad_email, 400, "invalid_value").await;
    let short_password =
        post(&admin, &server, "/admin/users", json!({"email": "p@example.com", "password": "short"})).await;
    expect_error(short_password, 400, "invalid_value").await;
    let unknown_field =
        post(&admin, &server, "/admin/users", json!({"email": "q@example.com", "is_admin": true})).await;
    expect_error(unknown_field, 400, "invalid_request_body").await;
    let bad_role =
        post(&admin, &server, "/admin/users", json!({"email": "r@example.com", "role": "root"})).await;
    expect_error(bad_role, 400, "invalid_request_body").await;
    let bad_limit = admin.get(server.url("/admin/users?limit=0")).send().await.unwrap();
    expect_error(bad_limit, 400, "invalid_value").await;

    let user =
        created(post(&admin, &server, "/admin/users", json!({"email": "promote@example.com"})).await).await;
    let id = user["id"].as_str().unwrap();
    let promoted = admin
        .patch(server.url(&format!("/admin/users/{id}")))
        .json(&json!({"role": "admin", "name": "Promoted"}))
        .send()
        .await
        .unwrap();
    let promoted: Value = promoted.json().await.unwrap();
    assert_eq!((promoted["role"].as_str(), promoted["name"].as_str()), (Some("admin"), Some("Promoted")));
    let fetched: Value =
        admin.get(server.url(&format!("/admin/users/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(fetched, promoted);
    let unknown = admin
        .patch(server.url(&format!("/admin/users/{id}")))
        .json(&json!({"email": "x@y.z"}))
        .send()
        .await
        .unwrap();
    expect_error(unknown, 400, "invalid_request_body").await;
    expect_error(admin.get(server.url("/admin/users/nope")).send().await.unwrap(), 404, "not_found").await;
    let admin_id = fetched_admin_id(&server).await;
    let demote_self = admin
        .patch(server.url(&format!("/admin/users/{admin_id}")))
        .json(&json!({"role": "user"}))
        .send()
        .await
        .unwrap();
    expect_error(demote_self, 403, "insufficient_permissions").await;
    let method = admin.put(server.url("/admin/users")).send().await.unwrap();
    expect_error(method, 405, "method_not_allowed").await;
}

async fn fetched_admin_id(server: &Server) -> String {
    let key: Value = client()
        .get(server.url(&format!("/admin/keys/{}", &ADMIN_KEY[4..20])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    key["user_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn repeated_failures_cool_a_client_down() {
    let server = Server::start(
        &[
            ("BLAZE__SECURITY__BRUTE_FORCE__MAX_FAILURES", "5"),
            ("BLAZE__SECURITY__BRUTE_FORCE__WINDOW_S", "60"),
            ("BLAZE__SECURITY__BRUTE_FORCE__COOLDOWN_S", "2"),
        ],
        &[],
    )
    .await;
    let wrong = format!("blz_{}_{}", "12".repeat(8), "34".repeat(32));
    for _ in 0..5 {
        assert_eq!(status_with(&server, &wrong).await, 401);
    }
    // Further failures from the address are cooled down...
    let other_wrong = format!("blz_{}_{}", "56".repeat(8), "78".repeat(32));
    let cooled = client_with_key(&other_wrong).get(server.url("/v1/models")).send().await.unwrap();
    let retry_after: u64 = cooled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    expect_error(cooled, 429, "too_many_auth_failures").await;
    let token = anonymous_client()
        .post(server.url("/auth/token"))
        .json(&json!({"api_key": other_wrong}))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 429, "the token endpoint is cooled down too");
    // ...but a valid key from it is served.
    assert_eq!(status_with(&server, ADMIN_KEY).await, 200);
    let token = anonymous_client()
        .post(server.url("/auth/token"))
        .json(&json!({"api_key": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    assert_eq!(
        anonymous_client().get(server.url("/health")).send().await.unwrap().status(),
        200,
        "public routes stay open"
    );
    let metrics = server.metrics().await;
    assert!(metrics.contains("blaze_auth_failures_total{reason=\"unknown\"} 7"), "{metrics}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(status_with(&server, &other_wrong).await, 401, "the cool-down ends");
}

#[tokio::test]
async fn a_generated_bootstrap_key_is_printed_once_and_works_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let environment =
        [("BLAZE__STORAGE__DATA_DIR", data.path().to_str().unwrap()), ("BLAZE__AUTH__BOOTSTRAP_KEY", "")];
    let first = Server::start(&environment, &[]).await;
    let printed: Vec<String> = first
        .logs()
        .iter()
        .filter(|line| !line.starts_with('{'))
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with("blz_")).map(str::to_owned))
        .collect();
    assert_eq!(printed.len(), 1, "{:#?}", first.logs());
    let key = printed[0].clone();
    assert_eq!(status_with(&first, &key).await, 200);
    assert!(first.logs().iter().filter(|line| line.starts_with('{')).all(|line| !line.contains(&key[21..])));
    drop(first);
    let second = Server::start(&environment, &[]).await;
    assert!(second.logs().iter().all(|line| !line.contains("blz_")), "{:#?}", second.logs());
    assert_eq!(status_with(&second, &key).await, 200);
    let pepper = std::fs::metadata(data.path().join("pepper")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&pepper.permissions()) & 0o777, 0o600);
}

/// Creates users, keys, passwords and tokens; returns every secret made.
async fn exercise(server: &Server) -> Vec<String> {
    let admin = client();
    let password = "correct horse battery staple";
    let user = created(
        post(&admin, server, "/admin/users", json!({"email": "scan@example.com", "password": password}))
            .await,
    )
    .await;
    let key = created(post(&admin, server, "/admin/keys", json!({"user_id": user["id"]})).await).await;
    let key_text = key["key"].as_str().unwrap().to_owned();
    assert_eq!(status_with(server, &key_text).await, 200);
    let rotated = created(
        admin
            .post(server.url(&format!("/admin/keys/{}/rotate", key["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let pair: Value = anonymous_client()
        .post(server.url("/auth/token"))
        .json(&json!({"email": "scan@example.com", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refreshed: Value = anonymous_client()
        .post(server.url("/auth/refresh"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(refreshed["access_token"].is_string(), "{refreshed}");
    let mut secrets = vec![password.to_owned(), PEPPER.to_owned()];
    for key in [&key_text, rotated["key"].as_str().unwrap(), ADMIN_KEY] {
        secrets.push(key.to_owned());
        secrets.push(key[21..].to_owned());
    }
    for token in [
        &pair["access_token"],
        &pair["refresh_token"],
        &refreshed["access_token"],
        &refreshed["refresh_token"],
    ] {
        let token = token.as_str().unwrap();
        secrets.push(token.to_owned());
        secrets.push(token.rsplit('.').next().unwrap().to_owned());
    }
    // Failed attempts with real secrets must not log them either.
    anonymous_client()
        .post(server.url("/auth/token"))
        .json(&json!({"email": "scan@example.com", "password": format!("{password}!")}))
        .send()
        .await
        .unwrap();
    secrets.push(format!("{password}!"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    secrets
}

fn assert_absent(haystack: &str, secrets: &[String], place: &str) {
    for secret in secrets {
        assert!(!haystack.contains(secret.as_str()), "a secret ({}...) is in {place}", &secret[..6]);
    }
}

#[tokio::test]
async fn no_secret_is_stored_or_logged_in_the_clear() {
    // Embedded store: the database file and its write-ahead log.
    let data = tempfile::tempdir().unwrap();
    let embedded = Server::start(
        &[
            ("BLAZE__STORAGE__DATA_DIR", data.path().to_str().unwrap()),
            ("BLAZE__SECURITY__PEPPER", PEPPER),
            ("BLAZE_LOG", "debug"),
        ],
        &[],
    )
    .await;
    let secrets = exercise(&embedded).await;
    let mut stored = String::new();
    for entry in std::fs::read_dir(data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("identity.db") {
            stored.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    assert!(stored.contains("scan@example.com"), "the scan reads the real store");
    assert_absent(&stored, &secrets, "the embedded database");
    assert_absent(&embedded.logs().join("\n"), &secrets, "the logs");

    // PostgreSQL.
    let schema = Schema::new().await;
    let environment = shared_environment(&schema, false);
    let mut with_debug = borrowed(&environment);
    with_debug.push(("BLAZE_LOG", "debug"));
    let shared = Server::start(&with_debug, &[]).await;
    let secrets = exercise(&shared).await;
    let dump = schema.dump().await;
    assert!(dump.contains("scan@example.com") && dump.contains("$argon2id$"), "{dump}");
    assert_absent(&dump, &secrets, "PostgreSQL");
    assert_absent(&shared.logs().join("\n"), &secrets, "the logs");
}

/// Revokes a key through one process and measures how long until the
/// other refuses it.
async fn revocation_reaches_the_other_replica(redis: bool) {
    let schema = Schema::new().await;
    let environment = shared_environment(&schema, redis);
    let first = Server::start(&borrowed(&environment), &[]).await;
    let second = Server::start(&borrowed(&environment), &[]).await;
    let admin = client();
    let key = created(post(&admin, &first, "/admin/keys", json!({"name": "shared"})).await).await;
    let key_text = key["key"].as_str().unwrap();
    assert_eq!(status_with(&second, key_text).await, 200, "a key made through A works through B");
    // B has it cached now; the revocation must still reach it.
    let started = Instant::now();
    let revoked = admin
        .delete(first.url(&format!("/admin/keys/{}", key["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let mut refused_after = None;
    while started.elapsed() < Duration::from_secs(3) {
        if status_with(&second, key_text).await == 401 {
            refused_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_after = refused_after.expect("the second process refuses the revoked key");
    assert!(refused_after < Duration::from_secs(1), "took {refused_after:?}");
    // A sign-out through B ends the sign-in on A too.
    let pair: Value = anonymous_client()
        .post(second.url("/auth/token"))
        .json(&json!({"api_key": ADMIN_KEY}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(status_with(&first, access).await, 200);
    assert_eq!(client_with_key(access).post(second.url("/auth/logout")).send().await.unwrap().status(), 204);
    let started = Instant::now();
    while status_with(&first, access).await != 401 {
        assert!(started.elapsed() < Duration::from_secs(1), "logout did not reach the other process");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_revocation_reaches_another_process_through_redis_within_a_second() {
    revocation_reaches_the_other_replica(true).await;
}

#[tokio::test]
async fn a_revocation_reaches_another_process_through_postgres_within_a_second() {
    revocation_reaches_the_other_replica(false).await;
}

/// A TCP relay to PostgreSQL that the test can cut.
async fn relay() -> (u16, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, watch) = tokio::sync::watch::channel(false);
    let mut stop = watch.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut inbound, _)) = accepted else { return };
                    let mut connection_watch = watch.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await else { return };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = connection_watch.wait_for(|cut| *cut) => {}
                        }
                    });
                }
                _ = stop.wait_for(|cut| *cut) => return,
            }
        }
    });
    (port, cut)
}

// Multi-threaded: the relay keeps running while the test thread waits for
// the server to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_fails_closed_when_the_store_is_unreachable() {
    let schema = Schema::new().await;
    let (port, cut) = relay().await;
    let url = format!("postgresql://postgres@127.0.0.1:{port}/test");
    let mut environment = shared_environment(&schema, false);
    environment[0].1 = url;
    environment.push(("BLAZE__STORAGE__POSTGRES__WAIT_TIMEOUT_MS", "500".to_owned()));
    environment.push(("BLAZE__STORAGE__POSTGRES__CREATE_TIMEOUT_MS", "500".to_owned()));
    let server = Server::start(&borrowed(&environment), &[]).await;
    let key = created(post(&client(), &server, "/admin/keys", json!({"name": "uncached"})).await).await;
    assert_eq!(status_with(&server, ADMIN_KEY).await, 200, "cached now");
    cut.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused =
        client_with_key(key["key"].as_str().unwrap()).get(server.url("/v1/models")).send().await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    expect_error(refused, 503, "auth_unavailable").await;
    assert_eq!(status_with(&server, ADMIN_KEY).await, 200, "a cached key keeps working");
    let unknown = format!("blz_{}_{}", "ef".repeat(8), "01".repeat(32));
    assert_eq!(status_with(&server, &unknown).await, 503, "unknown keys are not let through either");
}
