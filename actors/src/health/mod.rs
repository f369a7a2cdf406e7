//! Health of the service's components.
//!
//! The [`HealthMonitor`] probes every component on an interval in the
//! background (each supervised actor by a ping through its mailbox, plus any
//! registered [`Probe`], such as a database later) and publishes the result
//! as a snapshot in [`HealthState`]. Health endpoints read that snapshot; no
//! request waits on a probe. The supervisor's board changes (a restart, say)
//! are folded in at once, without waiting for the next probe round.

mod actor;
mod core;
mod messages;
#[cfg(test)]
mod tests;

pub use self::actor::{HealthMonitor, HealthMonitorConfig};
pub use self::core::{
    ComponentHealth, ComponentStatus, DetailedReport, HealthSnapshot, HealthState, Probe, ProbeError,
    ProbeOutcome, Readiness,
};
pub use self::messages::ProbeNow;
