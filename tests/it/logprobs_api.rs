//! Log probabilities over real HTTP on the real GGUF: chat's `logprobs`
//! and `top_logprobs`, completions' integer `logprobs`, JSON and streamed,
//! through the cache, and bad values refused with the field at fault.
//! (chat_engine.rs checks the values against llama.cpp's logits.)

use crate::common::{chunks, decoding_turn, expect_error, extend, post_cached, Server};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn chat(extra: Value) -> Value {
    let body = json!({
        "model": MODEL, "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    });
    extend(body, extra)
}

#[tokio::test]
async fn chat_logprobs_come_whole_and_streamed_and_from_the_cache() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let asked = chat(json!({"logprobs": true, "top_logprobs": 3}));
    let response = post_cached(&server, "/v1/chat/completions", &asked, "no-cache").await;
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, body["usage"]["completion_tokens"].as_u64().unwrap(), "{body}");
    assert_eq!(choice["logprobs"]["refusal"], Value::Null);
    let mut bytes = Vec::new();
    for entry in content {
        let logprob = entry["logprob"].as_f64().unwrap();
        assert!(logprob <= 0.0, "{entry}");
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{entry}");
        // Greedy: the token chosen is the most likely one.
        assert_eq!((&top[0]["token"], &top[0]["logprob"]), (&entry["token"], &entry["logprob"]), "{entry}");
        assert!(top.windows(2).all(|pair| pair[0]["logprob"].as_f64() >= pair[1]["logprob"].as_f64()));
        bytes.extend(entry["bytes"].as_array().unwrap().iter().map(|byte| byte.as_u64().unwrap() as u8));
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), choice["message"]["content"].as_str().unwrap());

    // Streamed: the chunks' entries add up to the same list.
    let mut streamed = asked.clone();
    streamed["stream"] = json!(true);
    let text =
        post_cached(&server, "/v1/chat/completions", &streamed, "no-cache").await.text().await.unwrap();
    let entries: Vec<Value> = chunks(&text)
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(&entries, content);

    // Cached: the same request is a hit with the same values; without
    // logprobs it is another entry, and answers without them.
    assert_eq!(post_cached(&server, "/v1/chat/completions", &asked, "no-store").await.status(), 200);
    let first = post_cached(&server, "/v1/chat/completions", &asked, "").await;
    assert_eq!(first.headers()["x-blaze-cache"], "miss");
    let again = post_cached(&server, "/v1/chat/completions", &asked, "").await;
    assert_eq!(again.headers()["x-blaze-cache"], "hit-memory");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["choices"][0]["logprobs"], choice["logprobs"]);
    let plain = post_cached(&server, "/v1/chat/completions", &chat(json!({})), "").await;
    assert_eq!(plain.headers()["x-blaze-cache"], "miss");
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
    assert_eq!(plain["choices"][0]["message"], choice["message"]);
}

#[tokio::test]
async fn completions_logprobs_are_parallel_lists_with_offsets() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 6, "logprobs": 2});
    let answer: Value =
        post_cached(&server, "/v1/completions", &body, "no-store").await.json().await.unwrap();
    let choice = &answer["choices"][0];
    let logprobs = &choice["logprobs"];
    let tokens: Vec<&str> =
        logprobs["tokens"].as_array().unwrap().iter().map(|token| token.as_str().unwrap()).collect();
    assert_eq!(tokens.concat(), choice["text"].as_str().unwrap(), "{answer}");
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), tokens.len());
    let offsets: Vec<u64> =
        logprobs["text_offset"].as_array().unwrap().iter().map(|offset| offset.as_u64().unwrap()).collect();
    let mut expected = vec![0];
    for token in &tokens[..tokens.len() - 1] {
        expected.push(expected.last().unwrap() + token.chars().count() as u64);
    }
    assert_eq!(offsets, expected);
    for (top, logprob) in logprobs["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(logprobs["token_logprobs"].as_array().unwrap())
    {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2, "{top:?}");
        let best = top.values().map(|value| value.as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(best, logprob.as_f64().unwrap(), "greedy: the chosen token is the best");
    }
    // Streamed, each chunk's offsets continue from the text sent before it.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = post_cached(&server, "/v1/completions", &streamed, "no-store").await.text().await.unwrap();
    let streamed_offsets: Vec<Value> = chunks(&text)
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["logprobs"]["text_offset"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed_offsets, logprobs["text_offset"].as_array().unwrap().clone());
    // With a grammar, the values are still the model's own.
    let constrained = json!({"model": MODEL, "prompt": "The capital of France is", "temperature": 0, "logprobs": 0,
        "structured_outputs": {"choice": [" Paris", " Rome"]}});
    let answer: Value =
        post_cached(&server, "/v1/completions", &constrained, "no-store").await.json().await.unwrap();
    assert!(!answer["choices"][0]["logprobs"]["tokens"].as_array().unwrap().is_empty(), "{answer}");
}

#[tokio::test]
async fn bad_logprobs_are_refused_with_the_field_at_fault() {
    let server = Server::start(&[], &[]).await;
    for (body, param) in [
        (chat(json!({"logprobs": 1})), "logprobs"),
        (chat(json!({"logprobs": true, "top_logprobs": 21})), "top_logprobs"),
        (chat(json!({"logprobs": true, "top_logprobs": "3"})), "top_logprobs"),
        (chat(json!({"top_logprobs": 2})), "top_logprobs"),
    ] {
        let error = expect_error(
            post_cached(&server, "/v1/chat/completions", &body, "no-store").await,
            400,
            "invalid_logprobs",
        )
        .await;
        assert_eq!(error["param"], param, "{body}");
    }
    for logprobs in [json!(6), json!(true), json!(-1)] {
        let body = json!({"model": MODEL, "prompt": "hi", "logprobs": logprobs});
        let error = expect_error(
            post_cached(&server, "/v1/completions", &body, "no-store").await,
            400,
            "invalid_logprobs",
        )
        .await;
        assert_eq!(error["param"], "logprobs");
    }
}
