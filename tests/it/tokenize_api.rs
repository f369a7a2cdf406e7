//! `POST /tokenize` and `POST /detokenize` over real HTTP and the
//! WebSocket on the real models: the counts match what the chat and
//! embeddings endpoints charge (the template and the tools included), the
//! round trip gives the text back, and bad bodies, ids, credentials and
//! scopes are refused with the field at fault.

use crate::common::websocket::Socket;
use crate::common::{
    anonymous_client, client, client_with_key, expect_error, new_user_key_with, Server, ADMIN_KEY,
};
use serde_json::{json, Value};

const CHAT: &str = "smollm2-135m-instruct";
const EMBEDDING: &str = "all-minilm-l6-v2";

async fn post(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    client().post(server.url(path)).json(body).send().await.unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn ids(answer: &Value) -> Vec<u64> {
    answer["tokens"].as_array().unwrap().iter().map(|token| token.as_u64().unwrap()).collect()
}

#[tokio::test]
async fn counts_match_what_the_endpoints_charge_and_the_round_trip_gives_the_text() {
    let server = Server::start(&[], &[]).await;
    let prompt = "The capital of France is";
    let body = json!({"model": CHAT, "prompt": prompt, "return_token_strs": true});
    let tokenized = json_of(post(&server, "/tokenize", &body).await).await;
    assert_eq!(tokenized["count"], ids(&tokenized).len() as u64);
    assert_eq!(tokenized["max_model_len"], 2048);
    let strs: String =
        tokenized["token_strs"].as_array().unwrap().iter().map(|text| text.as_str().unwrap()).collect();
    let back =
        json_of(post(&server, "/detokenize", &json!({"model": CHAT, "tokens": ids(&tokenized)})).await).await;
    assert_eq!(back["prompt"], strs.as_str());
    assert!(strs.ends_with(prompt), "{strs:?}");
    let completion = json!({"model": CHAT, "prompt": prompt, "max_tokens": 1, "temperature": 0});
    let charged = json_of(post(&server, "/v1/completions", &completion).await).await;
    assert_eq!(charged["usage"]["prompt_tokens"], tokenized["count"]);

    // A conversation through the template, its tools too: the count the
    // chat endpoint charges.
    let weather = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    for tools in [json!(null), json!([weather])] {
        let body = json!({"model": CHAT, "messages": messages, "tools": tools, "return_token_strs": true});
        let tokenized = json_of(post(&server, "/tokenize", &body).await).await;
        let text: String =
            tokenized["token_strs"].as_array().unwrap().iter().map(|text| text.as_str().unwrap()).collect();
        assert!(text.contains("<|im_start|>user\nWhat is the weather in Paris?<|im_end|>"), "{text}");
        assert!(text.ends_with("<|im_start|>assistant\n"), "the assistant's turn opened: {text}");
        assert_eq!(text.contains("get_weather"), !tools.is_null(), "{text}");
        let chat =
            json!({"model": CHAT, "messages": messages, "tools": tools, "max_tokens": 1, "temperature": 0});
        let charged = json_of(post(&server, "/v1/chat/completions", &chat).await).await;
        assert_eq!(charged["usage"]["prompt_tokens"], tokenized["count"], "{tools}");
    }

    // The embedding model's tokenizer: its special tokens, and the count
    // embeddings charge.
    let body = json!({"model": EMBEDDING, "prompt": "hello world", "return_token_strs": true});
    let tokenized = json_of(post(&server, "/tokenize", &body).await).await;
    assert_eq!(tokenized["token_strs"], json!(["[CLS]", "hello", "world", "[SEP]"]));
    assert_eq!(tokenized["max_model_len"], 256);
    let plain = json!({"model": EMBEDDING, "prompt": "hello world", "add_special_tokens": false});
    assert_eq!(json_of(post(&server, "/tokenize", &plain).await).await["count"], 2);
    let embedded =
        json_of(post(&server, "/v1/embeddings", &json!({"model": EMBEDDING, "input": "hello world"})).await)
            .await;
    assert_eq!(embedded["usage"]["prompt_tokens"], tokenized["count"]);
    let back =
        json_of(post(&server, "/detokenize", &json!({"model": EMBEDDING, "tokens": ids(&tokenized)})).await)
            .await;
    assert_eq!(back["prompt"], "[CLS] hello world [SEP]");

    // The same over the WebSocket.
    let mut socket = Socket::connect(&server, Some(ADMIN_KEY)).await;
    socket
        .send(json!({"id": "t", "type": "tokenize", "body": {"model": EMBEDDING, "prompt": "hello world"}}))
        .await;
    socket.send(json!({"id": "d", "type": "detokenize", "body": {"model": EMBEDDING, "tokens": [101, 7592, 2088, 102]}})).await;
    let frames = socket.until_ended(&["t", "d"]).await;
    assert_eq!(frames["t"][0]["data"]["tokens"], tokenized["tokens"]);
    assert_eq!(frames["d"][0]["data"]["prompt"], "[CLS] hello world [SEP]");
}

#[tokio::test]
async fn bad_bodies_ids_credentials_and_scopes_are_refused() {
    let server = Server::start(&[], &[]).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        ("/tokenize", json!({"model": CHAT}), 400, "invalid_request_body", "prompt"),
        (
            "/tokenize",
            json!({"model": CHAT, "prompt": "a", "messages": messages}),
            400,
            "invalid_request_body",
            "prompt",
        ),
        (
            "/tokenize",
            json!({"model": CHAT, "prompt": "a", "tools": []}),
            400,
            "invalid_request_body",
            "prompt",
        ),
        ("/tokenize", json!({"model": EMBEDDING, "messages": messages}), 400, "invalid_model", "messages"),
        (
            "/tokenize",
            json!({"model": CHAT, "messages": messages, "add_generation_prompt": false}),
            400,
            "unsupported_parameter",
            "add_generation_prompt",
        ),
        (
            "/tokenize",
            json!({"model": CHAT, "messages": [{"role": "wizard", "content": "x"}]}),
            400,
            "invalid_role",
            "messages[0].role",
        ),
        (
            "/tokenize",
            json!({"model": CHAT, "messages": messages, "tools": [{"type": "function", "function": {"name": "a b"}}]}),
            400,
            "invalid_tools",
            "tools[0].function.name",
        ),
        ("/tokenize", json!({"model": CHAT, "prompt": "a\u{0}b"}), 400, "invalid_characters", "prompt"),
        (
            "/tokenize",
            json!({"model": CHAT, "prompt": "a", "padding": 1}),
            400,
            "unknown_parameter",
            "padding",
        ),
        ("/tokenize", json!({"model": "gpt-4o", "prompt": "a"}), 404, "model_not_found", "model"),
        (
            "/detokenize",
            json!({"model": CHAT, "tokens": [1, 4_000_000_000u64]}),
            400,
            "invalid_input",
            "tokens",
        ),
        ("/detokenize", json!({"model": EMBEDDING, "tokens": [30522]}), 400, "invalid_input", "tokens"),
        ("/detokenize", json!({"model": CHAT, "tokens": [-1]}), 400, "invalid_request_body", "tokens[0]"),
        ("/detokenize", json!({"model": CHAT, "tokens": vec![1; 300_000]}), 400, "too_many_items", "tokens"),
    ];
    for (path, body, status, code, param) in cases {
        let response = post(&server, path, &body).await;
        assert_eq!(response.status(), status, "{path} {body}");
        let error = expect_error(response, status, code).await;
        assert_eq!(error["param"], param, "{path} {body}: {error}");
    }
    let long = json!({"model": CHAT, "prompt": "word ".repeat(200_000)});
    expect_error(post(&server, "/tokenize", &long).await, 400, "context_length_exceeded").await;

    let body = json!({"model": CHAT, "prompt": "hi"});
    let response = anonymous_client().post(server.url("/tokenize")).json(&body).send().await.unwrap();
    expect_error(response, 401, "invalid_api_key").await;
    let embeddings_only =
        new_user_key_with(&server, "tokenize@example.com", json!({"scopes": ["embeddings"]})).await;
    let response = client_with_key(&embeddings_only)
        .post(server.url("/detokenize"))
        .json(&json!({"model": CHAT, "tokens": [1]}))
        .send()
        .await
        .unwrap();
    let error = expect_error(response, 403, "insufficient_scope").await;
    assert!(error["message"].as_str().unwrap().contains("`models`"), "{error}");
    let models_only = new_user_key_with(&server, "tokens@example.com", json!({"scopes": ["models"]})).await;
    let response =
        client_with_key(&models_only).post(server.url("/tokenize")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
