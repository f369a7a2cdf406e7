//! The InferenceWorker actor: owns one worker thread of a model's pool. The
//! thread loads the engine, proves it with a forward pass, and runs the
//! batching loop; when it ends (a panic in the engine), the actor stops and
//! the supervisor starts a fresh one, which loads the model again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tracing::{error, info};

use super::bert::Bert;
use super::pool::{EmbeddingPool, WorkerExit};

/// The worker thread ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct ThreadEnded(String);

pub struct InferenceWorker {
    pool: EmbeddingPool,
    model_directory: PathBuf,
    threads: usize,
    stop: Arc<AtomicBool>,
}

impl InferenceWorker {
    pub fn embedding(pool: EmbeddingPool, model_directory: PathBuf, threads: usize) -> Self {
        Self { pool, model_directory, threads, stop: Arc::default() }
    }
}

impl Actor for InferenceWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (pool, directory, threads, stop) =
            (self.pool.clone(), self.model_directory.clone(), self.threads, self.stop.clone());
        let address = ctx.address();
        let spawned =
            std::thread::Builder::new().name(format!("blaze-worker-{}", pool.model())).spawn(move || {
                let ended = match Bert::load(&directory, threads) {
                    Err(problem) => format!("cannot load: {problem}"),
                    Ok(engine) => match pool.warm_up(&engine) {
                        Err(problem) => format!("warm-up failed: {problem}"),
                        Ok(()) => {
                            info!(model = pool.model(), "model loaded and proven by a forward pass");
                            match pool.run_worker(&engine, &stop) {
                                WorkerExit::Stopped => "stopped".to_owned(),
                                WorkerExit::Panicked => "the engine panicked".to_owned(),
                            }
                        }
                    },
                };
                address.do_send(ThreadEnded(ended));
            });
        if let Err(problem) = spawned {
            error!(model = self.pool.model(), %problem, "cannot start a worker thread");
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
        if !self.stop.load(Ordering::Relaxed) {
            error!(
                model = self.pool.model(),
                reason = message.0,
                "worker thread ended; restarting the worker"
            );
        }
        ctx.stop();
    }
}

crate::supervised_actor!(InferenceWorker);
