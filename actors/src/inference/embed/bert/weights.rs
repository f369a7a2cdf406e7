//! Loading the weights: `config.json`, `tokenizer.json` and
//! `model.safetensors`, each linear weight transposed to `[in, out]` and
//! packed for the products that read it.

use std::path::Path;

use safetensors::SafeTensors;

use super::dense::Dense;
use super::{load_error, Bert, BertConfig, BertTokenizer};
use crate::inference::embed::Kernels;
use crate::inference::engine::EngineError;

/// One encoder layer's weights.
pub(super) struct Layer {
    /// `[hidden, 3 * hidden]`: query, key and value side by side.
    pub(super) qkv_weight: Dense,
    pub(super) qkv_bias: Vec<f32>,
    pub(super) output_weight: Dense,
    pub(super) output_bias: Vec<f32>,
    pub(super) attention_norm: (Vec<f32>, Vec<f32>),
    pub(super) up_weight: Dense,
    pub(super) up_bias: Vec<f32>,
    pub(super) down_weight: Dense,
    pub(super) down_bias: Vec<f32>,
    pub(super) output_norm: (Vec<f32>, Vec<f32>),
}

/// Bytes of f32 weights held as they are.
pub(super) fn float_bytes(values: &[f32]) -> u64 {
    std::mem::size_of_val(values) as u64
}

impl Layer {
    /// Bytes of its weights, in the form the products run on.
    pub(super) fn bytes(&self) -> u64 {
        let norm = |(scale, shift): &(Vec<f32>, Vec<f32>)| float_bytes(scale) + float_bytes(shift);
        [&self.qkv_weight, &self.output_weight, &self.up_weight, &self.down_weight]
            .into_iter()
            .map(Dense::bytes)
            .sum::<u64>()
            + [&self.qkv_bias, &self.output_bias, &self.up_bias, &self.down_bias]
                .into_iter()
                .map(|vector| float_bytes(vector))
                .sum::<u64>()
            + norm(&self.attention_norm)
            + norm(&self.output_norm)
    }
}

/// The tensors of `model.safetensors`, read as the encoder's shapes say.
struct Tensors<'a> {
    tensors: SafeTensors<'a>,
    hidden: usize,
    kernels: Kernels,
}

impl Tensors<'_> {
    /// A tensor as f32, in its stored (row-major) layout.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        let view = self.tensors.tensor(name).map_err(|error| load_error(format!("{name}: {error}")))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape {
            return Err(load_error(format!(
                "{name}: expected f32 {shape:?}, found {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .collect())
    }

    /// A PyTorch linear weight `[out, in]`, transposed to `[in, out]` so
    /// that `x · W` reads rows.
    fn linear(&self, name: &str, out: usize, input: usize) -> Result<Vec<f32>, EngineError> {
        let weight = self.tensor(name, &[out, input])?;
        let mut transposed = vec![0.0; out * input];
        for row in 0..out {
            for column in 0..input {
                transposed[column * out + row] = weight[row * input + column];
            }
        }
        Ok(transposed)
    }

    /// A linear weight `[out, in]`, packed for its products.
    fn dense(&self, name: &str, out: usize, input: usize) -> Result<Dense, EngineError> {
        Ok(Dense::new(self.linear(name, out, input)?, input, out, self.kernels))
    }

    /// A layer norm's gamma and beta.
    fn norm(&self, prefix: &str) -> Result<(Vec<f32>, Vec<f32>), EngineError> {
        Ok((
            self.tensor(&format!("{prefix}.weight"), &[self.hidden])?,
            self.tensor(&format!("{prefix}.bias"), &[self.hidden])?,
        ))
    }

    /// Query, key and value weights side by side in each row, and their
    /// biases one after the other.
    fn qkv(&self, prefix: &str) -> Result<(Dense, Vec<f32>), EngineError> {
        let hidden = self.hidden;
        let [query, key, value] = ["query", "key", "value"]
            .map(|name| self.linear(&format!("{prefix}.attention.self.{name}.weight"), hidden, hidden));
        let (query, key, value) = (query?, key?, value?);
        let mut weight = Vec::with_capacity(hidden * 3 * hidden);
        for row in 0..hidden {
            for part in [&query, &key, &value] {
                weight.extend_from_slice(&part[row * hidden..(row + 1) * hidden]);
            }
        }
        let mut bias = Vec::with_capacity(3 * hidden);
        for name in ["query", "key", "value"] {
            bias.extend(self.tensor(&format!("{prefix}.attention.self.{name}.bias"), &[hidden])?);
        }
        Ok((Dense::new(weight, hidden, 3 * hidden, self.kernels), bias))
    }

    /// Encoder layer `index`, `inner` wide in its feed-forward part.
    fn layer(&self, index: usize, inner: usize) -> Result<Layer, EngineError> {
        let (prefix, hidden) = (format!("encoder.layer.{index}"), self.hidden);
        let (qkv_weight, qkv_bias) = self.qkv(&prefix)?;
        Ok(Layer {
            qkv_weight,
            qkv_bias,
            output_weight: self.dense(&format!("{prefix}.attention.output.dense.weight"), hidden, hidden)?,
            output_bias: self.tensor(&format!("{prefix}.attention.output.dense.bias"), &[hidden])?,
            attention_norm: self.norm(&format!("{prefix}.attention.output.LayerNorm"))?,
            up_weight: self.dense(&format!("{prefix}.intermediate.dense.weight"), inner, hidden)?,
            up_bias: self.tensor(&format!("{prefix}.intermediate.dense.bias"), &[inner])?,
            down_weight: self.dense(&format!("{prefix}.output.dense.weight"), hidden, inner)?,
            down_bias: self.tensor(&format!("{prefix}.output.dense.bias"), &[hidden])?,
            output_norm: self.norm(&format!("{prefix}.output.LayerNorm"))?,
        })
    }
}

impl Bert {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from
    /// `directory`; `threads` compute threads, the kernels the operator
    /// configured (`BLAZE_KERNELS`) or else the fastest the CPU runs.
    pub fn load(directory: &Path, threads: usize) -> Result<Self, EngineError> {
        Self::load_with_kernels(directory, threads, Kernels::configured().map_err(load_error)?)
    }

    /// As [`Bert::load`], on the given kernels (refused when this CPU
    /// cannot run them).
    pub fn load_with_kernels(
        directory: &Path,
        threads: usize,
        kernels: Kernels,
    ) -> Result<Self, EngineError> {
        if !kernels.supported() {
            return Err(load_error(format!("the {kernels} kernels cannot run on this CPU")));
        }
        let read = |name: &str| {
            std::fs::read(directory.join(name)).map_err(|error| load_error(format!("{name}: {error}")))
        };
        let config: BertConfig = serde_json::from_slice(&read("config.json")?).map_err(load_error)?;
        let tokenizer = std::sync::Arc::new(BertTokenizer::load(directory)?);
        let pooling = super::Pooling::read(directory)?;
        let bytes = read("model.safetensors")?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(load_error)?;
        let hidden = config.hidden_size;
        if config.num_attention_heads == 0 || !hidden.is_multiple_of(config.num_attention_heads) {
            return Err(load_error("hidden_size must be a multiple of num_attention_heads"));
        }
        let tensors = Tensors { tensors, hidden, kernels };
        let layers = (0..config.num_hidden_layers)
            .map(|index| tensors.layer(index, config.intermediate_size))
            .collect::<Result<Vec<_>, _>>()?;
        let token_types = tensors
            .tensor("embeddings.token_type_embeddings.weight", &[2, hidden])
            .or_else(|_| tensors.tensor("embeddings.token_type_embeddings.weight", &[1, hidden]))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|index| format!("blaze-bert-{index}"))
            .build()
            .map_err(load_error)?;
        Ok(Self {
            word_embeddings: tensors
                .tensor("embeddings.word_embeddings.weight", &[config.vocab_size, hidden])?,
            position_embeddings: tensors
                .tensor("embeddings.position_embeddings.weight", &[config.max_position_embeddings, hidden])?,
            token_type_embedding: token_types[..hidden].to_vec(),
            embedding_norm: tensors.norm("embeddings.LayerNorm")?,
            layers,
            tokenizer,
            pool,
            pooling,
            kernels,
            config,
        })
    }
}
