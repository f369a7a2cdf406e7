//! The Auth actor: owns the background work of identity. It writes the
//! batched last-used times, reloads revocations on an interval, prunes
//! expired ones, and listens for other replicas' events. Request handlers
//! never send it a message: they read the [`Authenticator`] it owns.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, WrapFuture};

use super::authenticator::Authenticator;
use super::events::{Incoming, Subscription};

/// Where other replicas' events come from.
#[derive(Clone)]
pub enum EventSource {
    Local,
    Redis(String),
    Postgres(Box<tokio_postgres::Config>),
}

impl EventSource {
    pub fn name(&self) -> &'static str {
        match self {
            EventSource::Local => "local",
            EventSource::Redis(_) => "redis",
            EventSource::Postgres(_) => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthActorConfig {
    /// How often last-used times are written.
    pub last_used_flush: Duration,
    /// How often revocations are reloaded from the store (the safety net
    /// under the events).
    pub resync_interval: Duration,
}

pub struct AuthActor {
    authenticator: Arc<Authenticator>,
    events: EventSource,
    config: AuthActorConfig,
}

impl AuthActor {
    pub fn new(authenticator: Arc<Authenticator>, events: EventSource, config: AuthActorConfig) -> Self {
        Self { authenticator, events, config }
    }
}

/// How often expired revocations and refresh tokens are deleted.
const PRUNE_EVERY: u32 = 120;

impl Actor for AuthActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.config.last_used_flush, |actor, ctx| {
            let authenticator = actor.authenticator.clone();
            ctx.spawn(
                async move {
                    if let Err(error) = authenticator.flush_last_used().await {
                        tracing::warn!(error = %error, "cannot write last-used times; kept for the next flush");
                    }
                }
                .into_actor(actor),
            );
        });
        let mut resyncs = 0u32;
        ctx.run_interval(self.config.resync_interval, move |actor, ctx| {
            let authenticator = actor.authenticator.clone();
            resyncs = resyncs.wrapping_add(1);
            let prune = resyncs.is_multiple_of(PRUNE_EVERY);
            ctx.spawn(
                async move {
                    if let Err(error) = authenticator.resync().await {
                        tracing::warn!(error = %error, "cannot reload revocations");
                    }
                    if prune {
                        match authenticator.store().prune(super::now_ms()).await {
                            Ok(removed) if removed > 0 => {
                                tracing::info!(removed, "pruned expired revocations and refresh tokens")
                            }
                            Ok(_) => {}
                            Err(error) => tracing::warn!(error = %error, "cannot prune expired revocations"),
                        }
                    }
                }
                .into_actor(actor),
            );
        });
        if !matches!(self.events, EventSource::Local) {
            let listening = listen(self.authenticator.clone(), self.events.clone());
            // A subscription that ends for good stops the actor; the
            // supervisor restarts it, which subscribes again.
            ctx.spawn(listening.into_actor(self).map(|(), _, ctx| ctx.stop()));
        }
    }
}

/// Applies other replicas' events until the subscription is lost for good.
/// Each (re)subscription drops the caches and reloads revocations, since
/// events may have been missed while it was down.
async fn listen(authenticator: Arc<Authenticator>, source: EventSource) {
    let mut failures = 0u32;
    loop {
        let subscription = match &source {
            EventSource::Redis(url) => Subscription::redis(url).await,
            EventSource::Postgres(config) => Subscription::postgres((**config).clone()).await,
            EventSource::Local => return,
        };
        match subscription {
            Ok(mut subscription) => {
                failures = 0;
                tracing::info!(source = source.name(), "listening for identity events");
                catch_up(&authenticator).await;
                while let Some(incoming) = subscription.next().await {
                    match incoming {
                        Incoming::Event(event) => authenticator.apply(&event).await,
                        Incoming::Resync => catch_up(&authenticator).await,
                    }
                }
                subscription.close().await;
                tracing::warn!(
                    source = source.name(),
                    "lost the identity event subscription; subscribing again"
                );
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(
                        source = source.name(),
                        %error,
                        "cannot subscribe to identity events; retrying"
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn catch_up(authenticator: &Authenticator) {
    authenticator.clear_caches();
    if let Err(error) = authenticator.resync().await {
        tracing::warn!(error = %error, "cannot reload revocations");
    }
}

crate::supervised_actor!(AuthActor);
