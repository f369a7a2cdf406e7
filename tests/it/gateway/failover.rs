//! Two Blaze processes as the upstreams of a third, one killed and
//! restarted under load; and a local model overflowing to an upstream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use super::stub::Stub;
use super::{gateway, served_by, upstream, UPSTREAM_KEY_VARIABLE};
use crate::common::{self, client, Server, ADMIN_KEY};

const MODEL: &str = "smollm2-135m-instruct";

/// What one client request of the load saw.
#[derive(Debug, Clone)]
struct Outcome {
    request_id: String,
    started: Instant,
    served_by: String,
    /// 200 and a stream that ended with [DONE].
    complete: bool,
    /// A stream that started, then ended with an error event.
    broken_stream: bool,
    /// The status and the start of the body, for the failure message.
    detail: String,
}

/// Request ids in an upstream's access log.
fn request_ids(server: &Server) -> Vec<String> {
    server
        .events("request")
        .iter()
        .filter(|event| event["route"] == "/v1/chat/completions")
        .filter_map(|event| event["request_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn two_blaze_upstreams_one_killed_and_restarted_under_load() {
    let _turn = common::decoding_turn().await;
    let first = Server::start(&[], &[]).await;
    let second = Server::start(&[], &[]).await;
    let first_port = first.address.rsplit(':').next().unwrap().to_owned();
    // Three processes share two cores, one of them loading its models
    // again after the restart: a first byte may take seconds. A killed
    // upstream refuses connections at once, whatever this timeout.
    let extra = format!("      model: {MODEL}\n      first_byte_timeout_ms: 10000\n");
    let upstreams =
        [upstream("up-a", &first.url("/v1"), &extra), upstream("up-b", &second.url("/v1"), &extra)];
    let routes = "  probe_interval_s: 1\n  eject_after_failures: 1\n  eject_backoff_ms: 500\n  eject_max_backoff_ms: 1000\n  \
                  routes:\n    chat:\n      targets: [{model: up-a}, {model: up-b}]\n      strategy: least_outstanding\n";
    let (gateway, _config) = gateway(&upstreams, routes, &[(UPSTREAM_KEY_VARIABLE, ADMIN_KEY)]).await;

    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(10);
    let mut clients = Vec::new();
    for client_index in 0..3 {
        let url = gateway.url("/v1/chat/completions");
        let outcomes = outcomes.clone();
        clients.push(tokio::spawn(async move {
            let caller = client();
            for request_index in 0..400 {
                if Instant::now() >= stop_at {
                    break;
                }
                let request_id = format!("load-{client_index}-{request_index}");
                // Each prompt its own: the upstreams' prefix reuse is not
                // what this measures.
                let content = format!("Name a fruit ({request_id}).");
                let body = json!({"model": "chat", "max_tokens": 3, "stream": true,
                    "messages": [{"role": "user", "content": content}]});
                let sent = Instant::now();
                let response = caller.post(&url).header("x-request-id", &request_id).json(&body).send().await;
                let (served, complete, broken, detail) = match response {
                    Ok(response) => {
                        let status = response.status();
                        let served = served_by(&response);
                        let text = response.text().await.unwrap_or_default();
                        let complete = status == 200 && text.trim_end().ends_with("data: [DONE]");
                        let broken = status == 200 && !complete && text.contains("\"error\"");
                        (
                            served,
                            complete,
                            broken,
                            format!("{status} {}", text.chars().take(300).collect::<String>()),
                        )
                    }
                    Err(error) => (String::new(), false, false, error.to_string()),
                };
                outcomes.lock().unwrap().push(Outcome {
                    request_id,
                    started: sent,
                    served_by: served,
                    complete,
                    broken_stream: broken,
                    detail,
                });
            }
        }));
    }
    // Kill the first upstream mid-load, restart it on its port later.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    first.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // Requests from here on may reach it again, as soon as it listens.
    let restarting_at = Instant::now();
    let restarted = Server::start(&[("BLAZE__SERVER__PORT", first_port.as_str())], &[]).await;
    for client in clients {
        client.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();

    let failed: Vec<&Outcome> = outcomes.iter().filter(|outcome| !outcome.complete).collect();
    let total = outcomes.len();
    eprintln!(
        "gateway failover: {total} requests, {} failed ({:.2}%), {} broken streams",
        failed.len(),
        100.0 * failed.len() as f64 / total as f64,
        failed.iter().filter(|outcome| outcome.broken_stream).count()
    );
    assert!(total >= 3, "only {total} requests in 10 s");
    // Only the streams running on the killed upstream may fail (one per
    // client at most); everything else is retried or balanced away.
    let gateway_lines: Vec<String> =
        gateway.logs().into_iter().filter(|line| line.contains("gateway:")).take(10).collect();
    let first_failed: Vec<&&Outcome> = failed.iter().take(10).collect();
    assert!(failed.len() <= 3, "{} failed, the first: {first_failed:#?}\n{gateway_lines:#?}", failed.len());
    let offsets: Vec<(String, i128, String)> = failed
        .iter()
        .map(|outcome| {
            let offset = outcome.started.duration_since(started).as_millis() as i128
                - killed_at.duration_since(started).as_millis() as i128;
            (outcome.request_id.clone(), offset, outcome.detail.clone())
        })
        .collect();
    assert!(
        failed.iter().all(|outcome| outcome.started < killed_at),
        "only streams already running fail (ms after the kill): {offsets:#?}"
    );
    // While it was down, the other upstream served.
    let during = outcomes.iter().filter(|outcome| {
        outcome.started > killed_at + Duration::from_millis(200) && outcome.started < restarting_at
    });
    assert!(during.clone().count() > 0, "no request while it was down");
    let misrouted: Vec<&Outcome> =
        during.filter(|outcome| outcome.complete && outcome.served_by != "up-b").collect();
    assert!(misrouted.is_empty(), "served by the killed upstream while it was down: {misrouted:#?}");

    // A request reached two upstreams only when retried before its first
    // byte; a stream that started was never sent again.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in request_ids(&first).into_iter().chain(request_ids(&second)).chain(request_ids(&restarted)) {
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    let broken: HashSet<&str> = failed
        .iter()
        .filter(|outcome| outcome.broken_stream)
        .map(|outcome| outcome.request_id.as_str())
        .collect();
    assert!(
        broken.iter().all(|id| seen.get(*id).is_none_or(|count| *count <= 1)),
        "a broken stream was sent again: {broken:?}"
    );

    // The restarted upstream is let back (by its probe) and serves again.
    let caller = client();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut back = false;
    while Instant::now() < deadline && !back {
        let body = json!({"model": "chat", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]});
        let response = caller.post(gateway.url("/v1/chat/completions")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        back = served_by(&response) == "up-a";
    }
    assert!(back, "the restarted upstream never served again");
    let metrics = gateway.metrics().await;
    assert!(metrics.contains("blaze_gateway_ejections_total{target=\"up-a\"}"), "{metrics}");
    let retries = metrics
        .lines()
        .find_map(|line| line.strip_prefix("blaze_gateway_retries_total{route=\"chat\"} "))
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!("gateway failover: {retries} retries, {} requests seen by two upstreams", twice.len());
    assert!(twice.len() as f64 <= retries, "{twice:?} sent twice with {retries} retries");
    assert!(!gateway.logs().iter().any(|line| line.contains(ADMIN_KEY)));
}

#[tokio::test]
async fn a_local_model_overflows_to_an_upstream_when_its_queue_is_full() {
    let _turn = common::decoding_turn().await;
    let stub = Stub::start().await;
    // One sequence at a time and one waiting: a third request overflows.
    let local = format!("    {MODEL}:\n      max_batch: 1\n      queue_capacity: 1\n");
    let upstreams = [upstream("overflow", &stub.base_url("ok"), ""), local];
    let routes = format!(
        "  probe_interval_s: 0\n  routes:\n    chat:\n      targets: [{{model: {MODEL}}}]\n      fallbacks: [overflow]\n"
    );
    let (server, _config) = gateway(&upstreams, &routes, &[]).await;
    let caller = client();
    let requests = (0..6).map(|index| {
        let body = json!({"model": "chat", "max_tokens": 24, "temperature": 0.7,
            "messages": [{"role": "user", "content": format!("Write a sentence about the number {index}.")}]});
        caller.post(server.url("/v1/chat/completions")).json(&body).send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut by_target: HashMap<String, usize> = HashMap::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        *by_target.entry(served_by(&response)).or_default() += 1;
    }
    assert!(by_target.get(MODEL).is_some_and(|count| *count >= 1), "{by_target:?}");
    assert!(by_target.get("overflow").is_some_and(|count| *count >= 1), "{by_target:?}");
    let metrics = server.metrics().await;
    assert!(metrics.contains("blaze_gateway_fallbacks_total{route=\"chat\"}"), "{metrics}");
}
