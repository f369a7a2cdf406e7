//! The Cache: deterministic answers kept in three tiers. Memory (moka,
//! bounded in bytes, with a TTL) in front of Redis (shared by replicas,
//! values compressed and capped) in front of a disk tier (SQLite under the
//! data dir, bounded in bytes, surviving restarts). Reads go memory, Redis,
//! disk and promote what they find; writes reach memory at once and the
//! slower tiers off the request path. Identical concurrent misses compute
//! once. The actor sweeps the disk tier, probes Redis while it is down,
//! and applies other replicas' invalidations.

mod actor;
mod core;
mod disk;
mod memory;
mod redis;
mod semantic;
mod semantic_share;
#[cfg(test)]
mod tests;

pub use self::actor::CacheActor;
pub use self::core::{CacheKey, CacheOpenError, CacheOptions, Invalidation, Lookup, ResponseCache, Tier};
pub use self::redis::RedisSizes;
pub use self::semantic::{dot, vetoed, SemanticEntry, SemanticHit, SemanticIndex};
pub use self::semantic_share::{SemanticNews, SemanticShare};
