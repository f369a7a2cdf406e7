//! One socket's life: authentication, its request frames, cancels, pings,
//! the re-check of its caller on every identity change, and its close.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use blaze_actors::auth::{Failure, Principal};
use futures_util::StreamExt;

use tokio::sync::Notify;

use super::frames::{deliver, error_frame, id_json, Ending, Frame, Gone, Outbound, MAX_ID_CHARS};
use super::requests::{answer, Ended, InFlight};
use super::sockets::Slot;
use super::too_many_for_key;
use crate::error::{ApiError, ErrorCode};
use crate::http::auth::authenticate_credential;
use crate::http::AppState;
use crate::openai::{Gate, Hangup, Meter, Origin, QuotaGate, RequestId};
use crate::routes::{self, Budget, Route, RouteRule};
use crate::settings::WebSocketSettings;

/// A request in flight: its task, to cancel it, and which one it is (an
/// id reused after its request ended names a new one).
pub(super) struct Running {
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) number: u64,
    /// Set in the same poll as its last frame is queued: a cancel after
    /// that must not add a second ending.
    pub(super) ended: Rc<Cell<bool>>,
}

pub(super) struct Connection {
    pub(super) state: Arc<AppState>,
    pub(super) settings: WebSocketSettings,
    pub(super) session: Session,
    pub(super) socket: Option<RawFd>,
    pub(super) client: Option<std::net::IpAddr>,
    pub(super) principal: Option<Principal>,
    /// The credential the socket authenticated with, checked again before
    /// every request frame and on every identity change.
    pub(super) credential: Option<String>,
    pub(super) slot: Slot,
    pub(super) in_flight: HashMap<String, Running>,
    /// Woken when a frame waited longer than the slow-client timeout.
    pub(super) stalled: Rc<Notify>,
    pub(super) next_request: u64,
}

impl Connection {
    pub(super) fn outbound(&self) -> Outbound {
        Outbound {
            session: self.session.clone(),
            timeout: Duration::from_millis(self.settings.slow_client_timeout_ms),
            stalled: self.stalled.clone(),
        }
    }

    pub(super) async fn run(mut self, mut messages: actix_ws::AggregatedMessageStream) {
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
                                ErrorCode::BinaryFrame,
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
    pub(super) async fn close(self, Ending(code, description): Ending) {
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
    pub(super) async fn control(&self, control: Control) -> Result<(), Ending> {
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

    pub(super) async fn reply_error(&self, id: Option<&str>, error: &ApiError) -> Result<(), Ending> {
        self.outbound().send(error_frame(&id_json(id), error)).await.map_err(|Gone| Ending::SLOW_CLIENT)
    }

    pub(super) async fn on_text(
        &mut self,
        text: &[u8],
        ended: &Rc<Ended>,
        draining: bool,
    ) -> Result<(), Ending> {
        let frame: Frame<'_> = match serde_json::from_slice(text) {
            Ok(frame) => frame,
            Err(error) => {
                let error = ApiError::bad_request(
                    ErrorCode::InvalidFrame,
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
            let error = ApiError::bad_request(
                ErrorCode::AlreadyAuthenticated,
                "This socket is authenticated already",
            );
            return self.reply_error(id, &error).await;
        }
        let Some(id) = id.filter(|id| !id.is_empty() && id.chars().count() <= MAX_ID_CHARS) else {
            let error = ApiError::bad_request(
                ErrorCode::InvalidId,
                format!("Every request frame needs an `id`: a string of 1 to {MAX_ID_CHARS} characters"),
            )
            .with_param("id");
            return self.reply_error(None, &error).await;
        };
        if frame.kind == "cancel" {
            return self.cancel(id).await;
        }
        let Some(endpoint) = Route::for_frame(&frame.kind) else {
            let error = ApiError::bad_request(
                ErrorCode::InvalidType,
                format!(
                    "Unknown frame type `{}`: {}, cancel",
                    frame.kind.chars().take(64).collect::<String>(),
                    routes::frame_types()
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
            let error = ApiError::bad_request(
                ErrorCode::DuplicateId,
                format!("A request with id `{id}` is in flight"),
            )
            .with_param("id");
            return self.reply_error(Some(id), &error).await;
        }
        if self.in_flight.len() >= self.settings.max_in_flight {
            let error = ApiError::too_many(
                ErrorCode::TooManyInFlight,
                format!(
                    "This socket has {} requests in flight, the most it may",
                    self.settings.max_in_flight
                ),
            );
            return self.reply_error(Some(id), &error).await;
        }
        let body = match (endpoint.route, frame.body) {
            (_, Some(body)) => Bytes::copy_from_slice(body.get().as_bytes()),
            (Route::Models, None) => Bytes::new(),
            (_, None) => {
                let error = ApiError::bad_request(ErrorCode::MissingBody, "This request type needs a `body`")
                    .with_param("body");
                return self.reply_error(Some(id), &error).await;
            }
        };
        self.start(id.to_owned(), endpoint, body, ended.clone());
        Ok(())
    }

    pub(super) async fn on_auth(&mut self, frame: &Frame<'_>) -> Result<(), Ending> {
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
    pub(super) async fn recheck(&mut self, for_frame: bool) -> Result<bool, Ending> {
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

    pub(super) async fn cancel(&mut self, id: &str) -> Result<(), Ending> {
        let Some(running) = self.in_flight.remove(id).filter(|running| !running.ended.get()) else {
            let error = ApiError::bad_request(
                ErrorCode::UnknownRequest,
                format!("No request with id `{id}` is in flight"),
            )
            .with_param("id");
            return self.reply_error(Some(id), &error).await;
        };
        running.task.abort();
        self.reply_error(Some(id), &ApiError::cancelled()).await
    }

    /// Runs one request on its own task.
    pub(super) fn start(
        &mut self,
        id: String,
        endpoint: &'static RouteRule,
        body: Bytes,
        finished: Rc<Ended>,
    ) {
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
        #[expect(
            clippy::disallowed_methods,
            reason = "tracked: the handle stays in `in_flight`, aborted on cancel and when the socket closes"
        )]
        let task = actix_web::rt::spawn(async move {
            // Dropped when the task ends or is aborted: counted out once.
            let _counted = counted;
            let started = Instant::now();
            let request_id = RequestId::generate();
            let mut gate = Gate::for_call(&state.pipeline.limiting, &principal, &subject, endpoint.pattern);
            let mut meter = Meter::default();
            if endpoint.budget == Budget::Tokens {
                let governance = &state.pipeline.governance;
                gate = gate.with_quotas(QuotaGate::of(&governance.quotas, &principal));
                meter = Meter::start(governance, &principal, request_id.as_str(), endpoint.pattern);
            }
            let origin = Origin {
                principal,
                subject,
                request_id,
                gate,
                meter: meter.clone(),
                cache_allowed: true,
                screened: false,
                hangup: Hangup::never(),
            };
            let answer = answer(&state, &origin, endpoint, &body).await;
            origin.gate.spend_unadmitted().await;
            if let Some(lookup) = answer.as_ref().ok().and_then(|answer| answer.lookup) {
                meter.cache(lookup.header());
            }
            let status = deliver(&outbound, &id_json(Some(&task_id)), answer).await;
            task_ended.set(true);
            meter.status(status);
            drop(meter);
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

/// A control frame the socket sends itself.
pub(super) enum Control {
    Ping,
    Pong(Bytes),
}

pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
