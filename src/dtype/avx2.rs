//! Block conversions with AVX2 + F16C (x86-64), bitwise equal to the scalar ones of
//! [`super::convert`] for every input, NaN included (the tests below compare them).
//!
//! Only AVX2 and F16C: their intrinsics are stable since Rust 1.68, within the crate's
//! MSRV 1.80; AVX-512 target features need 1.89, and AVX-512 FP16's direct f64 → f16
//! (`vcvtpd2ph`) is not stable at all.
//!
//! # Widening
//! bf16: the bits shifted into an f32 (exact); f16: `vcvtph2ps` (exact, subnormals
//! included); then `vcvtps2pd`. A signalling NaN comes out quiet, as in the scalar code.
//!
//! # Narrowing f64 → f16 with one rounding
//! The scalar route: round f64 → f32 to odd, then f32 → 16 bits to nearest even. Here the
//! odd rounding works on the f64's bits: clear the 29 fraction bits an f32 does not keep
//! and, when any was set, set the last kept one. For `2^-126 ≤ |x| < 2^128` that is an f32
//! value, equal to `f64_to_f32_odd(x)`, so `vcvtpd2ps` converts it without rounding.
//! Outside that range the f32 may differ from the scalar one, never the f16 result:
//! - `|x| ≥ 2^128` (finite): ±Inf here, ±`f32::MAX` in the scalar code; both round to ±Inf.
//! - `|x| < 2^-126`: `vcvtpd2ps` rounds a second time (to f32's subnormal grid). Every such
//!   value is ±0 in f16 either way (f16's smallest half-ulp is 2^-25).
//! - NaN: the kept bit may set the f32 payload's last bit; f16 drops the payload.
//!
//! f32 → f16 is `vcvtps2ph` (nearest even, subnormals exact, ≥ 65520 → Inf); it keeps NaN
//! payload bits, which are cleared to the scalar code's `sign | 0x7e00`.
//!
//! # Narrowing f64 → bf16
//! Two roundings to nearest even, f64 → f32 (`vcvtpd2ps`) → bf16 (the scalar code's
//! integer rounding on 8 lanes), which equal the one rounding except on an f32 exactly
//! halfway between two bf16 values; such a block, and one with a NaN lane, is rounded by
//! the scalar code instead (`narrow_bf16` says why that suffices).

use super::convert::{Convert, BLOCK};
use std::arch::x86_64::*;

/// Proof that this CPU has AVX2 and F16C: made only by [`Avx2F16c::detect`], so holding
/// one is what makes its block conversions sound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F16c(());

impl Avx2F16c {
    /// `Some` when the CPU has AVX2 and F16C (every AVX2 CPU sold has F16C).
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")).then_some(Self(()))
    }
}

impl Convert for Avx2F16c {
    #[inline(always)]
    fn widen_bf16(self, h: &[u16; BLOCK]) -> [f64; BLOCK] {
        // SAFETY: `self` exists only on a CPU with AVX2 and F16C.
        unsafe { widen_bf16(h) }
    }

    #[inline(always)]
    fn widen_f16(self, h: &[u16; BLOCK]) -> [f64; BLOCK] {
        // SAFETY: as above.
        unsafe { widen_f16(h) }
    }

    #[inline(always)]
    fn narrow_bf16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]) -> bool {
        // SAFETY: as above.
        unsafe { narrow_bf16(x, out) }
    }

    #[inline(always)]
    fn narrow_f16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]) {
        // SAFETY: as above.
        unsafe { narrow_f16(x, out) }
    }
}

/// Two f64 vectors as one array (LLVM keeps it in registers once inlined).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn to_array(lo: __m256d, hi: __m256d) -> [f64; BLOCK] {
    let mut out = [0.0; BLOCK];
    _mm256_storeu_pd(out.as_mut_ptr(), lo);
    _mm256_storeu_pd(out.as_mut_ptr().add(4), hi);
    out
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_bf16(h: &[u16; BLOCK]) -> [f64; BLOCK] {
    let v = _mm_loadu_si128(h.as_ptr().cast());
    let z = _mm_setzero_si128();
    // Each 32-bit lane `h << 16`: the f32 of the same value.
    let lo = _mm_castsi128_ps(_mm_unpacklo_epi16(z, v));
    let hi = _mm_castsi128_ps(_mm_unpackhi_epi16(z, v));
    to_array(_mm256_cvtps_pd(lo), _mm256_cvtps_pd(hi))
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16(h: &[u16; BLOCK]) -> [f64; BLOCK] {
    let f = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()));
    to_array(
        _mm256_cvtps_pd(_mm256_castps256_ps128(f)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(f)),
    )
}

/// Four f64 rounded to odd at f32's precision, converted to f32 (exact for
/// `2^-126 ≤ |x| < 2^128`; the module docs say what the other lanes hold).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn odd_f32x4(x: __m256d) -> __m128 {
    let dropped = _mm256_set1_epi64x((1 << 29) - 1);
    let bits = _mm256_castpd_si256(x);
    let exact = _mm256_cmpeq_epi64(_mm256_and_si256(bits, dropped), _mm256_setzero_si256());
    let sticky = _mm256_andnot_si256(exact, _mm256_set1_epi64x(1 << 29));
    let odd = _mm256_or_si256(_mm256_andnot_si256(dropped, bits), sticky);
    _mm256_cvtpd_ps(_mm256_castsi256_pd(odd))
}

/// [`odd_f32x4`] over a block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn odd_f32(x: &[f64; BLOCK]) -> __m256 {
    let lo = odd_f32x4(_mm256_loadu_pd(x.as_ptr()));
    let hi = odd_f32x4(_mm256_loadu_pd(x.as_ptr().add(4)));
    _mm256_set_m128(hi, lo)
}

/// vcvtps2ph's f16 bits, NaN payloads as the instruction leaves them.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_lanes(x: &[f64; BLOCK]) -> __m128i {
    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(odd_f32(x))
}

/// vcvtps2ph's NaN lanes (magnitude above Inf's 0x7c00) with the payload cleared, leaving
/// the scalar code's `sign | 0x7e00` (the f32s here are quiet NaNs, so 0x0200 is set).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn f16_canonical_nan(h: __m128i) -> __m128i {
    let mag = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
    let nan = _mm_cmpgt_epi16(mag, _mm_set1_epi16(0x7c00));
    _mm_andnot_si128(_mm_and_si128(nan, _mm_set1_epi16(0x01ff)), h)
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn narrow_f16(x: &[f64; BLOCK], out: &mut [u16; BLOCK]) {
    let h = f16_canonical_nan(f16_lanes(x));
    _mm_storeu_si128(out.as_mut_ptr().cast(), h);
}

/// The f32s of a block rounded to nearest even (`vcvtpd2ps`: one rounding, to f32's grid
/// subnormals included, ≥ 2^128 after rounding gives ±Inf).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn nearest_f32(x: &[f64; BLOCK]) -> __m256i {
    let lo = _mm256_cvtpd_ps(_mm256_loadu_pd(x.as_ptr()));
    let hi = _mm256_cvtpd_ps(_mm256_loadu_pd(x.as_ptr().add(4)));
    _mm256_castps_si256(_mm256_set_m128(hi, lo))
}

/// Lanes (all-ones) the two roundings of [`narrow_bf16`] may get wrong: an f32 exactly
/// halfway between two bf16 values (low 16 bits `0x8000`), or NaN.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn bf16_unsure_lanes(u: __m256i) -> __m256i {
    let low = _mm256_and_si256(u, _mm256_set1_epi32(0xffff));
    let halfway = _mm256_cmpeq_epi32(low, _mm256_set1_epi32(0x8000));
    let mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
    let nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7f80_0000));
    _mm256_or_si256(halfway, nan)
}

/// bf16 bits of finite or infinite f32 bits, rounded to nearest even (the scalar
/// `f32_to_bf16_bits` without its NaN case).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn bf16_nearest_lanes(u: __m256i) -> __m128i {
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
    let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
    let r = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
    // Every lane is ≤ 0xffff: the unsigned-saturating pack is exact.
    _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r))
}

/// f64 → bf16 as two roundings to nearest even, f64 → f32 → bf16: one instruction and a
/// few integer operations where the odd rounding of [`f16_lanes`] needs a dozen. Two
/// roundings give the one-rounding result unless the f32 lands exactly halfway between two
/// bf16 values: the grids are nested (every bf16 value and every bf16 halfway point is an
/// f32, subnormals included), so rounding to f32 keeps `x` on its side of each of them,
/// and only an f32 *on* a halfway point loses which side `x` was on. Such a block (and a
/// block with a NaN lane, whose rounding add would carry) returns `false`, nothing
/// written, and the caller rounds it with the scalar code: for data that is not built
/// from ties, one block in about 2^13.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn narrow_bf16(x: &[f64; BLOCK], out: &mut [u16; BLOCK]) -> bool {
    let u = nearest_f32(x);
    let unsure = bf16_unsure_lanes(u);
    if _mm256_testz_si256(unsure, unsure) == 0 {
        return false;
    }
    _mm_storeu_si128(out.as_mut_ptr().cast(), bf16_nearest_lanes(u));
    true
}

#[cfg(test)]
mod tests {
    use super::super::convert::check;
    use super::super::convert::{f64_to_bf16_bits, f64_to_f16_bits};
    use super::*;

    fn isa() -> Option<Avx2F16c> {
        let isa = Avx2F16c::detect();
        if isa.is_none() {
            println!("SKIP: this CPU lacks AVX2 or F16C");
        }
        isa
    }

    #[test]
    fn widening_is_exhaustively_equal() {
        let Some(isa) = isa() else { return };
        check::widening_equals_scalar(isa);
    }

    #[test]
    fn narrowing_equals_scalar_bitwise() {
        let Some(isa) = isa() else { return };
        check::narrowing_equals_scalar(isa);
    }

    /// The inputs of `check` reach the cases the fix-ups exist for: without them the
    /// vector results differ (so the comparison can fail), with them they agree; and a
    /// bf16 lane that the two roundings get wrong is always one the check sends to the
    /// scalar code.
    #[test]
    fn fixups_are_needed_and_sufficient() {
        let Some(_) = isa() else { return };
        let xs = check::narrowing_inputs();
        let (mut payload_kept, mut double_rounded, mut unsure_blocks) = (0, 0, 0);
        for x in xs.chunks_exact(BLOCK) {
            let x: &[f64; BLOCK] = x.try_into().expect("block");
            let mut raw16 = [0u16; BLOCK];
            let mut rawb = [0u16; BLOCK];
            let mut unsure = [0u32; BLOCK];
            // SAFETY: `isa()` found AVX2 and F16C.
            unsafe {
                let u = nearest_f32(x);
                _mm_storeu_si128(raw16.as_mut_ptr().cast(), f16_lanes(x));
                _mm_storeu_si128(rawb.as_mut_ptr().cast(), bf16_nearest_lanes(u));
                _mm256_storeu_si256(unsure.as_mut_ptr().cast(), bf16_unsure_lanes(u));
            }
            unsure_blocks += usize::from(unsure.iter().any(|&m| m != 0));
            for l in 0..BLOCK {
                payload_kept += usize::from(raw16[l] != f64_to_f16_bits(x[l]));
                if rawb[l] != f64_to_bf16_bits(x[l]) {
                    // Only a lane on a bf16 halfway point, or a NaN, may differ before
                    // the fallback.
                    assert!(unsure[l] != 0, "{:e} ({:#018x})", x[l], x[l].to_bits());
                    double_rounded += usize::from(!x[l].is_nan());
                }
            }
        }
        assert!(payload_kept > 0, "no NaN payload reached vcvtps2ph");
        assert!(
            double_rounded > 0,
            "no bf16 double rounding case in the inputs"
        );
        assert!(unsure_blocks > 0);
        println!(
            "raw differences: f16 NaN payloads {payload_kept}, bf16 double roundings \
             {double_rounded}, blocks sent to the scalar code {unsure_blocks}"
        );
    }
}
