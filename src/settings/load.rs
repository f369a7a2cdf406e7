//! Loading the layers and checking every key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat, Map, Source, Value, ValueKind};

use super::check::check_model;
use super::Settings;

const DEFAULT_YAML: &str = include_str!("../../config/default.yaml");

/// The profile overlays compiled into the binary.
pub const PROFILES: &[(&str, &str)] = &[
    ("development", include_str!("../../config/development.yaml")),
    ("production", include_str!("../../config/production.yaml")),
    ("gpu", include_str!("../../config/gpu.yaml")),
    ("minimal", include_str!("../../config/minimal.yaml")),
];

const ENV_PREFIX: &str = "BLAZE";
const ENV_SEPARATOR: &str = "__";

/// Where the configuration comes from, besides the compiled-in defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    pub profile: Option<String>,
    pub file: Option<PathBuf>,
    /// The process environment; only `BLAZE__*` variables are read.
    pub environment: HashMap<String, String>,
}

/// One invalid key (or unreadable layer), and the layer that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub origin: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} (set in {}): {}", self.key, self.origin, self.problem)
    }
}

/// Every problem of a configuration that does not load, as one error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);

struct Layer {
    origin: String,
    config: Config,
}

impl ConfigSources {
    /// Every layer in order, each parsed on its own so that a key can be
    /// traced to the layer that set it.
    fn layers(&self) -> Result<Vec<Layer>, Vec<ConfigError>> {
        let mut layers = Vec::new();
        let mut errors = Vec::new();
        let mut add = |origin: String, source: Result<Config, config::ConfigError>| match source {
            Ok(config) => layers.push(Layer { origin, config }),
            Err(error) => {
                errors.push(ConfigError { key: "(file)".to_owned(), origin, problem: error.to_string() })
            }
        };
        add("config/default.yaml".to_owned(), yaml(DEFAULT_YAML));
        let mut profile_error = None;
        if let Some(profile) = &self.profile {
            match PROFILES.iter().find(|(name, _)| name == profile) {
                Some((name, text)) => add(format!("config/{name}.yaml"), yaml(text)),
                None => {
                    profile_error = Some(ConfigError {
                        key: "profile".to_owned(),
                        origin: "--profile or BLAZE_PROFILE".to_owned(),
                        problem: format!(
                            "unknown profile `{profile}`; expected one of {}",
                            PROFILES.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
                        ),
                    })
                }
            }
        }
        if let Some(path) = &self.file {
            let origin = path.display().to_string();
            let source = match std::fs::read_to_string(path) {
                Ok(text) => yaml(&text),
                Err(error) => Err(config::ConfigError::Message(format!("cannot read the file: {error}"))),
            };
            add(origin, source);
        }
        let environment = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .source(Some(self.environment.clone().into_iter().collect()));
        add("the environment".to_owned(), Config::builder().add_source(environment).build());
        errors.extend(profile_error);
        if errors.is_empty() {
            Ok(layers)
        } else {
            Err(errors)
        }
    }
}

fn yaml(text: &str) -> Result<Config, config::ConfigError> {
    Config::builder().add_source(File::from_str(text, FileFormat::Yaml)).build()
}

impl Settings {
    /// Loads and checks every layer; on failure returns every problem found.
    pub fn load(sources: &ConfigSources) -> Result<Self, Vec<ConfigError>> {
        let layers = sources.layers()?;
        let leaves_by_layer: Vec<BTreeMap<String, Value>> =
            layers.iter().map(|layer| leaves(&layer.config)).collect();
        let origins: Vec<String> = layers.iter().map(|layer| layer.origin.clone()).collect();
        let origin_of = |key: &str| {
            // A table's key (guard.categories) is set where any key under it is.
            let prefix = format!("{key}.");
            let index = leaves_by_layer.iter().rposition(|leaves| {
                leaves.contains_key(key)
                    || leaves
                        .range(prefix.clone()..)
                        .next()
                        .is_some_and(|(leaf, _)| leaf.starts_with(&prefix))
            });
            match index {
                Some(index) if origins[index] == "the environment" => format!(
                    "environment variable {ENV_PREFIX}{ENV_SEPARATOR}{}",
                    key.to_uppercase().replace('.', ENV_SEPARATOR)
                ),
                Some(index) => origins[index].clone(),
                None => "an unknown layer".to_owned(),
            }
        };

        let mut builder = Config::builder();
        for layer in &layers {
            builder = builder.add_source(layer.config.clone());
        }
        let merged_config = builder.build().map_err(|error| {
            vec![ConfigError {
                key: "(all)".to_owned(),
                origin: "the merged layers".to_owned(),
                problem: error.to_string(),
            }]
        })?;
        let merged = leaves(&merged_config);
        let mut errors: Vec<ConfigError> = merged
            .iter()
            .filter_map(|(key, value)| {
                check_key(key, value).err().map(|problem| ConfigError {
                    key: key.clone(),
                    origin: origin_of(key),
                    problem,
                })
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }

        let settings: Settings = merged_config.try_deserialize().map_err(|error| {
            vec![ConfigError {
                key: "(all)".to_owned(),
                origin: "the merged layers".to_owned(),
                problem: error.to_string(),
            }]
        })?;
        errors.extend(settings.validate().into_iter().map(|(key, problem)| ConfigError {
            origin: origin_of(key),
            key: key.to_owned(),
            problem,
        }));
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(errors)
        }
    }

    /// Range checks that types alone cannot express, by key.
    fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut require = |ok: bool, key: &'static str, problem: &str| {
            if !ok {
                problems.push((key, problem.to_owned()));
            }
        };
        let server = &self.server;
        require(!server.host.trim().is_empty(), "server.host", "must not be empty");
        require(server.workers <= 1024, "server.workers", "must be at most 1024 (0 means one per core)");
        require(server.max_connections >= 1, "server.max_connections", "must be at least 1");
        require(server.max_request_bytes >= 1024, "server.max_request_bytes", "must be at least 1024");
        require(server.request_timeout_s >= 1, "server.request_timeout_s", "must be at least 1");
        require(server.keep_alive_s <= 3600, "server.keep_alive_s", "must be at most 3600");
        require(server.drain_delay_s <= 300, "server.drain_delay_s", "must be at most 300");
        require(server.shutdown_grace_s <= 3600, "server.shutdown_grace_s", "must be at most 3600");

        let monitoring = &self.monitoring;
        require(
            monitoring.collection_interval_s >= 1,
            "monitoring.collection_interval_s",
            "must be at least 1",
        );
        require(monitoring.probe_interval_s >= 1, "monitoring.probe_interval_s", "must be at least 1");
        require(
            monitoring.retention_s >= monitoring.collection_interval_s,
            "monitoring.retention_s",
            "must be at least monitoring.collection_interval_s",
        );
        require(
            monitoring.retention_s / monitoring.collection_interval_s.max(1) <= 100_000,
            "monitoring.retention_s",
            "keeps more than 100000 rollups; raise monitoring.collection_interval_s",
        );
        problems.extend(self.proxy_and_body_problems());
        problems.extend(self.identity_problems());
        problems.extend(self.rate_limit_problems());
        problems.extend(self.cache_problems());
        problems.extend(self.guard_problems());
        problems.extend(self.governance_problems());
        problems.extend(self.oidc_problems());
        problems.extend(self.gateway_problems());
        problems.extend(self.telemetry_problems());
        problems.extend(self.logging_problems());
        let validation = &self.validation;
        for (key, value) in [
            ("validation.max_messages", validation.max_messages),
            ("validation.max_text_chars", validation.max_text_chars),
            ("validation.max_embedding_inputs", validation.max_embedding_inputs),
            ("validation.max_tokens", validation.max_tokens),
        ] {
            if value == 0 {
                problems.push((key, "must be at least 1".to_owned()));
            }
        }
        let websocket = &self.websocket;
        let mut check = |ok: bool, key: &'static str, problem: &str| {
            if !ok {
                problems.push((key, problem.to_owned()));
            }
        };
        for (key, value) in [
            ("websocket.max_frame_bytes", websocket.max_frame_bytes),
            ("websocket.max_in_flight", websocket.max_in_flight),
            ("websocket.max_connections", websocket.max_connections),
            ("websocket.max_connections_per_key", websocket.max_connections_per_key),
            ("websocket.max_unauthenticated", websocket.max_unauthenticated),
        ] {
            check(value >= 1, key, "must be at least 1");
        }
        check(websocket.max_frame_bytes >= 1024, "websocket.max_frame_bytes", "must be at least 1024");
        check(
            websocket.slow_client_timeout_ms >= 10,
            "websocket.slow_client_timeout_ms",
            "must be at least 10",
        );
        check((1..=300).contains(&websocket.auth_timeout_s), "websocket.auth_timeout_s", "must be 1 to 300");
        check(websocket.missed_pongs >= 1, "websocket.missed_pongs", "must be at least 1");
        check((1..=3600).contains(&self.models.load_wait_s), "models.load_wait_s", "must be 1 to 3600");
        for (id, spec) in &self.models.catalog {
            problems.extend(check_model(id, spec).into_iter().map(|problem| ("models.catalog", problem)));
        }
        problems
    }
}

/// Checks one key against the schema: the defaults with only that key
/// replaced must still deserialize.
fn check_key(key: &str, value: &Value) -> Result<(), String> {
    Config::builder()
        .add_source(File::from_str(DEFAULT_YAML, FileFormat::Yaml))
        .set_override(key, value.clone())
        .and_then(|builder| builder.build())
        .and_then(Config::try_deserialize::<Settings>)
        .map(|_| ())
        .map_err(|error| describe(&error.to_string()))
}

/// config's messages name the key themselves; keep only the problem.
fn describe(message: &str) -> String {
    let message = message.split(" for key `").next().unwrap_or(message);
    message.replacen("unknown field", "unknown key", 1)
}

/// Tables whose entries are checked whole: a model of the catalog or a
/// route is only valid with its required keys together.
const UNIT_TABLES: &[&str] = &["models.catalog", "gateway.routes"];

/// Every leaf of a layer (a scalar, a list, or an entry of a unit table),
/// by dotted path.
fn leaves(config: &Config) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, table: &Map<String, Value>, into: &mut BTreeMap<String, Value>) {
        for (name, value) in table {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            match &value.kind {
                ValueKind::Table(inner) if !inner.is_empty() && !UNIT_TABLES.contains(&prefix) => {
                    walk(&path, inner, into)
                }
                _ => {
                    into.insert(path, value.clone());
                }
            }
        }
    }
    let mut into = BTreeMap::new();
    if let Ok(table) = config.collect() {
        walk("", &table, &mut into);
    }
    into
}
