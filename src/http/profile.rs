//! `/admin/profile/*`: profiles an admin takes of a running server, when
//! `profiling.enabled` (off in the production profile). A CPU profile
//! (pprof protobuf or a flamegraph SVG), the allocator's statistics, and
//! the runtime's state: actors, model queues, threads' CPU time, open
//! connections and bytes per route. One profile at a time: another
//! request meanwhile gets 409.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION};
use actix_web::{web, HttpResponse};
use blaze_actors::router::{ModelHandle, ServedModel};
use serde::Deserialize;
use serde_json::{json, Value};

use super::heap_profile::{self, HeapFormat};
use super::network;
use super::routing::Route;
use super::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::settings::BodyLimitSettings;

pub fn configure(config: &mut web::ServiceConfig, limits: &BodyLimitSettings) {
    config
        .service(super::get(Route::ProfileCpu, limits, cpu))
        .service(super::get(Route::ProfileMemory, limits, memory))
        .service(super::get(Route::ProfileRuntime, limits, runtime));
}

/// A profile is being taken.
static BUSY: AtomicBool = AtomicBool::new(false);

/// The profile slot, given back when dropped (whatever happens to the
/// request taking it).
struct Slot;

impl Slot {
    fn take(state: &AppState) -> Result<Self, ApiError> {
        if !state.profiling.enabled {
            return Err(ApiError::new(
                ErrorCode::ProfilingDisabled,
                "Profiling is off on this server (profiling.enabled)",
            ));
        }
        if BUSY.swap(true, Ordering::AcqRel) {
            return Err(ApiError::conflict(
                ErrorCode::ProfileInProgress,
                "Another profile is being taken; try again when it is done",
            ));
        }
        Ok(Self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CpuQuery {
    seconds: Option<u64>,
    format: Option<CpuFormat>,
    frequency: Option<i32>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CpuFormat {
    Pprof,
    Svg,
}

/// `GET /admin/profile/cpu?seconds=N&format=pprof|svg&frequency=Hz`:
/// every thread sampled for N seconds (10 by default).
async fn cpu(state: web::Data<AppState>, query: web::Query<CpuQuery>) -> Result<HttpResponse, ApiError> {
    let most = state.profiling.max_cpu_seconds;
    let seconds = query.seconds.unwrap_or(10.min(most));
    if !(1..=most).contains(&seconds) {
        return Err(invalid("seconds", &format!("`seconds` must be 1 to {most}")));
    }
    let frequency = query.frequency.unwrap_or(99);
    if !(1..=1000).contains(&frequency) {
        return Err(invalid("frequency", "`frequency` must be 1 to 1000 (samples per second)"));
    }
    let format = query.format.unwrap_or(CpuFormat::Pprof);
    let slot = Slot::take(&state)?;
    let file = match format {
        CpuFormat::Pprof => "cpu.pb",
        CpuFormat::Svg => "cpu.svg",
    };
    profile_answer("CPU", slot, file, move || {
        take_cpu_profile(Duration::from_secs(seconds), frequency, format)
    })
    .await
}

/// Takes a profile on a blocking thread (sampling, dumping and the symbol
/// lookup block), holding the slot until it is done, and answers it as
/// the file named `file` (`.svg`: a flamegraph; else protobuf).
async fn profile_answer(
    kind: &'static str,
    slot: Slot,
    file: &'static str,
    take: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<HttpResponse, ApiError> {
    let profile = web::block(move || {
        let _slot = slot;
        take()
    })
    .await
    .map_err(|_| ApiError::internal("profile"))?
    .map_err(|problem| {
        ApiError::new(ErrorCode::ProfileFailed, format!("The {kind} profile failed: {problem}"))
    })?;
    let content_type = if file.ends_with(".svg") { "image/svg+xml" } else { "application/octet-stream" };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((CONTENT_DISPOSITION, format!("inline; filename=\"{file}\"")))
        .insert_header((CACHE_CONTROL, "no-store"))
        .body(profile))
}

fn take_cpu_profile(length: Duration, frequency: i32, format: CpuFormat) -> Result<Vec<u8>, String> {
    // Samples whose interrupted frame is in these libraries are skipped:
    // unwinding from inside them can deadlock.
    let profiler = pprof::ProfilerGuardBuilder::default()
        .frequency(frequency)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|error| error.to_string())?;
    std::thread::sleep(length);
    let report = profiler.report().build().map_err(|error| error.to_string())?;
    drop(profiler);
    let mut out = Vec::new();
    match format {
        // An idle server takes no CPU, so no sample: the flamegraph says so
        // rather than being empty.
        CpuFormat::Svg if report.data.is_empty() => out.extend_from_slice(NO_SAMPLES_SVG.as_bytes()),
        CpuFormat::Svg => report.flamegraph(&mut out).map_err(|error| error.to_string())?,
        CpuFormat::Pprof => {
            use pprof::protos::Message;
            let profile = report.pprof().map_err(|error| error.to_string())?;
            profile.encode(&mut out).map_err(|error| error.to_string())?;
        }
    }
    Ok(out)
}

const NO_SAMPLES_SVG: &str = r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="10" y="35" font-family="Verdana" font-size="17">No samples: the server used no CPU during the profile.</text></svg>
"#;

fn invalid(param: &str, message: &str) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidQuery, message).with_param(param)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryQuery {
    format: Option<MemoryFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum MemoryFormat {
    Json,
    Pprof,
    Svg,
}

/// `GET /admin/profile/memory?format=json|pprof|svg`: the process's memory
/// and the allocators' view of it (JSON), or the heap profile (gzipped
/// pprof protobuf, or a flamegraph SVG).
async fn memory(
    state: web::Data<AppState>,
    query: web::Query<MemoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let slot = Slot::take(&state)?;
    let heap_format = match query.format.unwrap_or(MemoryFormat::Json) {
        MemoryFormat::Json => None,
        MemoryFormat::Pprof => Some(HeapFormat::Pprof),
        MemoryFormat::Svg => Some(HeapFormat::Svg),
    };
    let Some(heap_format) = heap_format else {
        let models =
            each_model(&state, |model| json!({"id": model.id, "bytes": model.handle.memory_bytes()}));
        return Ok(HttpResponse::Ok().insert_header((CACHE_CONTROL, "no-store")).json(json!({
            "object": "profile.memory",
            "process": process_memory(),
            "allocator": heap_profile::statistics(),
            "c_allocator": c_allocator_statistics(),
            "models": models,
        })));
    };
    let file = match heap_format {
        HeapFormat::Pprof => "heap.pb.gz",
        HeapFormat::Svg => "heap.svg",
    };
    profile_answer("heap", slot, file, move || heap_profile::dump(heap_format)).await
}

/// Resident and virtual size, from /proc.
fn process_memory() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    json!({
        "resident_bytes": field("VmRSS:"),
        "resident_peak_bytes": field("VmHWM:"),
        "virtual_bytes": field("VmSize:"),
        "anonymous_bytes": field("RssAnon:"),
        "file_bytes": field("RssFile:"),
    })
}

/// glibc's malloc statistics (mallinfo2, every arena): the C code's
/// allocations (llama.cpp, SQLite), as Rust's go to jemalloc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn c_allocator_statistics() -> Value {
    // SAFETY: mallinfo2 only reads the allocator's counters (taking its
    // arena locks); it has no preconditions.
    let info = unsafe { libc::mallinfo2() };
    json!({
        "name": "glibc",
        "in_use_bytes": info.uordblks + info.hblkhd,
        "free_bytes": info.fordblks,
        "from_system_bytes": info.arena + info.hblkhd,
        "mmapped_bytes": info.hblkhd,
        "mmapped_chunks": info.hblks,
        "releasable_bytes": info.keepcost,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn c_allocator_statistics() -> Value {
    json!({"name": "system", "note": "statistics are read from glibc's allocator only"})
}

/// `describe` of each served model.
fn each_model(state: &AppState, describe: impl Fn(&ServedModel) -> Value) -> Vec<Value> {
    state.pipeline.models.registry().all().iter().map(|model| describe(model)).collect()
}

/// `GET /admin/profile/runtime`: what every part is doing now.
async fn runtime(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let _slot = Slot::take(&state)?;
    let health = state.health.snapshot();
    let actors: Vec<Value> = state
        .board
        .snapshot()
        .into_iter()
        .map(|(name, actor)| {
            // The health monitor's last ping: the time a message waited in
            // the actor's mailbox and was handled. The mailboxes carry
            // control messages only; the request paths' queues are the
            // models' (below).
            let ping = health.components.get(&format!("actor:{name}"));
            json!({
                "name": name,
                "status": format!("{:?}", actor.status).to_lowercase(),
                "required": actor.required,
                "restarts": actor.restarts,
                "last_exit": actor.last_exit,
                "mailbox_depth": actor.ping.as_ref().map(|mailbox| mailbox.depth()),
                "mailbox_round_trip_ms": ping.and_then(|ping| ping.last_probe_latency_ms),
                "mailbox_round_trip_at": ping.and_then(|ping| ping.last_probe_at.clone()),
            })
        })
        .collect();
    let models = each_model(&state, |model| {
        let (kind, queued) = match &model.handle {
            ModelHandle::Chat(pool) => ("chat", pool.queued()),
            ModelHandle::Embedding(pool) => ("embedding", pool.queued()),
        };
        let lifecycle = model.handle.lifecycle();
        json!({
                "id": model.id,
                "kind": kind,
                "ready": lifecycle.is_ready(),
                "queued_requests": queued,
                "idle_seconds": lifecycle.idle_for().as_secs_f64(),
            "memory_bytes": model.handle.memory_bytes(),
        })
    });
    Ok(HttpResponse::Ok().insert_header((CACHE_CONTROL, "no-store")).json(json!({
        "object": "profile.runtime",
        "actors": actors,
        "models": models,
        "inference": inference_series(&state.telemetry.render()),
        "threads": threads(),
        "http": {
            "open_connections": network::open_connections(),
            "requests_in_flight": state.telemetry.requests_in_flight(),
            "websocket_connections": state.sockets.open(),
            "routes": network::routes(),
        },
    })))
}

/// The inference series of the metrics (queue depths, sequences
/// running, batch sizes as their sum and count per model), as
/// `{"series": value}`.
fn inference_series(rendered: &str) -> Value {
    const SERIES: [&str; 4] = [
        "blaze_inference_queue_depth",
        "blaze_inference_running_sequences",
        "blaze_inference_batch_size_sum",
        "blaze_inference_batch_size_count",
    ];
    let series: serde_json::Map<String, Value> = rendered
        .lines()
        .filter(|line| SERIES.iter().any(|name| line.starts_with(name)))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), json!(value.parse::<f64>().ok()?)))
        })
        .collect();
    Value::Object(series)
}

/// Each thread's name and CPU time (user and system), busiest first:
/// the HTTP workers, the inference workers, the runtimes of the actors.
fn threads() -> Vec<Value> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut threads: Vec<(String, f64)> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // The name is in parentheses and may hold spaces; the fields
            // after it are space-separated (utime, stime: 14th and 15th).
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let fields: Vec<&str> = rest.split(' ').collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((name.to_owned(), (user + system) / ticks))
        })
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    threads.into_iter().map(|(name, seconds)| json!({"name": name, "cpu_seconds": seconds})).collect()
}
