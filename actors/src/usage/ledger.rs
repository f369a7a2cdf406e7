//! The usage ledger's writer: requests hand their record over a bounded
//! channel (never waiting: a full buffer drops the record and counts it)
//! and one task writes them in batches, when a batch is full or its
//! interval has passed, whichever comes first. A crash loses at most the
//! records of the batch being gathered (one `flush_interval`); a graceful
//! stop flushes. A failed write is retried with the next batch, the rows
//! kept up to the buffer's size. The same task prunes rows past
//! `retention_days`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

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

#[expect(
    clippy::large_enum_variant,
    reason = "a flush is rare; boxing each record would cost an allocation per request"
)]
enum Message {
    Record(UsageRecord),
    /// Answered once everything sent before it is written (or failed).
    Flush(oneshot::Sender<()>),
}

/// The handle requests record through.
pub struct Ledger {
    sender: mpsc::Sender<Message>,
}

impl Ledger {
    /// Starts the writer on the current runtime.
    pub fn start(store: Arc<dyn GovernanceStore>, options: LedgerOptions) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(options.buffer.max(1));
        let writer = Writer { store, options, receiver, pending: Vec::new() };
        #[expect(
            clippy::disallowed_methods,
            reason = "the ledger's writer lives as long as the server; a stop flushes it first"
        )]
        tokio::spawn(writer.run());
        Arc::new(Self { sender })
    }

    /// Hands a record to the writer; never waits.
    pub fn record(&self, record: UsageRecord) {
        if self.sender.try_send(Message::Record(record)).is_err() {
            metrics::counter!("blaze_usage_records_dropped_total", "reason" => "buffer_full").increment(1);
        }
    }

    /// Waits until every record handed over before this call is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

struct Writer {
    store: Arc<dyn GovernanceStore>,
    options: LedgerOptions,
    receiver: mpsc::Receiver<Message>,
    /// Rows gathered, and rows a failed write left.
    pending: Vec<UsageRecord>,
}

impl Writer {
    async fn run(mut self) {
        let mut prune = tokio::time::interval(self.options.prune_interval.max(Duration::from_secs(1)));
        loop {
            let first = tokio::select! {
                message = self.receiver.recv() => message,
                _ = prune.tick() => {
                    self.prune().await;
                    continue;
                }
                // Rows a failed write left are tried again, traffic or not.
                () = tokio::time::sleep(self.options.flush_interval), if !self.pending.is_empty() => {
                    self.write().await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            let deadline = tokio::time::Instant::now() + self.options.flush_interval;
            let mut message = Some(first);
            loop {
                match message.take() {
                    Some(Message::Record(record)) => self.pending.push(record),
                    Some(Message::Flush(done)) => {
                        self.write().await;
                        let _ = done.send(());
                        break;
                    }
                    None => {}
                }
                if self.pending.len() >= self.options.batch_size {
                    self.write().await;
                    break;
                }
                tokio::select! {
                    next = self.receiver.recv() => match next {
                        Some(next) => message = Some(next),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        self.write().await;
                        break;
                    }
                }
            }
        }
        // Every sender is gone: write what is left.
        self.write().await;
    }

    async fn write(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let size = self.pending.len().min(self.options.batch_size.max(1) * 4);
        let batch: Vec<UsageRecord> = self.pending.drain(..size).collect();
        let started = Instant::now();
        match self.store.insert_usage(batch.clone()).await {
            Ok(()) => {
                metrics::counter!("blaze_usage_records_written_total").increment(batch.len() as u64);
                metrics::histogram!("blaze_usage_write_seconds").record(started.elapsed().as_secs_f64());
            }
            Err(error) => {
                metrics::counter!("blaze_usage_write_failures_total").increment(1);
                tracing::warn!(%error, rows = batch.len(), "the usage ledger could not write; kept for the next batch");
                // Kept ahead of newer rows, up to the buffer's size.
                let room = self.options.buffer.saturating_sub(self.pending.len());
                let dropped = batch.len().saturating_sub(room);
                if dropped > 0 {
                    metrics::counter!("blaze_usage_records_dropped_total", "reason" => "store_unavailable")
                        .increment(dropped as u64);
                }
                let kept = batch.into_iter().skip(dropped);
                self.pending.splice(0..0, kept);
            }
        }
    }

    async fn prune(&self) {
        if self.options.retention_days == 0 {
            return;
        }
        let before = now_ms() - i64::from(self.options.retention_days) * 86_400_000;
        match self.store.prune_usage(before).await {
            Ok(rows) if rows > 0 => tracing::info!(rows, "pruned usage rows past retention"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning the usage ledger failed"),
        }
    }
}
