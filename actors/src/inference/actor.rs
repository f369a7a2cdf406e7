//! The InferenceWorker actor: owns one worker thread of a model's pool. The
//! thread loads the engine, proves it with a forward pass, and runs the
//! batching loop; when it ends (a panic in the engine), the actor stops and
//! the supervisor starts a fresh one, which loads the model again. When the
//! model is unloaded (its pool closed), the thread drains the queue and
//! ends, and the supervisor, told beforehand, lets the worker go.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tracing::{error, info};

use super::chat::{llama_has_amx, ChatPool};
use super::embed::{Bert, EmbeddingPool};
use super::engine::{ChatEngine, EmbeddingEngine, EngineError};
use super::pool::WorkerExit;

/// The worker thread ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct ThreadEnded(String);

/// What a worker computes for.
enum Work {
    Embedding { pool: EmbeddingPool, load: EmbeddingLoader },
    Chat(Arc<dyn ChatWork>),
}

/// Loads an embedding engine with this many compute threads, in the worker
/// thread: each restart loads the model afresh.
pub type EmbeddingLoader = Arc<dyn Fn(usize) -> Result<Box<dyn EmbeddingEngine>, EngineError> + Send + Sync>;

/// A chat pool, whatever its engine, as its worker thread runs it.
trait ChatWork: Send + Sync {
    fn model_id(&self) -> &str;
    /// Proves the model, then serves until stopped; says why it ended.
    fn serve(&self, threads: usize, stop: &AtomicBool) -> String;
}

impl<E: ChatEngine> ChatWork for ChatPool<E> {
    fn model_id(&self) -> &str {
        ChatPool::model_id(self)
    }

    fn serve(&self, threads: usize, stop: &AtomicBool) -> String {
        chat_thread(self, threads, stop)
    }
}

pub struct InferenceWorker {
    work: Work,
    threads: usize,
    stop: Arc<AtomicBool>,
}

impl InferenceWorker {
    /// A worker of an embedding pool whose model (a BERT) is in `model_directory`.
    pub fn embedding(pool: EmbeddingPool, model_directory: PathBuf, threads: usize) -> Self {
        let load: EmbeddingLoader = Arc::new(move |threads| {
            Ok(Box::new(Bert::load(&model_directory, threads)?) as Box<dyn EmbeddingEngine>)
        });
        Self::embedding_with(pool, load, threads)
    }

    /// A worker of an embedding pool whose engine `load` makes.
    pub fn embedding_with(pool: EmbeddingPool, load: EmbeddingLoader, threads: usize) -> Self {
        Self { work: Work::Embedding { pool, load }, threads, stop: Arc::default() }
    }

    pub fn chat<E: ChatEngine>(pool: ChatPool<E>, threads: usize) -> Self {
        Self { work: Work::Chat(Arc::new(pool)), threads, stop: Arc::default() }
    }

    fn model_id(&self) -> &str {
        match &self.work {
            Work::Embedding { pool, .. } => pool.model(),
            Work::Chat(pool) => pool.model_id(),
        }
    }
}

/// Loads the engine, proves it, and serves until stopped; says why it ended.
fn embedding_thread(
    pool: &EmbeddingPool,
    load: &EmbeddingLoader,
    threads: usize,
    stop: &AtomicBool,
) -> String {
    match load(threads) {
        Err(problem) => format!("cannot load: {problem}"),
        Ok(engine) => {
            let _held = pool.hold(engine.as_ref());
            match pool.warm_up(engine.as_ref()) {
                Err(problem) => format!("warm-up failed: {problem}"),
                Ok(()) => {
                    info!(
                        model = pool.model(),
                        kernels = engine.kernels(),
                        "model loaded and proven by a forward pass"
                    );
                    ended(pool.run_worker(engine.as_ref(), stop))
                }
            }
        }
    }
}

fn chat_thread<E: ChatEngine>(pool: &ChatPool<E>, threads: usize, stop: &AtomicBool) -> String {
    match pool.warm_up(threads) {
        Err(problem) => format!("warm-up failed: {problem}"),
        Ok(()) => {
            info!(model = pool.model_id(), amx = llama_has_amx(), "model proven by a generation");
            ended(pool.run_worker(threads, stop))
        }
    }
}

/// Why a thread ended when its model was unloaded: not a failure.
const UNLOADED: &str = "the model was unloaded";

fn ended(exit: WorkerExit) -> String {
    match exit {
        WorkerExit::Stopped => "stopped".to_owned(),
        WorkerExit::Panicked => "the engine panicked".to_owned(),
        WorkerExit::Drained => UNLOADED.to_owned(),
    }
}

impl Actor for InferenceWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (threads, stop) = (self.threads, self.stop.clone());
        let address = ctx.address();
        let name = format!("blaze-worker-{}", self.model_id());
        let spawned = match &self.work {
            Work::Embedding { pool, load } => {
                let (pool, load) = (pool.clone(), load.clone());
                std::thread::Builder::new().name(name).spawn(move || {
                    address.do_send(ThreadEnded(embedding_thread(&pool, &load, threads, &stop)));
                })
            }
            Work::Chat(pool) => {
                let pool = pool.clone();
                std::thread::Builder::new().name(name).spawn(move || {
                    address.do_send(ThreadEnded(pool.serve(threads, &stop)));
                })
            }
        };
        if let Err(problem) = spawned {
            error!(model = self.model_id(), %problem, "cannot start a worker thread");
            ctx.stop();
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for InferenceWorker {
    /// Also after a panic of the actor itself: its thread must not outlive it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Handler<ThreadEnded> for InferenceWorker {
    type Result = ();

    fn handle(&mut self, message: ThreadEnded, ctx: &mut Self::Context) {
        if message.0 == UNLOADED {
            info!(model = self.model_id(), "worker drained after the model was unloaded");
        } else if !self.stop.load(Ordering::Relaxed) {
            error!(model = self.model_id(), reason = message.0, "worker thread ended; restarting the worker");
        }
        ctx.stop();
    }
}

crate::supervised_actor!(InferenceWorker);
