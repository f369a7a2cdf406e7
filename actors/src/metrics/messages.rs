//! Messages of the metrics aggregator.

use actix::Message;

/// Closes the current collection window now instead of at the end of the
/// interval.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct RollNow;
