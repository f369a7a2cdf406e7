//! The embedding engine and its pool: [`Bert`], a packed-batch BERT encoder
//! in f32 (its products on AMX tiles where the CPU has them), and the
//! [`EmbeddingPool`] whose workers batch requests across callers.
//!
//! The AMX kernels (`amx.rs`) are x86-64 inline assembly: they are compiled
//! only for x86-64, and not at all with `--cfg blaze_without_amx`, the
//! check that the crate builds without them as it must on other CPUs.
//! Without them, the dense products are the portable `gemm` path, chosen
//! at compile time; with them, at run time where the CPU lacks AMX.

#[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
mod amx;
mod bert;
mod kernels;
mod pool;

pub use self::bert::{Bert, BertTokenizer, Truncation};
pub use self::pool::{BatchSettings, EmbeddingPool, EmbeddingResult};

/// Whether the dense products run on AMX tiles in this process.
#[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
pub fn amx_in_use() -> bool {
    amx::available()
}

/// Whether the dense products run on AMX tiles: never, in a build without
/// the AMX kernels.
#[cfg(not(all(target_arch = "x86_64", not(blaze_without_amx))))]
pub fn amx_in_use() -> bool {
    false
}

#[cfg(test)]
mod tests;
