//! The supervisor actor: starts, watches and restarts its children.

use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use actix::Arbiter;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::core::{ActorBoard, ActorStatus, Backoff, ChildSpec, Reporter};
use super::messages::{Adopt, ChildDown, ChildHandle, ChildUp, Release, StartAll, Stop, StopAll};

/// How long shutdown waits for the children to stop before it stops their
/// arbiters anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

struct Child {
    spec: ChildSpec,
    arbiter: Arbiter,
    generation: u64,
    handle: Option<ChildHandle>,
    failures_in_a_row: u32,
    up_since: Option<Instant>,
    reported_once: bool,
    /// An instance was launched and has not ended yet.
    live: bool,
    /// Let go when its instance ends ([`Release`]) rather than restarted;
    /// `Some(spec)` when a new child of the same name was adopted
    /// meanwhile, launched then in its place.
    released: Option<Option<ChildSpec>>,
}

impl Child {
    fn new(spec: ChildSpec, board: &ActorBoard) -> Self {
        board.update(spec.name, |state| state.required = spec.required);
        Self {
            spec,
            arbiter: Arbiter::new(),
            generation: 0,
            handle: None,
            failures_in_a_row: 0,
            up_since: None,
            reported_once: false,
            live: false,
            released: None,
        }
    }
}

/// Owns the actor tree; see the module documentation.
pub struct Supervisor {
    children: Vec<Child>,
    board: ActorBoard,
    backoff: Backoff,
    stopping: bool,
    waiting_for_start: Vec<oneshot::Sender<()>>,
    waiting_for_stop: Vec<oneshot::Sender<()>>,
}

impl Supervisor {
    pub fn new(specs: Vec<ChildSpec>, board: ActorBoard, backoff: Backoff) -> Self {
        let children = specs.into_iter().map(|spec| Child::new(spec, &board)).collect();
        Self {
            children,
            board,
            backoff,
            stopping: false,
            waiting_for_start: Vec::new(),
            waiting_for_stop: Vec::new(),
        }
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut Child> {
        self.children.iter_mut().find(|child| child.spec.name == name)
    }

    fn launch(&mut self, name: &'static str, ctx: &mut Context<Self>) {
        let address = ctx.address();
        let Some(child) = self.child_mut(name) else { return };
        child.generation += 1;
        child.live = true;
        let generation = child.generation;
        let spawn_on = |arbiter: &Arbiter| {
            let launch = child.spec.launch.clone();
            let reporter = Reporter {
                name,
                generation,
                up: address.clone().recipient(),
                down: address.clone().recipient(),
            };
            arbiter.spawn_fn(move || launch(reporter))
        };
        // An arbiter whose thread died takes no work: give the child a new one.
        if !spawn_on(&child.arbiter) {
            warn!(actor = name, "arbiter gone; starting the actor on a new one");
            let arbiter = Arbiter::new();
            spawn_on(&arbiter);
            child.arbiter = arbiter;
        }
    }

    /// A released child whose instance ended: gone for good, or replaced
    /// by the child adopted under its name meanwhile.
    fn retire(&mut self, name: &'static str, ctx: &mut Context<Self>) {
        let Some(index) = self.children.iter().position(|child| child.spec.name == name) else { return };
        match self.children[index].released.take() {
            Some(Some(replacement)) => {
                let child = &mut self.children[index];
                child.spec = replacement;
                child.failures_in_a_row = 0;
                info!(actor = name, "released actor replaced");
                self.launch(name, ctx);
            }
            Some(None) => {
                let child = self.children.remove(index);
                child.arbiter.stop();
                self.board.remove(name);
                info!(actor = name, "actor released");
                self.notify_when_all_reported();
            }
            None => {}
        }
    }

    fn notify_when_all_reported(&mut self) {
        if self.children.iter().all(|child| child.reported_once) {
            for waiter in self.waiting_for_start.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    fn notify_when_all_stopped(&mut self) {
        if self.children.iter().all(|child| child.handle.is_none()) {
            for waiter in self.waiting_for_stop.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for child in &self.children {
            child.arbiter.stop();
        }
    }
}

impl Handler<StartAll> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StartAll, ctx: &mut Self::Context) -> Self::Result {
        let (sender, receiver) = oneshot::channel();
        self.waiting_for_start.push(sender);
        let names: Vec<_> = self.children.iter().map(|child| child.spec.name).collect();
        for name in names {
            self.launch(name, ctx);
        }
        self.notify_when_all_reported();
        Box::pin(async move {
            let _ = receiver.await;
        })
    }
}

impl Handler<Adopt> for Supervisor {
    type Result = ();

    fn handle(&mut self, message: Adopt, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        for spec in message.0 {
            let name = spec.name;
            if let Some(child) = self.child_mut(name) {
                if child.released.is_some() {
                    let live = child.live;
                    child.released = Some(Some(spec));
                    if !live {
                        self.retire(name, ctx);
                    }
                }
                continue;
            }
            self.children.push(Child::new(spec, &self.board));
            self.launch(name, ctx);
        }
    }
}

impl Handler<ChildUp> for Supervisor {
    type Result = ();

    fn handle(&mut self, message: ChildUp, _: &mut Self::Context) {
        let stopping = self.stopping;
        let Some(child) = self.child_mut(message.name) else { return };
        if child.generation != message.generation {
            return;
        }
        child.reported_once = true;
        child.up_since = Some(Instant::now());
        let ping = message.handle.ping.clone();
        if stopping {
            message.handle.stop.do_send(Stop);
        }
        child.handle = Some(message.handle);
        let now = SystemTime::now();
        info!(
            actor = message.name,
            generation = message.generation,
            started_at = %humantime::format_rfc3339_millis(now),
            start_ms = message.start_took.as_secs_f64() * 1000.0,
            "actor started"
        );
        metrics::gauge!("blaze_actor_up", "actor" => message.name).set(1.0);
        self.board.update(message.name, |state| {
            state.status = ActorStatus::Up;
            state.started_at = Some(now);
            state.ping = Some(ping);
        });
        self.notify_when_all_reported();
    }
}

impl Handler<ChildDown> for Supervisor {
    type Result = ();

    fn handle(&mut self, message: ChildDown, ctx: &mut Self::Context) {
        let stopping = self.stopping;
        let backoff = self.backoff;
        let Some(child) = self.child_mut(message.name) else { return };
        if child.generation != message.generation {
            return;
        }
        child.reported_once = true;
        child.handle = None;
        child.live = false;
        let ran_for = child.up_since.take().map(|since| since.elapsed());
        if child.released.is_some() && !stopping {
            metrics::gauge!("blaze_actor_up", "actor" => message.name).set(0.0);
            return self.retire(message.name, ctx);
        }
        let now = SystemTime::now();
        let stopped_at = humantime::format_rfc3339_millis(now);
        let ran_ms = ran_for.map(|ran| ran.as_secs_f64() * 1000.0);
        metrics::gauge!("blaze_actor_up", "actor" => message.name).set(0.0);
        if stopping {
            info!(actor = message.name, %stopped_at, ran_ms, reason = %message.reason, "actor stopped");
            self.board.update(message.name, |state| {
                state.status = ActorStatus::Stopped;
                state.stopped_at = Some(now);
                state.ping = None;
            });
            self.notify_when_all_stopped();
            return;
        }
        child.failures_in_a_row = match ran_for {
            Some(ran) if ran >= backoff.stable_after => 1,
            _ => child.failures_in_a_row + 1,
        };
        let delay = backoff.delay(child.failures_in_a_row);
        warn!(
            actor = message.name,
            generation = message.generation,
            %stopped_at,
            ran_ms,
            reason = %message.reason,
            restart_in_ms = delay.as_secs_f64() * 1000.0,
            "actor stopped unexpectedly; restarting"
        );
        metrics::counter!("blaze_actor_restarts_total", "actor" => message.name).increment(1);
        self.board.update(message.name, |state| {
            state.status = ActorStatus::Restarting;
            state.restarts += 1;
            state.stopped_at = Some(now);
            state.last_exit = Some(message.reason.clone());
            state.ping = None;
        });
        self.notify_when_all_reported();
        let name = message.name;
        ctx.run_later(delay, move |supervisor, ctx| {
            if !supervisor.stopping {
                supervisor.launch(name, ctx);
            }
        });
    }
}

impl Handler<Release> for Supervisor {
    type Result = ();

    fn handle(&mut self, message: Release, ctx: &mut Self::Context) {
        for name in message.0 {
            let Some(child) = self.child_mut(&name) else { continue };
            child.released = Some(None);
            let (name, live) = (child.spec.name, child.live);
            if !live {
                self.retire(name, ctx);
            }
        }
    }
}

impl Handler<StopAll> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopAll, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        let (sender, receiver) = oneshot::channel();
        self.waiting_for_stop.push(sender);
        for handle in self.children.iter().filter_map(|child| child.handle.as_ref()) {
            handle.stop.do_send(Stop);
        }
        self.notify_when_all_stopped();
        Box::pin(
            async move {
                if tokio::time::timeout(STOP_DEADLINE, receiver).await.is_err() {
                    warn!("some actors did not stop in time; stopping their threads");
                }
            }
            .into_actor(self)
            .map(|_, supervisor, _| {
                for child in &supervisor.children {
                    child.arbiter.stop();
                }
            }),
        )
    }
}

impl Handler<super::FailChild> for Supervisor {
    type Result = bool;

    fn handle(&mut self, message: super::FailChild, _: &mut Self::Context) -> bool {
        let handle = self
            .children
            .iter()
            .find(|child| child.spec.name == message.name)
            .and_then(|child| child.handle.as_ref());
        match handle {
            Some(handle) => {
                handle.fail.do_send(super::Fail(message.mode));
                true
            }
            None => false,
        }
    }
}
