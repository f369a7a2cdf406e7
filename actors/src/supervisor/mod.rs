//! Supervision of the actor tree.
//!
//! The [`Supervisor`] starts every child concurrently, each on an arbiter
//! (OS thread) of its own, logs each start and stop with its time, and
//! restarts a child that stops or panics after an exponential backoff.
//! actix's own `Supervisor` only restarts an actor that stops cleanly; a
//! panic in a handler would end the actor for good. Here each child's context
//! runs inside `catch_unwind`, so a panic is seen, counted and recovered.
//!
//! A child can be released ([`Release`]): when its instance ends, it
//! leaves the tree instead of restarting (an unloaded model's workers).
//!
//! Restarts are counted in `blaze_actor_restarts_total{actor}` and published
//! on the [`ActorBoard`], which the health monitor reads.

mod actor;
mod core;
mod mailbox;
mod messages;
#[cfg(test)]
mod tests;

pub use self::actor::Supervisor;
pub use self::core::{
    ActorBoard, ActorState, ActorStatus, Backoff, ChildSpec, ChildStartError, SupervisedActor,
};
pub use self::mailbox::{Counted, CountedRecipient, MailboxDepth};
pub use self::messages::{
    Adopt, ChildHandle, Fail, FailChild, FailMode, Ping, Release, StartAll, Stop, StopAll,
};

/// Implements the messages every supervised actor answers: `Ping` for the
/// health probes, `Stop` at shutdown, and `Fail` for the fault tests, bare
/// and [`Counted`] in the mailbox depth (as the supervisor sends them).
#[macro_export]
macro_rules! supervised_actor {
    (@counted $actor:ty, $message:ty) => {
        impl ::actix::Handler<$crate::supervisor::Counted<$message>> for $actor {
            type Result = ();
            fn handle(&mut self, counted: $crate::supervisor::Counted<$message>, ctx: &mut Self::Context) {
                <Self as ::actix::Handler<$message>>::handle(self, counted.message, ctx)
            }
        }
    };
    ($actor:ty) => {
        $crate::supervised_actor!(@counted $actor, $crate::supervisor::Ping);
        $crate::supervised_actor!(@counted $actor, $crate::supervisor::Stop);
        $crate::supervised_actor!(@counted $actor, $crate::supervisor::Fail);

        impl ::actix::Handler<$crate::supervisor::Ping> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::supervisor::Ping, _: &mut Self::Context) {}
        }

        impl ::actix::Handler<$crate::supervisor::Stop> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::supervisor::Stop, ctx: &mut Self::Context) {
                ::actix::ActorContext::stop(ctx);
            }
        }

        impl ::actix::Handler<$crate::supervisor::Fail> for $actor {
            type Result = ();
            #[allow(clippy::panic)]
            fn handle(&mut self, message: $crate::supervisor::Fail, ctx: &mut Self::Context) {
                match message.0 {
                    $crate::supervisor::FailMode::Panic => {
                        panic!("test hook: {} told to panic", stringify!($actor))
                    }
                    $crate::supervisor::FailMode::Stop => ::actix::ActorContext::stop(ctx),
                }
            }
        }
    };
}
