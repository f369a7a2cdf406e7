//! The embedding engine: a BERT encoder (all-MiniLM-L6-v2 and its
//! relatives) in f32, mean pooling over the tokens, L2 normalization.
//!
//! Sequences of a batch are packed, not padded: every token of every
//! sequence is one row of the dense products (large `gemm` calls, no work on
//! padding), and attention runs per sequence on its own rows.
//!
//! - `tokenizer.rs`: the model's tokenizer and input limits;
//! - `weights.rs`: loading the safetensors weights into the layout the
//!   products read;
//! - `forward.rs`: the forward pass over a packed batch;
//! - `dense.rs`: the dense products, on the kernels chosen at load.

mod dense;
mod forward;
mod pooling;
mod tokenizer;
mod weights;

use rayon::prelude::*;
use serde::Deserialize;

use self::forward::split_by_tokens;
pub use self::pooling::Pooling;
pub use self::tokenizer::{BertTokenizer, Truncation};
use self::weights::Layer;
use crate::inference::engine::{EmbeddingEngine, EngineError};

#[derive(Debug, Clone, Deserialize)]
struct BertConfig {
    /// Hugging Face's name of the architecture, when the file gives it.
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f32,
    vocab_size: usize,
}

pub struct Bert {
    config: BertConfig,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embedding: Vec<f32>,
    embedding_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    tokenizer: std::sync::Arc<BertTokenizer>,
    pool: rayon::ThreadPool,
    /// How the token states become the vector (the model's own files say).
    pooling: Pooling,
    /// What the dense products run on.
    kernels: crate::inference::embed::Kernels,
}

fn load_error(what: impl std::fmt::Display) -> EngineError {
    EngineError::Load(what.to_string())
}

impl Bert {
    /// The tokenizer this engine was loaded with.
    pub fn tokenizer(&self) -> std::sync::Arc<BertTokenizer> {
        self.tokenizer.clone()
    }

    /// The kernels its dense products run on.
    pub fn kernels(&self) -> crate::inference::embed::Kernels {
        self.kernels
    }
}

impl EmbeddingEngine for Bert {
    fn dimensions(&self) -> usize {
        self.config.hidden_size
    }

    fn max_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.tokenizer.tokenize(text)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        self.tokenizer.check_tokens(tokens)
    }

    fn memory_bytes(&self) -> u64 {
        [
            &self.word_embeddings,
            &self.position_embeddings,
            &self.token_type_embedding,
            &self.embedding_norm.0,
            &self.embedding_norm.1,
        ]
        .into_iter()
        .map(|vector| weights::float_bytes(vector))
        .sum::<u64>()
            + self.layers.iter().map(Layer::bytes).sum::<u64>()
    }

    fn kernels(&self) -> &'static str {
        self.kernels.name()
    }

    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        for tokens in batch {
            self.check_tokens(tokens)?;
        }
        let threads = self.pool.current_num_threads();
        if batch.len() < threads.max(2) {
            // One sequence: the threads share each matrix product. Even at
            // 12 tokens that doubles the rate on a busy machine, where
            // streaming the weights (42 MB in f32) bounds the time and two
            // cores stream more than one (measured: 85-98 -> 147-200
            // sentences/s; it did not pay below 64 tokens on a quiet one).
            return Ok(self.pool.install(|| self.forward(batch, gemm::Parallelism::Rayon(0))));
        }
        // Several: each thread takes a share of the sequences (balanced by
        // tokens) and runs whole products alone, without synchronizing.
        let groups = split_by_tokens(batch, threads);
        let outputs: Vec<Vec<Vec<f32>>> = self.pool.install(|| {
            groups.par_iter().map(|group| self.forward(group, gemm::Parallelism::None)).collect()
        });
        Ok(outputs.into_iter().flatten().collect())
    }
}
