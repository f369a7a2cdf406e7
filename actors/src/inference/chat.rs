//! A chat model's worker pool: a bounded queue shared by its worker
//! threads, each with its own llama.cpp context, streaming each
//! completion's text back as it is generated.
//!
//! A worker runs one sequence at a time; concurrent completions run on
//! concurrent workers (`workers` in the model's settings). Decoding several
//! sequences together in one context (continuous batching) is the next step.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use metrics::{counter, gauge, histogram};
use tokio::sync::mpsc;

use super::engine::EngineError;
use super::llama::{ChatModel, FinishReason, SamplingParams};
use super::pool::{Overloaded, WorkError, WorkerExit};

/// What a completion sends back, in order: pieces of text, then one end.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Text(String),
    Done { finish_reason: FinishReason, completion_tokens: usize },
    Failed(WorkError),
}

struct ChatJob {
    prompt: Vec<u32>,
    params: SamplingParams,
    events: mpsc::Sender<ChatEvent>,
    queued_at: Instant,
    /// Test hook: the worker panics after the first piece of text.
    #[cfg(feature = "test-hooks")]
    panic: bool,
}

struct Shared {
    model_id: String,
    model: Arc<ChatModel>,
    sender: Sender<ChatJob>,
    receiver: Receiver<ChatJob>,
    ready: AtomicBool,
}

/// The handle the request path holds; cheap to clone.
#[derive(Clone)]
pub struct ChatPool {
    shared: Arc<Shared>,
}

impl ChatPool {
    pub fn new(model_id: &str, model: Arc<ChatModel>, queue_capacity: usize) -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(queue_capacity.max(1));
        let shared =
            Shared { model_id: model_id.to_owned(), model, sender, receiver, ready: AtomicBool::new(false) };
        Self { shared: Arc::new(shared) }
    }

    pub fn model_id(&self) -> &str {
        &self.shared.model_id
    }

    pub fn model(&self) -> &ChatModel {
        &self.shared.model
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Queues a completion, or refuses it at once when the queue is full.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<mpsc::Receiver<ChatEvent>, Overloaded> {
        self.enqueue(prompt, params, false)
    }

    /// Test hook: queues a completion during which the worker panics.
    #[cfg(feature = "test-hooks")]
    pub fn submit_panicking(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<mpsc::Receiver<ChatEvent>, Overloaded> {
        self.enqueue(prompt, params, true)
    }

    fn enqueue(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        panic: bool,
    ) -> Result<mpsc::Receiver<ChatEvent>, Overloaded> {
        let _ = panic;
        let (events, receiver) = mpsc::channel(256);
        let job = ChatJob {
            prompt,
            params,
            events,
            queued_at: Instant::now(),
            #[cfg(feature = "test-hooks")]
            panic,
        };
        match self.shared.sender.try_send(job) {
            Ok(()) => {
                gauge!("blaze_inference_queue_depth", "model" => self.shared.model_id.clone())
                    .set(self.shared.receiver.len() as f64);
                Ok(receiver)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                counter!("blaze_inference_rejected_total", "model" => self.shared.model_id.clone())
                    .increment(1);
                let queued = self.shared.receiver.len();
                Err(Overloaded { queued, retry_after_s: (queued as u64).clamp(1, 60) })
            }
        }
    }

    /// Proves the model with a short generation before taking requests.
    pub fn warm_up(&self, threads: usize) -> Result<(), EngineError> {
        let model = &self.shared.model;
        let mut context = model.new_context(threads)?;
        let prompt = model.tokenize(&model.render(&[("user".to_owned(), "Hi".to_owned())])?, true);
        let params = SamplingParams {
            max_tokens: 1,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            stop: Vec::new(),
        };
        model.generate(&mut context, &prompt, &params, &mut |_| true)?;
        self.shared.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The worker loop, until `stop` is set or the engine panics (which
    /// fails only the completion it was computing).
    pub fn run_worker(&self, threads: usize, stop: &AtomicBool) -> WorkerExit {
        let shared = &self.shared;
        let model = &shared.model;
        let id = shared.model_id.clone();
        let prefill = histogram!("blaze_time_to_first_token_seconds", "model" => id.clone());
        let per_token = histogram!("blaze_time_per_output_token_seconds", "model" => id.clone());
        let prompt_tokens = counter!("blaze_tokens_total", "model" => id.clone(), "kind" => "prompt");
        let completion_tokens = counter!("blaze_tokens_total", "model" => id.clone(), "kind" => "completion");
        let decode = histogram!("blaze_inference_duration_seconds", "model" => id, "phase" => "decode");
        let Ok(mut context) = model.new_context(threads) else { return WorkerExit::Panicked };
        while !stop.load(Ordering::Relaxed) {
            let job = match shared.receiver.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => continue,
            };
            if job.events.is_closed() {
                continue;
            }
            let started = Instant::now();
            let mut first_token: Option<Instant> = None;
            let events = job.events.clone();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                model.generate(&mut context, &job.prompt, &job.params, &mut |piece| {
                    #[cfg(feature = "test-hooks")]
                    if job.panic && first_token.is_some() {
                        #[allow(clippy::panic)]
                        {
                            panic!("test hook: chat worker told to panic");
                        }
                    }
                    if first_token.is_none() {
                        first_token = Some(Instant::now());
                        prefill.record(job.queued_at.elapsed().as_secs_f64());
                    }
                    // A client that went away cancels the generation here.
                    events.blocking_send(ChatEvent::Text(piece.to_owned())).is_ok()
                        && !stop.load(Ordering::Relaxed)
                })
            }));
            let elapsed = started.elapsed();
            decode.record(elapsed.as_secs_f64());
            prompt_tokens.increment(job.prompt.len() as u64);
            match outcome {
                Ok(Ok((finish_reason, generated))) => {
                    completion_tokens.increment(generated as u64);
                    if let (Some(first), true) = (first_token, generated > 1) {
                        per_token.record(first.elapsed().as_secs_f64() / (generated - 1) as f64);
                    }
                    let _ = job
                        .events
                        .blocking_send(ChatEvent::Done { finish_reason, completion_tokens: generated });
                }
                Ok(Err(error)) => {
                    let _ = job.events.blocking_send(ChatEvent::Failed(WorkError::Engine(error)));
                }
                Err(_) => {
                    let _ = job.events.blocking_send(ChatEvent::Failed(WorkError::WorkerFailed));
                    return WorkerExit::Panicked;
                }
            }
        }
        WorkerExit::Stopped
    }
}
