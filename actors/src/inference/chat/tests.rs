//! The chat pool against a fake engine: no model, every step one token.

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;

use super::{ChatEvent, ChatEvents, ChatPool, FinishReason, Grammar, Progress, SamplingParams};
use crate::inference::engine::{ChatDecoder, ChatEngine, ChatSequence, EngineError, MAX_SLOTS};
use crate::inference::pool::WorkError;
use crate::inference::InferenceWorker;
use crate::supervisor::{
    ActorBoard, ActorState, ActorStatus, Backoff, ChildSpec, StartAll, StopAll, Supervisor,
};

/// A prompt starting with this token makes the fake decoder panic on the
/// step after its first piece of text.
const PANIC: u32 = 666;

/// Words are tokens: "panic" is [`PANIC`], any other word its length.
struct FakeEngine;

impl ChatEngine for FakeEngine {
    type Decoder<'a> = FakeDecoder;

    fn context_length(&self) -> usize {
        64
    }

    fn most_text_bytes(&self) -> usize {
        64 * 8
    }

    fn prompt_tokens(
        &self,
        turns: &[(String, String)],
        _tools: &[serde_json::Value],
    ) -> Result<Vec<u32>, EngineError> {
        Ok(turns.iter().flat_map(|(_, text)| self.tokenize(text, false)).collect())
    }

    fn tokenize(&self, text: &str, _add_special: bool) -> Vec<u32> {
        text.split_whitespace().map(|word| if word == "panic" { PANIC } else { word.len() as u32 }).collect()
    }

    fn check_grammar(&self, _grammar: &Grammar) -> Result<(), EngineError> {
        Ok(())
    }

    fn check_window(&self, prompt_tokens: usize, max_tokens: usize) -> Result<(), EngineError> {
        let limit = self.context_length();
        if prompt_tokens + max_tokens > limit {
            return Err(EngineError::TooLong { tokens: prompt_tokens + max_tokens, limit });
        }
        Ok(())
    }

    fn decoder(&self, _threads: usize, slots: usize) -> Result<FakeDecoder, EngineError> {
        let slots = slots.clamp(1, MAX_SLOTS);
        Ok(FakeDecoder { slots, kept: vec![Vec::new(); slots], keep: false })
    }
}

/// Keeps each released prompt in its slot when asked to, as the real
/// decoder keeps its cache.
struct FakeDecoder {
    slots: usize,
    kept: Vec<Vec<u32>>,
    keep: bool,
}

/// Generates "x" each step until `max_tokens`.
struct FakeSequence {
    slot: usize,
    prompt: Vec<u32>,
    generated: usize,
    max_tokens: usize,
    reused: usize,
}

impl ChatDecoder for FakeDecoder {
    type Sequence = FakeSequence;

    fn slots(&self) -> usize {
        self.slots
    }

    fn cache_bytes(&self) -> u64 {
        1000 * self.slots as u64
    }

    fn start(
        &mut self,
        slot: usize,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<FakeSequence, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Input("the prompt has no tokens".to_owned()));
        }
        let reused = self.reusable(slot, prompt);
        self.kept[slot].clear();
        Ok(FakeSequence {
            slot,
            prompt: prompt.to_vec(),
            generated: 0,
            max_tokens: params.max_tokens,
            reused,
        })
    }

    fn release(&mut self, sequence: &mut FakeSequence) {
        if self.keep {
            self.kept[sequence.slot] = sequence.prompt.clone();
        }
    }

    fn keep_prompts(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn reusable(&self, slot: usize, prompt: &[u32]) -> usize {
        let common = self.kept[slot].iter().zip(prompt).take_while(|(kept, token)| kept == token).count();
        common.min(prompt.len().saturating_sub(1))
    }

    fn step(&mut self, sequences: &mut [&mut FakeSequence]) -> Result<Vec<Progress>, EngineError> {
        Ok(sequences.iter_mut().map(|sequence| sequence.next()).collect())
    }
}

impl FakeSequence {
    fn next(&mut self) -> Progress {
        if self.prompt[0] == PANIC && self.generated > 0 {
            panic!("the fake engine fails on purpose");
        }
        self.generated += 1;
        let text = "x".to_owned();
        if self.generated < self.max_tokens {
            return Progress::Text(text);
        }
        Progress::Finished { text, reason: FinishReason::Length, completion_tokens: self.generated }
    }
}

impl ChatSequence for FakeSequence {
    fn slot(&self) -> usize {
        self.slot
    }

    fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }

    fn completion_tokens(&self) -> usize {
        self.generated
    }

    fn is_reading(&self) -> bool {
        self.generated == 0
    }

    fn cached_tokens(&self) -> usize {
        self.reused
    }
}

/// A completion's events until its end.
async fn all_events(mut events: ChatEvents) -> Vec<ChatEvent> {
    let mut all = Vec::new();
    while let Some(event) =
        tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("an event in time")
    {
        let end = !matches!(event, ChatEvent::Text(_));
        all.push(event);
        if end {
            break;
        }
    }
    all
}

async fn wait_for(board: &ActorBoard, name: &str, accept: impl Fn(&ActorState) -> bool) -> ActorState {
    for _ in 0..500 {
        if let Some(state) = board.get(name).filter(|state| accept(state)) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached the expected state");
}

#[test]
fn the_request_path_reads_the_engine_through_the_pool() {
    let pool = ChatPool::new("fake", Arc::new(FakeEngine), 2, 4);
    let turns = [("user".to_owned(), "hello panic".to_owned())];
    assert_eq!(pool.model().prompt_tokens(&turns, &[]).unwrap(), vec![5, PANIC]);
    assert_eq!(pool.model().context_length(), 64);
    assert!(pool.model().check_window(60, 5).is_err());
    assert!(!pool.is_ready(), "no worker has proven the model yet");
}

/// A worker panic mid-stream, without a model:
/// the completion that was running fails after its first text, the one
/// still queued is not lost, and the worker comes back.
#[actix_rt::test]
async fn a_panic_in_the_engine_fails_only_the_completion_it_ran_and_the_worker_restarts() {
    // One slot: the second completion waits in the queue while the first
    // runs. Both are queued before the worker starts, so the order is fixed.
    let pool = ChatPool::new("fake", Arc::new(FakeEngine), 1, 4);
    let panicking = pool.submit(pool.model().tokenize("panic now", true), SamplingParams::greedy(8)).unwrap();
    let waiting = pool.submit(pool.model().tokenize("a question", true), SamplingParams::greedy(3)).unwrap();

    let board = ActorBoard::default();
    let worker_pool = pool.clone();
    let spec = ChildSpec::new("worker:fake:0", true, move || {
        let worker = InferenceWorker::chat(worker_pool.clone(), 1);
        async move { Ok(worker) }
    });
    let backoff = Backoff { initial: Duration::from_millis(10), ..Backoff::default() };
    let supervisor = Supervisor::new(vec![spec], board.clone(), backoff).start();
    supervisor.send(StartAll).await.unwrap();

    let failed = all_events(panicking).await;
    assert_eq!(failed, vec![ChatEvent::Text("x".to_owned()), ChatEvent::Failed(WorkError::WorkerFailed)]);
    let served = all_events(waiting).await;
    let done = ChatEvent::Done {
        finish_reason: FinishReason::Length,
        completion_tokens: 3,
        cached_tokens: 0,
        timing: Default::default(),
    };
    assert_eq!(served.last(), Some(&done), "the queued completion is served: {served:?}");
    assert_eq!(served.len(), 4, "three pieces of text, then the end: {served:?}");

    let state = wait_for(&board, "worker:fake:0", |state| state.status == ActorStatus::Up).await;
    assert_eq!(state.restarts, 1, "the worker restarted once");
    assert!(pool.is_ready());
    supervisor.send(StopAll).await.unwrap();
}

/// The choices of one request each get their own events, and all are
/// served though they outnumber the worker's slots.
#[actix_rt::test]
async fn every_choice_of_a_request_is_served_even_beyond_the_slots() {
    let pool = ChatPool::new("fake", Arc::new(FakeEngine), 2, 4);
    let lengths = [2, 3, 4];
    let params = lengths.iter().map(|&max_tokens| SamplingParams::greedy(max_tokens)).collect();
    let choices = pool.submit_choices(pool.model().tokenize("a question", true), params).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || pool.run_worker(1, &stop))
    };
    for (index, (choice, max_tokens)) in choices.into_iter().zip(lengths).enumerate() {
        let events = all_events(choice).await;
        // The third starts in the slot the first left, which still holds
        // the prompt: all of it but its last token is reused.
        let done = ChatEvent::Done {
            finish_reason: FinishReason::Length,
            completion_tokens: max_tokens,
            cached_tokens: if index == 2 { 1 } else { 0 },
            timing: Default::default(),
        };
        assert_eq!(events.last(), Some(&done), "{events:?}");
        assert_eq!(events.len(), max_tokens + 1, "its own pieces only: {events:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(worker.join().is_ok());
}

/// The cached tokens a completion of `prompt` reports at its end.
async fn cached_tokens(pool: &ChatPool<FakeEngine>, prompt: &str) -> usize {
    let tokens = pool.model().tokenize(prompt, false);
    let events = all_events(pool.submit(tokens, SamplingParams::greedy(2)).unwrap()).await;
    match events.last() {
        Some(ChatEvent::Done { cached_tokens, .. }) => *cached_tokens,
        other => panic!("{other:?}"),
    }
}

/// A pool of `slots` slots with one worker thread; stopped by `stop`.
fn running_pool(
    pool: &ChatPool<FakeEngine>,
) -> (Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<crate::inference::WorkerExit>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (pool, flag) = (pool.clone(), stop.clone());
    (stop, std::thread::spawn(move || pool.run_worker(1, &flag)))
}

#[actix_rt::test]
async fn a_prompt_goes_to_the_slot_holding_its_start_and_new_ones_to_the_oldest() {
    let pool = ChatPool::new("fake", Arc::new(FakeEngine), 3, 4);
    let (stop, worker) = running_pool(&pool);
    let (first, second, third) = ("a bb ccc dddd", "eeeee f gg", "hhh iiii j");
    for prompt in [first, second, third] {
        assert_eq!(cached_tokens(&pool, prompt).await, 0, "{prompt}");
    }
    // Three slots, three conversations: each next turn finds its own
    // history, as a new prompt took the slot freed longest ago.
    assert_eq!(cached_tokens(&pool, &format!("{first} kk")).await, 4);
    assert_eq!(cached_tokens(&pool, &format!("{second} lll")).await, 3);
    assert_eq!(cached_tokens(&pool, &format!("{third} m")).await, 3);
    // The same prompt again: all of it but the token that gives logits.
    assert_eq!(cached_tokens(&pool, &format!("{third} m")).await, 3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker.join().unwrap();

    // Turned off, nothing is kept.
    let pool = ChatPool::new("fake", Arc::new(FakeEngine), 3, 4).with_prefix_reuse(false);
    let (stop, worker) = running_pool(&pool);
    assert_eq!(cached_tokens(&pool, first).await, 0);
    assert_eq!(cached_tokens(&pool, &format!("{first} kk")).await, 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker.join().unwrap();
}

/// An unload closes the pool: new requests are refused at once, the ones
/// queued before are all served, and then the worker loop ends drained.
#[actix_rt::test]
async fn a_closed_pool_refuses_new_completions_and_serves_the_queued_ones_before_draining() {
    let pool = ChatPool::new("fake", Arc::new(FakeEngine), 1, 4);
    let first = pool.submit(pool.model().tokenize("one", true), SamplingParams::greedy(2)).unwrap();
    let second = pool.submit(pool.model().tokenize("two", true), SamplingParams::greedy(3)).unwrap();
    pool.lifecycle().close();
    let refused = pool.submit(pool.model().tokenize("three", true), SamplingParams::greedy(1)).unwrap_err();
    assert_eq!(refused, crate::inference::Refused::Closed);

    let worker_pool = pool.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let worker = std::thread::spawn(move || worker_pool.run_worker(1, &stop));
    for (events, tokens) in [(first, 2), (second, 3)] {
        let done = ChatEvent::Done {
            finish_reason: FinishReason::Length,
            completion_tokens: tokens,
            cached_tokens: 0,
            timing: Default::default(),
        };
        assert_eq!(all_events(events).await.last(), Some(&done));
    }
    assert_eq!(worker.join().unwrap(), crate::inference::WorkerExit::Drained);
    assert_eq!(pool.memory_bytes(), 0, "the worker's cache is counted only while it runs");
}
