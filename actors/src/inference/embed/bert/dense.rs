//! The dense products of the forward pass: a linear layer's weight in the
//! form its products run on.

#[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
use crate::inference::embed::amx;
use crate::inference::embed::Kernels;
#[cfg(target_arch = "x86_64")]
use crate::inference::embed::{avx2, avx512, vnni};

/// A linear layer's `[in, out]` weight, in the form its kernels read: bf16
/// tiles for AMX, bf16 panels for AVX-512 BF16, 16-bit fixed-point panels
/// for AVX-512 VNNI and AVX2, f32 for `gemm`.
pub(super) enum Dense {
    F32 {
        weight: Vec<f32>,
        depth: usize,
        columns: usize,
    },
    #[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
    Amx(amx::PackedWeight),
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16(avx512::PackedBf16),
    /// The AVX2 panels, read by the AVX-512 VNNI kernels.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni(avx2::PackedFixed),
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::PackedFixed),
}

impl Dense {
    /// The weight packed for `kernels`, which the caller has checked this
    /// CPU runs ([`Kernels::supported`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, reason = "one path on other CPUs"))]
    pub(super) fn new(weight: Vec<f32>, depth: usize, columns: usize, kernels: Kernels) -> Self {
        // Not a match: on other CPUs it would have one wildcard arm.
        #[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
        if kernels == Kernels::Amx {
            return Self::Amx(amx::PackedWeight::pack(&weight, depth, columns));
        }
        #[cfg(target_arch = "x86_64")]
        if kernels == Kernels::Avx512Bf16 {
            return Self::Avx512Bf16(avx512::PackedBf16::pack(&weight, depth, columns));
        }
        #[cfg(target_arch = "x86_64")]
        if kernels == Kernels::Avx512Vnni {
            return Self::Avx512Vnni(avx2::PackedFixed::pack(&weight, depth, columns));
        }
        #[cfg(target_arch = "x86_64")]
        if kernels == Kernels::Avx2 {
            return Self::Avx2(avx2::PackedFixed::pack(&weight, depth, columns));
        }
        Self::F32 { weight, depth, columns }
    }

    /// Bytes the weight takes in this form.
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Self::F32 { weight, .. } => super::weights::float_bytes(weight),
            #[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
            Self::Amx(packed) => packed.bytes(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16(packed) => packed.bytes(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni(packed) | Self::Avx2(packed) => packed.bytes(),
        }
    }

    /// `out[rows, out] = lhs[rows, in] · weight`.
    pub(super) fn apply(&self, out: &mut [f32], lhs: &[f32], rows: usize, parallelism: gemm::Parallelism) {
        match self {
            Self::F32 { weight, depth, columns } => {
                matmul(out, lhs, weight, rows, *depth, *columns, parallelism)
            }
            #[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
            Self::Amx(packed) => {
                amx::product(out, lhs, rows, packed, !matches!(parallelism, gemm::Parallelism::None))
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16(packed) => {
                avx512::product(out, lhs, rows, packed, !matches!(parallelism, gemm::Parallelism::None))
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni(packed) => {
                vnni::product(out, lhs, rows, packed, !matches!(parallelism, gemm::Parallelism::None))
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx2(packed) => {
                avx2::product(out, lhs, rows, packed, !matches!(parallelism, gemm::Parallelism::None))
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
