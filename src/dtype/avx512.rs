//! Block conversions with AVX-512 (F, BW, VL) and F16C (x86-64), bitwise equal to the
//! scalar ones of [`super::convert`] for every input, NaN included (the tests below compare
//! them, as for [`super::avx2`]).
//!
//! Compiled only with the cfg `redreg_avx512`, which `build.rs` sets when the compiler
//! accepts AVX-512 intrinsics (Rust ≥ 1.89, above the crate's MSRV 1.80).
//!
//! # Why a level of its own
//! A block of 8 elements is one 512-bit f64 vector: the kernels' f64 arithmetic, compiled
//! for this level, takes half the instructions of the AVX2 copy, and there are 32 vector
//! registers instead of 16 (the AVX2 copy of pass 2 reloads its constants every block).
//! The conversions are the AVX2 ones rewritten on one vector per block, with mask
//! registers for the lane tests:
//! - widening: bf16 into the high half of each f32 by one `vpshufb` of the block loaded
//!   into both 128-bit halves (a load and one shuffle; the zero-extend and shift it replaced
//!   were two instructions, and the bf16 drift step's 6 widenings per block made them 5–7 %
//!   of its time in cache), f16 by `vcvtph2ps`, then one `vcvtps2pd` to 8 f64;
//! - f64 → f16: the odd rounding of [`super::avx2`] (clear the 29 fraction bits an f32 does
//!   not keep, set the last kept one when any was set) on one vector, `vcvtpd2ps`,
//!   `vcvtps2ph`, NaN payloads cleared; the module docs of [`super::avx2`] say why the
//!   result is the one rounding for every input;
//! - f64 → bf16: two roundings to nearest even, f64 → f32 → bf16, with the blocks that have
//!   an f32 exactly halfway between two bf16 values (or a NaN) rounded by the scalar code,
//!   as in [`super::avx2`].
//!
//! # The BF16 level
//! Where the CPU also has AVX-512 BF16 and DQ ([`Avx512Bf16`]), the second rounding of
//! f64 → bf16 is one `vcvtneps2bf16`, which rounds to nearest even like the integer code
//! it replaces (five integer instructions and a `vpmovdw` per block), except that it reads a
//! subnormal f32 as zero. So the block also goes to the scalar code when its f32 has a
//! subnormal lane: one `vfpclassps` finds those and the NaNs together (it replaces the NaN
//! compare). In cache this took a bf16 drift step from 0.26 to 0.24 ms on this project's
//! VM (docs/benchmarks.md).

// Only compiled by a compiler that has these intrinsics (the cfg above), whatever the MSRV.
#![allow(clippy::incompatible_msrv)]

use super::avx2::f16_canonical_nan;
use super::convert::{Convert, BLOCK};
use std::arch::x86_64::*;

/// Proof that this CPU has AVX-512 F, BW and VL, AVX2 and F16C — and, with `BF16`,
/// AVX-512 BF16 and DQ: made only by `detect`, so holding one is what makes its block
/// conversions sound. The two levels differ only in f64 → bf16's second rounding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512<const BF16: bool = false>(());

/// The AVX-512 level with BF16 and DQ (module docs).
pub(crate) type Avx512Bf16 = Avx512<true>;

impl<const BF16: bool> Avx512<BF16> {
    /// `Some` when the CPU has every feature this level uses.
    pub(crate) fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("f16c")
            && (!BF16
                || is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512dq")))
        .then_some(Self(()))
    }
}

impl<const BF16: bool> Convert for Avx512<BF16> {
    #[inline(always)]
    fn widen_bf16(self, h: &[u16; BLOCK]) -> [f64; BLOCK] {
        // SAFETY: `self` exists only on a CPU with AVX-512 F/BW/VL and F16C.
        unsafe { widen_bf16(h) }
    }

    #[inline(always)]
    fn widen_f16(self, h: &[u16; BLOCK]) -> [f64; BLOCK] {
        // SAFETY: as above.
        unsafe { widen_f16(h) }
    }

    #[inline(always)]
    fn narrow_bf16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]) -> bool {
        if BF16 {
            // SAFETY: as above, and with `BF16` the CPU also has AVX-512 BF16 and DQ.
            unsafe { narrow_bf16_ne(x, out) }
        } else {
            // SAFETY: as above.
            unsafe { narrow_bf16(x, out) }
        }
    }

    #[inline(always)]
    fn narrow_f16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]) {
        // SAFETY: as above.
        unsafe { narrow_f16(x, out) }
    }
}

/// One f64 vector as an array (LLVM keeps it in a register once inlined).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn to_array(v: __m512d) -> [f64; BLOCK] {
    let mut out = [0.0; BLOCK];
    _mm512_storeu_pd(out.as_mut_ptr(), v);
    out
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn widen_bf16(h: &[u16; BLOCK]) -> [f64; BLOCK] {
    // Each 32-bit lane `h << 16`, the f32 of the same value: lane i takes bytes 2i and
    // 2i + 1 into its high half (the upper 128-bit half reads its copy's bytes 8..16).
    let b = _mm256_broadcastsi128_si256(_mm_loadu_si128(h.as_ptr().cast()));
    let ctrl = _mm256_setr_epi8(
        -1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7, -1, -1, 8, 9, -1, -1, 10, 11, -1,
        -1, 12, 13, -1, -1, 14, 15,
    );
    let u = _mm256_shuffle_epi8(b, ctrl);
    to_array(_mm512_cvtps_pd(_mm256_castsi256_ps(u)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn widen_f16(h: &[u16; BLOCK]) -> [f64; BLOCK] {
    to_array(_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(
        h.as_ptr().cast(),
    ))))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn narrow_f16(x: &[f64; BLOCK], out: &mut [u16; BLOCK]) {
    let dropped = _mm512_set1_epi64((1 << 29) - 1);
    let bits = _mm512_castpd_si512(_mm512_loadu_pd(x.as_ptr()));
    // Lanes with a dropped bit set get the last kept bit set: rounded to odd.
    let inexact = _mm512_test_epi64_mask(bits, dropped);
    let kept = _mm512_andnot_si512(dropped, bits);
    let odd = _mm512_mask_or_epi64(kept, inexact, kept, _mm512_set1_epi64(1 << 29));
    let f = _mm512_cvtpd_ps(_mm512_castsi512_pd(odd));
    let mut h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(f);
    // The NaN fix-up only for a block with a NaN, found from the input (off the chain of
    // roundings): four dependent instructions after `vcvtps2ph` in every block cost an f16
    // drift step 4 % in cache.
    if _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(_mm512_castsi512_pd(bits), _mm512_castsi512_pd(bits)) != 0
    {
        h = f16_canonical_nan(h);
    }
    _mm_storeu_si128(out.as_mut_ptr().cast(), h);
}

/// f64 → bf16 as two roundings to nearest even (see `narrow_bf16` of [`super::avx2`] for
/// why they equal the one rounding except on an f32 exactly halfway between two bf16
/// values). Returns `false`, nothing written, for a block with such a lane or a NaN.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn narrow_bf16(x: &[f64; BLOCK], out: &mut [u16; BLOCK]) -> bool {
    let v = _mm512_loadu_pd(x.as_ptr());
    let u = _mm256_castps_si256(_mm512_cvtpd_ps(v));
    let halfway = _mm256_cmpeq_epi32_mask(
        _mm256_and_si256(u, _mm256_set1_epi32(0xffff)),
        _mm256_set1_epi32(0x8000),
    );
    let nan = _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(v, v);
    if (halfway | nan) != 0 {
        return false;
    }
    // Round to nearest even on the bits (finite or infinite lanes only, as checked):
    // `(u + 0x7fff + lsb) >> 16`, each lane ≤ 0xffff, truncated to 16 bits exactly.
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
    let r = _mm256_srli_epi32::<16>(_mm256_add_epi32(
        u,
        _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb),
    ));
    _mm_storeu_si128(out.as_mut_ptr().cast(), _mm256_cvtepi32_epi16(r));
    true
}

/// [`narrow_bf16`] with the second rounding by `vcvtneps2bf16` (module docs). Returns
/// `false`, nothing written, for a block with an f32 exactly halfway between two bf16
/// values, a NaN or a subnormal f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512dq,avx2,f16c")]
unsafe fn narrow_bf16_ne(x: &[f64; BLOCK], out: &mut [u16; BLOCK]) -> bool {
    let f = _mm512_cvtpd_ps(_mm512_loadu_pd(x.as_ptr()));
    let halfway = _mm256_cmpeq_epi32_mask(
        _mm256_and_si256(_mm256_castps_si256(f), _mm256_set1_epi32(0xffff)),
        _mm256_set1_epi32(0x8000),
    );
    // 0x01 quiet NaN, 0x80 signalling NaN, 0x20 subnormal.
    let special = _mm256_fpclass_ps_mask::<0xa1>(f);
    if (halfway | special) != 0 {
        return false;
    }
    let b = _mm256_cvtneps_pbh(f);
    _mm_storeu_si128(
        out.as_mut_ptr().cast(),
        std::mem::transmute::<__m128bh, __m128i>(b),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::super::convert::check;
    use super::*;

    fn isa<const BF16: bool>() -> Option<Avx512<BF16>> {
        let isa = Avx512::<BF16>::detect();
        if isa.is_none() {
            let bf16 = if BF16 { ", BF16 or DQ" } else { "" };
            println!("SKIP: this CPU lacks AVX-512 F/BW/VL or F16C{bf16}");
        }
        isa
    }

    /// Both levels widen with the same code.
    #[test]
    fn widening_is_exhaustively_equal() {
        let Some(isa) = isa::<false>() else { return };
        check::widening_equals_scalar(isa);
    }

    #[test]
    fn narrowing_equals_scalar_bitwise() {
        let Some(isa) = isa::<false>() else { return };
        check::narrowing_equals_scalar(isa);
    }

    #[test]
    fn bf16_level_narrowing_equals_scalar_bitwise() {
        let Some(isa) = isa::<true>() else { return };
        check::narrowing_equals_scalar(isa);
    }
}
