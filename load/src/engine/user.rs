//! One virtual user: its connection or socket, what it captured from
//! earlier answers, and how it performs a step (a request built from its
//! template, or sent as prepared bytes when it has no variables).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Counted, Shared, Target};
use crate::http1::{self, Answer, Connection, Failure};
use crate::scenario::{Auth, Protocol, Scenario};
use crate::stats::Outcome;
use crate::template::Context;
use crate::websocket::{self, Socket};

pub(super) struct User {
    shard: usize,
    connection: Option<(Connection, Counted)>,
    socket: Option<(Socket, Counted)>,
    captured: Vec<(String, String)>,
    pub(super) random: fastrand::Rng,
    text: String,
    bytes: Vec<u8>,
}

impl User {
    pub(super) fn new(id: usize) -> Self {
        Self {
            shard: id,
            connection: None,
            socket: None,
            captured: Vec::new(),
            random: fastrand::Rng::new(),
            text: String::new(),
            bytes: Vec::new(),
        }
    }

    pub(super) fn pick(&mut self, shared: &Shared) -> usize {
        let weights = &shared.cumulative_weights;
        let total = weights.last().copied().unwrap_or(1.0);
        if weights.len() == 1 {
            return 0;
        }
        let point = self.random.f64() * total;
        weights.iter().position(|bound| point < *bound).unwrap_or(weights.len() - 1)
    }

    fn authorization(&mut self, shared: &Shared, index: usize) -> Option<String> {
        match &shared.scenario.requests[index].auth {
            Auth::Key => shared.key.clone(),
            Auth::None => None,
            Auth::Bearer(template) => {
                let mut context = Context {
                    variables: &shared.scenario.variables,
                    captured: &self.captured,
                    random: &mut self.random,
                };
                Some(template.render_string(&mut context))
            }
        }
    }

    /// Renders a request with variables into `self.bytes`.
    fn render(&mut self, shared: &Shared, index: usize) {
        let request = &shared.scenario.requests[index];
        let authorization = self.authorization(shared, index);
        let mut context = Context {
            variables: &shared.scenario.variables,
            captured: &self.captured,
            random: &mut self.random,
        };
        let path = format!("{}{}", shared.target.prefix, request.path.render_string(&mut context));
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.render_string(&mut context)))
            .collect();
        self.text.clear();
        if let Some(body) = &request.body {
            body.render(&mut context, &mut self.text);
        }
        let body_length = request.body.as_ref().map(|_| self.text.len());
        self.bytes = http1::head(
            &request.method,
            &path,
            &shared.target.host_header,
            authorization.as_deref(),
            &headers,
            request.protocol == Protocol::Sse,
            body_length,
        );
        self.bytes.extend_from_slice(self.text.as_bytes());
    }

    async fn send(
        &mut self,
        shared: &Arc<Shared>,
        index: usize,
        started: Instant,
    ) -> Result<(Answer, u64), Failure> {
        let request = &shared.scenario.requests[index];
        if request.protocol == Protocol::Websocket {
            let socket = match self.socket.take() {
                Some(socket) => socket,
                None => {
                    let url = shared.target.websocket_url(request.path.as_static().unwrap_or("/v1/ws"));
                    (Socket::open(&url, shared.key.as_deref()).await?, Counted::new(shared))
                }
            };
            self.text.clear();
            if let Some(body) = &request.body {
                let mut context = Context {
                    variables: &shared.scenario.variables,
                    captured: &self.captured,
                    random: &mut self.random,
                };
                body.render(&mut context, &mut self.text);
            }
            let body = request.body.as_ref().map(|_| self.text.as_str());
            let (socket, _) = self.socket.insert(socket);
            let result = socket.exchange(&request.frame_type, body, started).await;
            if result.is_err() {
                if let Some((socket, _)) = self.socket.take() {
                    websocket::close(socket).await;
                }
            }
            return result;
        }
        let connection = match self.connection.take() {
            Some(open) if open.0.reusable() => open,
            _ => (Connection::open(shared.target.address).await?, Counted::new(shared)),
        };
        let prepared = shared.prepared[index].as_deref();
        if prepared.is_none() {
            self.render(shared, index);
        }
        let bytes = prepared.unwrap_or(&self.bytes);
        let (connection, _) = self.connection.insert(connection);
        let result = connection
            .exchange(
                bytes,
                request.method == "HEAD",
                !request.capture.is_empty(),
                request.protocol == Protocol::Sse,
                started,
            )
            .await;
        match result {
            Ok(answer) => Ok((answer, bytes.len() as u64)),
            Err(failure) => {
                self.connection = None;
                Err(failure)
            }
        }
    }

    /// Runs one step (one request, or a sequence); `intended` is when its
    /// first request was meant to go.
    pub(super) async fn perform(&mut self, shared: &Arc<Shared>, step: usize, intended: Instant) {
        let step = &shared.scenario.steps[step];
        for (position, &index) in step.requests.iter().enumerate() {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= shared.scenario.max_requests {
                shared.budget_spent.store(true, Ordering::Relaxed);
                return;
            }
            let started = Instant::now();
            let from = if position == 0 { intended } else { started };
            shared.in_flight.fetch_add(1, Ordering::Relaxed);
            let result =
                tokio::time::timeout(shared.scenario.timeout, self.send(shared, index, started)).await;
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            let finished = Instant::now();
            let (error, sent, received, stream) = match result {
                Err(_) => {
                    self.connection = None;
                    self.socket = None;
                    (Some("timeout".to_owned()), 0, 0, None)
                }
                Ok(Err(failure)) => (Some(failure.kind()), 0, 0, None),
                Ok(Ok((answer, sent))) => {
                    let error = self.judge(shared, index, &answer);
                    (error, sent, answer.bytes_received, answer.stream)
                }
            };
            let failed = error.is_some();
            let outcome = Outcome {
                request: index,
                latency: finished.duration_since(from),
                service: finished.duration_since(started),
                error,
                bytes_sent: sent,
                bytes_received: received,
                stream,
            };
            // The timeline shows the measured requests; before the
            // measurement starts, the progress line shows the warm-up's.
            let measured = from >= shared.measure_from;
            let shown = measured || finished < shared.measure_from;
            shared.collector.record(self.shard, outcome, measured, shown);
            if failed {
                return;
            }
        }
    }

    /// The error kind of an answer, if it is not the expected one; keeps
    /// its captures otherwise.
    fn judge(&mut self, shared: &Shared, index: usize, answer: &Answer) -> Option<String> {
        let request = &shared.scenario.requests[index];
        if answer.status != request.expect {
            let code = answer
                .body
                .as_deref()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                .and_then(|body| {
                    let error = body.get("error")?;
                    error
                        .get("code")
                        .and_then(|code| code.as_str())
                        .or_else(|| error.get("type")?.as_str())
                        .map(str::to_owned)
                });
            return Some(match code {
                Some(code) => format!("{} {code}", answer.status),
                None => answer.status.to_string(),
            });
        }
        if let Some(problem) = &answer.stream_error {
            return Some(problem.clone());
        }
        if request.capture.is_empty() {
            return None;
        }
        let body: serde_json::Value = match answer.body.as_deref().map(serde_json::from_slice) {
            Some(Ok(body)) => body,
            _ => return Some("capture: the answer is not JSON".to_owned()),
        };
        for (variable, pointer) in &request.capture {
            let Some(value) = body.pointer(pointer) else {
                return Some(format!("capture: no {pointer}"));
            };
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            match self.captured.iter_mut().find(|(name, _)| name == variable) {
                Some((_, old)) => *old = value,
                None => self.captured.push((variable.clone(), value)),
            }
        }
        None
    }

    pub(super) async fn close(mut self) {
        if let Some((socket, _)) = self.socket.take() {
            websocket::close(socket).await;
        }
    }
}

pub(super) fn prepare(scenario: &Scenario, target: &Target, key: Option<&str>) -> Vec<Option<Vec<u8>>> {
    scenario
        .requests
        .iter()
        .map(|request| {
            if request.protocol == Protocol::Websocket {
                return None;
            }
            let path = request.path.as_static()?;
            let body = match &request.body {
                Some(body) => Some(body.as_static()?),
                None => None,
            };
            let mut headers = Vec::new();
            for (name, value) in &request.headers {
                headers.push((name.clone(), value.as_static()?.to_owned()));
            }
            let authorization = match &request.auth {
                Auth::Key => key,
                Auth::None => None,
                Auth::Bearer(template) => Some(template.as_static()?),
            };
            let path = format!("{}{path}", target.prefix);
            let mut bytes = http1::head(
                &request.method,
                &path,
                &target.host_header,
                authorization,
                &headers,
                request.protocol == Protocol::Sse,
                body.map(str::len),
            );
            bytes.extend_from_slice(body.unwrap_or("").as_bytes());
            Some(bytes)
        })
        .collect()
}
