//! The memory tier: moka, bounded by the bytes its values hold, every
//! entry living at most the TTL.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;

/// A cached value and the model it came from (for invalidation by model).
#[derive(Clone, Debug)]
pub struct Stored {
    pub model: Arc<str>,
    pub value: Arc<[u8]>,
}

pub type MemoryTier = Cache<String, Stored>;

pub fn memory_tier(capacity_bytes: u64, ttl: Duration) -> MemoryTier {
    Cache::builder()
        .max_capacity(capacity_bytes)
        .weigher(|key: &String, stored: &Stored| {
            u32::try_from(key.len() + stored.model.len() + stored.value.len() + 64).unwrap_or(u32::MAX)
        })
        .time_to_live(ttl)
        .support_invalidation_closures()
        .eviction_listener(|_, _, cause| {
            if cause == RemovalCause::Size {
                metrics::counter!("blaze_cache_evictions_total", "tier" => "memory").increment(1);
            }
        })
        .build()
}
