//! jemalloc, the `blaze` binary's allocator (see `main.rs`): its
//! statistics, and its sampled heap profile for `/admin/profile/memory`.
//!
//! jemalloc is built with profiling; the binary starts it inactive, and
//! [`start`] turns sampling on when `profiling.enabled` and
//! `profiling.heap_sampling`, before the models load, so the profile
//! covers every allocation made since. jemalloc then
//! records the stack of one allocation per 512 KiB allocated on average
//! (its default, as Go's heap profiler), and a dump is the live sampled
//! allocations scaled to the bytes they stand for.

use serde_json::{json, Value};

/// Turns heap sampling on when heap profiles are asked for; says so in
/// the log.
pub fn start(settings: &crate::settings::ProfilingSettings) {
    if !(settings.enabled && settings.heap_sampling) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let Some(control) = jemalloc_pprof::PROF_CTL.as_ref() else {
            // jemalloc is not this process's allocator with profiling
            // built in (a library user's binary, or MALLOC_CONF turned it off).
            tracing::info!("heap profiles unavailable: jemalloc's profiling is off in this process");
            return;
        };
        let Ok(mut control) = control.try_lock() else { return };
        match control.activate() {
            Ok(()) => tracing::info!(sample_bytes = 1u64 << control.lg_sample(), "heap sampling on"),
            Err(error) => tracing::warn!(%error, "cannot turn heap sampling on"),
        }
    }
}

/// A heap profile's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapFormat {
    /// gzipped pprof protobuf (`go tool pprof`).
    Pprof,
    /// A flamegraph of the bytes in use by stack.
    Svg,
}

/// Dumps the heap profile (blocking: jemalloc writes it to a temporary
/// file, which is read back and symbolized); `Err` says why there is none.
pub fn dump(format: HeapFormat) -> Result<Vec<u8>, String> {
    #[cfg(target_os = "linux")]
    {
        let control = jemalloc_pprof::PROF_CTL
            .as_ref()
            .ok_or("jemalloc's profiling is off in this process (not the blaze binary, or MALLOC_CONF)")?;
        let mut control = control.blocking_lock();
        if !control.activated() {
            return Err(
                "heap sampling is off: start the server with profiling.heap_sampling (and profiling.enabled)"
                    .to_owned(),
            );
        }
        let dumped = match format {
            HeapFormat::Pprof => control.dump_pprof(),
            HeapFormat::Svg => {
                let mut options = jemalloc_pprof::FlamegraphOptions::default();
                options.title = "Blaze heap: bytes in use by allocation stack".to_owned();
                options.count_name = "bytes".to_owned();
                control.dump_flamegraph_with_options(&mut options)
            }
        };
        dumped.map_err(|error| format!("{error:#}"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = format;
        Err("heap profiles are read from jemalloc on Linux only".to_owned())
    }
}

/// The allocator's own view: what Blaze's Rust code holds (`allocated`),
/// the pages that holds (`active`), what jemalloc has mapped and keeps
/// resident (its metadata included), and what it retains unmapped for
/// reuse.
pub fn statistics() -> Value {
    #[cfg(target_os = "linux")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        // The statistics are a snapshot refreshed by each epoch advance.
        if let Err(error) = epoch::advance() {
            return json!({"name": "jemalloc", "error": error.to_string()});
        }
        let read = |value: tikv_jemalloc_ctl::Result<usize>| value.ok();
        let sampling = jemalloc_pprof::PROF_CTL
            .as_ref()
            .and_then(|control| control.try_lock().ok().map(|control| control.activated()));
        json!({
            "name": "jemalloc",
            "allocated_bytes": read(stats::allocated::read()),
            "active_bytes": read(stats::active::read()),
            "resident_bytes": read(stats::resident::read()),
            "mapped_bytes": read(stats::mapped::read()),
            "retained_bytes": read(stats::retained::read()),
            "metadata_bytes": read(stats::metadata::read()),
            "heap_sampling": sampling,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        json!({"name": "system", "note": "statistics are read from jemalloc on Linux only"})
    }
}
