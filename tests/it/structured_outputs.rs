//! Structured outputs over real HTTP on the real GGUF: `response_format`
//! (json_object, json_schema) and Blaze's `structured_outputs` (json,
//! regex, choice, grammar), JSON and streamed, checked with a JSON Schema
//! validator; the cache key covering the schema; and bad formats refused
//! with the field at fault, the server unharmed.

use std::time::Duration;

use crate::common::websocket::Socket;
use crate::common::{chunks, decoding_turn, expect_error, Server, ADMIN_KEY};
use futures_util::future::join_all;
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn body(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 400,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn schema_format(schema: &Value) -> Value {
    json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}}})
}

/// The first admin's client, patient enough for two dozen constrained
/// completions queued on two cores.
fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_KEY}")).unwrap();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().timeout(Duration::from_secs(300)).default_headers(headers).build().unwrap()
}

async fn post(server: &Server, path: &str, body: &Value) -> reqwest::Response {
    client().post(server.url(path)).header("cache-control", "no-store").json(body).send().await.unwrap()
}

/// The first choice's content and finish reason of a 200 answer.
async fn answer(response: reqwest::Response) -> (String, String) {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap().to_owned();
    (text, choice["finish_reason"].as_str().unwrap().to_owned())
}

/// Schemas a demanding client sends: nested objects, arrays, enums,
/// required fields, bounded integers, patterns, formats, references.
fn schemas() -> Vec<Value> {
    let name = json!({"type": "string", "minLength": 1, "maxLength": 16});
    vec![
        json!({"type": "object", "properties": {"name": name, "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 5}),
        json!({"type": "object", "properties": {"address": {"type": "object", "properties": {"city": name, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["city", "zip"], "additionalProperties": false}}, "required": ["address"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"version": {"const": 2}, "name": name}, "required": ["version", "name"], "additionalProperties": false}),
        json!({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 10}, {"type": "string", "maxLength": 5}]}),
        json!({"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10}, "y": {"type": "integer", "minimum": -10, "maximum": 10}}, "required": ["x", "y"], "additionalProperties": false}}, "type": "object", "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}}, "required": ["from", "to"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "object", "properties": {"title": name, "done": {"type": "boolean"}}, "required": ["title", "done"], "additionalProperties": false}, "minItems": 1, "maxItems": 3}),
        json!({"type": "object", "properties": {"nickname": {"type": ["string", "null"], "maxLength": 10}}, "required": ["nickname"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}}, "required": ["code"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"day": {"type": "string", "format": "date"}}, "required": ["day"], "additionalProperties": false}),
        json!({"type": "string", "format": "uuid"}),
        json!({"type": "array", "prefixItems": [name, {"type": "integer", "minimum": 0, "maximum": 100}], "minItems": 2, "maxItems": 2}),
        json!({"type": "object", "properties": {"word": {"type": "string", "minLength": 3, "maxLength": 8}}, "required": ["word"], "additionalProperties": false}),
        json!({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 5}),
        json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 3}, "b": {"type": "string", "maxLength": 4}}, "required": ["a"], "additionalProperties": false}),
        json!({"enum": ["yes", "no", 1, null]}),
        json!({"type": "object", "properties": {"l1": {"type": "object", "properties": {"l2": {"type": "object", "properties": {"l3": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["l3"], "additionalProperties": false}}, "required": ["l2"], "additionalProperties": false}}, "required": ["l1"], "additionalProperties": false}),
        json!({"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 4}),
        json!({"type": "integer", "minimum": -50, "maximum": -10}),
        json!({"type": "object", "properties": {"tags": {"type": "array", "items": name, "maxItems": 3}, "score": {"type": "integer", "minimum": 1, "maximum": 5}}, "required": ["tags", "score"], "additionalProperties": false}),
    ]
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options().should_validate_formats(true).build(schema).expect("a valid JSON Schema")
}

#[tokio::test]
async fn json_schema_answers_parse_and_validate_whole_and_streamed() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let prompt = "Give an example answer as JSON.";
    let schemas = schemas();
    assert!(schemas.len() >= 20);
    // All at once: the pool batches them.
    let bodies: Vec<Value> = schemas.iter().map(|schema| body(prompt, schema_format(schema))).collect();
    let answers = join_all(bodies.iter().map(|body| post(&server, "/v1/chat/completions", body))).await;
    for (schema, response) in schemas.iter().zip(answers) {
        let (text, finish) = answer(response).await;
        assert_eq!(finish, "stop", "{schema}: {text}");
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|error| panic!("{schema}: {text}: {error}"));
        let errors: Vec<String> =
            validator(schema).iter_errors(&value).map(|error| error.to_string()).collect();
        assert!(errors.is_empty(), "{schema}: {text}: {errors:?}");
    }

    // Streamed: the deltas add up to the same validated text.
    let schema = &schemas[0];
    let mut streamed = body(prompt, schema_format(schema));
    streamed["stream"] = json!(true);
    let (whole, _) =
        answer(post(&server, "/v1/chat/completions", &body(prompt, schema_format(schema))).await).await;
    let events = post(&server, "/v1/chat/completions", &streamed).await.text().await.unwrap();
    let text: String = chunks(&events)
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, whole);
    assert!(validator(schema).is_valid(&serde_json::from_str(&text).unwrap()));
}

#[tokio::test]
async fn json_object_regex_choice_and_grammar_constrain_the_text() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let object = json!({"response_format": {"type": "json_object"}});
    let (text, finish) = answer(
        post(
            &server,
            "/v1/chat/completions",
            &body("What is the capital of France? Answer in JSON.", object),
        )
        .await,
    )
    .await;
    assert_eq!(finish, "stop", "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap().is_object(), "{text}");

    let choices = ["Paris", "London", "Berlin"];
    let choice = json!({"structured_outputs": {"choice": choices}});
    let (text, _) =
        answer(post(&server, "/v1/chat/completions", &body("What is the capital of France?", choice)).await)
            .await;
    assert!(choices.contains(&text.as_str()), "{text}");

    let pattern = r"^[A-Z][a-z]{2,8} (is|was) [0-9]{1,3}\.$";
    let regex = json!({"structured_outputs": {"regex": pattern}});
    let (text, _) =
        answer(post(&server, "/v1/chat/completions", &body("How old is the tower?", regex)).await).await;
    assert!(regex::Regex::new(pattern).unwrap().is_match(&text), "{text}");

    let gbnf = "root ::= \"Answer: \" answer \".\"\nanswer ::= \"yes\" | \"no\" | [0-9]{1,2}\n";
    let grammar = json!({"structured_outputs": {"grammar": gbnf}});
    let (text, _) =
        answer(post(&server, "/v1/chat/completions", &body("Is the sky blue?", grammar)).await).await;
    assert!(regex::Regex::new(r"^Answer: (yes|no|[0-9]{1,2})\.$").unwrap().is_match(&text), "{text}");

    // /v1/completions takes the extension too.
    let completion = json!({"model": MODEL, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 20,
        "structured_outputs": {"choice": [" Paris", " Lyon"]}});
    let (text, _) = answer(post(&server, "/v1/completions", &completion).await).await;
    assert!(text == " Paris" || text == " Lyon", "{text}");
}

#[tokio::test]
async fn the_cache_key_covers_the_schema() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let send = |schema: Value| {
        let request = client()
            .post(server.url("/v1/chat/completions"))
            .json(&body("Give an example answer as JSON.", schema_format(&schema)));
        async move {
            let response = request.send().await.unwrap();
            let cache = response.headers()["x-blaze-cache"].to_str().unwrap().to_owned();
            (cache, answer(response).await.0)
        }
    };
    let boolean = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]});
    let integer = json!({"type": "object", "properties": {"ok": {"type": "integer", "minimum": 0, "maximum": 3}}, "required": ["ok"]});
    let (first, text) = send(boolean.clone()).await;
    assert_eq!(first, "miss");
    let (second, again) = send(boolean).await;
    assert_eq!((second.as_str(), again.as_str()), ("hit-memory", text.as_str()));
    let (other, other_text) = send(integer.clone()).await;
    assert_eq!(other, "miss", "another schema, another entry");
    assert!(validator(&integer).is_valid(&serde_json::from_str(&other_text).unwrap()), "{other_text}");
}

#[tokio::test]
async fn bad_formats_are_refused_with_the_field_at_fault() {
    let server = Server::start(&[], &[]).await;
    let refused = |extra: Value, code: &'static str, param: &'static str| {
        let server = &server;
        async move {
            let response = post(server, "/v1/chat/completions", &body("hi", extra.clone())).await;
            let error = expect_error(response, 400, code).await;
            assert_eq!(error["param"], param, "{extra}: {error}");
            error
        }
    };
    let error = refused(
        schema_format(&json!({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}})),
        "unsupported_schema",
        "response_format.json_schema.schema",
    )
    .await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("`multipleOf`") && message.contains("#/properties/n"), "{message}");
    refused(
        schema_format(&json!({"type": "number", "maximum": 1.5})),
        "unsupported_schema",
        "response_format.json_schema.schema",
    )
    .await;
    refused(
        schema_format(&json!({"type": "string", "pattern": "(?<=a)b"})),
        "unsupported_schema",
        "response_format.json_schema.schema",
    )
    .await;
    refused(
        schema_format(&json!({"$ref": "#/$defs/nowhere"})),
        "invalid_response_format",
        "response_format.json_schema.schema",
    )
    .await;
    refused(
        schema_format(&json!({"type": "string", "maxLength": 100_000_000})),
        "invalid_response_format",
        "response_format.json_schema.schema",
    )
    .await;
    let mut deep = json!({"type": "integer"});
    for _ in 0..40 {
        deep = json!({"type": "array", "items": deep});
    }
    refused(schema_format(&deep), "invalid_response_format", "response_format.json_schema.schema").await;
    refused(json!({"response_format": {"type": "xml"}}), "invalid_response_format", "response_format.type")
        .await;
    refused(json!({"response_format": "json"}), "invalid_response_format", "response_format").await;
    refused(
        json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
        "invalid_response_format",
        "response_format.json_schema.name",
    )
    .await;
    refused(
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}}),
        "invalid_response_format",
        "response_format.json_schema.name",
    )
    .await;
    refused(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "extra": 1}}}), "unknown_parameter", "response_format.json_schema.extra").await;
    refused(
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}),
        "invalid_response_format",
        "response_format.json_schema.schema",
    )
    .await;
    refused(
        json!({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}),
        "invalid_response_format",
        "structured_outputs",
    )
    .await;
    refused(
        json!({"structured_outputs": {"regex": "a", "choice": ["a"]}}),
        "invalid_response_format",
        "structured_outputs",
    )
    .await;
    refused(
        json!({"structured_outputs": {"regex": "(a"}}),
        "invalid_response_format",
        "structured_outputs.regex",
    )
    .await;
    refused(
        json!({"structured_outputs": {"regex": r"a\bb"}}),
        "unsupported_schema",
        "structured_outputs.regex",
    )
    .await;
    refused(
        json!({"structured_outputs": {"choice": []}}),
        "invalid_response_format",
        "structured_outputs.choice",
    )
    .await;
    refused(
        json!({"structured_outputs": {"choice": ["a", 1]}}),
        "invalid_response_format",
        "structured_outputs.choice",
    )
    .await;
    refused(
        json!({"structured_outputs": {"grammar": "root ::= missing"}}),
        "invalid_response_format",
        "structured_outputs.grammar",
    )
    .await;
    refused(
        json!({"structured_outputs": {"grammar": "root ::= root \"a\""}}),
        "invalid_response_format",
        "structured_outputs.grammar",
    )
    .await;
    refused(
        json!({"structured_outputs": {"grammar": "start ::= \"a\""}}),
        "invalid_response_format",
        "structured_outputs.grammar",
    )
    .await;
    let nested = format!("root ::= {}\"a\"{}", "(".repeat(20_000), ")".repeat(20_000));
    refused(
        json!({"structured_outputs": {"grammar": nested}}),
        "invalid_response_format",
        "structured_outputs.grammar",
    )
    .await;
    refused(
        json!({"structured_outputs": {"grammar": "root ::= ((\"a\"{2000}){2000}){2000}"}}),
        "invalid_response_format",
        "structured_outputs.grammar",
    )
    .await;
    refused(
        json!({"structured_outputs": {"json": {"type": "string", "format": "email"}}}),
        "unsupported_schema",
        "structured_outputs.json",
    )
    .await;

    // response_format is chat's; completions take the extension only.
    let completion = json!({"model": MODEL, "prompt": "hi", "response_format": {"type": "json_object"}});
    let error =
        expect_error(post(&server, "/v1/completions", &completion).await, 400, "unknown_parameter").await;
    assert_eq!(error["param"], "response_format");
    // Without strict, what cannot be enforced is guidance; text is no format.
    let _turn = decoding_turn().await;
    let loose = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "strict": false,
        "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9, "multipleOf": 3}}, "required": ["n"], "additionalProperties": false}}}});
    let (text, _) = answer(post(&server, "/v1/chat/completions", &body("hi", loose)).await).await;
    assert!(serde_json::from_str::<Value>(&text).unwrap()["n"].is_i64(), "{text}");
    let plain = json!({"response_format": {"type": "text"}, "max_tokens": 5});
    assert_eq!(answer(post(&server, "/v1/chat/completions", &body("hi", plain)).await).await.1, "length");
}

#[tokio::test]
async fn the_websocket_takes_the_same_formats() {
    let _turn = decoding_turn().await;
    let server = Server::start(&[], &[]).await;
    let mut socket = Socket::connect(&server, Some(ADMIN_KEY)).await;
    let choices = ["Paris", "London", "Berlin"];
    let choice = body("What is the capital of France?", json!({"structured_outputs": {"choice": choices}}));
    socket.send(json!({"id": "c", "type": "chat.completions", "body": choice})).await;
    let schema = schemas().remove(0);
    let mut streamed = body("Give an example answer as JSON.", schema_format(&schema));
    streamed["stream"] = json!(true);
    socket.send(json!({"id": "s", "type": "chat.completions", "body": streamed})).await;
    let bad = body("hi", json!({"structured_outputs": {"regex": "(a"}}));
    socket.send(json!({"id": "b", "type": "chat.completions", "body": bad})).await;
    let frames = socket.until_ended(&["c", "s", "b"]).await;

    let result = &frames["c"][0];
    assert_eq!(result["type"], "result", "{result}");
    let text = result["data"]["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(choices.contains(&text), "{text}");
    let text: String = frames["s"]
        .iter()
        .filter(|frame| frame["type"] == "chunk")
        .filter_map(|frame| frame["data"]["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(frames["s"].last().unwrap()["type"], "done");
    assert!(validator(&schema).is_valid(&serde_json::from_str(&text).unwrap()), "{text}");
    let error = &frames["b"][0];
    assert_eq!(
        (error["status"].as_u64(), &error["error"]["param"]),
        (Some(400), &json!("structured_outputs.regex"))
    );
}
