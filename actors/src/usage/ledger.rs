//! The usage ledger's writer: requests push their record into a shared
//! buffer (never waiting on the store: a full buffer drops the record and
//! counts it) and one task writes them in batches, when a batch is full or
//! its interval has passed, whichever comes first. A request wakes the
//! writer only when its record completes a batch, not for every record:
//! a wake per request is a context switch per request, which on a loaded
//! server costs more than the write. A crash loses at most the records of
//! the last `flush_interval`; a graceful stop flushes. A failed write is
//! retried at the next interval, the rows kept up to the buffer's size.
//! The same task prunes rows past `retention_days`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{GovernanceStore, UsageRecord};
use crate::auth::now_ms;

#[derive(Debug, Clone, Copy)]
pub struct LedgerOptions {
    /// Rows per write, at most.
    pub batch_size: usize,
    /// The longest a record waits for its batch.
    pub flush_interval: Duration,
    /// Records waiting to be written, at most; one more is dropped.
    pub buffer: usize,
    /// Rows older than this are pruned; 0 keeps them forever.
    pub retention_days: u32,
    pub prune_interval: Duration,
}

/// What requests and the writer share.
struct Shared {
    records: Mutex<Vec<UsageRecord>>,
    /// A batch is full.
    full: Notify,
    options: LedgerOptions,
}

/// The handle requests record through.
pub struct Ledger {
    shared: Arc<Shared>,
    /// Asks the writer to write everything now; answered once written.
    flushes: mpsc::Sender<oneshot::Sender<()>>,
}

impl Ledger {
    /// Starts the writer on the current runtime.
    pub fn start(store: Arc<dyn GovernanceStore>, options: LedgerOptions) -> Arc<Self> {
        let shared = Arc::new(Shared { records: Mutex::new(Vec::new()), full: Notify::new(), options });
        let (flushes, requests) = mpsc::channel(16);
        let writer = Writer { store, shared: shared.clone(), requests, pending: Vec::new() };
        #[expect(
            clippy::disallowed_methods,
            reason = "the ledger's writer lives as long as the server; a stop flushes it first"
        )]
        tokio::spawn(writer.run());
        Arc::new(Self { shared, flushes })
    }

    /// Hands a record to the writer; never waits on the store.
    pub fn record(&self, record: UsageRecord) {
        let options = &self.shared.options;
        let mut records = self.shared.records.lock();
        if records.len() >= options.buffer {
            drop(records);
            metrics::counter!("blaze_usage_records_dropped_total", "reason" => "buffer_full").increment(1);
            return;
        }
        records.push(record);
        let completes_a_batch = records.len() == options.batch_size;
        drop(records);
        if completes_a_batch {
            self.shared.full.notify_one();
        }
    }

    /// Waits until every record handed over before this call is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.flushes.send(done).await.is_ok() {
            let _ = written.await;
        }
    }
}

struct Writer {
    store: Arc<dyn GovernanceStore>,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<oneshot::Sender<()>>,
    /// Rows taken from the buffer, and rows a failed write left.
    pending: Vec<UsageRecord>,
}

impl Writer {
    async fn run(mut self) {
        let options = self.shared.options;
        let mut prune = tokio::time::interval(options.prune_interval.max(Duration::from_secs(1)));
        let mut flush = tokio::time::interval(options.flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shared.full.notified() => self.write().await,
                _ = flush.tick() => self.write().await,
                request = self.requests.recv() => match request {
                    Some(done) => {
                        self.write().await;
                        let _ = done.send(());
                    }
                    // The ledger is gone: write what is left and end.
                    None => {
                        self.write().await;
                        return;
                    }
                },
                _ = prune.tick() => self.prune().await,
            }
        }
    }

    /// Writes everything buffered, in batches of `batch_size`.
    async fn write(&mut self) {
        let taken = std::mem::take(&mut *self.shared.records.lock());
        self.pending.extend(taken);
        let batch_size = self.shared.options.batch_size.max(1);
        while !self.pending.is_empty() {
            let size = self.pending.len().min(batch_size);
            let batch: Arc<Vec<UsageRecord>> = Arc::new(self.pending.drain(..size).collect());
            let started = Instant::now();
            match self.store.insert_usage(batch.clone()).await {
                Ok(()) => {
                    metrics::counter!("blaze_usage_records_written_total").increment(batch.len() as u64);
                    metrics::histogram!("blaze_usage_write_seconds").record(started.elapsed().as_secs_f64());
                }
                Err(error) => {
                    metrics::counter!("blaze_usage_write_failures_total").increment(1);
                    tracing::warn!(%error, rows = batch.len(), "the usage ledger could not write; kept for the next interval");
                    // Kept ahead of newer rows, up to the buffer's size.
                    let room = self.shared.options.buffer.saturating_sub(self.pending.len());
                    let dropped = batch.len().saturating_sub(room);
                    if dropped > 0 {
                        metrics::counter!("blaze_usage_records_dropped_total", "reason" => "store_unavailable")
                            .increment(dropped as u64);
                    }
                    let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| shared.as_ref().clone());
                    self.pending.splice(0..0, batch.into_iter().skip(dropped));
                    return;
                }
            }
        }
    }

    async fn prune(&self) {
        let retention_days = self.shared.options.retention_days;
        if retention_days == 0 {
            return;
        }
        let before = now_ms() - i64::from(retention_days) * 86_400_000;
        match self.store.prune_usage(before).await {
            Ok(rows) if rows > 0 => tracing::info!(rows, "pruned usage rows past retention"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning the usage ledger failed"),
        }
    }
}
