//! Keys and users as the hot path reads them: a bounded cache with
//! lifetimes that coalesces store reads (moka), and in front of it a
//! plain sharded map of the records found recently. Every authenticated
//! request reads a key and a user; a front hit costs a shard's read lock
//! and a hash, where moka's costs its read log and clock reads.
//!
//! The front map never outlives what it copies: an entry is good for at
//! most a second, and only while no key or user changed since it was
//! read (any change, here or from another replica, moves a generation
//! counter that every entry must match). The change itself is applied to
//! moka before the counter moves, so a record read at the new count is
//! the new record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use moka::future::Cache;

use super::{Cached, Failure, Lifetimes};
use crate::auth::now_ms;
use crate::auth::store::StoreError;

/// How long a front entry is good for, at most (milliseconds): the
/// records' own lifetimes are moka's.
const FRONT_MS: i64 = 1000;

struct Front<T> {
    record: Arc<T>,
    generation: u64,
    until_ms: i64,
}

pub(super) struct Records<T> {
    cache: Cache<String, Cached<T>>,
    front: DashMap<String, Front<T>>,
    generation: AtomicU64,
    capacity: usize,
}

impl<T: Clone + Send + Sync + 'static> Records<T> {
    pub(super) fn new(capacity: u64, lifetimes: Lifetimes) -> Self {
        Self {
            cache: Cache::builder().max_capacity(capacity).expire_after(lifetimes).build(),
            front: DashMap::new(),
            generation: AtomicU64::new(0),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
        }
    }

    /// A record found recently, a cache hit, or one store read shared by
    /// every concurrent caller that missed (if `may_read` allows it: else
    /// [`Failure::NotCached`]); a store that cannot answer fails the
    /// lookup (closed).
    pub(super) async fn get<F>(
        &self,
        id: &str,
        may_read: impl FnOnce() -> bool,
        load: F,
    ) -> Result<Cached<T>, Failure>
    where
        F: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        // Read before the cache: a change after this read shows as a
        // newer generation than the entry written below.
        let generation = self.generation.load(Ordering::Acquire);
        let now = now_ms();
        if let Some(front) = self.front.get(id) {
            if front.generation == generation && now < front.until_ms {
                return Ok(Cached::Found(front.record.clone()));
            }
        }
        let found = match self.cache.get(id).await {
            Some(hit) => hit,
            None if !may_read() => return Err(Failure::NotCached),
            None => {
                let load = async move {
                    Ok::<_, StoreError>(
                        load.await?.map_or(Cached::Missing, |value| Cached::Found(Arc::new(value))),
                    )
                };
                self.cache.try_get_with(id.to_owned(), load).await.map_err(|_| Failure::StoreUnavailable)?
            }
        };
        // Only records that exist go in front: ids that do not are what
        // guessing produces, and stay in moka's bounded negative entries.
        if let Cached::Found(record) = &found {
            if self.front.len() >= self.capacity {
                self.front.clear();
            }
            let entry = Front { record: record.clone(), generation, until_ms: now.saturating_add(FRONT_MS) };
            self.front.insert(id.to_owned(), entry);
        }
        Ok(found)
    }

    /// Forgets one record (it changed).
    pub(super) async fn invalidate(&self, id: &str) {
        self.cache.invalidate(id).await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.front.remove(id);
    }

    /// Forgets every record (changes may have been missed).
    pub(super) fn invalidate_all(&self) {
        self.cache.invalidate_all();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.front.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn records() -> Records<String> {
        let lifetimes = Lifetimes { found: Duration::from_secs(60), missing: Duration::from_secs(60) };
        Records::new(100, lifetimes)
    }

    /// Reads `id` through `records`, counting the store reads in `reads`;
    /// the store holds `value` (or nothing).
    async fn read(
        records: &Records<String>,
        reads: &AtomicUsize,
        id: &str,
        value: Option<&str>,
    ) -> Option<String> {
        let load = async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok(value.map(str::to_owned))
        };
        match records.get(id, || true, load).await {
            Ok(Cached::Found(record)) => Some((*record).clone()),
            Ok(Cached::Missing) => None,
            Err(failure) => panic!("{failure:?}"),
        }
    }

    #[actix_rt::test]
    async fn a_change_is_seen_at_once_and_found_records_are_not_read_again() {
        let (records, reads) = (records(), AtomicUsize::new(0));
        assert_eq!(read(&records, &reads, "k1", Some("v1")).await.as_deref(), Some("v1"));
        assert_eq!(read(&records, &reads, "k1", Some("v1")).await.as_deref(), Some("v1"));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "a hit reads nothing");
        assert!(records.front.contains_key("k1"));

        records.invalidate("k1").await;
        assert_eq!(read(&records, &reads, "k1", Some("v2")).await.as_deref(), Some("v2"));
        assert_eq!(reads.load(Ordering::SeqCst), 2);

        // Another record's change retires every front entry (the generation
        // moved), but not what moka still holds: no store read.
        records.invalidate("other").await;
        assert_eq!(read(&records, &reads, "k1", Some("v3")).await.as_deref(), Some("v2"));
        assert_eq!(reads.load(Ordering::SeqCst), 2);

        records.invalidate_all();
        assert_eq!(read(&records, &reads, "k1", Some("v4")).await.as_deref(), Some("v4"));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[actix_rt::test]
    async fn unknown_ids_stay_out_of_the_front_map_and_it_stays_bounded() {
        let (records, reads) = (records(), AtomicUsize::new(0));
        assert_eq!(read(&records, &reads, "nobody", None).await, None);
        assert!(!records.front.contains_key("nobody"));
        for index in 0..250 {
            read(&records, &reads, &format!("k{index}"), Some("v")).await;
        }
        assert!(records.front.len() <= 100, "{}", records.front.len());
    }

    #[actix_rt::test]
    async fn a_record_read_before_a_change_is_never_served_after_it() {
        let records = records();
        // A lookup that started before the change (its generation read
        // then) and finished after it leaves an entry of the old
        // generation, which no later lookup takes.
        let stale = Front { record: Arc::new("old".to_owned()), generation: 0, until_ms: i64::MAX };
        records.invalidate("k1").await;
        records.front.insert("k1".to_owned(), stale);
        let reads = AtomicUsize::new(0);
        assert_eq!(read(&records, &reads, "k1", Some("new")).await.as_deref(), Some("new"));
    }
}
