//! Logs as JSON lines on stdout, through a background writer so request
//! threads never wait on the terminal or a pipe; and, when
//! `telemetry.otlp_endpoint` is set, the trace layer beside them.

use tracing::level_filters::LevelFilter;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::TelemetrySettings;
use crate::telemetry::{Traces, SPAN_TARGET};

/// Keeps logging and tracing alive; dropped at exit, it sends the spans
/// still queued, then flushes the lines still queued.
pub struct LogGuard {
    traces: Option<Traces>,
    _writer: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
    }
}

/// Installs the subscriber and the panic hook. The filter comes from
/// `BLAZE_LOG` (tracing's env-filter syntax), `info` by default.
pub fn init(telemetry: &TelemetrySettings) -> LogGuard {
    // Buffered: under load the writer thread sends many lines per write
    // call; it flushes whenever its queue runs empty, so a line still
    // lands at once when the server is quiet.
    let (writer, guard) =
        tracing_appender::non_blocking(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
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
                // Blaze's spans, and its warnings and errors as their events.
                let wanted = Targets::new()
                    .with_target(SPAN_TARGET, LevelFilter::INFO)
                    .with_target("blaze", LevelFilter::WARN);
                let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(wanted);
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
    LogGuard { traces, _writer: guard }
}
