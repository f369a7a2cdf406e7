//! Blaze's load suite (`blaze-load`): YAML scenarios (`load/scenarios/`)
//! run by HTTP/1.1, SSE and WebSocket drivers under an open or closed
//! arrival model, measured in HDR histograms, reported as a terminal table,
//! JSON and a self-contained HTML page, and compared run against run. It
//! also holds the bare reference server (`blaze-reference`) that gives the
//! machine's ceiling in the same run, and the older single-purpose benches.

pub mod cli;
pub mod compare;
pub mod engine;
mod html;
pub mod http1;
pub mod reference;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod template;
pub mod websocket;

use std::sync::OnceLock;

/// A number that differs between runs: fresh sentences of one run are
/// never the fresh sentences of another (so they miss every cache).
pub fn run_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// The run needs more open files than this process may ever have: the
/// hard limit is below what the users or connections take.
#[derive(Debug, thiserror::Error)]
#[error(
    "the run needs {needed} open files and this process may have at most {hard}: lower the users or connections, or raise the hard limit (ulimit -Hn)"
)]
pub struct OpenFileLimitError {
    pub needed: u64,
    pub hard: u64,
}

/// Raises the open-file limit to what the run needs (up to the hard limit).
pub fn raise_fd_limit(needed: u64) -> Result<(), OpenFileLimitError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to fill and then to set.
    let (current, hard) = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Ok(());
        }
        if limit.rlim_cur < needed {
            limit.rlim_cur = limit.rlim_max.min(needed.max(limit.rlim_cur));
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        (limit.rlim_cur, limit.rlim_max)
    };
    if current < needed {
        return Err(OpenFileLimitError { needed, hard });
    }
    Ok(())
}

/// Durations in reports and scenarios' echoes, as milliseconds.
pub(crate) mod duration_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(duration.as_secs_f64() * 1000.0)
    }
}
