//! Who asks, and how their answer may be made: the [`Origin`] each
//! transport builds before it calls the pipeline, and the [`Hangup`] that
//! tells a waiting request its client has gone.

use std::os::fd::RawFd;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use blaze_actors::auth::Principal;

use super::admit::Gate;
use super::meter::Meter;

/// Who asks, and how their answer may be made.
pub struct Origin {
    pub principal: Principal,
    /// Whose budgets and guard score the request spends: `key:<id>` or
    /// `user:<id>`.
    pub subject: String,
    /// For the logs.
    pub request_id: RequestId,
    pub gate: Gate,
    /// The request's row in the usage ledger, on the model routes.
    pub meter: Meter,
    /// False when the client asked not to be answered from the cache.
    pub cache_allowed: bool,
    pub hangup: Hangup,
    /// The guard already screened the body (a gateway route's request on
    /// its way to a local target): not screened or scored again.
    pub screened: bool,
}

impl Origin {
    /// The same caller, for a local target of a gateway route: admitted
    /// through `gate`, its body already screened.
    pub fn for_target(&self, gate: Gate) -> Self {
        Self {
            principal: self.principal.clone(),
            subject: self.subject.clone(),
            request_id: self.request_id.clone(),
            gate,
            meter: self.meter.clone(),
            cache_allowed: self.cache_allowed,
            hangup: self.hangup,
            screened: true,
        }
    }
}

/// A request's id, for the logs and the `x-request-id` response header:
/// the client's when it is sane, generated otherwise.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id a client gave, if it is short, printable and safe to echo in
    /// headers and logs.
    pub fn given(id: &HeaderValue) -> Option<Self> {
        let bytes = id.as_bytes();
        let sane = (1..=128).contains(&bytes.len())
            && bytes.iter().all(|&byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte));
        sane.then(|| Self(id.clone()))
    }

    /// A new id.
    pub fn generate() -> Self {
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buffer);
        // Lowercase hex is always a valid header value.
        Self(HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("unknown")))
    }

    pub fn as_str(&self) -> &str {
        // Only sane ids (ASCII) are ever stored.
        self.0.to_str().unwrap_or_default()
    }

    pub fn header(&self) -> &HeaderValue {
        &self.0
    }
}

/// How often a waiting request checks its client.
const CHECK_EVERY: Duration = Duration::from_millis(25);

/// How a request notices its client has gone: the connection's socket on
/// HTTP (actix-web runs a handler to completion even after its client
/// closed the connection, so a request queued for inference would be
/// computed for nobody); nothing on the WebSocket surface, where a cancel
/// or a closed socket aborts the request's task instead.
#[derive(Debug, Clone, Copy)]
pub struct Hangup(Option<RawFd>);

impl Hangup {
    /// Watches `socket`, which must stay open while the request lives (the
    /// connection's own socket does).
    pub fn of_socket(socket: Option<RawFd>) -> Self {
        Self(socket)
    }

    pub fn never() -> Self {
        Self(None)
    }

    /// Resolves once the client has closed its connection; never, if the
    /// connection's socket is unknown.
    pub async fn wait(self) {
        let Some(fd) = self.0 else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            if hung_up(fd) {
                return;
            }
        }
    }
}

/// The peer's hang-up (POLLRDHUP), seen without reading.
fn hung_up(fd: RawFd) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, a zero timeout; `fd` is the socket of the
    // connection this request belongs to, open while the request is.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
