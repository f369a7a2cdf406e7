//! Wiring: the actor tree, the HTTP server, and the shutdown sequence.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::{App, HttpServer};
use blaze_actors::auth::{
    AdminError, AuthActor, AuthActorConfig, Authenticator, EventSource, IdentityError, StoreProbe,
};
use blaze_actors::cache::{CacheActor, CacheOpenError, CacheOptions, ResponseCache};
use blaze_actors::guard::{Guard, GuardActor, PatternError, Reload};
use blaze_actors::health::{HealthMonitor, HealthMonitorConfig, HealthState};
use blaze_actors::metrics::{MetricsAggregator, MetricsError, Telemetry};
use blaze_actors::ratelimit::{RateLimiter, RateLimiterActor, RateLimiterOptions};
use blaze_actors::router::{ModelCache, ModelManager, Router};
use blaze_actors::supervisor::{ActorBoard, Backoff, ChildSpec, StartAll, StopAll, Supervisor};
use blaze_actors::RedisError;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::http::client::NotANetwork;
use crate::http::{self, AppState, Compression, Observe};
use crate::models::ModelsError;
use crate::openai::{CacheAccess, Governance, Limiting, Pipeline};
use crate::settings::{ConfigErrors, ConfigSources, ServerSettings, Settings};

/// Runs the server on an actix system until a signal stops it. Exit code 0
/// after a clean drain.
pub fn serve_blocking(settings: Settings, sources: ConfigSources, offline: bool) -> ExitCode {
    let _log_guard = match crate::logging::init(&settings.telemetry, &settings.logging) {
        Ok(guard) => guard,
        Err(problem) => {
            eprintln!("cannot serve: {problem}");
            return ExitCode::FAILURE;
        }
    };
    // Before anything else allocates much (the models load in `serve`).
    crate::http::heap_profile::start(&settings.profiling);
    let system = actix_rt::System::new();
    match system.block_on(serve(settings, guard_reload(sources), offline)) {
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

/// Why the server cannot start (or stopped on an error).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--offline, and these models are not in the cache: {0}; run `blaze models pull` first")]
    Offline(String),
    #[error(transparent)]
    Models(#[from] ModelsError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The first admin cannot be created.
    #[error(transparent)]
    Bootstrap(#[from] AdminError),
    #[error(transparent)]
    RateLimits(#[from] RedisError),
    #[error(transparent)]
    Cache(#[from] CacheOpenError),
    #[error(transparent)]
    Guard(#[from] PatternError),
    #[error(transparent)]
    TrustedProxies(#[from] NotANetwork),
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    #[error("supervisor: {0}")]
    Supervisor(#[from] actix::MailboxError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("server: {0}")]
    Server(std::io::Error),
}

/// The shared state every part reads, built once per process.
struct Services {
    health: Arc<HealthState>,
    telemetry: Arc<Telemetry>,
    board: ActorBoard,
    models: ModelManager,
    identity: Arc<Authenticator>,
    identity_events: EventSource,
    limiting: Arc<Limiting>,
    cache: Option<Arc<ResponseCache>>,
    guard: Arc<Guard>,
    guard_reload: Option<Reload>,
    governance: Arc<Governance>,
    gateway: Arc<crate::gateway::Gateway>,
}

/// What reloads the guard's patterns: the --config file (the layers under
/// it are compiled in, and the environment does not change), read again
/// with every layer.
fn guard_reload(sources: ConfigSources) -> Option<Reload> {
    let file = sources.file.clone()?;
    let load = move || {
        Settings::load(&sources).map(|settings| settings.guard).map_err(|errors| ConfigErrors(errors).into())
    };
    Some(Reload { files: vec![file], load: Arc::new(load), applied: None })
}

/// The Router, which drives the model manager: loads, idle unloads and
/// retries of failed loads.
fn router_spec(services: &Services) -> ChildSpec {
    let models = services.models.clone();
    ChildSpec::new("router", true, move || {
        let router = Router::start(models.clone());
        async move { Ok(router) }
    })
}

fn child_specs(settings: &Settings, services: &Services) -> Vec<ChildSpec> {
    let monitoring = &settings.monitoring;
    let probe_interval = Duration::from_secs(monitoring.probe_interval_s);
    let health_config =
        HealthMonitorConfig { probe_interval, probe_timeout: probe_interval.min(Duration::from_secs(2)) };
    let (health, board) = (services.health.clone(), services.board.clone());
    let telemetry = services.telemetry.clone();
    let mut probes = services.models.registry().probes();
    probes.push(Arc::new(StoreProbe(services.identity.clone())));
    let (authenticator, events) = (services.identity.clone(), services.identity_events.clone());
    let auth_config = AuthActorConfig {
        last_used_flush: Duration::from_secs(settings.auth.last_used_flush_s),
        resync_interval: Duration::from_secs(settings.auth.resync_interval_s),
    };
    let collection_interval = Duration::from_secs(monitoring.collection_interval_s);
    let limiter = services.limiting.limiter.clone();
    let (guard, guard_reload) = (services.guard.clone(), services.guard_reload.clone());
    let mut specs = vec![ChildSpec::new("guard", true, move || {
        let actor = GuardActor::new(guard.clone(), guard_reload.clone());
        async move { Ok(actor) }
    })];
    if let Some(cache) = services.cache.clone() {
        let redis_url = cache_redis_url(settings);
        let timeout = Duration::from_millis(settings.cache.redis_timeout_ms);
        specs.push(ChildSpec::new("cache", true, move || {
            let actor = CacheActor::new(cache.clone(), redis_url.clone(), timeout);
            async move { Ok(actor) }
        }));
    }
    specs.extend([
        ChildSpec::new("rate_limiter", true, move || {
            let actor = RateLimiterActor::new(limiter.clone());
            async move { Ok(actor) }
        }),
        ChildSpec::new("health_monitor", true, move || {
            let monitor = HealthMonitor::new(health_config, health.clone(), board.clone(), probes.clone());
            async move { Ok(monitor) }
        }),
        ChildSpec::new("metrics_aggregator", true, move || {
            let aggregator = MetricsAggregator::new(telemetry.clone(), collection_interval);
            async move { Ok(aggregator) }
        }),
        ChildSpec::new("auth", true, move || {
            let actor = AuthActor::new(authenticator.clone(), events.clone(), auth_config.clone());
            async move { Ok(actor) }
        }),
    ]);
    specs
}

fn cache_redis_url(settings: &Settings) -> Option<String> {
    let url = &settings.storage.redis_url;
    (settings.cache.redis && !url.is_empty()).then(|| url.clone())
}

/// The response cache, if on: memory, then Redis when configured, then
/// disk under the data dir.
fn open_cache(settings: &Settings) -> Result<Option<Arc<ResponseCache>>, CacheOpenError> {
    let cache = &settings.cache;
    if !cache.enabled {
        return Ok(None);
    }
    let options = CacheOptions {
        ttl: Duration::from_secs(settings.performance.cache_ttl_s),
        memory_bytes: cache.memory_bytes,
        disk_directory: (cache.disk_bytes > 0).then(|| settings.storage.data_dir()),
        disk_bytes: cache.disk_bytes,
        redis_url: cache_redis_url(settings),
        redis_timeout: Duration::from_millis(cache.redis_timeout_ms),
        redis_max_value_bytes: cache.redis_max_value_bytes,
    };
    info!(
        memory_bytes = cache.memory_bytes,
        disk_bytes = cache.disk_bytes,
        redis = options.redis_url.is_some(),
        "response cache"
    );
    ResponseCache::open(&options).map(Some)
}

async fn serve(settings: Settings, guard_reload: Option<Reload>, offline: bool) -> Result<(), StartError> {
    let build = crate::build_info();
    info!(version = build.version, git_sha = build.git_sha, profile = build.profile, "starting");
    ensure_models(&settings, offline).await?;
    let monitoring = &settings.monitoring;
    let telemetry = Telemetry::install(
        &build,
        Duration::from_secs(monitoring.collection_interval_s),
        Duration::from_secs(monitoring.retention_s),
    )?;
    let models = ModelManager::new(
        settings.models.catalog.clone(),
        ModelCache::from_environment(),
        Duration::from_secs(settings.models.load_wait_s),
    );
    let identity = open_identity(&settings).await?;
    let governance = crate::governance::start(&settings, identity.governance.clone()).await?;
    let audit = crate::governance::audit_reload(&governance);
    let guard_reload = guard_reload.map(|reload| Reload { applied: Some(audit), ..reload });
    let services = Services {
        health: HealthState::new(build),
        telemetry,
        board: ActorBoard::default(),
        models,
        identity: identity.authenticator,
        identity_events: identity.events,
        limiting: limiting(&settings)?,
        cache: open_cache(&settings)?,
        guard: Guard::new(settings.guard.clone())?,
        guard_reload,
        governance,
        gateway: Arc::new(crate::gateway::Gateway::new(&settings)?),
    };
    let mut specs = child_specs(&settings, &services);
    specs.push(router_spec(&services));
    let supervisor = Supervisor::new(specs, services.board.clone(), Backoff::default()).start();
    services.models.attach(supervisor.clone().recipient(), supervisor.clone().recipient());
    supervisor.send(StartAll).await?;

    let result = run_http(&settings, &services, supervisor.clone()).await;
    if supervisor.send(StopAll).await.is_err() {
        warn!("the supervisor was gone at shutdown");
    }
    if let Some(cache) = &services.cache {
        // Queued disk writes land before the process goes.
        cache.flush().await;
    }
    if let Err(error) = services.identity.flush_last_used().await {
        warn!(error = %error, "cannot write the last key uses at shutdown");
    }
    if let Some(ledger) = &services.governance.ledger {
        ledger.flush().await;
    }
    result
}

/// The rate limiter, on Redis when configured (shared by replicas).
fn limiting(settings: &Settings) -> Result<Arc<Limiting>, RedisError> {
    use crate::settings::RateLimitBackend;
    let limits = &settings.rate_limits;
    let redis_url = match limits.backend {
        RateLimitBackend::Local => None,
        RateLimitBackend::Auto | RateLimitBackend::Redis => {
            Some(settings.storage.redis_url.clone()).filter(|url| !url.is_empty())
        }
    };
    let limiter = RateLimiter::new(RateLimiterOptions {
        redis_url,
        redis_timeout: Duration::from_millis(limits.redis_timeout_ms),
        fail_mode: limits.fail_mode,
        replicas: limits.replicas,
        burst_seconds: limits.burst_s,
    })?;
    info!(backend = limiter.backend_name(), fail_mode = ?limits.fail_mode, "rate limits");
    Ok(Arc::new(Limiting {
        limiter,
        defaults: limits.default_limits(),
        anonymous: limits.anonymous_limits(),
        routes: limits.route_limits(),
    }))
}

/// Opens the identity store and, on an empty one, creates the first admin.
/// A generated key is printed once on stdout, outside the logs.
async fn open_identity(settings: &Settings) -> Result<blaze_actors::auth::Identity, StartError> {
    let identity = blaze_actors::auth::open(crate::identity::options(settings)).await?;
    let configured = Some(settings.auth.bootstrap_key.as_str()).filter(|key| !key.is_empty());
    match identity.authenticator.bootstrap(configured, &settings.auth.bootstrap_email).await? {
        Some(key) => {
            info!(
                key_id = key.id,
                email = settings.auth.bootstrap_email,
                "created the first admin; its API key is printed once on stdout"
            );
            println!(
                "\nBlaze created the first admin ({}). Its API key, shown this once:\n\n    {}\n",
                settings.auth.bootstrap_email, key.text
            );
        }
        None if configured.is_some() => info!("the store has users; auth.bootstrap_key is not used"),
        None => {}
    }
    Ok(identity)
}

/// Pulls the models missing from the cache, or with `--offline` refuses to
/// start without them.
async fn ensure_models(settings: &Settings, offline: bool) -> Result<(), StartError> {
    let missing = crate::models::missing(&settings.models);
    if missing.is_empty() {
        return Ok(());
    }
    if offline {
        return Err(StartError::Offline(missing.join(", ")));
    }
    info!(models = missing.join(", "), "pulling missing models");
    Ok(crate::models::pull(&settings.models, &missing, crate::models::Progress::Log).await?)
}

async fn run_http(
    settings: &Settings,
    services: &Services,
    supervisor: Addr<Supervisor>,
) -> Result<(), StartError> {
    let server_settings = settings.server.clone();
    let state = AppState {
        health: services.health.clone(),
        telemetry: services.telemetry.clone(),
        supervisor,
        auth: services.identity.clone(),
        pipeline: Pipeline {
            models: services.models.clone(),
            guard: services.guard.clone(),
            cache: services
                .cache
                .clone()
                .map(|cache| CacheAccess { cache, shared: settings.cache.shared_across_users }),
            validation: settings.validation,
            limiting: services.limiting.clone(),
            governance: services.governance.clone(),
            gateway: services.gateway.clone(),
        },
        sockets: http::websocket::Sockets::new(
            settings.websocket,
            Duration::from_secs(server_settings.shutdown_grace_s),
        ),
        proxies: Arc::new(http::client::TrustedProxies::parse(
            &server_settings.trusted_proxies,
            server_settings.forwarded_header,
        )?),
        monitoring: http::checkpoint::MonitoringAccess::new(
            settings.security.metrics_access,
            &settings.security.scrape_token,
        ),
        body_limits: server_settings.body_limits.at_most(server_settings.max_request_bytes),
        board: services.board.clone(),
        profiling: settings.profiling,
    };
    services.gateway.start_probes(Duration::from_secs(settings.gateway.probe_interval_s));
    services.gateway.start_sharing();
    let sockets = state.sockets.clone();
    let pipeline = state.pipeline.clone();
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
    .map_err(|source| StartError::Listen {
        address: format!("{}:{}", server_settings.host, server_settings.port),
        source,
    })?;
    for address in server.addrs() {
        info!(address = %address, workers, "listening");
    }
    let server = server.run();
    if !settings.cache.warm_file.is_empty() {
        #[expect(
            clippy::disallowed_methods,
            reason = "warming ends with its file; cut short at shutdown it loses only entries not yet warm"
        )]
        actix_rt::spawn(crate::openai::warm::warm(pipeline, settings.cache.warm_file.clone().into()));
    }
    #[expect(
        clippy::disallowed_methods,
        reason = "waits for the signal that ends the server; it lives as long as the server"
    )]
    actix_rt::spawn(drain_on_signal(server.handle(), services.health.clone(), sockets, server_settings));
    server.await.map_err(StartError::Server)
}

/// First SIGTERM or SIGINT: readiness turns 503 at once; for
/// `drain_delay_s` the server keeps serving so balancers see the 503 and
/// move traffic away; then the listeners close (new connections are
/// refused) and in-flight requests get `shutdown_grace_s` to finish. A
/// second signal stops at once.
async fn drain_on_signal(
    server: actix_web::dev::ServerHandle,
    health: Arc<HealthState>,
    sockets: Arc<http::websocket::Sockets>,
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
    info!(grace_s, websockets = sockets.open(), "listeners closed; finishing in-flight requests");
    // WebSockets finish their requests in flight, then close with 1001.
    sockets.shut_down();
    let graceful = server.stop(true);
    tokio::select! {
        () = graceful => info!("drained"),
        _ = terminate.recv() => { warn!("second signal: stopping now"); server.stop(false).await }
        _ = interrupt.recv() => { warn!("second signal: stopping now"); server.stop(false).await }
    }
}
