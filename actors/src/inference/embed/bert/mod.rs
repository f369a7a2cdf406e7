//! The embedding engine: a BERT encoder (all-MiniLM-L6-v2 and its
//! relatives) in f32, mean pooling over the tokens, L2 normalization.
//!
//! Sequences of a batch are packed, not padded: every token of every
//! sequence is one row of the dense products (large `gemm` calls, no work on
//! padding), and attention runs per sequence on its own rows.

use std::path::Path;

use rayon::prelude::*;
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::inference::embed::{amx, kernels};
use crate::inference::engine::{EmbeddingEngine, EngineError};

#[derive(Debug, Clone, Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f32,
    vocab_size: usize,
}

/// sentence-transformers' own limit, when the model ships it.
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

struct Layer {
    /// `[hidden, 3 * hidden]`: query, key and value side by side.
    qkv_weight: Dense,
    qkv_bias: Vec<f32>,
    output_weight: Dense,
    output_bias: Vec<f32>,
    attention_norm: (Vec<f32>, Vec<f32>),
    up_weight: Dense,
    up_bias: Vec<f32>,
    down_weight: Dense,
    down_bias: Vec<f32>,
    output_norm: (Vec<f32>, Vec<f32>),
}

/// The model's tokenizer and input limits; shared by the request path (to
/// count and check tokens at admission) and the engine.
pub struct BertTokenizer {
    tokenizer: tokenizers::Tokenizer,
    max_tokens: usize,
    vocab_size: usize,
    dimensions: usize,
}

impl BertTokenizer {
    pub fn load(directory: &Path) -> Result<Self, EngineError> {
        let read = |name: &str| {
            std::fs::read(directory.join(name)).map_err(|error| load_error(format!("{name}: {error}")))
        };
        let config: BertConfig = serde_json::from_slice(&read("config.json")?).map_err(load_error)?;
        let max_tokens = read("sentence_bert_config.json")
            .ok()
            .and_then(|bytes| serde_json::from_slice::<SentenceBertConfig>(&bytes).ok())
            .map_or(config.max_position_embeddings, |sentence| sentence.max_seq_length)
            .min(config.max_position_embeddings);
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(directory.join("tokenizer.json")).map_err(load_error)?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(load_error)?;
        Ok(Self { tokenizer, max_tokens, vocab_size: config.vocab_size, dimensions: config.hidden_size })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Most tokens per input, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The model's tokens of `text`, with its special tokens.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding =
            self.tokenizer.encode(text, true).map_err(|error| EngineError::Input(error.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Whether `tokens` can be embedded as they are.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Input("an input has no tokens".to_owned()));
        }
        if tokens.len() > self.max_tokens {
            return Err(EngineError::TooLong { tokens: tokens.len(), limit: self.max_tokens });
        }
        match tokens.iter().find(|&&token| token as usize >= self.vocab_size) {
            Some(token) => Err(EngineError::Input(format!(
                "token id {token} is outside the vocabulary (0 to {})",
                self.vocab_size - 1
            ))),
            None => Ok(()),
        }
    }
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
}

fn load_error(what: impl std::fmt::Display) -> EngineError {
    EngineError::Load(what.to_string())
}

/// A tensor as f32, in its stored (row-major) layout.
fn tensor(tensors: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
    let view = tensors.tensor(name).map_err(|error| load_error(format!("{name}: {error}")))?;
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

/// A PyTorch linear weight `[out, in]`, transposed to `[in, out]` so that
/// `x · W` reads rows.
fn linear(tensors: &SafeTensors<'_>, name: &str, out: usize, input: usize) -> Result<Vec<f32>, EngineError> {
    let weight = tensor(tensors, name, &[out, input])?;
    let mut transposed = vec![0.0; out * input];
    for row in 0..out {
        for column in 0..input {
            transposed[column * out + row] = weight[row * input + column];
        }
    }
    Ok(transposed)
}

impl Bert {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from
    /// `directory`; `threads` compute threads.
    pub fn load(directory: &Path, threads: usize) -> Result<Self, EngineError> {
        let read = |name: &str| {
            std::fs::read(directory.join(name)).map_err(|error| load_error(format!("{name}: {error}")))
        };
        let config: BertConfig = serde_json::from_slice(&read("config.json")?).map_err(load_error)?;
        let tokenizer = std::sync::Arc::new(BertTokenizer::load(directory)?);
        let bytes = read("model.safetensors")?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(load_error)?;
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        if config.num_attention_heads == 0 || hidden % config.num_attention_heads != 0 {
            return Err(load_error("hidden_size must be a multiple of num_attention_heads"));
        }
        let norm = |prefix: &str| -> Result<(Vec<f32>, Vec<f32>), EngineError> {
            Ok((
                tensor(&tensors, &format!("{prefix}.weight"), &[hidden])?,
                tensor(&tensors, &format!("{prefix}.bias"), &[hidden])?,
            ))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let prefix = format!("encoder.layer.{index}");
            let [query, key, value] = ["query", "key", "value"].map(|name| {
                linear(&tensors, &format!("{prefix}.attention.self.{name}.weight"), hidden, hidden)
            });
            let (query, key, value) = (query?, key?, value?);
            let mut qkv_weight = Vec::with_capacity(hidden * 3 * hidden);
            for row in 0..hidden {
                for part in [&query, &key, &value] {
                    qkv_weight.extend_from_slice(&part[row * hidden..(row + 1) * hidden]);
                }
            }
            let mut qkv_bias = Vec::with_capacity(3 * hidden);
            for name in ["query", "key", "value"] {
                qkv_bias.extend(tensor(
                    &tensors,
                    &format!("{prefix}.attention.self.{name}.bias"),
                    &[hidden],
                )?);
            }
            layers.push(Layer {
                qkv_weight: Dense::new(qkv_weight, hidden, 3 * hidden),
                qkv_bias,
                output_weight: Dense::new(
                    linear(&tensors, &format!("{prefix}.attention.output.dense.weight"), hidden, hidden)?,
                    hidden,
                    hidden,
                ),
                output_bias: tensor(&tensors, &format!("{prefix}.attention.output.dense.bias"), &[hidden])?,
                attention_norm: norm(&format!("{prefix}.attention.output.LayerNorm"))?,
                up_weight: Dense::new(
                    linear(&tensors, &format!("{prefix}.intermediate.dense.weight"), inner, hidden)?,
                    hidden,
                    inner,
                ),
                up_bias: tensor(&tensors, &format!("{prefix}.intermediate.dense.bias"), &[inner])?,
                down_weight: Dense::new(
                    linear(&tensors, &format!("{prefix}.output.dense.weight"), hidden, inner)?,
                    inner,
                    hidden,
                ),
                down_bias: tensor(&tensors, &format!("{prefix}.output.dense.bias"), &[hidden])?,
                output_norm: norm(&format!("{prefix}.output.LayerNorm"))?,
            });
        }
        let token_types = tensor(&tensors, "embeddings.token_type_embeddings.weight", &[2, hidden])
            .or_else(|_| tensor(&tensors, "embeddings.token_type_embeddings.weight", &[1, hidden]))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|index| format!("blaze-bert-{index}"))
            .build()
            .map_err(load_error)?;
        Ok(Self {
            word_embeddings: tensor(
                &tensors,
                "embeddings.word_embeddings.weight",
                &[config.vocab_size, hidden],
            )?,
            position_embeddings: tensor(
                &tensors,
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?,
            token_type_embedding: token_types[..hidden].to_vec(),
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            tokenizer,
            pool,
            config,
        })
    }

    fn forward(&self, sequences: &[&[u32]], parallelism: gemm::Parallelism) -> Vec<Vec<f32>> {
        let hidden = self.config.hidden_size;
        let total: usize = sequences.iter().map(|sequence| sequence.len()).sum();
        let mut states = vec![0.0f32; total * hidden];
        let mut row = 0;
        for sequence in sequences {
            for (position, &token) in sequence.iter().enumerate() {
                let target = &mut states[row * hidden..(row + 1) * hidden];
                let word = &self.word_embeddings[token as usize * hidden..(token as usize + 1) * hidden];
                let place = &self.position_embeddings[position * hidden..(position + 1) * hidden];
                for (((target, word), place), kind) in
                    target.iter_mut().zip(word).zip(place).zip(&self.token_type_embedding)
                {
                    *target = word + place + kind;
                }
                row += 1;
            }
        }
        let zeros = vec![0.0; hidden];
        let (gamma, beta) = &self.embedding_norm;
        kernels::add_bias_residual_layer_norm(
            &mut states,
            hidden,
            &zeros,
            None,
            gamma,
            beta,
            self.config.layer_norm_eps,
        );
        let lengths: Vec<usize> = sequences.iter().map(|sequence| sequence.len()).collect();
        for layer in &self.layers {
            states = self.layer(layer, states, total, &lengths, parallelism);
        }
        let mut outputs = Vec::with_capacity(sequences.len());
        let mut start = 0;
        for length in lengths {
            let mut pooled = vec![0.0; hidden];
            kernels::mean_pool_normalize(
                &states[start * hidden..(start + length) * hidden],
                hidden,
                &mut pooled,
            );
            outputs.push(pooled);
            start += length;
        }
        outputs
    }

    fn layer(
        &self,
        layer: &Layer,
        states: Vec<f32>,
        total: usize,
        lengths: &[usize],
        parallelism: gemm::Parallelism,
    ) -> Vec<f32> {
        let config = &self.config;
        let (hidden, inner, heads) =
            (config.hidden_size, config.intermediate_size, config.num_attention_heads);
        let head_width = hidden / heads;
        let mut qkv = vec![0.0; total * 3 * hidden];
        layer.qkv_weight.apply(&mut qkv, &states, total, parallelism);
        kernels::add_bias(&mut qkv, &layer.qkv_bias);

        let mut context = vec![0.0; total * hidden];
        let mut pieces = Vec::with_capacity(lengths.len());
        let (mut qkv_rest, mut context_rest) = (&qkv[..], &mut context[..]);
        for &length in lengths {
            let (qkv_piece, qkv_tail) = qkv_rest.split_at(length * 3 * hidden);
            let (context_piece, context_tail) = context_rest.split_at_mut(length * hidden);
            pieces.push((qkv_piece, context_piece, length));
            (qkv_rest, context_rest) = (qkv_tail, context_tail);
        }
        pieces.into_par_iter().for_each(|(qkv, context, length)| {
            let mut scores = vec![0.0; length * length];
            for head in 0..heads {
                let offset = head * head_width;
                if length < GEMM_ATTENTION_FROM {
                    kernels::attend(
                        qkv,
                        3 * hidden,
                        hidden,
                        offset,
                        head_width,
                        length,
                        &mut scores,
                        context,
                    );
                } else {
                    attend_with_gemm(qkv, hidden, offset, head_width, length, &mut scores, context);
                }
            }
        });

        let mut attended = vec![0.0; total * hidden];
        layer.output_weight.apply(&mut attended, &context, total, parallelism);
        let (gamma, beta) = &layer.attention_norm;
        kernels::add_bias_residual_layer_norm(
            &mut attended,
            hidden,
            &layer.output_bias,
            Some(&states),
            gamma,
            beta,
            config.layer_norm_eps,
        );
        let mut up = vec![0.0; total * inner];
        layer.up_weight.apply(&mut up, &attended, total, parallelism);
        kernels::add_bias_gelu(&mut up, &layer.up_bias);
        let mut down = vec![0.0; total * hidden];
        layer.down_weight.apply(&mut down, &up, total, parallelism);
        let (gamma, beta) = &layer.output_norm;
        kernels::add_bias_residual_layer_norm(
            &mut down,
            hidden,
            &layer.down_bias,
            Some(&attended),
            gamma,
            beta,
            config.layer_norm_eps,
        );
        down
    }
}

/// Consecutive groups of sequences with about equal token counts.
fn split_by_tokens<'a>(batch: &[&'a [u32]], groups: usize) -> Vec<Vec<&'a [u32]>> {
    let total: usize = batch.iter().map(|tokens| tokens.len()).sum();
    let share = total.div_ceil(groups.max(1));
    let mut split = vec![Vec::new()];
    let mut filled = 0;
    for tokens in batch {
        if filled >= share && split.len() < groups {
            split.push(Vec::new());
            filled = 0;
        }
        filled += tokens.len();
        if let Some(group) = split.last_mut() {
            group.push(*tokens);
        }
    }
    split
}

/// From this sequence length on, attention's two products go to `gemm`;
/// below it, the call overhead outweighs the plain loops.
const GEMM_ATTENTION_FROM: usize = 24;

/// One head's attention for one sequence, as two strided matrix products
/// over the packed `[query | key | value]` rows (no copies).
fn attend_with_gemm(
    qkv: &[f32],
    hidden: usize,
    offset: usize,
    head_width: usize,
    length: usize,
    scores: &mut [f32],
    context: &mut [f32],
) {
    let row = 3 * hidden as isize;
    if qkv.len() < length * 3 * hidden || context.len() < length * hidden || scores.len() < length * length {
        return;
    }
    let scale = 1.0 / (head_width as f32).sqrt();
    // SAFETY: every index reached is inside the slices: rows < length, the
    // query, key and value columns are offset + [0, head_width) within their
    // third of a 3·hidden row, scores is length², context rows are hidden
    // wide (lengths checked above); `scores` and `context` are distinct
    // `&mut` and overlap nothing they are computed from.
    unsafe {
        let query = qkv.as_ptr().add(offset);
        let key = qkv.as_ptr().add(hidden + offset);
        gemm::gemm(
            length,
            length,
            head_width,
            scores.as_mut_ptr(),
            1,
            length as isize,
            false,
            query,
            1,
            row,
            key,
            row,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    kernels::softmax_rows(&mut scores[..length * length], length);
    // SAFETY: as above; the value columns start at 2·hidden + offset.
    unsafe {
        let value = qkv.as_ptr().add(2 * hidden + offset);
        gemm::gemm(
            length,
            head_width,
            length,
            context.as_mut_ptr().add(offset),
            1,
            hidden as isize,
            false,
            scores.as_ptr(),
            1,
            length as isize,
            value,
            1,
            row,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A linear layer's `[in, out]` weight, in the form the products run on:
/// bf16 tiles where the CPU has AMX, f32 for `gemm` otherwise.
enum Dense {
    F32 { weight: Vec<f32>, depth: usize, columns: usize },
    Amx(amx::PackedWeight),
}

impl Dense {
    fn new(weight: Vec<f32>, depth: usize, columns: usize) -> Self {
        if amx::available() {
            Self::Amx(amx::PackedWeight::pack(&weight, depth, columns))
        } else {
            Self::F32 { weight, depth, columns }
        }
    }

    /// `out[rows, out] = lhs[rows, in] · weight`.
    fn apply(&self, out: &mut [f32], lhs: &[f32], rows: usize, parallelism: gemm::Parallelism) {
        match self {
            Self::F32 { weight, depth, columns } => {
                matmul(out, lhs, weight, rows, *depth, *columns, parallelism)
            }
            Self::Amx(packed) => {
                amx::product(out, lhs, rows, packed, !matches!(parallelism, gemm::Parallelism::None))
            }
        }
    }
}

/// `out[m, n] = lhs[m, k] · rhs[k, n]`, all row-major.
fn matmul(
    out: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || out.len() != m * n || lhs.len() != m * k || rhs.len() != k * n {
        return;
    }
    // SAFETY: the three slices hold exactly the m×n, m×k and k×n row-major
    // matrices described by the strides (checked above), and `out` does not
    // overlap the inputs (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

impl Bert {
    /// The tokenizer this engine was loaded with.
    pub fn tokenizer(&self) -> std::sync::Arc<BertTokenizer> {
        self.tokenizer.clone()
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
