//! Messages of the health monitor.

use actix::Message;

/// Runs a probe round now instead of waiting for the interval; answers when
/// the new snapshot is published.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ProbeNow;

/// The supervisor's board changed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub(crate) struct BoardChanged;
