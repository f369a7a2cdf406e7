//! The Router actor: drives the [`ModelManager`]. Each start begins loading
//! the catalog models that are not served yet (or whose last load failed);
//! while it runs, it unloads the models idle for their `idle_unload_s`, and
//! it stops when a load failed, so that the supervisor runs it again after
//! its backoff and the load is tried again. The models already served keep
//! serving meanwhile.

use std::time::Duration;

use actix::prelude::*;

use super::manager::ModelManager;

/// How often the Router looks for idle models and failed loads.
const TICK: Duration = Duration::from_secs(1);

pub struct Router {
    models: ModelManager,
}

impl Router {
    /// Begins loading what the registry still expects.
    pub fn start(models: ModelManager) -> Self {
        for id in models.registry().for_the_router() {
            models.load(&id, false);
        }
        Self { models }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TICK, |router, ctx| {
            router.models.unload_idle();
            if router.models.registry().has_failures() {
                tracing::warn!("a model failed to load; the router restarts to try again");
                ctx.stop();
            }
        });
    }
}

crate::supervised_actor!(Router);
