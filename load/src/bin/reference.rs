//! The bare reference server: actix-web with one `GET /health` handler and
//! nothing else (no middleware, no logging, no metrics). Benchmarks run it
//! beside Blaze, with the same load generator, to give the ceiling this
//! machine allows in the same run.

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

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        workers => workers,
    };
    let server = HttpServer::new(|| App::new().route("/health", web::get().to(health)))
        .workers(workers)
        .bind((args.host.as_str(), args.port))?;
    for address in server.addrs() {
        println!("{}", serde_json::json!({ "message": "listening", "address": address.to_string() }));
    }
    server.run().await
}
