//! /v1/chat/completions and /v1/completions over real HTTP on the real GGUF.

use crate::common::{client, config_file, decoding_turn, expect_error, Server};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn question(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [
            { "role": "system", "content": "You are a helpful assistant." },
            { "role": "user", "content": "What is the capital city of France?" },
        ],
        "temperature": 0,
        "max_tokens": 40,
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// These tests are about generation: every request is generated, never
/// answered from the response cache (tests/cache_api.rs covers that).
async fn post(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    client().post(server.url(path)).header("cache-control", "no-store").json(body).send().await.unwrap()
}

/// The `data:` payloads of an SSE body, in order.
fn events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "events end with a blank line");
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_chat_completion_answers_in_openai_shape_with_exact_usage() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let body: Value = post(&server, "/v1/chat/completions", &question(json!({}))).await.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    // What a 135M model answers depends on the CPU kernels llama.cpp runs
    // (AMX or not; chat_engine pins both against llama.cpp itself), so
    // this checks the shape, not the words.
    let answer = choice["message"]["content"].as_str().unwrap();
    assert!(answer.split_whitespace().count() >= 3, "{body}");
    let usage = &body["usage"];
    let (prompt, completion) =
        (usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
    assert!(prompt > 5 && completion > 0);
    let expected_finish = if completion < 40 { "stop" } else { "length" };
    assert_eq!(choice["finish_reason"], expected_finish, "{body}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);

    let again: Value =
        post(&server, "/v1/chat/completions", &question(json!({}))).await.json().await.unwrap();
    assert_eq!(again["choices"][0]["message"], choice["message"], "temperature 0 is greedy");
    let short: Value =
        post(&server, "/v1/chat/completions", &question(json!({ "max_completion_tokens": 2 })))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["usage"]["completion_tokens"], 2);
    // A stop sequence from the middle of the answer cuts it there.
    let stop_word = answer.split_whitespace().nth(2).unwrap();
    let stopped: Value = post(&server, "/v1/chat/completions", &question(json!({ "stop": [stop_word] })))
        .await
        .json()
        .await
        .unwrap();
    let text = stopped["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop", "{stopped}");
    assert!(!text.contains(stop_word) && answer.starts_with(text) && text.len() < answer.len(), "{stopped}");
    let seeded = question(json!({ "temperature": 1.0, "seed": 7, "max_tokens": 16 }));
    let first: Value = post(&server, "/v1/chat/completions", &seeded).await.json().await.unwrap();
    let second: Value = post(&server, "/v1/chat/completions", &seeded).await.json().await.unwrap();
    assert_eq!(first["choices"][0]["message"], second["choices"][0]["message"], "same seed, same output");
}

#[tokio::test]
async fn streaming_sends_sse_chunks_usage_and_done() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let plain: Value =
        post(&server, "/v1/chat/completions", &question(json!({}))).await.json().await.unwrap();
    let response = post(
        &server,
        "/v1/chat/completions",
        &question(json!({ "stream": true, "stream_options": { "include_usage": true } })),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = events(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|event| serde_json::from_str(event).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"].get(0).and_then(|choice| choice["delta"]["content"].as_str()))
        .collect();
    assert_eq!(text, plain["choices"][0]["message"]["content"], "the stream says what the JSON says");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], plain["choices"][0]["finish_reason"]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    // The same counts; the stream's prompt was mostly in the worker's
    // cache (prefix reuse), which only prompt_tokens_details says.
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][count], plain["usage"][count], "{count}");
    }
    assert!(usage["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64(), "{usage}");
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "chat.completion.chunk" && chunk["id"] == chunks[0]["id"]));
}

#[tokio::test]
async fn text_completions_continue_the_prompt() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let body =
        json!({ "model": MODEL, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 5 });
    let answer: Value = post(&server, "/v1/completions", &body).await.json().await.unwrap();
    assert_eq!(answer["object"], "text_completion");
    assert!(answer["choices"][0]["text"].as_str().unwrap().contains("Paris"), "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn bad_chat_requests_get_400s_that_name_the_field() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let long = "word ".repeat(9000);
    let cases = [
        (question(json!({ "messages": [] })), "invalid_messages", "messages"),
        (question(json!({ "n": 9 })), "invalid_n", "n"),
        (question(json!({ "n": 0 })), "invalid_n", "n"),
        (question(json!({ "temperature": 3 })), "invalid_temperature", "temperature"),
        (question(json!({ "top_p": 0 })), "invalid_top_p", "top_p"),
        (question(json!({ "stop": ["a", "b", "c", "d", "e"] })), "invalid_stop", "stop"),
        (question(json!({ "presence_penalty": 5 })), "invalid_penalty", "presence_penalty"),
        (
            question(json!({ "messages": [{ "role": "wizard", "content": "x" }] })),
            "invalid_role",
            "messages[0].role",
        ),
        (
            question(json!({ "messages": [{ "role": "user", "content": long }] })),
            "context_length_exceeded",
            "messages",
        ),
        (question(json!({ "max_tokens": 5000 })), "context_length_exceeded", "messages"),
        (question(json!({ "max_tokens": 100000 })), "invalid_max_tokens", "max_tokens"),
        (
            question(json!({ "messages": [{ "role": 7, "content": "x" }] })),
            "invalid_request_body",
            "messages[0].role",
        ),
        (
            question(json!({ "messages": [{ "role": "user", "content": "a\u{7}b" }] })),
            "invalid_characters",
            "messages[0].content",
        ),
        (question(json!({ "logit_bias": { "50256": -100 } })), "unsupported_parameter", "logit_bias"),
        (
            question(json!({ "tools": [{ "type": "function", "function": { "name": "a b" } }] })),
            "invalid_tools",
            "tools[0].function.name",
        ),
        (question(json!({ "frobnicate": true })), "unknown_parameter", "frobnicate"),
        (question(json!({ "model": "all-minilm-l6-v2" })), "invalid_model", "model"),
    ];
    for (body, code, param) in cases {
        let error = expect_error(post(&server, "/v1/chat/completions", &body).await, 400, code).await;
        assert_eq!(error["param"], param, "{code}");
    }
    let window = expect_error(
        post(&server, "/v1/chat/completions", &question(json!({ "max_tokens": 5000 }))).await,
        400,
        "context_length_exceeded",
    )
    .await;
    assert!(window["message"].as_str().unwrap().contains("2048"), "names the limit: {window}");
    expect_error(
        post(&server, "/v1/chat/completions", &question(json!({ "model": "gpt-5" }))).await,
        404,
        "model_not_found",
    )
    .await;
    let embeddings = json!({ "model": MODEL, "input": "x" });
    expect_error(post(&server, "/v1/embeddings", &embeddings).await, 400, "invalid_model").await;
}

#[tokio::test]
async fn a_full_chat_queue_answers_429_at_once() {
    let _turn = decoding_turn().await;
    let file = config_file(&format!(
        "models:\n  catalog:\n    {MODEL}:\n      max_batch: 1\n      queue_capacity: 1\n"
    ));
    let server = Server::start(&[], &["--config", file.path().to_str().unwrap()]).await;
    let long = question(json!({ "max_tokens": 48, "temperature": 1.0, "seed": 1 }));
    let requests = (0..6).map(|_| post(&server, "/v1/chat/completions", &long));
    let responses = futures_util::future::join_all(requests).await;
    let mut rejected = 0;
    for response in responses {
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            expect_error(response, 429, "model_overloaded").await;
            rejected += 1;
        } else {
            assert_eq!(response.status(), 200);
        }
    }
    assert!(rejected >= 1, "6 completions against one worker of one sequence and a queue of 1");
}

/// A counter or gauge of the model, from /metrics.
async fn model_metric(server: &Server, series: &str) -> f64 {
    let metrics = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

#[tokio::test]
async fn a_stream_whose_client_goes_away_stops_generating() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let long = question(json!({ "max_tokens": 1500, "temperature": 1.0, "seed": 7, "stream": true,
        "messages": [{ "role": "user", "content": "Write a very long story about a dragon." }] }));
    let mut response = post(&server, "/v1/chat/completions", &long).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "), "the stream started");
    drop(response);

    let completion = format!("blaze_tokens_total{{model=\"{MODEL}\",kind=\"completion\"}}");
    let running = format!("blaze_inference_running_sequences{{model=\"{MODEL}\"}}");
    let mut stopped = false;
    // Generous for a loaded CI machine; 1500 tokens take far longer.
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if model_metric(&server, &running).await == 0.0 {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "the sequence left the decoder after its client went away");
    let generated = model_metric(&server, &completion).await;
    assert!(generated < 1500.0, "cancelled before max_tokens: {generated} tokens");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(model_metric(&server, &completion).await, generated, "nothing generated afterwards");
}

#[tokio::test]
async fn concurrent_streams_share_the_decoder_and_each_gets_its_own_answer() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let questions = ["What is the capital of France?", "Name three colors.", "What is 3 times 4?", "Say hi."];
    let alone = {
        let mut answers = Vec::new();
        for question_text in questions {
            let body = question(json!({ "messages": [{ "role": "user", "content": question_text }] }));
            let answer: Value = post(&server, "/v1/chat/completions", &body).await.json().await.unwrap();
            answers.push(answer["choices"][0]["message"]["content"].as_str().unwrap().to_owned());
        }
        answers
    };
    let together = futures_util::future::join_all(questions.iter().map(|question_text| {
        let body = question(json!({ "messages": [{ "role": "user", "content": question_text }] }));
        let server = &server;
        async move {
            let answer: Value = post(server, "/v1/chat/completions", &body).await.json().await.unwrap();
            answer["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    assert_eq!(together, alone, "greedy answers do not depend on what runs beside them");
    let steps =
        model_metric(&server, &format!("blaze_inference_batch_size_count{{model=\"{MODEL}\"}}")).await;
    let small =
        model_metric(&server, &format!("blaze_inference_batch_size_bucket{{model=\"{MODEL}\",le=\"2\"}}"))
            .await;
    let batched = steps > small;
    assert!(
        batched,
        "some steps decoded more than 2 sequences together: {small} of {steps} steps had at most 2"
    );
}

#[tokio::test]
async fn openai_fields_with_their_defaults_are_accepted_and_limits_name_the_field() {
    let server = Server::start(
        &[("BLAZE__VALIDATION__MAX_MESSAGES", "3"), ("BLAZE__VALIDATION__MAX_TEXT_CHARS", "2000")],
        &[],
    )
    .await;
    {
        let _turn = decoding_turn().await;
        let body = question(json!({
            "max_tokens": 2, "user": "u-1", "metadata": {"team": "a"}, "store": false, "logprobs": false,
            "tools": [], "tool_choice": "auto", "response_format": {"type": "text"}, "parallel_tool_calls": true,
            "logit_bias": {}, "service_tier": "auto",
        }));
        let response = post(&server, "/v1/chat/completions", &body).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let many = json!({ "messages": vec![json!({ "role": "user", "content": "hi" }); 4] });
    let error =
        expect_error(post(&server, "/v1/chat/completions", &question(many)).await, 400, "too_many_items")
            .await;
    assert_eq!(error["param"], "messages");
    let long = question(json!({ "messages": [{ "role": "user", "content": "x".repeat(2001) }] }));
    let error = expect_error(post(&server, "/v1/chat/completions", &long).await, 400, "text_too_long").await;
    assert_eq!(error["param"], "messages[0].content");
    let prompt = json!({ "model": MODEL, "prompt": "\u{1b}[2J clear", "max_tokens": 2 });
    let error =
        expect_error(post(&server, "/v1/completions", &prompt).await, 400, "invalid_characters").await;
    assert_eq!(error["param"], "prompt");
    let echo = json!({ "model": MODEL, "prompt": "hi", "echo": true });
    expect_error(post(&server, "/v1/completions", &echo).await, 400, "unsupported_parameter").await;
    // Not UTF-8: refused as JSON, never half-read.
    let mut bytes =
        br#"{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "caf"#.to_vec();
    bytes.extend_from_slice(&[0xc3, 0x28]);
    bytes.extend_from_slice(br#""}]}"#);
    let response = client()
        .post(server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_json").await;
}
