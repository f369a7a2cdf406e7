//! Child specifications, restart backoff and the published board of actor
//! states.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::{Actor, AsyncContext, Context, Handler, Recipient};
use futures_util::FutureExt;
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::watch;

use super::mailbox::{Counted, CountedRecipient, MailboxDepth};
use super::messages::{ChildDown, ChildHandle, ChildUp, Fail, Ping, Stop};

/// What a supervised actor must answer (the `supervised_actor!` macro
/// implements it).
pub trait SupervisedActor:
    Actor<Context = Context<Self>> + Handler<Counted<Ping>> + Handler<Counted<Stop>> + Handler<Counted<Fail>>
{
}
impl<A> SupervisedActor for A where
    A: Actor<Context = Context<A>> + Handler<Counted<Ping>> + Handler<Counted<Stop>> + Handler<Counted<Fail>>
{
}

type Launcher = dyn Fn(Reporter) + Send + Sync;

/// How to make a fresh instance of one child. The factory runs on the
/// child's own arbiter, so a slow start (a model load, a first connection)
/// delays no other child.
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) name: &'static str,
    pub(crate) required: bool,
    pub(crate) launch: Arc<Launcher>,
}

/// Why a child could not start: each kind of child fails in its own
/// terms, and the supervisor only reports the text and retries.
pub type ChildStartError = Box<dyn std::error::Error>;

impl ChildSpec {
    /// `required`: whether readiness waits for this child.
    pub fn new<A, F, Fut>(name: &'static str, required: bool, factory: F) -> Self
    where
        A: SupervisedActor,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<A, ChildStartError>> + 'static,
    {
        let launch = move |reporter: Reporter| {
            let starting = factory();
            #[expect(
                clippy::disallowed_methods,
                reason = "the supervisor's own child runner: it owns the child's lifecycle and restarts"
            )]
            actix_rt::spawn(run_child(starting, reporter));
        };
        Self { name, required, launch: Arc::new(launch) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Runs one instance of a child to its end and reports its start and its
/// end to the supervisor, whether it stopped or panicked.
async fn run_child<A, Fut>(starting: Fut, reporter: Reporter)
where
    A: SupervisedActor,
    Fut: Future<Output = Result<A, ChildStartError>>,
{
    let began = Instant::now();
    let actor = match AssertUnwindSafe(starting).catch_unwind().await {
        Ok(Ok(actor)) => actor,
        Ok(Err(error)) => return reporter.down(format!("failed to start: {error}")),
        Err(panic) => return reporter.down(format!("panicked while starting: {}", panic_message(&*panic))),
    };
    let context = Context::<A>::new();
    let address = context.address();
    let depth = MailboxDepth::default();
    reporter.up(
        ChildHandle {
            ping: CountedRecipient::new(address.clone().recipient(), depth.clone()),
            stop: CountedRecipient::new(address.clone().recipient(), depth.clone()),
            fail: CountedRecipient::new(address.clone().recipient(), depth),
        },
        began.elapsed(),
    );
    drop(address);
    let reason = match AssertUnwindSafe(context.into_future(actor)).catch_unwind().await {
        Ok(()) => "stopped".to_owned(),
        Err(panic) => format!("panicked: {}", panic_message(&*panic)),
    };
    reporter.down(reason);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Tells the supervisor about one instance of one child.
pub(crate) struct Reporter {
    pub name: &'static str,
    pub generation: u64,
    pub up: Recipient<ChildUp>,
    pub down: Recipient<ChildDown>,
}

impl Reporter {
    fn up(&self, handle: ChildHandle, start_took: Duration) {
        self.up.do_send(ChildUp { name: self.name, generation: self.generation, handle, start_took });
    }

    fn down(&self, reason: String) {
        self.down.do_send(ChildDown { name: self.name, generation: self.generation, reason });
    }
}

/// Exponential restart delay: `initial`, doubled after each failure in a
/// row, capped at `max`. A child that ran for `stable_after` counts as
/// healthy again and its next restart is quick.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(10),
            stable_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before the restart that follows `failures_in_a_row` failures
    /// (1 for the first).
    pub fn delay(&self, failures_in_a_row: u32) -> Duration {
        let doublings = failures_in_a_row.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

/// Lifecycle state of one actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Starting,
    Up,
    Restarting,
    Stopped,
}

/// What the supervisor publishes about one actor.
#[derive(Clone)]
pub struct ActorState {
    pub status: ActorStatus,
    pub required: bool,
    pub restarts: u64,
    pub started_at: Option<SystemTime>,
    pub stopped_at: Option<SystemTime>,
    pub last_exit: Option<String>,
    /// The running instance, for health probes; it also tells the
    /// instance's mailbox depth.
    pub ping: Option<CountedRecipient<Ping>>,
}

/// The supervisor's published view of its children: written by the
/// supervisor only, read by the health monitor; a watch channel says when it
/// changed.
#[derive(Clone)]
pub struct ActorBoard {
    states: Arc<RwLock<BTreeMap<&'static str, ActorState>>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for ActorBoard {
    fn default() -> Self {
        Self { states: Arc::default(), changes: Arc::new(watch::Sender::new(0)) }
    }
}

impl ActorBoard {
    pub fn snapshot(&self) -> BTreeMap<&'static str, ActorState> {
        self.states.read().clone()
    }

    pub fn get(&self, name: &str) -> Option<ActorState> {
        self.states.read().get(name).cloned()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Forgets a child that left the tree.
    pub(crate) fn remove(&self, name: &str) {
        self.states.write().remove(name);
        self.changes.send_modify(|version| *version += 1);
    }

    pub(crate) fn update(&self, name: &'static str, change: impl FnOnce(&mut ActorState)) {
        {
            let mut states = self.states.write();
            let state = states.entry(name).or_insert_with(|| ActorState {
                status: ActorStatus::Starting,
                required: true,
                restarts: 0,
                started_at: None,
                stopped_at: None,
                last_exit: None,
                ping: None,
            });
            change(state);
        }
        self.changes.send_modify(|version| *version += 1);
    }
}
