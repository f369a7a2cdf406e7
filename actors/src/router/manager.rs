//! The model manager: loads and unloads the catalog's models at run time.
//! A load reads the model's files off the async threads, hands its workers
//! to the supervisor, and publishes the model once a worker has proven it;
//! an unload withdraws the model from the registry, lets the supervisor
//! release its workers and closes its pool, whose workers finish what was
//! queued and end, freeing the model's memory. Models load and unload one
//! by one while the others serve.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::Recipient;
use parking_lot::Mutex;
use tracing::{info, warn};

use super::catalog::{ModelCache, ModelFiles, ModelKind, ModelSpec};
use super::registry::{ModelHandle, ModelRegistry, ModelState, ServedModel, Unloader};
use crate::inference::{
    BatchSettings, BertTokenizer, ChatModel, ChatPool, EmbeddingPool, EngineError, InferenceWorker,
};
use crate::supervisor::{Adopt, ChildSpec, Release};

/// Why one model cannot load.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    #[error("its files are not in the cache; run `blaze models pull {0}`")]
    NotCached(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the loading thread failed: {0}")]
    Thread(String),
}

/// Why a request cannot be served by a model now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    Unknown,
    /// Being loaded (or still loading after the wait); retry soon.
    Loading,
    /// Its load failed; the Router tries again.
    Failed(String),
    /// An admin unloaded it.
    Unloaded,
}

/// A served model, and how long the request waited for it to load again.
pub struct Serving {
    pub model: Arc<ServedModel>,
    pub waited: Option<Duration>,
}

/// What a load request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStarted {
    Began,
    AlreadyLoading,
    AlreadyServed,
}

/// How the manager reaches the supervisor of the workers.
struct Supervision {
    adopt: Recipient<Adopt>,
    release: Recipient<Release>,
}

struct Inner {
    catalog: BTreeMap<String, ModelSpec>,
    cache: ModelCache,
    registry: ModelRegistry,
    supervision: OnceLock<Supervision>,
    /// How long a request waits for an idle-unloaded model to load again.
    load_wait: Duration,
    /// Handing workers over and releasing them happen one at a time, so
    /// that a release never overtakes the adoption of the same workers.
    handover: Mutex<()>,
    /// Each model's worker names, made once: the supervisor names its
    /// children for the process's lifetime.
    worker_names: Mutex<BTreeMap<String, Vec<&'static str>>>,
}

/// Cheap to clone; shared by the Router, the HTTP handlers and the tests.
#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<Inner>,
}

/// How often a waiting load or request looks again.
const POLL: Duration = Duration::from_millis(20);

impl ModelManager {
    pub fn new(catalog: BTreeMap<String, ModelSpec>, cache: ModelCache, load_wait: Duration) -> Self {
        let registry = ModelRegistry::expecting(catalog.keys().cloned());
        let inner = Inner {
            catalog,
            cache,
            registry,
            supervision: OnceLock::new(),
            load_wait,
            handover: Mutex::new(()),
            worker_names: Mutex::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Where loaded models' workers go; set once, before the Router starts.
    pub fn attach(&self, adopt: Recipient<Adopt>, release: Recipient<Release>) {
        let _ = self.inner.supervision.set(Supervision { adopt, release });
    }

    pub fn registry(&self) -> &ModelRegistry {
        &self.inner.registry
    }

    pub fn spec(&self, id: &str) -> Option<&ModelSpec> {
        self.inner.catalog.get(id)
    }

    /// Begins loading `id` in the background unless it is served or
    /// loading; `None` when the catalog has no such model.
    pub fn load(&self, id: &str, on_demand: bool) -> Option<LoadStarted> {
        let spec = self.inner.catalog.get(id)?.clone();
        let Some(ticket) = self.inner.registry.begin_load(id, on_demand) else {
            return Some(match self.inner.registry.state(id) {
                ModelState::Served => LoadStarted::AlreadyServed,
                _ => LoadStarted::AlreadyLoading,
            });
        };
        info!(model = id, on_demand, "loading the model");
        let (manager, id) = (self.clone(), id.to_owned());
        #[expect(
            clippy::disallowed_methods,
            reason = "a load runs to its end whoever asked for it; its ticket keeps a load overtaken by an unload from publishing"
        )]
        actix_rt::spawn(async move { manager.run_load(id, spec, ticket).await });
        Some(LoadStarted::Began)
    }

    async fn run_load(&self, id: String, spec: ModelSpec, ticket: u64) {
        let (cache, prepare_id, prepare_spec) = (self.inner.cache.clone(), id.clone(), spec.clone());
        let names = self.worker_names(&id);
        let prepared =
            tokio::task::spawn_blocking(move || prepare(&prepare_id, &prepare_spec, &cache, &names))
                .await
                .unwrap_or_else(|error| Err(ModelLoadError::Thread(error.to_string())));
        let handle = match prepared {
            Ok((handle, workers)) => {
                if !self.hand_over(&id, ticket, &handle, workers) {
                    return;
                }
                handle
            }
            Err(problem) => {
                warn!(model = id, %problem, "cannot load the model; the router tries again");
                return self.inner.registry.record_failure(&id, ticket, &problem.to_string());
            }
        };
        let started = Instant::now();
        while self.inner.registry.is_current(&id, ticket) {
            if handle.lifecycle().is_ready() {
                let created = u64::try_from(crate::auth::now_ms() / 1000).unwrap_or(0);
                let model = ServedModel { id: id.clone(), kind: spec.kind, created, handle };
                if self.inner.registry.publish(ticket, model) {
                    let warm_up_ms = started.elapsed().as_secs_f64() * 1000.0;
                    info!(model = id, workers = spec.workers, warm_up_ms, "model published");
                }
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Records the load's pool and starts its workers, unless an unload
    /// came first (then the pool is dropped unstarted).
    fn hand_over(&self, id: &str, ticket: u64, handle: &ModelHandle, workers: Vec<ChildSpec>) -> bool {
        let _handing = self.inner.handover.lock();
        if !self.inner.registry.attach(id, ticket, handle.clone()) {
            return false;
        }
        if let Some(supervision) = self.inner.supervision.get() {
            supervision.adopt.do_send(Adopt(workers));
        }
        true
    }

    /// Unloads `id`: it stops taking requests at once, its queued and
    /// running requests finish, then its workers end and free its memory.
    /// `None` when the catalog has no such model.
    pub fn unload(&self, id: &str, by: Unloader) -> Option<()> {
        let _handing = self.inner.handover.lock();
        let pool = self.inner.registry.withdraw(id, by)?;
        if let Some(pool) = pool {
            if let Some(supervision) = self.inner.supervision.get() {
                let names = self.worker_names(id).iter().map(|name| (*name).to_owned()).collect();
                supervision.release.do_send(Release(names));
            }
            pool.lifecycle().close();
            info!(model = id, by = ?by, "model unloaded; its workers finish what they hold");
        }
        Some(())
    }

    /// Unloads the served models idle for their `idle_unload_s`.
    pub fn unload_idle(&self) {
        for model in self.inner.registry.all() {
            let Some(spec) = self.inner.catalog.get(&model.id) else { continue };
            if spec.idle_unload_s > 0
                && model.handle.lifecycle().idle_for() >= Duration::from_secs(spec.idle_unload_s)
            {
                self.unload(&model.id, Unloader::Idle);
            }
        }
    }

    /// The model `id` for a request: at once when served; after loading
    /// it again (waiting up to `models.load_wait_s`) when it was unloaded
    /// for being idle.
    pub async fn serving(&self, id: &str) -> Result<Serving, Unavailable> {
        let started = Instant::now();
        loop {
            if let Some(model) = self.inner.registry.get(id) {
                let waited = started.elapsed();
                return Ok(Serving { model, waited: (waited >= POLL).then_some(waited) });
            }
            match self.inner.registry.state(id) {
                // Published since the lookup above: the next pass takes it.
                ModelState::Served => continue,
                ModelState::Unloaded(Unloader::Idle) => {
                    self.load(id, true);
                }
                ModelState::Loading { on_demand: true } => {}
                ModelState::Loading { on_demand: false } => return Err(Unavailable::Loading),
                ModelState::Unloaded(Unloader::Admin) => return Err(Unavailable::Unloaded),
                ModelState::Failed(reason) => return Err(Unavailable::Failed(reason)),
                ModelState::Unknown => return Err(Unavailable::Unknown),
            }
            if started.elapsed() >= self.inner.load_wait {
                return Err(Unavailable::Loading);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `worker:<id>:<index>` for each of the model's workers.
    fn worker_names(&self, id: &str) -> Vec<&'static str> {
        let count = self.inner.catalog.get(id).map_or(0, |spec| spec.workers);
        let mut names = self.inner.worker_names.lock();
        names
            .entry(id.to_owned())
            .or_insert_with(|| {
                // Leaked once per model: the supervisor's child names live
                // as long as the process.
                (0..count).map(|index| &*Box::leak(format!("worker:{id}:{index}").into_boxed_str())).collect()
            })
            .clone()
    }
}

/// A model's pool, and the supervised workers that compute for it.
fn prepare(
    id: &str,
    spec: &ModelSpec,
    cache: &ModelCache,
    names: &[&'static str],
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
            let make = move || InferenceWorker::chat(worker_pool.clone(), threads);
            Ok((ModelHandle::Chat(pool), worker_specs(names, make)))
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
            let make = move || InferenceWorker::embedding(worker_pool.clone(), directory.clone(), threads);
            Ok((ModelHandle::Embedding(pool), worker_specs(names, make)))
        }
    }
}

/// One supervised worker per name, each made by `make`.
fn worker_specs(
    names: &[&'static str],
    make: impl Fn() -> InferenceWorker + Clone + Send + Sync + 'static,
) -> Vec<ChildSpec> {
    names
        .iter()
        .map(|name| {
            let make = make.clone();
            ChildSpec::new(name, true, move || {
                let worker = make();
                async move { Ok(worker) }
            })
        })
        .collect()
}
