//! Traces: the OpenTelemetry pipeline (sampling, a bounded export queue
//! whose drops are counted, OTLP over HTTP or gRPC), the target of
//! Blaze's spans, and the W3C `traceparent` taken from a request and
//! passed on to an upstream.
//!
//! Spans are `tracing` spans of the target [`SPAN_TARGET`]: the log lines
//! never show them, and with traces off no layer wants them, so making
//! one costs a check of its call site's interest. Stages that ran in an
//! inference worker (queue wait, prompt, decode) are known only when it
//! reports them; they are recorded afterwards, with their real times,
//! through the OpenTelemetry API ([`record_stage`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::settings::{OtlpProtocol, TelemetrySettings};

/// The target of every span Blaze makes for its traces.
pub const SPAN_TARGET: &str = "blaze::trace";

/// Whether spans are exported (set once at start).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The tracer of the stages recorded afterwards.
static TRACER: std::sync::OnceLock<SdkTracer> = std::sync::OnceLock::new();

/// `telemetry.sampling_ratio`, as the bits of an f64 (set once at start).
static RATIO: AtomicU64 = AtomicU64::new(0);

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why traces cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("telemetry: cannot start the gRPC exporter's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The running trace pipeline; [`Traces::shutdown`] sends what is queued.
pub struct Traces {
    provider: SdkTracerProvider,
    /// The gRPC exporter's connection lives on its own runtime: the
    /// batch processor's thread blocks on exports, and actix's runtimes
    /// are single-threaded and busy serving.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Traces {
    pub fn start(settings: &TelemetrySettings) -> Result<(Self, SdkTracer), TelemetryError> {
        let endpoint = settings.otlp_endpoint.trim().trim_end_matches('/');
        let (exporter, runtime) = match settings.otlp_protocol {
            OtlpProtocol::Http => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(format!("{endpoint}/v1/traces"))
                    .with_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
                (exporter, None)
            }
            OtlpProtocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("blaze-otlp")
                    .enable_all()
                    .build()
                    .map_err(TelemetryError::Runtime)?;
                let exporter = {
                    let _entered = runtime.enter();
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint)
                        .with_timeout(Duration::from_secs(10))
                        .build()
                        .map_err(|error| TelemetryError::Exporter(error.to_string()))?
                };
                (exporter, Some(runtime))
            }
        };
        let queued = Arc::new(AtomicUsize::new(0));
        let batches = BatchConfigBuilder::default()
            // The SDK's own queue is never the one that fills: ours drops
            // (and counts) first.
            .with_max_queue_size(settings.max_queued_spans + 1)
            .with_max_export_batch_size(settings.max_queued_spans.clamp(1, 512))
            .with_scheduled_delay(Duration::from_millis(settings.export_interval_ms))
            .build();
        let batch = BatchSpanProcessor::builder(Counted { inner: exporter, queued: queued.clone() })
            .with_batch_config(batches)
            .build();
        let processor = Bounded { inner: batch, queued, most: settings.max_queued_spans };
        // Head sampling is decided before a request's span is made
        // ([`new_trace_sampled`]): an unsampled request makes no span at all, where
        // the SDK's ratio sampler would drop one only after its data was
        // built. So every span that reaches the SDK is to be recorded,
        // except under a caller that said unsampled.
        RATIO.store(settings.sampling_ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let tracer = provider.tracer("blaze");
        let _ = TRACER.set(tracer.clone());
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Self { provider, runtime }, tracer))
    }

    /// Sends the spans still queued (within a few seconds) and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("telemetry: the last spans were not all sent: {error}");
        }
        if let Some(runtime) = self.runtime {
            runtime.shutdown_background();
        }
    }
}

/// Spans dropped because the export queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The export queue's bound: a span past it is dropped and counted
/// (`blaze_trace_spans_dropped_total`), never waited for.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    most: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, context: &Context) {
        self.inner.on_start(span, context);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.most {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let total = DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("blaze_trace_spans_dropped_total").absolute(total);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, telling the bound when its spans left the queue.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let sent = self.inner.export(batch).await;
        self.queued.fetch_sub(count, Ordering::AcqRel);
        if sent.is_err() {
            metrics::counter!("blaze_trace_export_failures_total").increment(1);
        }
        sent
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A request's headers, read for its `traceparent` and `tracestate`.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// The trace a request's `traceparent` names, if it is well formed.
pub fn caller(headers: &actix_web::http::header::HeaderMap) -> Option<Context> {
    let given = headers.get("traceparent").and_then(|value| value.to_str().ok());
    if !given.is_some_and(well_formed) {
        return None;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    parent.span().span_context().is_valid().then_some(parent)
}

/// Whether a request that starts a trace of its own is recorded: a draw
/// at `telemetry.sampling_ratio`. Always false with traces off.
pub fn new_trace_sampled() -> bool {
    if !enabled() {
        return false;
    }
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// Makes `span` a child of the caller's trace.
pub fn follow_caller(span: &tracing::Span, caller: Context) {
    if !span.is_disabled() {
        let _ = span.set_parent(caller);
    }
}

/// A `traceparent` as W3C Trace Context writes it: `00-` then 32 and 16
/// lowercase hex digits and the flags; a later version may add fields
/// after them. (The propagator alone takes shorter ids.)
fn well_formed(value: &str) -> bool {
    let bytes = value.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        bytes[range].iter().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    let shaped = bytes.len() >= 55
        && [2, 35, 52].iter().all(|&at| bytes[at] == b'-')
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55);
    match value.get(..2) {
        Some("00") => shaped && bytes.len() == 55,
        Some("ff") | None => false,
        Some(_) => shaped && (bytes.len() == 55 || bytes[55] == b'-'),
    }
}

/// The `traceparent` (and `tracestate`) that passes the current span's
/// trace on to an upstream; empty when traces are off.
pub fn outgoing_headers() -> HashMap<String, String> {
    let mut headers = HashMap::new();
    if enabled() {
        let context = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&context, &mut headers);
    }
    headers
}

/// Sets an attribute on `span`'s OpenTelemetry span (nothing when off).
pub fn attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    if enabled() && !span.is_disabled() {
        span.set_attribute(key, value);
    }
}

/// A stage that ran elsewhere (an inference worker), recorded as a child
/// of `parent` with its real start and end.
pub fn record_stage(parent: &tracing::Span, name: &'static str, start: Instant, end: Instant) {
    let Some(tracer) = TRACER.get().filter(|_| enabled() && !parent.is_disabled()) else { return };
    let context = parent.context();
    if !context.span().span_context().is_sampled() {
        return;
    }
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(system_time(start))
        .start_with_context(tracer, &context);
    span.end_with_timestamp(system_time(end));
}

/// A completion's stages in its worker: the wait in the model's queue,
/// the prompt read (to the first token), the decode.
pub fn record_generation(parent: &tracing::Span, timing: &blaze_actors::inference::Timing) {
    let Some(times) = timing.0 else { return };
    if let Some(first) = times.first_token_at {
        // As blaze_time_to_first_token_seconds counts it: from the model's
        // queue to the first token.
        let seconds = first.saturating_duration_since(times.queued_at).as_secs_f64();
        attribute(parent, "gen_ai.response.time_to_first_token", seconds);
    }
    record_stage(parent, "queue", times.queued_at, times.started_at);
    match times.first_token_at {
        Some(first) => {
            record_stage(parent, "prompt", times.started_at, first);
            record_stage(parent, "decode", first, times.finished_at);
        }
        None => record_stage(parent, "prompt", times.started_at, times.finished_at),
    }
}

/// An `Instant` on the wall clock.
fn system_time(instant: Instant) -> SystemTime {
    let now = Instant::now();
    match now.checked_duration_since(instant) {
        Some(ago) => SystemTime::now() - ago,
        None => SystemTime::now() + instant.duration_since(now),
    }
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn only_well_formed_traceparents_are_followed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(well_formed(good));
        assert!(well_formed("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"));
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
