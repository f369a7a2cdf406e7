//! One upstream: another OpenAI-compatible server, its client (pooled
//! connections, rustls with the system's roots), its API key, and one
//! exchange with it classified: an answer, or a failure that says whether
//! another target may be tried.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::settings::UpstreamSpec;

/// Why an upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("models.catalog.{id}: api_key_env names {variable}, which is not set")]
    MissingKey { id: String, variable: String },
    #[error("models.catalog.{id}: cannot read api_key_file: {source}")]
    KeyFile { id: String, source: std::io::Error },
    #[error("models.catalog.{id}: the API key is not a valid header value")]
    InvalidKey { id: String },
    #[error("models.catalog.{id}: base_url does not make valid URLs")]
    Url { id: String },
    #[error("models.catalog.{id}: cannot build its HTTP client: {source}")]
    Client { id: String, source: reqwest::Error },
}

/// The OpenAI endpoints an upstream is called on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamPath {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl UpstreamPath {
    fn suffix(self) -> &'static str {
        match self {
            UpstreamPath::ChatCompletions => "/chat/completions",
            UpstreamPath::Completions => "/completions",
            UpstreamPath::Embeddings => "/embeddings",
        }
    }
}

pub struct Upstream {
    /// Its name for the model.
    pub model: String,
    /// `Bearer <key>`, marked sensitive (never in a Debug output).
    authorization: Option<HeaderValue>,
    /// The URL of each endpoint, parsed once.
    urls: Urls,
    /// How each worker thread's client is built.
    settings: ClientSettings,
    /// This upstream's key in each thread's clients.
    key: u64,
    connections: Arc<Semaphore>,
    first_byte: Duration,
    total: Duration,
    /// The local chat model whose tokenizer counts an answer's tokens.
    pub tokenizer: Option<String>,
}

/// What an upstream answered.
pub enum Exchange {
    /// A whole JSON body.
    Json(Bytes),
    /// A stream of Server-Sent Events: the bytes read so far (at least the
    /// first), the rest of the body, and its connection slot.
    Stream { first: Bytes, rest: reqwest::Response, permit: OwnedSemaphorePermit },
}

/// Why an exchange failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// No connection (refused, reset, DNS, TLS).
    Connect,
    /// No answer in time (no connection slot, no headers, no first event).
    Timeout,
    /// 429, 502, 503 or 504: busy or down for now.
    Unavailable { status: u16, retry_after_s: Option<u64> },
    /// 401 or 403: it refused Blaze's key.
    Credentials { status: u16 },
    /// Another 5xx.
    ServerError { status: u16 },
    /// A 4xx about the request itself, and its message.
    Rejected { status: u16, message: String },
    /// An answer that is not what the API says.
    Invalid(&'static str),
}

impl Failure {
    /// Whether another target may take the request: nothing reached the
    /// model, or the target said it cannot take it now.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Connect | Failure::Timeout | Failure::Unavailable { .. } | Failure::Credentials { .. }
        )
    }

    /// Whether it is the target's fault (it counts toward its ejection).
    pub fn counts_against_target(&self) -> bool {
        !matches!(self, Failure::Rejected { .. })
    }

    /// Its class, for the metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Unavailable { status: 429, .. } => "status_429",
            Failure::Unavailable { .. } => "status_5xx",
            Failure::Credentials { .. } => "credentials",
            Failure::ServerError { .. } => "status_5xx",
            Failure::Rejected { .. } => "status_4xx",
            Failure::Invalid(_) => "invalid_response",
        }
    }
}

/// The URLs an upstream is called on.
struct Urls {
    chat: reqwest::Url,
    completions: reqwest::Url,
    embeddings: reqwest::Url,
    models: reqwest::Url,
}

impl Urls {
    fn of(&self, path: UpstreamPath) -> &reqwest::Url {
        match path {
            UpstreamPath::ChatCompletions => &self.chat,
            UpstreamPath::Completions => &self.completions,
            UpstreamPath::Embeddings => &self.embeddings,
        }
    }
}

/// What every client of an upstream is built with.
#[derive(Debug, Clone, Copy)]
struct ClientSettings {
    connect_timeout: Duration,
    max_idle: usize,
}

impl ClientSettings {
    fn build(self) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_max_idle_per_host(self.max_idle)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // Redirects would carry the key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }
}

thread_local! {
    /// Each thread's clients, by upstream.
    static CLIENTS: RefCell<HashMap<u64, reqwest::Client>> = RefCell::new(HashMap::new());
}

impl Upstream {
    pub fn new(id: &str, spec: &UpstreamSpec) -> Result<Self, UpstreamError> {
        let key = if !spec.api_key_env.is_empty() {
            let key = std::env::var(&spec.api_key_env).map_err(|_| UpstreamError::MissingKey {
                id: id.to_owned(),
                variable: spec.api_key_env.clone(),
            })?;
            Some(key)
        } else if !spec.api_key_file.is_empty() {
            let key = std::fs::read_to_string(&spec.api_key_file)
                .map_err(|source| UpstreamError::KeyFile { id: id.to_owned(), source })?;
            Some(key)
        } else {
            None
        };
        let authorization = key
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| UpstreamError::InvalidKey { id: id.to_owned() })?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let settings = ClientSettings {
            connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
            max_idle: spec.max_connections,
        };
        // Built once here so that a setting it refuses stops the start.
        settings.build().map_err(|source| UpstreamError::Client { id: id.to_owned(), source })?;
        let base_url = spec.base_url.trim_end_matches('/');
        let url = |suffix: &str| {
            reqwest::Url::parse(&format!("{base_url}{suffix}"))
                .map_err(|_| UpstreamError::Url { id: id.to_owned() })
        };
        let urls = Urls {
            chat: url(UpstreamPath::ChatCompletions.suffix())?,
            completions: url(UpstreamPath::Completions.suffix())?,
            embeddings: url(UpstreamPath::Embeddings.suffix())?,
            models: url("/models")?,
        };
        static KEYS: AtomicU64 = AtomicU64::new(0);
        Ok(Self {
            model: spec.upstream_model(id).to_owned(),
            authorization,
            urls,
            settings,
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            connections: Arc::new(Semaphore::new(spec.max_connections)),
            first_byte: Duration::from_millis(spec.first_byte_timeout_ms),
            total: Duration::from_millis(spec.total_timeout_ms),
            tokenizer: (!spec.tokenizer.is_empty()).then(|| spec.tokenizer.clone()),
        })
    }

    /// This thread's client: each actix worker keeps its own connections,
    /// so a request and its connection's task run on one thread (a client
    /// shared by the workers woke another thread for every request).
    fn client(&self) -> reqwest::Client {
        CLIENTS.with_borrow_mut(|clients| {
            clients
                .entry(self.key)
                .or_insert_with(|| self.settings.build().unwrap_or_else(|_| reqwest::Client::new()))
                .clone()
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &reqwest::Url,
        request_id: &str,
    ) -> reqwest::RequestBuilder {
        let mut builder = self.client().request(method, url.clone()).timeout(self.total);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        if !request_id.is_empty() {
            builder = builder.header("x-request-id", request_id);
        }
        // The trace goes on at the upstream (W3C traceparent).
        for (name, value) in crate::telemetry::outgoing_headers() {
            builder = builder.header(name, value);
        }
        builder
    }

    /// Sends `body` to `path`; a stream's answer is taken once its first
    /// bytes came, so that a target that accepts and then says nothing is
    /// left in time for another. Returns the answer and how long its first
    /// byte took.
    pub async fn send(
        &self,
        path: UpstreamPath,
        body: Bytes,
        request_id: &str,
        stream: bool,
    ) -> Result<(Exchange, Duration), Failure> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.first_byte;
        let permit = tokio::time::timeout_at(deadline, self.connections.clone().acquire_owned())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Connect)?;
        let request = self
            .request(reqwest::Method::POST, self.urls.of(path), request_id)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        let response = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|error| transport_failure(&error))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(status_failure(response).await);
        }
        if stream {
            let mut rest = response;
            let first = tokio::time::timeout_at(deadline, rest.chunk())
                .await
                .map_err(|_| Failure::Timeout)?
                .map_err(|error| transport_failure(&error))?
                .ok_or(Failure::Invalid("the stream ended before its first event"))?;
            return Ok((Exchange::Stream { first, rest, permit }, started.elapsed()));
        }
        let first_byte = started.elapsed();
        let body = read_bounded(response).await?;
        drop(permit);
        Ok((Exchange::Json(body), first_byte))
    }

    /// The active probe: `GET <base_url>/models` answers 2xx in time.
    pub async fn probe(&self) -> Result<(), Failure> {
        let request = self.request(reqwest::Method::GET, &self.urls.models, "");
        let response = tokio::time::timeout(self.first_byte, request.send())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|error| transport_failure(&error))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(status_failure(response).await)
        }
    }
}

/// The most of a whole answer read: past it the upstream misbehaves (an
/// embeddings answer of 2,048 inputs of 1,536 dimensions is ~40 MB).
const MAX_ANSWER_BYTES: usize = 64 << 20;

async fn read_bounded(mut response: reqwest::Response) -> Result<Bytes, Failure> {
    let declared = response.content_length().unwrap_or(0) as usize;
    if declared > MAX_ANSWER_BYTES {
        return Err(Failure::Invalid("its answer is larger than 64 MiB"));
    }
    let mut body = actix_web::web::BytesMut::with_capacity(declared.max(1024));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Failure::Invalid("its answer is larger than 64 MiB"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            // Past the first byte: not another target's to take.
            Err(error) if error.is_timeout() => {
                return Err(Failure::Invalid("its answer did not finish in time"))
            }
            Err(_) => return Err(Failure::Invalid("the answer's body was cut short")),
        }
    }
}

fn transport_failure(error: &reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connect
    }
}

/// Most of an error body read for its message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

async fn status_failure(response: reqwest::Response) -> Failure {
    let status = response.status().as_u16();
    match status {
        429 | 502 | 503 | 504 => {
            let retry_after_s = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok());
            Failure::Unavailable { status, retry_after_s }
        }
        401 | 403 => Failure::Credentials { status },
        400..=499 => Failure::Rejected { status, message: error_message(response).await },
        _ => Failure::ServerError { status },
    }
}

/// The `error.message` of an error body, cut to a sane length and to
/// printable characters (it is shown to the client).
async fn error_message(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|value| value["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    message.chars().filter(|character| !character.is_control()).take(500).collect()
}
