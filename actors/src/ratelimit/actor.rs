//! The RateLimiter actor: owns the limiter's background work. It probes
//! Redis while it is down (so recovery needs no request to notice it) and
//! sweeps local buckets that are full again. Request handlers never send
//! it a message: they call the [`RateLimiter`] it owns.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, WrapFuture};

use super::core::RateLimiter;

/// How often Redis is asked whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often full local buckets are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct RateLimiterActor {
    limiter: Arc<RateLimiter>,
    probing: bool,
}

impl RateLimiterActor {
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self { limiter, probing: false }
    }
}

impl Actor for RateLimiterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(SWEEP_EVERY, |actor, _| {
            let tracked = actor.limiter.sweep();
            metrics::gauge!("blaze_ratelimit_local_subjects").set(tracked as f64);
        });
        ctx.run_interval(PROBE_EVERY, |actor, ctx| {
            if actor.probing || actor.limiter.redis_up() || actor.limiter.backend_name() != "redis" {
                return;
            }
            actor.probing = true;
            let limiter = actor.limiter.clone();
            ctx.spawn(async move { limiter.probe().await }.into_actor(actor).map(|(), actor, _| {
                actor.probing = false;
            }));
        });
    }
}
crate::supervised_actor!(RateLimiterActor);
