//! Which kernels the dense products run on: chosen once per engine at
//! load, by the CPU's features at run time (one binary serves every x86-64
//! CPU), or by the operator's `BLAZE_KERNELS`.

use std::fmt;

/// The kernels of the dense products, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// Intel AMX tiles, bf16 weights and rows, f32 sums (`amx.rs`).
    Amx,
    /// AVX-512 BF16, bf16 weights packed at load, rows rounded per
    /// product, f32 sums (`avx512.rs`).
    Avx512Bf16,
    /// AVX-512 VNNI on the AVX2 path's 16-bit fixed-point weights and rows,
    /// f32 sums (`vnni.rs`).
    Avx512Vnni,
    /// AVX2 and FMA, 16-bit fixed-point weights packed at load, rows
    /// scaled per product, f32 sums (`avx2.rs`).
    Avx2,
    /// f32 through the `gemm` crate (its own AVX-512, AVX2 or NEON code):
    /// every CPU.
    Generic,
}

impl Kernels {
    /// Every kind, fastest first.
    pub const ALL: [Kernels; 5] =
        [Kernels::Amx, Kernels::Avx512Bf16, Kernels::Avx512Vnni, Kernels::Avx2, Kernels::Generic];

    /// The name `BLAZE_KERNELS` takes and the start-up log gives.
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::Avx512Bf16 => "avx512bf16",
            Self::Avx512Vnni => "avx512vnni",
            Self::Avx2 => "avx2",
            Self::Generic => "generic",
        }
    }

    /// Whether this process can run them (AMX also needs the kernel's
    /// tile state and a passing self-test).
    pub fn supported(self) -> bool {
        match self {
            Self::Amx => amx_available(),
            Self::Avx512Bf16 => avx512_bf16_available(),
            Self::Avx512Vnni => avx512_vnni_available(),
            Self::Avx2 => avx2_available(),
            Self::Generic => true,
        }
    }

    /// The fastest this process can run.
    pub fn best() -> Self {
        Self::ALL.into_iter().find(|kernels| kernels.supported()).unwrap_or(Self::Generic)
    }

    /// Every kind this process can run: what the tests hold against the
    /// fixture.
    pub fn supported_here() -> Vec<Self> {
        Self::ALL.into_iter().filter(|kernels| kernels.supported()).collect()
    }

    /// The operator's choice (`BLAZE_KERNELS`: `auto`, the default, or a
    /// name), refused when unknown or when this CPU cannot run it: an
    /// override that silently fell back would measure the wrong path.
    pub fn configured() -> Result<Self, String> {
        match std::env::var("BLAZE_KERNELS") {
            Err(_) => Ok(Self::best()),
            Ok(value) => Self::parse(&value),
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("auto") {
            return Ok(Self::best());
        }
        let chosen = Self::ALL
            .into_iter()
            .find(|kernels| kernels.name().eq_ignore_ascii_case(value))
            .ok_or_else(|| {
                format!(
                    "BLAZE_KERNELS={value:?}: expected auto, amx, avx512bf16, avx512vnni, avx2 or generic"
                )
            })?;
        if chosen.supported() {
            Ok(chosen)
        } else {
            Err(format!("BLAZE_KERNELS={}: this CPU (or build) cannot run them", chosen.name()))
        }
    }
}

impl fmt::Display for Kernels {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(all(target_arch = "x86_64", not(blaze_without_amx)))]
fn amx_available() -> bool {
    super::amx::available()
}

#[cfg(not(all(target_arch = "x86_64", not(blaze_without_amx))))]
fn amx_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn avx512_bf16_available() -> bool {
    super::avx512::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_bf16_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn avx512_vnni_available() -> bool {
    super::vnni::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_vnni_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    super::avx2::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_ones_are_refused() {
        for kernels in Kernels::supported_here() {
            assert_eq!(Kernels::parse(kernels.name()), Ok(kernels));
            assert_eq!(Kernels::parse(&kernels.name().to_uppercase()), Ok(kernels));
        }
        assert_eq!(Kernels::parse("auto"), Ok(Kernels::best()));
        assert_eq!(Kernels::parse(""), Ok(Kernels::best()));
        for bad in ["avx9", "generic,avx2", "amx\0", "ａｍｘ"] {
            let problem = Kernels::parse(bad).expect_err(bad);
            assert!(
                problem.contains("expected auto, amx, avx512bf16, avx512vnni, avx2 or generic"),
                "{problem}"
            );
        }
    }

    #[test]
    fn unsupported_kernels_are_refused_not_replaced() {
        assert!(Kernels::Generic.supported());
        assert!(Kernels::supported_here().contains(&Kernels::best()));
        for kernels in Kernels::ALL.into_iter().filter(|kernels| !kernels.supported()) {
            let problem = Kernels::parse(kernels.name()).expect_err(kernels.name());
            assert!(problem.contains("cannot run"), "{problem}");
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Kernels::Avx2.supported(),
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Kernels::Avx512Bf16.supported(),
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16"),
            "the start-up check passes wherever the features are"
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Kernels::Avx512Vnni.supported(),
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
                && Kernels::Avx2.supported()
        );
    }
}
