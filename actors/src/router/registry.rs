//! The registry of the catalog's models and where each one stands: what
//! the request path reads to dispatch by model id, without a mailbox hop.
//! The [`ModelManager`](super::ModelManager) writes it; handlers and probes
//! only read.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::catalog::ModelKind;
use crate::health::{Probe, ProbeError};
use crate::inference::{ChatPool, EmbeddingPool, Lifecycle};

/// How requests reach a served model.
#[derive(Clone)]
pub enum ModelHandle {
    Embedding(EmbeddingPool),
    Chat(ChatPool),
}

impl ModelHandle {
    /// The pool's lifecycle: readiness, closing, idleness.
    pub fn lifecycle(&self) -> &Lifecycle {
        match self {
            Self::Embedding(pool) => pool.lifecycle(),
            Self::Chat(pool) => pool.lifecycle(),
        }
    }

    /// Bytes the model holds in memory: weights and caches.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            Self::Embedding(pool) => pool.memory_bytes(),
            Self::Chat(pool) => pool.memory_bytes(),
        }
    }
}

pub struct ServedModel {
    pub id: String,
    pub kind: ModelKind,
    /// Unix seconds when this process started serving it.
    pub created: u64,
    pub handle: ModelHandle,
}

/// Who unloaded a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unloader {
    /// `POST /admin/models/{id}/unload`: it stays unloaded until loaded
    /// the same way.
    Admin,
    /// Idle for `idle_unload_s`: the next request loads it again.
    Idle,
}

/// Where a model of the catalog stands in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelState {
    /// Being loaded; `on_demand` when a request for an idle-unloaded model
    /// asked for it (requests wait for it rather than being refused).
    Loading {
        on_demand: bool,
    },
    /// Its last load failed; the Router tries again.
    Failed(String),
    /// Published: requests reach its workers.
    Served,
    Unloaded(Unloader),
    /// Not in the catalog.
    Unknown,
}

#[derive(Clone)]
enum Entry {
    /// `ticket` names the load under way (0: none has begun); `pool` is
    /// its pool once its workers were handed to the supervisor.
    Loading {
        ticket: u64,
        on_demand: bool,
        pool: Option<ModelHandle>,
    },
    Failed(String),
    Served(Arc<ServedModel>),
    Unloaded(Unloader),
}

impl Entry {
    fn state(&self) -> ModelState {
        match self {
            Self::Loading { on_demand, .. } => ModelState::Loading { on_demand: *on_demand },
            Self::Failed(reason) => ModelState::Failed(reason.clone()),
            Self::Served(_) => ModelState::Served,
            Self::Unloaded(by) => ModelState::Unloaded(*by),
        }
    }
}

#[derive(Clone)]
struct Snapshot {
    entries: BTreeMap<String, Entry>,
    /// Grows with every change: readers that keep something derived from
    /// the entries know when it is stale.
    generation: u64,
    /// The last load ticket handed out.
    tickets: u64,
}

/// The catalog's models by id, as one atomically swapped snapshot.
#[derive(Clone)]
pub struct ModelRegistry {
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Writers change the snapshot one at a time, each deciding on the
    /// state it read.
    writer: Arc<Mutex<()>>,
}

/// What a catalog model looks like from the request path.
pub struct Listed {
    pub id: String,
    pub state: ModelState,
    pub served: Option<Arc<ServedModel>>,
}

impl ModelRegistry {
    /// A registry expecting the catalog's `ids`, none of them loaded yet.
    pub fn expecting(ids: impl IntoIterator<Item = String>) -> Self {
        let entries = ids
            .into_iter()
            .map(|id| (id, Entry::Loading { ticket: 0, on_demand: false, pool: None }))
            .collect();
        Self {
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot { entries, generation: 0, tickets: 0 })),
            writer: Arc::default(),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<ServedModel>> {
        match self.snapshot.load().entries.get(id) {
            Some(Entry::Served(model)) => Some(model.clone()),
            _ => None,
        }
    }

    pub fn state(&self, id: &str) -> ModelState {
        self.snapshot.load().entries.get(id).map_or(ModelState::Unknown, Entry::state)
    }

    /// The served models.
    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        let snapshot = self.snapshot.load();
        snapshot
            .entries
            .values()
            .filter_map(|entry| match entry {
                Entry::Served(model) => Some(model.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every catalog model with its state, and the generation of the
    /// snapshot they come from.
    pub fn catalog_with_generation(&self) -> (u64, Vec<Listed>) {
        let snapshot = self.snapshot.load();
        let listed = snapshot
            .entries
            .iter()
            .map(|(id, entry)| Listed {
                id: id.clone(),
                state: entry.state(),
                served: match entry {
                    Entry::Served(model) => Some(model.clone()),
                    _ => None,
                },
            })
            .collect();
        (snapshot.generation, listed)
    }

    pub fn generation(&self) -> u64 {
        self.snapshot.load().generation
    }

    /// Whether no model is being loaded.
    pub fn settled(&self) -> bool {
        self.snapshot.load().entries.values().all(|entry| !matches!(entry, Entry::Loading { .. }))
    }

    /// Whether a model's last load failed (the Router runs again for it).
    pub fn has_failures(&self) -> bool {
        self.snapshot.load().entries.values().any(|entry| matches!(entry, Entry::Failed(_)))
    }

    /// Ids of the models the Router loads when it starts: those no load
    /// has begun for yet, and those whose last load failed.
    pub(crate) fn for_the_router(&self) -> Vec<String> {
        let snapshot = self.snapshot.load();
        snapshot
            .entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Loading { ticket: 0, .. } | Entry::Failed(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Changes the entry of `id` if `change` says so; what it returns.
    fn change<T>(&self, id: &str, change: impl FnOnce(&Entry, u64) -> Option<(Entry, T)>) -> Option<T> {
        let _writing = self.writer.lock();
        let current = self.snapshot.load();
        let entry = current.entries.get(id)?;
        let (next, outcome) = change(entry, current.tickets + 1)?;
        let mut snapshot = Snapshot::clone(&current);
        snapshot.tickets += 1;
        snapshot.generation += 1;
        snapshot.entries.insert(id.to_owned(), next);
        self.snapshot.store(Arc::new(snapshot));
        Some(outcome)
    }

    /// Begins a load of `id` unless it is served or a load is under way:
    /// the load's ticket, which its later steps present.
    pub(crate) fn begin_load(&self, id: &str, on_demand: bool) -> Option<u64> {
        self.change(id, |entry, ticket| match entry {
            Entry::Loading { ticket: 0, .. } | Entry::Failed(_) | Entry::Unloaded(_) => {
                Some((Entry::Loading { ticket, on_demand, pool: None }, ticket))
            }
            Entry::Loading { .. } | Entry::Served(_) => None,
        })
    }

    /// Whether `ticket` is still the load under way for `id` (no unload
    /// came meanwhile).
    pub(crate) fn is_current(&self, id: &str, ticket: u64) -> bool {
        matches!(self.snapshot.load().entries.get(id), Some(Entry::Loading { ticket: current, .. }) if *current == ticket)
    }

    /// Records the pool of the load `ticket`, whose workers are about to
    /// start; false if that load was withdrawn.
    pub(crate) fn attach(&self, id: &str, ticket: u64, pool: ModelHandle) -> bool {
        self.change(id, |entry, _| match entry {
            Entry::Loading { ticket: current, on_demand, .. } if *current == ticket => {
                Some((Entry::Loading { ticket, on_demand: *on_demand, pool: Some(pool) }, ()))
            }
            _ => None,
        })
        .is_some()
    }

    /// Makes `model` reachable by its id, if `ticket` is still its load.
    pub(crate) fn publish(&self, ticket: u64, model: ServedModel) -> bool {
        let id = model.id.clone();
        let model = Arc::new(model);
        self.change(&id, |entry, _| match entry {
            Entry::Loading { ticket: current, .. } if *current == ticket => Some((Entry::Served(model), ())),
            _ => None,
        })
        .is_some()
    }

    /// Records why the load `ticket` of `id` failed, for readiness to report.
    pub(crate) fn record_failure(&self, id: &str, ticket: u64, reason: &str) {
        self.change(id, |entry, _| match entry {
            Entry::Loading { ticket: current, .. } if *current == ticket => {
                Some((Entry::Failed(reason.to_owned()), ()))
            }
            _ => None,
        });
    }

    /// Marks `id` unloaded `by` whoever asked: its pool, if it had one, for
    /// the caller to close. `None` when the catalog has no such model.
    pub(crate) fn withdraw(&self, id: &str, by: Unloader) -> Option<Option<ModelHandle>> {
        if !self.snapshot.load().entries.contains_key(id) {
            return None;
        }
        let pool = self.change(id, |entry, _| {
            let pool = match entry {
                Entry::Served(model) => Some(model.handle.clone()),
                Entry::Loading { pool, .. } => pool.clone(),
                Entry::Failed(_) => None,
                Entry::Unloaded(_) => return None,
            };
            Some((Entry::Unloaded(by), pool))
        });
        Some(pool.flatten())
    }

    /// One readiness probe per catalog model: up once it is served (its
    /// workers proved it with a forward pass) or deliberately unloaded.
    pub fn probes(&self) -> Vec<Arc<dyn Probe>> {
        let snapshot = self.snapshot.load();
        snapshot
            .entries
            .keys()
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
        let outcome = match self.registry.state(&self.id) {
            ModelState::Served | ModelState::Unloaded(_) => Ok(()),
            ModelState::Failed(reason) => Err(ProbeError::LoadFailed(reason)),
            ModelState::Loading { .. } | ModelState::Unknown => {
                Err(ProbeError::Loading("not loaded and proven by a forward pass yet"))
            }
        };
        Box::pin(async move { outcome })
    }
}
