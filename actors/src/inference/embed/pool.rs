//! An embedding model's worker pool: a bounded queue shared by its worker
//! threads, admission that sheds load at once when the queue is full, and
//! the batching loop each worker thread runs.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use tokio::sync::oneshot;

use super::bert::BertTokenizer;
use crate::inference::engine::{EmbeddingEngine, EngineError};
use crate::inference::pool::{Held, Lifecycle, Refused, WorkError, WorkerExit};

/// How a model's workers batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
}

/// The result of one embedding request: one vector per input, in order.
pub type EmbeddingResult = Result<Vec<Vec<f32>>, WorkError>;

pub(crate) struct EmbeddingJob {
    tokens: Vec<Vec<u32>>,
    reply: oneshot::Sender<EmbeddingResult>,
}

/// The state of one pool that its handles and its worker threads share:
/// the queue, the batching settings, and what the workers report back.
struct EmbeddingPoolState {
    model: String,
    sender: Sender<EmbeddingJob>,
    receiver: Receiver<EmbeddingJob>,
    settings: BatchSettings,
    tokenizer: Arc<BertTokenizer>,
    lifecycle: Lifecycle,
    /// Mean seconds per input lately, as f64 bits, for Retry-After.
    seconds_per_input: AtomicU64,
}

/// The handle the request path holds; cheap to clone.
#[derive(Clone)]
pub struct EmbeddingPool {
    state: Arc<EmbeddingPoolState>,
}

impl EmbeddingPool {
    pub fn new(model: &str, tokenizer: Arc<BertTokenizer>, settings: BatchSettings) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
        let state = EmbeddingPoolState {
            model: model.to_owned(),
            sender,
            receiver,
            settings,
            tokenizer,
            lifecycle: Lifecycle::default(),
            seconds_per_input: AtomicU64::new(0.002f64.to_bits()),
        };
        Self { state: Arc::new(state) }
    }

    pub fn model(&self) -> &str {
        &self.state.model
    }

    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.state.tokenizer
    }

    /// Whether a forward pass has succeeded on a worker of this pool.
    pub fn is_ready(&self) -> bool {
        self.state.lifecycle.is_ready()
    }

    /// Its lifecycle: closing it for an unload, how long it has been idle.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.state.lifecycle
    }

    /// Bytes its workers' engines hold (each worker its own copy).
    pub fn memory_bytes(&self) -> u64 {
        self.state.lifecycle.held_bytes()
    }

    /// Counts a worker's engine in [`EmbeddingPool::memory_bytes`] while
    /// the guard lives.
    pub(crate) fn hold(&self, engine: &dyn EmbeddingEngine) -> Held<'_> {
        self.state.lifecycle.hold(engine.memory_bytes())
    }

    pub fn queued(&self) -> usize {
        self.state.receiver.len()
    }

    /// Queues a request, or refuses it at once when the queue is full.
    pub fn submit(&self, tokens: Vec<Vec<u32>>) -> Result<oneshot::Receiver<EmbeddingResult>, Refused> {
        let (reply, receiver) = oneshot::channel();
        let job = EmbeddingJob { tokens, reply };
        self.state.lifecycle.admit(|| self.queue(job))?;
        Ok(receiver)
    }

    fn queue(&self, job: EmbeddingJob) -> Result<(), Refused> {
        match self.state.sender.try_send(job) {
            Ok(()) => {
                gauge!("blaze_inference_queue_depth", "model" => self.state.model.clone())
                    .set(self.queued() as f64);
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let queued = self.queued();
                let per_input = f64::from_bits(self.state.seconds_per_input.load(Ordering::Relaxed));
                let wait = (queued.max(1) as f64 * per_input * 4.0).ceil() as u64;
                counter!("blaze_inference_rejected_total", "model" => self.state.model.clone()).increment(1);
                Err(Refused::Full { queued, retry_after_s: wait.clamp(1, 60) })
            }
        }
    }

    /// The worker loop: batches queued requests and computes them until
    /// `stop` is set, or the pool is closed and its queue empty. Returns
    /// early after a panic in the engine, having failed only the requests
    /// of that batch.
    pub fn run_worker(&self, engine: &dyn EmbeddingEngine, stop: &AtomicBool) -> WorkerExit {
        let metrics = BatchMetrics::new(&self.state.model);
        let lifecycle = &self.state.lifecycle;
        while !stop.load(Ordering::Relaxed) {
            if lifecycle.is_closed() && self.state.receiver.is_empty() {
                return WorkerExit::Drained;
            }
            let Some(jobs) = self.next_batch(stop) else { continue };
            metrics.depth.set(self.queued() as f64);
            let jobs: Vec<EmbeddingJob> = jobs.into_iter().filter(|job| !job.reply.is_closed()).collect();
            if jobs.is_empty() {
                continue;
            }
            lifecycle.touch();
            let computed = self.compute(engine, jobs, &metrics);
            lifecycle.touch();
            if !computed {
                return WorkerExit::Panicked;
            }
        }
        WorkerExit::Stopped
    }

    /// Computes one batch, in chunks of `max_batch` inputs, and answers its
    /// jobs. False after a panic in the engine.
    fn compute(&self, engine: &dyn EmbeddingEngine, jobs: Vec<EmbeddingJob>, metrics: &BatchMetrics) -> bool {
        let state = &self.state;
        let inputs: Vec<&[u32]> = jobs.iter().flat_map(|job| job.tokens.iter().map(Vec::as_slice)).collect();
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut vectors = Vec::with_capacity(inputs.len());
            for chunk in inputs.chunks(state.settings.max_batch.max(1)) {
                metrics.batch_sizes.record(chunk.len() as f64);
                vectors.extend(engine.embed(chunk)?);
            }
            Ok::<_, EngineError>(vectors)
        }));
        let elapsed = started.elapsed();
        metrics.durations.record(elapsed.as_secs_f64());
        let per_input = elapsed.as_secs_f64() / inputs.len().max(1) as f64;
        let previous = f64::from_bits(state.seconds_per_input.load(Ordering::Relaxed));
        state.seconds_per_input.store((previous * 0.8 + per_input * 0.2).to_bits(), Ordering::Relaxed);
        metrics.prompt_tokens.increment(inputs.iter().map(|tokens| tokens.len() as u64).sum());
        match outcome {
            Ok(result) => {
                self.answer(jobs, result);
                true
            }
            Err(_) => {
                for job in jobs {
                    let _ = job.reply.send(Err(WorkError::WorkerFailed));
                }
                false
            }
        }
    }

    /// Sends each job its vectors, in order, or the engine's error.
    fn answer(&self, jobs: Vec<EmbeddingJob>, result: Result<Vec<Vec<f32>>, EngineError>) {
        match result {
            Ok(vectors) => {
                self.state.lifecycle.set_ready();
                let mut vectors = vectors.into_iter();
                for job in jobs {
                    let mine: Vec<Vec<f32>> = vectors.by_ref().take(job.tokens.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                for job in jobs {
                    let _ = job.reply.send(Err(WorkError::Engine(error.clone())));
                }
            }
        }
    }

    /// Waits for a first request (checking `stop` now and then), then takes
    /// more until the batch is full or `max_wait` has passed.
    fn next_batch(&self, stop: &AtomicBool) -> Option<Vec<EmbeddingJob>> {
        let receiver = &self.state.receiver;
        let settings = self.state.settings;
        let first = match receiver.recv_timeout(Duration::from_millis(100)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        };
        let mut inputs = first.tokens.len();
        let mut jobs = vec![first];
        let deadline = Instant::now() + settings.max_wait;
        while inputs < settings.max_batch && !stop.load(Ordering::Relaxed) {
            match receiver.recv_deadline(deadline) {
                Ok(job) => {
                    inputs += job.tokens.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    /// Runs one forward pass to prove the model works, before taking
    /// requests; readiness waits for it.
    pub fn warm_up(&self, engine: &dyn EmbeddingEngine) -> Result<(), EngineError> {
        let tokens = engine.tokenize("Blaze warms up this model.")?;
        engine.embed(&[&tokens])?;
        self.state.lifecycle.set_ready();
        Ok(())
    }
}

/// What a worker records of its batches.
struct BatchMetrics {
    batch_sizes: Histogram,
    durations: Histogram,
    prompt_tokens: Counter,
    depth: Gauge,
}

impl BatchMetrics {
    fn new(model: &str) -> Self {
        let model = model.to_owned();
        Self {
            batch_sizes: histogram!("blaze_inference_batch_size", "model" => model.clone()),
            durations: histogram!("blaze_inference_duration_seconds", "model" => model.clone(), "phase" => "embed"),
            prompt_tokens: counter!("blaze_tokens_total", "model" => model.clone(), "kind" => "prompt"),
            depth: gauge!("blaze_inference_queue_depth", "model" => model),
        }
    }
}
