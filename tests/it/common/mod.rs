//! Starts the real `blaze` binary on a random port and talks to it over
//! real HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod websocket;

pub const BIN: &str = env!("CARGO_BIN_EXE_blaze");

/// One test of the suite at a time may generate text: llama.cpp's compute
/// threads spin at every barrier, so eight servers decoding at once on two
/// cores do not share the cores, they starve each other (requests of 40
/// tokens then ran past the 30 s client limit in CI). Tests that generate
/// take a turn first.
static DECODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Waits for this test's turn to generate text; the turn lasts as long as
/// the permit.
pub async fn decoding_turn() -> tokio::sync::SemaphorePermit<'static> {
    DECODING.acquire().await.expect("the semaphore is never closed")
}

/// The same turn, for a test that decodes in its own thread (no runtime);
/// waits at most ten minutes.
pub fn decoding_turn_blocking() -> tokio::sync::SemaphorePermit<'static> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(permit) = DECODING.try_acquire() {
            return permit;
        }
        assert!(Instant::now() < deadline, "no decoding turn within ten minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first admin's key of every test server (BLAZE__AUTH__BOOTSTRAP_KEY),
/// unless a test sets its own.
pub const ADMIN_KEY: &str =
    "blz_00000000000000aa_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub struct Server {
    child: Child,
    pub address: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// The server's own data dir (identity store), unless the test gave one.
    _data_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `blaze serve` with these environment variables (on top of a
    /// random port and one worker) and arguments, and waits until ready.
    pub async fn start(environment: &[(&str, &str)], arguments: &[&str]) -> Self {
        let server = Self::listening(environment, arguments);
        server.wait_ready().await;
        server
    }

    /// Starts `blaze serve` as [`Server::start`] does, and returns once it
    /// listens, ready or not.
    pub fn listening(environment: &[(&str, &str)], arguments: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        let given_data_dir = environment.iter().any(|(name, _)| *name == "BLAZE__STORAGE__DATA_DIR");
        let data_dir = (!given_data_dir).then(|| tempfile::tempdir().expect("data dir"));
        if let Some(directory) = &data_dir {
            command.env("BLAZE__STORAGE__DATA_DIR", directory.path());
        }
        command
            .arg("serve")
            .args(arguments)
            .env_remove("BLAZE_PROFILE")
            .env("BLAZE__SERVER__PORT", "0")
            .env("BLAZE__SERVER__WORKERS", "1")
            .env("BLAZE_LOG", "info")
            .env("BLAZE__AUTH__BOOTSTRAP_KEY", ADMIN_KEY)
            .envs(environment.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("blaze starts");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == "listening" {
                        let _ = address_sender.send(event["address"].as_str().unwrap_or_default().to_owned());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let address = address_receiver.recv_timeout(Duration::from_secs(60)).expect("blaze logs its address");
        Self { child, address, logs, _data_dir: data_dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    async fn wait_ready(&self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(self.url("/health/ready")).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("blaze did not become ready within 20 s; logs: {:#?}", self.logs());
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Log events (JSON lines) whose message is `message`.
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == message)
            .collect()
    }

    /// Waits (at most 5 s) for a log event with this message that `accept`
    /// takes: logs go through a background writer, so lines land a little
    /// after the request that caused them.
    pub async fn wait_event(
        &self,
        message: &str,
        accept: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_event_within(message, accept, Duration::from_secs(5)).await
    }

    /// As [`Server::wait_event`], for an event that follows work of its
    /// own (a model load, a generation) and so may come late on a loaded
    /// machine: waits at most `limit`.
    pub async fn wait_event_within(
        &self,
        message: &str,
        accept: impl Fn(&serde_json::Value) -> bool,
        limit: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(event) = self.events(message).into_iter().find(&accept) {
                return event;
            }
            if Instant::now() >= deadline {
                panic!("no `{message}` event within {limit:?}; logs: {:#?}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The Prometheus exposition, as text.
    pub async fn metrics(&self) -> String {
        client().get(self.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// Asserts that the supervisor counted `count` restarts of `actor`.
    pub async fn assert_restarts(&self, actor: &str, count: u64) {
        let metrics = self.metrics().await;
        let line = format!("blaze_actor_restarts_total{{actor=\"{actor}\"}} {count}\n");
        assert!(metrics.contains(&line), "{metrics}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal delivered");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "blaze did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain client authenticated as the first admin: no automatic
/// decompression, no retries.
pub fn client() -> reqwest::Client {
    client_with_key(ADMIN_KEY)
}

/// A plain client that sends `key` (an API key or an access token).
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A plain client without credentials.
pub fn anonymous_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

/// The JSON chunks of a Server-Sent Events body, up to `[DONE]`.
pub fn chunks(body: &str) -> Vec<serde_json::Value> {
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

/// Asserts the OpenAI error body and returns its `error` object.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    let error = body["error"].clone();
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].as_str().is_some_and(|message| !message.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.as_object().is_some_and(|fields| fields.contains_key("param")), "{body}");
    error
}

/// A config file for `--config`, deleted when dropped.
pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("config written");
    file
}

/// A redis-server of the test's own (one helper for unit and integration
/// tests, from the actors crate). Only some test binaries use it.
#[allow(unused_imports)]
pub use blaze_actors::test_redis::OwnRedis;

/// `body` with the fields of `extra` added (or replaced).
pub fn extend(mut body: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// A POST of `body` by the first admin, with `Cache-Control: {cache}` if
/// `cache` is not empty.
pub async fn post_cached(
    server: &Server,
    path: &str,
    body: &serde_json::Value,
    cache: &str,
) -> reqwest::Response {
    let request = client().post(server.url(path)).json(body);
    let request = if cache.is_empty() { request } else { request.header("cache-control", cache) };
    request.send().await.expect("a response")
}

/// A client holding a new key of a new user (role user) of `server`.
pub async fn new_user_client(server: &Server, email: &str) -> reqwest::Client {
    client_with_key(&new_user_key(server, email).await)
}

/// A new key of a new user (role user) of `server`.
pub async fn new_user_key(server: &Server, email: &str) -> String {
    new_user_key_with(server, email, serde_json::json!({})).await
}

/// The same, the key made with `fields` (its scopes, say).
pub async fn new_user_key_with(server: &Server, email: &str, fields: serde_json::Value) -> String {
    let admin = client();
    let user: serde_json::Value = admin
        .post(server.url("/admin/users"))
        .json(&serde_json::json!({"email": email}))
        .send()
        .await
        .expect("user created")
        .json()
        .await
        .expect("user JSON");
    let key: serde_json::Value = admin
        .post(server.url("/admin/keys"))
        .json(&extend(serde_json::json!({"user_id": user["id"]}), fields))
        .send()
        .await
        .expect("key created")
        .json()
        .await
        .expect("key JSON");
    key["key"].as_str().expect("the new key").to_owned()
}

pub use blaze_actors::test_postgres::POSTGRES_URL;

/// A PostgreSQL schema of this test's own, dropped at the end.
pub struct Schema(pub String);

impl Schema {
    pub async fn new() -> Self {
        let name = format!("blaze_it_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 with a database `test`");
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE SCHEMA {name}")).await.unwrap();
        Self(name)
    }

    /// Every value of every table of the schema, as text.
    pub async fn dump(&self) -> String {
        let (client, connection) =
            tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let mut text = String::new();
        for table in ["users", "api_keys", "refresh_tokens", "revocations"] {
            let rows = client
                .query(&format!("SELECT row_to_json(t)::text FROM {}.{table} t", self.0), &[])
                .await
                .unwrap();
            for row in rows {
                text.push_str(row.get::<_, &str>(0));
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        blaze_actors::test_postgres::drop_schema(&self.0);
    }
}

/// The JSON body of `response`, asserting its status.
pub async fn json_with_status(response: reqwest::Response, status: u16) -> serde_json::Value {
    let actual = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(actual, status, "{body}");
    body
}

/// A new user of `server` (in `team`, if any) and a key of theirs: the
/// user's id, the key's id, the key.
pub async fn user_in_team(server: &Server, email: &str, team: Option<&str>) -> (String, String, String) {
    let admin = client();
    let body = serde_json::json!({"email": email, "team": team});
    let user =
        json_with_status(admin.post(server.url("/admin/users")).json(&body).send().await.unwrap(), 201).await;
    let body = serde_json::json!({"user_id": user["id"]});
    let key =
        json_with_status(admin.post(server.url("/admin/keys")).json(&body).send().await.unwrap(), 201).await;
    let (user_id, key_id) = (user["id"].as_str().unwrap().to_owned(), key["id"].as_str().unwrap().to_owned());
    (user_id, key_id, key["key"].as_str().unwrap().to_owned())
}

/// `input` embedded by `caller` with the catalog's embedding model.
pub async fn embed_as(caller: &reqwest::Client, server: &Server, input: &str) -> reqwest::Response {
    caller
        .post(server.url("/v1/embeddings"))
        .json(&serde_json::json!({"model": "all-minilm-l6-v2", "input": input}))
        .send()
        .await
        .unwrap()
}
