//! Tool calling over real HTTP and the WebSocket on the real GGUF: `tools`
//! with `tool_choice` required, a named function, auto and none, and
//! `parallel_tool_calls`; calls returned as `message.tool_calls` and
//! streamed as `delta.tool_calls`, their arguments validated against the
//! function's parameters; a call's result sent back as a `tool` message;
//! the cache key covering the tools; bad definitions and histories refused
//! with the field at fault.

use std::time::Duration;

use crate::common::websocket::Socket;
use crate::common::{chunks, decoding_turn, expect_error, Server, ADMIN_KEY};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn weather() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city today.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        }, "required": ["city", "unit"], "additionalProperties": false},
        "strict": true,
    }})
}

fn time() -> Value {
    json!({"type": "function", "function": {
        "name": "get_time",
        "description": "The time now in a time zone.",
        "parameters": {"type": "object", "properties": {
            "zone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"},
        }, "required": ["zone"], "additionalProperties": false},
    }})
}

fn body(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "tools": [weather(), time()],
        "temperature": 0,
        "max_tokens": 120,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// A client patient enough for constrained completions queued on two cores.
fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_KEY}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().timeout(Duration::from_secs(300)).default_headers(headers).build().unwrap()
}

async fn post_with(server: &Server, body: &Value, cache: &str) -> reqwest::Response {
    let request = client().post(server.url("/v1/chat/completions")).json(body);
    let request = if cache.is_empty() { request } else { request.header("cache-control", cache) };
    request.send().await.unwrap()
}

async fn post(server: &Server, body: &Value) -> reqwest::Response {
    post_with(server, body, "no-store").await
}

/// The first choice of a 200 answer.
async fn choice(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["choices"][0].clone()
}

/// The parameters of the tool named `name` in `tools`.
fn parameters<'a>(tools: &'a [Value], name: &str) -> &'a Value {
    &tools.iter().find(|tool| tool["function"]["name"] == name).unwrap()["function"]["parameters"]
}

/// Each call's name and arguments; the arguments parse and validate
/// against their function's parameters, and each id is OpenAI's shape.
fn checked_calls(message: &Value, tools: &[Value]) -> Vec<(String, Value)> {
    let calls = message["tool_calls"].as_array().unwrap_or_else(|| panic!("no tool_calls: {message}"));
    calls
        .iter()
        .map(|call| {
            assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
            assert_eq!(call["type"], "function");
            let name = call["function"]["name"].as_str().unwrap().to_owned();
            let text = call["function"]["arguments"].as_str().unwrap();
            let arguments: Value =
                serde_json::from_str(text).unwrap_or_else(|error| panic!("{text}: {error}"));
            let validator = jsonschema::validator_for(parameters(tools, &name)).unwrap();
            let errors: Vec<String> =
                validator.iter_errors(&arguments).map(|error| error.to_string()).collect();
            assert!(errors.is_empty(), "{name}({text}): {errors:?}");
            (name, arguments)
        })
        .collect()
}

/// The message a stream's chunks add up to: content, and each call's id,
/// name and arguments (checked to come as OpenAI streams them).
fn assembled(chunks: &[Value]) -> (Value, String) {
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = String::new();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for chunk in chunks {
        let Some(choice) = chunk["choices"].get(0) else { continue };
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_owned();
        }
        if let Some(text) = choice["delta"]["content"].as_str() {
            content.push_str(text);
        }
        for delta in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = delta["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                // A call's first delta: its id, type and name, no arguments yet.
                assert!(delta["id"].as_str().unwrap().starts_with("call_"), "{delta}");
                assert_eq!(
                    (&delta["type"], &delta["function"]["arguments"]),
                    (&json!("function"), &json!(""))
                );
                calls.push(json!({"id": delta["id"], "type": "function",
                    "function": {"name": delta["function"]["name"], "arguments": ""}}));
            } else {
                assert_eq!(index + 1, calls.len(), "deltas of one call come together: {delta}");
                assert!(delta.get("id").is_none() && delta["function"].get("name").is_none(), "{delta}");
                let fragment = delta["function"]["arguments"].as_str().unwrap();
                let arguments =
                    format!("{}{fragment}", calls[index]["function"]["arguments"].as_str().unwrap());
                calls[index]["function"]["arguments"] = json!(arguments);
            }
        }
    }
    let mut message = json!({"role": "assistant", "content": (!content.is_empty()).then_some(content)});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    (message, finish)
}

/// Two messages equal but for the calls' ids (new for each answer).
fn without_ids(message: &Value) -> Value {
    let mut message = message.clone();
    message.as_object_mut().unwrap().remove("refusal");
    for call in message["tool_calls"].as_array_mut().into_iter().flatten() {
        call.as_object_mut().unwrap().remove("id");
    }
    message
}

#[tokio::test]
async fn required_named_and_single_calls_are_decoded_under_the_tools_grammar() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let tools = [weather(), time()];
    let question = "What is the weather in Paris, and what time is it in Europe/Paris?";

    // Parallel calls: one or more, until the model ends them (a small
    // model may go on calling until max_tokens; every whole call counts).
    let required = choice(post(&server, &body(question, json!({"tool_choice": "required"}))).await).await;
    assert_eq!(required["message"]["content"], Value::Null, "{required}");
    let mut whole = required["message"].clone();
    if required["finish_reason"] == "length" {
        whole["tool_calls"].as_array_mut().unwrap().pop();
    } else {
        assert_eq!(required["finish_reason"], "tool_calls", "{required}");
    }
    let calls = checked_calls(&whole, &tools);
    assert!(!calls.is_empty(), "{required}");

    let named = json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}, "parallel_tool_calls": false});
    let named = choice(post(&server, &body(question, named)).await).await;
    let calls = checked_calls(&named["message"], &tools);
    assert!(calls.iter().all(|(name, _)| name == "get_time"), "{calls:?}");

    let single = json!({"tool_choice": "required", "parallel_tool_calls": false});
    let single = choice(post(&server, &body(question, single)).await).await;
    assert_eq!(checked_calls(&single["message"], &tools).len(), 1, "{single}");
    assert_eq!(single["finish_reason"], "tool_calls");

    // Cut off by max_tokens: finish_reason says so, and the arguments so far.
    let cut =
        choice(post(&server, &body(question, json!({"tool_choice": "required", "max_tokens": 12}))).await)
            .await;
    assert_eq!(cut["finish_reason"], "length", "{cut}");

    // none: the tools are described, the text is free and read as text.
    let none =
        choice(post(&server, &body(question, json!({"tool_choice": "none", "max_tokens": 30}))).await).await;
    assert!(none["message"]["content"].is_string(), "{none}");
    assert!(none["message"].get("tool_calls").is_none(), "{none}");
    assert_ne!(none["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn streamed_calls_add_up_to_the_whole_answer() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let tools = [weather(), time()];
    let question = "What is the weather in Paris?";
    for extra in
        [json!({"tool_choice": "required"}), json!({"tool_choice": "required", "parallel_tool_calls": false})]
    {
        let whole = choice(post(&server, &body(question, extra.clone())).await).await;
        let mut streamed = body(question, extra);
        streamed["stream"] = json!(true);
        let events = post(&server, &streamed).await.text().await.unwrap();
        let chunks = chunks(&events);
        let (message, finish) = assembled(&chunks);
        assert_eq!(finish, "tool_calls", "{events}");
        assert_eq!(without_ids(&message), without_ids(&whole["message"]), "{events}");
        checked_calls(&message, &tools);
        // The arguments come in more than one fragment.
        let fragments = chunks
            .iter()
            .filter(|chunk| chunk["choices"][0]["delta"]["tool_calls"][0]["function"].get("name").is_none())
            .filter(|chunk| chunk["choices"][0]["delta"]["tool_calls"].is_array())
            .count();
        assert!(fragments > 1, "{events}");
    }
}

/// A conversation in which the assistant called a tool, got its result and
/// answered.
fn history() -> Vec<Value> {
    vec![
        json!({"role": "system", "content": "You call get_weather for any question about the weather."}),
        json!({"role": "user", "content": "What is the weather in Rome?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\", \"unit\": \"celsius\"}"}}]}),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"}),
        json!({"role": "assistant", "content": "It is 21 degrees and clear in Rome."}),
    ]
}

#[tokio::test]
async fn auto_calls_when_the_model_starts_a_call_and_results_come_back_as_tool_messages() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let tools = [weather(), time()];
    // Auto: the model writes the call's mark itself (one example call
    // before teaches SmolLM2 to); from there the grammar holds it.
    let mut messages = vec![
        json!({"role": "user", "content": "What is the weather in Rome?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\", \"unit\": \"celsius\"}"}}]}),
        json!({"role": "user", "content": "What is the weather in Paris?"}),
    ];
    let asked = body("", json!({"messages": messages, "tool_choice": "auto"}));
    let auto = choice(post(&server, &asked).await).await;
    assert_eq!(auto["finish_reason"], "tool_calls", "{auto}");
    let calls = checked_calls(&auto["message"], &tools);
    assert_eq!(calls[0].0, "get_weather", "{auto}");
    // Streamed the same.
    let mut streamed = asked.clone();
    streamed["stream"] = json!(true);
    let events = post(&server, &streamed).await.text().await.unwrap();
    let (message, finish) = assembled(&chunks(&events));
    assert_eq!((without_ids(&message), finish.as_str()), (without_ids(&auto["message"]), "tool_calls"));

    // The round trip: the call and its result go back, and the model answers.
    let call = &auto["message"]["tool_calls"][0];
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"temperature\": 14, \"sky\": \"rain\"}"}));
    let answered: Value = post(&server, &body("", json!({"messages": messages, "tool_choice": "auto"})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answered["choices"][0]["finish_reason"], "stop", "{answered}");
    assert!(!answered["choices"][0]["message"]["content"].as_str().unwrap().is_empty(), "{answered}");
    let before: Value = post(&server, &asked).await.json().await.unwrap();
    assert!(
        answered["usage"]["prompt_tokens"].as_u64() > before["usage"]["prompt_tokens"].as_u64(),
        "the call and its result are in the prompt: {answered}"
    );

    // The tools are part of the prompt, and priced in it.
    let plain = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1});
    let mut with_tools = plain.clone();
    with_tools["tools"] = json!(tools);
    let plain: Value = post(&server, &plain).await.json().await.unwrap();
    let with_tools: Value = post(&server, &with_tools).await.json().await.unwrap();
    let prompt_tokens = |body: &Value| body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens(&with_tools) > prompt_tokens(&plain) + 100, "{with_tools} {plain}");
}

#[tokio::test]
async fn the_cache_key_covers_the_tools_and_the_websocket_answers_the_same() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let asked = body("What is the weather in Paris?", json!({"tool_choice": "required"}));
    let first = post_with(&server, &asked, "").await;
    assert_eq!(first.headers()["x-blaze-cache"], "miss");
    let first = choice(first).await;
    let again = post_with(&server, &asked, "").await;
    assert_eq!(again.headers()["x-blaze-cache"], "hit-memory");
    let again = choice(again).await;
    assert_eq!(without_ids(&again["message"]), without_ids(&first["message"]));
    assert_ne!(
        again["message"]["tool_calls"][0]["id"], first["message"]["tool_calls"][0]["id"],
        "ids are new"
    );
    // Another schema, another choice, no tools: other entries.
    let mut other = asked.clone();
    other["tools"][0]["function"]["parameters"]["properties"]["city"]["maxLength"] = json!(10);
    assert_eq!(post_with(&server, &other, "").await.headers()["x-blaze-cache"], "miss");
    let mut named = asked.clone();
    named["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    assert_eq!(post_with(&server, &named, "").await.headers()["x-blaze-cache"], "miss");
    let mut auto = asked.clone();
    auto["tool_choice"] = json!("auto");
    assert_eq!(post_with(&server, &auto, "").await.headers()["x-blaze-cache"], "miss");

    let mut socket = Socket::connect(&server, Some(ADMIN_KEY)).await;
    socket.send(json!({"id": "w", "type": "chat.completions", "body": asked})).await;
    let mut streamed = asked.clone();
    streamed["stream"] = json!(true);
    socket.send(json!({"id": "s", "type": "chat.completions", "body": streamed})).await;
    let frames = socket.until_ended(&["w", "s"]).await;
    let whole = &frames["w"][0]["data"]["choices"][0]["message"];
    assert_eq!(without_ids(whole), without_ids(&first["message"]));
    let chunks: Vec<Value> = frames["s"]
        .iter()
        .filter(|frame| frame["type"] == "chunk")
        .map(|frame| frame["data"].clone())
        .collect();
    let (message, finish) = assembled(&chunks);
    assert_eq!((without_ids(&message), finish.as_str()), (without_ids(&first["message"]), "tool_calls"));
}

#[tokio::test]
async fn bad_tools_choices_and_histories_are_refused_with_the_field_at_fault() {
    let server = Server::start(&[], &[]).await;
    let refused = |extra: Value, code: &'static str, param: &'static str| {
        let body = body("hi", extra);
        let server = &server;
        async move {
            let error = expect_error(post(server, &body).await, 400, code).await;
            assert_eq!(error["param"], param, "{body}: {error}");
        }
    };
    let tool = |function: Value| json!({"type": "function", "function": function});
    let deep = (0..40)
        .fold(json!({"type": "integer"}), |inner, _| json!({"type": "object", "properties": {"a": inner}}));
    refused(json!({"tools": {"a": 1}}), "invalid_tools", "tools").await;
    refused(json!({"tools": [1]}), "invalid_tools", "tools[0]").await;
    refused(
        json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
        "invalid_tools",
        "tools[0].type",
    )
    .await;
    refused(json!({"tools": [tool(json!({"name": "bad name"}))]}), "invalid_tools", "tools[0].function.name")
        .await;
    refused(
        json!({"tools": [tool(json!({"name": "x".repeat(65)}))]}),
        "invalid_tools",
        "tools[0].function.name",
    )
    .await;
    refused(json!({"tools": [tool(json!({}))]}), "invalid_tools", "tools[0].function.name").await;
    refused(json!({"tools": [weather(), weather()]}), "invalid_tools", "tools[1].function.name").await;
    refused(
        json!({"tools": [tool(json!({"name": "f", "parameters": {"type": "string"}}))]}),
        "invalid_tools",
        "tools[0].function.parameters",
    )
    .await;
    refused(
        json!({"tools": [tool(json!({"name": "f", "parameters": [1]}))]}),
        "invalid_tools",
        "tools[0].function.parameters",
    )
    .await;
    refused(
        json!({"tools": [tool(json!({"name": "f", "strict": true, "parameters": {"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 3}}}}))]}),
        "unsupported_schema",
        "tools[0].function.parameters",
    )
    .await;
    refused(
        json!({"tools": [tool(json!({"name": "f", "parameters": deep}))]}),
        "invalid_tools",
        "tools[0].function.parameters",
    )
    .await;
    refused(
        json!({"tools": [tool(json!({"name": "f", "evil": 1}))]}),
        "unknown_parameter",
        "tools[0].function.evil",
    )
    .await;
    refused(
        json!({"tools": [tool(json!({"name": "f", "strict": "yes"}))]}),
        "invalid_tools",
        "tools[0].function.strict",
    )
    .await;
    let many: Vec<Value> = (0..129).map(|index| tool(json!({"name": format!("f{index}")}))).collect();
    refused(json!({"tools": many}), "invalid_tools", "tools").await;
    refused(json!({"tool_choice": "sometimes"}), "invalid_tool_choice", "tool_choice").await;
    refused(
        json!({"tool_choice": {"type": "function", "function": {"name": "other"}}}),
        "invalid_tool_choice",
        "tool_choice.function.name",
    )
    .await;
    refused(json!({"tools": [], "tool_choice": "required"}), "invalid_tool_choice", "tool_choice").await;
    refused(json!({"parallel_tool_calls": "yes"}), "invalid_tool_choice", "parallel_tool_calls").await;
    refused(
        json!({"tool_choice": "required", "response_format": {"type": "json_object"}}),
        "invalid_tool_choice",
        "tool_choice",
    )
    .await;
    // Histories: a result must answer a call of the assistant message before it.
    let mut stray = history();
    stray[3]["tool_call_id"] = json!("call_other");
    refused(json!({"messages": stray}), "invalid_messages", "messages[3].tool_call_id").await;
    let mut missing = history();
    missing[3].as_object_mut().unwrap().remove("tool_call_id");
    refused(json!({"messages": missing}), "invalid_messages", "messages[3].tool_call_id").await;
    refused(
        json!({"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}]}),
        "invalid_messages",
        "messages[0].tool_call_id",
    )
    .await;
    let mut not_json = history();
    not_json[2]["tool_calls"][0]["function"]["arguments"] = json!("{city: Rome");
    refused(
        json!({"messages": not_json}),
        "invalid_messages",
        "messages[2].tool_calls[0].function.arguments",
    )
    .await;
    let mut bad_call = history();
    bad_call[2]["tool_calls"][0]["function"]["arguments"] = json!({"city": "Rome"});
    let error = expect_error(
        post(&server, &body("", json!({"messages": bad_call}))).await,
        400,
        "invalid_request_body",
    )
    .await;
    assert!(
        error["param"].as_str().unwrap().starts_with("messages[2].tool_calls[0].function.arguments"),
        "{error}"
    );
    // A tools field over its size limit is refused before it is read whole.
    let huge = tool(json!({"name": "f", "description": "x".repeat(70_000)}));
    let error =
        expect_error(post(&server, &body("hi", json!({"tools": [huge]}))).await, 400, "invalid_request_body")
            .await;
    assert!(error["message"].as_str().unwrap().contains("larger than"), "{error}");
    // The server is unharmed.
    let health = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_output_guard_screens_tool_arguments_as_output() {
    let config = crate::common::config_file(
        "guard:\n  scan_output: true\n  categories:\n    secrets:\n      action: block\n      applies_to: output\n      patterns:\n        - {name: city_argument, regex: '\"city\"'}\n",
    );
    let server = Server::start(&[], &["--config", config.path().to_str().unwrap()]).await;
    let _turn = decoding_turn().await;
    let asked = body(
        "What is the weather in Paris?",
        json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    );
    let blocked = choice(post(&server, &asked).await).await;
    assert_eq!(blocked["finish_reason"], "content_filter", "{blocked}");
    assert!(blocked["message"].get("tool_calls").is_none(), "{blocked}");
    let mut streamed = asked.clone();
    streamed["stream"] = json!(true);
    let events = post(&server, &streamed).await.text().await.unwrap();
    let (message, finish) = assembled(&chunks(&events));
    assert_eq!(finish, "content_filter", "{events}");
    let arguments = message["tool_calls"][0]["function"]["arguments"].as_str().unwrap_or("");
    assert!(!arguments.contains("\"city\""), "{events}");
}
