//! The engine: virtual users, the two arrival models, warm-up, the stop
//! conditions (the deadline and the request budget), the live progress
//! line, and the per-second timeline.
//!
//! Closed model: N users, each sending its next step when the last one
//! ended, after the think time. Open model: a scheduler emits arrivals at
//! the rate (constant or ramped) into a bounded queue that the connections
//! take from; each arrival carries the instant it was meant to be sent, and
//! its latency counts from there (coordinated omission corrected).

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::scenario::{Arrival, Scenario};
use crate::stats::{Collector, Summary, Tick};

mod error;
mod user;

pub use self::error::{RunError, TargetError};
use self::user::{prepare, User};

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// As given, for the report.
    pub url: String,
    pub address: SocketAddr,
    host_header: String,
    /// A path the server is mounted under (`http://host/openai` -> `/openai`).
    prefix: String,
}

fn is_loopback(host: &str, addresses: &[SocketAddr]) -> bool {
    host == "localhost"
        || (!addresses.is_empty() && addresses.iter().all(|address| address.ip().is_loopback()))
}

impl Target {
    /// `http://host:port[/prefix]`. A target that is not this machine needs
    /// `allow_remote`: a load test must not hit someone else's server by a
    /// typo.
    pub fn parse(url: &str, allow_remote: bool) -> Result<Self, TargetError> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(TargetError::Https { url: url.to_owned() }),
            _ => return Err(TargetError::NotHttp { url: url.to_owned() }),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(TargetError::NoHost { url: url.to_owned() });
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addresses: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .map_err(|source| TargetError::Resolve {
                url: url.to_owned(),
                authority: authority.to_owned(),
                source,
            })?
            .collect();
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        if !allow_remote && !is_loopback(host, &addresses) {
            return Err(TargetError::Remote { url: url.to_owned() });
        }
        let address = *addresses
            .first()
            .ok_or_else(|| TargetError::NoAddress { url: url.to_owned(), authority: authority.to_owned() })?;
        Ok(Self {
            url: url.to_owned(),
            address,
            host_header: authority.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    fn websocket_url(&self, path: &str) -> String {
        format!("ws://{}{}{}", self.host_header, self.prefix, path)
    }
}

/// How the run reports progress while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// A progress bar on a terminal, a plain line a second otherwise.
    Auto,
}

pub struct RunOptions {
    pub target: Target,
    pub key: Option<String>,
    pub threads: usize,
    pub progress: Progress,
}

/// What a run measured, before thresholds and baselines.
#[derive(Debug)]
pub struct Measured {
    pub requests: Vec<Summary>,
    pub total: Summary,
    pub timeline: Vec<Tick>,
    pub measured_s: f64,
    pub peak_connections: u64,
    pub stopped_by: &'static str,
    /// Requests cut off at the end, still waiting for their answer.
    pub unfinished: u64,
    /// Open model: arrivals the schedule emitted that no connection was
    /// free to send before the end (the backlog).
    pub not_sent: u64,
}

struct Shared {
    scenario: Arc<Scenario>,
    target: Target,
    key: Option<String>,
    collector: Collector,
    /// Whole requests (head and body) for requests with no variables.
    prepared: Vec<Option<Vec<u8>>>,
    cumulative_weights: Vec<f64>,
    measure_from: Instant,
    deadline: Instant,
    issued: AtomicU64,
    budget_spent: AtomicBool,
    connections: AtomicI64,
    peak_connections: AtomicI64,
    measuring: AtomicBool,
    in_flight: AtomicI64,
    not_sent: AtomicU64,
}

impl Shared {
    fn over(&self) -> bool {
        self.budget_spent.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Counts an open connection for as long as it lives.
struct Counted(Arc<Shared>);

impl Counted {
    fn new(shared: &Arc<Shared>) -> Self {
        let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        if shared.measuring.load(Ordering::Relaxed) {
            shared.peak_connections.fetch_max(open, Ordering::Relaxed);
        }
        Self(shared.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a closed-model user paces itself.
#[derive(Debug, Clone, Copy)]
struct Pace {
    users: usize,
    think_time: Duration,
    think_jitter: f64,
    ramp_up: Duration,
}

async fn closed_user(shared: Arc<Shared>, id: usize, pace: Pace) {
    let Pace { users, think_time, think_jitter, ramp_up } = pace;
    let mut user = User::new(id);
    if !ramp_up.is_zero() {
        tokio::time::sleep(ramp_up.mul_f64(id as f64 / users as f64)).await;
    }
    while !shared.over() {
        let step = user.pick(&shared);
        user.perform(&shared, step, Instant::now()).await;
        if !think_time.is_zero() {
            let factor = 1.0 + think_jitter * (2.0 * user.random.f64() - 1.0);
            tokio::time::sleep(think_time.mul_f64(factor)).await;
        }
    }
    user.close().await;
}

async fn open_connection(shared: Arc<Shared>, id: usize, arrivals: async_channel::Receiver<Instant>) {
    let mut user = User::new(id);
    while let Ok(intended) = arrivals.recv().await {
        if shared.over() {
            shared.not_sent.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let step = user.pick(&shared);
        user.perform(&shared, step, intended).await;
    }
    user.close().await;
}

/// Emits arrivals at the rate until the deadline; the queue is bounded, so
/// a saturated target makes arrivals wait (and their latency counts it).
async fn schedule(
    shared: Arc<Shared>,
    sender: async_channel::Sender<Instant>,
    rate: f64,
    ramp_to: Option<f64>,
) {
    let measured = shared.scenario.duration.as_secs_f64();
    let mut next = Instant::now();
    'run: while !shared.over() {
        let now = Instant::now();
        if next > now {
            tokio::time::sleep_until(next.into()).await;
        }
        while next <= Instant::now() {
            if next >= shared.deadline || shared.budget_spent.load(Ordering::Relaxed) {
                break 'run;
            }
            if sender.send(next).await.is_err() {
                break 'run;
            }
            let into = next.saturating_duration_since(shared.measure_from).as_secs_f64();
            let current = match ramp_to {
                Some(to) => rate + (to - rate) * (into / measured).min(1.0),
                None => rate,
            };
            next += Duration::from_secs_f64(1.0 / current);
        }
    }
    sender.close();
}

fn progress_bar(scenario: &Scenario, progress: Progress) -> Option<indicatif::ProgressBar> {
    if progress == Progress::Off || !std::io::stderr().is_terminal() {
        return None;
    }
    let total = (scenario.warmup + scenario.duration).as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{bar:24} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Runs a scenario on its own runtime; blocks until it ends.
pub fn run(scenario: Arc<Scenario>, options: RunOptions) -> Result<Measured, RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(drive(scenario, options))
}

async fn drive(scenario: Arc<Scenario>, options: RunOptions) -> Result<Measured, RunError> {
    crate::raise_fd_limit(scenario.arrival.connections() as u64 + 64)?;
    let prepared = prepare(&scenario, &options.target, options.key.as_deref());
    let mut cumulative = 0.0;
    let cumulative_weights = scenario.steps.iter().map(|step| {
        cumulative += step.weight;
        cumulative
    });
    let cumulative_weights = cumulative_weights.collect();
    let started = Instant::now();
    let measure_from = started + scenario.warmup;
    let deadline = measure_from + scenario.duration;
    let shards = std::thread::available_parallelism().map_or(2, |cores| cores.get()) * 4;
    let shared = Arc::new(Shared {
        collector: Collector::new(scenario.requests.len(), shards),
        target: options.target,
        key: options.key,
        prepared,
        cumulative_weights,
        measure_from,
        deadline,
        issued: AtomicU64::new(0),
        budget_spent: AtomicBool::new(false),
        connections: AtomicI64::new(0),
        peak_connections: AtomicI64::new(0),
        measuring: AtomicBool::new(scenario.warmup.is_zero()),
        in_flight: AtomicI64::new(0),
        not_sent: AtomicU64::new(0),
        scenario,
    });
    let mut tasks = tokio::task::JoinSet::new();
    let arrival = shared.scenario.arrival.clone();
    match arrival {
        Arrival::Closed { users, think_time, think_jitter, ramp_up } => {
            let pace = Pace { users, think_time, think_jitter, ramp_up };
            for id in 0..users {
                tasks.spawn(closed_user(shared.clone(), id, pace));
            }
        }
        Arrival::Open { rate, ramp_to, connections } => {
            let (sender, receiver) = async_channel::bounded(100_000);
            for id in 0..connections {
                tasks.spawn(open_connection(shared.clone(), id, receiver.clone()));
            }
            tasks.spawn(schedule(shared.clone(), sender, rate, ramp_to));
        }
    }
    let bar = progress_bar(&shared.scenario, options.progress);
    let mut timeline = Vec::new();
    let mut last_tick = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    // Every request is bounded by the timeout, so the users end within it
    // once the run is over; the grace only guards against a stuck driver.
    let grace = shared.scenario.timeout + Duration::from_secs(2);
    let mut over_since: Option<Instant> = None;
    let stopped = loop {
        let ended = tokio::select! {
            _ = ticker.tick() => false,
            next = tasks.join_next() => next.is_none(),
        };
        let now = Instant::now();
        if now.duration_since(last_tick) >= Duration::from_millis(990) || ended {
            let mut tick = shared.collector.take_interval(now.duration_since(last_tick).as_secs_f64());
            last_tick = now;
            let measuring = now > shared.measure_from;
            if measuring && !shared.measuring.swap(true, Ordering::Relaxed) {
                shared
                    .peak_connections
                    .fetch_max(shared.connections.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let phase = if !measuring {
                "warm-up"
            } else if shared.over() {
                "ending"
            } else {
                "measuring"
            };
            let line = format!(
                "{phase:9} {:>8.0} req/s  errors {} ({:.2}%)  p99 {:.2} ms  connections {}",
                tick.rate_per_s,
                tick.errors,
                100.0 * tick.errors as f64 / tick.requests.max(1) as f64,
                tick.p99_ms,
                shared.connections.load(Ordering::Relaxed)
            );
            match (&bar, options.progress) {
                (Some(bar), _) => {
                    bar.set_position(
                        now.duration_since(shared.measure_from - shared.scenario.warmup).as_millis() as u64,
                    );
                    bar.set_message(line);
                }
                (None, Progress::Auto) => eprintln!(
                    "{:>6.1}s {line}",
                    now.duration_since(shared.measure_from - shared.scenario.warmup).as_secs_f64()
                ),
                (None, Progress::Off) => {}
            }
            if measuring && tick.requests > 0 {
                tick.t_s = now.duration_since(shared.measure_from).as_secs_f64();
                timeline.push(tick);
            }
        }
        if ended {
            break "end";
        }
        if shared.over() {
            let since = *over_since.get_or_insert(now);
            if now.duration_since(since) > grace {
                break "grace";
            }
        }
    };
    let unfinished = if stopped == "grace" {
        let left = shared.in_flight.load(Ordering::Relaxed).max(0) as u64;
        tasks.shutdown().await;
        left
    } else {
        0
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // The measured window: the duration, or up to the end when the request
    // budget stopped the run early.
    let window = Instant::now().min(shared.deadline).saturating_duration_since(shared.measure_from);
    let measured_s = window.as_secs_f64().max(1e-3);
    let names: Vec<String> = shared.scenario.requests.iter().map(|request| request.name.clone()).collect();
    let (requests, total) = shared.collector.summaries(&names, measured_s);
    Ok(Measured {
        requests,
        total,
        timeline,
        measured_s,
        peak_connections: shared.peak_connections.load(Ordering::Relaxed).max(0) as u64,
        stopped_by: if shared.budget_spent.load(Ordering::Relaxed) { "max_requests" } else { "duration" },
        unfinished,
        not_sent: shared.not_sent.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_the_drivers_cannot_or_must_not_load_are_refused_with_a_reason() {
        let refused = |url: &str| Target::parse(url, false).unwrap_err();
        assert!(matches!(refused("https://127.0.0.1:8443"), TargetError::Https { .. }));
        assert!(matches!(refused("127.0.0.1:8080"), TargetError::NotHttp { .. }));
        assert!(matches!(refused("http://key@127.0.0.1"), TargetError::NoHost { .. }));
        let remote = refused("http://192.0.2.1:8080").to_string();
        assert_eq!(
            remote,
            "http://192.0.2.1:8080 is not this machine (loopback); pass --allow-remote to load another machine, and only one you may load"
        );
        assert!(Target::parse("http://127.0.0.1:8080/openai/", false).is_ok());
    }
}
