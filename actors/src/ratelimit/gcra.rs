//! The generic cell rate algorithm, the one piece of math both backends
//! run: the in-process one here in Rust, the Redis one as the Lua script
//! below, line for line the same, so a limit means the same thing on one
//! process and on a cluster.
//!
//! A bucket remembers one number, its theoretical arrival time (TAT): the
//! moment it would be full again. A unit costs `interval` (the period over
//! the rate); a request is admitted if, after paying, the TAT is no more
//! than `capacity` (the burst times the interval) ahead of now. No fixed
//! windows, so no double burst at a window edge.

/// One bucket's settings, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Time one unit costs.
    pub interval_us: f64,
    /// How far ahead of now the TAT may run: the burst, as time.
    pub capacity_us: f64,
}

impl Pace {
    /// `per_minute` units a minute, up to `burst` of them at once.
    pub fn new(per_minute: u64, burst: u64) -> Self {
        let interval_us = 60_000_000.0 / per_minute.max(1) as f64;
        Self { interval_us, capacity_us: interval_us * burst.max(1) as f64 }
    }

    /// Whether `cost` units could ever fit: a request larger than the
    /// burst waits forever.
    pub fn fits(&self, cost: u64) -> bool {
        cost as f64 * self.interval_us <= self.capacity_us + 0.5
    }
}

/// A bucket after a look: its TAT if the request is admitted, and what the
/// client is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    /// The TAT if admitted.
    pub paid: f64,
    pub admitted: bool,
    /// How long until it would be admitted (0 when it is).
    pub retry_after_us: f64,
}

/// Looks at a bucket whose TAT is `tat` (or none: full) at `now`.
pub fn look(pace: Pace, tat: Option<f64>, now: f64, cost: u64) -> Look {
    let start = tat.map_or(now, |tat| tat.max(now));
    let paid = start + cost as f64 * pace.interval_us;
    let over = paid - now - pace.capacity_us;
    // Half a microsecond of slack absorbs float rounding of the interval.
    let admitted = over <= 0.5;
    Look { paid, admitted, retry_after_us: if admitted { 0.0 } else { over } }
}

/// What a client is told about a bucket whose TAT is `level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Units left before the bucket refuses.
    pub remaining: u64,
    /// Microseconds until the bucket is full again.
    pub reset_us: u64,
}

pub fn standing(pace: Pace, level: f64, now: f64) -> Standing {
    let ahead = (level - now).max(0.0);
    let remaining = ((pace.capacity_us - ahead) / pace.interval_us + 1e-9).floor().max(0.0);
    Standing { remaining: remaining as u64, reset_us: ahead.ceil() as u64 }
}

/// The TAT after correcting a paid reservation by `delta` units (negative:
/// a refund); `None` when the bucket is full again.
pub fn settle(pace: Pace, tat: Option<f64>, now: f64, delta: i64) -> Option<f64> {
    let start = tat.map_or(now, |tat| tat.max(now));
    let moved = start + delta as f64 * pace.interval_us;
    (moved > now).then_some(moved)
}

/// The Redis check, version 1: every bucket in KEYS at once, all or
/// nothing, on the Redis clock (so replicas' clocks do not matter).
/// ARGV holds three numbers a key: interval_us, capacity_us, cost.
/// Reply: admitted (0/1), retry_after_us, then remaining and reset_us per
/// key. Keys expire when their bucket is full again.
pub const CHECK_SCRIPT: &str = r"-- blaze rate limit check v1
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local admitted = 1
local retry = 0
local levels = {}
local paid = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[i * 3 - 2])
  local capacity = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  levels[i] = tat
  paid[i] = tat + cost * interval
  local over = paid[i] - now - capacity
  if over > 0.5 then
    admitted = 0
    if over > retry then retry = over end
  end
end
local reply = {admitted, math.ceil(retry)}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[i * 3 - 2])
  local capacity = tonumber(ARGV[i * 3 - 1])
  local level = levels[i]
  if admitted == 1 and paid[i] > levels[i] then
    level = paid[i]
    redis.call('SET', key, string.format('%.0f', level), 'PX', math.ceil((level - now) / 1000) + 1000)
  end
  local remaining = math.floor((capacity - (level - now)) / interval + 1e-9)
  if remaining < 0 then remaining = 0 end
  reply[#reply + 1] = remaining
  reply[#reply + 1] = math.ceil(level - now)
end
return reply
";

/// The Redis settlement, version 1: moves each bucket in KEYS by ARGV[1]
/// units (negative: a refund) at the interval ARGV[i + 1].
pub const SETTLE_SCRIPT: &str = r"-- blaze rate limit settle v1
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local delta = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local moved = tat + delta * tonumber(ARGV[i + 1])
  if moved > now then
    redis.call('SET', key, string.format('%.0f', moved), 'PX', math.ceil((moved - now) / 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end
return 1
";
