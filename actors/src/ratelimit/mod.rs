//! The RateLimiter: request and token budgets per API key, user, client
//! address and route. One GCRA check per request, in-process by default or
//! one atomic script call on Redis for limits shared by every replica;
//! tokens are reserved at admission and settled with the real usage. The
//! actor probes Redis while it is down and sweeps idle buckets.

mod actor;
mod core;
pub mod gcra;
mod local;
mod redis;
#[cfg(test)]
mod tests;

pub use self::actor::RateLimiterActor;
pub use self::core::{
    Admission, Decision, FailMode, Limits, Quota, RateLimiter, RateLimiterOptions, Ticket, TooLarge,
    Unavailable, Unit,
};
