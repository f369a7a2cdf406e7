//! The forward pass over a packed batch: embeddings, the encoder layers,
//! the model's pooling; attention per sequence on its own rows.

use rayon::prelude::*;

use super::weights::Layer;
use super::Bert;
use crate::inference::embed::kernels;

impl Bert {
    /// One vector per sequence, in order, pooled (and normalized) as the
    /// model's files say.
    pub(super) fn forward(&self, sequences: &[&[u32]], parallelism: gemm::Parallelism) -> Vec<Vec<f32>> {
        let hidden = self.config.hidden_size;
        let total: usize = sequences.iter().map(|sequence| sequence.len()).sum();
        let mut states = self.embeddings(sequences, total);
        let lengths: Vec<usize> = sequences.iter().map(|sequence| sequence.len()).collect();
        for layer in &self.layers {
            states = self.layer(layer, states, total, &lengths, parallelism);
        }
        let mut outputs = Vec::with_capacity(sequences.len());
        let mut start = 0;
        for length in lengths {
            let mut pooled = vec![0.0; hidden];
            self.pooling.pool(&states[start * hidden..(start + length) * hidden], hidden, &mut pooled);
            outputs.push(pooled);
            start += length;
        }
        outputs
    }

    /// The first states: word, position and token type embeddings summed,
    /// then normalized; one row per token of the packed batch.
    fn embeddings(&self, sequences: &[&[u32]], total: usize) -> Vec<f32> {
        let hidden = self.config.hidden_size;
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
        states
    }

    fn layer(
        &self,
        layer: &Layer,
        states: Vec<f32>,
        total: usize,
        lengths: &[usize],
        parallelism: gemm::Parallelism,
    ) -> Vec<f32> {
        let hidden = self.config.hidden_size;
        let context = self.attention(layer, &states, total, lengths, parallelism);
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
            self.config.layer_norm_eps,
        );
        self.feed_forward(layer, attended, total, parallelism)
    }

    /// Self-attention's context rows: the query, key and value products over
    /// the whole batch, then each sequence's heads on its own rows.
    fn attention(
        &self,
        layer: &Layer,
        states: &[f32],
        total: usize,
        lengths: &[usize],
        parallelism: gemm::Parallelism,
    ) -> Vec<f32> {
        let (hidden, heads) = (self.config.hidden_size, self.config.num_attention_heads);
        let head_width = hidden / heads;
        let mut qkv = vec![0.0; total * 3 * hidden];
        layer.qkv_weight.apply(&mut qkv, states, total, parallelism);
        kernels::add_bias(&mut qkv, &layer.qkv_bias);

        let mut context = vec![0.0; total * hidden];
        let threads = rayon::current_num_threads().min(heads);
        if !matches!(parallelism, gemm::Parallelism::None) && lengths.len() < threads {
            // Fewer sequences than threads (one long sentence): the heads
            // are shared between the threads instead, each group of heads
            // into a buffer of its own, its columns copied back after.
            let per_group = heads.div_ceil(threads);
            let groups: Vec<std::ops::Range<usize>> =
                (0..heads).step_by(per_group).map(|first| first..(first + per_group).min(heads)).collect();
            let parts: Vec<Vec<f32>> = groups
                .par_iter()
                .map(|group| {
                    let mut part = vec![0.0; total * hidden];
                    let mut start = 0;
                    for &length in lengths {
                        let qkv = &qkv[start * 3 * hidden..(start + length) * 3 * hidden];
                        let out = &mut part[start * hidden..(start + length) * hidden];
                        attend_heads(qkv, out, hidden, head_width, length, group.clone());
                        start += length;
                    }
                    part
                })
                .collect();
            for (group, part) in groups.iter().zip(&parts) {
                let columns = group.start * head_width..group.end * head_width;
                for (row, source) in context.chunks_exact_mut(hidden).zip(part.chunks_exact(hidden)) {
                    row[columns.clone()].copy_from_slice(&source[columns.clone()]);
                }
            }
            return context;
        }
        let mut pieces = Vec::with_capacity(lengths.len());
        let (mut qkv_rest, mut context_rest) = (&qkv[..], &mut context[..]);
        for &length in lengths {
            let (qkv_piece, qkv_tail) = qkv_rest.split_at(length * 3 * hidden);
            let (context_piece, context_tail) = context_rest.split_at_mut(length * hidden);
            pieces.push((qkv_piece, context_piece, length));
            (qkv_rest, context_rest) = (qkv_tail, context_tail);
        }
        pieces.into_par_iter().for_each(|(qkv, context, length)| {
            attend_heads(qkv, context, hidden, head_width, length, 0..heads);
        });
        context
    }

    /// The feed-forward half: up, GELU, down, then the residual and norm.
    fn feed_forward(
        &self,
        layer: &Layer,
        attended: Vec<f32>,
        total: usize,
        parallelism: gemm::Parallelism,
    ) -> Vec<f32> {
        let (hidden, inner) = (self.config.hidden_size, self.config.intermediate_size);
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
            self.config.layer_norm_eps,
        );
        down
    }
}

/// Consecutive groups of sequences with about equal token counts.
pub(super) fn split_by_tokens<'a>(batch: &[&'a [u32]], groups: usize) -> Vec<Vec<&'a [u32]>> {
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

/// Self-attention of one sequence's `heads`: `qkv` holds its rows of
/// `[query | key | value]`, `context` its output rows (`hidden` wide), into
/// which each head writes its own columns.
fn attend_heads(
    qkv: &[f32],
    context: &mut [f32],
    hidden: usize,
    head_width: usize,
    length: usize,
    heads: std::ops::Range<usize>,
) {
    let mut scores = vec![0.0; length * length];
    for head in heads {
        let offset = head * head_width;
        if length < GEMM_ATTENTION_FROM {
            kernels::attend(qkv, 3 * hidden, hidden, offset, head_width, length, &mut scores, context);
        } else {
            attend_with_gemm(qkv, hidden, offset, head_width, length, &mut scores, context);
        }
    }
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
    if qkv.len() < length * 3 * hidden || context.len() < length * hidden || scores.len() < length * length {
        return;
    }
    let scale = 1.0 / (head_width as f32).sqrt();
    let row = 3 * hidden as isize;
    // SAFETY: every index reached is inside the slices: rows < length, the
    // query, key and value columns are offset + [0, head_width) within their
    // third of a 3·hidden row, scores is length², context rows are hidden
    // wide (lengths checked above); `scores` and `context` are distinct
    // `&mut` and overlap nothing they are computed from.
    unsafe {
        let query = qkv.as_ptr().add(offset);
        let key = qkv.as_ptr().add(hidden + offset);
        strided_product(
            length,
            length,
            head_width,
            (scores.as_mut_ptr(), length as isize),
            (query, 1, row),
            (key, row, 1),
            scale,
        );
    }
    kernels::softmax_rows(&mut scores[..length * length], length);
    // SAFETY: as above; the value columns start at 2·hidden + offset.
    unsafe {
        let value = qkv.as_ptr().add(2 * hidden + offset);
        let target = (context.as_mut_ptr().add(offset), hidden as isize);
        strided_product(
            length,
            head_width,
            length,
            target,
            (scores.as_ptr(), 1, length as isize),
            (value, 1, row),
            1.0,
        );
    }
}

/// `out[m, n] = scale · lhs[m, k] · rhs[k, n]` on one thread, `out` given
/// by its row stride, the inputs by (pointer, column stride, row stride).
///
/// # Safety
///
/// Every element the shapes and strides reach must be inside its
/// allocation, and `out` must overlap neither input.
unsafe fn strided_product(
    m: usize,
    n: usize,
    k: usize,
    (out, out_row): (*mut f32, isize),
    (lhs, lhs_column, lhs_row): (*const f32, isize, isize),
    (rhs, rhs_column, rhs_row): (*const f32, isize, isize),
    scale: f32,
) {
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_row,
            false,
            lhs,
            lhs_column,
            lhs_row,
            rhs,
            rhs_column,
            rhs_row,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
