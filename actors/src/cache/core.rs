//! The cache handlers call directly: one lookup through the tiers, single
//! flight for identical misses, stores that reach the slow tiers off the
//! request path, and invalidation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::disk::DiskTier;
use super::memory::{memory_tier, MemoryTier, Stored};
use super::redis::{RedisSizes, RedisTier};
use crate::files::FileError;
use crate::redis::RedisError;

#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub ttl: Duration,
    pub memory_bytes: u64,
    /// The disk tier's directory; `None`: no disk tier.
    pub disk_directory: Option<PathBuf>,
    pub disk_bytes: u64,
    /// The Redis tier; `None`: none.
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
    /// Largest value the Redis tier takes, compressed.
    pub redis_max_value_bytes: usize,
}

/// What to drop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", content = "value", rename_all = "snake_case")]
pub enum Invalidation {
    All,
    Model(String),
    /// One entry, by the id `x-blaze-cache-key` reported.
    Key(String),
}

/// Where an answer lives: its model, and a hash of everything that makes
/// it what it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub model: Arc<str>,
    /// 64 hex digits.
    pub id: String,
}

impl CacheKey {
    /// The key of `endpoint`'s answer for `model`, seen by `scope` (a
    /// user's id, or one shared scope), given the request `fields` that
    /// change the output. serde_json sorts object keys, so equal requests
    /// hash equal whatever order their fields came in.
    pub fn new(endpoint: &str, model: &str, scope: &str, fields: &serde_json::Value) -> Self {
        let mut hash = Sha256::new();
        for part in ["blaze cache v1", endpoint, model, scope] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hash.update(fields.to_string().as_bytes());
        Self { model: model.into(), id: hex::encode(hash.finalize()) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
    Disk,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
            Tier::Disk => "disk",
        }
    }
}

/// What a request found, as `x-blaze-cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit(Tier),
    Miss,
    /// Not looked up: not deterministic, or the client said no-cache.
    Bypass,
    /// Answered with the answer of a near request (the semantic cache).
    Semantic,
}

impl Lookup {
    pub fn header(self) -> &'static str {
        match self {
            Lookup::Hit(Tier::Memory) => "hit-memory",
            Lookup::Hit(Tier::Redis) => "hit-redis",
            Lookup::Hit(Tier::Disk) => "hit-disk",
            Lookup::Miss => "miss",
            Lookup::Bypass => "bypass",
            Lookup::Semantic => "hit-semantic",
        }
    }
}

fn count(tier: Tier, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!("blaze_cache_requests_total", "tier" => tier.name(), "result" => result).increment(1);
}

/// One tier's lookup: counted, and a span in the request's trace (the
/// server's `blaze::trace` spans; free when traces are off).
async fn look_in<T>(tier: Tier, lookup: impl std::future::Future<Output = Option<T>>) -> Option<T> {
    let span = tracing::info_span!(
        target: "blaze::trace",
        "cache.lookup",
        blaze.cache.tier = tier.name(),
        blaze.cache.hit = tracing::field::Empty,
    );
    let found = lookup.instrument(span.clone()).await;
    span.record("blaze.cache.hit", found.is_some());
    count(tier, found.is_some());
    found
}

/// Why the cache cannot open at start-up.
#[derive(Debug, thiserror::Error)]
pub enum CacheOpenError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: {source}", path.display())]
    Database { path: PathBuf, source: rusqlite::Error },
    /// The disk tier's writer thread cannot start.
    #[error("cannot start the disk cache's writer: {0}")]
    Writer(std::io::Error),
}

pub struct ResponseCache {
    memory: MemoryTier,
    redis: Option<Arc<RedisTier>>,
    disk: Option<DiskTier>,
    ttl: Duration,
}

impl ResponseCache {
    pub fn open(options: &CacheOptions) -> Result<Arc<Self>, CacheOpenError> {
        let redis = match &options.redis_url {
            Some(url) => {
                Some(Arc::new(RedisTier::connect(url, options.redis_timeout, options.redis_max_value_bytes)?))
            }
            None => None,
        };
        let disk = match &options.disk_directory {
            Some(directory) => Some(DiskTier::open(directory, options.disk_bytes)?),
            None => None,
        };
        Ok(Arc::new(Self {
            memory: memory_tier(options.memory_bytes, options.ttl),
            redis,
            disk,
            ttl: options.ttl,
        }))
    }

    /// Looks a key up through every tier, promoting what a slower tier
    /// holds into the faster ones.
    pub async fn get(&self, key: &CacheKey) -> Option<(Arc<[u8]>, Tier)> {
        if let Some(stored) = look_in(Tier::Memory, self.memory.get(&key.id)).await {
            return Some((stored.value, Tier::Memory));
        }
        let (stored, tier) = self.lower(key).await?;
        self.memory.insert(key.id.clone(), stored.clone()).await;
        Some((stored.value, tier))
    }

    /// The answer for `key`: from a tier, or computed once however many
    /// identical requests miss at the same time (they wait for the first
    /// one and are served from memory). Errors are not cached.
    pub async fn get_or_compute<F, E>(
        &self,
        key: &CacheKey,
        compute: F,
    ) -> Result<(Arc<[u8]>, Lookup), Arc<E>>
    where
        F: std::future::Future<Output = Result<Vec<u8>, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(stored) = look_in(Tier::Memory, self.memory.get(&key.id)).await {
            return Ok((stored.value, Lookup::Hit(Tier::Memory)));
        }
        let source = Mutex::new(None);
        let load = async {
            if let Some((stored, tier)) = self.lower(key).await {
                *source.lock() = Some(Lookup::Hit(tier));
                return Ok(stored);
            }
            let stored = Stored { model: key.model.clone(), value: compute.await?.into() };
            *source.lock() = Some(Lookup::Miss);
            self.store_lower(key, &stored, true);
            Ok(stored)
        };
        let entry = self.memory.entry(key.id.clone()).or_try_insert_with(load).await?;
        let lookup = match entry.is_fresh() {
            true => source.lock().take().unwrap_or(Lookup::Miss),
            false => {
                metrics::counter!("blaze_cache_coalesced_total").increment(1);
                Lookup::Hit(Tier::Memory)
            }
        };
        Ok((entry.into_value().value, lookup))
    }

    /// Redis comes back into use once it answers.
    pub async fn probe_redis(&self) {
        if let Some(redis) = &self.redis {
            redis.probe().await;
        }
    }

    /// Whether the Redis tier is in use now.
    pub fn redis_up(&self) -> bool {
        self.redis.as_ref().is_some_and(|redis| redis.is_up())
    }

    /// Drops expired disk entries and publishes the tiers' sizes.
    pub fn sweep(&self) {
        if let Some(disk) = &self.disk {
            disk.sweep();
        }
    }

    pub fn publish_sizes(&self) {
        metrics::gauge!("blaze_cache_bytes", "tier" => "memory").set(self.memory.weighted_size() as f64);
        metrics::gauge!("blaze_cache_entries", "tier" => "memory").set(self.memory.entry_count() as f64);
        if let Some(disk) = &self.disk {
            metrics::gauge!("blaze_cache_bytes", "tier" => "disk").set(disk.bytes() as f64);
            metrics::gauge!("blaze_cache_entries", "tier" => "disk").set(disk.entries() as f64);
        }
        if let Some(redis) = &self.redis {
            metrics::gauge!("blaze_cache_redis_up").set(if redis.is_up() { 1.0 } else { 0.0 });
        }
    }

    /// Counts the shared Redis tier (a scan, so the actor does it less
    /// often than [`Self::publish_sizes`]) and publishes it; every replica
    /// reports the same cluster-wide figures.
    pub async fn publish_redis_sizes(&self) -> Option<RedisSizes> {
        let sizes = self.redis.as_ref()?.sizes().await?;
        metrics::gauge!("blaze_cache_bytes", "tier" => "redis").set(sizes.bytes as f64);
        metrics::gauge!("blaze_cache_entries", "tier" => "redis").set(sizes.entries as f64);
        Some(sizes)
    }

    /// Waits until the disk tier holds every write sent so far (tests, and
    /// shutdown).
    pub async fn flush(&self) {
        if let Some(disk) = &self.disk {
            disk.flush().await;
        }
    }

    /// Stores an answer in every tier: memory now, the others off the
    /// request path.
    pub async fn put(&self, key: &CacheKey, value: Vec<u8>) {
        let stored = Stored { model: key.model.clone(), value: value.into() };
        self.memory.insert(key.id.clone(), stored.clone()).await;
        self.store_lower(key, &stored, true);
    }

    async fn lower(&self, key: &CacheKey) -> Option<(Stored, Tier)> {
        if let Some(redis) = &self.redis {
            if let Some(value) = look_in(Tier::Redis, redis.get(&key.model, &key.id)).await {
                return Some((Stored { model: key.model.clone(), value: value.into() }, Tier::Redis));
            }
        }
        let disk = self.disk.as_ref()?;
        let stored = look_in(Tier::Disk, disk.get(&key.id)).await?;
        self.store_lower(key, &stored, false);
        Some((stored, Tier::Disk))
    }

    /// Writes to Redis (on its own task: a cache write lost at shutdown
    /// costs nothing) and, if `to_disk`, to the disk writer's queue.
    fn store_lower(&self, key: &CacheKey, stored: &Stored, to_disk: bool) {
        let ttl = self.ttl;
        if let (true, Some(disk)) = (to_disk, &self.disk) {
            disk.put(&key.id, stored.clone(), ttl.as_millis() as i64);
        }
        if let Some(redis) = self.redis.as_ref().filter(|redis| redis.is_up()) {
            let (redis, model, id, value) =
                (redis.clone(), key.model.clone(), key.id.clone(), stored.value.clone());
            #[expect(
                clippy::disallowed_methods,
                reason = "a write-behind of one entry to Redis off the request path; lost at shutdown, it is only a miss later"
            )]
            tokio::spawn(async move { redis.put(&model, &id, &value, ttl).await });
        }
    }

    /// Drops entries everywhere, and tells the other replicas.
    pub async fn invalidate(&self, invalidation: Invalidation) {
        self.drop_local(&invalidation).await;
        if let Some(redis) = &self.redis {
            redis.remove(&invalidation).await;
        }
        if let Some(disk) = &self.disk {
            disk.flush().await;
        }
    }

    /// Drops the whole memory tier (invalidations may have been missed).
    pub fn forget_memory(&self) {
        self.memory.invalidate_all();
    }

    /// Applies another replica's invalidation: memory and disk only.
    pub async fn drop_local(&self, invalidation: &Invalidation) {
        match invalidation {
            Invalidation::All => self.memory.invalidate_all(),
            Invalidation::Model(model) => {
                let model = model.clone();
                let _ = self.memory.invalidate_entries_if(move |_, stored| *stored.model == *model);
            }
            Invalidation::Key(id) => self.memory.invalidate(id).await,
        }
        if let Some(disk) = &self.disk {
            disk.remove(invalidation.clone());
        }
    }
}
