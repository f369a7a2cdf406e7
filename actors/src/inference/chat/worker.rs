//! One chat worker's continuous batching: its decoder, the completions it
//! runs, and the step that feeds them all once, lets queued ones join and
//! sends each one's text back.

use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use super::completion::{FinishReason, Progress};
use super::pool::{ChatEvent, ChatJob, Choice, StageTimes, Timing};
use crate::inference::engine::{ChatDecoder, ChatSequence};
use crate::inference::pool::WorkError;

/// A completion in the decoder.
struct Running<S> {
    events: tokio::sync::mpsc::UnboundedSender<ChatEvent>,
    queued_at: Instant,
    started_at: Instant,
    sequence: S,
    first_token: Option<Instant>,
}

impl<S> Running<S> {
    fn timing(&self) -> Timing {
        Timing(Some(StageTimes {
            queued_at: self.queued_at,
            started_at: self.started_at,
            first_token_at: self.first_token,
            finished_at: Instant::now(),
        }))
    }
}

/// One worker's state: its decoder and the completions it runs.
pub(super) struct Worker<'a, D: ChatDecoder> {
    /// The pool's queue.
    queue: &'a Receiver<ChatJob>,
    decoder: D,
    running: Vec<Running<D::Sequence>>,
    /// A request whose choices did not all fit the free slots: the rest
    /// start as slots free up, before any other request.
    pending: Option<ChatJob>,
    free_slots: Vec<usize>,
    metrics: WorkerMetrics,
}

struct WorkerMetrics {
    time_to_first_token: Histogram,
    time_per_output_token: Histogram,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    prefill: Histogram,
    decode: Histogram,
    batch_size: Histogram,
    queue_depth: Gauge,
    running: Gauge,
}

impl WorkerMetrics {
    fn new(model: &str) -> Self {
        let id = model.to_owned();
        Self {
            time_to_first_token: histogram!("blaze_time_to_first_token_seconds", "model" => id.clone()),
            time_per_output_token: histogram!("blaze_time_per_output_token_seconds", "model" => id.clone()),
            prompt_tokens: counter!("blaze_tokens_total", "model" => id.clone(), "kind" => "prompt"),
            completion_tokens: counter!("blaze_tokens_total", "model" => id.clone(), "kind" => "completion"),
            prefill: histogram!("blaze_inference_duration_seconds", "model" => id.clone(), "phase" => "prefill"),
            decode: histogram!("blaze_inference_duration_seconds", "model" => id.clone(), "phase" => "decode"),
            batch_size: histogram!("blaze_inference_batch_size", "model" => id.clone()),
            queue_depth: gauge!("blaze_inference_queue_depth", "model" => id.clone()),
            running: gauge!("blaze_inference_running_sequences", "model" => id),
        }
    }
}

impl<'a, D: ChatDecoder> Worker<'a, D> {
    /// A worker of model `model_id` taking completions from `queue`.
    pub(super) fn new(queue: &'a Receiver<ChatJob>, model_id: &str, decoder: D) -> Self {
        let free_slots = (0..decoder.slots()).rev().collect();
        let metrics = WorkerMetrics::new(model_id);
        Self { queue, decoder, running: Vec::new(), pending: None, free_slots, metrics }
    }

    /// Whether it runs no completion (then it waits on the queue).
    pub(super) fn is_idle(&self) -> bool {
        self.running.is_empty() && self.pending.is_none()
    }

    /// One step: drop cancelled completions, let queued ones join while
    /// slots are free, then feed every running sequence once.
    pub(super) fn step(&mut self) {
        self.drop_cancelled();
        if let Some(job) = self.pending.take() {
            self.start(job);
        }
        while !self.free_slots.is_empty() && self.pending.is_none() {
            match self.queue.try_recv() {
                Ok(job) => self.start(job),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.metrics.queue_depth.set(self.queue.len() as f64);
        self.metrics.running.set(self.running.len() as f64);
        if self.running.is_empty() {
            return;
        }
        let reading = self.running.iter().any(|running| running.sequence.is_reading());
        let started = Instant::now();
        let mut sequences: Vec<&mut D::Sequence> =
            self.running.iter_mut().map(|running| &mut running.sequence).collect();
        let outcome = self.decoder.step(&mut sequences);
        let phase = if reading { &self.metrics.prefill } else { &self.metrics.decode };
        phase.record(started.elapsed().as_secs_f64());
        self.metrics.batch_size.record(self.running.len() as f64);
        match outcome {
            Ok(progress) => self.deliver(progress),
            // The cache holds none of this step's tokens: fail its sequences
            // rather than retry a step that may fail again.
            Err(error) => {
                for running in std::mem::take(&mut self.running) {
                    self.release(running, ChatEvent::Failed(WorkError::Engine(error.clone())));
                }
            }
        }
        self.metrics.running.set(self.running.len() as f64);
    }

    /// Starts a queued request's choices in free slots, together so that
    /// they share the prompt; those that do not fit wait as `pending`.
    pub(super) fn start(&mut self, mut job: ChatJob) {
        job.choices.retain(|choice| !choice.events.is_closed());
        let count = job.choices.len().min(self.free_slots.len());
        if count == 0 {
            self.pending = (!job.choices.is_empty()).then_some(job);
            return;
        }
        // The prompt is read in the free slot that holds most of it; the
        // other choices, and a prompt no slot holds, take the slots freed
        // longest ago (the front), so recent conversations stay cached.
        let reader = (0..self.free_slots.len())
            .map(|index| (self.decoder.reusable(self.free_slots[index], &job.prompt), index))
            .filter(|&(reused, _)| reused > 0)
            .max_by_key(|&(reused, index)| (reused, std::cmp::Reverse(index)))
            .map_or(0, |(_, index)| index);
        let mut slots = vec![self.free_slots.remove(reader)];
        slots.extend(self.free_slots.drain(..count - 1));
        let (params, events): (Vec<_>, Vec<_>) =
            job.choices.drain(..count).map(|Choice { params, events }| (params, events)).unzip();
        match self.decoder.start_choices(&slots, &job.prompt, &params) {
            Ok(sequences) => {
                self.metrics.prompt_tokens.increment(job.prompt.len() as u64);
                let started_at = Instant::now();
                for (events, sequence) in events.into_iter().zip(sequences) {
                    let queued_at = job.queued_at;
                    self.running.push(Running { events, queued_at, started_at, sequence, first_token: None });
                }
            }
            Err(error) => {
                self.free_slots.extend(slots);
                for events in events.into_iter().chain(job.choices.drain(..).map(|choice| choice.events)) {
                    let _ = events.send(ChatEvent::Failed(WorkError::Engine(error.clone())));
                }
            }
        }
        self.pending = (!job.choices.is_empty()).then_some(job);
    }

    /// Completions whose client went away leave the decoder.
    fn drop_cancelled(&mut self) {
        let mut index = 0;
        while index < self.running.len() {
            if self.running[index].events.is_closed() {
                let mut running = self.running.remove(index);
                self.metrics.completion_tokens.increment(running.sequence.completion_tokens() as u64);
                self.decoder.release(&mut running.sequence);
                self.free_slots.push(running.sequence.slot());
            } else {
                index += 1;
            }
        }
    }

    /// Sends each sequence's progress to its client; releases the finished.
    fn deliver(&mut self, progress: Vec<Progress>) {
        let mut finished = Vec::new();
        for (index, (running, progress)) in self.running.iter_mut().zip(progress).enumerate() {
            if progress != Progress::Reading {
                let logprobs = running.sequence.take_logprobs();
                if !logprobs.is_empty() {
                    let _ = running.events.send(ChatEvent::Logprobs(logprobs));
                }
            }
            let text = match progress {
                Progress::Reading => continue,
                Progress::Text(text) => text,
                Progress::Finished { text, reason, completion_tokens } => {
                    finished.push((index, text, reason, completion_tokens));
                    continue;
                }
            };
            if running.first_token.is_none() {
                running.first_token = Some(Instant::now());
                self.metrics.time_to_first_token.record(running.queued_at.elapsed().as_secs_f64());
            }
            if !text.is_empty() {
                // A client that went away is dropped before the next step.
                let _ = running.events.send(ChatEvent::Text(text));
            }
        }
        for (index, text, finish_reason, completion_tokens) in finished.into_iter().rev() {
            let running = self.running.remove(index);
            if !text.is_empty() {
                let _ = running.events.send(ChatEvent::Text(text));
            }
            if running.first_token.is_none() {
                self.metrics.time_to_first_token.record(running.queued_at.elapsed().as_secs_f64());
            }
            if let (Some(first), true) = (running.first_token, completion_tokens > 1) {
                self.metrics
                    .time_per_output_token
                    .record(first.elapsed().as_secs_f64() / (completion_tokens - 1) as f64);
            }
            self.metrics.completion_tokens.increment(completion_tokens as u64);
            let cached_tokens = running.sequence.cached_tokens();
            let timing = running.timing();
            self.release(
                running,
                ChatEvent::Done { finish_reason, completion_tokens, cached_tokens, timing },
            );
        }
    }

    /// Ends a completion with its last event, freeing its slot.
    fn release(&mut self, mut running: Running<D::Sequence>, last: ChatEvent) {
        self.decoder.release(&mut running.sequence);
        self.free_slots.push(running.sequence.slot());
        let _ = running.events.send(last);
    }

    /// After a panic: every completion this worker ran fails.
    pub(super) fn fail_all(&mut self, error: &WorkError) {
        for running in std::mem::take(&mut self.running) {
            let _ = running.events.send(ChatEvent::Failed(error.clone()));
        }
        for choice in self.pending.take().map(|job| job.choices).unwrap_or_default() {
            let _ = choice.events.send(ChatEvent::Failed(error.clone()));
        }
    }

    /// On shutdown, running completions end where they are.
    pub(super) fn stop_all(&mut self) {
        for running in std::mem::take(&mut self.running) {
            let completion_tokens = running.sequence.completion_tokens();
            let cached_tokens = running.sequence.cached_tokens();
            let timing = running.timing();
            let done = ChatEvent::Done {
                finish_reason: FinishReason::Stop,
                completion_tokens,
                cached_tokens,
                timing,
            };
            self.release(running, done);
        }
    }
}
