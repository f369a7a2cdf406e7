//! Logs as JSON lines on stdout, through a background writer so request
//! threads never wait on the terminal or a pipe.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber and the panic hook. The filter comes from
/// `BLAZE_LOG` (tracing's env-filter syntax), `info` by default. Keep the
/// guard alive: dropping it flushes the lines still queued.
pub fn init() -> WorkerGuard {
    // Buffered: under load the writer thread sends many lines per write
    // call; it flushes whenever its queue runs empty, so a line still
    // lands at once when the server is quiet.
    let (writer, guard) =
        tracing_appender::non_blocking(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let filter = EnvFilter::try_from_env("BLAZE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
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
    guard
}
