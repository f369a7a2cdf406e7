//! Dense products on AVX-512 BF16 (`vdpbf16ps`): two bf16 multiplies per
//! f32 lane, 32 per instruction, summed in f32, the number format the AMX
//! path uses (8 significant bits in, f32 sums). AMD Zen 4 and Intel Cooper
//! Lake and later have it; there no per-chunk scaling is needed as in the
//! AVX2 path's fixed point, so the inner loop is the products alone.
//!
//! The weight is packed once at load into bf16 panels of 16 columns (2
//! bytes a weight, as AVX2's fixed point); the left-hand rows are rounded
//! to bf16 at each product. A register block is up to 8 rows × 32
//! columns: 16 accumulators and 2 weight registers. (12 rows, 24
//! accumulators, fit the 32 registers on paper, but the compiler unrolled
//! the depth loop and spilled sums to the stack: batch-32 short inputs ran
//! at half the rate, 596 against 1054 sentences/s on AMD Zen 4.)

use std::arch::x86_64::{
    __m512, __m512bh, __m512i, _mm512_cvtne2ps_pbh, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512,
    _mm512_mask_storeu_ps, _mm512_set1_epi32, _mm512_setzero_ps, _mm512_storeu_si512,
};
use std::ops::Range;
use std::sync::OnceLock;

use super::to_bf16;

/// Output columns of one panel: one register of f32 sums.
const PANEL: usize = 16;
/// Panels of one register block.
const BLOCK_PANELS: usize = 2;
/// Output rows of one register block: 16 accumulators of 32.
const BLOCK_ROWS: usize = 8;
/// Panels of one group: their weights (up to 8 × 48 KiB at depth 1536)
/// stay in L2 while every block of rows passes over them.
const GROUP_PANELS: usize = 8;

/// Whether this CPU runs these kernels: AVX-512 F, BW and BF16, and a
/// product of exactly representable values comes out exact (the start-up
/// check the AMX path also makes).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
            && self_test()
    })
}

/// The start-up product ([`super::checks::exact_product_holds`]), with a
/// row tail, a column tail, an odd depth and both block widths.
fn self_test() -> bool {
    super::checks::exact_product_holds((13, 41, 50), |lhs, weight, (rows, depth, columns)| {
        let packed = PackedBf16::pack(weight, depth, columns);
        let mut out = vec![f32::NAN; rows * columns];
        // SAFETY: the features were detected by the caller; `out` holds
        // rows × columns values.
        unsafe {
            let rounded = round_rows(lhs, rows, &packed);
            panels_of(out.as_mut_ptr(), &rounded, rows, &packed, 0..packed.panels);
        }
        out
    })
}

/// A `[k, n]` weight in bf16 panels: for each panel of 16 columns and each
/// pair of depths, the 16 columns' (even, odd depth) values.
pub struct PackedBf16 {
    depth: usize,
    columns: usize,
    panels: usize,
    /// The depth rounded up to a whole pair.
    padded: usize,
    values: Vec<u16>,
}

impl PackedBf16 {
    /// Packs a row-major `[k, n]` f32 matrix.
    pub fn pack(weight: &[f32], depth: usize, columns: usize) -> Self {
        assert_eq!(weight.len(), depth * columns, "weight shape");
        let panels = columns.div_ceil(PANEL);
        let padded = depth.div_ceil(2) * 2;
        let mut values = vec![0u16; panels * padded * PANEL];
        for (line_index, line) in values.chunks_exact_mut(2 * PANEL).enumerate() {
            let (panel, pair) = (line_index / (padded / 2), line_index % (padded / 2));
            for (index, value) in line.iter_mut().enumerate() {
                let (column, row) = (panel * PANEL + index / 2, 2 * pair + index % 2);
                if column < columns && row < depth {
                    *value = to_bf16(weight[row * columns + column]);
                }
            }
        }
        Self { depth, columns, panels, padded, values }
    }

    /// Bytes of its packed values.
    pub fn bytes(&self) -> u64 {
        std::mem::size_of_val(self.values.as_slice()) as u64
    }

    fn panel(&self, panel: usize) -> &[u16] {
        &self.values[panel * self.padded * PANEL..][..self.padded * PANEL]
    }
}

/// `out[m, n] = lhs[m, k] · weight[k, n]` (row-major), the panels split
/// between the calling thread and rayon's when `parallel`.
pub fn product(out: &mut [f32], lhs: &[f32], rows: usize, weight: &PackedBf16, parallel: bool) {
    assert!(available(), "AVX-512 BF16 products need `available()`");
    assert_eq!(lhs.len(), rows * weight.depth, "left-hand shape");
    assert_eq!(out.len(), rows * weight.columns, "output shape");
    if rows == 0 || weight.depth == 0 {
        out.fill(0.0);
        return;
    }
    // SAFETY: the CPU has AVX-512 BF16 (asserted).
    let rounded = unsafe { round_rows(lhs, rows, weight) };
    let out_address = out.as_mut_ptr() as usize;
    let blocks = weight.panels.div_ceil(BLOCK_PANELS);
    super::share_columns(blocks, parallel, |blocks| {
        let panels = blocks.start * BLOCK_PANELS..(blocks.end * BLOCK_PANELS).min(weight.panels);
        // SAFETY: each share writes only the columns of its own panels;
        // `out` outlives the call; features and shapes as checked above.
        unsafe { panels_of(out_address as *mut f32, &rounded, rows, weight, panels) };
    });
}

/// The rows in bf16, `padded` values each (a zero past an odd depth).
///
/// # Safety
/// The CPU must have AVX-512 F and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_rows(lhs: &[f32], rows: usize, weight: &PackedBf16) -> Vec<u16> {
    let (depth, padded) = (weight.depth, weight.padded);
    let mut values = vec![0u16; rows * padded];
    for (source, target) in lhs.chunks_exact(depth).zip(values.chunks_exact_mut(padded)) {
        let whole = depth / 32 * 32;
        for (thirty_two, target) in source[..whole].chunks_exact(32).zip(target.chunks_exact_mut(32)) {
            // SAFETY: 32 values in and out; `vcvtne2ps2bf16` rounds to
            // nearest even, as `to_bf16` does, and puts its second operand
            // in the low half.
            unsafe {
                let low = _mm512_loadu_ps(thirty_two.as_ptr());
                let high = _mm512_loadu_ps(thirty_two.as_ptr().add(16));
                let both = _mm512_cvtne2ps_pbh(high, low);
                _mm512_storeu_si512(
                    target.as_mut_ptr().cast(),
                    std::mem::transmute::<__m512bh, __m512i>(both),
                );
            }
        }
        for (target, &value) in target[whole..depth].iter_mut().zip(&source[whole..]) {
            *target = to_bf16(value);
        }
    }
    values
}

/// # Safety
/// The CPU must have AVX-512 F, BW and BF16; `rounded` made from `rows`
/// rows for `weight`; `out` points to `rows × columns` writable values
/// that no one else touches in the columns of `panels`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn panels_of(out: *mut f32, rounded: &[u16], rows: usize, weight: &PackedBf16, panels: Range<usize>) {
    let padded = weight.padded;
    for group_start in panels.clone().step_by(GROUP_PANELS) {
        let group_end = (group_start + GROUP_PANELS).min(panels.end);
        for row_start in (0..rows).step_by(BLOCK_ROWS) {
            let block_rows = BLOCK_ROWS.min(rows - row_start);
            let left = &rounded[row_start * padded..][..block_rows * padded];
            for first_panel in (group_start..group_end).step_by(BLOCK_PANELS) {
                let first_column = first_panel * PANEL;
                let target = Target {
                    // SAFETY: row_start < rows, first_column < columns.
                    at: unsafe { out.add(row_start * weight.columns + first_column) },
                    stride: weight.columns,
                    width: weight.columns - first_column,
                };
                let right = [weight.panel(first_panel), weight.panel((first_panel + 1).min(group_end - 1))];
                // SAFETY: `left` holds `block_rows` rounded rows, `right`
                // whole panels; the target block is inside `out` and in
                // this call's columns (a second panel is written only when
                // it is this share's).
                unsafe {
                    if first_panel + 1 < group_end {
                        block_of_rows::<2>(block_rows, left, padded, right, &target);
                    } else {
                        block_of_rows::<1>(block_rows, left, padded, right, &target);
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
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn block_of_rows<const PANELS: usize>(
    rows: usize,
    left: &[u16],
    padded: usize,
    right: [&[u16]; BLOCK_PANELS],
    target: &Target,
) {
    // SAFETY: the caller's promise, for `rows` rows.
    unsafe {
        match rows {
            8 => block::<8, PANELS>(left, padded, right, target),
            7 => block::<7, PANELS>(left, padded, right, target),
            6 => block::<6, PANELS>(left, padded, right, target),
            5 => block::<5, PANELS>(left, padded, right, target),
            4 => block::<4, PANELS>(left, padded, right, target),
            3 => block::<3, PANELS>(left, padded, right, target),
            2 => block::<2, PANELS>(left, padded, right, target),
            _ => block::<1, PANELS>(left, padded, right, target),
        }
    }
}

/// Where a block's results go: rows `stride` apart, of which the first
/// `width` columns (possibly more than the block's) are the output's.
struct Target {
    at: *mut f32,
    stride: usize,
    width: usize,
}

/// One `ROWS × (16 · PANELS)` block over the whole depth.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and BF16; `left` must hold `ROWS` rows
/// of `padded` values, the first `PANELS` of `right` whole panels; the
/// target's rows writable for `min(width, 16 · PANELS)` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn block<const ROWS: usize, const PANELS: usize>(
    left: &[u16],
    padded: usize,
    right: [&[u16]; BLOCK_PANELS],
    target: &Target,
) {
    debug_assert!(left.len() >= ROWS * padded);
    debug_assert!(right.iter().all(|panel| panel.len() >= padded * PANEL));
    let mut sums = [[_mm512_setzero_ps(); PANELS]; ROWS];
    let values = left.as_ptr();
    let weights: [*const u16; BLOCK_PANELS] = right.map(<[u16]>::as_ptr);
    for pair in 0..padded / 2 {
        // SAFETY: pair < padded / 2: inside both operands.
        unsafe {
            let mut lines = [std::mem::transmute::<__m512, __m512bh>(_mm512_setzero_ps()); PANELS];
            for (line, panel) in lines.iter_mut().zip(weights) {
                let loaded = _mm512_loadu_si512(panel.add(pair * 2 * PANEL).cast());
                *line = std::mem::transmute::<__m512i, __m512bh>(loaded);
            }
            for (row, sums) in sums.iter_mut().enumerate() {
                let both = values.add(row * padded + 2 * pair).cast::<i32>().read_unaligned();
                let both = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(both));
                for (sum, line) in sums.iter_mut().zip(lines) {
                    *sum = _mm512_dpbf16_ps(*sum, both, line);
                }
            }
        }
    }
    // SAFETY: the caller's promise about the target.
    unsafe { store(&sums, target) };
}

/// Writes a block's sums, masked to the output's columns.
///
/// # Safety
/// As [`block`]'s target.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn store<const ROWS: usize, const PANELS: usize>(sums: &[[__m512; PANELS]; ROWS], target: &Target) {
    for (row, sums) in sums.iter().enumerate() {
        for (panel, &sum) in sums.iter().enumerate() {
            let width = target.width.saturating_sub(panel * PANEL).min(PANEL);
            let mask = ((1u32 << width) - 1) as u16;
            // SAFETY: the caller's promise: the masked lanes are writable.
            unsafe { _mm512_mask_storeu_ps(target.at.add(row * target.stride + panel * PANEL), mask, sum) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the tests must find these kernels: on a CPU with the
    /// features, a failing start-up check is a failure, not a skip.
    fn features() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }

    /// Products of every shape class (tails in rows, depth and columns,
    /// one and two panels a block) against an f64 reference on the same
    /// bf16-rounded inputs: only the f32 sums' order differs.
    #[test]
    fn products_match_a_reference_on_bf16_inputs() {
        assert_eq!(available(), features(), "the start-up check passes wherever the features are");
        if !features() {
            return;
        }
        super::super::checks::assert_products_near_reference(
            &[
                (1, 32, 32),
                (12, 384, 1152),
                (17, 70, 50),
                (13, 1536, 384),
                (64, 384, 96),
                (7, 601, 17),
                (40, 520, 300),
                (25, 33, 16),
            ],
            |lhs, weight, (rows, depth, columns), parallel| {
                let packed = PackedBf16::pack(weight, depth, columns);
                let mut out = vec![f32::NAN; rows * columns];
                product(&mut out, lhs, rows, &packed, parallel);
                out
            },
            |value| f64::from(f32::from_bits(u32::from(to_bf16(value)) << 16)),
            1e-5,
        );
    }

    /// The vector rounding of whole runs of 32 and the scalar one of the
    /// tail agree, ties included.
    #[test]
    fn rows_round_as_the_scalar_conversion_does() {
        if !features() {
            return;
        }
        let depth = 77;
        let mut lhs: Vec<f32> = (0..2 * depth).map(|index| (index as f32 - 60.0) / 7.0).collect();
        lhs[3] = f32::from_bits(0x3f80_8000);
        lhs[40] = f32::from_bits(0x3f81_8000);
        lhs[70] = f32::from_bits(0x3f80_8000);
        let packed = PackedBf16::pack(&vec![0.0; depth], depth, 1);
        // SAFETY: the features were checked.
        let rounded = unsafe { round_rows(&lhs, 2, &packed) };
        assert_eq!(rounded.len(), 2 * 78);
        for row in 0..2 {
            for index in 0..depth {
                assert_eq!(rounded[row * 78 + index], to_bf16(lhs[row * depth + index]), "[{row},{index}]");
            }
            assert_eq!(rounded[row * 78 + 77], 0, "the odd depth's pad");
        }
    }

    #[test]
    fn zero_shapes_give_zeros() {
        if !features() {
            return;
        }
        let empty = PackedBf16::pack(&[], 0, 3);
        let mut out = vec![f32::NAN; 6];
        product(&mut out, &[], 2, &empty, false);
        assert_eq!(out, vec![0.0; 6]);
    }
}
