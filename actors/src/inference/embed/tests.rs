//! The embedding pool against a fake engine: no model, each vector the
//! input's tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;

use super::{BatchSettings, BertTokenizer, EmbeddingPool, EmbeddingResult};
use crate::inference::engine::{EmbeddingEngine, EngineError};
use crate::inference::pool::WorkError;
use crate::inference::{EmbeddingLoader, InferenceWorker};
use crate::supervisor::{
    ActorBoard, ActorState, ActorStatus, Backoff, ChildSpec, StartAll, StopAll, Supervisor,
};

const WORDS: [&str; 4] = ["unknown", "panic", "hello", "world"];
const PANIC: u32 = 1;

/// Embeds each input as its tokens, as floats; panics on an input that
/// starts with "panic". It takes up to 8 tokens, so the pool's warm-up
/// sentence passes.
struct FakeEngine;

impl EmbeddingEngine for FakeEngine {
    fn dimensions(&self) -> usize {
        4
    }

    fn max_tokens(&self) -> usize {
        8
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        BertTokenizer::of_words(&WORDS, 4, 8).tokenize(text)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        match tokens.len() {
            0 => Err(EngineError::Input("no tokens".to_owned())),
            length if length > 8 => Err(EngineError::TooLong { tokens: length, limit: 8 }),
            _ => Ok(()),
        }
    }

    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        batch
            .iter()
            .map(|tokens| {
                if tokens.first() == Some(&PANIC) {
                    panic!("the fake engine fails on purpose");
                }
                self.check_tokens(tokens)?;
                Ok(tokens.iter().map(|&token| token as f32).collect())
            })
            .collect()
    }

    fn memory_bytes(&self) -> u64 {
        4096
    }
}

/// One input per batch, so a failing request fails alone.
fn fake_pool() -> EmbeddingPool {
    let settings = BatchSettings { max_batch: 1, max_wait: Duration::ZERO, queue_capacity: 8 };
    EmbeddingPool::new("fake", Arc::new(BertTokenizer::of_words(&WORDS, 4, 8)), settings)
}

async fn answer(receiver: tokio::sync::oneshot::Receiver<EmbeddingResult>) -> EmbeddingResult {
    tokio::time::timeout(Duration::from_secs(10), receiver)
        .await
        .expect("an answer in time")
        .expect("answered")
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

#[actix_rt::test]
async fn a_panic_in_the_engine_fails_only_its_batch_and_the_worker_restarts_with_a_fresh_engine() {
    let pool = fake_pool();
    let tokenize = |text: &str| pool.tokenizer().tokenize(text).unwrap();
    // Both queued before the worker starts: the panicking one is taken first.
    let panicking = pool.submit(vec![tokenize("panic now")]).unwrap();
    let waiting = pool.submit(vec![tokenize("hello world"), tokenize("world")]).unwrap();
    let invalid = pool.submit(vec![tokenize(&["hello"; 9].join(" "))]).unwrap();

    let loads = Arc::new(AtomicUsize::new(0));
    let counted = loads.clone();
    let load: EmbeddingLoader = Arc::new(move |_threads| {
        counted.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(FakeEngine) as Box<dyn EmbeddingEngine>)
    });
    let board = ActorBoard::default();
    let worker_pool = pool.clone();
    let spec = ChildSpec::new("worker:fake:0", true, move || {
        let worker = InferenceWorker::embedding_with(worker_pool.clone(), load.clone(), 1);
        async move { Ok(worker) }
    });
    let backoff = Backoff { initial: Duration::from_millis(10), ..Backoff::default() };
    let supervisor = Supervisor::new(vec![spec], board.clone(), backoff).start();
    supervisor.send(StartAll).await.unwrap();

    assert_eq!(answer(panicking).await, Err(WorkError::WorkerFailed));
    assert_eq!(answer(waiting).await, Ok(vec![vec![2.0, 3.0], vec![3.0]]), "the queued request is served");
    let too_long = EngineError::TooLong { tokens: 9, limit: 8 };
    assert_eq!(answer(invalid).await, Err(WorkError::Engine(too_long)), "an engine error is not a failure");

    let state = wait_for(&board, "worker:fake:0", |state| state.status == ActorStatus::Up).await;
    assert_eq!(state.restarts, 1, "the worker restarted once");
    assert_eq!(loads.load(Ordering::Relaxed), 2, "the restart loaded the engine afresh");
    assert!(pool.is_ready());
    supervisor.send(StopAll).await.unwrap();
}

#[test]
fn the_test_tokenizer_reads_words_and_unknown_words_alike() {
    let tokenizer = BertTokenizer::of_words(&WORDS, 4, 4);
    assert_eq!(tokenizer.tokenize("hello there world").unwrap(), vec![2, 0, 3]);
    assert_eq!((tokenizer.dimensions(), tokenizer.max_tokens()), (4, 4));
}

/// An unload closes the pool: new requests are refused at once, the queued
/// ones answered, then the worker ends drained and its memory is released.
#[actix_rt::test]
async fn a_closed_pool_refuses_new_requests_and_answers_the_queued_ones_before_draining() {
    let pool = fake_pool();
    let queued = pool.submit(vec![vec![7, 8]]).unwrap();
    pool.lifecycle().close();
    assert_eq!(pool.submit(vec![vec![1]]).unwrap_err(), crate::inference::Refused::Closed);

    let held = pool.hold(&FakeEngine);
    assert_eq!(pool.memory_bytes(), 4096, "a worker's engine counts while it lives");
    drop(held);
    assert_eq!(pool.memory_bytes(), 0);

    let worker_pool = pool.clone();
    let worker = std::thread::spawn(move || {
        worker_pool.run_worker(&FakeEngine, &std::sync::atomic::AtomicBool::new(false))
    });
    assert_eq!(answer(queued).await.unwrap(), vec![vec![7.0, 8.0]]);
    assert_eq!(worker.join().unwrap(), crate::inference::WorkerExit::Drained);
}
