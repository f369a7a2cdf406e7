//! The Cache actor: owns the cache's background work. It sweeps expired
//! disk entries, publishes the tiers' sizes, probes Redis while its tier is
//! skipped, and applies the invalidations other replicas publish. Request
//! handlers never send it a message: they call the [`ResponseCache`].

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, WrapFuture};

use super::core::{Invalidation, ResponseCache};
use super::redis::CHANNEL;
use crate::redis::{ChannelSubscription, Delivery};

const SWEEP_EVERY: Duration = Duration::from_secs(60);
const SIZES_EVERY: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Counting the shared Redis tier scans its keys: less often.
const REDIS_SIZES_EVERY: Duration = Duration::from_secs(30);

pub struct CacheActor {
    cache: Arc<ResponseCache>,
    /// Where other replicas' invalidations come from, if shared.
    redis_url: Option<String>,
    redis_timeout: Duration,
    probing: bool,
    counting_redis: bool,
}

impl CacheActor {
    pub fn new(cache: Arc<ResponseCache>, redis_url: Option<String>, redis_timeout: Duration) -> Self {
        Self { cache, redis_url, redis_timeout, probing: false, counting_redis: false }
    }

    fn count_redis(&mut self, ctx: &mut Context<Self>) {
        if self.counting_redis {
            return;
        }
        self.counting_redis = true;
        let cache = self.cache.clone();
        ctx.spawn(async move { cache.publish_redis_sizes().await }.into_actor(self).map(|_, actor, _| {
            actor.counting_redis = false;
        }));
    }
}

impl Actor for CacheActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.cache.publish_sizes();
        ctx.run_interval(SWEEP_EVERY, |actor, _| actor.cache.sweep());
        ctx.run_interval(SIZES_EVERY, |actor, _| actor.cache.publish_sizes());
        if self.redis_url.is_none() {
            return;
        }
        ctx.run_interval(PROBE_EVERY, |actor, ctx| {
            if actor.probing {
                return;
            }
            actor.probing = true;
            let cache = actor.cache.clone();
            ctx.spawn(async move { cache.probe_redis().await }.into_actor(actor).map(|(), actor, _| {
                actor.probing = false;
            }));
        });
        ctx.run_later(Duration::from_secs(1), |actor, ctx| {
            actor.count_redis(ctx);
            ctx.run_interval(REDIS_SIZES_EVERY, |actor, ctx| actor.count_redis(ctx));
        });
        if let Some(url) = self.redis_url.clone() {
            let listening = listen(self.cache.clone(), url, self.redis_timeout);
            // A subscription that ends for good stops the actor; the
            // supervisor restarts it, which subscribes again.
            ctx.spawn(listening.into_actor(self).map(|(), _, ctx| ctx.stop()));
        }
    }
}

/// Applies other replicas' invalidations. After a reconnection, messages
/// may have been lost: the memory tier is dropped whole (its entries are
/// refilled from Redis, which the invalidating replica cleaned itself).
async fn listen(cache: Arc<ResponseCache>, url: String, timeout: Duration) {
    let mut failures = 0u32;
    loop {
        match ChannelSubscription::open(&url, CHANNEL, timeout).await {
            Ok(mut subscription) => {
                failures = 0;
                while let Some(delivery) = subscription.next().await {
                    match delivery {
                        Delivery::Message(text) => match serde_json::from_str::<Invalidation>(&text) {
                            Ok(invalidation) => cache.drop_local(&invalidation).await,
                            Err(_) => tracing::warn!("ignored a cache invalidation that does not parse"),
                        },
                        Delivery::Reconnected => cache.forget_memory(),
                    }
                }
                subscription.close().await;
                tracing::warn!("lost the cache invalidation subscription; subscribing again");
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(%error, "cannot subscribe to cache invalidations; retrying");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

crate::supervised_actor!(CacheActor);
