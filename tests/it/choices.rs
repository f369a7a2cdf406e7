//! `n` choices over real HTTP and the WebSocket on the real GGUF: choice
//! `index` seeded `seed + index` (the same text as a request of one choice
//! with that seed: the shared prompt changes nothing), JSON and streamed
//! with each chunk's index, from the cache, for chat and completions;
//! usage and the rate limits count every choice; bad values refused.

use crate::common::websocket::Socket;
use crate::common::{
    chunks, client_with_key, decoding_turn, expect_error, extend, new_user_key, post_cached, Server,
    ADMIN_KEY,
};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn chat(extra: Value) -> Value {
    let body = json!({
        "model": MODEL, "temperature": 1.0, "max_tokens": 12,
        "messages": [{"role": "user", "content": "Write one line about the sea."}],
    });
    extend(body, extra)
}

async fn json_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Each choice's text and finish reason from chat chunks, by index; the
/// role comes once per choice, first.
fn assembled(chunks: &[Value], count: usize) -> Vec<(String, String)> {
    let mut choices = vec![(String::new(), String::new()); count];
    let mut roles = vec![0; count];
    for chunk in chunks {
        let Some(parts) = chunk["choices"].as_array().filter(|parts| !parts.is_empty()) else {
            continue;
        };
        assert_eq!(parts.len(), 1, "one choice per chunk: {chunk}");
        let index = parts[0]["index"].as_u64().unwrap() as usize;
        let (text, finish) = &mut choices[index];
        assert!(finish.is_empty(), "nothing after a choice's finish: {chunk}");
        if parts[0]["delta"]["role"] == "assistant" {
            assert!(text.is_empty(), "the role comes first: {chunk}");
            roles[index] += 1;
        }
        text.push_str(parts[0]["delta"]["content"].as_str().unwrap_or_default());
        if let Some(reason) = parts[0]["finish_reason"].as_str() {
            finish.push_str(reason);
        }
    }
    assert_eq!(roles, vec![1; count], "the role once per choice");
    choices
}

#[tokio::test]
async fn each_choice_is_the_answer_of_its_own_seed_whole_streamed_and_cached() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let asked = chat(json!({"n": 3, "seed": 11}));
    let body = json_of(post_cached(&server, "/v1/chat/completions", &asked, "no-store").await).await;
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{body}");
    let mut texts = Vec::new();
    let mut completion_tokens = 0;
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index, "{body}");
        let text = choice["message"]["content"].as_str().unwrap().to_owned();
        let one = json_of(
            post_cached(&server, "/v1/chat/completions", &chat(json!({"seed": 11 + index})), "no-store")
                .await,
        )
        .await;
        assert_eq!(one["choices"].as_array().unwrap().len(), 1);
        assert_eq!(
            one["choices"][0]["message"]["content"],
            text.as_str(),
            "choice {index} is seed {}",
            11 + index
        );
        assert_eq!(one["choices"][0]["finish_reason"], choice["finish_reason"]);
        assert_eq!(one["usage"]["prompt_tokens"], body["usage"]["prompt_tokens"], "the prompt counts once");
        completion_tokens += one["usage"]["completion_tokens"].as_u64().unwrap();
        texts.push(text);
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "the seeds differ: {texts:?}");
    assert_eq!(body["usage"]["completion_tokens"], completion_tokens, "every choice's tokens count");

    // Streamed (a miss, stored), then whole from the cache: the same.
    let mut streamed = asked.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response = post_cached(&server, "/v1/chat/completions", &streamed, "").await;
    assert_eq!(response.headers()["x-blaze-cache"], "miss");
    let chunks = chunks(&response.text().await.unwrap());
    let streamed_choices = assembled(&chunks, 3);
    for (index, (text, finish)) in streamed_choices.iter().enumerate() {
        assert_eq!(
            (text.as_str(), finish.as_str()),
            (texts[index].as_str(), choices[index]["finish_reason"].as_str().unwrap())
        );
    }
    // Usage last, summed; its prompt was in the worker's cache this time
    // (prefix reuse), which only prompt_tokens_details tells.
    let usage = &chunks.last().unwrap()["usage"];
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[count], body["usage"][count], "{count}");
    }
    let cached = post_cached(&server, "/v1/chat/completions", &asked, "").await;
    assert_eq!(cached.headers()["x-blaze-cache"], "hit-memory");
    let cached = json_of(cached).await;
    let cached_texts: Vec<&str> = cached["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|choice| choice["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(cached_texts, texts);
    // One choice fewer is another entry.
    let fewer = post_cached(&server, "/v1/chat/completions", &chat(json!({"n": 2, "seed": 11})), "").await;
    assert_eq!(fewer.headers()["x-blaze-cache"], "miss");
    let fewer = json_of(fewer).await;
    assert_eq!(fewer["choices"].as_array().unwrap().len(), 2);
    assert_eq!(fewer["choices"][1]["message"]["content"], texts[1].as_str());
}

#[tokio::test]
async fn completions_and_the_websocket_give_every_choice() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let prompt = |extra: Value| {
        extend(json!({"model": MODEL, "prompt": "The sea is", "max_tokens": 8, "temperature": 1.0}), extra)
    };
    let body = json_of(
        post_cached(&server, "/v1/completions", &prompt(json!({"n": 2, "seed": 5})), "no-store").await,
    )
    .await;
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{body}");
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        let one = json_of(
            post_cached(&server, "/v1/completions", &prompt(json!({"seed": 5 + index})), "no-store").await,
        )
        .await;
        assert_eq!(one["choices"][0]["text"], choice["text"], "choice {index}");
    }

    let whole = chat(json!({"n": 2, "seed": 3}));
    let expected = json_of(post_cached(&server, "/v1/chat/completions", &whole, "no-store").await).await;
    let mut socket = Socket::connect(&server, Some(ADMIN_KEY)).await;
    let mut streamed = whole.clone();
    streamed["stream"] = json!(true);
    socket.send(json!({"id": "s", "type": "chat.completions", "body": streamed})).await;
    let frames = socket.until_ended(&["s"]).await;
    let chunks: Vec<Value> = frames["s"]
        .iter()
        .filter(|frame| frame["type"] == "chunk")
        .map(|frame| frame["data"].clone())
        .collect();
    let streamed_choices = assembled(&chunks, 2);
    for (index, (text, _)) in streamed_choices.iter().enumerate() {
        assert_eq!(expected["choices"][index]["message"]["content"], text.as_str(), "choice {index}");
    }
}

#[tokio::test]
async fn bad_counts_are_refused_and_the_rate_limits_price_every_choice() {
    let server = Server::start(&[("BLAZE__RATE_LIMITS__TOKENS_PER_MINUTE", "300")], &[]).await;
    for n in [json!(0), json!(9), json!(1000000)] {
        let error = expect_error(
            post_cached(&server, "/v1/chat/completions", &chat(json!({"n": n})), "").await,
            400,
            "invalid_n",
        )
        .await;
        assert_eq!(error["param"], "n", "{error}");
        assert!(error["message"].as_str().unwrap().contains("between 1 and 8"), "{error}");
    }
    for n in [json!(-1), json!("2"), json!(2.5), json!([2])] {
        let response = post_cached(&server, "/v1/chat/completions", &chat(json!({"n": n})), "").await;
        let error = expect_error(response, 400, "invalid_request_body").await;
        assert_eq!(error["param"], "n", "{error}");
    }
    // The reservation is the prompt and every choice's most tokens: eight
    // choices of 40 do not fit a budget of 300 that one choice fits.
    let caller = client_with_key(&new_user_key(&server, "choices@example.com").await);
    let ask = |n: u64| {
        caller
            .post(server.url("/v1/chat/completions"))
            .json(&chat(json!({"n": n, "max_tokens": 40, "seed": 1})))
            .send()
    };
    let error = expect_error(ask(8).await.unwrap(), 429, "rate_limit_exceeded").await;
    assert!(error["message"].as_str().unwrap().contains("Request too large"), "{error}");
    let _turn = decoding_turn().await;
    assert_eq!(ask(1).await.unwrap().status(), 200);
}
