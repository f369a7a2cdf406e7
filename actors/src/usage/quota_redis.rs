//! Quota counters in Redis: one script checks every counter a request
//! spends and spends them all or none, so replicas share the counts
//! exactly. A counter Redis does not hold (a new period, or a Redis that
//! lost its data) starts from what the ledger holds: the script says it is
//! missing, and the next call brings the ledger's sum to seed it with.

use std::time::Duration;

use fred::prelude::Client;
use fred::types::scripts::Script;

use super::quota::{Counter, Quotas};
use crate::auth::now_ms;
use crate::redis::{client_builder, Connection, RedisError};

/// Redis keys of this version of the scripts.
const PREFIX: &str = "blaze:quota:v1";

/// KEYS: the counters. ARGV, four per counter: limit, amount, TTL in ms,
/// and the seed ('' when the caller has none yet). Replies `{-1, i}` when
/// counter i is missing and unseeded, `{0, i, used}` when counter i would
/// overrun, else `{1, used after...}`.
const RESERVE_SCRIPT: &str = r"
local n = #KEYS
for i = 1, n do
  local base = (i - 1) * 4
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local seed = ARGV[base + 4]
    if seed == '' then return {-1, i} end
    redis.call('SET', KEYS[i], seed, 'PX', ARGV[base + 3])
  end
end
for i = 1, n do
  local base = (i - 1) * 4
  local used = tonumber(redis.call('GET', KEYS[i]))
  if used + tonumber(ARGV[base + 2]) > tonumber(ARGV[base + 1]) then return {0, i, used} end
end
local reply = {1}
for i = 1, n do
  reply[i + 1] = redis.call('INCRBY', KEYS[i], ARGV[(i - 1) * 4 + 2])
end
return reply
";

/// KEYS: counters; ARGV: the delta of each. A counter that expired is
/// left alone (its period is over).
const SETTLE_SCRIPT: &str = r"
for i = 1, #KEYS do
  if tonumber(ARGV[i]) ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], ARGV[i]) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 0
";

/// Why counters could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum QuotaFailure {
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("the ledger, to seed a counter: {0}")]
    Ledger(#[from] crate::auth::StoreError),
}

pub struct QuotaRedis {
    client: Client,
    _connection: Connection,
    reserve: Script,
    settle: Script,
    timeout: Duration,
}

fn key(counter: &Counter) -> String {
    format!("{PREFIX}:{}", counter.name)
}

/// A counter outlives its period by a day, so a late settlement finds it.
fn ttl_ms(counter: &Counter) -> i64 {
    (counter.resets_at - now_ms()).max(0) + 86_400_000
}

impl QuotaRedis {
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        let client = client_builder(url, timeout)?.build()?;
        let connection = Connection::open(&client);
        Ok(Self {
            client,
            _connection: connection,
            reserve: Script::from_lua(RESERVE_SCRIPT),
            settle: Script::from_lua(SETTLE_SCRIPT),
            timeout,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = fred::prelude::FredResult<T>>,
    ) -> Result<T, RedisError> {
        crate::redis::bounded(self.timeout, call).await
    }

    /// `Ok(used after)` per counter, or `Err((index, used))` of the first
    /// it would overrun.
    pub(super) async fn reserve(
        &self,
        quotas: &Quotas,
        counters: &[Counter],
        amounts: &[u64],
    ) -> Result<Result<Vec<u64>, (usize, u64)>, QuotaFailure> {
        let keys: Vec<String> = counters.iter().map(key).collect();
        let mut seeds: Option<Vec<u64>> = None;
        // Twice at most: the second call carries the ledger's seeds.
        for _ in 0..2 {
            let mut arguments = Vec::with_capacity(counters.len() * 4);
            for (index, (counter, amount)) in counters.iter().zip(amounts).enumerate() {
                arguments.push(counter.limit.to_string());
                arguments.push(amount.to_string());
                arguments.push(ttl_ms(counter).to_string());
                arguments.push(seeds.as_ref().map_or(String::new(), |seeds| seeds[index].to_string()));
            }
            let reply: Vec<i64> =
                self.bounded(self.reserve.evalsha_with_reload(&self.client, keys.clone(), arguments)).await?;
            match reply.as_slice() {
                [-1, _] if seeds.is_none() => {
                    seeds = Some(quotas.ledger_seeds(counters).await?);
                }
                [0, index, used] => {
                    let index = usize::try_from(*index - 1).unwrap_or(0).min(counters.len() - 1);
                    return Ok(Err((index, (*used).max(0) as u64)));
                }
                [1, used @ ..] if used.len() == counters.len() => {
                    return Ok(Ok(used.iter().map(|used| (*used).max(0) as u64).collect()));
                }
                _ => break,
            }
        }
        Err(RedisError::UnexpectedReply { script: "quota reserve", numbers: counters.len() }.into())
    }

    pub(super) async fn settle(&self, counters: &[Counter], deltas: &[i64]) -> Result<(), RedisError> {
        let keys: Vec<String> = counters.iter().map(key).collect();
        let arguments: Vec<String> = deltas.iter().map(i64::to_string).collect();
        self.bounded(self.settle.evalsha_with_reload::<i64, _, _>(&self.client, keys, arguments))
            .await
            .map(drop)
    }
}
