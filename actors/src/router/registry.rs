//! The registry of served models: what the request path reads to dispatch
//! by model id, without a mailbox hop. The Router actor publishes into it;
//! handlers and probes only read.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;

use super::catalog::ModelKind;
use crate::health::{Probe, ProbeError};
use crate::inference::{ChatPool, EmbeddingPool};

/// How requests reach a served model.
#[derive(Clone)]
pub enum ModelHandle {
    Embedding(EmbeddingPool),
    Chat(ChatPool),
}

pub struct ServedModel {
    pub id: String,
    pub kind: ModelKind,
    /// Unix seconds when this process started serving it.
    pub created: u64,
    pub handle: ModelHandle,
}

/// Where a model of the catalog stands in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelState {
    /// The Router has not loaded it yet.
    Loading,
    /// Its last load failed; the Router tries again.
    Failed(String),
    /// Published: requests reach its workers.
    Served,
    /// Not in the catalog.
    Unknown,
}

struct Snapshot {
    served: BTreeMap<String, Arc<ServedModel>>,
    /// Catalog models not served yet, with the last load failure if any.
    pending: BTreeMap<String, Option<String>>,
    /// Grows each time a model is published: readers that keep something
    /// derived from `served` know when it is stale.
    generation: u64,
}

/// Served models by id, as one atomically swapped snapshot.
#[derive(Clone)]
pub struct ModelRegistry {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl ModelRegistry {
    /// A registry expecting the catalog's `ids`, none of them served yet.
    pub fn expecting(ids: impl IntoIterator<Item = String>) -> Self {
        let pending = ids.into_iter().map(|id| (id, None)).collect();
        Self {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot {
                served: BTreeMap::new(),
                pending,
                generation: 0,
            })),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<ServedModel>> {
        self.snapshot.load().served.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        self.snapshot.load().served.values().cloned().collect()
    }

    /// The served models with the generation of the snapshot they come
    /// from; the generation alone tells whether they changed since.
    pub fn all_with_generation(&self) -> (u64, Vec<Arc<ServedModel>>) {
        let snapshot = self.snapshot.load();
        (snapshot.generation, snapshot.served.values().cloned().collect())
    }

    pub fn generation(&self) -> u64 {
        self.snapshot.load().generation
    }

    pub fn state(&self, id: &str) -> ModelState {
        let snapshot = self.snapshot.load();
        if snapshot.served.contains_key(id) {
            return ModelState::Served;
        }
        match snapshot.pending.get(id) {
            Some(Some(failure)) => ModelState::Failed(failure.clone()),
            Some(None) => ModelState::Loading,
            None => ModelState::Unknown,
        }
    }

    /// Ids of the catalog models not served yet.
    pub fn pending(&self) -> Vec<String> {
        self.snapshot.load().pending.keys().cloned().collect()
    }

    /// Makes `model` reachable by its id.
    pub(crate) fn publish(&self, model: ServedModel) {
        let model = Arc::new(model);
        self.snapshot.rcu(|current| {
            let mut served = current.served.clone();
            let mut pending = current.pending.clone();
            pending.remove(&model.id);
            served.insert(model.id.clone(), model.clone());
            Snapshot { served, pending, generation: current.generation + 1 }
        });
    }

    /// Records why `id` could not be loaded, for readiness to report.
    pub(crate) fn record_failure(&self, id: &str, reason: &str) {
        self.snapshot.rcu(|current| {
            let mut pending = current.pending.clone();
            if let Some(slot) = pending.get_mut(id) {
                *slot = Some(reason.to_owned());
            }
            Snapshot { served: current.served.clone(), pending, generation: current.generation }
        });
    }

    /// One readiness probe per catalog model: up once it is served and a
    /// forward pass on it succeeded.
    pub fn probes(&self) -> Vec<Arc<dyn Probe>> {
        let snapshot = self.snapshot.load();
        snapshot
            .served
            .keys()
            .chain(snapshot.pending.keys())
            .map(|id| {
                Arc::new(ModelProbe { name: format!("model:{id}"), id: id.clone(), registry: self.clone() })
                    as Arc<dyn Probe>
            })
            .collect()
    }
}

struct ModelProbe {
    name: String,
    id: String,
    registry: ModelRegistry,
}

impl Probe for ModelProbe {
    fn component(&self) -> &str {
        &self.name
    }

    fn required(&self) -> bool {
        true
    }

    fn check(&self) -> BoxFuture<'static, Result<(), ProbeError>> {
        let outcome = match self.registry.get(&self.id) {
            Some(model) => {
                let ready = match &model.handle {
                    ModelHandle::Embedding(pool) => pool.is_ready(),
                    ModelHandle::Chat(pool) => pool.is_ready(),
                };
                if ready {
                    Ok(())
                } else {
                    Err(ProbeError::Loading("no forward pass has succeeded yet"))
                }
            }
            None => match self.registry.state(&self.id) {
                ModelState::Failed(reason) => Err(ProbeError::LoadFailed(reason)),
                _ => Err(ProbeError::Loading("not loaded yet")),
            },
        };
        Box::pin(async move { outcome })
    }
}
