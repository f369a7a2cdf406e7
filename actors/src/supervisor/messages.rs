//! Messages of the supervisor and of every supervised actor.

use std::time::Duration;

use actix::Message;

use super::mailbox::CountedRecipient;

/// Liveness check answered by every supervised actor; the health monitor
/// measures its round trip.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Ping;

/// Starts every child concurrently; answers once each one is up or has
/// failed its first start.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StartAll;

/// Stops every child and their arbiters, for shutdown; no restarts follow.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopAll;

/// Adds children to the tree and starts them (the Router hands over the
/// workers of each model it loads); a name already supervised is skipped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Adopt(pub Vec<super::ChildSpec>);

/// Lets the named children go: each one's instance ends on its own (a
/// model's worker drains its closed pool) and is then removed from the
/// tree, not restarted. A child adopted under the same name before that
/// starts once the old instance has ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Release(pub Vec<String>);

/// Asks a supervised actor to stop cleanly (at shutdown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Stop;

/// How the supervisor reaches a running child; every message sent
/// through it is counted in the child's mailbox depth.
#[derive(Clone)]
pub struct ChildHandle {
    pub ping: CountedRecipient<Ping>,
    pub stop: CountedRecipient<Stop>,
    pub fail: CountedRecipient<Fail>,
}

/// A child's instance is running.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ChildUp {
    pub name: &'static str,
    pub generation: u64,
    pub handle: ChildHandle,
    pub start_took: Duration,
}

/// A child's instance ended: it stopped, panicked, or failed to start.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ChildDown {
    pub name: &'static str,
    pub generation: u64,
    pub reason: String,
}

/// Makes a supervised actor fail on purpose. Only the `test-hooks` build's
/// fault routes send it (through [`FailChild`]); every supervised actor
/// answers it, so the fault tests reach any of them.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Fail(pub FailMode);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Panic,
    Stop,
}

/// Makes the named child fail; false if no such child runs.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct FailChild {
    pub name: String,
    pub mode: FailMode,
}
