//! The cluster-wide backend: one EVALSHA per check (the script in
//! [`super::gcra`]), every key under the subject's hash tag so a check
//! stays on one Redis Cluster slot, every key with a TTL, every call
//! bounded by an explicit timeout.

use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::Client;
use fred::types::scripts::Script;

use super::core::{Bucket, Verdict};
use super::gcra;
use crate::redis::{client_builder, Connection, RedisError};

/// Redis keys of this version of the scripts; a new script gets a new
/// prefix, so replicas of two versions never misread each other's keys.
const PREFIX: &str = "blaze:rl:v1";

pub struct RedisBuckets {
    client: Client,
    _connection: Connection,
    check: Script,
    settle: Script,
    timeout: Duration,
}

fn key(subject: &str, bucket: &Bucket) -> String {
    format!("{PREFIX}:{{{subject}}}:{}", bucket.name)
}

impl RedisBuckets {
    /// A client that connects in the background: a Redis that is down at
    /// start-up delays nothing (the fail mode applies until it is up).
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        let client = client_builder(url, timeout)?.build()?;
        let connection = Connection::open(&client);
        Ok(Self {
            client,
            _connection: connection,
            check: Script::from_lua(gcra::CHECK_SCRIPT),
            settle: Script::from_lua(gcra::SETTLE_SCRIPT),
            timeout,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = fred::prelude::FredResult<T>>,
    ) -> Result<T, RedisError> {
        crate::redis::bounded(self.timeout, call).await
    }

    pub async fn check(&self, subject: &str, buckets: &[Bucket]) -> Result<Verdict, RedisError> {
        let keys: Vec<String> = buckets.iter().map(|bucket| key(subject, bucket)).collect();
        let mut arguments = Vec::with_capacity(buckets.len() * 3);
        for bucket in buckets {
            arguments.push(bucket.pace.interval_us.to_string());
            arguments.push(bucket.pace.capacity_us.to_string());
            arguments.push(bucket.cost.to_string());
        }
        let reply: Vec<i64> =
            self.bounded(self.check.evalsha_with_reload(&self.client, keys, arguments)).await?;
        if reply.len() != 2 + 2 * buckets.len() {
            return Err(RedisError::UnexpectedReply { script: "check", numbers: reply.len() });
        }
        let standings = reply[2..]
            .chunks(2)
            .map(|pair| gcra::Standing { remaining: pair[0].max(0) as u64, reset_us: pair[1].max(0) as u64 })
            .collect();
        Ok(Verdict { admitted: reply[0] == 1, retry_after_us: reply[1].max(0) as u64, standings })
    }

    pub async fn settle(&self, subject: &str, buckets: &[Bucket], delta: i64) -> Result<(), RedisError> {
        let keys: Vec<String> = buckets.iter().map(|bucket| key(subject, bucket)).collect();
        let mut arguments = vec![delta.to_string()];
        arguments.extend(buckets.iter().map(|bucket| bucket.pace.interval_us.to_string()));
        self.bounded(self.settle.evalsha_with_reload::<i64, _, _>(&self.client, keys, arguments))
            .await
            .map(drop)
    }

    /// Whether Redis answers now.
    pub async fn ping(&self) -> bool {
        self.bounded(self.client.ping::<String>(None)).await.is_ok()
    }

    /// Deletes every bucket of `subject` (tests, and an admin reset).
    pub async fn forget(&self, subject: &str, buckets: &[Bucket]) -> Result<(), RedisError> {
        let keys: Vec<String> = buckets.iter().map(|bucket| key(subject, bucket)).collect();
        self.bounded(self.client.del::<i64, _>(keys)).await.map(drop)
    }
}
