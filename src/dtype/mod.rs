//! Element types: f32, f16 and bf16 (from `half`), with conversions through f32/f64 and
//! checked casts of user byte buffers (`bytemuck`).

use crate::error::{Error, Result};
use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(all(target_arch = "x86_64", redreg_avx512))]
pub(crate) mod avx512;
pub(crate) mod convert;
pub(crate) mod level;

use convert::{f64_to_bf16_bits, f64_to_f16_bits};

/// The element types every operation accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Lower-case name, as used in kernel names (`project_apply_f32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// All supported element types.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    /// The supertrait that keeps [`super::Element`] to the three types below.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type of the crate's buffers. Arithmetic is always done in f32 or f64; an
/// `Element` only loads and stores.
///
/// Stores round to nearest even; values beyond the type's range become ±Inf (IEEE
/// overflow, the policy of `docs/numerics.md`), NaN stays NaN.
///
/// Sealed: implemented for `f32`, [`half::f16`] and [`half::bf16`] only. The CPU kernels
/// reinterpret an element as the type its [`Element::DTYPE`] names (`bytemuck::cast`),
/// which would panic for a type of another size, so no other crate can implement it.
/// (`impl Element for u16` is refused by the orphan rule already; what sealing adds is that
/// a crate's own type, such as this 2-byte newtype claiming to be f32, is refused too.)
///
/// ```compile_fail,E0277
/// use redreg::{DType, Element};
///
/// #[derive(Clone, Copy, Debug, Default, PartialEq)]
/// #[repr(transparent)]
/// struct Half(u16);
/// // SAFETY: a transparent u16.
/// unsafe impl bytemuck::Zeroable for Half {}
/// // SAFETY: a transparent u16.
/// unsafe impl bytemuck::Pod for Half {}
///
/// impl Element for Half {
///     const DTYPE: DType = DType::F32; // 2 bytes where f32 has 4
///     fn to_f64(self) -> f64 { self.0 as f64 }
///     fn to_f32(self) -> f32 { self.0 as f32 }
///     fn from_f64(x: f64) -> Self { Half(x as u16) }
///     fn from_f32(x: f32) -> Self { Half(x as u16) }
/// }
/// ```
pub trait Element:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + bytemuck::Pod
    + PartialEq
    + std::fmt::Debug
    + Default
    + DeviceElement
    + 'static
{
    /// The runtime tag of this type.
    const DTYPE: DType;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
    /// Exact widening to f32.
    fn to_f32(self) -> f32;
    /// Rounding narrowing from f64 (one rounding, to nearest even).
    fn from_f64(x: f64) -> Self;
    /// Rounding narrowing from f32.
    fn from_f32(x: f32) -> Self;
}

/// With feature `cuda`: what cudarc needs to move an element to and from the device
/// (implemented for f32, f16 and bf16 through cudarc's `f16` feature). Without it: nothing.
#[cfg(feature = "cuda")]
pub trait DeviceElement: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits {}
#[cfg(feature = "cuda")]
impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> DeviceElement for T {}
/// With feature `cuda`: what cudarc needs to move an element to and from the device.
/// Without it: nothing.
#[cfg(not(feature = "cuda"))]
pub trait DeviceElement {}
#[cfg(not(feature = "cuda"))]
impl<T> DeviceElement for T {}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        // One rounding (round to odd through f32, then to nearest even); branch-light so
        // the CPU loops vectorise. Bitwise equal to `half`'s direct f64 -> f16.
        f16::from_bits(f64_to_f16_bits(x))
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        // One rounding. (`half`'s bf16::from_f64 rounds twice, f64 -> f32 -> bf16, and is
        // off by one ulp when the f32 rounding lands on a bf16 tie.)
        bf16::from_bits(f64_to_bf16_bits(x))
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

/// Views a user byte buffer as elements of `T`. `Err` (never a panic) when the length is
/// not a multiple of the element size or the buffer is misaligned for `T`.
pub fn cast_bytes<'a, T: Element>(name: &'static str, bytes: &'a [u8]) -> Result<&'a [T]> {
    bytemuck::try_cast_slice(bytes).map_err(|e| Error::Cast {
        name,
        len: bytes.len(),
        dtype: T::DTYPE.name(),
        reason: format!("{e:?}"),
    })
}

/// Mutable variant of [`cast_bytes`].
pub fn cast_bytes_mut<'a, T: Element>(
    name: &'static str,
    bytes: &'a mut [u8],
) -> Result<&'a mut [T]> {
    let len = bytes.len();
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::Cast {
        name,
        len,
        dtype: T::DTYPE.name(),
        reason: format!("{e:?}"),
    })
}

/// Converts a slice of f64 values to `T` (one rounding each). Convenience for tests and
/// examples.
#[cfg(feature = "testing")]
pub fn from_f64_vec<T: Element>(xs: &[f64]) -> Vec<T> {
    xs.iter().map(|&x| T::from_f64(x)).collect()
}

/// Widens a slice of `T` to f64 (exact).
#[cfg(feature = "testing")]
pub fn to_f64_vec<T: Element>(xs: &[T]) -> Vec<f64> {
    xs.iter().map(|&x| x.to_f64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Correct rounding of a finite f64 in the normal range of bf16 (= f32's exponent range)
    /// to bf16, straight on the f64 bits: round to nearest even at bit 45.
    fn bf16_oracle(x: f64) -> u16 {
        let b = x.to_bits();
        let r = (b + (1u64 << 44) - 1 + ((b >> 45) & 1)) >> 45 << 45;
        bf16::from_f64(f64::from_bits(r)).to_bits() // exact: r is a bf16 value (or Inf)
    }

    /// Correct rounding to f16 by brute force: the nearest of the f16 values around
    /// `half`'s answer (which can be one ulp off near the subnormal boundary), ties to even.
    fn f16_oracle(x: f64) -> u16 {
        let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
        let ax = x.abs();
        if ax >= 65520.0 {
            return sign | 0x7c00;
        }
        let g = f16::from_f64(ax).to_bits().min(0x7bff);
        let mut best = (f64::INFINITY, 0u16);
        for c in g.saturating_sub(1)..=(g + 1).min(0x7bff) {
            let d = (f16::from_bits(c).to_f64() - ax).abs();
            if d < best.0 || (d == best.0 && c % 2 == 0) {
                best = (d, c);
            }
        }
        sign | best.1
    }

    fn check(x: f64) {
        let a = <f16 as Element>::from_f64(x);
        if x.is_nan() {
            assert!(a.is_nan());
        } else {
            assert_eq!(a.to_bits(), f16_oracle(x), "f16 {x:e}");
        }
        let a = <bf16 as Element>::from_f64(x);
        if x.is_nan() {
            assert!(a.is_nan());
        } else if x.abs() >= 1.1754943508222875e-38 && x.abs() < 3.3e38 {
            assert_eq!(a.to_bits(), bf16_oracle(x), "bf16 {x:e}");
        }
    }

    /// Edge cases (ties, subnormals, overflow thresholds, NaN, Inf), every f16 / bf16 value,
    /// its next f64 up and the midpoints (ties) between neighbours.
    #[test]
    fn one_rounding_from_f64() {
        for x in [
            0.0,
            1.0,
            65504.0,
            65519.99,
            65520.0,
            65536.0,
            1e300,
            5.960464477539063e-8,
            2.98e-8,
            2.9802322387695312e-8,
            6.1035156e-5,
            1e-45,
            1e-320,
            f64::INFINITY,
            f64::NAN,
            3.3895313892515355e38,
            1.0 + 1.0 / 512.0,
            1.0 + 1.0 / 256.0 + 1.0 / 512.0,
            1.5318393707275394e-5,
        ] {
            check(x);
            check(-x);
        }
        for h in 0..u16::MAX {
            for (v, up) in [
                (f16::from_bits(h).to_f64(), f16::from_bits(h + 1).to_f64()),
                (bf16::from_bits(h).to_f64(), bf16::from_bits(h + 1).to_f64()),
            ] {
                check(v);
                check(f64::from_bits(v.to_bits() + 1));
                if v.is_finite() && up.is_finite() {
                    let mid = (v + up) / 2.0;
                    check(mid);
                    check(f64::from_bits(mid.to_bits() + 1));
                    check(f64::from_bits(mid.to_bits().wrapping_sub(1)));
                }
            }
        }
    }

    #[test]
    fn casts_check_length_and_alignment() {
        let bytes = [0u8; 10];
        assert_eq!(cast_bytes::<f16>("b", &bytes).unwrap().len(), 5);
        let e = cast_bytes::<f16>("b", &bytes[..9]).unwrap_err().to_string();
        assert!(e.contains("9 bytes") && e.contains("f16"), "{e}");
        // An f32 view of an odd offset is misaligned (or the length is wrong): Err either way.
        let words = [0u32; 4];
        let b: &[u8] = bytemuck::cast_slice(&words);
        assert!(cast_bytes::<f32>("b", &b[1..5]).is_err());
        assert_eq!(cast_bytes::<f32>("b", &b[4..12]).unwrap().len(), 2);
    }

    #[test]
    fn narrowing_rounds_and_overflows_to_inf() {
        assert_eq!(<f16 as Element>::from_f64(1e6).to_f64(), f64::INFINITY);
        assert_eq!(<bf16 as Element>::from_f64(1e39).to_f64(), f64::INFINITY);
        assert!(<f16 as Element>::from_f64(f64::NAN).to_f64().is_nan());
        assert_eq!(<f32 as Element>::from_f64(0.1).to_f64(), 0.1f32 as f64);
        assert_eq!(<bf16 as Element>::from_f64(1.0 + 1.0 / 512.0).to_f64(), 1.0);
    }
}
