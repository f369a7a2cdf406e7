//! The `blaze` binary: the command line of the library, on jemalloc.

use std::process::ExitCode;

/// jemalloc (see `http::heap_profile`): the statistics and the sampled heap
/// profiles of `/admin/profile/memory`, and freed pages given back to the
/// system by its background threads. C code (llama.cpp, SQLite) keeps
/// glibc's malloc: the Rust side's symbols are prefixed.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's `const char *malloc_conf`, read at its first allocation.
#[cfg(target_os = "linux")]
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string.
#[cfg(target_os = "linux")]
unsafe impl Sync for MallocConf {}

/// Profiling built in but inactive until `profiling.heap_sampling` turns it
/// on (one sample per 2^19 bytes allocated on average); background threads
/// purge freed pages after jemalloc's decay time instead of the threads
/// that free them.
#[cfg(target_os = "linux")]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"prof:true,prof_active:false,lg_prof_sample:19,background_thread:true".as_ptr());

fn main() -> ExitCode {
    blaze::cli::run()
}
