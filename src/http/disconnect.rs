//! The socket of each HTTP connection, recorded (and the connection
//! counted) when it opens, so that a request waiting for a model notices
//! its client has gone ([`crate::openai::Hangup`]) and gives up its place
//! in the queue.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

use crate::openai::Hangup;

/// The connection's socket, valid for as long as the connection (and so
/// any of its requests) lives.
#[derive(Debug, Clone, Copy)]
struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook: remembers the socket of each connection.
pub fn on_connect(connection: &dyn Any, extensions: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        extensions.insert(PeerSocket(stream.as_raw_fd()));
    }
    extensions.insert(super::network::Connection::opened());
}

/// The connection's socket, if known.
pub fn socket(request: &HttpRequest) -> Option<RawFd> {
    request.conn_data::<PeerSocket>().map(|socket| socket.0)
}

/// The hang-up of the connection `request` came on.
pub fn hangup(request: &HttpRequest) -> Hangup {
    Hangup::of_socket(socket(request))
}
