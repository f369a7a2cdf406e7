//! The Router actor: owns the model registry. Each start loads the catalog
//! models that are not served yet, publishes them for the request path,
//! and hands their inference workers to the supervisor. A model that fails
//! to load is reported by readiness, and the start fails so that the
//! supervisor runs the Router again after its backoff; the models already
//! served keep serving meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use super::catalog::{ModelCache, ModelFiles, ModelKind, ModelSpec};
use super::registry::{ModelHandle, ModelRegistry, ServedModel};
use crate::inference::{
    BatchSettings, BertTokenizer, ChatModel, ChatPool, EmbeddingPool, EngineError, InferenceWorker,
};
use crate::supervisor::{Adopt, ChildSpec};

/// Why one model cannot load (the Router tries again).
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    #[error("its files are not in the cache; run `blaze models pull {0}`")]
    NotCached(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The models that could not load, each with its reason.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct ModelsNotLoaded(pub Vec<(String, ModelLoadError)>);

fn describe(failures: &[(String, ModelLoadError)]) -> String {
    failures.iter().map(|(id, problem)| format!("{id}: {problem}")).collect::<Vec<_>>().join("; ")
}

/// The registry it fills is shared with the request path; the Router is
/// its only writer and keeps no state of its own.
pub struct Router;

impl Router {
    /// Loads what the registry still expects, then runs. `Err` names each
    /// model that could not be loaded.
    pub fn start(
        catalog: &BTreeMap<String, ModelSpec>,
        cache: &ModelCache,
        registry: &ModelRegistry,
        supervisor: &Recipient<Adopt>,
    ) -> Result<Self, ModelsNotLoaded> {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut failures = Vec::new();
        for id in registry.pending() {
            let Some(spec) = catalog.get(&id) else { continue };
            match load(&id, spec, cache) {
                Ok((handle, workers)) => {
                    registry.publish(ServedModel { id: id.clone(), kind: spec.kind, created, handle });
                    supervisor.do_send(Adopt(workers));
                    info!(model = id, workers = spec.workers, "model published");
                }
                Err(problem) => {
                    warn!(model = id, %problem, "cannot load the model; the router tries again");
                    registry.record_failure(&id, &problem.to_string());
                    failures.push((id, problem));
                }
            }
        }
        if failures.is_empty() {
            Ok(Self)
        } else {
            Err(ModelsNotLoaded(failures))
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

crate::supervised_actor!(Router);

/// A model's pool, and the supervised workers that compute for it.
fn load(
    id: &str,
    spec: &ModelSpec,
    cache: &ModelCache,
) -> Result<(ModelHandle, Vec<ChildSpec>), ModelLoadError> {
    let not_cached = || ModelLoadError::NotCached(id.to_owned());
    match spec.kind {
        ModelKind::Chat => {
            let path = match cache.locate(id, spec) {
                Some(ModelFiles::File(path)) => path,
                Some(ModelFiles::Directory(directory)) => directory.join("model.gguf"),
                None => return Err(not_cached()),
            };
            let model = ChatModel::load_offloaded(&path, spec.context_length, spec.gpu_layers)?;
            let pool = ChatPool::new(id, model, spec.max_batch, spec.queue_capacity)
                .with_prefix_reuse(spec.prefix_reuse);
            let (worker_pool, threads) = (pool.clone(), spec.threads);
            let workers =
                worker_specs(id, spec.workers, move || InferenceWorker::chat(worker_pool.clone(), threads));
            Ok((ModelHandle::Chat(pool), workers))
        }
        ModelKind::Embedding => {
            let Some(ModelFiles::Directory(directory)) = cache.locate(id, spec) else {
                return Err(not_cached());
            };
            let tokenizer = BertTokenizer::load(&directory)?.with_auto_truncate(spec.auto_truncate);
            let batching = BatchSettings {
                max_batch: spec.max_batch,
                max_wait: Duration::from_millis(spec.max_wait_ms),
                queue_capacity: spec.queue_capacity,
            };
            let pool = EmbeddingPool::new(id, Arc::new(tokenizer), batching);
            let (worker_pool, threads) = (pool.clone(), spec.threads);
            let workers = worker_specs(id, spec.workers, move || {
                InferenceWorker::embedding(worker_pool.clone(), directory.clone(), threads)
            });
            Ok((ModelHandle::Embedding(pool), workers))
        }
    }
}

/// `count` supervised workers of model `id`, named `worker:<id>:<index>`.
fn worker_specs(
    id: &str,
    count: usize,
    make: impl Fn() -> InferenceWorker + Clone + Send + Sync + 'static,
) -> Vec<ChildSpec> {
    (0..count)
        .map(|index| {
            // Child names live as long as the process; each model's are made
            // once, when it is first published.
            let name: &'static str = Box::leak(format!("worker:{id}:{index}").into_boxed_str());
            let make = make.clone();
            ChildSpec::new(name, true, move || {
                let worker = make();
                async move { Ok(worker) }
            })
        })
        .collect()
}
