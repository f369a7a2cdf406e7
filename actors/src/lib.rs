//! Blaze's actors. Each module owns one concern of the service: its actor
//! (a thin actix adapter) and the plain domain logic the actor wraps, so
//! the logic tests without a running system.
//!
//! A module folder has this shape, as far as its concern needs it:
//! - `mod.rs`: what the module owns, and its public surface: callers name
//!   what it re-exports, never the files below it;
//! - `actor.rs`: the actix actor, lifecycle and message handlers only;
//! - `messages.rs`: one typed struct per message, where other modules send
//!   the actor messages (health, metrics, supervisor; inference keeps its
//!   two in `actor.rs`). Most actors take none: they run background work
//!   and publish what request handlers read;
//! - the domain logic, in plain structs, in files named by concern: one
//!   `core.rs` where a single file holds it, else a file or folder per
//!   concern (`auth/authenticator/`, `auth/store/`, `guard/scan.rs`,
//!   `ratelimit/gcra.rs`, `router/registry.rs`);
//! - `tests.rs`: the module's tests; a file's small unit tests may sit in
//!   that file.
//!
//! Helpers several modules share (`files.rs`, `redis.rs`) are single files.
//!
//! The rule that keeps the service fast: actors own state, lifecycle and
//! failure; request handlers read what actors publish (an `ArcSwap`, atomics,
//! a lock-free recorder) and never wait on a mailbox for it.

pub mod auth;
pub mod cache;
pub mod files;
pub mod guard;
pub mod health;
pub mod inference;
pub mod metrics;
pub mod ratelimit;
mod redis;
pub mod router;
pub mod supervisor;
pub mod usage;

/// What any Redis call fails with (the rate limiter's and the cache's
/// start-up errors carry it).
pub use self::redis::RedisError;
/// PostgreSQL schemas of a test's own, dropped afterwards.
#[cfg(any(test, feature = "test-hooks"))]
pub mod test_postgres;
/// A redis-server of a test's own; the binary's integration tests reach it
/// through the test-hooks feature.
#[cfg(any(test, feature = "test-hooks"))]
pub mod test_redis;

/// The build this binary came from, shared by health and metrics reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildInfo {
    pub version: &'static str,
    pub git_sha: &'static str,
    pub rustc: &'static str,
    pub profile: &'static str,
}
