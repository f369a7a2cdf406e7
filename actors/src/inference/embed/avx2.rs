//! Dense products on AVX2, in 16-bit fixed point (`vpmaddwd`): two
//! multiply-adds of 16-bit integers per 32-bit lane, 16 per instruction,
//! where an f32 FMA does 8. On AMD Zen 3, measured here, that is 82 against
//! 51 billion multiply-adds a second per core: the compute-bound products
//! of long or batched inputs take fewer cycles.
//!
//! The weight is scaled per output column to 12 bits (±2047) once at load;
//! the left-hand rows are scaled per row and per chunk of 64 depths to 14
//! bits (±8191) at each product. A chunk's 32-bit sums cannot overflow
//! (64 · 8191 · 2047 < 2³¹); each chunk's sums are then widened to f32 with
//! its row scale. The rounding is finer than the AMX path's bf16 (8
//! significant bits): a weight is off by at most 1/4094 of its column's
//! largest, a row value by 1/16382 of its chunk's largest.
//!
//! Packed once at load, the weights take 2 bytes each, half of f32: what
//! bounds one short sentence, which reads every weight once (21 MB a pass
//! instead of 42). Measured on the same machine against the same kernels
//! on half-precision weights with f32 products: 1.3-1.5x the sentences/s
//! on 128-token inputs, the same on 12-token ones.

use std::arch::x86_64::{
    __m256, __m256i, _mm256_add_epi32, _mm256_andnot_ps, _mm256_cvtepi32_ps, _mm256_cvtps_epi32,
    _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_max_ps, _mm256_mul_ps,
    _mm256_packs_epi32, _mm256_permute4x64_epi64, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps,
    _mm256_setzero_si256, _mm256_storeu_ps, _mm256_storeu_si256,
};
use std::ops::Range;

/// Output columns of one panel.
pub(super) const PANEL: usize = 16;
/// Output rows of one register block: 12 accumulators, 2 weight registers
/// and one broadcast.
const BLOCK_ROWS: usize = 6;
/// Depths of one chunk: its sums stay in 32 bits; each has a row scale.
pub(super) const CHUNK: usize = 64;
/// Largest magnitude of a scaled row value and weight.
const ROW_LIMIT: f32 = 8191.0;
const WEIGHT_LIMIT: f32 = 2047.0;
/// Panels of one group: their weights (up to 8 × 48 KiB at depth 1536)
/// stay in L2 while every block of rows passes over them.
const GROUP_PANELS: usize = 8;

/// Whether this CPU runs these kernels (AVX2 and FMA: every x86-64 CPU
/// since Intel Haswell and AMD Zen).
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// A `[k, n]` weight in 16-bit panels: for each panel of 16 columns and
/// each pair of depths, 8 columns × (even, odd depth) then the next 8 (so
/// that, read as one 512-bit line, 32-bit lane j is column j: the AVX-512
/// VNNI kernels read the same panels).
pub struct PackedFixed {
    pub(super) depth: usize,
    pub(super) columns: usize,
    pub(super) panels: usize,
    pub(super) chunks: usize,
    pub(super) values: Vec<i16>,
    /// Each column's scale (weight = value × scale); padded to whole panels.
    pub(super) scales: Vec<f32>,
}

impl PackedFixed {
    /// Packs a row-major `[k, n]` f32 matrix.
    pub fn pack(weight: &[f32], depth: usize, columns: usize) -> Self {
        assert_eq!(weight.len(), depth * columns, "weight shape");
        let panels = columns.div_ceil(PANEL);
        let chunks = depth.div_ceil(CHUNK);
        let padded = chunks * CHUNK;
        let mut scales = vec![1.0f32; panels * PANEL];
        for (column, scale) in scales.iter_mut().enumerate().take(columns) {
            let largest = (0..depth).map(|row| weight[row * columns + column].abs()).fold(0.0, f32::max);
            if largest > 0.0 {
                *scale = largest / WEIGHT_LIMIT;
            }
        }
        let mut values = vec![0i16; panels * padded * PANEL];
        for panel in 0..panels {
            for pair in 0..padded / 2 {
                let line = &mut values[(panel * padded / 2 + pair) * 2 * PANEL..][..2 * PANEL];
                for (index, value) in line.iter_mut().enumerate() {
                    let column = panel * PANEL + index / 16 * 8 + index % 16 / 2;
                    let row = 2 * pair + index % 2;
                    if column < columns && row < depth {
                        *value = (weight[row * columns + column] / scales[column]).round_ties_even() as i16;
                    }
                }
            }
        }
        Self { depth, columns, panels, chunks, values, scales }
    }

    /// Bytes of its packed values and scales.
    pub fn bytes(&self) -> u64 {
        (std::mem::size_of_val(self.values.as_slice()) + std::mem::size_of_val(self.scales.as_slice())) as u64
    }

    /// The depth the rows are padded to.
    pub(super) fn padded_depth(&self) -> usize {
        self.chunks * CHUNK
    }
}

/// The left-hand rows scaled: `rows × padded depth` values and a scale per
/// row and chunk.
pub(super) struct Rows {
    pub(super) values: Vec<i16>,
    pub(super) scales: Vec<f32>,
}

/// `out[m, n] = lhs[m, k] · weight[k, n]` (row-major), the panels split
/// between the calling thread and rayon's when `parallel`.
pub fn product(out: &mut [f32], lhs: &[f32], rows: usize, weight: &PackedFixed, parallel: bool) {
    assert!(available(), "AVX2 products need `available()`");
    // SAFETY: the CPU has AVX2 and FMA (asserted).
    unsafe { product_on(out, lhs, rows, weight, parallel, panels_of) }
}

/// Blocks of some panels of the output: the kernels of one instruction set.
pub(super) type Panels = unsafe fn(*mut f32, &Rows, usize, &PackedFixed, Range<usize>);

/// [`product`] with the panels computed by `panels`.
///
/// # Safety
/// The CPU must run `panels` (and AVX2, for the row scaling).
pub(super) unsafe fn product_on(
    out: &mut [f32],
    lhs: &[f32],
    rows: usize,
    weight: &PackedFixed,
    parallel: bool,
    panels: Panels,
) {
    assert_eq!(lhs.len(), rows * weight.depth, "left-hand shape");
    assert_eq!(out.len(), rows * weight.columns, "output shape");
    if rows == 0 || weight.depth == 0 {
        out.fill(0.0);
        return;
    }
    // SAFETY: the caller's promise.
    let scaled = unsafe { scale_rows(lhs, rows, weight) };
    let out_address = out.as_mut_ptr() as usize;
    super::share_columns(weight.panels, parallel, |share| {
        // SAFETY: each share writes only the columns of its own panels;
        // `out` outlives the call; features and shapes as checked above.
        unsafe { panels(out_address as *mut f32, &scaled, rows, weight, share) };
    });
}

/// Scales each row's chunks to ±8191 (zeros past the depth).
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_rows(lhs: &[f32], rows: usize, weight: &PackedFixed) -> Rows {
    let (depth, chunks, padded) = (weight.depth, weight.chunks, weight.padded_depth());
    let mut values = vec![0i16; rows * padded];
    let mut scales = vec![0.0f32; rows * chunks];
    for (row, source) in lhs.chunks_exact(depth).enumerate() {
        for (chunk, part) in source.chunks(CHUNK).enumerate() {
            let target = &mut values[row * padded + chunk * CHUNK..][..part.len()];
            scales[row * chunks + chunk] = match (<&[f32; CHUNK]>::try_from(part), target.try_into()) {
                (Ok(part), Ok(target)) => scale_chunk(part, target),
                _ => scale_tail(part, target),
            };
        }
    }
    Rows { values, scales }
}

/// Scales one whole chunk into `target`; returns its scale (0 for zeros).
/// In registers: the serial step before each product's threads start, 6%
/// of a long sentence's time as plain loops (the `max` and the rounding
/// kept them scalar).
#[target_feature(enable = "avx2,fma")]
fn scale_chunk(part: &[f32; CHUNK], target: &mut [i16; CHUNK]) -> f32 {
    let magnitude = _mm256_set1_ps(-0.0);
    let mut largest = _mm256_setzero_ps();
    for eight in part.chunks_exact(8) {
        // SAFETY: 8 values.
        let values = unsafe { _mm256_loadu_ps(eight.as_ptr()) };
        largest = _mm256_max_ps(largest, _mm256_andnot_ps(magnitude, values));
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: 8 lanes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), largest) };
    let largest = lanes.into_iter().fold(0.0f32, f32::max);
    if largest == 0.0 {
        target.fill(0);
        return 0.0;
    }
    let inverse = _mm256_set1_ps(ROW_LIMIT / largest);
    for (sixteen, target) in part.chunks_exact(16).zip(target.chunks_exact_mut(16)) {
        // SAFETY: 16 values each; the products are within ±8191, so the
        // rounding conversion (to nearest even) and the packing to 16
        // bits are exact. The packing interleaves 128-bit halves; the
        // permutation puts them back in order.
        unsafe {
            let low = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(sixteen.as_ptr()), inverse));
            let high = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(sixteen.as_ptr().add(8)), inverse));
            let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(low, high));
            _mm256_storeu_si256(target.as_mut_ptr().cast::<__m256i>(), packed);
        }
    }
    largest / ROW_LIMIT
}

/// Scales a row's last, shorter chunk; returns its scale.
fn scale_tail(part: &[f32], target: &mut [i16]) -> f32 {
    let largest = part.iter().fold(0.0f32, |largest, value| largest.max(value.abs()));
    if largest == 0.0 {
        return 0.0;
    }
    let inverse = ROW_LIMIT / largest;
    for (target, value) in target.iter_mut().zip(part) {
        *target = (value * inverse).round_ties_even() as i16;
    }
    largest / ROW_LIMIT
}

/// # Safety
/// The CPU must have AVX2 and FMA; `scaled` made from `rows` rows for
/// `weight`; `out` points to `rows × columns` writable values that no one
/// else touches in the columns of `panels`.
#[target_feature(enable = "avx2,fma")]
unsafe fn panels_of(out: *mut f32, scaled: &Rows, rows: usize, weight: &PackedFixed, panels: Range<usize>) {
    let padded = weight.padded_depth();
    for group_start in panels.clone().step_by(GROUP_PANELS) {
        let group = group_start..(group_start + GROUP_PANELS).min(panels.end);
        for row_start in (0..rows).step_by(BLOCK_ROWS) {
            let block_rows = BLOCK_ROWS.min(rows - row_start);
            let left = Left {
                values: &scaled.values[row_start * padded..],
                scales: &scaled.scales[row_start * weight.chunks..],
                padded,
                chunks: weight.chunks,
            };
            for panel in group.clone() {
                let right = &weight.values[panel * padded * PANEL..][..padded * PANEL];
                let first_column = panel * PANEL;
                let target = Target {
                    // SAFETY: row_start < rows, first_column < columns.
                    at: unsafe { out.add(row_start * weight.columns + first_column) },
                    stride: weight.columns,
                    width: (weight.columns - first_column).min(PANEL),
                    scales: &weight.scales[first_column..first_column + PANEL],
                };
                // SAFETY: `left` holds `block_rows` scaled rows from
                // row_start, `right` the panel's values, the target block
                // is inside `out` and in this call's columns.
                unsafe {
                    match block_rows {
                        6 => block::<6>(&left, right, &target),
                        5 => block::<5>(&left, right, &target),
                        4 => block::<4>(&left, right, &target),
                        3 => block::<3>(&left, right, &target),
                        2 => block::<2>(&left, right, &target),
                        _ => block::<1>(&left, right, &target),
                    }
                }
            }
        }
    }
}

/// A block's scaled rows: values `padded` apart, scales `chunks` apart.
pub(super) struct Left<'a> {
    pub(super) values: &'a [i16],
    pub(super) scales: &'a [f32],
    pub(super) padded: usize,
    pub(super) chunks: usize,
}

/// Where a block's results go: rows `stride` apart, of which the first
/// `width` columns (up to the block's: 16 here, 32 in `vnni.rs`) are the
/// output's, each multiplied by its weight scale.
pub(super) struct Target<'a> {
    pub(super) at: *mut f32,
    pub(super) stride: usize,
    pub(super) width: usize,
    pub(super) scales: &'a [f32],
}

/// One `ROWS × 16` block over the whole depth.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `left` must hold `ROWS` rows, `right`
/// a panel's `padded × 16` values; the target's rows writable.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block<const ROWS: usize>(left: &Left<'_>, right: &[i16], target: &Target<'_>) {
    debug_assert!(left.values.len() >= (ROWS - 1) * left.padded + left.padded);
    debug_assert!(right.len() >= left.padded * PANEL);
    let mut sums = [[_mm256_setzero_ps(); 2]; ROWS];
    let (values, right) = (left.values.as_ptr(), right.as_ptr());
    for chunk in 0..left.chunks {
        let mut chunk_sums = [[_mm256_setzero_si256(); 2]; ROWS];
        for pair in chunk * CHUNK / 2..(chunk + 1) * CHUNK / 2 {
            // SAFETY: pair < padded / 2: inside both operands.
            unsafe {
                let weights = right.add(pair * 2 * PANEL);
                let low = _mm256_loadu_si256(weights.cast::<__m256i>());
                let high = _mm256_loadu_si256(weights.add(PANEL).cast::<__m256i>());
                for (row, chunk_sums) in chunk_sums.iter_mut().enumerate() {
                    let both = values.add(row * left.padded + 2 * pair).cast::<i32>().read_unaligned();
                    let both = _mm256_set1_epi32(both);
                    chunk_sums[0] = _mm256_add_epi32(chunk_sums[0], _mm256_madd_epi16(both, low));
                    chunk_sums[1] = _mm256_add_epi32(chunk_sums[1], _mm256_madd_epi16(both, high));
                }
            }
        }
        for (row, (sums, chunk_sums)) in sums.iter_mut().zip(&chunk_sums).enumerate() {
            let scale = _mm256_set1_ps(left.scales[row * left.chunks + chunk]);
            sums[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(chunk_sums[0]), scale, sums[0]);
            sums[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(chunk_sums[1]), scale, sums[1]);
        }
    }
    // SAFETY: the caller's promise about the target.
    unsafe { store(&sums, target) };
}

/// Writes a block's sums times the column scales.
///
/// # Safety
/// As [`block`]'s target.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store<const ROWS: usize>(sums: &[[__m256; 2]; ROWS], target: &Target<'_>) {
    // SAFETY: `scales` holds 16 values.
    let (scale_low, scale_high) =
        unsafe { (_mm256_loadu_ps(target.scales.as_ptr()), _mm256_loadu_ps(target.scales.as_ptr().add(8))) };
    for (row, sums) in sums.iter().enumerate() {
        let (low, high) = (_mm256_mul_ps(sums[0], scale_low), _mm256_mul_ps(sums[1], scale_high));
        // SAFETY: the caller's promise: `width` writable values a row.
        unsafe {
            let at = target.at.add(row * target.stride);
            if target.width == PANEL {
                _mm256_storeu_ps(at, low);
                _mm256_storeu_ps(at.add(8), high);
            } else {
                let mut spill = [0.0f32; PANEL];
                _mm256_storeu_ps(spill.as_mut_ptr(), low);
                _mm256_storeu_ps(spill.as_mut_ptr().add(8), high);
                std::slice::from_raw_parts_mut(at, target.width).copy_from_slice(&spill[..target.width]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products of every shape class (tails in rows, depth and columns)
    /// against an f64 reference, within the fixed point's rounding.
    #[test]
    fn products_match_a_reference_within_the_rounding() {
        assert!(available(), "the x86-64 CI machines have AVX2");
        // Each term is off by at most about 1/4094 of its column's largest
        // weight (and less for the row): well inside 1e-3.
        super::super::checks::assert_products_near_reference(
            &[
                (1, 32, 32),
                (12, 384, 1152),
                (17, 70, 50),
                (13, 1536, 384),
                (64, 384, 96),
                (7, 600, 17),
                (40, 520, 300),
            ],
            |lhs, weight, (rows, depth, columns), parallel| {
                let packed = PackedFixed::pack(weight, depth, columns);
                let mut out = vec![f32::NAN; rows * columns];
                product(&mut out, lhs, rows, &packed, parallel);
                out
            },
            f64::from,
            1e-3,
        );
    }

    #[test]
    fn whole_chunks_scale_as_the_plain_loop_does() {
        assert!(available(), "the x86-64 CI machines have AVX2");
        let part: [f32; CHUNK] = std::array::from_fn(|index| ((index * 37 % 101) as f32 - 50.0) / 7.0 + 0.25);
        let (mut fast, mut plain) = ([0i16; CHUNK], [0i16; CHUNK]);
        // SAFETY: the CPU has AVX2 (asserted).
        let fast_scale = unsafe { scale_chunk(&part, &mut fast) };
        assert_eq!(fast_scale, scale_tail(&part, &mut plain));
        assert_eq!(fast, plain);
        assert!(fast.iter().any(|&value| value == 8191 || value == -8191));
    }

    #[test]
    fn zero_rows_and_columns_scale_without_dividing_by_zero() {
        let weight = vec![0.0f32; 70 * 20];
        let packed = PackedFixed::pack(&weight, 70, 20);
        let lhs = vec![0.0f32; 3 * 70];
        let mut out = vec![f32::NAN; 3 * 20];
        product(&mut out, &lhs, 3, &packed, false);
        assert_eq!(out, vec![0.0; 60]);
        let empty = PackedFixed::pack(&[], 0, 3);
        let mut out = vec![f32::NAN; 6];
        product(&mut out, &[], 2, &empty, false);
        assert_eq!(out, vec![0.0; 6]);
    }
}
