//! Statistics: what each finished request records (into a few sharded
//! recorders, so virtual users rarely meet on a lock), the per-second
//! timeline, and the summaries the report is made of. Latencies are HDR
//! histograms in microseconds. In open-model runs a request's latency is
//! measured from the moment the arrival schedule meant to send it, not from
//! when a connection was free to send it: the correction for coordinated
//! omission (the time from the actual send is kept as `service_ms`).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What a streamed answer showed.
#[derive(Debug, Default)]
pub struct StreamFigures {
    pub first_token: Option<Duration>,
    pub inter_token: Vec<Duration>,
    pub tokens: u64,
    /// From the first token to the last.
    pub generation: Duration,
}

/// One finished request.
#[derive(Debug)]
pub struct Outcome {
    pub request: usize,
    pub latency: Duration,
    pub service: Duration,
    /// None when the answer was the expected one.
    pub error: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub stream: Option<StreamFigures>,
}

fn histogram() -> Histogram<u64> {
    // Auto-resizing: it only grows as far as the slowest answer needs.
    let mut histogram = Histogram::new(3).unwrap_or_else(|_| unreachable_histogram());
    histogram.auto(true);
    histogram
}

#[allow(clippy::panic)]
fn unreachable_histogram() -> Histogram<u64> {
    panic!("three significant figures are within hdrhistogram's bounds")
}

fn micros(duration: Duration) -> u64 {
    (duration.as_micros() as u64).max(1)
}

#[derive(Debug)]
struct StreamStats {
    first_token: Histogram<u64>,
    inter_token: Histogram<u64>,
    /// Tokens per second of each stream, times 1000.
    tokens_per_s: Histogram<u64>,
    tokens: u64,
}

#[derive(Debug)]
struct RequestStats {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    bytes_sent: u64,
    bytes_received: u64,
    stream: Option<StreamStats>,
}

impl RequestStats {
    fn new() -> Self {
        Self {
            latency: histogram(),
            service: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            bytes_sent: 0,
            bytes_received: 0,
            stream: None,
        }
    }

    fn record(&mut self, outcome: Outcome) {
        let _ = self.latency.record(micros(outcome.latency));
        let _ = self.service.record(micros(outcome.service));
        self.bytes_sent += outcome.bytes_sent;
        self.bytes_received += outcome.bytes_received;
        match outcome.error {
            None => self.ok += 1,
            Some(kind) => *self.errors.entry(kind).or_default() += 1,
        }
        if let Some(figures) = outcome.stream {
            let stream = self.stream.get_or_insert_with(|| StreamStats {
                first_token: histogram(),
                inter_token: histogram(),
                tokens_per_s: histogram(),
                tokens: 0,
            });
            if let Some(first) = figures.first_token {
                let _ = stream.first_token.record(micros(first));
            }
            for gap in &figures.inter_token {
                let _ = stream.inter_token.record(micros(*gap));
            }
            stream.tokens += figures.tokens;
            if figures.tokens > 1 && !figures.generation.is_zero() {
                let rate = (figures.tokens - 1) as f64 / figures.generation.as_secs_f64();
                let _ = stream.tokens_per_s.record(((rate * 1000.0) as u64).max(1));
            }
        }
    }

    fn merge(&mut self, other: &RequestStats) {
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.ok += other.ok;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        if let Some(theirs) = &other.stream {
            let ours = self.stream.get_or_insert_with(|| StreamStats {
                first_token: histogram(),
                inter_token: histogram(),
                tokens_per_s: histogram(),
                tokens: 0,
            });
            let _ = ours.first_token.add(&theirs.first_token);
            let _ = ours.inter_token.add(&theirs.inter_token);
            let _ = ours.tokens_per_s.add(&theirs.tokens_per_s);
            ours.tokens += theirs.tokens;
        }
    }
}

/// What happened since the last tick, for the progress line and the
/// timeline.
#[derive(Debug)]
struct Interval {
    latency: Histogram<u64>,
    requests: u64,
    errors: u64,
}

impl Interval {
    fn new() -> Self {
        Self { latency: histogram(), requests: 0, errors: 0 }
    }
}

#[derive(Debug)]
struct Shard {
    requests: Vec<RequestStats>,
    interval: Interval,
}

/// The recorders a run's virtual users write into.
#[derive(Debug)]
pub struct Collector {
    shards: Vec<Mutex<Shard>>,
}

impl Collector {
    pub fn new(requests: usize, shards: usize) -> Self {
        let shard = || {
            Mutex::new(Shard {
                requests: (0..requests).map(|_| RequestStats::new()).collect(),
                interval: Interval::new(),
            })
        };
        Self { shards: (0..shards.max(1)).map(|_| shard()).collect() }
    }

    /// Records an outcome in the summaries if `measured` (not started in
    /// the warm-up), and in the current second if `shown`.
    pub fn record(&self, shard: usize, outcome: Outcome, measured: bool, shown: bool) {
        let mut shard = self.shards[shard % self.shards.len()].lock();
        if shown {
            shard.interval.requests += 1;
            shard.interval.errors += u64::from(outcome.error.is_some());
            let _ = shard.interval.latency.record(micros(outcome.latency));
        }
        if measured {
            let index = outcome.request;
            shard.requests[index].record(outcome);
        }
    }

    /// Takes what every shard saw since the last call.
    pub fn take_interval(&self, seconds: f64) -> Tick {
        let mut merged = Interval::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let _ = merged.latency.add(&shard.interval.latency);
            merged.requests += shard.interval.requests;
            merged.errors += shard.interval.errors;
            shard.interval.latency.reset();
            shard.interval.requests = 0;
            shard.interval.errors = 0;
        }
        let quantile = |q: f64| {
            if merged.requests == 0 {
                0.0
            } else {
                merged.latency.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Tick {
            t_s: 0.0,
            requests: merged.requests,
            errors: merged.errors,
            rate_per_s: merged.requests as f64 / seconds.max(1e-9),
            p50_ms: quantile(0.5),
            p90_ms: quantile(0.9),
            p99_ms: quantile(0.99),
        }
    }

    /// The summaries of every request (by name) and of the whole run.
    pub fn summaries(&self, names: &[String], seconds: f64) -> (Vec<Summary>, Summary) {
        let mut merged: Vec<RequestStats> = names.iter().map(|_| RequestStats::new()).collect();
        for shard in &self.shards {
            let shard = shard.lock();
            for (ours, theirs) in merged.iter_mut().zip(&shard.requests) {
                ours.merge(theirs);
            }
        }
        let mut total = RequestStats::new();
        for stats in &merged {
            total.merge(stats);
        }
        let summaries =
            names.iter().zip(&merged).map(|(name, stats)| summarize(name, stats, seconds)).collect();
        (summaries, summarize("all", &total, seconds))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

fn percentiles(histogram: &Histogram<u64>, scale: f64) -> Percentiles {
    if histogram.is_empty() {
        return Percentiles::default();
    }
    let at = |q: f64| histogram.value_at_quantile(q) as f64 / scale;
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p99_9: at(0.999),
        max: histogram.max() as f64 / scale,
        mean: histogram.mean() / scale,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub upper_ms: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamSummary {
    pub tokens: u64,
    pub ttft_ms: Percentiles,
    pub inter_token_ms: Percentiles,
    pub tokens_per_s: Percentiles,
    /// Time to first token in 40 equal buckets up to its p99.9.
    pub ttft_distribution: Vec<Bucket>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub name: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_ratio: f64,
    pub rate_per_s: f64,
    pub latency_ms: Percentiles,
    pub service_ms: Percentiles,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub stream: Option<StreamSummary>,
}

fn distribution(histogram: &Histogram<u64>) -> Vec<Bucket> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let low = histogram.min();
    let high = histogram.value_at_quantile(0.999).max(low + 1);
    let buckets = 40u64;
    let width = ((high - low) / buckets).max(1);
    let mut counts = vec![0u64; buckets as usize];
    for value in histogram.iter_recorded() {
        let position = ((value.value_iterated_to().saturating_sub(low)) / width).min(buckets - 1) as usize;
        counts[position] += value.count_at_value();
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(position, count)| Bucket {
            upper_ms: (low + width * (position as u64 + 1)) as f64 / 1000.0,
            count,
        })
        .collect()
}

fn summarize(name: &str, stats: &RequestStats, seconds: f64) -> Summary {
    let errors: u64 = stats.errors.values().sum();
    let requests = stats.ok + errors;
    Summary {
        name: name.to_owned(),
        requests,
        ok: stats.ok,
        errors,
        error_ratio: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
        rate_per_s: requests as f64 / seconds.max(1e-9),
        latency_ms: percentiles(&stats.latency, 1000.0),
        service_ms: percentiles(&stats.service, 1000.0),
        errors_by_kind: stats.errors.clone(),
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        stream: stats.stream.as_ref().map(|stream| StreamSummary {
            tokens: stream.tokens,
            ttft_ms: percentiles(&stream.first_token, 1000.0),
            inter_token_ms: percentiles(&stream.inter_token, 1000.0),
            tokens_per_s: percentiles(&stream.tokens_per_s, 1000.0),
            ttft_distribution: distribution(&stream.first_token),
        }),
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tick {
    pub t_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub rate_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(request: usize, millis: u64, error: Option<&str>) -> Outcome {
        Outcome {
            request,
            latency: Duration::from_millis(millis),
            service: Duration::from_millis(millis / 2),
            error: error.map(str::to_owned),
            bytes_sent: 10,
            bytes_received: 100,
            stream: None,
        }
    }

    #[test]
    fn shards_merge_into_per_request_and_total_summaries() {
        let collector = Collector::new(2, 3);
        for value in 1..=100 {
            collector.record(value as usize, outcome(0, value, None), true, true);
        }
        collector.record(0, outcome(1, 5, Some("429 rate_limit_exceeded")), true, true);
        collector.record(1, outcome(1, 5, None), false, true);
        collector.record(2, outcome(1, 5, None), false, false);
        let names = vec!["a".to_owned(), "b".to_owned()];
        let (requests, total) = collector.summaries(&names, 2.0);
        assert_eq!(requests[0].requests, 100);
        assert!((requests[0].latency_ms.p50 - 50.0).abs() < 0.1, "{:?}", requests[0].latency_ms);
        assert!((requests[0].latency_ms.p99 - 99.0).abs() < 0.1);
        assert_eq!(requests[0].rate_per_s, 50.0);
        assert_eq!(requests[1].errors_by_kind.get("429 rate_limit_exceeded"), Some(&1));
        assert_eq!(requests[1].requests, 1, "the warm-up outcome is not measured");
        assert_eq!(total.requests, 101);
        assert_eq!(total.bytes_received, 10_100);
        let tick = collector.take_interval(1.0);
        assert_eq!((tick.requests, tick.errors), (102, 1));
        assert_eq!(collector.take_interval(1.0).requests, 0);
    }
}
