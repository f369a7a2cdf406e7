//! `POST /v1/responses` over real HTTP and the WebSocket on the real GGUF:
//! text whole and streamed (the SSE `event:` lines, the event order and
//! sequence numbers, no `[DONE]`), the same answer as the chat it stands
//! for (and its cache entry), function calls and their outputs back in
//! `input`, scopes, and hostile bodies refused with the Responses field at
//! fault.

use crate::common::websocket::Socket;
use crate::common::{
    anonymous_client, client, client_with_key, decoding_turn, expect_error, new_user_key_with, Server,
    ADMIN_KEY,
};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn asked(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL, "temperature": 0, "max_output_tokens": 12,
        "instructions": "Answer in one short sentence.", "input": "What is the capital of France?",
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

async fn post(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    client().post(server.url(path)).json(body).send().await.unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The events of a Responses SSE body: each `event:` line's name must be
/// its data's `type`; nothing else is sent.
fn sse_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').expect("an event line and a data line");
            let name = name.strip_prefix("event: ").expect("named events");
            let data: Value =
                serde_json::from_str(data.strip_prefix("data: ").expect("a data line")).unwrap();
            assert_eq!(data["type"], name, "{event}");
            data
        })
        .collect()
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .map(|part| part["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_response_is_the_chat_answer_whole_and_streamed_and_shares_its_cache_entry() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let chat = json!({
        "model": MODEL, "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "system", "content": "Answer in one short sentence."},
                     {"role": "user", "content": "What is the capital of France?"}],
    });
    let chat_response = post(&server, "/v1/chat/completions", &chat).await;
    assert_eq!(chat_response.headers()["x-blaze-cache"], "miss");
    let chat_answer = json_of(chat_response).await;

    let response = post(&server, "/v1/responses", &asked(json!({"metadata": {"run": "1"}}))).await;
    assert_eq!(response.headers()["x-blaze-cache"], "hit-memory", "the chat it stands for, cached");
    let whole = json_of(response).await;
    assert!(whole["id"].as_str().unwrap().starts_with("resp_"), "{whole}");
    assert_eq!((whole["object"].as_str(), whole["model"].as_str()), (Some("response"), Some(MODEL)));
    assert_eq!(output_text(&whole), chat_answer["choices"][0]["message"]["content"].as_str().unwrap());
    let finish = chat_answer["choices"][0]["finish_reason"].as_str().unwrap();
    let status = if finish == "length" { "incomplete" } else { "completed" };
    assert_eq!(whole["status"], status, "{whole}");
    assert_eq!(whole["usage"]["input_tokens"], chat_answer["usage"]["prompt_tokens"]);
    assert_eq!(whole["usage"]["output_tokens"], chat_answer["usage"]["completion_tokens"]);
    assert_eq!((&whole["store"], &whole["metadata"]), (&json!(false), &json!({"run": "1"})));
    assert_eq!(whole["instructions"], "Answer in one short sentence.");

    let response = post(&server, "/v1/responses", &asked(json!({"stream": true}))).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(!text.contains("[DONE]"), "{text}");
    let events = sse_events(&text);
    let numbers: Vec<u64> = events.iter().map(|event| event["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let kinds: Vec<&str> = events.iter().map(|event| event["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            &format!("response.{status}")
        ]
    );
    let deltas: String = events
        .iter()
        .filter(|event| event["type"] == "response.output_text.delta")
        .map(|event| event["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, output_text(&whole));
    let last = &events.last().unwrap()["response"];
    assert_eq!((output_text(last), &last["usage"]), (output_text(&whole), &whole["usage"]));
    assert_eq!(events[0]["response"]["status"], "in_progress");
}

#[tokio::test]
async fn function_calls_and_their_outputs_go_round_over_http_and_the_websocket() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let weather = json!({"type": "function", "name": "get_weather", "description": "The weather in a city today.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"], "additionalProperties": false}, "strict": true});
    let conversation = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let body = json!({"model": MODEL, "temperature": 0, "max_output_tokens": 80, "input": conversation,
                      "tools": [weather], "tool_choice": "required", "parallel_tool_calls": false});
    let called = json_of(post(&server, "/v1/responses", &body).await).await;
    let call =
        called["output"].as_array().unwrap().iter().find(|item| item["type"] == "function_call").cloned();
    let call = call.unwrap_or_else(|| panic!("a call: {called}"));
    assert!(
        call["call_id"].as_str().unwrap().starts_with("call_")
            && call["id"].as_str().unwrap().starts_with("fc_")
    );
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].as_str().is_some_and(|city| city.chars().count() <= 20), "{arguments}");
    assert_eq!(called["tools"][0]["name"], "get_weather", "the tools as sent");

    // The call and its output back (the items as they came, extra fields
    // and all): the model answers.
    let mut input = conversation.as_array().unwrap().clone();
    input.extend(called["output"].as_array().unwrap().iter().cloned());
    input.push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": "{\"temperature\": 14}"}));
    let answer_body = json!({"model": MODEL, "temperature": 0, "max_output_tokens": 30, "input": input, "tools": [weather]});
    let answer = json_of(post(&server, "/v1/responses", &answer_body).await).await;
    assert_eq!(answer["output"].as_array().unwrap().len(), 1, "{answer}");

    // The WebSocket's `responses` frames: the same call, streamed.
    let mut socket = Socket::connect(&server, Some(ADMIN_KEY)).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    socket.send(json!({"id": "r", "type": "responses", "body": streamed})).await;
    let frames = socket.until_ended(&["r"]).await;
    let events: Vec<&Value> =
        frames["r"].iter().filter(|frame| frame["type"] == "chunk").map(|frame| &frame["data"]).collect();
    let fragments: String = events
        .iter()
        .filter(|event| event["type"] == "response.function_call_arguments.delta")
        .map(|event| event["delta"].as_str().unwrap())
        .collect();
    assert_eq!(fragments, call["arguments"].as_str().unwrap());
    let last = events.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["response"]["output"][0]["name"].as_str()),
        (Some("response.completed"), Some("get_weather"))
    );
}

#[tokio::test]
async fn hostile_bodies_are_refused_with_the_responses_field_at_fault() {
    let server = Server::start(&[], &[]).await;
    let input = |input: Value| asked(json!({"input": input}));
    let cases = [
        (
            asked(json!({"previous_response_id": "resp_0123"})),
            "previous_response_not_found",
            "previous_response_id",
        ),
        (input(json!(5)), "invalid_input", "input"),
        (json!({"model": MODEL, "input": []}), "invalid_messages", "input"),
        (input(json!(["hi"])), "invalid_input", "input[0]"),
        (input(json!([{"type": "reasoning", "summary": []}])), "invalid_input", "input[0].type"),
        (
            input(
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "http://127.0.0.1/x.png"}]}]),
            ),
            "invalid_content",
            "input[0].content[0]",
        ),
        (input(json!([{"role": "wizard", "content": "x"}])), "invalid_role", "input[0].role"),
        (
            input(
                json!([{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "call_other", "output": "1"}]),
            ),
            "invalid_messages",
            "input[1].call_id",
        ),
        (
            input(json!([{"type": "function_call", "call_id": "c", "name": "f"}])),
            "invalid_input",
            "input[0].arguments",
        ),
        (input(json!([{"role": "user", "content": "a\u{0}b"}])), "invalid_characters", "input[0].content"),
        (asked(json!({"tools": [{"type": "file_search"}]})), "invalid_tools", "tools[0].type"),
        (
            asked(json!({"tools": [{"type": "function", "name": "a b", "parameters": {"type": "object"}}]})),
            "invalid_tools",
            "tools[0].name",
        ),
        (
            asked(
                json!({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "tool_choice": {"type": "function", "name": "g"}}),
            ),
            "invalid_tool_choice",
            "tool_choice.name",
        ),
        (asked(json!({"text": {"format": {"type": "xml"}}})), "invalid_response_format", "text.format.type"),
        (asked(json!({"max_output_tokens": 0})), "invalid_max_tokens", "max_output_tokens"),
        (asked(json!({"temperature": 9})), "invalid_temperature", "temperature"),
        (asked(json!({"reasoning": {"effort": "high"}})), "unsupported_parameter", "reasoning"),
        (asked(json!({"truncation": "auto"})), "unsupported_parameter", "truncation"),
        (asked(json!({"background": true})), "unsupported_parameter", "background"),
        (
            asked(
                json!({"metadata": (0..17).map(|index| (index.to_string(), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            ),
            "invalid_value",
            "metadata",
        ),
        (asked(json!({"padding": 1})), "unknown_parameter", "padding"),
        (asked(json!({"model": "gpt-4o"})), "model_not_found", "model"),
    ];
    for (body, code, param) in cases {
        let response = post(&server, "/v1/responses", &body).await;
        let status = if code == "model_not_found" { 404 } else { 400 };
        assert_eq!(response.status(), status, "{body}");
        let error = expect_error(response, status, code).await;
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    // Nested past JSON's depth limit, and past the body limit: refused, not
    // crashed on.
    let deep = format!("{{\"model\": \"{MODEL}\", \"input\": {}{}}}", "[".repeat(5000), "]".repeat(5000));
    let response = client()
        .post(server.url("/v1/responses"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let huge = asked(json!({"input": "word ".repeat(2_000_000)}));
    assert_eq!(post(&server, "/v1/responses", &huge).await.status(), 413);

    // Credentials: none is a 401; a key without the chat scope a 403, on
    // HTTP and as a WebSocket frame.
    let response =
        anonymous_client().post(server.url("/v1/responses")).json(&asked(json!({}))).send().await.unwrap();
    expect_error(response, 401, "invalid_api_key").await;
    let scoped = new_user_key_with(&server, "responses@example.com", json!({"scopes": ["embeddings"]})).await;
    let scoped = scoped.as_str();
    let response = client_with_key(scoped)
        .post(server.url("/v1/responses"))
        .json(&asked(json!({})))
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "insufficient_scope").await;
    let mut socket = Socket::connect(&server, Some(scoped)).await;
    socket.send(json!({"id": "x", "type": "responses", "body": asked(json!({}))})).await;
    let frames = socket.until_ended(&["x"]).await;
    assert_eq!(frames["x"][0]["error"]["code"], "insufficient_scope", "{:?}", frames["x"]);
}
