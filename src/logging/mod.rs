//! Logs as JSON lines on stdout, through a background writer so request
//! threads never wait on the terminal or a pipe; the same lines shipped
//! to Elasticsearch when `logging.elasticsearch_url` is set
//! ([`shipping`]); and, when `telemetry.otlp_endpoint` is set, the trace
//! layer beside them.

mod access;
mod shipping;

use std::sync::Arc;
use tracing::level_filters::LevelFilter;

use tracing::subscriber::Interest;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::filter::{DynFilterFn, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use self::access::{AccessLevel, AccessLine, ACCESS_TARGET};
pub use self::shipping::{index_template, ShippingError};
use self::shipping::{Outbox, Shipping, SHIPPING_TARGET};
use crate::settings::{LoggingSettings, TelemetrySettings};
use crate::telemetry::{Traces, SPAN_TARGET};

/// Keeps logging and tracing alive; dropped at exit, it sends the spans
/// still queued, ships the lines still queued, then flushes stdout's.
pub struct LogGuard {
    traces: Option<Traces>,
    shipping: Option<Shipping>,
    _writer: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
        if let Some(shipping) = self.shipping.take() {
            shipping.stop();
        }
    }
}

/// Installs the subscriber and the panic hook. The filter comes from
/// `BLAZE_LOG` (tracing's env-filter syntax), `info` by default. Fails
/// only when log shipping is asked for and cannot start (its secret
/// file unreadable, say).
pub fn init(telemetry: &TelemetrySettings, logging: &LoggingSettings) -> Result<LogGuard, ShippingError> {
    let (shipping, outbox) = if logging.shipping_enabled() {
        let (shipping, outbox) = Shipping::start(logging)?;
        (Some(shipping), Some(Arc::new(outbox)))
    } else {
        (None, None)
    };
    // Buffered: under load the writer thread sends many lines per write
    // call; it flushes whenever its queue runs empty, so a line still
    // lands at once when the server is quiet.
    let (stdout, guard) =
        tracing_appender::non_blocking(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let writer = Lines { stdout, outbox };
    access::install(writer.clone());
    let filter = EnvFilter::try_from_env("BLAZE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The trace spans are not log lines, whatever BLAZE_LOG says.
    let filter = match format!("{SPAN_TARGET}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(filter);
    let (traces, trace_layer) = if telemetry.traces_enabled() {
        match Traces::start(telemetry) {
            Ok((traces, tracer)) => {
                let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(traced_only());
                (Some(traces), Some(layer))
            }
            Err(error) => {
                eprintln!("{error}; serving without traces");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let installed = tracing_subscriber::registry().with(logs).with(trace_layer).try_init();
    if let Err(error) = installed {
        eprintln!("logging was already set up: {error}");
    }
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|at| format!("{}:{}", at.file(), at.line()));
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(panic = %message, location, thread = thread.name(), "panic");
    }));
    Ok(LogGuard { traces, shipping, _writer: guard })
}

/// Where each formatted line goes: stdout, and the shipper's queue.
#[derive(Clone)]
struct Lines {
    stdout: NonBlocking,
    outbox: Option<Arc<Outbox>>,
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { stdout: self.stdout.clone(), outbox: self.outbox.as_deref() }
    }

    fn make_writer_for(&'a self, metadata: &tracing::Metadata<'_>) -> Self::Writer {
        // The shipper's own complaints would queue more lines behind the
        // ones it cannot send.
        let outbox = self.outbox.as_deref().filter(|_| metadata.target() != SHIPPING_TARGET);
        LineWriter { stdout: self.stdout.clone(), outbox }
    }
}

/// One line's writer: the fmt layer writes a whole line per call.
struct LineWriter<'a> {
    stdout: NonBlocking,
    outbox: Option<&'a Outbox>,
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if let Some(outbox) = self.outbox {
            outbox.offer(line);
        }
        self.stdout.write(line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stdout.flush()
    }
}

/// What the trace layer takes: Blaze's spans, and its warnings and
/// errors as their events, only within a traced request. A request's
/// span is made only when the request is sampled
/// (`http::observe::request_span`), so the stages of an unsampled one
/// cost a look at the current span each, not a span.
fn traced_only<S>() -> impl tracing_subscriber::layer::Filter<S>
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    let wanted =
        Targets::new().with_target(SPAN_TARGET, LevelFilter::INFO).with_target("blaze", LevelFilter::WARN);
    let at_callsite = wanted.clone();
    DynFilterFn::new(move |metadata: &tracing::Metadata<'_>, context: &Context<'_, S>| {
        if !wanted.would_enable(metadata.target(), metadata.level()) {
            return false;
        }
        let is_request =
            metadata.is_span() && metadata.target() == SPAN_TARGET && metadata.name() == "request";
        is_request || context.lookup_current().is_some()
    })
    .with_callsite_filter(move |metadata| {
        if at_callsite.would_enable(metadata.target(), metadata.level()) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    })
}
