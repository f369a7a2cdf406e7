//! The gateway: public model ids served by other models. A route maps an
//! id to targets (local models of the catalog, and upstreams: other
//! OpenAI-compatible servers) with weights and a strategy; a request
//! tries one target, then others on a retryable failure (within the
//! retry budget), then the route's fallbacks in order. What a request
//! goes through before and after (auth, limits, quotas, guard, cache) is
//! the pipeline's: `crate::openai::routed`.
//!
//! Targets are shared by every route that names them: their health
//! (passive ejection, the active probe of upstreams), requests in flight
//! and latency are the target's, whichever route sent the request.

mod balance;
mod health;
mod sse;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, Counter};
use tower::retry::budget::{Budget, TpsBudget};

pub use self::balance::{Attempt, Attempts};
pub use self::health::{Ejection, TargetHealth};
pub use self::sse::{EventSplitter, SseError};
pub use self::upstream::{Exchange, Failure, Upstream, UpstreamError, UpstreamPath};

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the semantic cache's Redis: {0}")]
    Redis(#[from] blaze_actors::RedisError),
}
use blaze_actors::cache::{SemanticEntry, SemanticIndex, SemanticNews, SemanticShare};

use crate::settings::{SemanticCacheSpec, Settings, Strategy};

/// What serves a target's requests.
pub enum Backend {
    /// A model of the catalog, served here.
    Local,
    /// Boxed: one per target, read through the target's Arc.
    Upstream(Box<Upstream>),
}

/// A catalog model as the gateway sends requests to it.
pub struct Target {
    /// Its catalog id.
    pub id: String,
    pub backend: Backend,
    pub health: TargetHealth,
}

impl Target {
    /// A request goes to it: counted in flight until the guard drops
    /// (with a stream's answer, when the stream ends).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.health.begin();
        InFlight { target: self.clone() }
    }
}

/// A request in flight to a target.
pub struct InFlight {
    target: Arc<Target>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.target.health.end();
    }
}

/// A public id and how its requests are served.
pub struct Route {
    pub id: String,
    pub targets: Vec<(Arc<Target>, u32)>,
    pub strategy: Strategy,
    pub fallbacks: Vec<Arc<Target>>,
    /// Its semantic cache, when it has one.
    pub semantic: Option<SemanticCache>,
    retries: Counter,
    retries_refused: Counter,
    fallbacks_taken: Counter,
}

/// A route's semantic cache: its settings and its index.
pub struct SemanticCache {
    pub spec: SemanticCacheSpec,
    pub index: SemanticIndex,
}

/// Every route, and the limits their retries share.
pub struct Gateway {
    routes: HashMap<String, Arc<Route>>,
    targets: Vec<Arc<Target>>,
    max_attempts: u32,
    budget: TpsBudget,
    /// The semantic caches' entries shared through Redis, when the
    /// response cache has its Redis tier.
    share: Option<Arc<SemanticShare>>,
}

impl Gateway {
    /// Routes with nothing behind them: a configuration without upstreams
    /// or routes.
    pub fn empty() -> Self {
        Self {
            routes: HashMap::new(),
            targets: Vec::new(),
            max_attempts: 1,
            budget: TpsBudget::new(Duration::from_secs(10), 0, 0.0),
            share: None,
        }
    }

    /// The routes and upstreams of `settings`; the upstreams' API keys are
    /// read here. Called on the runtime (a Redis connection starts).
    pub fn new(settings: &Settings) -> Result<Self, GatewayError> {
        let gateway = &settings.gateway;
        let ejection = Ejection {
            after_failures: gateway.eject_after_failures,
            backoff: Duration::from_millis(gateway.eject_backoff_ms),
            max_backoff: Duration::from_millis(gateway.eject_max_backoff_ms),
        };
        let mut targets: HashMap<String, Arc<Target>> = HashMap::new();
        for (id, spec) in &settings.models.upstreams {
            let backend =
                Backend::Upstream(Box::new(Upstream::new(id, spec).map_err(GatewayError::Upstream)?));
            let target = Target { id: id.clone(), backend, health: TargetHealth::new(id, ejection) };
            targets.insert(id.clone(), Arc::new(target));
        }
        let mut target = |id: &str| {
            targets
                .entry(id.to_owned())
                .or_insert_with(|| {
                    let health = TargetHealth::new(id, ejection);
                    Arc::new(Target { id: id.to_owned(), backend: Backend::Local, health })
                })
                .clone()
        };
        let mut routes = HashMap::new();
        for (id, spec) in &gateway.routes {
            let route_targets =
                spec.targets.iter().map(|entry| (target(&entry.model), entry.weight)).collect();
            let fallbacks = spec.fallbacks.iter().map(|model| target(model)).collect();
            let mut route = Route::new(id, route_targets, spec.strategy, fallbacks);
            route.semantic = spec.semantic_cache.clone().map(|spec| {
                let index = SemanticIndex::new(spec.max_entries);
                SemanticCache { spec, index }
            });
            routes.insert(id.clone(), Arc::new(route));
        }
        // An upstream asked for by its own id is a route of one target.
        for id in settings.models.upstreams.keys() {
            let alone = vec![(target(id), 1)];
            routes.insert(id.clone(), Arc::new(Route::new(id, alone, Strategy::Weighted, Vec::new())));
        }
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            gateway.min_retries_per_second,
            gateway.retry_budget_percent as f32 / 100.0,
        );
        let targets = targets.into_values().collect();
        let semantic = routes.values().any(|route| route.semantic.is_some());
        let redis_url = &settings.storage.redis_url;
        let share = if semantic && settings.cache.enabled && settings.cache.redis && !redis_url.is_empty() {
            let timeout = Duration::from_millis(settings.cache.redis_timeout_ms);
            Some(Arc::new(SemanticShare::open(redis_url, timeout)?))
        } else {
            None
        };
        Ok(Self { routes, targets, max_attempts: gateway.max_attempts, budget, share })
    }

    /// Keeps a new entry of `route`'s semantic cache and shares it with
    /// the other replicas (off the request path).
    pub fn keep_semantic(&self, route: &Route, entry: SemanticEntry) {
        let Some(semantic) = &route.semantic else { return };
        if let Some(share) = &self.share {
            let (share, route_id, entry, max_entries) =
                (share.clone(), route.id.clone(), entry.clone(), semantic.spec.max_entries);
            #[expect(
                clippy::disallowed_methods,
                reason = "one bounded Redis write off the request path; lost at shutdown, the entry is only a cache's"
            )]
            actix_web::rt::spawn(async move {
                if let Err(error) = share.publish(&route_id, &entry, max_entries).await {
                    tracing::warn!(%error, route = %route_id, "semantic cache: cannot share an entry");
                }
            });
        }
        semantic.index.insert(entry);
    }

    /// Loads the other replicas' semantic cache entries and hears the new
    /// ones, for as long as the process lives.
    pub fn start_sharing(self: &Arc<Self>) {
        let Some(share) = self.share.clone() else { return };
        let gateway = self.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the subscription lives as long as the process; each Redis call is bounded"
        )]
        actix_web::rt::spawn(async move {
            share
                .listen(async |news| match news {
                    SemanticNews::Entry(route, entry) => {
                        if let Some(semantic) = gateway.routes.get(&route).and_then(|route| route.semantic.as_ref()) {
                            semantic.index.insert(entry);
                        }
                    }
                    SemanticNews::Reload => {
                        for route in gateway.routes.values() {
                            let Some(semantic) = &route.semantic else { continue };
                            match share.load(&route.id).await {
                                Ok(entries) => entries.into_iter().for_each(|entry| semantic.index.insert(entry)),
                                Err(error) => tracing::warn!(%error, route = %route.id, "semantic cache: cannot load the shared entries"),
                            }
                        }
                    }
                })
                .await;
        });
    }

    /// The route that serves the public id `model`, if the gateway does.
    pub fn route(&self, model: &str) -> Option<&Arc<Route>> {
        if self.routes.is_empty() {
            return None;
        }
        self.routes.get(model)
    }

    /// Every public id the gateway serves, sorted.
    pub fn route_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// The order in which one request of `route` tries its targets.
    pub fn attempts<'a>(&'a self, route: &'a Route) -> Attempts<'a> {
        self.budget.deposit();
        Attempts::new(route, self.max_attempts, &self.budget)
    }

    /// Probes every upstream every `interval`, for as long as the process
    /// lives: a target found answering while taken out comes back at once;
    /// one found failing counts a failure.
    pub fn start_probes(self: &Arc<Self>, interval: Duration) {
        if interval.is_zero()
            || !self.targets.iter().any(|target| matches!(target.backend, Backend::Upstream(_)))
        {
            return;
        }
        let gateway = self.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the probes live as long as the process; each one is bounded by its upstream's timeouts"
        )]
        actix_web::rt::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let probes = gateway.targets.iter().filter_map(|target| match &target.backend {
                    Backend::Upstream(upstream) => Some(async move {
                        match upstream.probe().await {
                            Ok(()) => target.health.probe_succeeded(),
                            Err(failure) => target.health.failed(failure.class()),
                        }
                    }),
                    Backend::Local => None,
                });
                futures_util::future::join_all(probes).await;
            }
        });
    }
}

impl Route {
    fn new(
        id: &str,
        targets: Vec<(Arc<Target>, u32)>,
        strategy: Strategy,
        fallbacks: Vec<Arc<Target>>,
    ) -> Self {
        let label = id.to_owned();
        Self {
            id: id.to_owned(),
            targets,
            strategy,
            fallbacks,
            semantic: None,
            retries: counter!("blaze_gateway_retries_total", "route" => label.clone()),
            retries_refused: counter!("blaze_gateway_retries_refused_total", "route" => label.clone()),
            fallbacks_taken: counter!("blaze_gateway_fallbacks_total", "route" => label),
        }
    }
}
