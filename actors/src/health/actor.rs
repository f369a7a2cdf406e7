//! The health monitor actor: probes on an interval, publishes snapshots.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use futures_util::future::join_all;

use super::core::{ComponentHealth, HealthSnapshot, HealthState, Probe, ProbeError, ProbeOutcome};
use super::messages::{BoardChanged, ProbeNow};
use crate::supervisor::{ActorBoard, Ping};

#[derive(Debug, Clone, Copy)]
pub struct HealthMonitorConfig {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

/// Probes components and publishes their health; see the module docs.
pub struct HealthMonitor {
    config: HealthMonitorConfig,
    state: Arc<HealthState>,
    board: ActorBoard,
    probes: Vec<Arc<dyn Probe>>,
    actor_pings: HashMap<String, ProbeOutcome>,
    probe_outcomes: HashMap<String, ProbeOutcome>,
    quick_round_pending: bool,
}

/// How soon a probe round follows one that found the service not ready.
const QUICK_REPROBE: Duration = Duration::from_millis(200);

enum Checked {
    Actor(String, ProbeOutcome),
    Component(String, ProbeOutcome),
}

impl HealthMonitor {
    pub fn new(
        config: HealthMonitorConfig,
        state: Arc<HealthState>,
        board: ActorBoard,
        probes: Vec<Arc<dyn Probe>>,
    ) -> Self {
        Self {
            config,
            state,
            board,
            probes,
            actor_pings: HashMap::new(),
            probe_outcomes: HashMap::new(),
            quick_round_pending: false,
        }
    }

    /// Builds the snapshot from the board and the last outcomes, and
    /// publishes it.
    fn publish(&self) {
        let mut snapshot = HealthSnapshot::default();
        for (name, state) in self.board.snapshot() {
            if let Some(mailbox) = &state.ping {
                metrics::gauge!("blaze_actor_mailbox_depth", "actor" => name).set(mailbox.depth() as f64);
            }
            let health = ComponentHealth::of_actor(&state, self.actor_pings.get(name));
            snapshot.components.insert(format!("actor:{name}"), health);
        }
        for probe in &self.probes {
            let outcome = self.probe_outcomes.get(probe.component());
            let health = ComponentHealth::of_probe(probe.required(), outcome);
            // Alerts watch the stores (PostgreSQL, Redis) through this.
            let up = if health.status == super::core::ComponentStatus::Up { 1.0 } else { 0.0 };
            metrics::gauge!("blaze_component_up", "component" => probe.component().to_owned()).set(up);
            snapshot.components.insert(probe.component().to_owned(), health);
        }
        self.state.publish(snapshot);
    }

    /// One probe round: every actor pinged and every probe checked at once,
    /// each bounded by the probe timeout.
    fn probe_round(&self) -> impl Future<Output = Vec<Checked>> + 'static {
        let timeout = self.config.probe_timeout;
        let mut checks: Vec<futures_util::future::LocalBoxFuture<'static, Checked>> = Vec::new();
        for (name, state) in self.board.snapshot() {
            let Some(ping) = state.ping else { continue };
            checks.push(Box::pin(async move {
                let outcome = timed(timeout, async move {
                    ping.send(Ping).await.map_err(|error| ProbeError::Down(format!("mailbox: {error}")))
                })
                .await;
                Checked::Actor(name.to_owned(), outcome)
            }));
        }
        for probe in &self.probes {
            let name = probe.component().to_owned();
            let check = probe.check();
            checks.push(Box::pin(async move { Checked::Component(name, timed(timeout, check).await) }));
        }
        join_all(checks)
    }

    fn run_round(&mut self) -> ResponseActFuture<Self, ()> {
        Box::pin(self.probe_round().into_actor(self).map(|results, monitor, ctx| {
            for checked in results {
                match checked {
                    Checked::Actor(name, outcome) => monitor.actor_pings.insert(name, outcome),
                    Checked::Component(name, outcome) => monitor.probe_outcomes.insert(name, outcome),
                };
            }
            monitor.publish();
            // While not ready (starting, loading a model, an outage), probe
            // again soon: readiness follows the components closely instead
            // of a whole interval late.
            if !monitor.state.readiness().ready
                && !monitor.state.is_draining()
                && !monitor.quick_round_pending
            {
                monitor.quick_round_pending = true;
                ctx.run_later(QUICK_REPROBE, |monitor, ctx| {
                    monitor.quick_round_pending = false;
                    let round = monitor.run_round();
                    ctx.spawn(round);
                });
            }
        }))
    }
}

async fn timed(timeout: Duration, check: impl Future<Output = Result<(), ProbeError>>) -> ProbeOutcome {
    let began = Instant::now();
    let result = match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    };
    ProbeOutcome { latency: began.elapsed(), result, at: SystemTime::now() }
}

impl Actor for HealthMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish();
        let changes = futures_util::stream::unfold(self.board.subscribe(), |mut receiver| async {
            receiver.changed().await.ok().map(|()| (BoardChanged, receiver))
        });
        ctx.add_stream(changes);
        let first = self.run_round();
        ctx.spawn(first);
        ctx.run_interval(self.config.probe_interval, |monitor, ctx| {
            let round = monitor.run_round();
            ctx.spawn(round);
        });
    }
}

impl StreamHandler<BoardChanged> for HealthMonitor {
    fn handle(&mut self, _: BoardChanged, _: &mut Self::Context) {
        // A restarted actor's last ping belongs to its previous instance.
        for (name, state) in self.board.snapshot() {
            if state.ping.is_none() {
                self.actor_pings.remove(name);
            }
        }
        self.publish();
    }

    // The board outlives this actor; its stream ending must not stop it.
    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<ProbeNow> for HealthMonitor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: ProbeNow, _: &mut Self::Context) -> Self::Result {
        self.run_round()
    }
}

crate::supervised_actor!(HealthMonitor);
