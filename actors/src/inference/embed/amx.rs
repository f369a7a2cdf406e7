//! Dense products on Intel AMX: bf16 tiles, f32 accumulation.
//!
//! A `[k, n]` weight is packed once, at load, into the tile layout that
//! `tdpbf16ps` reads (pairs of rows interleaved, 16 columns by 32 depths a
//! tile). Each product converts the left-hand rows to bf16 and runs 32×32
//! blocks of the output as four accumulator tiles. One AMX unit does about
//! eight times the multiply-adds per cycle of two AVX-512 FMA ports, and the
//! bf16 weights stream half the bytes of f32.
//!
//! AMX needs the CPU (CPUID) and the kernel (the process must ask for the
//! tile state with `arch_prctl`); [`available`] checks both once, and a
//! self-test product. Where it is missing, another path serves
//! (`dispatch.rs`).

use std::arch::asm;
use std::sync::OnceLock;

use super::to_bf16;

/// Output rows and columns of one tile, and depth (bf16 values) of one step.
const TILE_ROWS: usize = 16;
const TILE_COLUMNS: usize = 16;
const TILE_DEPTH: usize = 32;
/// Bytes of one tile row: 16 f32 or 32 bf16.
const ROW_BYTES: usize = 64;

/// One 64-byte tile row, aligned so that tile loads never split a line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u16; 32]);

/// Whether AMX bf16 products can run in this process; asks the kernel for
/// the tile state on the first call.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx_bf16() && request_tile_state() && self_test())
}

fn cpu_has_amx_bf16() -> bool {
    let max_leaf = std::arch::x86_64::__cpuid(0).eax;
    let features = std::arch::x86_64::__cpuid_count(7, 0);
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    max_leaf >= 7 && features.edx & (AMX_BF16 | AMX_TILE) == AMX_BF16 | AMX_TILE
}

/// Linux hands out the 8 KiB tile state only to processes that ask for it.
fn request_tile_state() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let mut granted: u64 = 0;
    // SAFETY: arch_prctl with these codes takes an integer, or a pointer to
    // one u64 that it fills.
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
            && libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut granted as *mut u64) == 0
            && granted & (1 << XFEATURE_XTILEDATA) != 0
    }
}

/// The start-up product ([`super::checks::exact_product_holds`]).
fn self_test() -> bool {
    super::checks::exact_product_holds((3, 40, 48), |lhs, weight, (rows, depth, columns)| {
        let packed = PackedWeight::pack(weight, depth, columns);
        let mut out = vec![0.0; rows * columns];
        // SAFETY: the tile state was granted (checked before this runs).
        unsafe { product_rows(&mut out, lhs, rows, &packed, 0..packed.column_blocks()) };
        out
    })
}

/// A `[k, n]` weight in bf16 tiles: tile (column block, depth block) holds
/// 16 rows of depth pairs, each 16 columns of (even, odd depth) values.
pub struct PackedWeight {
    depth: usize,
    columns: usize,
    depth_blocks: usize,
    column_tiles: usize,
    lines: Vec<Line>,
}

impl PackedWeight {
    /// Bytes of its packed tiles.
    pub fn bytes(&self) -> u64 {
        std::mem::size_of_val(self.lines.as_slice()) as u64
    }

    /// Packs a row-major `[k, n]` f32 matrix, rounding to bf16; depth and
    /// columns are padded with zeros to whole tiles.
    pub fn pack(weight: &[f32], depth: usize, columns: usize) -> Self {
        assert_eq!(weight.len(), depth * columns, "weight shape");
        let depth_blocks = depth.div_ceil(TILE_DEPTH);
        // Blocks of the output are two tiles wide.
        let column_tiles = columns.div_ceil(2 * TILE_COLUMNS) * 2;
        let mut lines = vec![Line::default(); column_tiles * depth_blocks * TILE_ROWS];
        for tile_column in 0..column_tiles {
            for block in 0..depth_blocks {
                let tile = &mut lines[(tile_column * depth_blocks + block) * TILE_ROWS..][..TILE_ROWS];
                for (pair, line) in tile.iter_mut().enumerate() {
                    for column_in_tile in 0..TILE_COLUMNS {
                        let column = tile_column * TILE_COLUMNS + column_in_tile;
                        for half in 0..2 {
                            let row = block * TILE_DEPTH + 2 * pair + half;
                            if row < depth && column < columns {
                                line.0[2 * column_in_tile + half] = to_bf16(weight[row * columns + column]);
                            }
                        }
                    }
                }
            }
        }
        Self { depth, columns, depth_blocks, column_tiles, lines }
    }

    /// Blocks of 32 output columns; the unit of work split between threads.
    pub fn column_blocks(&self) -> usize {
        self.column_tiles / 2
    }

    fn tile(&self, tile_column: usize, block: usize) -> *const Line {
        self.lines[(tile_column * self.depth_blocks + block) * TILE_ROWS..].as_ptr()
    }
}

/// The left-hand side in bf16, rows padded to whole tiles of 16 and depth
/// to whole steps of 32.
struct Rows {
    lines: Vec<Line>,
    lines_per_row: usize,
}

impl Rows {
    fn convert(lhs: &[f32], rows: usize, depth: usize, depth_blocks: usize) -> Self {
        let lines_per_row = depth_blocks;
        let padded_rows = rows.div_ceil(TILE_ROWS) * TILE_ROWS;
        let mut lines = vec![Line::default(); padded_rows * lines_per_row];
        for (row, source) in lhs.chunks_exact(depth).take(rows).enumerate() {
            convert_row(source, &mut lines[row * lines_per_row..(row + 1) * lines_per_row]);
        }
        Self { lines, lines_per_row }
    }

    fn at(&self, row: usize, block: usize) -> *const Line {
        self.lines[row * self.lines_per_row + block..].as_ptr()
    }

    fn stride(&self) -> usize {
        self.lines_per_row * ROW_BYTES
    }
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn convert_row(source: &[f32], target: &mut [Line]) {
    for (line, chunk) in target.iter_mut().zip(source.chunks(TILE_DEPTH)) {
        for (value, source) in line.0.iter_mut().zip(chunk) {
            *value = to_bf16(*source);
        }
    }
}

/// The tile shapes every product uses: tmm0-3 accumulate a 32×32 output
/// block, tmm4-5 hold two 16-row slices of the left side, tmm6-7 two tiles of
/// the weight.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// `out[m, n] = lhs[m, k] · weight[k, n]` (row-major), the column blocks of
/// the output split between the calling thread and rayon's when `parallel`.
pub fn product(out: &mut [f32], lhs: &[f32], rows: usize, weight: &PackedWeight, parallel: bool) {
    assert!(available(), "AMX products need `available()`");
    assert_eq!(lhs.len(), rows * weight.depth, "left-hand shape");
    assert_eq!(out.len(), rows * weight.columns, "output shape");
    if rows == 0 {
        return;
    }
    let rows_bf16 = Rows::convert(lhs, rows, weight.depth, weight.depth_blocks);
    let out_address = out.as_mut_ptr() as usize;
    super::share_columns(weight.column_blocks(), parallel, |blocks| {
        // SAFETY: each share writes only the output columns of its own
        // blocks, so the writes through the shared address are disjoint;
        // the output outlives the call; `available()` granted the tile
        // state (asserted) and the shapes are checked above.
        unsafe {
            let out = std::slice::from_raw_parts_mut(out_address as *mut f32, rows * weight.columns);
            blocks_of(out, &rows_bf16, rows, weight, blocks);
        }
    });
}

/// # Safety
/// The tile state must be granted (`available()`), and the shapes match.
unsafe fn product_rows(
    out: &mut [f32],
    lhs: &[f32],
    rows: usize,
    weight: &PackedWeight,
    blocks: std::ops::Range<usize>,
) {
    let rows_bf16 = Rows::convert(lhs, rows, weight.depth, weight.depth_blocks);
    unsafe { blocks_of(out, &rows_bf16, rows, weight, blocks) };
}

/// Computes the output columns of `blocks` for every row.
///
/// # Safety
/// The tile state must be granted, `rows_bf16` converted from `rows` rows of
/// `weight.depth`, and `out` `rows × weight.columns`.
unsafe fn blocks_of(
    out: &mut [f32],
    rows_bf16: &Rows,
    rows: usize,
    weight: &PackedWeight,
    blocks: std::ops::Range<usize>,
) {
    let columns = weight.columns;
    let a_stride = rows_bf16.stride();
    let mut spill = [[0.0f32; TILE_COLUMNS]; TILE_ROWS];
    // SAFETY (all asm below): the configuration is a valid palette-1 layout;
    // every tile load reads 16 rows of 64 bytes from inside `rows_bf16`
    // (padded to whole tiles) or the packed weight; every store writes 16
    // rows of 64 bytes either inside `out` (whole tiles only) or `spill`.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
    }
    for row_start in (0..rows).step_by(2 * TILE_ROWS) {
        let two_row_tiles = row_start + TILE_ROWS < rows;
        for block in blocks.clone() {
            let (left, right) = (2 * block, 2 * block + 1);
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            for depth_block in 0..weight.depth_blocks {
                let upper = rows_bf16.at(row_start, depth_block);
                let (b_left, b_right) = (weight.tile(left, depth_block), weight.tile(right, depth_block));
                unsafe {
                    asm!(
                        "tileloadd tmm4, [{upper} + {a_stride}*1]",
                        "tileloadd tmm6, [{b_left} + {b_stride}*1]",
                        "tileloadd tmm7, [{b_right} + {b_stride}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        upper = in(reg) upper,
                        b_left = in(reg) b_left,
                        b_right = in(reg) b_right,
                        a_stride = in(reg) a_stride,
                        b_stride = in(reg) ROW_BYTES,
                        options(nostack, readonly),
                    );
                }
                if two_row_tiles {
                    // The weight tiles are still in tmm6-7: no code between
                    // the two statements touches tile registers.
                    let lower = rows_bf16.at(row_start + TILE_ROWS, depth_block);
                    unsafe {
                        asm!(
                            "tileloadd tmm5, [{lower} + {a_stride}*1]",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            lower = in(reg) lower,
                            a_stride = in(reg) a_stride,
                            options(nostack, readonly),
                        );
                    }
                }
            }
            let tiles: &[(usize, usize)] =
                if two_row_tiles { &[(0, 0), (0, 1), (1, 0), (1, 1)] } else { &[(0, 0), (0, 1)] };
            for &(row_tile, column_tile) in tiles {
                let first_row = row_start + row_tile * TILE_ROWS;
                let first_column = (2 * block + column_tile) * TILE_COLUMNS;
                if first_column >= columns {
                    continue;
                }
                let whole = first_row + TILE_ROWS <= rows && first_column + TILE_COLUMNS <= columns;
                let (target, stride) = if whole {
                    (out[first_row * columns + first_column..].as_mut_ptr(), columns * 4)
                } else {
                    (spill.as_mut_ptr().cast::<f32>(), ROW_BYTES)
                };
                unsafe { store_tile(row_tile * 2 + column_tile, target, stride) };
                if !whole {
                    for (offset, spilled) in spill.iter().enumerate().take(rows.saturating_sub(first_row)) {
                        let width = (columns - first_column).min(TILE_COLUMNS);
                        let start = (first_row + offset) * columns + first_column;
                        out[start..start + width].copy_from_slice(&spilled[..width]);
                    }
                }
            }
        }
    }
    unsafe {
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Stores accumulator tile `index` (0-3) at `target`, rows `stride` bytes
/// apart.
///
/// # Safety
/// `target` must have 16 rows of 64 writable bytes, `stride` apart.
unsafe fn store_tile(index: usize, target: *mut f32, stride: usize) {
    unsafe {
        match index {
            0 => {
                asm!("tilestored [{t} + {s}*1], tmm0", t = in(reg) target, s = in(reg) stride, options(nostack))
            }
            1 => {
                asm!("tilestored [{t} + {s}*1], tmm1", t = in(reg) target, s = in(reg) stride, options(nostack))
            }
            2 => {
                asm!("tilestored [{t} + {s}*1], tmm2", t = in(reg) target, s = in(reg) stride, options(nostack))
            }
            _ => {
                asm!("tilestored [{t} + {s}*1], tmm3", t = in(reg) target, s = in(reg) stride, options(nostack))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products of every shape class (tails in rows, depth and columns)
    /// against an f64 reference on the same bf16-rounded inputs.
    #[test]
    fn products_match_a_reference_on_bf16_inputs() {
        if !available() {
            // No AMX here: the f32 path serves; `available()` is what the
            // engine asks, so there is nothing else to check.
            assert!(!cpu_has_amx_bf16() || !request_tile_state());
            return;
        }
        super::super::checks::assert_products_near_reference(
            &[(1, 32, 32), (12, 384, 1152), (17, 70, 50), (33, 1536, 384), (64, 384, 96)],
            |lhs, weight, (rows, depth, columns), parallel| {
                let packed = PackedWeight::pack(weight, depth, columns);
                let mut out = vec![f32::NAN; rows * columns];
                product(&mut out, lhs, rows, &packed, parallel);
                out
            },
            |value| f64::from(f32::from_bits(u32::from(to_bf16(value)) << 16)),
            1e-4,
        );
    }
}
