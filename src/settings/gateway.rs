//! The gateway's settings: the catalog's `kind: upstream` entries (other
//! OpenAI-compatible servers Blaze forwards to) and the `gateway` section
//! (routes from a public model id to targets, retries, ejection, probes).
//!
//! The catalog holds both kinds under `models.catalog`; they are read
//! apart here, so everything that loads local models keeps seeing only
//! [`ModelSpec`]s.

use std::collections::BTreeMap;

use blaze_actors::router::{ModelKind, ModelSpec};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ModelsSettings, Settings};

/// The one value of an upstream's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    Upstream,
}

/// Another OpenAI-compatible server, as configured under
/// `models.catalog.<id>` with `kind: upstream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub kind: UpstreamKind,
    /// Its API root, up to and including the version (`https://host/v1`).
    pub base_url: String,
    /// Its name for the model; empty sends the catalog id.
    #[serde(default)]
    pub model: String,
    /// The environment variable holding its API key (sent as a bearer
    /// token); never printed or logged.
    #[serde(default)]
    pub api_key_env: String,
    /// Or a file holding it (a mounted secret), read at start.
    #[serde(default)]
    pub api_key_file: String,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// From the request sent to its answer's headers (and, for a stream,
    /// its first event); past it another target is tried.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// The whole exchange, a stream included.
    #[serde(default = "default_total_timeout_ms")]
    pub total_timeout_ms: u64,
    /// Requests in flight to it at once (connections it is given).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A local chat model whose tokenizer counts the tokens of an answer
    /// that does not report its usage; empty estimates 4 bytes a token.
    #[serde(default)]
    pub tokenizer: String,
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

fn default_first_byte_timeout_ms() -> u64 {
    30_000
}

fn default_total_timeout_ms() -> u64 {
    600_000
}

fn default_max_connections() -> usize {
    256
}

impl UpstreamSpec {
    /// The model name sent upstream.
    pub fn upstream_model<'a>(&'a self, id: &'a str) -> &'a str {
        if self.model.is_empty() {
            id
        } else {
            &self.model
        }
    }
}

/// How a route picks among its healthy targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// At random, in proportion to the weights.
    #[default]
    Weighted,
    /// The fewest requests in flight per unit of weight.
    LeastOutstanding,
    /// The lowest recent latency (to the first byte), of two drawn by weight.
    LowestLatency,
}

/// One target of a route: a catalog model (local or upstream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub model: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// A public model id served by other models, as configured under
/// `gateway.routes.<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub targets: Vec<TargetSpec>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Tried in order, each once, when every target failed or none is
    /// healthy: catalog models.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Answers of near requests (chat and completions), off unless set.
    #[serde(default)]
    pub semantic_cache: Option<SemanticCacheSpec>,
}

/// A route's semantic cache: a request whose final turn embeds near a
/// cached request's (same route, parameters, earlier turns and caller's
/// scope) gets that request's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticCacheSpec {
    /// Cosine similarity a cached request must reach, 0 to 1.
    #[serde(default = "default_similarity_threshold")]
    pub similarity_threshold: f32,
    /// The local embedding model of the catalog that embeds the texts.
    #[serde(default = "default_semantic_model")]
    pub embedding_model: String,
    /// Entries the in-memory index holds; the oldest go first.
    #[serde(default = "default_semantic_entries")]
    pub max_entries: usize,
    /// Also conversations of several turns (their earlier turns must
    /// match exactly). Off: only single-turn requests, because a later
    /// turn's meaning depends on the turns before it.
    #[serde(default)]
    pub multi_turn: bool,
}

fn default_similarity_threshold() -> f32 {
    0.9
}

fn default_semantic_model() -> String {
    "all-minilm-l6-v2".to_owned()
}

fn default_semantic_entries() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub routes: BTreeMap<String, RouteSpec>,
    /// Attempts of one request across a route's targets, the first
    /// included (fallbacks come after them).
    pub max_attempts: u32,
    /// Retries may add at most this share of the requests, percent.
    pub retry_budget_percent: u32,
    /// Retries allowed per second whatever the budget (a quiet route
    /// still retries).
    pub min_retries_per_second: u32,
    /// Failures in a row after which a target is taken out.
    pub eject_after_failures: u32,
    /// How long it stays out the first time; doubled each time it fails
    /// again when let back, up to the maximum.
    pub eject_backoff_ms: u64,
    pub eject_max_backoff_ms: u64,
    /// The active probe of each upstream (`GET <base_url>/models`); 0
    /// turns it off.
    pub probe_interval_s: u64,
}

/// One entry of `models.catalog`: a local model or an upstream.
#[derive(Debug, Clone, PartialEq)]
enum CatalogEntry {
    Local(ModelSpec),
    Upstream(UpstreamSpec),
}

impl<'de> Deserialize<'de> for CatalogEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The kind decides the shape: read the entry whole, then as one.
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("kind").and_then(serde_json::Value::as_str) == Some("upstream") {
            serde_json::from_value(value).map(CatalogEntry::Upstream).map_err(D::Error::custom)
        } else {
            serde_json::from_value(value).map(CatalogEntry::Local).map_err(D::Error::custom)
        }
    }
}

impl Serialize for CatalogEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CatalogEntry::Local(spec) => spec.serialize(serializer),
            CatalogEntry::Upstream(spec) => spec.serialize(serializer),
        }
    }
}

/// `models` as written: one catalog of both kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelsFile {
    index_url: String,
    load_wait_s: u64,
    catalog: BTreeMap<String, CatalogEntry>,
}

impl From<ModelsFile> for ModelsSettings {
    fn from(file: ModelsFile) -> Self {
        let mut catalog = BTreeMap::new();
        let mut upstreams = BTreeMap::new();
        for (id, entry) in file.catalog {
            match entry {
                CatalogEntry::Local(spec) => {
                    catalog.insert(id, spec);
                }
                CatalogEntry::Upstream(spec) => {
                    upstreams.insert(id, spec);
                }
            }
        }
        Self { index_url: file.index_url, load_wait_s: file.load_wait_s, catalog, upstreams }
    }
}

impl From<ModelsSettings> for ModelsFile {
    fn from(settings: ModelsSettings) -> Self {
        let local = settings.catalog.into_iter().map(|(id, spec)| (id, CatalogEntry::Local(spec)));
        let upstream = settings.upstreams.into_iter().map(|(id, spec)| (id, CatalogEntry::Upstream(spec)));
        Self {
            index_url: settings.index_url,
            load_wait_s: settings.load_wait_s,
            catalog: local.chain(upstream).collect(),
        }
    }
}

impl Settings {
    pub(super) fn gateway_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let models = &self.models;
        for (id, upstream) in &models.upstreams {
            problems
                .extend(upstream_problems(models, id, upstream).into_iter().map(|p| ("models.catalog", p)));
        }
        let gateway = &self.gateway;
        let is_model = |id: &str| models.catalog.contains_key(id) || models.upstreams.contains_key(id);
        for (id, route) in &gateway.routes {
            let mut problem = |text: String| problems.push(("gateway.routes", format!("{id}: {text}")));
            if is_model(id) {
                problem("a route's id must not be a catalog model's".to_owned());
            }
            if route.targets.is_empty() {
                problem("needs at least one target".to_owned());
            }
            for target in &route.targets {
                if !is_model(&target.model) {
                    problem(format!("target `{}` is not in models.catalog", target.model));
                }
                if target.weight == 0 || target.weight > 10_000 {
                    problem(format!("target `{}`: weight must be 1 to 10000", target.model));
                }
            }
            for fallback in &route.fallbacks {
                if !is_model(fallback) {
                    problem(format!("fallback `{fallback}` is not in models.catalog"));
                }
            }
            let kinds: Vec<_> = route
                .targets
                .iter()
                .map(|target| target.model.as_str())
                .chain(route.fallbacks.iter().map(String::as_str))
                .filter_map(|model| models.catalog.get(model).map(|spec| spec.kind))
                .collect();
            if kinds.contains(&ModelKind::Chat) && kinds.contains(&ModelKind::Embedding) {
                problem("mixes chat and embedding models".to_owned());
            }
            if let Some(semantic) = &route.semantic_cache {
                if !(semantic.similarity_threshold > 0.0 && semantic.similarity_threshold <= 1.0) {
                    problem("semantic_cache.similarity_threshold must be above 0 and at most 1".to_owned());
                }
                if models
                    .catalog
                    .get(&semantic.embedding_model)
                    .is_none_or(|spec| spec.kind != ModelKind::Embedding)
                {
                    problem(format!(
                        "semantic_cache.embedding_model `{}` is not an embedding model of the catalog",
                        semantic.embedding_model
                    ));
                }
                if !(1..=1_000_000).contains(&semantic.max_entries) {
                    problem("semantic_cache.max_entries must be 1 to 1000000".to_owned());
                }
                if kinds.contains(&ModelKind::Embedding) {
                    problem("semantic_cache serves chat and completions routes only".to_owned());
                }
            }
        }
        let mut require = |ok: bool, key: &'static str, problem: &str| {
            if !ok {
                problems.push((key, problem.to_owned()));
            }
        };
        require((1..=10).contains(&gateway.max_attempts), "gateway.max_attempts", "must be 1 to 10");
        require(gateway.retry_budget_percent <= 1000, "gateway.retry_budget_percent", "must be 0 to 1000");
        require(gateway.eject_after_failures >= 1, "gateway.eject_after_failures", "must be at least 1");
        require(gateway.eject_backoff_ms >= 10, "gateway.eject_backoff_ms", "must be at least 10");
        require(
            gateway.eject_max_backoff_ms >= gateway.eject_backoff_ms,
            "gateway.eject_max_backoff_ms",
            "must be at least gateway.eject_backoff_ms",
        );
        problems
    }
}

fn upstream_problems(models: &ModelsSettings, id: &str, upstream: &UpstreamSpec) -> Vec<String> {
    let mut problems = Vec::new();
    match reqwest::Url::parse(&upstream.base_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            if !url.username().is_empty() || url.password().is_some() {
                problems.push(format!("{id}: base_url must not hold credentials; use api_key_env"));
            }
        }
        _ => problems.push(format!("{id}: base_url must be an http:// or https:// URL")),
    }
    if !upstream.api_key_env.is_empty() && !upstream.api_key_file.is_empty() {
        problems.push(format!("{id}: set api_key_env or api_key_file, not both"));
    }
    for (name, value) in [
        ("connect_timeout_ms", upstream.connect_timeout_ms),
        ("first_byte_timeout_ms", upstream.first_byte_timeout_ms),
        ("total_timeout_ms", upstream.total_timeout_ms),
    ] {
        if value == 0 {
            problems.push(format!("{id}: {name} must be at least 1"));
        }
    }
    if upstream.first_byte_timeout_ms > upstream.total_timeout_ms {
        problems.push(format!("{id}: first_byte_timeout_ms must be at most total_timeout_ms"));
    }
    if !(1..=100_000).contains(&upstream.max_connections) {
        problems.push(format!("{id}: max_connections must be 1 to 100000"));
    }
    if !upstream.tokenizer.is_empty()
        && models.catalog.get(&upstream.tokenizer).is_none_or(|spec| spec.kind != ModelKind::Chat)
    {
        problems.push(format!("{id}: tokenizer `{}` is not a chat model of the catalog", upstream.tokenizer));
    }
    problems
}
