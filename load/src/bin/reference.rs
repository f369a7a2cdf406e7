//! The bare reference server: actix-web with a `GET /health` handler and
//! nothing else (no middleware, no logging, no metrics). Benchmarks run it
//! beside Blaze, with the same load generator, to give the ceiling this
//! machine allows in the same run.
//!
//! It also answers `POST /v1/chat/completions` with a canned completion
//! (JSON, or a stream of chunks with `"stream": true`) and `GET /v1/models`:
//! the fastest upstream a gateway can have, to measure what the gateway
//! adds. And `POST /v1/traces` takes OTLP exports (and drops them), a
//! collector that costs the traced server nothing, to measure tracing.

use actix_web::{web, App, HttpResponse, HttpServer};
use clap::Parser;

/// The bare actix-web reference server.
#[derive(Debug, Parser)]
#[command(name = "blaze-reference", version)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Worker threads; 0 means one per core, as Blaze's default.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

/// The canned answer's text, streamed a word a chunk.
const WORDS: [&str; 4] = ["Blue", " is", " a", " color."];

async fn chat(body: web::Bytes) -> HttpResponse {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or("reference").to_owned();
    if request["stream"].as_bool() == Some(true) {
        let usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
        let mut events = String::new();
        for word in WORDS {
            let chunk = serde_json::json!({
                "id": "chatcmpl-reference", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]
            });
            events.push_str(&format!("data: {chunk}\n\n"));
        }
        let last = serde_json::json!({
            "id": "chatcmpl-reference", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        });
        events.push_str(&format!("data: {last}\n\n"));
        if usage {
            let usage = serde_json::json!({
                "id": "chatcmpl-reference", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
            });
            events.push_str(&format!("data: {usage}\n\n"));
        }
        events.push_str("data: [DONE]\n\n");
        return HttpResponse::Ok().content_type("text/event-stream").body(events);
    }
    let answer = serde_json::json!({
        "id": "chatcmpl-reference", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS.concat()}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
    });
    HttpResponse::Ok().content_type("application/json").body(answer.to_string())
}

/// An OTLP/HTTP export, taken: an empty `ExportTraceServiceResponse` is
/// an empty protobuf message.
async fn traces(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().content_type("application/x-protobuf").finish()
}

async fn models() -> HttpResponse {
    let list = serde_json::json!({"object": "list", "data": [{"id": "reference", "object": "model", "created": 0, "owned_by": "blaze-reference"}]});
    HttpResponse::Ok().content_type("application/json").body(list.to_string())
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        workers => workers,
    };
    let server = HttpServer::new(|| {
        App::new()
            .route("/health", web::get().to(health))
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/models", web::get().to(models))
            .route("/v1/traces", web::post().to(traces))
            // OTLP batches are up to a few MB.
            .app_data(web::PayloadConfig::new(64 << 20))
    })
    .workers(workers)
    .bind((args.host.as_str(), args.port))?;
    for address in server.addrs() {
        println!("{}", serde_json::json!({ "message": "listening", "address": address.to_string() }));
    }
    server.run().await
}
