//! Dense products on AVX-512 VNNI (`vpdpwssd`): the AVX2 path's 16-bit
//! fixed point (its packed weights and scaled rows, `avx2.rs`) on 512-bit
//! registers, where one instruction does 32 multiply-adds and folds in the
//! add that AVX2 spends a second instruction on. Intel Cascade Lake, Ice
//! Lake and later, AMD Zen 4 and later have it; it serves the AVX-512 CPUs
//! without BF16 (and is measured against the BF16 path where both run).

use std::arch::x86_64::{
    __m512, __m512i, _mm512_cvtepi32_ps, _mm512_dpwssd_epi32, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_loadu_si512, _mm512_mask_storeu_ps, _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_setzero_si512,
};
use std::ops::Range;

use super::avx2::{self, Left, PackedFixed, Rows, Target, CHUNK, PANEL};

/// Panels of one register block.
const BLOCK_PANELS: usize = 2;
/// Output rows of one register block: 12 chunk sums and 12 f32 sums.
const BLOCK_ROWS: usize = 6;
/// Panels of one group: their weights stay in L2 while every block of
/// rows passes over them.
const GROUP_PANELS: usize = 8;

/// Whether this CPU runs these kernels (AVX-512 F, BW and VNNI; AVX2 for
/// the row scaling they share).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && avx2::available()
}

/// `out[m, n] = lhs[m, k] · weight[k, n]` (row-major), the panels split
/// between the calling thread and rayon's when `parallel`.
pub fn product(out: &mut [f32], lhs: &[f32], rows: usize, weight: &PackedFixed, parallel: bool) {
    assert!(available(), "AVX-512 VNNI products need `available()`");
    // SAFETY: the CPU has AVX-512 VNNI and AVX2 (asserted).
    unsafe { avx2::product_on(out, lhs, rows, weight, parallel, panels_of) }
}

/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; `scaled` made from `rows`
/// rows for `weight`; `out` points to `rows × columns` writable values
/// that no one else touches in the columns of `panels`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn panels_of(out: *mut f32, scaled: &Rows, rows: usize, weight: &PackedFixed, panels: Range<usize>) {
    let padded = weight.padded_depth();
    for group_start in panels.clone().step_by(GROUP_PANELS) {
        let group_end = (group_start + GROUP_PANELS).min(panels.end);
        for row_start in (0..rows).step_by(BLOCK_ROWS) {
            let block_rows = BLOCK_ROWS.min(rows - row_start);
            let left = Left {
                values: &scaled.values[row_start * padded..][..block_rows * padded],
                scales: &scaled.scales[row_start * weight.chunks..][..block_rows * weight.chunks],
                padded,
                chunks: weight.chunks,
            };
            for first_panel in (group_start..group_end).step_by(BLOCK_PANELS) {
                let first_column = first_panel * PANEL;
                let last_panel = (first_panel + 1).min(group_end - 1);
                let target = Target {
                    // SAFETY: row_start < rows, first_column < columns.
                    at: unsafe { out.add(row_start * weight.columns + first_column) },
                    stride: weight.columns,
                    width: (weight.columns - first_column).min(BLOCK_PANELS * PANEL),
                    scales: &weight.scales[first_column..(last_panel + 1) * PANEL],
                };
                let right = [first_panel, last_panel]
                    .map(|panel| &weight.values[panel * padded * PANEL..][..padded * PANEL]);
                // SAFETY: `left` holds `block_rows` scaled rows, `right`
                // whole panels; the target block is inside `out` and in
                // this call's columns (a second panel is written only when
                // it is this share's).
                unsafe {
                    if first_panel < last_panel {
                        block_of_rows::<2>(block_rows, &left, right, &target);
                    } else {
                        block_of_rows::<1>(block_rows, &left, right, &target);
                    }
                }
            }
        }
    }
}

/// Picks the block for a row count (the last block of rows is shorter).
///
/// # Safety
/// As [`block`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn block_of_rows<const PANELS: usize>(
    rows: usize,
    left: &Left<'_>,
    right: [&[i16]; BLOCK_PANELS],
    target: &Target<'_>,
) {
    // SAFETY: the caller's promise, for `rows` rows.
    unsafe {
        match rows {
            6 => block::<6, PANELS>(left, right, target),
            5 => block::<5, PANELS>(left, right, target),
            4 => block::<4, PANELS>(left, right, target),
            3 => block::<3, PANELS>(left, right, target),
            2 => block::<2, PANELS>(left, right, target),
            _ => block::<1, PANELS>(left, right, target),
        }
    }
}

/// One `ROWS × (16 · PANELS)` block over the whole depth: 32-bit sums per
/// chunk of 64 depths, widened to f32 with the row's chunk scale.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; `left` must hold `ROWS` rows,
/// the first `PANELS` of `right` whole panels; the target's rows writable
/// for `min(width, 16 · PANELS)` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn block<const ROWS: usize, const PANELS: usize>(
    left: &Left<'_>,
    right: [&[i16]; BLOCK_PANELS],
    target: &Target<'_>,
) {
    debug_assert!(left.values.len() >= ROWS * left.padded);
    debug_assert!(right.iter().all(|panel| panel.len() >= left.padded * PANEL));
    let mut sums = [[_mm512_setzero_ps(); PANELS]; ROWS];
    let values = left.values.as_ptr();
    let weights: [*const i16; BLOCK_PANELS] = right.map(<[i16]>::as_ptr);
    for chunk in 0..left.chunks {
        let mut chunk_sums = [[_mm512_setzero_si512(); PANELS]; ROWS];
        for pair in chunk * CHUNK / 2..(chunk + 1) * CHUNK / 2 {
            // SAFETY: pair < padded / 2: inside both operands.
            unsafe {
                let mut lines = [_mm512_setzero_si512(); PANELS];
                for (line, panel) in lines.iter_mut().zip(weights) {
                    *line = _mm512_loadu_si512(panel.add(pair * 2 * PANEL).cast::<__m512i>());
                }
                for (row, chunk_sums) in chunk_sums.iter_mut().enumerate() {
                    let both = values.add(row * left.padded + 2 * pair).cast::<i32>().read_unaligned();
                    let both = _mm512_set1_epi32(both);
                    for (sum, line) in chunk_sums.iter_mut().zip(lines) {
                        *sum = _mm512_dpwssd_epi32(*sum, both, line);
                    }
                }
            }
        }
        for (row, (sums, chunk_sums)) in sums.iter_mut().zip(&chunk_sums).enumerate() {
            let scale = _mm512_set1_ps(left.scales[row * left.chunks + chunk]);
            for (sum, &chunk_sum) in sums.iter_mut().zip(chunk_sums) {
                *sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(chunk_sum), scale, *sum);
            }
        }
    }
    // SAFETY: the caller's promise about the target.
    unsafe { store(&sums, target) };
}

/// Writes a block's sums times the column scales, masked to the output's
/// columns.
///
/// # Safety
/// As [`block`]'s target.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn store<const ROWS: usize, const PANELS: usize>(
    sums: &[[__m512; PANELS]; ROWS],
    target: &Target<'_>,
) {
    let mut scales = [_mm512_setzero_ps(); PANELS];
    for (panel, scale) in scales.iter_mut().enumerate() {
        // SAFETY: `scales` holds 16 values a panel of the block.
        *scale = unsafe { _mm512_loadu_ps(target.scales[panel * PANEL..][..PANEL].as_ptr()) };
    }
    for (row, sums) in sums.iter().enumerate() {
        for (panel, (&sum, &scale)) in sums.iter().zip(&scales).enumerate() {
            let width = target.width.saturating_sub(panel * PANEL).min(PANEL);
            let mask = ((1u32 << width) - 1) as u16;
            // SAFETY: the caller's promise: the masked lanes are writable.
            unsafe {
                let at = target.at.add(row * target.stride + panel * PANEL);
                _mm512_mask_storeu_ps(at, mask, _mm512_mul_ps(sum, scale));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// Against the AVX2 kernels on the same packed weights: the same exact
    /// 32-bit chunk sums, widened and added in the same order, so the same
    /// bits.
    #[test]
    fn products_match_the_avx2_kernels() {
        assert_eq!(available(), features() && avx2::available());
        if !available() {
            return;
        }
        for &(rows, depth, columns) in
            &[(1, 32, 32), (12, 384, 1152), (17, 70, 50), (13, 1536, 384), (7, 600, 17), (40, 520, 300)]
        {
            let lhs: Vec<f32> =
                (0..rows * depth).map(|index| ((index * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let weight: Vec<f32> =
                (0..depth * columns).map(|index| ((index * 53 % 97) as f32 - 48.0) / 23.0).collect();
            let packed = PackedFixed::pack(&weight, depth, columns);
            let mut expected = vec![f32::NAN; rows * columns];
            avx2::product(&mut expected, &lhs, rows, &packed, false);
            for parallel in [false, true] {
                let mut out = vec![f32::NAN; rows * columns];
                product(&mut out, &lhs, rows, &packed, parallel);
                assert_eq!(out, expected, "{rows}x{depth}x{columns} parallel={parallel}");
            }
        }
    }
}
