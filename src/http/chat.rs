//! `/v1/chat/completions` and `/v1/completions`: JSON, or Server-Sent
//! Events with `stream: true` (`data: {chunk}` events, `data: [DONE]` at
//! the end; an error during a stream is an error event, never followed by
//! `[DONE]`).

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use blaze_actors::inference::{ChatEvent, ChatEvents, ChatPool, EngineError, SamplingParams, WorkError};
use blaze_actors::router::ModelHandle;
use serde::Deserialize;
use serde_json::{json, Value};

use super::disconnect::client_gone;
use super::AppState;
use crate::error::ApiError;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/completions", web::post().to(completions));
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields both endpoints share.
#[derive(Debug, Deserialize)]
struct Sampling {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<usize>,
    stop: Option<Stop>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(flatten)]
    sampling: Sampling,
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: String,
    #[serde(flatten)]
    sampling: Sampling,
    #[allow(dead_code)]
    user: Option<String>,
}

fn invalid(code: &'static str, param: &str, message: String) -> ApiError {
    ApiError::bad_request(code, message).with_param(param)
}

fn chat_pool(state: &AppState, id: &str) -> Result<ChatPool, ApiError> {
    let model = super::openai::find_model(state, id)?;
    match &model.handle {
        ModelHandle::Chat(pool) => Ok(pool.clone()),
        ModelHandle::Embedding(_) => {
            Err(invalid("invalid_model", "model", format!("{id} is an embedding model; use /v1/embeddings")))
        }
    }
}

/// Checks the sampling fields and fixes the generation's parameters.
fn sampling_params(
    sampling: &Sampling,
    prompt_tokens: usize,
    pool: &ChatPool,
) -> Result<SamplingParams, ApiError> {
    if sampling.n.is_some_and(|n| n != 1) {
        return Err(invalid("invalid_n", "n", "only n = 1 is supported".to_owned()));
    }
    let temperature = sampling.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(
            "invalid_temperature",
            "temperature",
            "temperature must be between 0 and 2".to_owned(),
        ));
    }
    let top_p = sampling.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid("invalid_top_p", "top_p", "top_p must be above 0 and at most 1".to_owned()));
    }
    for (name, value) in
        [("presence_penalty", sampling.presence_penalty), ("frequency_penalty", sampling.frequency_penalty)]
    {
        if value.is_some_and(|value| !(-2.0..=2.0).contains(&value)) {
            return Err(invalid("invalid_penalty", name, format!("{name} must be between -2 and 2")));
        }
    }
    let stop = match &sampling.stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop.clone()],
        Some(Stop::Many(stops)) => stops.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(invalid("invalid_stop", "stop", "stop takes at most 4 non-empty strings".to_owned()));
    }
    let window = pool.model().context_length();
    let max_tokens = match sampling.max_completion_tokens.or(sampling.max_tokens) {
        Some(0) => {
            return Err(invalid(
                "invalid_max_tokens",
                "max_tokens",
                "max_tokens must be at least 1".to_owned(),
            ))
        }
        Some(max) => max,
        None => window.saturating_sub(prompt_tokens),
    };
    pool.model().check_window(prompt_tokens, max_tokens).map_err(|_| {
        invalid(
            "context_length_exceeded",
            "messages",
            format!(
                "This model's maximum context length is {window} tokens; you requested {} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion)",
                prompt_tokens + max_tokens
            ),
        )
    })?;
    Ok(SamplingParams {
        max_tokens,
        temperature,
        top_p,
        seed: sampling.seed.map_or_else(rand_seed, |seed| seed as u32),
        presence_penalty: sampling.presence_penalty.unwrap_or(0.0),
        frequency_penalty: sampling.frequency_penalty.unwrap_or(0.0),
        stop,
    })
}

fn rand_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

fn text_of(content: &Option<Content>, index: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text.clone()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|part| match (part.kind.as_str(), &part.text) {
                ("text", Some(text)) => Ok(text.as_str()),
                _ => Err(invalid(
                    "invalid_content",
                    &format!("messages[{index}].content"),
                    "only text content parts are supported".to_owned(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.join("")),
    }
}

async fn chat_completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<ChatRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let pool = chat_pool(&state, &body.model)?;
    if body.messages.is_empty() {
        return Err(invalid("invalid_messages", "messages", "messages must not be empty".to_owned()));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (index, message) in body.messages.iter().enumerate() {
        if !matches!(message.role.as_str(), "system" | "developer" | "user" | "assistant") {
            let message = format!("messages[{index}].role must be system, developer, user or assistant");
            return Err(invalid("invalid_role", &format!("messages[{index}].role"), message));
        }
        let role = if message.role == "developer" { "system".to_owned() } else { message.role.clone() };
        messages.push((role, text_of(&message.content, index)?));
    }
    let rendered = pool
        .model()
        .render(&messages)
        .map_err(|error| invalid("invalid_messages", "messages", error.to_string()))?;
    let prompt = pool.model().tokenize(&rendered, true);
    #[cfg(feature = "test-hooks")]
    let panic = messages.iter().any(|(_, text)| text == "__blaze_test_panic__");
    #[cfg(not(feature = "test-hooks"))]
    let panic = false;
    run(&pool, &request, prompt, &body.model, &body.sampling, Kind::Chat, panic).await
}

async fn completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<CompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let pool = chat_pool(&state, &body.model)?;
    let prompt = pool.model().tokenize(&body.prompt, true);
    run(&pool, &request, prompt, &body.model, &body.sampling, Kind::Text, false).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

async fn run(
    pool: &ChatPool,
    request: &HttpRequest,
    prompt: Vec<u32>,
    model: &str,
    sampling: &Sampling,
    kind: Kind,
    panic: bool,
) -> Result<HttpResponse, ApiError> {
    let params = sampling_params(sampling, prompt.len(), pool)?;
    let prompt_tokens = prompt.len();
    #[cfg(feature = "test-hooks")]
    let submitted = if panic { pool.submit_panicking(prompt, params) } else { pool.submit(prompt, params) };
    #[cfg(not(feature = "test-hooks"))]
    let submitted = {
        let _ = panic;
        pool.submit(prompt, params)
    };
    let events =
        submitted.map_err(|overloaded| ApiError::overloaded(pool.model_id(), overloaded.retry_after_s))?;
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        Kind::Text => format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
    };
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let reply = Reply { id, created, model: model.to_owned(), kind, prompt_tokens };
    if sampling.stream {
        let include_usage = sampling.stream_options.as_ref().is_some_and(|options| options.include_usage);
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(sse(reply, events, include_usage)));
    }
    tokio::select! {
        answer = collect(reply, events) => answer.map(|body| HttpResponse::Ok().json(body)),
        () = client_gone(request) => Err(ApiError::client_closed()),
    }
}

struct Reply {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "system_fingerprint": null, "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }

    fn delta(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(text) = text {
                    delta["content"] = json!(text);
                }
                json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }])
            }
            Kind::Text => {
                json!([{ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish }])
            }
        }
    }
}

fn work_error(error: WorkError, model: &str) -> ApiError {
    match error {
        WorkError::Engine(EngineError::TooLong { tokens, limit }) => invalid(
            "context_length_exceeded",
            "messages",
            format!("This model's maximum context length is {limit} tokens; you requested {tokens}"),
        ),
        WorkError::Engine(error) => invalid("invalid_input", "messages", error.to_string()),
        WorkError::WorkerFailed => ApiError::worker_failed(model),
    }
}

async fn collect(reply: Reply, mut events: ChatEvents) -> Result<Value, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            ChatEvent::Text(piece) => text.push_str(&piece),
            ChatEvent::Done { finish_reason, completion_tokens } => {
                let choice = match reply.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": text, "refusal": null },
                        "logprobs": null,
                        "finish_reason": finish_reason.as_str(),
                    }),
                    Kind::Text => {
                        json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason.as_str() })
                    }
                };
                return Ok(json!({
                    "id": reply.id, "object": reply.object(false), "created": reply.created, "model": reply.model,
                    "system_fingerprint": null, "choices": [choice], "usage": reply.usage(completion_tokens),
                }));
            }
            ChatEvent::Failed(error) => return Err(work_error(error, &reply.model)),
        }
    }
    Err(ApiError::worker_failed(&reply.model))
}

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The SSE body. Dropping it (the client went away) drops the receiver,
/// which stops the generation at its next token.
fn sse(
    reply: Reply,
    events: ChatEvents,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    struct State {
        reply: Reply,
        events: ChatEvents,
        first: bool,
        finished: bool,
        queued: Vec<Bytes>,
    }
    let state = State { reply, events, first: true, finished: false, queued: Vec::new() };
    futures_util::stream::unfold(state, move |mut state| async move {
        loop {
            if let Some(bytes) = state.queued.pop() {
                return Some((Ok(bytes), state));
            }
            if state.finished {
                return None;
            }
            let reply = &state.reply;
            match state.events.recv().await {
                Some(ChatEvent::Text(piece)) => {
                    let chunk = reply.chunk(reply.delta(Some(&piece), state.first, None), None);
                    state.first = false;
                    return Some((Ok(event(&chunk)), state));
                }
                Some(ChatEvent::Done { finish_reason, completion_tokens }) => {
                    let mut out = vec![event(
                        &reply.chunk(reply.delta(None, state.first, Some(finish_reason.as_str())), None),
                    )];
                    if include_usage {
                        out.push(event(&reply.chunk(json!([]), Some(reply.usage(completion_tokens)))));
                    }
                    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                    out.reverse();
                    state.queued = out;
                    state.finished = true;
                }
                Some(ChatEvent::Failed(error)) => {
                    state.finished = true;
                    let error = work_error(error, &reply.model);
                    return Some((Ok(event(&error.body(None))), state));
                }
                None => {
                    state.finished = true;
                    let error = ApiError::worker_failed(&reply.model);
                    return Some((Ok(event(&error.body(None))), state));
                }
            }
        }
    })
}
