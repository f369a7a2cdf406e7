//! Elementwise and small dense kernels of the BERT forward pass, compiled
//! for AVX-512, AVX2+FMA and the baseline, chosen at run time. The large
//! matrix products go to the `gemm` crate.

use multiversion::multiversion;

/// `rows` (each `width` long) get `bias` added, then layer normalization
/// with `gamma`, `beta` and `epsilon`, in place; `residual` (same shape) is
/// added first when given.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn add_bias_residual_layer_norm(
    rows: &mut [f32],
    width: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
) {
    for (index, row) in rows.chunks_exact_mut(width).enumerate() {
        match residual {
            Some(residual) => {
                let residual = &residual[index * width..(index + 1) * width];
                for ((value, bias), residual) in row.iter_mut().zip(bias).zip(residual) {
                    *value += bias + residual;
                }
            }
            None => {
                for (value, bias) in row.iter_mut().zip(bias) {
                    *value += bias;
                }
            }
        }
        let mean = lane_sum(row) / width as f32;
        let variance = lane_sum_of_squares(row, mean) / width as f32;
        let scale = 1.0 / (variance + epsilon).sqrt();
        for ((value, gamma), beta) in row.iter_mut().zip(gamma).zip(beta) {
            *value = (*value - mean) * scale * gamma + beta;
        }
    }
}

/// Adds `bias` to every row.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn add_bias(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (value, bias) in row.iter_mut().zip(bias) {
            *value += bias;
        }
    }
}

/// `bias` added, then the exact GELU, `x * Φ(x)`, in place.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn add_bias_gelu(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (value, bias) in row.iter_mut().zip(bias) {
            let x = *value + bias;
            *value = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// The error function, to about 1.2e-7 absolute (Numerical Recipes'
/// `erfc` Chebyshev fit), branch-free so that it vectorizes.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp(polynomial);
    let magnitude = 1.0 - erfc;
    magnitude.copysign(x)
}

/// `e^x` for x in about [-87, 88], to a few ulp, without branches: 2^k by
/// the exponent bits and a degree-6 polynomial for the rest.
#[inline(always)]
#[allow(clippy::manual_clamp, reason = "max and min are single lane instructions; clamp checks its bounds")]
pub fn exp(x: f32) -> f32 {
    let x = x.max(-87.0).min(88.0);
    // Round to nearest by adding 1.5·2^23: the integer lands in the low
    // mantissa bits. Plain float and integer lane operations, where
    // `round()` is a library call and `as i32` a per-lane saturating check.
    const ROUNDER: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let k = shifted - ROUNDER;
    let exponent = shifted.to_bits() as i32 - ROUNDER.to_bits() as i32;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let polynomial = 1.0
        + r * (1.0
            + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let scale = f32::from_bits(((exponent + 127) << 23) as u32);
    polynomial * scale
}

/// Softmax of each row of `scores`, in place.
///
/// The exponentials are a loop of their own: summed as they are computed,
/// the one sequential f32 sum kept the whole loop (`exp` included) scalar,
/// 12% of a 128-token batch's time.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn softmax_rows(scores: &mut [f32], width: usize) {
    for row in scores.chunks_exact_mut(width) {
        let max = lane_max(row);
        for value in row.iter_mut() {
            *value = exp(*value - max);
        }
        let inverse = 1.0 / lane_sum(row);
        for value in row.iter_mut() {
            *value *= inverse;
        }
    }
}

/// Lanes of the reductions below: independent partial results, so that
/// they vectorize (Rust keeps f32 additions in order, and one accumulator
/// is a chain of dependent scalar adds).
const LANES: usize = 16;

/// The sum of `values`, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The sum of `(value - mean)²`, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum_of_squares(values: &[f32], mean: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|value| (value - mean) * (value - mean)).sum();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += (value - mean) * (value - mean);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The dot product of two equally long slices, in [`LANES`] partial sums.
#[inline(always)]
fn lane_dot(left: &[f32], right: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (left_chunks, right_chunks) = (left.chunks_exact(LANES), right.chunks_exact(LANES));
    let rest: f32 =
        left_chunks.remainder().iter().zip(right_chunks.remainder()).map(|(left, right)| left * right).sum();
    for (left, right) in left_chunks.zip(right_chunks) {
        for ((lane, left), right) in lanes.iter_mut().zip(left).zip(right) {
            *lane += left * right;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// The largest of `values` (NEG_INFINITY when empty), in [`LANES`] partial
/// maxima.
#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            // Not f32::max: its NaN rule keeps it from vectorizing; the
            // scores are finite.
            *lane = if *value > *lane { *value } else { *lane };
        }
    }
    lanes.iter().copied().fold(rest, f32::max)
}

/// Self-attention of one sequence and one head. `qkv` holds the sequence's
/// rows of `[query | key | value]` (each `hidden` wide, `row_width` apart);
/// the head's slice starts at `offset`. Writes the head's context rows into
/// `out` (`hidden` apart, at `offset`). `scores` is scratch of length² size.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+fma", "x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
pub fn attend(
    qkv: &[f32],
    row_width: usize,
    hidden: usize,
    offset: usize,
    head_width: usize,
    length: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let scale = 1.0 / (head_width as f32).sqrt();
    for i in 0..length {
        let query = &qkv[i * row_width + offset..i * row_width + offset + head_width];
        for j in 0..length {
            let key = &qkv[j * row_width + hidden + offset..j * row_width + hidden + offset + head_width];
            scores[i * length + j] = lane_dot(query, key) * scale;
        }
    }
    softmax_rows(&mut scores[..length * length], length);
    for i in 0..length {
        let context = &mut out[i * hidden + offset..i * hidden + offset + head_width];
        context.fill(0.0);
        for j in 0..length {
            let weight = scores[i * length + j];
            let start = j * row_width + 2 * hidden + offset;
            let value = &qkv[start..start + head_width];
            for (context, value) in context.iter_mut().zip(value) {
                *context += weight * value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize) -> Vec<f32> {
        (0..count).map(|index| ((index * 37 % 101) as f32 - 50.0) / 7.0).collect()
    }

    #[test]
    fn lane_reductions_match_plain_ones_at_every_tail_length() {
        for count in [0, 1, 7, 15, 16, 17, 31, 32, 33, 128, 384] {
            let (left, right) = (values(count), values(count + 3)[3..].to_vec());
            let sum: f64 = left.iter().map(|&value| f64::from(value)).sum();
            assert!((f64::from(lane_sum(&left)) - sum).abs() < 1e-3, "{count}");
            let mean = if count == 0 { 0.0 } else { (sum / count as f64) as f32 };
            let squares: f64 = left.iter().map(|&value| f64::from(value - mean).powi(2)).sum();
            assert!((f64::from(lane_sum_of_squares(&left, mean)) - squares).abs() < 1e-2 * squares.max(1.0));
            let dot: f64 = left.iter().zip(&right).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            assert!((f64::from(lane_dot(&left, &right)) - dot).abs() < 1e-2 * dot.abs().max(1.0), "{count}");
            let max = left.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(lane_max(&left), max, "{count}");
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_their_order() {
        for width in [1, 12, 17, 128] {
            let mut scores = values(3 * width);
            let original = scores.clone();
            softmax_rows(&mut scores, width);
            for (row, source) in scores.chunks_exact(width).zip(original.chunks_exact(width)) {
                let max = source.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let total: f64 = source.iter().map(|&value| f64::from(value - max).exp()).sum();
                for (&got, &score) in row.iter().zip(source) {
                    let expected = f64::from(score - max).exp() / total;
                    assert!((f64::from(got) - expected).abs() < 1e-6, "width {width}: {got} vs {expected}");
                }
            }
        }
    }
}
