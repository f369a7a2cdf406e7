//! The embedding engine and its pool: [`Bert`], a packed-batch BERT encoder
//! in f32 (its products on AMX tiles where the CPU has them), and the
//! [`EmbeddingPool`] whose workers batch requests across callers.

mod amx;
mod bert;
mod kernels;
mod pool;

pub use self::bert::{Bert, BertTokenizer};
pub use self::pool::{BatchSettings, EmbeddingPool, EmbeddingResult};

/// Whether the dense products run on AMX tiles in this process.
pub fn amx_in_use() -> bool {
    amx::available()
}
