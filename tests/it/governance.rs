//! The usage ledger and the audit log through the real server, on both
//! stores: one row per metered request with its caller, model, tokens,
//! cache tier and status; reports by day, model, key, user and team, JSON
//! and CSV, each caller seeing only their own; every admin and key
//! operation audited with before and after and no secret, append-only; and
//! a SIGKILL under load losing at most the last flush interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    client, client_with_key, embed_as, expect_error, json_with_status, user_in_team, Schema, Server,
    ADMIN_KEY, POSTGRES_URL,
};
use serde_json::{json, Value};

const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
const PEPPER: &str = "a-pepper-of-the-governance-tests-32+chars";

const TOPICS_OFF: &str = "guard:\n  categories:\n    topics:\n      action: flag\n      patterns: []\n";
const TOPICS_BLOCK: &str =
    "guard:\n  categories:\n    topics:\n      action: block\n      patterns:\n        - {name: banned, regex: 'forbidden[ -]topic'}\n";

fn embedded() -> Vec<(&'static str, String)> {
    vec![("BLAZE__USAGE__FLUSH_INTERVAL_MS", "50".to_owned())]
}

fn shared(schema: &Schema) -> Vec<(&'static str, String)> {
    vec![
        ("BLAZE__USAGE__FLUSH_INTERVAL_MS", "50".to_owned()),
        ("BLAZE__STORAGE__DATABASE_URL", POSTGRES_URL.to_owned()),
        ("BLAZE__STORAGE__POSTGRES__SCHEMA", schema.0.clone()),
        ("BLAZE__STORAGE__POSTGRES__MIN_CONNECTIONS", "1".to_owned()),
        ("BLAZE__SECURITY__PEPPER", PEPPER.to_owned()),
    ]
}

fn borrowed<'a>(environment: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    environment.iter().map(|(name, value)| (*name, value.as_str())).collect()
}

/// Waits (10 s at most) until the ledger holds `requests` rows under
/// `/admin/usage` with these query parameters, and returns the report.
async fn usage_reaching(server: &Server, query: &str, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = json_with_status(
            client().get(server.url(&format!("/admin/usage?{query}"))).send().await.unwrap(),
            200,
        )
        .await;
        let total: u64 =
            report["data"].as_array().unwrap().iter().map(|row| row["requests"].as_u64().unwrap()).sum();
        if total >= requests || Instant::now() > deadline {
            assert_eq!(total, requests, "{report}");
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ledger's rows and reports, the same on either store.
async fn ledger_scenario(server: &Server) {
    let (alice_id, alice_key_id, alice_key) =
        user_in_team(server, "alice@example.com", Some("research")).await;
    let (bob_id, _, bob_key) = user_in_team(server, "bob@example.com", Some("sales")).await;
    let alice = client_with_key(&alice_key);
    let bob = client_with_key(&bob_key);
    assert_eq!(embed_as(&alice, server, "the first sentence").await.headers()["x-blaze-cache"], "miss");
    assert_eq!(embed_as(&alice, server, "the first sentence").await.headers()["x-blaze-cache"], "hit-memory");
    assert_eq!(embed_as(&bob, server, "another sentence, longer than the first").await.status(), 200);
    // A request refused after its model is known is a row too, with its status.
    let refused = alice
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": EMBEDDING_MODEL, "input": "x", "dimensions": 7}))
        .send()
        .await
        .unwrap();
    expect_error(refused, 400, "invalid_dimensions").await;

    let by_user = usage_reaching(server, "group_by=user,model,team", 4).await;
    let rows = by_user["data"].as_array().unwrap();
    let alice_row = rows.iter().find(|row| row["user"] == alice_id.as_str()).expect("alice's row");
    assert_eq!(alice_row["requests"], 3, "{by_user}");
    assert_eq!(alice_row["errors"], 1, "{by_user}");
    assert_eq!(alice_row["team"], "research");
    let bob_row = rows.iter().find(|row| row["user"] == bob_id.as_str()).expect("bob's row");
    assert_eq!((bob_row["requests"].as_u64(), bob_row["team"].as_str()), (Some(1), Some("sales")));
    assert!(bob_row["prompt_tokens"].as_u64().unwrap() > alice_row["prompt_tokens"].as_u64().unwrap() / 3);
    assert_eq!(bob_row["model"], EMBEDDING_MODEL);

    // A caller's own report covers their keys only, whatever they ask.
    let own =
        json_with_status(alice.get(server.url("/v1/usage?group_by=key,model")).send().await.unwrap(), 200)
            .await;
    assert_eq!(own["data"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["data"][0]["key"], alice_key_id.as_str());
    assert_eq!(own["data"][0]["requests"], 3);
    let others = json_with_status(
        bob.get(server.url(&format!("/v1/usage?key_id={alice_key_id}"))).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(others["data"], json!([]), "another user's key id shows nothing: {others}");
    let asked = bob.get(server.url(&format!("/v1/usage?user_id={alice_id}"))).send().await.unwrap();
    expect_error(asked, 400, "invalid_query").await;
    let asked = bob.get(server.url("/v1/usage?group_by=user")).send().await.unwrap();
    expect_error(asked, 400, "invalid_query").await;
    let asked = bob.get(server.url("/admin/usage")).send().await.unwrap();
    expect_error(asked, 403, "insufficient_permissions").await;

    // By day, the default; bounds in days or Unix seconds.
    let by_day = json_with_status(client().get(server.url("/admin/usage")).send().await.unwrap(), 200).await;
    assert_eq!(by_day["group_by"], json!(["day"]));
    let day = by_day["data"][0]["day"].as_str().unwrap().to_owned();
    assert_eq!(day.len(), 10, "{by_day}");
    let before = json_with_status(
        client().get(server.url("/admin/usage?start=2001-01-01&end=2001-01-02")).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(before["data"], json!([]));
    for bad in [
        "start=yesterday",
        "start=2026-13-01",
        "start=200&end=100",
        "group_by=colour",
        "format=xml",
        "limit=3",
    ] {
        let response = client().get(server.url(&format!("/admin/usage?{bad}"))).send().await.unwrap();
        expect_error(response, 400, "invalid_query").await;
    }

    // CSV, with the same figures.
    let csv = client().get(server.url("/admin/usage?group_by=team&format=csv")).send().await.unwrap();
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(csv.headers()["content-disposition"].to_str().unwrap().contains("usage.csv"));
    let text = csv.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("team,requests,errors,prompt_tokens,completion_tokens,total_tokens,cached_tokens,cost")
    );
    let research = lines.find(|line| line.starts_with("research,")).expect("the research team's line");
    assert!(research.starts_with("research,3,1,"), "{text}");
}

#[tokio::test]
async fn the_ledger_records_each_metered_request_on_the_embedded_store() {
    let environment = embedded();
    let server = Server::start(&borrowed(&environment), &[]).await;
    ledger_scenario(&server).await;
}

#[tokio::test]
async fn the_ledger_records_each_metered_request_on_postgresql() {
    let schema = Schema::new().await;
    let environment = shared(&schema);
    let server = Server::start(&borrowed(&environment), &[]).await;
    ledger_scenario(&server).await;
    // The rows are in the schema, with the indexes the reports use.
    let (postgres, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let count: i64 = postgres
        .query_one(&format!("SELECT COUNT(*) FROM {}.usage_records", schema.0), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 4);
    // The hourly rollup the reports read holds the same requests, indexed
    // by time x key and time x user.
    let summed: i64 = postgres
        .query_one(&format!("SELECT CAST(SUM(requests) AS BIGINT) FROM {}.usage_rollup", schema.0), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(summed, 4);
    let indexes: Vec<String> = postgres
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'usage_rollup'",
            &[&schema.0],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for index in ["usage_by_time_key", "usage_by_time_user"] {
        assert!(indexes.iter().any(|name| name == index), "{indexes:?}");
    }
}

/// Every admin and key operation, audited; the same on either store.
async fn audit_scenario(server: &Server) -> Vec<Value> {
    let admin = client();
    let (user_id, key_id, key) = user_in_team(server, "carol@example.com", None).await;
    json_with_status(
        admin
            .patch(server.url(&format!("/admin/users/{user_id}")))
            .json(&json!({"team": "ops", "password": "a long enough password"}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    // The holder rotates their own key, then an admin revokes the new one.
    let rotated = json_with_status(
        client_with_key(&key).post(server.url(&format!("/admin/keys/{key_id}/rotate"))).send().await.unwrap(),
        201,
    )
    .await;
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    json_with_status(admin.delete(server.url(&format!("/admin/keys/{new_id}"))).send().await.unwrap(), 200)
        .await;
    json_with_status(admin.delete(server.url(&format!("/admin/users/{user_id}"))).send().await.unwrap(), 200)
        .await;
    json_with_status(admin.delete(server.url("/admin/cache")).send().await.unwrap(), 200).await;
    json_with_status(
        admin
            .put(server.url(&format!("/admin/quotas/user/{user_id}")))
            .json(&json!({"requests_per_day": 10}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    json_with_status(
        admin.delete(server.url(&format!("/admin/quotas/user/{user_id}"))).send().await.unwrap(),
        200,
    )
    .await;

    let listing =
        json_with_status(admin.get(server.url("/admin/audit?limit=1000")).send().await.unwrap(), 200).await;
    let entries = listing["data"].as_array().unwrap().clone();
    let actions: Vec<&str> = entries.iter().map(|entry| entry["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "user.created",
            "key.created",
            "user.changed",
            "key.rotated",
            "key.revoked",
            "user.disabled",
            "cache.purged",
            "quota.set",
            "quota.removed"
        ],
        "{listing}"
    );
    let text = listing.to_string();
    assert!(!text.contains(&key), "no key secret in the audit log");
    assert!(!text.contains("a long enough password") && !text.contains("argon2"), "no password or its hash");
    let changed = &entries[2];
    assert_eq!(changed["target"], format!("user:{user_id}"));
    assert_eq!(changed["change"]["before"]["team"], Value::Null);
    assert_eq!(changed["change"]["after"]["team"], "ops");
    assert_eq!(changed["change"]["after"]["password_changed"], true);
    assert_eq!(changed["address"], "127.0.0.1");
    assert!(changed["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    // The rotation was the key holder's own act.
    assert_eq!(entries[3]["actor_id"], user_id.as_str());
    assert_eq!(entries[7]["change"]["after"]["requests_per_day"], 10);
    assert_eq!(entries[8]["change"]["before"]["requests_per_day"], 10);

    // Filters, and paging by id.
    let revoked =
        json_with_status(admin.get(server.url("/admin/audit?action=key.revoked")).send().await.unwrap(), 200)
            .await;
    assert_eq!(revoked["data"].as_array().unwrap().len(), 1);
    assert_eq!(revoked["data"][0]["target"], format!("key:{new_id}"));
    let by_target = json_with_status(
        admin.get(server.url(&format!("/admin/audit?target=user:{user_id}"))).send().await.unwrap(),
        200,
    )
    .await;
    // The user's creation, change and disabling, and the quota set on them.
    assert_eq!(by_target["data"].as_array().unwrap().len(), 5, "{by_target}");
    let first_page =
        json_with_status(admin.get(server.url("/admin/audit?limit=4")).send().await.unwrap(), 200).await;
    assert_eq!(first_page["has_more"], true);
    let after = first_page["last_id"].as_str().unwrap();
    let second_page = json_with_status(
        admin.get(server.url(&format!("/admin/audit?limit=4&after={after}"))).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(second_page["data"][0]["action"], "key.revoked");
    let future =
        json_with_status(admin.get(server.url("/admin/audit?start=4102444800")).send().await.unwrap(), 200)
            .await;
    assert_eq!(future["data"], json!([]));
    expect_error(admin.get(server.url("/admin/audit?limit=0")).send().await.unwrap(), 400, "invalid_query")
        .await;
    expect_error(admin.get(server.url("/admin/audit?actor=x")).send().await.unwrap(), 400, "invalid_query")
        .await;
    let user = client_with_key(&user_in_team(server, "dave@example.com", None).await.2);
    expect_error(user.get(server.url("/admin/audit")).send().await.unwrap(), 403, "insufficient_permissions")
        .await;

    // Each entry is also a structured log line.
    let lines = server.events("audit");
    assert!(lines
        .iter()
        .any(|line| line["action"] == "key.rotated" && line["target_id"] == format!("key:{key_id}")));
    entries
}

#[tokio::test]
async fn admin_and_key_operations_are_audited_on_the_embedded_store() {
    let data_dir = tempfile::tempdir().unwrap();
    let directory = data_dir.path().to_str().unwrap().to_owned();
    let server = Server::start(&[("BLAZE__STORAGE__DATA_DIR", directory.as_str())], &[]).await;
    audit_scenario(&server).await;
    drop(server);
    // Append-only: the table refuses changes and deletions.
    let database = rusqlite::Connection::open(data_dir.path().join("identity.db")).unwrap();
    assert!(database.execute("UPDATE audit_log SET action = 'nothing'", []).is_err());
    assert!(database.execute("DELETE FROM audit_log", []).is_err());
    let count: i64 = database.query_row("SELECT COUNT(*) FROM audit_log", [], |row| row.get(0)).unwrap();
    assert!(count >= 9);
}

#[tokio::test]
async fn admin_and_key_operations_are_audited_on_postgresql() {
    let schema = Schema::new().await;
    let environment = shared(&schema);
    let server = Server::start(&borrowed(&environment), &[]).await;
    let entries = audit_scenario(&server).await;
    let (postgres, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    for statement in
        ["UPDATE {}.audit_log SET action = 'nothing'", "DELETE FROM {}.audit_log", "TRUNCATE {}.audit_log"]
    {
        let statement = statement.replace("{}", &schema.0);
        let error = postgres.batch_execute(&statement).await.expect_err("append-only");
        assert!(
            error.to_string().contains("append-only") || format!("{error:?}").contains("append-only"),
            "{error:?}"
        );
    }
    let count: i64 = postgres
        .query_one(&format!("SELECT COUNT(*) FROM {}.audit_log", schema.0), &[])
        .await
        .unwrap()
        .get(0);
    // The listed entries, and dave's user and key made after the listing.
    assert_eq!(count as usize, entries.len() + 2);
}

#[tokio::test]
async fn model_loads_and_unloads_are_audited() {
    let server = Server::start(&[], &[]).await;
    let admin = client();
    json_with_status(
        admin.post(server.url(&format!("/admin/models/{EMBEDDING_MODEL}/unload"))).send().await.unwrap(),
        200,
    )
    .await;
    let loaded =
        admin.post(server.url(&format!("/admin/models/{EMBEDDING_MODEL}/load"))).send().await.unwrap();
    assert!(matches!(loaded.status().as_u16(), 200 | 202));
    let listing = json_with_status(admin.get(server.url("/admin/audit")).send().await.unwrap(), 200).await;
    let actions: Vec<&str> =
        listing["data"].as_array().unwrap().iter().map(|entry| entry["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["model.unloaded", "model.loaded"]);
    assert_eq!(listing["data"][0]["target"], format!("model:{EMBEDDING_MODEL}"));
    assert_eq!(listing["data"][0]["change"]["before"]["state"], "Served");
    // An id outside the catalog changes nothing and audits nothing.
    expect_error(
        admin.post(server.url("/admin/models/nope/load")).send().await.unwrap(),
        404,
        "model_not_found",
    )
    .await;
    let again = json_with_status(admin.get(server.url("/admin/audit")).send().await.unwrap(), 200).await;
    assert_eq!(again["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_config_reload_is_audited_without_an_actor() {
    let file = crate::common::config_file(TOPICS_OFF);
    let path = file.path().to_str().unwrap().to_owned();
    let server = Server::start(&[], &["--config", &path]).await;
    std::fs::write(file.path(), TOPICS_BLOCK).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listing = json_with_status(
            client().get(server.url("/admin/audit?action=config.reloaded")).send().await.unwrap(),
            200,
        )
        .await;
        if let Some(entry) = listing["data"].as_array().unwrap().first() {
            assert_eq!(entry["actor_id"], Value::Null);
            assert_eq!(entry["target"], "config:guard");
            assert!(entry["change"]["after"]["guard_patterns"].as_u64().is_some_and(|patterns| patterns > 0));
            break;
        }
        assert!(Instant::now() < deadline, "no config.reloaded entry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A SIGKILL under load loses at most the rows of the last flush
/// interval: every answer the client got before the kill is in the
/// ledger, but those that completed in the last interval (and the ledger
/// holds no row for a request that was never answered).
#[tokio::test]
async fn a_sigkill_under_load_loses_at_most_the_last_flush_interval() {
    const FLUSH_MS: u64 = 300;
    let data_dir = tempfile::tempdir().unwrap();
    let directory = data_dir.path().to_str().unwrap().to_owned();
    let flush = FLUSH_MS.to_string();
    let environment = [
        ("BLAZE__STORAGE__DATA_DIR", directory.as_str()),
        ("BLAZE__USAGE__FLUSH_INTERVAL_MS", flush.as_str()),
    ];
    let server = Server::start(&environment, &[]).await;
    let answered: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for worker in 0..4 {
        let (url, answered) = (server.url("/v1/embeddings"), answered.clone());
        clients.push(tokio::spawn(async move {
            let caller = client_with_key(ADMIN_KEY);
            // Bounded: at most 2,000 requests or until the kill.
            for index in 0..2_000 {
                if Instant::now() > stop_at + Duration::from_secs(2) {
                    break;
                }
                let body = json!({"model": EMBEDDING_MODEL, "input": format!("sentence {worker} {index}")});
                match caller.post(&url).json(&body).send().await {
                    Ok(response) if response.status() == 200 => answered.lock().unwrap().push(Instant::now()),
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep_until(stop_at.into()).await;
    let killed_at = Instant::now();
    server.signal(nix::sys::signal::Signal::SIGKILL);
    for task in clients {
        task.await.unwrap();
    }
    drop(server);
    let answered = answered.lock().unwrap().clone();
    let before_kill = answered.iter().filter(|at| **at <= killed_at).count() as u64;
    let last_interval = answered
        .iter()
        .filter(|at| killed_at.duration_since(**at) < Duration::from_millis(2 * FLUSH_MS))
        .count() as u64;
    assert!(before_kill > 20, "the load ran: {before_kill} answers");

    let server = Server::start(&environment, &[]).await;
    let report = json_with_status(
        client().get(server.url("/admin/usage?group_by=endpoint")).send().await.unwrap(),
        200,
    )
    .await;
    let recorded =
        report["data"].as_array().unwrap().iter().map(|row| row["requests"].as_u64().unwrap()).sum::<u64>();
    let lost = answered.len() as u64 - recorded.min(answered.len() as u64);
    eprintln!("answered {} (before the kill {before_kill}), recorded {recorded}, lost {lost}, answered in the last 2 intervals {last_interval}", answered.len());
    assert!(
        recorded <= answered.len() as u64 + 4,
        "no row for a request never answered (4 in flight at most)"
    );
    assert!(
        lost <= last_interval,
        "lost {lost} rows, more than the {last_interval} answered in the last interval"
    );
}
