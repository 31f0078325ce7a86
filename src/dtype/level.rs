//! The CPU's instruction-set levels, detected once per process: which block conversions
//! ([`super::convert::Convert`]) and which target features the CPU loops may use. The
//! projection's kernels (`src/project/cpu_kernels.rs`) and the optimizer's pass
//! (`src/optim/cpu.rs`) both dispatch on [`level`]; every level gives the same bits.

#[cfg(target_arch = "x86_64")]
use super::avx2::Avx2F16c;
#[cfg(all(target_arch = "x86_64", redreg_avx512))]
use super::avx512::{Avx512, Avx512Bf16};
use std::sync::OnceLock;

/// An instruction-set level of this machine: what the CPU loops may use.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Level {
    /// Baseline x86-64 (or any other architecture).
    Base,
    /// AVX2 and F16C, proven present by the token.
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2F16c),
    /// AVX-512 F/BW/VL (and AVX2, F16C), proven present by the token.
    #[cfg(all(target_arch = "x86_64", redreg_avx512))]
    Avx512(Avx512),
    /// AVX-512 as above with BF16 and DQ (f64 → bf16 by `vcvtneps2bf16`), proven present by
    /// the token.
    #[cfg(all(target_arch = "x86_64", redreg_avx512))]
    Avx512Bf16(Avx512Bf16),
}

/// The best instruction-set level of this machine (std caches the CPU's features), capped
/// by the environment variable `REDREG_CPU_LEVEL` = `base`, `avx2`, `avx512` or `avx512bf16`
/// (read once per process), so that the tests and benchmarks can run every level one machine
/// has. A level the CPU lacks (or this build lacks, the AVX-512 ones without the cfg
/// `redreg_avx512`) is
/// never used; other values mean no cap. Every level gives the same bits, so the variable
/// changes speed only.
#[inline]
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("REDREG_CPU_LEVEL").as_deref() {
            Ok("base") => 0,
            Ok("avx2") => 1,
            Ok("avx512") => 2,
            _ => 3,
        };
        levels_capped(cap).pop().unwrap_or(Level::Base)
    })
}

/// Every level this machine has up to `cap` (0 base, 1 AVX2, 2 AVX-512, 3 AVX-512 with
/// BF16), baseline first.
fn levels_capped(cap: u8) -> Vec<Level> {
    let mut out = vec![Level::Base];
    #[cfg(target_arch = "x86_64")]
    {
        out.extend(Avx2F16c::detect().filter(|_| cap >= 1).map(Level::Avx2));
        #[cfg(redreg_avx512)]
        out.extend(Avx512::detect().filter(|_| cap >= 2).map(Level::Avx512));
        #[cfg(redreg_avx512)]
        out.extend(
            Avx512Bf16::detect()
                .filter(|_| cap >= 3)
                .map(Level::Avx512Bf16),
        );
    }
    let _ = cap;
    out
}

/// Every level this machine has, baseline first (for the tests that compare them).
#[cfg(test)]
pub(crate) fn levels() -> Vec<Level> {
    levels_capped(u8::MAX)
}
