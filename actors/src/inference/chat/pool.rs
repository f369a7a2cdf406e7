//! A chat model's worker pool: a bounded queue shared by its worker
//! threads, each running a decoder of the engine ([`ChatDecoder`]) that
//! generates several completions together and streams each one's text back
//! as it is generated. The pool knows the engine only through
//! [`ChatEngine`], so its tests run on a fake one.
//!
//! Continuous batching: a queued completion joins the running ones between
//! two steps as soon as one of the worker's `max_batch` slots is free, and
//! a finished or cancelled one leaves at once, freeing its slot. Queued
//! completions stay in the shared queue until then, so another worker can
//! take them and the queue's length is what admission sees.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use metrics::{counter, gauge};
use tokio::sync::mpsc;

use super::completion::{FinishReason, SamplingParams, TokenLogprob};
use super::llama::ChatModel;
use super::worker::Worker;
use crate::inference::engine::{ChatDecoder, ChatEngine, EngineError, MAX_SLOTS};
use crate::inference::pool::{Lifecycle, Refused, WorkError, WorkerExit};

/// What a completion sends back, in order: pieces of text (each after the
/// log probabilities of the tokens decided with it, when asked for), then
/// one end.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Logprobs(Vec<TokenLogprob>),
    Text(String),
    /// `cached_tokens`: prompt tokens not read because the worker's cache
    /// held them (prefix reuse).
    Done {
        finish_reason: FinishReason,
        completion_tokens: usize,
        cached_tokens: usize,
        timing: Timing,
    },
    Failed(WorkError),
}

/// When a completion's stages ran in its worker, for the request's trace
/// (none for an answer replayed from the cache). Not part of an event's
/// equality: two completions are alike whatever their timing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing(pub Option<StageTimes>);

impl PartialEq for Timing {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StageTimes {
    /// The request entered the model's queue.
    pub queued_at: Instant,
    /// A worker took it: its prompt is read from here.
    pub started_at: Instant,
    /// The first token was decided (none if it ended before one).
    pub first_token_at: Option<Instant>,
    pub finished_at: Instant,
}

/// The events of one completion. Unbounded so that a slow reader never
/// stalls the other sequences of its batch; it holds at most `max_tokens`
/// pieces.
pub type ChatEvents = mpsc::UnboundedReceiver<ChatEvent>;

/// A queued request: one prompt, and the completions (choices) to make
/// of it.
pub(super) struct ChatJob {
    pub(super) prompt: Vec<u32>,
    pub(super) choices: Vec<Choice>,
    pub(super) queued_at: Instant,
}

/// One completion of a job's prompt, and where its events go.
pub(super) struct Choice {
    pub(super) params: SamplingParams,
    pub(super) events: mpsc::UnboundedSender<ChatEvent>,
}

/// The state of one pool that its handles and its worker threads share:
/// the model, the queue, and its lifecycle.
struct ChatPoolState<E> {
    model_id: String,
    model: Arc<E>,
    sender: Sender<ChatJob>,
    receiver: Receiver<ChatJob>,
    /// Sequences each worker runs together.
    max_batch: usize,
    /// Whether workers keep finished prompts' cache for later prompts
    /// that start the same way.
    prefix_reuse: bool,
    lifecycle: Lifecycle,
}

/// The handle the request path holds; cheap to clone. Generic over the
/// engine so that the pool is tested with a fake one; the service's is
/// llama.cpp's [`ChatModel`].
pub struct ChatPool<E: ChatEngine = ChatModel> {
    state: Arc<ChatPoolState<E>>,
}

impl<E: ChatEngine> Clone for ChatPool<E> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone() }
    }
}

impl<E: ChatEngine> ChatPool<E> {
    pub fn new(model_id: &str, model: Arc<E>, max_batch: usize, queue_capacity: usize) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(queue_capacity.max(1));
        let state = ChatPoolState {
            model_id: model_id.to_owned(),
            model,
            sender,
            receiver,
            max_batch: max_batch.clamp(1, MAX_SLOTS),
            prefix_reuse: true,
            lifecycle: Lifecycle::default(),
        };
        Self { state: Arc::new(state) }
    }

    /// Whether its workers reuse cached prompt prefixes (on unless said);
    /// set before any worker runs.
    pub fn with_prefix_reuse(mut self, reuse: bool) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.prefix_reuse = reuse;
        }
        self
    }

    pub fn model_id(&self) -> &str {
        &self.state.model_id
    }

    pub fn model(&self) -> &E {
        &self.state.model
    }

    /// Whether its queue is full now: a request would be refused (a
    /// gateway sends it elsewhere without trying).
    pub fn is_full(&self) -> bool {
        self.state.sender.is_full()
    }

    /// Requests waiting in its queue.
    pub fn queued(&self) -> usize {
        self.state.receiver.len()
    }

    /// Whether a worker has proven the model with a generation.
    pub fn is_ready(&self) -> bool {
        self.state.lifecycle.is_ready()
    }

    /// Its lifecycle: closing it for an unload, how long it has been idle.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.state.lifecycle
    }

    /// Bytes held: the weights, and the KV cache of each running worker.
    pub fn memory_bytes(&self) -> u64 {
        self.state.model.weights_bytes() + self.state.lifecycle.held_bytes()
    }

    /// Queues a completion, or refuses it at once when the queue is full.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<ChatEvents, Refused> {
        let mut events = self.submit_choices(prompt, vec![params])?;
        events.pop().ok_or(Refused::Full { queued: 0, retry_after_s: 1 })
    }

    /// Queues one completion of `prompt` per entry of `params` (the choices
    /// of one request, whose prompt the engine reads once); their events in
    /// the same order. Refused at once when the queue is full.
    pub fn submit_choices(
        &self,
        prompt: Vec<u32>,
        params: Vec<SamplingParams>,
    ) -> Result<Vec<ChatEvents>, Refused> {
        self.submit_choices_after(prompt, params, Duration::ZERO)
    }

    /// As [`ChatPool::submit_choices`], for a request that already waited
    /// `waited` (for the model to load): its time to first token counts it.
    pub fn submit_choices_after(
        &self,
        prompt: Vec<u32>,
        params: Vec<SamplingParams>,
        waited: Duration,
    ) -> Result<Vec<ChatEvents>, Refused> {
        let (choices, receivers): (Vec<Choice>, Vec<ChatEvents>) = params
            .into_iter()
            .map(|params| {
                let (events, receiver) = mpsc::unbounded_channel();
                (Choice { params, events }, receiver)
            })
            .unzip();
        let now = Instant::now();
        let job = ChatJob { prompt, choices, queued_at: now.checked_sub(waited).unwrap_or(now) };
        self.state.lifecycle.admit(|| self.queue(job))?;
        Ok(receivers)
    }

    fn queue(&self, job: ChatJob) -> Result<(), Refused> {
        match self.state.sender.try_send(job) {
            Ok(()) => {
                gauge!("blaze_inference_queue_depth", "model" => self.state.model_id.clone())
                    .set(self.state.receiver.len() as f64);
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                counter!("blaze_inference_rejected_total", "model" => self.state.model_id.clone())
                    .increment(1);
                let queued = self.state.receiver.len();
                Err(Refused::Full { queued, retry_after_s: (queued as u64).clamp(1, 60) })
            }
        }
    }

    /// Proves the model with a short generation before taking requests;
    /// the worker loop that follows marks the pool ready.
    pub fn warm_up(&self, threads: usize) -> Result<(), EngineError> {
        let model = &self.state.model;
        let mut decoder = model.decoder(threads, 1)?;
        let prompt = model.prompt_tokens(&[("user".to_owned(), "Hi".to_owned())], &[])?;
        decoder.generate(&prompt, &SamplingParams::greedy(1), &mut |_| true)?;
        Ok(())
    }

    /// The worker loop, until `stop` is set, the engine panics (which
    /// fails only the completions this worker held), or the pool is closed
    /// and nothing is left to compute.
    pub fn run_worker(&self, threads: usize, stop: &AtomicBool) -> WorkerExit {
        let state = &self.state;
        let Ok(mut decoder) = state.model.decoder(threads, state.max_batch) else {
            return WorkerExit::Panicked;
        };
        decoder.keep_prompts(state.prefix_reuse);
        let _held = state.lifecycle.hold(decoder.cache_bytes());
        // Ready once a worker has proven the model and holds its cache, so
        // that the memory a published model shows is what it holds.
        state.lifecycle.set_ready();
        let mut worker = Worker::new(&state.receiver, &state.model_id, decoder);
        while !stop.load(Ordering::Relaxed) {
            if worker.is_idle() {
                if state.lifecycle.is_closed() && state.receiver.is_empty() {
                    return WorkerExit::Drained;
                }
                match state.receiver.recv_timeout(Duration::from_millis(100)) {
                    Ok(job) => worker.start(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => continue,
                }
            }
            state.lifecycle.touch();
            if std::panic::catch_unwind(AssertUnwindSafe(|| worker.step())).is_err() {
                worker.fail_all(&WorkError::WorkerFailed);
                return WorkerExit::Panicked;
            }
        }
        worker.stop_all();
        WorkerExit::Stopped
    }
}
