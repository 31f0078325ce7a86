//! Exact conversions between the element types and f64, one element at a time and in
//! blocks of [`BLOCK`] elements.
//!
//! The scalar functions here are the definition: every other implementation (the blocks
//! of [`super::avx2`]) must give their bits for every input, NaN included (`check`).
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
/// lane, the bits of [`widen`] and [`narrow`]. A level implements the 16-bit conversions;
/// the dispatch on the element type, f32 (a plain cast LLVM vectorises at every level) and
/// the scalar rounding of the bf16 blocks a level leaves to it are here, once.
pub(crate) trait Convert: Copy {
    /// Exact widening of [`BLOCK`] bf16 values (bits).
    fn widen_bf16(self, h: &[u16; BLOCK]) -> [f64; BLOCK];
    /// Exact widening of [`BLOCK`] f16 values (bits).
    fn widen_f16(self, h: &[u16; BLOCK]) -> [f64; BLOCK];
    /// One rounding of [`BLOCK`] values to bf16 bits; `false`, nothing written, for a block
    /// this level leaves to the scalar code.
    fn narrow_bf16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]) -> bool;
    /// One rounding of [`BLOCK`] values to f16 bits.
    fn narrow_f16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]);

    /// Exact widening of [`BLOCK`] elements.
    #[inline(always)]
    fn widen_block<T: Element>(self, s: &[T; BLOCK]) -> [f64; BLOCK] {
        match T::DTYPE {
            DType::F32 => std::array::from_fn(|l| widen(s[l])),
            DType::BF16 => self.widen_bf16(bytemuck::cast_ref(s)),
            DType::F16 => self.widen_f16(bytemuck::cast_ref(s)),
        }
    }

    /// One rounding of [`BLOCK`] values to `T`, written to `out`.
    #[inline(always)]
    fn narrow_block<T: Element>(self, x: &[f64; BLOCK], out: &mut [T; BLOCK]) {
        match T::DTYPE {
            DType::F32 => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = narrow::<T>(v);
                }
            }
            DType::BF16 => {
                let out: &mut [u16; BLOCK] = bytemuck::cast_mut(out);
                if !self.narrow_bf16(x, out) {
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = f64_to_bf16_bits(v);
                    }
                }
            }
            DType::F16 => self.narrow_f16(x, bytemuck::cast_mut(out)),
        }
    }
}

/// The portable level: the scalar functions lane by lane (left to LLVM's vectoriser).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

impl Convert for Scalar {
    #[inline(always)]
    fn widen_bf16(self, h: &[u16; BLOCK]) -> [f64; BLOCK] {
        std::array::from_fn(|l| widen(half::bf16::from_bits(h[l])))
    }

    #[inline(always)]
    fn widen_f16(self, h: &[u16; BLOCK]) -> [f64; BLOCK] {
        std::array::from_fn(|l| widen(half::f16::from_bits(h[l])))
    }

    #[inline(always)]
    fn narrow_bf16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]) -> bool {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f64_to_bf16_bits(v);
        }
        true
    }

    #[inline(always)]
    fn narrow_f16(self, x: &[f64; BLOCK], out: &mut [u16; BLOCK]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f64_to_f16_bits(v);
        }
    }
}

/// Checks every [`Convert`] implementation must pass: the scalar code's bits, for every
/// input (the implementations' own tests call them with their token).
#[cfg(test)]
pub(crate) mod check {
    use super::*;
    use crate::testing::Rng;
    use half::{bf16, f16};

    /// All 2^16 f16 and bf16 values, 8 per block, widen to the scalar code's exact bits
    /// (NaN payloads and quieting included).
    pub(crate) fn widening_equals_scalar<C: Convert>(isa: C) {
        for start in (0..=u16::MAX as usize).step_by(BLOCK) {
            let h: [u16; BLOCK] = std::array::from_fn(|l| (start + l) as u16);
            let f: [f16; BLOCK] = h.map(f16::from_bits);
            let b: [bf16; BLOCK] = h.map(bf16::from_bits);
            let (wf, wb) = (isa.widen_block(&f), isa.widen_block(&b));
            for l in 0..BLOCK {
                assert_eq!(wf[l].to_bits(), widen(f[l]).to_bits(), "f16 {:#x}", h[l]);
                assert_eq!(wb[l].to_bits(), widen(b[l]).to_bits(), "bf16 {:#x}", h[l]);
            }
        }
        let x: [f32; BLOCK] = std::array::from_fn(|l| 1.0 / (l as f32 + 0.3));
        let w = isa.widen_block(&x);
        assert!((0..BLOCK).all(|l| w[l].to_bits() == (x[l] as f64).to_bits()));
    }

    /// Inputs of every f64 class that the narrowing treats apart, shuffled into blocks so
    /// that special lanes share blocks with ordinary ones.
    pub(crate) fn narrowing_inputs() -> Vec<f64> {
        let mut rng = Rng::new(0x5eed_c0de);
        let mut xs = vec![
            0.0,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            f64::INFINITY,
            f64::MAX,
            65504.0,
            65519.99,
            65520.0,
            65536.0,
            2.0f64.powi(-24),
            2.0f64.powi(-25),
            2.0f64.powi(-14),
            2.0f64.powi(-126),
            2.0f64.powi(-133),
            2.0f64.powi(-134),
            2.0f64.powi(-149),
            2.0f64.powi(-150),
            2.0f64.powi(-151),
            2.0f64.powi(128),
            f32::MAX as f64,
            bf16::MAX.to_f64(),
            1.0 + 1.0 / 512.0,
        ];
        // NaNs: quiet and signalling, payloads in the kept and in the dropped bits.
        for payload in [
            1u64,
            1 << 28,
            1 << 29,
            1 << 51,
            (1 << 52) - 1,
            0x000a_bcde_f012_3456,
        ] {
            xs.push(f64::from_bits(0x7ff0_0000_0000_0000 | payload));
        }
        // Every f16 and bf16 value, the ties between neighbours and one f64 ulp around.
        for h in 0..u16::MAX {
            for (v, up) in [
                (f16::from_bits(h).to_f64(), f16::from_bits(h + 1).to_f64()),
                (bf16::from_bits(h).to_f64(), bf16::from_bits(h + 1).to_f64()),
            ] {
                xs.push(v);
                if v.is_finite() && up.is_finite() {
                    let mid = (v + up) / 2.0;
                    xs.extend([mid, f64::from_bits(mid.to_bits() + 1)]);
                    xs.push(f64::from_bits(mid.to_bits().wrapping_sub(1)));
                }
            }
        }
        // f32's subnormal range (bf16's subnormals): ties of the bf16 grid, their
        // neighbours, and f32 values rounded to odd there.
        for m in 0..=256u64 {
            let tie = (m as f64 + 0.5) * 2.0f64.powi(-133);
            xs.extend([
                tie,
                f64::from_bits(tie.to_bits() + 1),
                f64::from_bits(tie.to_bits() - 1),
            ]);
            let f32_tie = (m as f64 + 0.5) * 2.0f64.powi(-149);
            xs.extend([f32_tie, f64::from_bits(f32_tie.to_bits() + 1)]);
        }
        for _ in 0..200_000 {
            // Uniform bit patterns (every class), and values with random exponents around
            // the interesting range and random low bits (sticky bits set or not).
            xs.push(f64::from_bits(rng.next_u64()));
            let e = (rng.next_u64() % 320) as i32 - 170;
            let m = 1.0 + (rng.next_u64() >> 12) as f64 * 2.0f64.powi(-52);
            let x = m * 2.0f64.powi(e);
            let mask = if rng.next_u64() % 2 == 0 {
                !((1u64 << 29) - 1)
            } else {
                !0
            };
            xs.push(f64::from_bits(x.to_bits() & mask));
        }
        let n = xs.len();
        let mut all: Vec<f64> = xs.iter().flat_map(|&x| [x, -x]).collect();
        for i in (1..all.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        all.extend(xs.iter().take(n.min(64)));
        while all.len() % BLOCK != 0 {
            all.push(1.0);
        }
        all
    }

    fn compare<T: Element, C: Convert>(isa: C, xs: &[f64], bits: impl Fn(T) -> u64) {
        for x in xs.chunks_exact(BLOCK) {
            let x: &[f64; BLOCK] = x.try_into().expect("block");
            let mut got = [T::default(); BLOCK];
            let mut want = [T::default(); BLOCK];
            isa.narrow_block(x, &mut got);
            Scalar.narrow_block(x, &mut want);
            for l in 0..BLOCK {
                assert_eq!(
                    bits(got[l]),
                    bits(want[l]),
                    "{} of {:e} ({:#018x})",
                    T::DTYPE,
                    x[l],
                    x[l].to_bits()
                );
            }
        }
    }

    /// f64 → f16 / bf16 / f32 blocks equal the scalar one-rounding code bit for bit, on
    /// every class: ties, subnormal results, overflow to Inf, NaN payloads, ±0.
    pub(crate) fn narrowing_equals_scalar<C: Convert>(isa: C) {
        let xs = narrowing_inputs();
        compare::<f16, C>(isa, &xs, |h| h.to_bits() as u64);
        compare::<bf16, C>(isa, &xs, |h| h.to_bits() as u64);
        compare::<f32, C>(isa, &xs, |h| h.to_bits() as u64);
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
