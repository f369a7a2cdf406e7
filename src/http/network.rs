//! The network side of the runtime profile: the connections open now,
//! and per route the requests, the bytes they declared and the bytes of
//! the answers (a streamed answer's size is not known: it is counted as a
//! stream). Counted with relaxed atomics, a few per request.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use actix_web::body::BodySize;
use serde_json::{json, Value};

use super::routing::{RouteRule, ROUTES};

static OPEN: AtomicI64 = AtomicI64::new(0);

/// One connection, counted while it lives (kept in its extensions).
pub struct Connection(());

impl Connection {
    pub fn opened() -> Self {
        OPEN.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn open_connections() -> i64 {
    OPEN.load(Ordering::Relaxed)
}

struct Tally {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    streams: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const, reason = "the initializer of each of the table's cells")]
const ZERO: Tally = Tally {
    requests: AtomicU64::new(0),
    bytes_in: AtomicU64::new(0),
    bytes_out: AtomicU64::new(0),
    streams: AtomicU64::new(0),
};

/// One tally per row of the route table.
static TALLIES: [Tally; ROUTES.len()] = [ZERO; ROUTES.len()];

/// The place of `rule` in the route table.
pub fn route_index(rule: &RouteRule) -> usize {
    ROUTES.iter().position(|row| row.route == rule.route).unwrap_or(0)
}

/// A request on the route at `index`: its declared body, and its
/// answer's body.
pub fn count(index: usize, received: u64, answer: BodySize) {
    let Some(tally) = TALLIES.get(index) else { return };
    tally.requests.fetch_add(1, Ordering::Relaxed);
    if received > 0 {
        tally.bytes_in.fetch_add(received, Ordering::Relaxed);
    }
    match answer {
        BodySize::Sized(bytes) => {
            tally.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
        BodySize::Stream => {
            tally.streams.fetch_add(1, Ordering::Relaxed);
        }
        BodySize::None => {}
    }
}

/// The routes that served a request since the start.
pub fn routes() -> Vec<Value> {
    ROUTES
        .iter()
        .zip(&TALLIES)
        .filter(|(_, tally)| tally.requests.load(Ordering::Relaxed) > 0)
        .map(|(rule, tally)| {
            json!({
                "route": rule.pattern,
                "requests": tally.requests.load(Ordering::Relaxed),
                "bytes_in": tally.bytes_in.load(Ordering::Relaxed),
                "bytes_out": tally.bytes_out.load(Ordering::Relaxed),
                "streamed_answers": tally.streams.load(Ordering::Relaxed),
            })
        })
        .collect()
}
