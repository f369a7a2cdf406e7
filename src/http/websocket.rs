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

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use blaze_actors::auth::{Failure, Principal};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{watch, Notify};

use super::auth::{authenticate_credential, bearer, client_address};
use super::disconnect::Hangup;
use super::exchange::{Answer, Body, Origin, Piece};
use super::observe::RequestId;
use super::ratelimit::{Gate, Pending};
use super::routing::RouteRule;
use super::routing::{resource, Route};
use super::AppState;
use crate::error::ApiError;
use crate::settings::BodyLimitSettings;
use crate::settings::WebSocketSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config.service(resource(Route::WebSocket, limits).route(web::get().to(upgrade)));
}

/// The open sockets of this process: counts for the limits, and the
/// signal that closes them all at shutdown.
pub struct Sockets {
    settings: WebSocketSettings,
    /// How long requests in flight may take to finish at shutdown.
    grace: Duration,
    /// Authenticated sockets.
    open: AtomicUsize,
    /// Sockets waiting for their auth message.
    unauthenticated: AtomicUsize,
    per_subject: Mutex<HashMap<String, usize>>,
    shutdown: watch::Sender<bool>,
}

impl Sockets {
    pub fn new(settings: WebSocketSettings, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            settings,
            grace,
            open: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            per_subject: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
        })
    }

    /// Every socket stops taking requests, lets those in flight finish
    /// (within the server's grace period) and closes with 1001.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed) + self.unauthenticated.load(Ordering::Relaxed)
    }

    fn counter(&self, authenticated: bool) -> (&AtomicUsize, usize) {
        match authenticated {
            true => (&self.open, self.settings.max_connections),
            false => (&self.unauthenticated, self.settings.max_unauthenticated),
        }
    }

    /// A place among the authenticated sockets, or among those waiting
    /// for their auth message; `None` when that kind is full.
    fn take_slot(self: &Arc<Self>, authenticated: bool) -> Option<Slot> {
        let (counter, most) = self.counter(authenticated);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < most).then_some(open + 1))
            .ok()?;
        metrics::gauge!("blaze_ws_connections").increment(1.0);
        Some(Slot { sockets: self.clone(), subject: None, authenticated })
    }
}

/// One open socket's place in the counts, given back when it closes.
struct Slot {
    sockets: Arc<Sockets>,
    subject: Option<String>,
    authenticated: bool,
}

impl Slot {
    /// Moves a socket that just authenticated among the authenticated
    /// ones; false when they are all taken.
    fn promote(&mut self) -> bool {
        if self.authenticated {
            return true;
        }
        let (counter, most) = self.sockets.counter(true);
        let taken = counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < most).then_some(open + 1));
        if taken.is_err() {
            return false;
        }
        self.sockets.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        self.authenticated = true;
        true
    }

    /// Counts the socket against its caller; false when the caller has
    /// all the sockets it may.
    fn bind(&mut self, subject: &str) -> bool {
        let mut per_subject = self.sockets.per_subject.lock();
        let count = per_subject.entry(subject.to_owned()).or_insert(0);
        if *count >= self.sockets.settings.max_connections_per_key {
            if *count == 0 {
                per_subject.remove(subject);
            }
            return false;
        }
        *count += 1;
        self.subject = Some(subject.to_owned());
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sockets.counter(self.authenticated).0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("blaze_ws_connections").decrement(1.0);
        if let Some(subject) = &self.subject {
            let mut per_subject = self.sockets.per_subject.lock();
            if let Some(count) = per_subject.get_mut(subject) {
                *count -= 1;
                if *count == 0 {
                    per_subject.remove(subject);
                }
            }
        }
    }
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
    ApiError::too_many("too_many_connections", "This key has all the WebSocket connections it may open")
}

async fn upgrade(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if credential_in_query(request.query_string()) {
        return Err(ApiError::bad_request(
            "credential_in_url",
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
        ApiError::bad_request("invalid_upgrade", format!("Not a WebSocket upgrade: {error}"))
    })?;
    let settings = sockets.settings;
    let socket = Hangup::socket(&request);
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
    actix_web::rt::spawn(connection.run(messages));
    Ok(response)
}

/// An upgrade without a credential spends one request of its address's
/// anonymous budget, so one address cannot open sockets without end.
async fn spend_anonymous(state: &AppState, client: Option<std::net::IpAddr>) -> Result<(), ApiError> {
    let Some(client) = client else { return Ok(()) };
    let pattern = super::routing::Route::WebSocket.pattern();
    let pending = Pending::new(&state.limiting, None, format!("ip:{client}"), pattern);
    Gate(pending.map(Rc::new)).admit(0).await.map(drop)
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

/// What a client sends; other fields are refused, so a misspelt `body`
/// is not silently missing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<std::borrow::Cow<'a, str>>,
}

/// Longest request id accepted.
const MAX_ID_CHARS: usize = 128;

/// A request in flight: its task, to cancel it, and which one it is (an
/// id reused after its request ended names a new one).
struct Running {
    task: tokio::task::JoinHandle<()>,
    number: u64,
    /// Set in the same poll as its last frame is queued: a cancel after
    /// that must not add a second ending.
    ended: Rc<Cell<bool>>,
}

struct Connection {
    state: Arc<AppState>,
    settings: WebSocketSettings,
    session: Session,
    socket: Option<RawFd>,
    client: Option<std::net::IpAddr>,
    principal: Option<Principal>,
    /// The credential the socket authenticated with, checked again before
    /// every request frame and on every identity change.
    credential: Option<String>,
    slot: Slot,
    in_flight: HashMap<String, Running>,
    /// Woken when a frame waited longer than the slow-client timeout.
    stalled: Rc<Notify>,
    next_request: u64,
}

/// How a socket ends: the close frame's code and reason.
struct Ending(CloseCode, &'static str);

impl Ending {
    const SLOW_CLIENT: Self = Self(CloseCode::Policy, "the client does not read its frames");
    const SHUTDOWN: Self = Self(CloseCode::Away, "the server is shutting down");
}

/// What a request task sends its frames through: the session's bounded
/// queue, with the slow-client deadline on every frame.
#[derive(Clone)]
struct Outbound {
    session: Session,
    timeout: Duration,
    stalled: Rc<Notify>,
}

/// The socket is closed or its client too slow: stop sending.
struct Gone;

impl Outbound {
    async fn send(&self, frame: String) -> Result<(), Gone> {
        let mut session = self.session.clone();
        match tokio::time::timeout(self.timeout, session.text(frame)).await {
            Ok(Ok(())) => {
                metrics::counter!("blaze_ws_frames_total", "direction" => "out").increment(1);
                Ok(())
            }
            Ok(Err(_closed)) => Err(Gone),
            Err(_late) => {
                self.stalled.notify_one();
                Err(Gone)
            }
        }
    }
}

/// `{"id":…,"type":"result","data":…}` and its kin, built around JSON
/// already serialized.
fn frame(id: &str, kind: &str, field: &str, json: &[u8]) -> String {
    let mut text = String::with_capacity(json.len() + id.len() + 40);
    text.push_str("{\"id\":");
    text.push_str(id);
    text.push_str(",\"type\":\"");
    text.push_str(kind);
    text.push('"');
    if !field.is_empty() {
        text.push_str(",\"");
        text.push_str(field);
        text.push_str("\":");
        text.push_str(&String::from_utf8_lossy(json));
    }
    text.push('}');
    text
}

/// An error frame: the OpenAI error object, with the HTTP status it would
/// have had and, for limits, when to retry.
fn error_frame(id: &str, error: &ApiError) -> String {
    let mut text = String::with_capacity(256);
    text.push_str("{\"id\":");
    text.push_str(id);
    text.push_str(",\"type\":\"error\",\"status\":");
    text.push_str(&error.status().as_u16().to_string());
    if let Some(seconds) = error.retry_after_s() {
        text.push_str(",\"retry_after_s\":");
        text.push_str(&seconds.to_string());
    }
    text.push_str(",\"error\":");
    text.push_str(&String::from_utf8_lossy(&error.detail_json()));
    text.push('}');
    text
}

/// The id as JSON (`null` when there is none).
fn id_json(id: Option<&str>) -> String {
    id.map_or_else(|| "null".to_owned(), |id| serde_json::to_string(id).unwrap_or_else(|_| "null".to_owned()))
}

impl Connection {
    fn outbound(&self) -> Outbound {
        Outbound {
            session: self.session.clone(),
            timeout: Duration::from_millis(self.settings.slow_client_timeout_ms),
            stalled: self.stalled.clone(),
        }
    }

    async fn run(mut self, mut messages: actix_ws::AggregatedMessageStream) {
        let opened = Instant::now();
        let ended = Rc::new(Ended::default());
        let mut shutdown = self.state.sockets.shutdown.subscribe();
        let mut changes = self.state.auth.changes();
        let mut watching = true;
        let mut draining: Option<tokio::time::Instant> = None;
        let auth_deadline = tokio::time::Instant::now() + Duration::from_secs(self.settings.auth_timeout_s);
        let ping_every = Duration::from_secs(self.settings.ping_interval_s.max(1));
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut unanswered = 0u32;
        let stalled = self.stalled.clone();
        let grace = self.state.sockets.grace;
        let ending = loop {
            tokio::select! {
                biased;
                () = ended.notify.notified() => {
                    for (id, number) in ended.requests.take() {
                        if self.in_flight.get(&id).is_some_and(|running| running.number == number) {
                            self.in_flight.remove(&id);
                        }
                    }
                    if draining.is_some() && self.in_flight.is_empty() {
                        break Ending::SHUTDOWN;
                    }
                }
                () = stalled.notified() => break Ending::SLOW_CLIENT,
                changed = shutdown.changed(), if draining.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        if self.in_flight.is_empty() {
                            break Ending::SHUTDOWN;
                        }
                        draining = Some(tokio::time::Instant::now() + grace);
                    }
                }
                () = sleep_until(draining) => break Ending::SHUTDOWN,
                () = tokio::time::sleep_until(auth_deadline), if self.principal.is_none() => {
                    break Ending(CloseCode::Policy, "not authenticated in time");
                }
                changed = changes.changed(), if self.principal.is_some() && watching => {
                    // The authenticator lives as long as the process; if
                    // it were gone, stop listening rather than spin.
                    watching = changed.is_ok();
                    if let Err(ending) = Box::pin(self.recheck(false)).await {
                        break ending;
                    }
                }
                _ = pings.tick(), if self.settings.ping_interval_s > 0 => {
                    if unanswered >= self.settings.missed_pongs {
                        break Ending(CloseCode::Policy, "pings went unanswered");
                    }
                    unanswered += 1;
                    if let Err(ending) = Box::pin(self.control(Control::Ping)).await {
                        break ending;
                    }
                }
                message = messages.next() => {
                    if matches!(message, Some(Ok(AggregatedMessage::Text(_) | AggregatedMessage::Binary(_)))) {
                        metrics::counter!("blaze_ws_frames_total", "direction" => "in").increment(1);
                    }
                    let outcome = match message {
                        None => break Ending(CloseCode::Normal, "closed"),
                        Some(Ok(AggregatedMessage::Text(text))) => {
                            // Boxed, like every nested await here: an idle
                            // socket's task holds only its select.
                            Box::pin(self.on_text(text.as_bytes(), &ended, draining.is_some())).await
                        }
                        Some(Ok(AggregatedMessage::Binary(_))) => {
                            let error = ApiError::bad_request(
                                "binary_frame",
                                "Binary frames are not supported; send JSON in text frames",
                            );
                            Box::pin(self.reply_error(None, &error)).await
                        }
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            Box::pin(self.control(Control::Pong(bytes))).await
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => {
                            unanswered = 0;
                            Ok(())
                        }
                        Some(Ok(AggregatedMessage::Close(_))) => Err(Ending(CloseCode::Normal, "closed by the client")),
                        Some(Err(ProtocolError::Overflow)) => {
                            Err(Ending(CloseCode::Size, "a frame is larger than websocket.max_frame_bytes"))
                        }
                        Some(Err(_)) => Err(Ending(CloseCode::Protocol, "protocol error")),
                    };
                    if let Err(ending) = outcome {
                        break ending;
                    }
                }
            }
        };
        for (_, running) in self.in_flight.drain() {
            running.task.abort();
        }
        tracing::debug!(
            seconds = opened.elapsed().as_secs_f64(),
            subject = self.slot.subject.as_deref().unwrap_or(""),
            code = u16::from(ending.0),
            reason = ending.1,
            "websocket closed"
        );
        self.close(ending).await;
    }

    /// Sends the close frame; a client that leaves no room for it within
    /// the slow-client timeout is cut off.
    async fn close(self, Ending(code, description): Ending) {
        let code_label = u16::from(code).to_string();
        metrics::counter!("blaze_ws_closes_total", "code" => code_label).increment(1);
        let reason = CloseReason { code, description: Some(description.to_owned()) };
        let wait = Duration::from_millis(self.settings.slow_client_timeout_ms);
        let closed = tokio::time::timeout(wait, self.session.close(Some(reason))).await;
        if closed.is_err() {
            if let Some(fd) = self.socket {
                // SAFETY: the connection's own socket, still open while its
                // response (this socket's stream) is; shutdown does not
                // close the descriptor, actix still owns it.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
    }

    /// A ping or pong, under the same slow-client deadline as every frame.
    async fn control(&self, control: Control) -> Result<(), Ending> {
        let mut session = self.session.clone();
        let wait = Duration::from_millis(self.settings.slow_client_timeout_ms);
        let sent = match &control {
            Control::Ping => tokio::time::timeout(wait, session.ping(b"")).await,
            Control::Pong(bytes) => tokio::time::timeout(wait, session.pong(bytes)).await,
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(Ending(CloseCode::Normal, "closed")),
            Err(_late) => Err(Ending::SLOW_CLIENT),
        }
    }

    async fn reply_error(&self, id: Option<&str>, error: &ApiError) -> Result<(), Ending> {
        self.outbound().send(error_frame(&id_json(id), error)).await.map_err(|Gone| Ending::SLOW_CLIENT)
    }

    async fn on_text(&mut self, text: &[u8], ended: &Rc<Ended>, draining: bool) -> Result<(), Ending> {
        let frame: Frame<'_> = match serde_json::from_slice(text) {
            Ok(frame) => frame,
            Err(error) => {
                let error = ApiError::bad_request(
                    "invalid_frame",
                    format!(
                        "A frame is a JSON object {{\"id\", \"type\", \"body\"}}: {}",
                        error.to_string().split(" at line ").next().unwrap_or_default()
                    ),
                );
                if self.principal.is_none() {
                    return Err(Ending(CloseCode::Policy, "authenticate first"));
                }
                return self.reply_error(None, &error).await;
            }
        };
        let id = frame.id.as_deref();
        if self.principal.is_none() {
            return self.on_auth(&frame).await;
        }
        if frame.kind == "auth" {
            let error =
                ApiError::bad_request("already_authenticated", "This socket is authenticated already");
            return self.reply_error(id, &error).await;
        }
        let Some(id) = id.filter(|id| !id.is_empty() && id.chars().count() <= MAX_ID_CHARS) else {
            let error = ApiError::bad_request(
                "invalid_id",
                format!("Every request frame needs an `id`: a string of 1 to {MAX_ID_CHARS} characters"),
            )
            .with_param("id");
            return self.reply_error(None, &error).await;
        };
        if frame.kind == "cancel" {
            return self.cancel(id).await;
        }
        let Some(endpoint) = super::routing::Route::for_frame(&frame.kind) else {
            let error = ApiError::bad_request(
                "invalid_type",
                format!(
                    "Unknown frame type `{}`: {}, cancel",
                    frame.kind.chars().take(64).collect::<String>(),
                    super::routing::frame_types()
                ),
            )
            .with_param("type");
            return self.reply_error(Some(id), &error).await;
        };
        // The caller may have been revoked since the socket opened. When
        // the store cannot say, the frame gets the 503 HTTP would give.
        if !self.recheck(true).await? {
            return self.reply_error(Some(id), &ApiError::unauthenticated(Failure::StoreUnavailable)).await;
        }
        if let Some(scope) =
            endpoint.scope.filter(|scope| !self.principal.as_ref().is_some_and(|p| p.grants(scope)))
        {
            return self.reply_error(Some(id), &ApiError::insufficient_scope(scope)).await;
        }
        if draining {
            let error = ApiError::unavailable("The server is shutting down; reconnect to another replica");
            return self.reply_error(Some(id), &error).await;
        }
        if self.in_flight.contains_key(id) {
            let error =
                ApiError::bad_request("duplicate_id", format!("A request with id `{id}` is in flight"))
                    .with_param("id");
            return self.reply_error(Some(id), &error).await;
        }
        if self.in_flight.len() >= self.settings.max_in_flight {
            let error = ApiError::too_many(
                "too_many_in_flight",
                format!(
                    "This socket has {} requests in flight, the most it may",
                    self.settings.max_in_flight
                ),
            );
            return self.reply_error(Some(id), &error).await;
        }
        let body = match (endpoint.route, frame.body) {
            (_, Some(body)) => Bytes::copy_from_slice(body.get().as_bytes()),
            (super::routing::Route::Models, None) => Bytes::new(),
            (_, None) => {
                let error = ApiError::bad_request("missing_body", "This request type needs a `body`")
                    .with_param("body");
                return self.reply_error(Some(id), &error).await;
            }
        };
        self.start(id.to_owned(), endpoint, body, ended.clone());
        Ok(())
    }

    async fn on_auth(&mut self, frame: &Frame<'_>) -> Result<(), Ending> {
        let (Some(token), "auth") = (frame.token.as_deref(), frame.kind.as_ref()) else {
            return Err(Ending(CloseCode::Policy, "authenticate first"));
        };
        match authenticate_credential(&self.state.auth, self.client, Some(token)).await {
            Ok(principal) => {
                if !self.slot.promote() {
                    let error = ApiError::unavailable(
                        "This server has all the WebSocket connections it may hold; try again later",
                    );
                    let _ = self.reply_error(None, &error).await;
                    return Err(Ending(CloseCode::Again, "the server has all the connections it may hold"));
                }
                if !self.slot.bind(&principal.subject()) {
                    let _ = self.reply_error(None, &too_many_for_key()).await;
                    return Err(Ending(CloseCode::Policy, "too many connections for this key"));
                }
                self.principal = Some(principal);
                self.credential = Some(token.to_owned());
                self.outbound()
                    .send("{\"type\":\"authenticated\"}".to_owned())
                    .await
                    .map_err(|Gone| Ending::SLOW_CLIENT)
            }
            Err(error) => {
                let _ = self.reply_error(None, &error).await;
                Err(Ending(CloseCode::Policy, "authentication failed"))
            }
        }
    }

    /// Validates the socket's credential again, from the caches HTTP
    /// reads; a credential that no longer validates ends the socket.
    /// Ok(false): the store could not say (not the caller's doing: the
    /// socket stays, and a request frame is answered 503).
    async fn recheck(&mut self, for_frame: bool) -> Result<bool, Ending> {
        let Some(credential) = self.credential.as_deref() else { return Ok(true) };
        match self.state.auth.authenticate(Some(credential)).await {
            Ok(principal) => {
                self.principal = Some(principal);
                Ok(true)
            }
            Err(Failure::StoreUnavailable) => Ok(!for_frame),
            Err(failure) => {
                metrics::counter!("blaze_auth_failures_total", "reason" => failure.reason()).increment(1);
                let _ = self.reply_error(None, &ApiError::unauthenticated(failure)).await;
                Err(Ending(CloseCode::Policy, "the credential is no longer valid"))
            }
        }
    }

    async fn cancel(&mut self, id: &str) -> Result<(), Ending> {
        let Some(running) = self.in_flight.remove(id).filter(|running| !running.ended.get()) else {
            let error =
                ApiError::bad_request("unknown_request", format!("No request with id `{id}` is in flight"))
                    .with_param("id");
            return self.reply_error(Some(id), &error).await;
        };
        running.task.abort();
        self.reply_error(Some(id), &ApiError::cancelled()).await
    }

    /// Runs one request on its own task.
    fn start(&mut self, id: String, endpoint: &'static RouteRule, body: Bytes, finished: Rc<Ended>) {
        let Some(principal) = self.principal.clone() else { return };
        self.next_request += 1;
        let number = self.next_request;
        let subject = self.slot.subject.clone().unwrap_or_else(|| principal.subject());
        let state = self.state.clone();
        let outbound = self.outbound();
        let task_id = id.clone();
        metrics::histogram!("blaze_ws_socket_in_flight").record((self.in_flight.len() + 1) as f64);
        let counted = InFlight::start();
        let ended = Rc::new(Cell::new(false));
        let task_ended = ended.clone();
        let task = actix_web::rt::spawn(async move {
            // Dropped when the task ends or is aborted: counted out once.
            let _counted = counted;
            let started = Instant::now();
            let request_id = RequestId::generate();
            let gate = Gate::for_call(&state.limiting, &principal, &subject, endpoint.pattern);
            let origin =
                Origin { principal, subject, request_id, gate, cache_allowed: true, hangup: Hangup::never() };
            let answer = answer(&state, &origin, endpoint, &body).await;
            origin.gate.spend_unadmitted().await;
            let status = deliver(&outbound, &id_json(Some(&task_id)), answer).await;
            task_ended.set(true);
            let status_label = status.to_string();
            let kind = endpoint.websocket.unwrap_or_default();
            metrics::counter!("blaze_ws_requests_total", "type" => kind, "status" => status_label)
                .increment(1);
            tracing::info!(
                target: "blaze::access",
                request_id = origin.request_id.as_str(),
                method = "WS",
                route = kind,
                ws_id = task_id.as_str(),
                status,
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
            finished.requests.borrow_mut().push((task_id, number));
            finished.notify.notify_one();
        });
        self.in_flight.insert(id, Running { task, number, ended });
    }
}

/// Requests whose tasks ended, for the socket to forget: pushed by the
/// tasks, taken by the socket's loop (one thread; nothing allocated while
/// the socket idles, unlike a channel's first block).
#[derive(Default)]
struct Ended {
    requests: std::cell::RefCell<Vec<(String, u64)>>,
    notify: Notify,
}

/// A request in `blaze_ws_requests_in_flight`, for as long as it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("blaze_ws_requests_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("blaze_ws_requests_in_flight").decrement(1.0);
    }
}

/// A control frame the socket sends itself.
enum Control {
    Ping,
    Pong(Bytes),
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The endpoint's answer: the same functions the HTTP handlers call.
async fn answer(
    state: &AppState,
    origin: &Origin,
    endpoint: &RouteRule,
    body: &[u8],
) -> Result<Answer, ApiError> {
    use super::routing::Route;
    match endpoint.route {
        Route::ChatCompletions => super::chat::chat_from_bytes(state, origin, body).await,
        Route::Completions => super::chat::completion_from_bytes(state, origin, body).await,
        Route::Embeddings => super::openai::embeddings_from_bytes(state, origin, body).await,
        // Every other route the table gives a frame type (models.list).
        _ => {
            // As the middleware checks routes that count no tokens.
            origin.gate.admit(0).await?;
            Ok(Answer::json(super::openai::model_list(state)))
        }
    }
}

/// Sends an answer as frames; returns the status it would have had on
/// HTTP, for the metrics and the log.
async fn deliver(outbound: &Outbound, id: &str, answer: Result<Answer, ApiError>) -> u16 {
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let _ = outbound.send(error_frame(id, &error)).await;
            return error.status().as_u16();
        }
    };
    match answer.body {
        Body::Json(json) => {
            let _ = outbound.send(frame(id, "result", "data", &json)).await;
            200
        }
        Body::Stream(mut pieces) => {
            while let Some(piece) = pieces.next().await {
                let sent = match piece {
                    Piece::Chunk(json) => outbound.send(frame(id, "chunk", "data", &json)).await,
                    Piece::Failed(error) => {
                        let _ = outbound.send(error_frame(id, &error)).await;
                        return error.status().as_u16();
                    }
                };
                if sent.is_err() {
                    return 499;
                }
            }
            let _ = outbound.send(frame(id, "done", "", b"")).await;
            200
        }
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

    #[test]
    fn frames_wrap_serialized_json() {
        assert_eq!(
            frame("\"a\"", "result", "data", b"{\"x\":1}"),
            r#"{"id":"a","type":"result","data":{"x":1}}"#
        );
        assert_eq!(frame("\"a\"", "done", "", b""), r#"{"id":"a","type":"done"}"#);
        let error = ApiError::bad_request("invalid_frame", "bad");
        let parsed: serde_json::Value =
            serde_json::from_str(&error_frame("null", &error)).unwrap_or_default();
        assert_eq!(parsed["type"], "error");
        assert_eq!(parsed["status"], 400);
        assert_eq!(parsed["error"]["code"], "invalid_frame");
        assert_eq!(id_json(Some("q\"1")), r#""q\"1""#);
    }
}
