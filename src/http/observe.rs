//! The middleware every request passes through: request id, in-flight
//! gauge, body size check, time limit, panic recovery, metrics and the
//! access log. One layer, so the hot path pays for one wrapper.

use std::future::{ready, Future, Ready};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderName, CONTENT_LENGTH};
use actix_web::http::Method;
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use blaze_actors::metrics::{RequestRecorder, RouteId, Telemetry};
use futures_util::FutureExt;
use tracing::field::Empty;
use tracing::Instrument;

use crate::error::ApiError;
use crate::logging::{AccessLevel, AccessLine};
use crate::openai::{Meter, Noted, RequestId};
use crate::telemetry::{self, SPAN_TARGET};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, from the client's `x-request-id` when it is sane,
/// generated otherwise.
fn request_id_of(request: &ServiceRequest) -> RequestId {
    request.headers().get(&REQUEST_ID).and_then(RequestId::given).unwrap_or_else(RequestId::generate)
}

pub struct Observe {
    shared: Rc<ObserveSettings>,
}

struct ObserveSettings {
    telemetry: Arc<Telemetry>,
    timeout: Duration,
    timeout_s: u64,
    max_body: usize,
}

impl Observe {
    pub fn new(telemetry: Arc<Telemetry>, timeout_s: u64, max_body: usize) -> Self {
        let shared =
            ObserveSettings { telemetry, timeout: Duration::from_secs(timeout_s), timeout_s, max_body };
        Self { shared: Rc::new(shared) }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        let recorder = Rc::new(self.shared.telemetry.recorder());
        ready(Ok(ObserveService { service: Rc::new(service), shared: self.shared.clone(), recorder }))
    }
}

pub struct ObserveService<S> {
    service: Rc<S>,
    shared: Rc<ObserveSettings>,
    /// This worker's metric handles.
    recorder: Rc<RequestRecorder>,
}

type Outcome<B> = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Outcome<B>>>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let in_flight = self.recorder.request_started();
        let request_id = request_id_of(&request);
        request.extensions_mut().insert(request_id.clone());
        // Taken now: after a panic or a timeout the request is gone.
        let labels = Labels {
            method: method_label(request.method()),
            // The path as actix routes it (percent-decoded), so every
            // spelling of a route is counted under its pattern.
            route: {
                let routed = request.match_info().as_str();
                self.recorder.route(routed, || request.resource_map().match_pattern(routed))
            },
        };
        let span = request_span(&request, &self.recorder, &labels, &request_id);
        let shared = self.shared.clone();
        let recorder = self.recorder.clone();
        if declared_length(&request).is_some_and(|length| length > shared.max_body as u64) {
            let error = ApiError::payload_too_large(shared.max_body);
            let mut response = request.into_response(error.error_response()).map_into_right_body();
            let ending = Ending { labels: &labels, started, span: &span, noted: None };
            finish(&recorder, response.response_mut(), &request_id, &ending);
            return Box::pin(ready(Ok(response)));
        }
        let inner = {
            let _entered = span.enter();
            AssertUnwindSafe(self.service.call(request)).catch_unwind()
        };
        let inner = inner.instrument(span.clone());
        Box::pin(async move {
            let outcome = Deadline::new(inner, started + shared.timeout).await;
            let _in_flight = in_flight;
            let failure = match outcome {
                Ok(Ok(Ok(mut response))) => {
                    let noted = response.request().extensions().get::<Meter>().and_then(Meter::noted);
                    let ending = Ending { labels: &labels, started, span: &span, noted: noted.as_deref() };
                    finish(&recorder, response.response_mut(), &request_id, &ending);
                    return Ok(response.map_into_left_body());
                }
                Ok(Ok(Err(error))) => error,
                // The panic hook has logged the panic itself.
                Ok(Err(_)) => ApiError::internal(request_id.as_str()).into(),
                Err(_) => ApiError::timeout(shared.timeout_s).into(),
            };
            // The request is gone (consumed by a failed service, or dropped
            // with a panicked or late one): answer through an error that
            // carries its finished response.
            let mut response = failure.error_response();
            let ending = Ending { labels: &labels, started, span: &span, noted: None };
            finish(&recorder, &mut response, &request_id, &ending);
            Err(actix_web::error::InternalError::from_response(failure, response).into())
        })
    }
}

fn declared_length(request: &ServiceRequest) -> Option<u64> {
    request.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The request's span in its trace, a child of the caller's when it
/// sent a `traceparent`. `Span::none()` (free) with traces off and for a
/// request not sampled: its stages then make no span either (the trace
/// layer's filter wants them only under a traced request).
fn request_span(
    request: &ServiceRequest,
    recorder: &RequestRecorder,
    labels: &Labels,
    request_id: &RequestId,
) -> tracing::Span {
    if !telemetry::enabled() {
        return tracing::Span::none();
    }
    let caller = telemetry::caller(request.headers());
    // A caller that said unsampled still gets a span (unrecorded), so an
    // upstream behind the gateway hears the same trace and decision.
    if caller.is_none() && !telemetry::new_trace_sampled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = labels.method,
        http.route = Empty,
        http.response.status_code = Empty,
        blaze.request_id = request_id.as_str(),
    );
    if !span.is_disabled() {
        let route = recorder.route_name(labels.route);
        span.record("otel.name", format!("{} {}", labels.method, &*route));
        span.record("http.route", &*route);
        if let Some(caller) = caller {
            telemetry::follow_caller(&span, caller);
        }
    }
    span
}

struct Labels {
    method: &'static str,
    route: RouteId,
}

/// How a request ended, for its metrics, span and access log line.
struct Ending<'a> {
    labels: &'a Labels,
    started: Instant,
    span: &'a tracing::Span,
    /// A model request's model and tokens.
    noted: Option<&'a Noted>,
}

/// Stamps the request id, records metrics and writes the access log line.
fn finish<B>(
    recorder: &RequestRecorder,
    response: &mut HttpResponse<B>,
    request_id: &RequestId,
    ending: &Ending<'_>,
) {
    response.headers_mut().insert(REQUEST_ID, request_id.header().clone());
    let elapsed = ending.started.elapsed();
    let method = ending.labels.method;
    let status = response.status().as_u16();
    let span = ending.span;
    if !span.is_disabled() {
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "error");
        }
    }
    recorder.record(ending.labels.route, method, status, elapsed);
    let route = recorder.route_name(ending.labels.route);
    let route = &*route;
    let mut line = AccessLine {
        // Probes and scrapes arrive every few seconds from every balancer
        // and Prometheus; they are logged only at debug level.
        level: if is_probe_route(route) { AccessLevel::Debug } else { AccessLevel::Info },
        request_id: request_id.as_str(),
        method,
        route,
        status,
        latency: elapsed,
        model: None,
        tokens: None,
    };
    let model = ending.noted.and_then(Noted::model);
    if let Some(noted) = ending.noted {
        line.level = AccessLevel::Info;
        line.model = model.as_deref();
        line.tokens = noted.tokens();
        if line.tokens.is_some() {
            noted.logged();
        }
    }
    line.write();
}

fn is_probe_route(route: &str) -> bool {
    matches!(route, "/health" | "/health/ready" | "/livez" | "/readyz" | "/metrics")
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

pin_project_lite::pin_project! {
    /// A time limit that arms its timer only if the request does not finish
    /// on its first poll: most answers (health, cache hits) are ready at
    /// once, and a timer costs a lock on the driver to create and drop.
    struct Deadline<F> {
        #[pin]
        inner: F,
        at: Instant,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

/// The time limit passed.
struct Elapsed;

impl<F> Deadline<F> {
    fn new(inner: F, at: Instant) -> Self {
        Self { inner, at, timer: None }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.inner.poll(context) {
            return Poll::Ready(Ok(output));
        }
        let at = tokio::time::Instant::from_std(*this.at);
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().poll(context).map(|()| Err(Elapsed))
    }
}
