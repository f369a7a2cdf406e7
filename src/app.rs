//! Wiring: the actor tree, the HTTP server, and the shutdown sequence.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::{App, HttpServer};
use blaze_actors::health::{HealthMonitor, HealthMonitorConfig, HealthState};
use blaze_actors::inference::{
    BatchSettings, BertTokenizer, ChatModel, ChatPool, EmbeddingPool, InferenceWorker,
};
use blaze_actors::metrics::{MetricsAggregator, Telemetry};
use blaze_actors::router::{ModelCache, ModelFiles, ModelHandle, ModelKind, ModelRegistry, ServedModel};
use blaze_actors::supervisor::{ActorBoard, Backoff, ChildSpec, StartAll, StopAll, Supervisor};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::http::{self, AppState, Compression, Observe};
use crate::settings::{ServerSettings, Settings};

/// Runs the server on an actix system until a signal stops it. Exit code 0
/// after a clean drain.
pub fn serve_blocking(settings: Settings, offline: bool) -> ExitCode {
    let _log_guard = crate::logging::init();
    let system = actix_rt::System::new();
    match system.block_on(serve(settings, offline)) {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            error!(error = %problem, "cannot serve");
            ExitCode::FAILURE
        }
    }
}

/// The shared state every part reads, built once per process.
struct Shared {
    health: Arc<HealthState>,
    telemetry: Arc<Telemetry>,
    board: ActorBoard,
    models: ModelRegistry,
}

/// The served models and the worker actors that compute for them.
fn served_models(settings: &Settings) -> Result<(ModelRegistry, Vec<ChildSpec>), String> {
    let cache = ModelCache::from_environment();
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let (mut served, mut specs) = (Vec::new(), Vec::new());
    for (id, spec) in &settings.models.catalog {
        if spec.kind == ModelKind::Chat {
            let path = match cache.locate(id, spec) {
                Some(ModelFiles::File(path)) => path,
                Some(ModelFiles::Directory(directory)) => directory.join("model.gguf"),
                None => {
                    return Err(format!("{id}: its files are not in the cache; run `blaze models pull {id}`"))
                }
            };
            let model =
                ChatModel::load(&path, spec.context_length).map_err(|error| format!("{id}: {error}"))?;
            let pool = ChatPool::new(id, model, spec.max_batch, spec.queue_capacity);
            let worker_pool = pool.clone();
            let threads = spec.threads;
            specs.extend(worker_specs(id, spec.workers, move || {
                InferenceWorker::chat(worker_pool.clone(), threads)
            }));
            served.push(ServedModel {
                id: id.clone(),
                kind: spec.kind,
                created,
                handle: ModelHandle::Chat(pool),
            });
            continue;
        }
        let directory = match cache.locate(id, spec) {
            Some(ModelFiles::Directory(directory)) => directory,
            _ => return Err(format!("{id}: its files are not in the cache; run `blaze models pull {id}`")),
        };
        let tokenizer = BertTokenizer::load(&directory).map_err(|error| format!("{id}: {error}"))?;
        let batching = BatchSettings {
            max_batch: spec.max_batch,
            max_wait: Duration::from_millis(spec.max_wait_ms),
            queue_capacity: spec.queue_capacity,
        };
        let pool = EmbeddingPool::new(id, Arc::new(tokenizer), batching);
        let (worker_pool, threads) = (pool.clone(), spec.threads);
        specs.extend(worker_specs(id, spec.workers, move || {
            InferenceWorker::embedding(worker_pool.clone(), directory.clone(), threads)
        }));
        served.push(ServedModel {
            id: id.clone(),
            kind: spec.kind,
            created,
            handle: ModelHandle::Embedding(pool),
        });
    }
    Ok((ModelRegistry::new(served), specs))
}

/// `count` supervised workers of model `id`, named `worker:<id>:<index>`.
fn worker_specs(
    id: &str,
    count: usize,
    make: impl Fn() -> InferenceWorker + Clone + Send + Sync + 'static,
) -> Vec<ChildSpec> {
    (0..count)
        .map(|index| {
            // Child names live as long as the process; a bounded set made once.
            let name: &'static str = Box::leak(format!("worker:{id}:{index}").into_boxed_str());
            let make = make.clone();
            ChildSpec::new(name, true, move || {
                let worker = make();
                async move { Ok(worker) }
            })
        })
        .collect()
}

fn child_specs(settings: &Settings, shared: &Shared) -> Vec<ChildSpec> {
    let monitoring = &settings.monitoring;
    let probe_interval = Duration::from_secs(monitoring.probe_interval_s);
    let health_config =
        HealthMonitorConfig { probe_interval, probe_timeout: probe_interval.min(Duration::from_secs(2)) };
    let (health, board) = (shared.health.clone(), shared.board.clone());
    let telemetry = shared.telemetry.clone();
    let probes = shared.models.probes();
    let collection_interval = Duration::from_secs(monitoring.collection_interval_s);
    vec![
        ChildSpec::new("health_monitor", true, move || {
            let monitor = HealthMonitor::new(health_config, health.clone(), board.clone(), probes.clone());
            async move { Ok(monitor) }
        }),
        ChildSpec::new("metrics_aggregator", true, move || {
            let aggregator = MetricsAggregator::new(telemetry.clone(), collection_interval);
            async move { Ok(aggregator) }
        }),
    ]
}

async fn serve(settings: Settings, offline: bool) -> Result<(), String> {
    let build = crate::build_info();
    info!(version = build.version, git_sha = build.git_sha, profile = build.profile, "starting");
    ensure_models(&settings, offline).await?;
    let monitoring = &settings.monitoring;
    let telemetry = Telemetry::install(
        &build,
        Duration::from_secs(monitoring.collection_interval_s),
        Duration::from_secs(monitoring.retention_s),
    )
    .map_err(|error| error.to_string())?;
    let (models, workers) = served_models(&settings)?;
    let shared = Shared { health: HealthState::new(build), telemetry, board: ActorBoard::default(), models };
    let mut specs = child_specs(&settings, &shared);
    specs.extend(workers);
    let supervisor = Supervisor::new(specs, shared.board.clone(), Backoff::default()).start();
    supervisor.send(StartAll).await.map_err(|error| format!("supervisor: {error}"))?;

    let result = run_http(&settings, &shared, supervisor.clone()).await;
    if supervisor.send(StopAll).await.is_err() {
        warn!("the supervisor was gone at shutdown");
    }
    result
}

/// Pulls the models missing from the cache, or with `--offline` refuses to
/// start without them.
async fn ensure_models(settings: &Settings, offline: bool) -> Result<(), String> {
    let missing = crate::models::missing(&settings.models);
    if missing.is_empty() {
        return Ok(());
    }
    if offline {
        return Err(format!(
            "--offline, and these models are not in the cache: {}; run `blaze models pull` first",
            missing.join(", ")
        ));
    }
    info!(models = missing.join(", "), "pulling missing models");
    crate::models::pull(&settings.models, &missing, crate::models::Progress::Log).await
}

async fn run_http(settings: &Settings, shared: &Shared, supervisor: Addr<Supervisor>) -> Result<(), String> {
    let server_settings = settings.server.clone();
    let state = AppState {
        health: shared.health.clone(),
        telemetry: shared.telemetry.clone(),
        supervisor,
        models: shared.models.clone(),
    };
    let compression = settings.performance.compression;
    let (max_body, timeout_s) = (server_settings.max_request_bytes, server_settings.request_timeout_s);
    let workers = server_settings.worker_count();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new()
            .configure(|config| http::configure(config, state.clone(), max_body))
            .wrap(Observe::new(state.telemetry.clone(), timeout_s, max_body))
            .wrap(Compression::new(compression))
    })
    .on_connect(http::disconnect::on_connect)
    .workers(workers)
    .max_connections(server_settings.max_connections.div_ceil(workers).max(1))
    .keep_alive(match server_settings.keep_alive_s {
        0 => actix_web::http::KeepAlive::Disabled,
        seconds => actix_web::http::KeepAlive::Timeout(Duration::from_secs(seconds)),
    })
    .shutdown_timeout(server_settings.shutdown_grace_s)
    .disable_signals()
    .bind((server_settings.host.as_str(), server_settings.port))
    .map_err(|error| {
        format!("cannot listen on {}:{}: {error}", server_settings.host, server_settings.port)
    })?;
    for address in server.addrs() {
        info!(address = %address, workers, "listening");
    }
    let server = server.run();
    actix_rt::spawn(drain_on_signal(server.handle(), shared.health.clone(), server_settings));
    server.await.map_err(|error| format!("server: {error}"))
}

/// First SIGTERM or SIGINT: readiness turns 503 at once; for
/// `drain_delay_s` the server keeps serving so balancers see the 503 and
/// move traffic away; then the listeners close (new connections are
/// refused) and in-flight requests get `shutdown_grace_s` to finish. A
/// second signal stops at once.
async fn drain_on_signal(
    server: actix_web::dev::ServerHandle,
    health: Arc<HealthState>,
    settings: ServerSettings,
) {
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        error!("cannot listen for SIGTERM and SIGINT; stop the process with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    health.begin_draining();
    let (delay_s, grace_s) = (settings.drain_delay_s, settings.shutdown_grace_s);
    info!(signal = name, drain_delay_s = delay_s, grace_s, "draining: readiness reports 503");
    let forced = tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(delay_s)) => false,
        _ = terminate.recv() => true,
        _ = interrupt.recv() => true,
    };
    if forced {
        warn!("second signal: stopping now");
        return server.stop(false).await;
    }
    info!(grace_s, "listeners closed; finishing in-flight requests");
    let graceful = server.stop(true);
    tokio::select! {
        () = graceful => info!("drained"),
        _ = terminate.recv() => { warn!("second signal: stopping now"); server.stop(false).await }
        _ = interrupt.recv() => { warn!("second signal: stopping now"); server.stop(false).await }
    }
}
