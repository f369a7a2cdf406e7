//! The embedding engine and its pool: [`Bert`], a packed-batch BERT encoder
//! (its dense products on the kernels [`Kernels`] picks for the CPU), and
//! the [`EmbeddingPool`] whose workers batch requests across callers.
//!
//! The AMX kernels (`amx.rs`) are x86-64 inline assembly: they are compiled
//! only for x86-64, and not at all with `--cfg blaze_without_amx`, the
//! check that the crate builds without them as it must on other CPUs. The
//! AVX2 kernels (`avx2.rs`) are x86-64 intrinsics. Which ones run is
//! decided at load (`dispatch.rs`); every CPU has the portable `gemm` path.

#[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod bert;
mod dispatch;
mod kernels;
mod pool;

pub use self::bert::{Bert, BertTokenizer, Truncation};
pub use self::dispatch::Kernels;
pub use self::pool::{BatchSettings, EmbeddingPool, EmbeddingResult};

/// Runs `work` over `0..units` (column blocks of a product's output): one
/// share per rayon thread when `parallel`, else the whole on the calling
/// thread. The kernels' way of splitting one product between the cores.
#[cfg(target_arch = "x86_64")]
fn share_columns(units: usize, parallel: bool, work: impl Fn(std::ops::Range<usize>) + Sync) {
    let threads = if parallel { rayon::current_num_threads().min(units) } else { 1 };
    if threads <= 1 {
        work(0..units);
        return;
    }
    let per_thread = units.div_ceil(threads);
    rayon::scope(|scope| {
        for first in (0..units).step_by(per_thread) {
            let work = &work;
            scope.spawn(move |_| work(first..(first + per_thread).min(units)));
        }
    });
}

#[cfg(test)]
mod tests;
