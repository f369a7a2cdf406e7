//! The Redis tier, shared by replicas: values zstd-compressed, capped in
//! size, expiring with the TTL; every call bounded by a timeout. While
//! Redis does not answer the tier is skipped (counted) until the actor's
//! probe finds it back. Invalidations are published on a channel so every
//! replica drops its own memory and disk entries too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface, PubsubInterface};
use fred::prelude::{Client, Expiration};
use fred::types::scripts::Script;
use futures_util::StreamExt;

use super::core::Invalidation;
use crate::redis::{client_builder, Connection, RedisError};

const PREFIX: &str = "blaze:cache:v1";
/// The channel invalidations travel on.
pub const CHANNEL: &str = "blaze_cache";
/// Keys counted per SCAN step and per size script call.
const SCAN_BATCH: usize = 500;
/// A size count stops here, so a huge shared cache costs a bounded scan;
/// the figures then read "at least".
const COUNT_AT_MOST: u64 = 200_000;
/// The stored (compressed) bytes of the keys it is given, in one call.
const STORED_BYTES_SCRIPT: &str = "local bytes = 0\n\
for _, key in ipairs(KEYS) do bytes = bytes + redis.call('STRLEN', key) end\n\
return bytes";

pub struct RedisTier {
    client: Client,
    _connection: Connection,
    timeout: Duration,
    max_value_bytes: usize,
    up: AtomicBool,
    stored_bytes: Script,
}

/// What the Redis tier holds, for every replica together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisSizes {
    pub entries: u64,
    /// Compressed, as stored.
    pub bytes: u64,
}

fn key(model: &str, id: &str) -> String {
    format!("{PREFIX}:{model}:{id}")
}

/// Glob metacharacters in a model id match only themselves.
fn escape_glob(text: &str) -> String {
    text.chars()
        .flat_map(|character| match character {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', character],
            other => vec![other],
        })
        .collect()
}

impl RedisTier {
    pub fn connect(url: &str, timeout: Duration, max_value_bytes: usize) -> Result<Self, RedisError> {
        let client = client_builder(url, timeout)?.build()?;
        let connection = Connection::open(&client);
        Ok(Self {
            client,
            _connection: connection,
            timeout,
            max_value_bytes,
            up: AtomicBool::new(true),
            stored_bytes: Script::from_lua(STORED_BYTES_SCRIPT),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = fred::prelude::FredResult<T>>,
    ) -> Option<T> {
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(error)) => RedisError::Redis(error),
            Err(_) => RedisError::Timeout(self.timeout),
        };
        metrics::counter!("blaze_cache_errors_total", "tier" => "redis").increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = %outcome,
                "cache: Redis is unreachable; its tier is skipped until it answers"
            );
        }
        None
    }

    fn skipped(&self) -> bool {
        let skipped = !self.is_up();
        if skipped {
            metrics::counter!("blaze_cache_redis_skipped_total").increment(1);
        }
        skipped
    }

    pub async fn get(&self, model: &str, id: &str) -> Option<Vec<u8>> {
        if self.skipped() {
            return None;
        }
        let compressed: Option<Vec<u8>> = self.bounded(self.client.get(key(model, id))).await?;
        zstd::bulk::decompress(&compressed?, 64 * self.max_value_bytes.max(1)).ok()
    }

    /// Stores a value unless it is larger than the cap once compressed.
    pub async fn put(&self, model: &str, id: &str, value: &[u8], ttl: Duration) {
        if self.skipped() {
            return;
        }
        let Ok(compressed) = zstd::bulk::compress(value, 3) else { return };
        if compressed.len() > self.max_value_bytes {
            metrics::counter!("blaze_cache_oversized_total", "tier" => "redis").increment(1);
            return;
        }
        let expiry = Expiration::PX(ttl.as_millis().max(1) as i64);
        self.bounded(self.client.set::<(), _, _>(key(model, id), compressed, Some(expiry), None, false))
            .await;
    }

    /// Deletes the matching keys, and tells the other replicas.
    pub async fn remove(&self, invalidation: &Invalidation) {
        let pattern = match invalidation {
            Invalidation::All => format!("{PREFIX}:*"),
            Invalidation::Model(model) => format!("{PREFIX}:{}:*", escape_glob(model)),
            Invalidation::Key(id) => format!("{PREFIX}:*:{}", escape_glob(id)),
        };
        let removal = async {
            let mut keys = self.client.scan_buffered(pattern, Some(SCAN_BATCH as u32), None);
            let mut batch = Vec::new();
            while let Some(key) = keys.next().await {
                batch.push(key?);
                if batch.len() == SCAN_BATCH {
                    self.client.del::<i64, _>(std::mem::take(&mut batch)).await?;
                }
            }
            if !batch.is_empty() {
                self.client.del::<i64, _>(batch).await?;
            }
            Ok(())
        };
        // A whole scan may take longer than one call: allow it ten.
        match tokio::time::timeout(self.timeout * 10, removal).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let error: fred::error::Error = error;
                tracing::warn!(error = %error, "cache: cannot delete Redis entries");
            }
            Err(_) => tracing::warn!("cache: deleting Redis entries took too long"),
        }
        if let Ok(payload) = serde_json::to_string(invalidation) {
            self.bounded(self.client.publish::<i64, _, _>(CHANNEL, payload)).await;
        }
    }

    /// Counts the tier's entries and stored bytes: a SCAN of its keys and
    /// one script call per batch, stopped at [`COUNT_AT_MOST`] keys and
    /// bounded in time. None while Redis does not answer.
    pub async fn sizes(&self) -> Option<RedisSizes> {
        if !self.is_up() {
            return None;
        }
        let counting = async {
            let mut sizes = RedisSizes { entries: 0, bytes: 0 };
            let mut keys = self.client.scan_buffered(format!("{PREFIX}:*"), Some(SCAN_BATCH as u32), None);
            let mut batch = Vec::with_capacity(SCAN_BATCH);
            while let Some(key) = keys.next().await {
                batch.push(key?);
                if batch.len() == SCAN_BATCH {
                    self.count(std::mem::take(&mut batch), &mut sizes).await?;
                    if sizes.entries >= COUNT_AT_MOST {
                        return Ok(sizes);
                    }
                }
            }
            if !batch.is_empty() {
                self.count(batch, &mut sizes).await?;
            }
            Ok::<_, fred::error::Error>(sizes)
        };
        match tokio::time::timeout(self.timeout * 10, counting).await {
            Ok(Ok(sizes)) => Some(sizes),
            _ => None,
        }
    }

    async fn count(
        &self,
        batch: Vec<fred::types::Key>,
        sizes: &mut RedisSizes,
    ) -> fred::prelude::FredResult<()> {
        sizes.entries += batch.len() as u64;
        let bytes: i64 = self.stored_bytes.evalsha_with_reload(&self.client, batch, ()).await?;
        sizes.bytes += bytes.max(0) as u64;
        Ok(())
    }

    /// Back to the tier when Redis answers again.
    pub async fn probe(&self) -> bool {
        if self.is_up() {
            return true;
        }
        let answered =
            matches!(tokio::time::timeout(self.timeout, self.client.ping::<String>(None)).await, Ok(Ok(_)));
        if answered {
            self.up.store(true, Ordering::Release);
            tracing::info!("cache: Redis answers again; its tier is back");
        }
        answered
    }
}
