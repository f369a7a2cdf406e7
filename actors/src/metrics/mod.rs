//! Metrics: the Prometheus recorder, process metrics, and rollups for the
//! summary API.
//!
//! [`Telemetry`] is what the request path touches: lock-free counters and
//! histograms of the Prometheus recorder, and a short-lived per-route window
//! for the rollups. The [`MetricsAggregator`] actor turns the windows into a
//! rollup every collection interval, keeps them for the retention period in
//! bounded memory, and runs the recorder's upkeep.

mod actor;
mod core;
mod messages;
mod requests;
#[cfg(test)]
mod tests;

pub use self::actor::MetricsAggregator;
pub use self::core::{IntervalRollup, MetricsError, RouteRollup, SummaryReport, Telemetry};
pub use self::messages::RollNow;
pub use self::requests::{InFlight, RequestRecorder, RouteId, UNMATCHED_ROUTE};
