//! Exact conversions between the element types and f64, one element at a time and in
//! blocks of [`BLOCK`] elements.
//!
//! The scalar functions here are the definition: every other implementation (the AVX2 +
//! F16C blocks of [`super::simd`]) must give their bits for every input, NaN included.
//!
//! # What a NaN becomes
//! - Widening keeps NaN-ness and the payload; a signalling NaN comes out quiet (the f32 →
//!   f64 conversion quiets it).
//! - Narrowing to f16 gives the canonical quiet NaN `sign | 0x7e00` (payload dropped).
//! - Narrowing to bf16 gives the top 16 bits of the f32 NaN that `x as f32` makes, with the
//!   quiet bit set: `sign | 0x7fc0 | the payload's top 6 bits`.

use super::{DType, Element};

/// Elements per block: one 128-bit load of 16-bit elements, two 256-bit f64 vectors.
pub(crate) const BLOCK: usize = 8;

/// f64 → f32 rounded to odd: the f32 toward zero with its last bit set when inexact. A
/// second rounding of that to a format with ≥ 2 fewer significand bits (f16: 11, bf16: 8)
/// is the correctly rounded f64 result (the same trick as the CUDA kernels).
#[inline(always)]
pub(crate) fn f64_to_f32_odd(x: f64) -> f32 {
    // Branch-free (selects only), so that loops over it vectorise.
    let f = x as f32;
    let back = f as f64;
    let inexact = (back != x) & !x.is_nan();
    let toward_zero = (back.abs() > x.abs()) & inexact;
    f32::from_bits((f.to_bits() - toward_zero as u32) | inexact as u32)
}

/// f32 → bf16 bits, round to nearest even (NaN stays a quiet NaN, overflow gives ±Inf).
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(f: f32) -> u16 {
    let u = f.to_bits();
    let rounded = (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((u >> 16) | 0x0040) as u16;
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

/// f32 → f16 bits, round to nearest even (NaN → quiet NaN, ≥ 65520 → ±Inf, subnormals
/// rounded exactly). Every candidate is computed, then one is selected (vectorisable).
#[inline(always)]
pub(crate) fn f32_to_f16_bits(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = (x >> 16) & 0x8000;
    let ax = x & 0x7fff_ffff;
    // Below 2^-14: the subnormal mantissa is |f|·2^24 rounded to nearest even (adding and
    // removing 2^23 rounds an f32 below 2^23 to an integer, ties to even).
    let v = f32::from_bits(ax.min(0x3880_0000)) * 16_777_216.0;
    let sub = ((v + 8_388_608.0) - 8_388_608.0) as u32;
    let m = ax.wrapping_sub(112 << 23);
    let normal = m.wrapping_add(0x0fff + ((m >> 13) & 1)) >> 13;
    let mag = if ax > 0x7f80_0000 {
        0x7e00
    } else if ax >= 0x477f_f000 {
        0x7c00
    } else if ax < 0x3880_0000 {
        sub
    } else {
        normal
    };
    (sign | mag) as u16
}

/// f64 → f16 bits with one rounding (to odd through f32, then to nearest even).
#[inline(always)]
pub(crate) fn f64_to_f16_bits(x: f64) -> u16 {
    f32_to_f16_bits(f64_to_f32_odd(x))
}

/// f64 → bf16 bits with one rounding (to odd through f32, then to nearest even).
#[inline(always)]
pub(crate) fn f64_to_bf16_bits(x: f64) -> u16 {
    f32_to_bf16_bits(f64_to_f32_odd(x))
}

/// Exact f16 → f32 in integer arithmetic (branch-free selects): normals by rebiasing the
/// exponent, subnormals as `mantissa · 2^-24` (a normal f32: no denormal operand ever, whose
/// microcode assists made the float-multiply version 8× slower), Inf/NaN kept.
#[inline(always)]
pub(crate) fn f16_bits_to_f32_bits(h: u16) -> u32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let normal = (em << 13) + (112 << 23);
    let sub = (em as f32 * f32::from_bits(0x3380_0000)).to_bits(); // em · 2^-24, em < 1024
    let special = (em << 13) | 0x7f80_0000;
    let bits = if em >= 0x7c00 {
        special
    } else if em >= 0x0400 {
        normal
    } else {
        sub
    };
    bits | sign
}

/// Exact widening of one element to f64, vectorisable (no runtime feature checks, no
/// branches): f32 by a cast, bf16 by a shift, f16 through f32 bits. (`half`'s own
/// conversions check CPU features per element and do not vectorise.)
#[inline(always)]
pub(crate) fn widen<T: Element>(x: T) -> f64 {
    match T::DTYPE {
        DType::F32 => bytemuck::cast::<T, f32>(x) as f64,
        DType::BF16 => f32::from_bits((bytemuck::cast::<T, u16>(x) as u32) << 16) as f64,
        DType::F16 => f32::from_bits(f16_bits_to_f32_bits(bytemuck::cast::<T, u16>(x))) as f64,
    }
}

/// One rounding from f64 to `T` ([`Element::from_f64`]).
#[inline(always)]
pub(crate) fn narrow<T: Element>(x: f64) -> T {
    T::from_f64(x)
}

/// Block conversions of one instruction-set level. Every implementation gives, lane by
/// lane, the bits of [`widen`] and [`narrow`].
pub(crate) trait Convert: Copy {
    /// Exact widening of [`BLOCK`] elements.
    fn widen_block<T: Element>(self, s: &[T; BLOCK]) -> [f64; BLOCK];
    /// One rounding of [`BLOCK`] values to `T`, written to `out`.
    fn narrow_block<T: Element>(self, x: &[f64; BLOCK], out: &mut [T; BLOCK]);
}

/// The portable level: the scalar functions lane by lane (left to LLVM's vectoriser).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

impl Convert for Scalar {
    #[inline(always)]
    fn widen_block<T: Element>(self, s: &[T; BLOCK]) -> [f64; BLOCK] {
        std::array::from_fn(|l| widen(s[l]))
    }

    #[inline(always)]
    fn narrow_block<T: Element>(self, x: &[f64; BLOCK], out: &mut [T; BLOCK]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = narrow::<T>(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// `half`'s conversions, for the tests' cross-checks.
    fn half_to_f32<T: Element>(x: T) -> f32 {
        match T::DTYPE {
            DType::F32 => bytemuck::cast::<T, f32>(x),
            DType::BF16 => bytemuck::cast::<T, bf16>(x).to_f32(),
            DType::F16 => bytemuck::cast::<T, f16>(x).to_f32(),
        }
    }

    /// Every f16 and bf16 widens exactly: equal to `half`'s conversion, and NaN keeps its
    /// payload (only the quiet bit may be added).
    #[test]
    fn widening_is_exact() {
        for h in 0..=u16::MAX {
            let a = f32::from_bits(f16_bits_to_f32_bits(h));
            let b = half_to_f32(f16::from_bits(h));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "f16 {h:#x}"
            );
            let w = widen(f16::from_bits(h));
            assert!(w.to_bits() == (a as f64).to_bits(), "f16 {h:#x} to f64");
            if a.is_nan() {
                // Payload kept: the f16 fraction is the top 10 bits of the f64 fraction
                // (bit 9, the quiet bit, is set by the widening).
                let frac = (w.to_bits() >> 42) & 0x3ff;
                assert_eq!(frac, (h as u64 & 0x3ff) | 0x200, "f16 NaN {h:#x}");
            }
            let w = widen(bf16::from_bits(h));
            let b = half_to_f32(bf16::from_bits(h));
            assert!(
                w.to_bits() == (b as f64).to_bits() || (w.is_nan() && b.is_nan()),
                "bf16 {h:#x}"
            );
        }
    }
}
