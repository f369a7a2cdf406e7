//! The embedding engine and its pool: [`Bert`], a packed-batch BERT encoder
//! (its dense products on the kernels [`Kernels`] picks for the CPU), and
//! the [`EmbeddingPool`] whose workers batch requests across callers.
//!
//! The AMX kernels (`amx.rs`) are x86-64 inline assembly: they are compiled
//! only for x86-64, and not at all with `--cfg blaze_without_amx`, the
//! check that the crate builds without them as it must on other CPUs. The
//! AVX2, AVX-512 BF16 and AVX-512 VNNI kernels (`avx2.rs`, `avx512.rs`,
//! `vnni.rs`) are x86-64 intrinsics. Which ones run is
//! decided at load (`dispatch.rs`); every CPU has the portable `gemm` path.

#[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod bert;
#[cfg(target_arch = "x86_64")]
mod checks;
mod dispatch;
mod kernels;
mod pool;
#[cfg(target_arch = "x86_64")]
mod vnni;

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

/// f32 to bf16, rounding to nearest even (inputs here are finite): the
/// weights of the AMX and AVX-512 BF16 kernels.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

#[cfg(all(test, target_arch = "x86_64"))]
#[test]
fn bf16_rounds_to_nearest_even() {
    assert_eq!(to_bf16(1.0), 0x3f80);
    assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
    assert_eq!(to_bf16(-2.5), 0xc020);
}

#[cfg(test)]
mod tests;
