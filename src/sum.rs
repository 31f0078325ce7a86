//! Compensated (double-double) summation: every product of the reference's pass 1, and
//! the 64-product runs of the CPU backend's pass 1 (see `src/project/solve.rs`, Limits).
//!
//! Why: the Gram-matrix method squares the basis's condition number. With plain f64 sums
//! over n elements the Gram matrix carries a relative error of about `sqrt(n)·1e-16`,
//! which a basis with condition number 1e6 amplifies to ~1e-4 in the projection.
//! Summing f32/f16/bf16 products (exact in f64) with an error-free TwoSum makes the Gram
//! matrix correct to the last bit of f64, and the projection then agrees with explicit
//! CGS2 to ~1e-9 at condition number 1e6; the CPU backend's short plain runs to ~3e-7.

/// A running sum `hi + lo` with `lo` the accumulated rounding errors of `hi` (Knuth's
/// TwoSum; cascaded summation). Error ≈ `1e-16·|sum| + n·1e-32·Σ|x|`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Acc {
    /// Leading part.
    pub hi: f64,
    /// Accumulated rounding errors of `hi`.
    pub lo: f64,
}

impl Acc {
    /// Adds `x` (TwoSum: the rounding error of `hi + x` is captured exactly).
    #[inline(always)]
    pub fn add(&mut self, x: f64) {
        let s = self.hi + x;
        let bp = s - self.hi;
        let err = (self.hi - (s - bp)) + (x - bp);
        self.hi = s;
        self.lo += err;
    }

    /// Adds another compensated sum.
    #[inline(always)]
    pub fn merge(&mut self, o: Acc) {
        self.add(o.hi);
        self.lo += o.lo;
    }

    /// The sum rounded to f64.
    #[inline(always)]
    pub fn value(self) -> f64 {
        self.hi + self.lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_what_plain_f64_loses() {
        let mut a = Acc::default();
        let mut plain = 0.0f64;
        for x in [1e16, 1.0, -1e16, 1.0] {
            a.add(x);
            plain += x;
        }
        assert_eq!(a.value(), 2.0);
        assert_ne!(plain, 2.0);
        let mut b = Acc::default();
        b.add(1e-20);
        a.merge(b);
        assert_eq!(a.value(), 2.0 + 1e-20);
    }
}
