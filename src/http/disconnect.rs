//! Noticing that a client has gone while its request waits for a model.
//!
//! actix-web runs a handler to completion even after the client closed its
//! connection, so a request queued for inference would still be computed
//! for nobody. Each connection's socket is recorded when it opens; a
//! waiting handler checks it for the peer's hang-up (POLLRDHUP, without
//! reading) and gives up, which drops its place in the model's queue.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

/// How often a waiting request checks its client.
const CHECK_EVERY: Duration = Duration::from_millis(25);

/// The connection's socket, valid for as long as the connection (and so
/// any of its requests) lives.
#[derive(Debug, Clone, Copy)]
struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook: remembers the socket of each connection.
pub fn on_connect(connection: &dyn Any, extensions: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        extensions.insert(PeerSocket(stream.as_raw_fd()));
    }
}

/// How a request notices its client has gone: the connection's socket on
/// HTTP; nothing on the WebSocket surface, where a cancel or a closed
/// socket aborts the request's task instead.
#[derive(Debug, Clone, Copy)]
pub struct Hangup(Option<RawFd>);

impl Hangup {
    pub fn of(request: &HttpRequest) -> Self {
        Self(Self::socket(request))
    }

    pub fn never() -> Self {
        Self(None)
    }

    /// The connection's socket, if known.
    pub fn socket(request: &HttpRequest) -> Option<RawFd> {
        request.conn_data::<PeerSocket>().map(|socket| socket.0)
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

fn hung_up(fd: RawFd) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, a zero timeout; `fd` is the socket of the
    // connection this request belongs to, open while the request is.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
