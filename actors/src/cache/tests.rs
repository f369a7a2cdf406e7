//! The tiers against the real Redis (127.0.0.1:6379, or a redis-server of
//! the test's own where it is killed) and a real SQLite file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;

use super::*;
use crate::test_redis::OwnRedis;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn options(directory: Option<&std::path::Path>, redis_url: Option<&str>) -> CacheOptions {
    CacheOptions {
        ttl: Duration::from_secs(60),
        memory_bytes: 1 << 20,
        disk_directory: directory.map(std::path::Path::to_path_buf),
        disk_bytes: 1 << 20,
        redis_url: redis_url.map(str::to_owned),
        redis_timeout: Duration::from_millis(300),
        redis_max_value_bytes: 64 * 1024,
    }
}

/// A key no earlier run used (the Redis tier outlives test runs).
fn key(model: &str) -> CacheKey {
    CacheKey::new("/v1/test", model, "tester", &serde_json::json!({"run": uuid::Uuid::new_v4().to_string()}))
}

#[test]
fn keys_hash_every_part_and_ignore_field_order() {
    let fields = serde_json::json!({"a": 1, "b": [1, 2]});
    let same: serde_json::Value = serde_json::from_str(r#"{"b": [1, 2], "a": 1}"#).unwrap();
    let base = CacheKey::new("/v1/chat/completions", "m", "user:1", &fields);
    assert_eq!(base, CacheKey::new("/v1/chat/completions", "m", "user:1", &same));
    assert_eq!(base.id.len(), 64);
    for other in [
        CacheKey::new("/v1/completions", "m", "user:1", &fields),
        CacheKey::new("/v1/chat/completions", "n", "user:1", &fields),
        CacheKey::new("/v1/chat/completions", "m", "user:2", &fields),
        CacheKey::new("/v1/chat/completions", "m", "user:1", &serde_json::json!({"a": 2, "b": [1, 2]})),
    ] {
        assert_ne!(base.id, other.id);
    }
}

#[actix_rt::test]
async fn identical_concurrent_misses_compute_once() {
    let cache = ResponseCache::open(&options(None, None)).unwrap();
    let key = key("m");
    let computed = Arc::new(AtomicUsize::new(0));
    let lookups = (0..50).map(|_| {
        let (cache, key, computed) = (cache.clone(), key.clone(), computed.clone());
        async move {
            cache
                .get_or_compute(&key, async move {
                    computed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, String>(b"answer".to_vec())
                })
                .await
                .unwrap()
        }
    });
    let results = futures_util::future::join_all(lookups).await;
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    assert!(results.iter().all(|(value, _)| &**value == b"answer"));
    let misses = results.iter().filter(|(_, lookup)| *lookup == Lookup::Miss).count();
    assert_eq!(misses, 1);
    // Errors are not cached: the next caller computes again.
    let failing = self::key("m");
    let error = cache.get_or_compute(&failing, async { Err::<Vec<u8>, _>("engine down".to_owned()) }).await;
    assert_eq!(error.unwrap_err().as_str(), "engine down");
    let (value, lookup) =
        cache.get_or_compute(&failing, async { Ok::<_, String>(b"x".to_vec()) }).await.unwrap();
    assert_eq!((&*value, lookup), (&b"x"[..], Lookup::Miss));
}

#[actix_rt::test]
async fn the_disk_tier_survives_a_restart_and_stays_within_its_bytes() {
    let directory = tempfile::tempdir().unwrap();
    let key = key("m");
    {
        let cache = ResponseCache::open(&options(Some(directory.path()), None)).unwrap();
        cache.put(&key, b"kept on disk".to_vec()).await;
        cache.flush().await;
    }
    let cache = ResponseCache::open(&options(Some(directory.path()), None)).unwrap();
    let (value, tier) = cache.get(&key).await.expect("found after the restart");
    assert_eq!((&*value, tier), (&b"kept on disk"[..], Tier::Disk));
    assert_eq!(cache.get(&key).await.unwrap().1, Tier::Memory, "promoted");

    let mut small = options(Some(directory.path()), None);
    small.disk_bytes = 10 * 1024;
    let bounded_directory = tempfile::tempdir().unwrap();
    small.disk_directory = Some(bounded_directory.path().to_path_buf());
    let bounded = ResponseCache::open(&small).unwrap();
    let keys: Vec<CacheKey> = (0..20).map(|_| self::key("m")).collect();
    for key in &keys {
        bounded.put(key, vec![7u8; 1024]).await;
    }
    bounded.flush().await;
    bounded.forget_memory();
    let on_disk = futures_util::future::join_all(keys.iter().map(|key| bounded.get(key))).await;
    let kept = on_disk.iter().filter(|found| found.is_some()).count();
    assert!((1..=10).contains(&kept), "{kept} of 20 entries of 1 KiB in 10 KiB");
    assert!(on_disk.last().unwrap().is_some(), "the newest entry stays");
    assert!(on_disk.first().unwrap().is_none(), "the oldest went first");
}

#[actix_rt::test]
async fn entries_expire_with_the_ttl_in_every_tier() {
    let directory = tempfile::tempdir().unwrap();
    let mut short = options(Some(directory.path()), Some(REDIS_URL));
    short.ttl = Duration::from_millis(300);
    let cache = ResponseCache::open(&short).unwrap();
    let key = key("m");
    cache.put(&key, b"brief".to_vec()).await;
    cache.flush().await;
    assert_eq!(cache.get(&key).await.unwrap().1, Tier::Memory);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(cache.get(&key).await.is_none(), "gone from memory, Redis and disk");
}

#[actix_rt::test]
async fn redis_shares_entries_between_replicas_compressed_and_capped() {
    let writer = ResponseCache::open(&options(None, Some(REDIS_URL))).unwrap();
    let reader = ResponseCache::open(&options(None, Some(REDIS_URL))).unwrap();
    let key = key("m");
    let text = "a compressible answer ".repeat(1_000).into_bytes();
    writer.put(&key, text.clone()).await;
    let mut found = None;
    for _ in 0..50 {
        found = reader.get(&key).await;
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (value, tier) = found.expect("Redis at 127.0.0.1:6379 holds the entry");
    assert_eq!((&*value, tier), (&text[..], Tier::Redis));
    // 22 KB compress under the 64 KiB cap; 200 KB of noise do not.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let big = self::key("m");
    writer.put(&big, noise).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(reader.get(&big).await.is_none(), "over the cap: not in Redis");
    assert!(writer.get(&big).await.is_some(), "still in the writer's memory");
}

#[actix_rt::test]
async fn a_redis_outage_skips_its_tier_and_nothing_fails() {
    let mut redis = OwnRedis::on_free_port();
    let url = redis.url();
    let directory = tempfile::tempdir().unwrap();
    let cache = ResponseCache::open(&options(Some(directory.path()), Some(&url))).unwrap();
    let before = key("m");
    let mut stored = false;
    for _ in 0..50 {
        cache.put(&before, b"before".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let other = ResponseCache::open(&options(None, Some(&url))).unwrap();
        if other.get(&before).await.is_some() {
            stored = true;
            break;
        }
    }
    assert!(stored, "the test's redis-server took the entry");

    redis.kill();
    let during = key("m");
    let (value, lookup) =
        cache.get_or_compute(&during, async { Ok::<_, String>(b"computed".to_vec()) }).await.unwrap();
    assert_eq!((&*value, lookup), (&b"computed"[..], Lookup::Miss), "inference answers");
    cache.flush().await;
    cache.forget_memory();
    assert_eq!(cache.get(&during).await.unwrap().1, Tier::Disk, "the disk tier still serves");
    let _restarted = OwnRedis::start(redis.port);
    let mut back = false;
    for _ in 0..100 {
        cache.probe_redis().await;
        if cache.redis_up() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the probe finds Redis back");
}

#[actix_rt::test]
async fn invalidations_reach_every_tier_and_other_replicas() {
    let directory = tempfile::tempdir().unwrap();
    let model = format!("model-{}", uuid::Uuid::new_v4().simple());
    let here = ResponseCache::open(&options(Some(directory.path()), Some(REDIS_URL))).unwrap();
    let there_directory = tempfile::tempdir().unwrap();
    let there = ResponseCache::open(&options(Some(there_directory.path()), Some(REDIS_URL))).unwrap();
    let _actor =
        CacheActor::new(there.clone(), Some(REDIS_URL.to_owned()), Duration::from_millis(300)).start();
    tokio::time::sleep(Duration::from_millis(300)).await; // the actor subscribes
    let (first, second, other) = (key(&model), key(&model), key("another-model"));
    for cache in [&here, &there] {
        for key in [&first, &second, &other] {
            cache.put(key, b"value".to_vec()).await;
        }
        cache.flush().await;
    }
    here.invalidate(Invalidation::Key(first.id.clone())).await;
    assert!(here.get(&first).await.is_none());
    here.invalidate(Invalidation::Model(model.clone())).await;
    assert!(here.get(&second).await.is_none());
    assert!(here.get(&other).await.is_some(), "another model's entry stays");
    let mut dropped = false;
    for _ in 0..50 {
        there.flush().await;
        if there.get(&second).await.is_none() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "the other replica dropped its memory and disk entries");
    assert!(there.get(&other).await.is_some());
    here.invalidate(Invalidation::Key(other.id.clone())).await;
}

#[actix_rt::test]
async fn the_redis_tier_reports_its_entries_and_stored_bytes() {
    let redis = OwnRedis::on_free_port();
    let url = redis.url();
    let cache = ResponseCache::open(&options(None, Some(&url))).unwrap();
    let text = "a compressible answer ".repeat(1_000).into_bytes();
    let mut sizes = None;
    for _ in 0..50 {
        for model in ["a", "b", "c"] {
            cache
                .put(&CacheKey::new("/v1/test", model, "tester", &serde_json::json!({})), text.clone())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        sizes = cache.publish_redis_sizes().await;
        if sizes.is_some_and(|sizes| sizes.entries == 3) {
            break;
        }
    }
    let sizes = sizes.expect("the test's redis-server answers");
    assert_eq!(sizes.entries, 3, "three entries, counted once each");
    assert!(sizes.bytes > 0 && sizes.bytes < 3 * text.len() as u64, "compressed bytes: {sizes:?}");
    cache.invalidate(Invalidation::All).await;
    assert_eq!(cache.publish_redis_sizes().await.map(|sizes| sizes.entries), Some(0));
}
