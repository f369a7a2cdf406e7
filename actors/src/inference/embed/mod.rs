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

#[cfg(test)]
mod tests;
