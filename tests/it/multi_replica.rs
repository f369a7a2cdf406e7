//! Two Blaze replicas behind nginx, sharing PostgreSQL and Redis, started
//! the way an operator starts them without Docker (`docker/deploy.sh
//! native`): identity, rate limits and the cache are shared, revocations
//! reach the other replica within a second, SSE and WebSocket pass through
//! nginx, a replica killed under load costs only its requests in flight,
//! and it rejoins when started again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{client, client_with_key, decoding_turn, Schema, ADMIN_KEY, BIN, POSTGRES_URL};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
const CHAT_MODEL: &str = "smollm2-135m-instruct";

/// The topology `deploy.sh native` started, with its own ports, state
/// directory and PostgreSQL schema; stopped (the script's `stop`) on drop.
struct Topology {
    state: tempfile::TempDir,
    replica_ports: [u16; 2],
    nginx_port: u16,
    tls_port: u16,
    prometheus_port: u16,
    schema: Schema,
}

/// Ports free now (all held at once, so they differ).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<_> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    std::array::from_fn(|index| listeners[index].local_addr().unwrap().port())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docker/deploy.sh")
}

impl Topology {
    async fn up() -> Self {
        let [first, second, nginx_port, tls_port, prometheus_port] = free_ports();
        let topology = Self {
            state: tempfile::tempdir().expect("a state directory"),
            replica_ports: [first, second],
            nginx_port,
            tls_port,
            prometheus_port,
            schema: Schema::new().await,
        };
        let output = topology.deploy(&["native"]).await;
        topology.assert_succeeded(&output, "deploy.sh native");
        topology
    }

    /// Runs `deploy.sh ARGUMENTS` with this topology's settings.
    async fn deploy(&self, arguments: &[&str]) -> Output {
        let mut command = Command::new(script());
        command
            .args(arguments)
            .env("BLAZE_BIN", BIN)
            .env("BLAZE_NATIVE_DIR", self.state.path())
            .env("BLAZE_NATIVE_PORTS", format!("{} {}", self.replica_ports[0], self.replica_ports[1]))
            .env("NGINX_PORT", self.nginx_port.to_string())
            .env("NGINX_TLS_PORT", self.tls_port.to_string())
            .env("PROMETHEUS_PORT", self.prometheus_port.to_string())
            .env("BLAZE_DATABASE_URL", POSTGRES_URL)
            .env("BLAZE_READY_TIMEOUT_S", "120")
            .env("BLAZE__STORAGE__POSTGRES__SCHEMA", &self.schema.0)
            .env("BLAZE__STORAGE__POSTGRES__MIN_CONNECTIONS", "1")
            .env("BLAZE__AUTH__BOOTSTRAP_KEY", ADMIN_KEY)
            // One HTTP worker each: two replicas share this machine's cores
            // with the other tests.
            .env("BLAZE__SERVER__WORKERS", "1")
            .env_remove("BLAZE_PROFILE");
        tokio::task::spawn_blocking(move || command.output().expect("deploy.sh runs")).await.unwrap()
    }

    fn assert_succeeded(&self, output: &Output, what: &str) {
        assert!(
            output.status.success(),
            "{what} failed:\n{}{}\nlogs:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["blaze-1.log", "blaze-2.log", "nginx.log"] {
            let log = std::fs::read_to_string(self.state.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            text.push_str(&format!("== {name}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        text
    }

    fn replica(&self, index: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.replica_ports[index])
    }

    fn nginx(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nginx_port)
    }

    fn pid(&self, index: usize) -> i32 {
        let file = self.state.path().join(format!("blaze-{}.pid", index + 1));
        std::fs::read_to_string(&file).expect("a pid file").trim().parse().expect("a pid")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["native", "stop"])
            .env("BLAZE_NATIVE_DIR", self.state.path())
            .output();
    }
}

/// Whether the process runs; a zombie does not (nothing reaps the
/// replicas `deploy.sh` leaves behind where PID 1 reaps no orphans).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

async fn json_of(response: reqwest::Response, status: u16) -> Value {
    let actual = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(actual, status, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A new user and a key of theirs, made through `replica`; the key's budget
/// is `requests_per_minute` when given.
async fn new_key(replica: &str, email: &str, requests_per_minute: Option<u64>) -> (String, String) {
    let admin = client();
    let user = json_of(
        admin.post(format!("{replica}/admin/users")).json(&json!({"email": email})).send().await.unwrap(),
        201,
    )
    .await;
    let mut body = json!({"user_id": user["id"]});
    if let Some(rate) = requests_per_minute {
        body["rate_limits"] = json!({"requests_per_minute": rate, "tokens_per_minute": 1_000_000_000_000u64});
    }
    let key =
        json_of(admin.post(format!("{replica}/admin/keys")).json(&body).send().await.unwrap(), 201).await;
    (key["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap().to_owned())
}

async fn embed(caller: &reqwest::Client, url: &str, input: &str) -> (u16, String) {
    let response = caller
        .post(format!("{url}/v1/embeddings"))
        .json(&json!({"model": EMBEDDING_MODEL, "input": input}))
        .send()
        .await
        .unwrap();
    let cache = response.headers().get("x-blaze-cache").map(|value| value.to_str().unwrap().to_owned());
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    (status, cache.unwrap_or_default())
}

#[tokio::test]
async fn two_replicas_behind_nginx_share_identity_limits_and_cache_and_survive_losing_one() {
    let topology = Topology::up().await;
    let (a, b) = (topology.replica(0, ""), topology.replica(1, ""));

    // A key created through A works through B and through nginx.
    let (key_id, key) = new_key(&a, "shared@example.com", None).await;
    let caller = client_with_key(&key);
    for url in [topology.replica(1, "/v1/models"), topology.nginx("/v1/models")] {
        let response = caller.get(&url).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{url}: {body}\n{}", topology.logs());
    }

    // One budget of 30 requests a minute, spent alternately on A and B: 30
    // admitted in all (each replica alone would admit 30), and both refuse.
    let (_, limited_key) = new_key(&a, "limited@example.com", Some(30)).await;
    let limited = client_with_key(&limited_key);
    let mut admitted = 0;
    let mut refused_by = [0, 0];
    for round in 0..80 {
        let replica = round % 2;
        let status = limited.get(topology.replica(replica, "/v1/models")).send().await.unwrap().status();
        match status.as_u16() {
            200 => admitted += 1,
            429 => refused_by[replica] += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((30..=31).contains(&admitted), "{admitted} admitted: the budget is not shared");
    assert!(refused_by[0] > 0 && refused_by[1] > 0, "{refused_by:?}");
    // Through Redis: each replica's local share while Redis is down
    // (budget / replicas) would admit 30 in all as well.
    for replica in 0..2 {
        let metrics =
            client().get(topology.replica(replica, "/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(
            metrics.contains("blaze_ratelimit_checks_total{backend=\"redis\",result=\"limited\"}"),
            "{metrics}"
        );
        assert!(!metrics.contains("backend=\"fallback\""), "{metrics}");
    }

    // An answer cached through A is a hit through B (the Redis tier). A
    // stores it in Redis after answering, within cache.redis_timeout_ms
    // (100 ms) or not at all; asking B sooner would make B compute it.
    let input = format!("cached on one replica, read on the other {}", uuid::Uuid::new_v4());
    assert_eq!(embed(&caller, &a, &input).await, (200, "miss".to_owned()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(embed(&caller, &b, &input).await, (200, "hit-redis".to_owned()));
    assert_eq!(embed(&caller, &b, &input).await, (200, "hit-memory".to_owned()), "promoted on B");

    // A key revoked through A is refused by B within a second, though B has
    // it in its validation cache.
    assert_eq!(caller.get(format!("{b}/v1/models")).send().await.unwrap().status(), 200);
    let revoked = client().delete(format!("{a}/admin/keys/{key_id}")).send().await.unwrap();
    let revoked_at = Instant::now();
    assert_eq!(revoked.status(), 200);
    let mut status = 200;
    while revoked_at.elapsed() < Duration::from_secs(3) {
        status = caller.get(format!("{b}/v1/models")).send().await.unwrap().status().as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen_after = revoked_at.elapsed();
    assert_eq!(status, 401, "B still accepts the revoked key");
    assert!(seen_after < Duration::from_secs(1), "B refused it only after {seen_after:?}");
    eprintln!("a key revoked through A was refused by B {seen_after:?} later");

    streams_pass_through_nginx(&topology).await;
    prometheus_scrapes_both_replicas(&topology).await;
    losing_a_replica_costs_only_its_requests_in_flight(&topology).await;

    // `deploy.sh native` again starts what is missing: A rejoins, and nginx
    // sends it traffic again once its passive-health pause (fail_timeout)
    // ends.
    let output = topology.deploy(&["native"]).await;
    topology.assert_succeeded(&output, "deploy.sh native (restart)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("replica 1: pid") && stdout.contains("replica 2 already runs"), "{stdout}");
    let admin = client();
    let served_by_a = |metrics: &str| {
        metrics.lines().any(|line| {
            line.starts_with("blaze_http_requests_total{method=\"GET\",route=\"/v1/models\",status=\"200\"}")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rejoined = false;
    while Instant::now() < deadline && !rejoined {
        for _ in 0..10 {
            assert_eq!(admin.get(topology.nginx("/v1/models")).send().await.unwrap().status(), 200);
        }
        let metrics = admin.get(topology.replica(0, "/metrics")).send().await.unwrap().text().await.unwrap();
        rejoined = served_by_a(&metrics);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rejoined, "the restarted replica got no request through nginx\n{}", topology.logs());

    // `deploy.sh native stop` stops every process it started.
    let pids = [topology.pid(0), topology.pid(1)];
    let output = topology.deploy(&["native", "stop"]).await;
    topology.assert_succeeded(&output, "deploy.sh native stop");
    for pid in pids {
        assert!(!process_alive(pid), "replica {pid} still runs");
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", topology.nginx_port)).is_err(), "nginx still listens");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", topology.prometheus_port)).is_err(),
        "prometheus still listens"
    );
}

/// SSE arrives event by event through nginx (unbuffered), a WebSocket
/// upgrades through it, and its TLS server answers.
async fn streams_pass_through_nginx(topology: &Topology) {
    let _turn = decoding_turn().await;
    let response = client()
        .post(topology.nginx("/v1/chat/completions"))
        .json(&json!({
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Count from one to twenty."}],
            "max_tokens": 24,
            "stream": true
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut reads = 0;
    let mut body = String::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        reads += 1;
        body.push_str(&String::from_utf8_lossy(&piece.unwrap()));
    }
    let events = body.matches("data: {").count();
    assert!(events >= 3 && body.trim_end().ends_with("data: [DONE]"), "{body}");
    // A buffering proxy would hand the whole stream over in one or two reads.
    assert!(reads >= 3, "{reads} reads for {events} events: nginx buffered the stream");

    let mut request = format!("ws://127.0.0.1:{}/v1/ws", topology.nginx_port).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {ADMIN_KEY}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgraded through nginx");
    socket.send(Message::text(r#"{"id":"m1","type":"models.list"}"#)).await.unwrap();
    socket
        .send(Message::text(
            json!({"id": "e1", "type": "embeddings", "body": {"model": EMBEDDING_MODEL, "input": "over the proxy"}})
                .to_string(),
        ))
        .await
        .unwrap();
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a frame in time");
        let Some(Ok(Message::Text(text))) = frame else { panic!("{frame:?}") };
        let frame: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(frame["type"], "result", "{frame}");
        answered.push(frame["id"].as_str().unwrap().to_owned());
    }
    answered.sort();
    assert_eq!(answered, ["e1", "m1"]);
    socket.close(None).await.unwrap();

    let tls = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{}/health", topology.tls_port))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&tls.stdout), "200", "{}", String::from_utf8_lossy(&tls.stderr));
}

/// The Prometheus `deploy.sh native` started scrapes both replicas.
async fn prometheus_scrapes_both_replicas(topology: &Topology) {
    let url = format!("http://127.0.0.1:{}/api/v1/targets", topology.prometheus_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut targets = Value::Null;
    while Instant::now() < deadline {
        if let Ok(response) = client().get(&url).send().await {
            targets = response.json().await.unwrap_or(Value::Null);
            let up = targets["data"]["activeTargets"]
                .as_array()
                .map(|targets| targets.iter().filter(|target| target["health"] == "up").count())
                .unwrap_or(0);
            if up == 2 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("Prometheus does not scrape both replicas: {targets}");
}

#[derive(Debug)]
struct Outcome {
    method: &'static str,
    started: Instant,
    ended: Instant,
    status: u16,
}

/// Replica A is killed (SIGKILL) while clients send GETs and POSTs through
/// nginx: the only failures are POSTs that were in flight at that moment
/// (nginx retries nothing that reached a replica, except idempotent GETs).
async fn losing_a_replica_costs_only_its_requests_in_flight(topology: &Topology) {
    let (_, key) = new_key(&topology.replica(1, ""), "load@example.com", Some(100_000_000)).await;
    let caller = client_with_key(&key);
    let outcomes = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let load_started = Instant::now();
    let stop_at = load_started + Duration::from_millis(3500);
    let mut workers = Vec::new();
    for worker in 0..6 {
        let (caller, outcomes, models, embeddings) = (
            caller.clone(),
            outcomes.clone(),
            topology.nginx("/v1/models"),
            topology.nginx("/v1/embeddings"),
        );
        workers.push(tokio::spawn(async move {
            // Bounded by time and count; paced under nginx's limit_req.
            for round in 0..400 {
                if Instant::now() >= stop_at {
                    break;
                }
                let started = Instant::now();
                let (method, result) = if round % 2 == 0 {
                    ("GET", caller.get(&models).send().await)
                } else {
                    let input = format!("load {worker} {}", round % 8);
                    (
                        "POST",
                        caller
                            .post(&embeddings)
                            .json(&json!({"model": EMBEDDING_MODEL, "input": input}))
                            .send()
                            .await,
                    )
                };
                let status = match result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let _ = response.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                outcomes.lock().push(Outcome { method, started, ended: Instant::now(), status });
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pid = topology.pid(0);
    let killed_at = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock());
    let failed: Vec<&Outcome> = outcomes.iter().filter(|outcome| outcome.status != 200).collect();
    let after_kill = outcomes.iter().filter(|outcome| outcome.started > killed_at).count();
    assert!(
        outcomes.len() > 200 && after_kill > 100,
        "{} requests, {after_kill} after the kill",
        outcomes.len()
    );
    // nginx learns of the death when the kernel closes the killed process's
    // sockets; a POST it wrote to a kept-alive connection before that was
    // in flight on A too.
    let noticed_by = killed_at + Duration::from_millis(300);
    for outcome in &failed {
        assert!(
            outcome.method == "POST" && outcome.started <= noticed_by && outcome.ended >= killed_at,
            "a request that was not in flight on the killed replica failed: {outcome:?} (killed {:?} into the load)\n{}",
            killed_at - load_started,
            topology.logs()
        );
    }
    assert!(failed.len() <= 6, "{} failed, more than were in flight", failed.len());
    eprintln!(
        "replica killed under load: {} requests, {after_kill} sent after the kill, {} failed (in flight on it)",
        outcomes.len(),
        failed.len()
    );
    assert!(!process_alive(pid));
}

#[test]
fn deploy_help_names_every_mode_and_unknown_arguments_are_refused() {
    let help = Command::new(script()).arg("--help").output().expect("deploy.sh runs");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for mode in ["default", "development", "gpu", "full", "minimal", "native", "stop"] {
        assert!(text.contains(&format!("\n  {mode} ")), "{mode} is not in the help:\n{text}");
    }
    let wrong = Command::new(script()).arg("everything").output().expect("deploy.sh runs");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unknown argument: everything"));
    // The Docker modes say what to do on a machine without a Docker engine
    // (these machines have the client only, or nothing).
    let docker_answers =
        Command::new("docker").arg("info").output().is_ok_and(|output| output.status.success());
    if !docker_answers {
        let full = Command::new(script()).arg("full").output().expect("deploy.sh runs");
        assert_eq!(full.status.code(), Some(1));
        let said = String::from_utf8_lossy(&full.stderr);
        assert!(said.contains("use: docker/deploy.sh native"), "{said}");
    }
    // Native stop with nothing started says so and succeeds.
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("never-started");
    let stop = Command::new(script())
        .args(["native", "stop"])
        .env("BLAZE_NATIVE_DIR", &missing)
        .output()
        .expect("deploy.sh runs");
    assert!(stop.status.success());
    assert!(String::from_utf8_lossy(&stop.stdout).contains("nothing started"));
    assert!(!Path::new(&missing).exists());
}
