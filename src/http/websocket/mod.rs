//! `GET /v1/ws`: many requests in flight on one WebSocket, told apart by
//! the client's ids. Each request frame names an OpenAI endpoint and
//! carries that endpoint's body; it goes through the very functions the
//! HTTP handlers call (auth is the socket's, rate limits per request, the
//! guard, the cache), and its answer comes back as result, chunk, done or
//! error frames. This module owns only the socket: authentication, the
//! frame protocol, limits, backpressure, pings and the shutdown close.
//!
//! A socket takes a connection slot only once it is authenticated; until
//! then it holds one of `websocket.max_unauthenticated` and its upgrade
//! spent the anonymous budget of its address. Its caller is checked again
//! before every request frame and whenever an identity change arrives
//! from any replica (through the same caches HTTP reads): a revoked key,
//! an ended sign-in or a disabled user gets an error frame and close 1008.

mod connection;
mod frames;
mod requests;
mod sockets;

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;

use actix_web::{web, HttpRequest, HttpResponse};
use tokio::sync::Notify;

use self::connection::Connection;
pub use self::sockets::Sockets;
use super::auth::{authenticate_credential, bearer, client_address};
use super::routing::{resource, Route};
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::openai::{Gate, Pending};
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config.service(resource(Route::WebSocket, limits).route(web::get().to(upgrade)));
}

/// Query parameters that carry credentials: refused, since URLs end up in
/// access logs, proxies and browser history.
fn credential_in_query(query: &str) -> bool {
    query.split('&').filter_map(|pair| pair.split('=').next()).any(|name| {
        let name = name.to_ascii_lowercase();
        ["token", "access_token", "api_key", "apikey", "key", "authorization", "auth", "bearer"]
            .contains(&name.as_str())
    })
}

fn too_many_for_key() -> ApiError {
    ApiError::too_many(
        ErrorCode::TooManyConnections,
        "This key has all the WebSocket connections it may open",
    )
}

async fn upgrade(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if credential_in_query(request.query_string()) {
        return Err(ApiError::bad_request(
            ErrorCode::CredentialInUrl,
            "Credentials in the URL are refused (URLs are logged); send an Authorization header, \
             or {\"type\":\"auth\",\"token\":\"...\"} as the first message",
        ));
    }
    let sockets = &state.sockets;
    let client = client_address(&request);
    let credential = bearer(&request).map(str::to_owned);
    let principal = match credential.as_deref() {
        None => None,
        credential => Some(authenticate_credential(&state.auth, client, credential).await?),
    };
    if principal.is_none() {
        spend_anonymous(&state, client).await?;
    }
    let mut slot = sockets.take_slot(principal.is_some()).ok_or_else(|| {
        ApiError::unavailable("This server has all the WebSocket connections it may hold; try again later")
    })?;
    if let Some(principal) = &principal {
        if !slot.bind(&principal.subject()) {
            return Err(too_many_for_key());
        }
    }
    let (response, session, messages) = actix_ws::handle(&request, payload).map_err(|error| {
        ApiError::bad_request(ErrorCode::InvalidUpgrade, format!("Not a WebSocket upgrade: {error}"))
    })?;
    let settings = sockets.settings;
    let socket = super::disconnect::socket(&request);
    if let (Some(fd), true) = (socket, settings.send_buffer_bytes > 0) {
        set_send_buffer(fd, settings.send_buffer_bytes);
    }
    let messages = messages
        .max_frame_size(settings.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(settings.max_frame_bytes);
    let connection = Connection {
        state: state.into_inner(),
        settings,
        session,
        socket,
        client,
        principal,
        credential,
        slot,
        in_flight: HashMap::new(),
        stalled: Rc::new(Notify::new()),
        next_request: 0,
    };
    #[expect(
        clippy::disallowed_methods,
        reason = "the socket's own task: counted in Sockets, closed by its shutdown signal within the grace period"
    )]
    actix_web::rt::spawn(connection.run(messages));
    Ok(response)
}

/// An upgrade without a credential spends one request of its address's
/// anonymous budget, so one address cannot open sockets without end.
async fn spend_anonymous(state: &AppState, client: Option<std::net::IpAddr>) -> Result<(), ApiError> {
    let Some(client) = client else { return Ok(()) };
    let pattern = super::routing::Route::WebSocket.pattern();
    let pending = Pending::new(&state.pipeline.limiting, None, format!("ip:{client}"), pattern);
    Gate::new(pending).admit(0).await.map(drop)
}

fn set_send_buffer(fd: RawFd, bytes: usize) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket of this connection, an int option of the
    // right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_query_are_spotted() {
        assert!(credential_in_query("token=abc"));
        assert!(credential_in_query("x=1&api_key=abc"));
        assert!(credential_in_query("Access_Token=abc"));
        assert!(!credential_in_query(""));
        assert!(!credential_in_query("model=tiny&tokens=3"));
    }
}
