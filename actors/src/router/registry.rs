//! The registry of served models: what the request path reads to dispatch
//! by model id, without a mailbox hop.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::catalog::ModelKind;
use crate::health::Probe;
use crate::inference::{ChatPool, EmbeddingPool};

/// How requests reach a served model.
#[derive(Clone)]
pub enum ModelHandle {
    Embedding(EmbeddingPool),
    Chat(ChatPool),
}

#[derive(Clone)]
pub struct ServedModel {
    pub id: String,
    pub kind: ModelKind,
    /// Unix seconds when this process started serving it.
    pub created: u64,
    pub handle: ModelHandle,
}

/// Served models by id; built at start-up, shared read-only.
#[derive(Clone, Default)]
pub struct ModelRegistry {
    models: Arc<BTreeMap<String, ServedModel>>,
}

impl ModelRegistry {
    pub fn new(models: Vec<ServedModel>) -> Self {
        Self { models: Arc::new(models.into_iter().map(|model| (model.id.clone(), model)).collect()) }
    }

    pub fn get(&self, id: &str) -> Option<&ServedModel> {
        self.models.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &ServedModel> {
        self.models.values()
    }

    /// One readiness probe per model: up once a forward pass succeeded.
    pub fn probes(&self) -> Vec<Arc<dyn Probe>> {
        self.models
            .values()
            .map(|model| {
                Arc::new(ModelProbe { name: format!("model:{}", model.id), model: model.clone() })
                    as Arc<dyn Probe>
            })
            .collect()
    }
}

struct ModelProbe {
    name: String,
    model: ServedModel,
}

impl Probe for ModelProbe {
    fn component(&self) -> &str {
        &self.name
    }

    fn required(&self) -> bool {
        true
    }

    fn check(&self) -> BoxFuture<'static, Result<(), String>> {
        let ready = match &self.model.handle {
            ModelHandle::Embedding(pool) => pool.is_ready(),
            ModelHandle::Chat(pool) => pool.is_ready(),
        };
        Box::pin(async move {
            if ready {
                Ok(())
            } else {
                Err("loading: no forward pass has succeeded yet".to_owned())
            }
        })
    }
}
