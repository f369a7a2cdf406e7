//! The semantic cache of a gateway route: the labelled pairs (paraphrases
//! that must hit, near misses that must not), its scope, streams, turns,
//! and its entries shared by two gateways through Redis.

use std::collections::BTreeMap;

use serde_json::json;

use super::stub::Stub;
use super::{gateway, upstream};
use crate::common::{self, client, Server};

const PAIRS: &str = include_str!("../../fixtures/semantic-pairs.jsonl");

fn semantic_routes(extra: &str) -> String {
    format!(
        "  probe_interval_s: 0\n  routes:\n    chat:\n      targets: [{{model: remote}}]\n      \
         semantic_cache:\n        similarity_threshold: 0.9\n{extra}"
    )
}

/// A chat body with a system message (the fingerprint's part) and one
/// user turn.
fn ask(system: &str, text: &str) -> serde_json::Value {
    json!({"model": "chat", "max_tokens": 8, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": text},
    ]})
}

async fn verdict(
    caller: &reqwest::Client,
    server: &Server,
    body: &serde_json::Value,
) -> (String, Option<f64>) {
    let response = caller.post(server.url("/v1/chat/completions")).json(body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cache = response
        .headers()
        .get("x-blaze-cache")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let similarity = response
        .headers()
        .get("x-blaze-cache-similarity")
        .map(|value| value.to_str().unwrap().parse::<f64>().unwrap());
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello from the stub.");
    (cache, similarity)
}

#[tokio::test]
async fn paraphrases_hit_and_near_misses_do_not_on_the_labelled_pairs() {
    let stub = Stub::start().await;
    let (server, _config) =
        gateway(&[upstream("remote", &stub.base_url("ok"), "")], &semantic_routes(""), &[]).await;
    let caller = client();
    // kind -> (pairs, hits)
    let mut results: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (index, line) in PAIRS.lines().enumerate() {
        let pair: serde_json::Value = serde_json::from_str(line).unwrap();
        let system = format!("You are assistant number {index}.");
        let (first, _) = verdict(&caller, &server, &ask(&system, pair["a"].as_str().unwrap())).await;
        assert_eq!(first, "bypass", "{pair}: the first of a pair is nobody's paraphrase");
        let (second, similarity) =
            verdict(&caller, &server, &ask(&system, pair["b"].as_str().unwrap())).await;
        let hit = second == "hit-semantic";
        assert_eq!(hit, similarity.is_some(), "{pair}");
        let kind = pair["kind"].as_str().unwrap().to_owned();
        let entry = results.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += usize::from(hit);
        if hit != pair["hit"].as_bool().unwrap() {
            wrong.push(format!("{pair} -> {second} {similarity:?}"));
        }
    }
    let total: usize = results.values().map(|(pairs, _)| pairs).sum();
    let near_misses: usize =
        results.iter().filter(|(kind, _)| *kind != "paraphrase").map(|(_, (pairs, _))| pairs).sum();
    let false_hits: usize =
        results.iter().filter(|(kind, _)| *kind != "paraphrase").map(|(_, (_, hits))| hits).sum();
    let (paraphrases, paraphrase_hits) = results["paraphrase"];
    eprintln!(
        "semantic cache, threshold 0.9: {total} pairs; paraphrases hit {paraphrase_hits}/{paraphrases} ({:.1}%); \
         near misses hit {false_hits}/{near_misses} ({:.1}% false hits); by kind {results:?}",
        100.0 * paraphrase_hits as f64 / paraphrases as f64,
        100.0 * false_hits as f64 / near_misses as f64,
    );
    eprintln!("semantic cache, misjudged pairs:\n{}", wrong.join("\n"));
    assert!(total >= 200);
    // The vetoes hold whatever the embedding says.
    for kind in ["number", "negation", "entity"] {
        assert_eq!(results[kind].1, 0, "{kind} near misses hit: {wrong:#?}");
    }
    assert!(false_hits * 100 <= near_misses * 5, "false hits {false_hits} of {near_misses}: {wrong:#?}");
    assert!(
        paraphrase_hits * 100 >= paraphrases * 60,
        "paraphrases hit {paraphrase_hits} of {paraphrases}: {wrong:#?}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("blaze_semantic_cache_requests_total{route=\"chat\",result=\"hit\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_semantic_cache_keeps_to_its_scope_turns_and_streams() {
    let stub = Stub::start().await;
    let (server, _config) =
        gateway(&[upstream("remote", &stub.base_url("ok"), "")], &semantic_routes(""), &[]).await;
    let caller = common::new_user_client(&server, "semantic-one@example.com").await;
    let other = common::new_user_client(&server, "semantic-two@example.com").await;
    let system = "You are terse.";
    assert_eq!(verdict(&caller, &server, &ask(system, "How do I center a div in CSS?")).await.0, "bypass");
    let (cache, similarity) =
        verdict(&caller, &server, &ask(system, "How can I center a div with CSS?")).await;
    assert_eq!(cache, "hit-semantic");
    assert!(similarity.is_some_and(|similarity| (0.9..=1.0).contains(&similarity)), "{similarity:?}");
    // Another user has their own entries.
    assert_eq!(verdict(&other, &server, &ask(system, "How can I center a div with CSS?")).await.0, "bypass");
    // Other parameters (or another system message) are another fingerprint.
    let warmer = common::extend(ask(system, "How can I center a div with CSS?"), json!({"temperature": 1.3}));
    assert_eq!(verdict(&caller, &server, &warmer).await.0, "bypass");
    assert_eq!(
        verdict(&caller, &server, &ask("You are verbose.", "How can I center a div with CSS?")).await.0,
        "bypass"
    );

    // A stream is answered from the entry as chunks.
    let stream =
        common::extend(ask(system, "What's the way to center a div using CSS?"), json!({"stream": true}));
    let response = caller.post(server.url("/v1/chat/completions")).json(&stream).send().await.unwrap();
    assert_eq!(response.headers()["x-blaze-cache"], "hit-semantic");
    let chunks = common::chunks(&response.text().await.unwrap());
    let text: String =
        chunks.iter().filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Hello from the stub.");

    // A finished stream's answer is kept too.
    let stream = common::extend(ask(system, "How do I boil an egg?"), json!({"stream": true}));
    let response = caller.post(server.url("/v1/chat/completions")).json(&stream).send().await.unwrap();
    assert_eq!(response.headers()["x-blaze-cache"], "bypass");
    assert_eq!(common::chunks(&response.text().await.unwrap()).len(), 3);
    let paraphrase = ask(system, "What is the way to boil an egg?");
    let response = caller.post(server.url("/v1/chat/completions")).json(&paraphrase).send().await.unwrap();
    assert_eq!(response.headers()["x-blaze-cache"], "hit-semantic", "the streamed answer was kept");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "HiHi", "the stream's text, whole");
    assert_eq!(answer["object"], "chat.completion");

    // A conversation of several turns is not for the semantic cache.
    let conversation = json!({"model": "chat", "max_tokens": 8, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "How do I center a div in CSS?"},
        {"role": "assistant", "content": "Use flexbox."},
        {"role": "user", "content": "How can I center a div with CSS?"},
    ]});
    assert_eq!(verdict(&caller, &server, &conversation).await.0, "bypass");
    let before = stub.requests("ok").len();
    assert_eq!(verdict(&caller, &server, &conversation).await.0, "bypass");
    assert_eq!(stub.requests("ok").len(), before + 1, "sent again");
    // no-cache skips it.
    let response = caller
        .post(server.url("/v1/chat/completions"))
        .header("cache-control", "no-cache")
        .json(&ask(system, "How can I center a div with CSS?"))
        .send()
        .await
        .unwrap();
    assert_ne!(response.headers()["x-blaze-cache"], "hit-semantic");
}

#[tokio::test]
async fn the_semantic_cache_allows_several_turns_when_told_and_matches_them_exactly() {
    let stub = Stub::start().await;
    let routes = semantic_routes("        multi_turn: true\n");
    let (server, _config) = gateway(&[upstream("remote", &stub.base_url("ok"), "")], &routes, &[]).await;
    let caller = client();
    let turns = |earlier: &str, last: &str| {
        json!({"model": "chat", "max_tokens": 8, "messages": [
            {"role": "user", "content": earlier},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": last},
        ]})
    };
    assert_eq!(
        verdict(&caller, &server, &turns("Help me with CSS.", "How do I center a div in CSS?")).await.0,
        "bypass"
    );
    assert_eq!(
        verdict(&caller, &server, &turns("Help me with CSS.", "How can I center a div with CSS?")).await.0,
        "hit-semantic"
    );
    assert_eq!(
        verdict(&caller, &server, &turns("Help me with HTML.", "How can I center a div with CSS?")).await.0,
        "bypass"
    );
}

#[tokio::test]
async fn two_gateways_share_semantic_entries_through_redis() {
    let stub = Stub::start().await;
    let nonce = uuid_like();
    let route = format!("chat-{nonce}");
    let routes = format!(
        "  probe_interval_s: 0\n  routes:\n    {route}:\n      targets: [{{model: remote}}]\n      semantic_cache: {{}}\n"
    );
    let environment = [
        ("BLAZE__STORAGE__REDIS_URL", "redis://127.0.0.1:6379"),
        ("BLAZE__CACHE__REDIS", "true"),
        ("BLAZE__CACHE__SHARED_ACROSS_USERS", "true"),
    ];
    let upstreams = [upstream("remote", &stub.base_url("ok"), "")];
    let (first, _first_config) = gateway(&upstreams, &routes, &environment).await;
    let (second, _second_config) = gateway(&upstreams, &routes, &environment).await;
    let caller = client();
    let body = |text: &str| json!({"model": route, "max_tokens": 8, "messages": [{"role": "user", "content": text}]});
    assert_eq!(verdict(&caller, &first, &body("How do I boil an egg?")).await.0, "bypass");
    // Published at once; heard by the other within its subscription's
    // delivery (a second is plenty on a loopback Redis).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (cache, similarity) = verdict(&caller, &second, &body("What is the way to boil an egg?")).await;
    assert_eq!(cache, "hit-semantic", "the second gateway did not hear of the first's entry");
    assert!(similarity.is_some());
    assert_eq!(stub.requests("ok").len(), 1, "the second gateway answered without the upstream");
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}
