//! Log shipping: the JSON log lines, as stdout gets them, sent to
//! Elasticsearch or OpenSearch by a thread of their own through the bulk
//! API, batched by count, size and time.
//!
//! Nothing here ever makes a request wait: a line is offered to a
//! bounded queue and dropped (and counted) when the queue is full. Each
//! line gets an id of its own (`<run>-<sequence>`) and is sent with the
//! `create` action, so a bulk request retried after a timeout that the
//! server had in fact applied cannot index a line twice: the second
//! `create` answers 409, taken as delivered. The thread's own warnings
//! go to stdout only ([`SHIPPING_TARGET`]), never into the queue.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;

use crate::settings::LoggingSettings;

/// The target of the shipper's own log lines: stdout only.
pub const SHIPPING_TARGET: &str = "blaze::log_shipping";

/// Why shipping cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    #[error("logging: cannot read {setting} ({path}): {source}")]
    Secret { setting: &'static str, path: String, source: std::io::Error },
    #[error("logging: {setting} ({path}) is empty")]
    EmptySecret { setting: &'static str, path: String },
    #[error("logging: the credential in {0} cannot be sent as a header")]
    BadSecret(&'static str),
    #[error("logging: cannot build the HTTP client: {0}")]
    Client(String),
    #[error("logging: cannot start the shipping thread: {0}")]
    Thread(std::io::Error),
}

/// Where request threads leave their lines.
#[derive(Debug)]
pub struct Outbox {
    lines: SyncSender<Vec<u8>>,
}

impl Outbox {
    /// Queues one line; a full queue drops it (counted).
    pub fn offer(&self, line: &[u8]) {
        match self.lines.try_send(line.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => dropped("buffer_full", 1),
        }
    }
}

/// The running shipper; [`Shipping::stop`] sends what is queued.
pub struct Shipping {
    stopping: Arc<AtomicBool>,
    finished: Receiver<()>,
}

impl Shipping {
    /// Reads the credentials, then starts the thread.
    pub fn start(settings: &LoggingSettings) -> Result<(Self, Outbox), ShippingError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        if let Some(authorization) = authorization(settings)? {
            headers.insert(AUTHORIZATION, authorization);
        }
        let client = Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms.min(5_000)))
            .build()
            .map_err(|error| ShippingError::Client(error.to_string()))?;
        let (lines, queue) = mpsc::sync_channel(settings.max_buffered_lines);
        let (done, finished) = mpsc::sync_channel(1);
        let stopping = Arc::new(AtomicBool::new(false));
        let shipper = Shipper {
            client,
            base: settings.elasticsearch_url.trim().trim_end_matches('/').to_owned(),
            index: settings.elasticsearch_index.clone(),
            batch_lines: settings.batch_lines,
            batch_bytes: settings.batch_bytes,
            interval: Duration::from_millis(settings.flush_interval_ms),
            max_retries: settings.max_retries,
            run: format!("{:016x}", rand::random::<u64>()),
            sequence: 0,
            template_installed: false,
            stopping: stopping.clone(),
        };
        std::thread::Builder::new()
            .name("blaze-log-shipping".to_owned())
            .spawn(move || {
                shipper.run(&queue);
                let _ = done.send(());
            })
            .map_err(ShippingError::Thread)?;
        Ok((Self { stopping, finished }, Outbox { lines }))
    }

    /// Ships the lines still queued (one try, a few seconds at most).
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        if self.finished.recv_timeout(Duration::from_secs(6)).is_err() {
            eprintln!("logging: the last log lines were not all shipped");
        }
    }
}

/// The `Authorization` header the settings name, read from its file.
fn authorization(settings: &LoggingSettings) -> Result<Option<HeaderValue>, ShippingError> {
    let read = |setting: &'static str, path: &str| {
        let text = std::fs::read_to_string(path).map_err(|source| ShippingError::Secret {
            setting,
            path: path.to_owned(),
            source,
        })?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(ShippingError::EmptySecret { setting, path: path.to_owned() });
        }
        Ok(text)
    };
    let value = if !settings.elasticsearch_api_key_file.trim().is_empty() {
        let key = read("logging.elasticsearch_api_key_file", settings.elasticsearch_api_key_file.trim())?;
        HeaderValue::from_str(&format!("ApiKey {key}"))
            .map_err(|_| ShippingError::BadSecret("logging.elasticsearch_api_key_file"))?
    } else if !settings.elasticsearch_username.trim().is_empty() {
        use base64::Engine as _;
        let password =
            read("logging.elasticsearch_password_file", settings.elasticsearch_password_file.trim())?;
        let pair = format!("{}:{password}", settings.elasticsearch_username.trim());
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| ShippingError::BadSecret("logging.elasticsearch_password_file"))?
    } else {
        return Ok(None);
    };
    let mut value = value;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Totals behind the counters, so a line dropped before the metrics
/// recorder is installed still counts.
static SHIPPED: AtomicU64 = AtomicU64::new(0);
static RETRIES: AtomicU64 = AtomicU64::new(0);
static DROPPED_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_REJECTED: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXHAUSTED: AtomicU64 = AtomicU64::new(0);

fn dropped(reason: &'static str, count: u64) {
    let total = match reason {
        "buffer_full" => &DROPPED_FULL,
        "rejected" => &DROPPED_REJECTED,
        _ => &DROPPED_EXHAUSTED,
    };
    let total = total.fetch_add(count, Ordering::Relaxed) + count;
    metrics::counter!("blaze_log_lines_dropped_total", "reason" => reason).absolute(total);
}

fn shipped(count: u64) {
    let total = SHIPPED.fetch_add(count, Ordering::Relaxed) + count;
    metrics::counter!("blaze_log_lines_shipped_total").absolute(total);
}

fn retried() {
    let total = RETRIES.fetch_add(1, Ordering::Relaxed) + 1;
    metrics::counter!("blaze_log_shipping_retries_total").absolute(total);
}

/// A line on its way, with the id that makes its delivery idempotent.
struct Line {
    id: u64,
    json: Vec<u8>,
}

struct Shipper {
    client: Client,
    base: String,
    index: String,
    batch_lines: usize,
    batch_bytes: usize,
    interval: Duration,
    max_retries: u32,
    /// This process's part of every line's id.
    run: String,
    sequence: u64,
    template_installed: bool,
    stopping: Arc<AtomicBool>,
}

/// The longest the thread waits before looking at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

impl Shipper {
    fn run(mut self, queue: &Receiver<Vec<u8>>) {
        let mut batch: Vec<Line> = Vec::new();
        let mut bytes = 0;
        let mut due: Option<Instant> = None;
        loop {
            let stopping = self.stopping.load(Ordering::Acquire);
            let wait =
                due.map_or(STOP_CHECK, |at| at.saturating_duration_since(Instant::now()).min(STOP_CHECK));
            let received = if stopping {
                queue.try_recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                queue.recv_timeout(wait)
            };
            match received {
                Ok(json) => {
                    bytes += json.len();
                    self.sequence += 1;
                    batch.push(Line { id: self.sequence, json });
                    due.get_or_insert_with(|| Instant::now() + self.interval);
                    if batch.len() >= self.batch_lines || bytes >= self.batch_bytes {
                        self.ship(std::mem::take(&mut batch));
                        (bytes, due) = (0, None);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if due.is_some_and(|at| at <= Instant::now()) {
                        self.ship(std::mem::take(&mut batch));
                        (bytes, due) = (0, None);
                    }
                }
                // Stopping and nothing left (the queue's senders live as
                // long as the subscriber, so this is the way out).
                Err(RecvTimeoutError::Disconnected) => {
                    if !batch.is_empty() {
                        self.ship(std::mem::take(&mut batch));
                    }
                    return;
                }
            }
        }
    }

    /// Sends one batch, retrying what may succeed later; drops (and
    /// counts) what cannot.
    fn ship(&mut self, mut pending: Vec<Line>) {
        if !self.template_installed {
            self.install_template();
        }
        let mut attempt = 0;
        while !pending.is_empty() {
            if attempt > 0 {
                if attempt > self.max_retries || self.stopping.load(Ordering::Acquire) && attempt > 1 {
                    dropped("retries_exhausted", pending.len() as u64);
                    return;
                }
                retried();
                self.pause(self.backoff(attempt));
            }
            attempt += 1;
            match self.send(&pending) {
                Sent::Whole => {
                    shipped(pending.len() as u64);
                    return;
                }
                Sent::Retry(reason) => warn_once_in_a_while(&reason),
                Sent::Refused(reason) => {
                    tracing::warn!(target: SHIPPING_TARGET, lines = pending.len(), reason, "log shipping: the bulk request was refused; its lines are dropped");
                    dropped("rejected", pending.len() as u64);
                    return;
                }
                Sent::Items(statuses) => {
                    let mut kept = Vec::new();
                    let mut first_refusal = None;
                    let mut delivered = 0;
                    for (line, item) in pending.into_iter().zip(statuses) {
                        match item.status {
                            // 409 on `create`: the line is there already
                            // (an earlier try that timed out went through).
                            200..=299 | 409 => delivered += 1,
                            429 | 500..=599 => kept.push(line),
                            _ => {
                                dropped("rejected", 1);
                                first_refusal.get_or_insert(item.reason);
                            }
                        }
                    }
                    shipped(delivered);
                    if let Some(reason) = first_refusal {
                        tracing::warn!(target: SHIPPING_TARGET, reason, "log shipping: lines refused by the index (dropped)");
                    }
                    pending = kept;
                }
            }
        }
    }

    /// 250 ms doubling to 30 s, with up to a quarter more at random so
    /// replicas do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let base =
            Duration::from_millis(250).saturating_mul(1 << attempt.min(7)).min(Duration::from_secs(30));
        base + base.mul_f64(rand::random::<f64>() / 4.0)
    }

    /// Sleeps `length`, cut short when the server is stopping.
    fn pause(&self, length: Duration) {
        let until = Instant::now() + length;
        while !self.stopping.load(Ordering::Acquire) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }

    fn send(&self, lines: &[Line]) -> Sent {
        let size = lines.iter().map(|line| line.json.len() + 64).sum();
        let mut body = String::with_capacity(size);
        let mut raw = Vec::with_capacity(size);
        for line in lines {
            body.clear();
            let _ = writeln!(body, r#"{{"create":{{"_id":"{}-{}"}}}}"#, self.run, line.id);
            raw.extend_from_slice(body.as_bytes());
            raw.extend_from_slice(line.json.strip_suffix(b"\n").unwrap_or(&line.json));
            raw.push(b'\n');
        }
        let url = format!("{}/{}/_bulk", self.base, self.index);
        let response = match self.client.post(url).body(raw).send() {
            Ok(response) => response,
            Err(error) => return Sent::Retry(format!("cannot reach the server: {error}")),
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            429 | 500..=599 => return Sent::Retry(format!("the server answered {status}")),
            _ => return Sent::Refused(format!("the server answered {status}")),
        }
        let answer = response.bytes().map_err(|error| error.to_string()).and_then(|bytes| {
            serde_json::from_slice::<BulkAnswer>(&bytes).map_err(|error| error.to_string())
        });
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => return Sent::Retry(format!("the server's answer is not a bulk response: {error}")),
        };
        if !answer.errors {
            return Sent::Whole;
        }
        let statuses: Vec<ItemStatus> = answer
            .items
            .into_iter()
            .map(|item| {
                let outcome = item.into_values().next();
                ItemStatus {
                    status: outcome.as_ref().map_or(500, |outcome| outcome.status),
                    reason: outcome
                        .and_then(|outcome| outcome.error)
                        .map(|error| error.to_string())
                        .unwrap_or_default(),
                }
            })
            .collect();
        if statuses.len() != lines.len() {
            return Sent::Retry(format!(
                "the server answered {} items for {} lines",
                statuses.len(),
                lines.len()
            ));
        }
        Sent::Items(statuses)
    }

    /// The index template for `<index>*`: the fields an operator filters
    /// on get their types (a date, keywords, numbers), so they do not
    /// depend on the first line that carries them.
    fn install_template(&mut self) {
        let url = format!("{}/_index_template/{}", self.base, self.index);
        let template = index_template(&self.index);
        match self.client.put(url).header(CONTENT_TYPE, "application/json").body(template.to_string()).send()
        {
            Ok(response) if response.status().is_success() => self.template_installed = true,
            Ok(response) if response.status().is_client_error() && response.status().as_u16() != 429 => {
                // Not allowed, say: shipping goes on with dynamic mappings.
                let status = response.status().as_u16();
                tracing::warn!(target: SHIPPING_TARGET, status, "log shipping: the index template was refused; shipping without it");
                self.template_installed = true;
            }
            Ok(response) => {
                warn_once_in_a_while(&format!(
                    "the index template: the server answered {}",
                    response.status().as_u16()
                ));
            }
            Err(error) => {
                warn_once_in_a_while(&format!("the index template: cannot reach the server: {error}"))
            }
        }
    }
}

/// The template's body: the fields Blaze's lines carry, typed.
pub fn index_template(index: &str) -> serde_json::Value {
    serde_json::json!({
        "index_patterns": [format!("{index}*")],
        "priority": 200,
        "template": {
            "mappings": {
                "dynamic_templates": [{
                    "strings_as_keywords": {
                        "match_mapping_type": "string",
                        "mapping": { "type": "keyword", "ignore_above": 2048 }
                    }
                }],
                "properties": {
                    "timestamp": { "type": "date" },
                    "level": { "type": "keyword" },
                    "target": { "type": "keyword" },
                    "message": { "type": "text" },
                    "request_id": { "type": "keyword" },
                    "method": { "type": "keyword" },
                    "route": { "type": "keyword" },
                    "status": { "type": "integer" },
                    "latency_ms": { "type": "double" },
                    "model": { "type": "keyword" },
                    "input_tokens": { "type": "long" },
                    "output_tokens": { "type": "long" },
                    "error": { "type": "text" }
                }
            }
        },
        "_meta": { "managed_by": "blaze" }
    })
}

/// A failure that may pass, logged at most every 30 s (the server being
/// down would otherwise log a line per batch).
fn warn_once_in_a_while(reason: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 30 && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!(target: SHIPPING_TARGET, reason, "log shipping: will retry");
    }
}

enum Sent {
    Whole,
    Items(Vec<ItemStatus>),
    Retry(String),
    Refused(String),
}

struct ItemStatus {
    status: u16,
    reason: String,
}

#[derive(Deserialize)]
struct BulkAnswer {
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, ItemOutcome>>,
}

#[derive(Deserialize)]
struct ItemOutcome {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}
