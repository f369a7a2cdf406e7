//! The metrics aggregator actor: rollups and recorder upkeep on intervals.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::core::Telemetry;
use super::messages::RollNow;

/// How often histogram samples are drained into the recorder's buckets, so
/// memory stays flat between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Owns the periodic work on [`Telemetry`]; see the module docs.
pub struct MetricsAggregator {
    telemetry: Arc<Telemetry>,
    collection_interval: Duration,
}

impl MetricsAggregator {
    pub fn new(telemetry: Arc<Telemetry>, collection_interval: Duration) -> Self {
        Self { telemetry, collection_interval }
    }
}

impl Actor for MetricsAggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.collection_interval, |aggregator, _| aggregator.telemetry.roll());
        ctx.run_interval(UPKEEP_INTERVAL, |aggregator, _| aggregator.telemetry.upkeep());
    }
}

impl Handler<RollNow> for MetricsAggregator {
    type Result = ();

    fn handle(&mut self, _: RollNow, _: &mut Self::Context) {
        self.telemetry.roll();
    }
}

crate::supervised_actor!(MetricsAggregator);
