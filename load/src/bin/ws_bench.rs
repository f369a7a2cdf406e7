//! The WebSocket surface under load, against a Blaze started by
//! `load/bench/websocket.sh`:
//!
//!     blaze-ws-bench idle --address HOST:PORT --connections 10000 --server-pid PID
//!     blaze-ws-bench stream --address HOST:PORT --surface ws|sse --connections 1000 --seconds 10 --body FILE
//!
//! `idle` opens that many authenticated sockets, holds them, and reports
//! the server's resident memory per socket (from /proc), the sockets the
//! server counts open, and every failure; a sample of the sockets then
//! answers a request, to show they are alive. `stream` keeps that many
//! connections each streaming the body's (cached) chat completion one
//! after another, over the WebSocket protocol or over SSE, and reports
//! completions per second and the time to the last chunk. The key comes
//! from BLAZE_BENCH_KEY.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Why the bench, or one of its connections, failed. A connection's error
/// is counted and the first one shown; any other ends the bench.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("BLAZE_BENCH_KEY is not set")]
    NoKey,
    #[error("bad key")]
    BadKey,
    #[error("{address} is not loopback: this benchmark only targets this machine")]
    NotLoopback { address: String },
    #[error("--connections must be 1 to 100000")]
    IdleConnections,
    #[error("--connections must be 1 to 20000 and --seconds 1 to 300")]
    StreamSettings,
    #[error("the open-file limit is {limit}; raise it (ulimit -n) above {connections}")]
    OpenFileLimit { limit: u64, connections: usize },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("no VmRSS in /proc/{pid}/status")]
    NoResidentMemory { pid: u32 },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Boxed, as is `SocketEnded`: tungstenite's errors are large, and
    /// every result of the bench carries this type.
    #[error(transparent)]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("no frame within 60 s")]
    FrameTimeout,
    #[error("socket ended: {last:?}")]
    SocketEnded { last: Box<Option<Result<Message, tokio_tungstenite::tungstenite::Error>>> },
    #[error("a frame of another id: {frame}")]
    OtherId { frame: serde_json::Value },
    #[error("error frame: {frame}")]
    ErrorFrame { frame: serde_json::Value },
    #[error("status {status}")]
    Status { status: reqwest::StatusCode },
    #[error("the stream did not end with [DONE]")]
    Unfinished,
    #[error(transparent)]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error(transparent)]
    HistogramAddition(#[from] hdrhistogram::AdditionError),
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    #[error("{count} errors")]
    Errors { count: usize },
}

#[derive(Debug, Parser)]
#[command(name = "blaze-ws-bench")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Surface {
    Ws,
    Sse,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Many idle authenticated sockets: memory per socket.
    Idle {
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The server's process id, to read its resident memory.
        #[arg(long)]
        server_pid: u32,
    },
    /// Connections each streaming a chat completion, one after another.
    Stream {
        #[arg(long)]
        address: String,
        #[arg(long, value_enum)]
        surface: Surface,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// A chat completions body with "stream": true.
        #[arg(long)]
        body: std::path::PathBuf,
    },
}

impl From<tokio_tungstenite::tungstenite::Error> for BenchError {
    fn from(error: tokio_tungstenite::tungstenite::Error) -> Self {
        Self::WebSocket(Box::new(error))
    }
}

fn key() -> Result<String, BenchError> {
    std::env::var("BLAZE_BENCH_KEY").map_err(|_| BenchError::NoKey)
}

fn loopback(address: &str) -> Result<(), BenchError> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    if matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        Ok(())
    } else {
        Err(BenchError::NotLoopback { address: address.to_owned() })
    }
}

/// Raises this process's open-file limit to its hard limit.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to fill and then to set.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

fn resident_kib(pid: u32) -> Result<u64, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).map_err(|source| BenchError::Read { path, source })?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(BenchError::NoResidentMemory { pid })
}

/// Small client buffers: ten thousand sockets must not cost the client
/// gigabytes (tungstenite reads into 128 KiB by default).
fn client_config() -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    config
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(address: &str, key: &str) -> Result<Socket, BenchError> {
    let mut request = format!("ws://{address}/v1/ws").into_client_request()?;
    let value = format!("Bearer {key}").parse().map_err(|_| BenchError::BadKey)?;
    request.headers_mut().insert("authorization", value);
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(client_config()), false).await?;
    Ok(socket)
}

/// Sends a request frame and reads until it ends; true on a good end.
async fn one_request(socket: &mut Socket, frame: &str, id: &str) -> Result<(), BenchError> {
    socket.send(Message::text(frame)).await?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .map_err(|_| BenchError::FrameTimeout)?;
        let Some(Ok(Message::Text(text))) = message else {
            match message {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                last => return Err(BenchError::SocketEnded { last: Box::new(last) }),
            }
        };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        if frame["id"] != id {
            return Err(BenchError::OtherId { frame });
        }
        match frame["type"].as_str() {
            Some("chunk") => continue,
            Some("done" | "result") => return Ok(()),
            _ => return Err(BenchError::ErrorFrame { frame }),
        }
    }
}

async fn idle(address: String, connections: usize, server_pid: u32) -> Result<(), BenchError> {
    let key = key()?;
    let limit = raise_fd_limit();
    if (limit as usize) < connections + 64 {
        return Err(BenchError::OpenFileLimit { limit, connections });
    }
    let before = resident_kib(server_pid)?;
    let started = Instant::now();
    // At most 256 handshakes at once: the listen backlog is finite.
    let results: Vec<Result<Socket, BenchError>> = futures_util::stream::iter(0..connections)
        .map(|_| open(&address, &key))
        .buffer_unordered(256)
        .collect()
        .await;
    let opened = started.elapsed();
    let mut sockets = Vec::with_capacity(connections);
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(error) => errors.push(error),
        }
    }
    // Let the server settle (allocator, buffers) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = resident_kib(server_pid)?;
    let per_socket = (after.saturating_sub(before) * 1024) as f64 / sockets.len().max(1) as f64;
    let metrics = reqwest::Client::new()
        .get(format!("http://{address}/metrics"))
        .bearer_auth(&key)
        .send()
        .await?
        .text()
        .await?;
    let counted =
        metrics.lines().find_map(|line| line.strip_prefix("blaze_ws_connections ")).unwrap_or("?").to_owned();
    let sample = sockets.len().min(100);
    let mut alive = 0;
    for (index, socket) in sockets.iter_mut().take(sample).enumerate() {
        let id = format!("m{index}");
        let frame = format!("{{\"id\":\"{id}\",\"type\":\"models.list\"}}");
        match one_request(socket, &frame, &id).await {
            Ok(()) => alive += 1,
            Err(error) => errors.push(error),
        }
    }
    println!(
        "idle sockets: {} opened in {:.1} s, server counts {counted}; errors {}; sample {alive}/{sample} answered",
        sockets.len(),
        opened.as_secs_f64(),
        errors.len()
    );
    println!(
        "server resident memory: {before} KiB -> {after} KiB = {per_socket:.0} bytes ({:.1} KiB) per idle socket",
        per_socket / 1024.0
    );
    if let Some(error) = errors.first() {
        println!("first error: {error}");
    }
    if !errors.is_empty() || sockets.len() != connections {
        return Err(BenchError::Errors { count: errors.len() });
    }
    Ok(())
}

/// What one connection did: latencies in microseconds, and errors.
struct Tally {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<BenchError>,
}

impl Tally {
    fn new() -> Result<Self, BenchError> {
        let latencies = Histogram::new_with_bounds(1, 600_000_000, 3)?;
        Ok(Self { latencies, errors: 0, first_error: None })
    }

    /// Records one completion's outcome; false after an error (the
    /// connection stops there).
    fn take(&mut self, outcome: Result<(), BenchError>, started: Instant) -> bool {
        match outcome {
            Ok(()) => {
                let _ = self.latencies.record(started.elapsed().as_micros() as u64);
                true
            }
            Err(error) => {
                self.failed(error);
                false
            }
        }
    }

    fn failed(&mut self, error: BenchError) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

async fn ws_connection(
    address: String,
    key: String,
    body: String,
    until: Instant,
) -> Result<Tally, BenchError> {
    let mut tally = Tally::new()?;
    let mut socket = match open(&address, &key).await {
        Ok(socket) => socket,
        Err(error) => {
            tally.failed(error);
            return Ok(tally);
        }
    };
    let mut number = 0u64;
    while Instant::now() < until {
        number += 1;
        let id = number.to_string();
        let frame = format!("{{\"id\":\"{id}\",\"type\":\"chat.completions\",\"body\":{body}}}");
        let started = Instant::now();
        if !tally.take(one_request(&mut socket, &frame, &id).await, started) {
            break;
        }
    }
    Ok(tally)
}

async fn sse_connection(
    address: String,
    key: String,
    body: String,
    until: Instant,
) -> Result<Tally, BenchError> {
    let mut tally = Tally::new()?;
    // One connection, kept alive: as a WebSocket client keeps its socket.
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(1).timeout(Duration::from_secs(60)).build()?;
    let url = format!("http://{address}/v1/chat/completions");
    while Instant::now() < until {
        let started = Instant::now();
        let response = client
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let outcome = match response {
            Ok(response) if response.status().is_success() => {
                let mut stream = response.bytes_stream();
                let mut tail = Vec::new();
                let mut failed = None;
                while let Some(piece) = stream.next().await {
                    match piece {
                        Ok(bytes) => {
                            tail.extend_from_slice(&bytes);
                            if tail.len() > 64 {
                                tail.drain(..tail.len() - 64);
                            }
                        }
                        Err(error) => failed = Some(error),
                    }
                }
                match failed {
                    Some(error) => Err(error.into()),
                    None if tail.ends_with(b"data: [DONE]\n\n") => Ok(()),
                    None => Err(BenchError::Unfinished),
                }
            }
            Ok(response) => Err(BenchError::Status { status: response.status() }),
            Err(error) => Err(error.into()),
        };
        if !tally.take(outcome, started) {
            break;
        }
    }
    Ok(tally)
}

async fn stream(
    address: String,
    surface: Surface,
    connections: usize,
    seconds: u64,
    body: PathBuf,
) -> Result<(), BenchError> {
    let key = key()?;
    raise_fd_limit();
    let body = std::fs::read_to_string(&body).map_err(|source| BenchError::Read { path: body, source })?;
    let body = body.trim().to_owned();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (address, key, body) = (address.clone(), key.clone(), body.clone());
            #[expect(clippy::disallowed_methods, reason = "tracked: every handle is awaited below")]
            tokio::spawn(async move {
                match surface {
                    Surface::Ws => ws_connection(address, key, body, until).await,
                    Surface::Sse => sse_connection(address, key, body, until).await,
                }
            })
        })
        .collect();
    let mut total = Tally::new()?;
    for task in tasks {
        let tally = task.await??;
        total.latencies.add(&tally.latencies)?;
        total.errors += tally.errors;
        if let Some(error) = tally.first_error {
            total.first_error.get_or_insert(error);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let completions = total.latencies.len();
    let milliseconds = |quantile: f64| total.latencies.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "{} connections={connections} completions={completions} per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} errors={}",
        match surface {
            Surface::Ws => "ws",
            Surface::Sse => "sse",
        },
        completions as f64 / elapsed,
        milliseconds(0.5),
        milliseconds(0.99),
        total.latencies.max() as f64 / 1000.0,
        total.errors
    );
    if let Some(error) = total.first_error {
        println!("first error: {error}");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The line `main -> Result` printed, without its Debug quotes.
            eprintln!("Error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), BenchError> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(BenchError::Runtime)?;
    match args.mode {
        Mode::Idle { address, connections, server_pid } => {
            loopback(&address)?;
            if !(1..=100_000).contains(&connections) {
                return Err(BenchError::IdleConnections);
            }
            runtime.block_on(idle(address, connections, server_pid))
        }
        Mode::Stream { address, surface, connections, seconds, body } => {
            loopback(&address)?;
            if !(1..=20_000).contains(&connections) || !(1..=300).contains(&seconds) {
                return Err(BenchError::StreamSettings);
            }
            runtime.block_on(stream(address, surface, connections, seconds, body))
        }
    }
}
