//! Element types: f32, f16 and bf16 (from `half`), with conversions through f32/f64 and
//! checked casts of user byte buffers (`bytemuck`).

use crate::error::{Error, Result};
use half::{bf16, f16};

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

/// An element type of the crate's buffers. Arithmetic is always done in f32 or f64; an
/// `Element` only loads and stores.
///
/// Stores round to nearest even; values beyond the type's range become ±Inf (IEEE
/// overflow, the policy of `docs/numerics.md`), NaN stays NaN.
pub trait Element:
    Copy + Send + Sync + bytemuck::Pod + PartialEq + std::fmt::Debug + Default + 'static
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
        // `half` rounds f64 -> f16 directly (one rounding), not through f32.
        f16::from_f64(x)
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
        bf16::from_f64(x)
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
pub fn from_f64_vec<T: Element>(xs: &[f64]) -> Vec<T> {
    xs.iter().map(|&x| T::from_f64(x)).collect()
}

/// Widens a slice of `T` to f64 (exact).
pub fn to_f64_vec<T: Element>(xs: &[T]) -> Vec<f64> {
    xs.iter().map(|&x| x.to_f64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
