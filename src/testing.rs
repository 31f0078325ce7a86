//! Helpers for tests, benches and examples; not part of the numerical API.
//!
//! Nothing here is used by the kernels or the backends, and nothing here is covered by the
//! crate's stability promises: it exists so that the test files, the benches and the
//! examples share one deterministic data generator, one closeness check and one set of
//! realistic layouts instead of carrying copies of their own.
//!
//! - [`Rng`]: the seeded xorshift64 generator every test uses (same numbers on every
//!   machine and every run), with uniform, signed, normal and index draws and vectors of
//!   any [`Element`].
//! - [`check_close`] / [`assert_close`]: the llm.c-style elementwise check
//!   `|got - want| <= atol + rtol·|want|`, with fixed rules for NaN and ±Inf, reporting
//!   the first mismatches.
//! - [`layouts`]: the ResNet-18 and ViT-B/16 audio-visual parameter shapes.
//! - [`bench`]: what the CPU benches share: their environment, a memcpy to compare with,
//!   and [`Rounds`](bench::Rounds) of cases run in turn (per-round times and ratios).
//! - [`chunk_tasks`] / [`ChunkTask`]: the fixed chunk table both backends parallelise
//!   over (for tests that check the chunking itself); [`abi`] and [`solve`]: the kernels'
//!   constants and the per-segment solve, for tests that compare against them.
//!
//! Behind the feature `testing` (the crate's tests, benches and examples enable it through
//! a dev-dependency on the crate itself).

use crate::dtype::Element;
use std::fmt;

pub mod bench;
pub mod layouts;

pub use bench::{bench_quick, bench_threads, memcpy_gbs, Memcpy};

pub use crate::dtype::{from_f64_vec, to_f64_vec};
pub use crate::segments::chunks::{chunk_tasks, ChunkTask};

/// The ABI table shared by Rust and the kernels (`src/abi.rs`), for the tests that check
/// the generated header against it.
pub mod abi {
    pub use crate::abi::*;
}

/// The per-segment solve's constants and functions (`src/project/solve.rs`), for the tests
/// that compare rank decisions across backends.
pub mod solve {
    pub use crate::project::solve::{decision_margin, orth_segment, partial_stride, MAX_K};
}

/// Names of every kernel of module `project` (`kernels/project.cu`), for symbol and
/// coverage tests.
#[cfg(feature = "cuda")]
pub fn project_kernel_names() -> Vec<String> {
    crate::cuda::project_kernel_names()
}

/// The seeded xorshift64 generator (shifts 13, 7, 17) of the tests, benches and examples.
///
/// The state starts at `seed · 0x9E3779B97F4A7C15 | 1` (odd, hence never zero). The
/// sequence is part of the tests' data: changing it changes every test's inputs, so it is
/// fixed. Not for cryptography or statistics.
///
/// ```
/// use redreg::testing::Rng;
/// let mut rng = Rng::new(7);
/// let x = rng.signed(1.0); // uniform in [-1, 1)
/// assert!((-1.0..1.0).contains(&x));
/// let v: Vec<f32> = Rng::new(7).elements(3, 1.0);
/// assert_eq!(v[0], x as f32);
/// ```
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed` (every seed, 0 included, gives its own sequence).
    pub const fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut s = self.state;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.state = s;
        s
    }

    /// Uniform in `[0, 1)`, from the top 53 bits of [`next_u64`](Self::next_u64).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`: `lo + (hi - lo)·u` with `u` from [`unit`](Self::unit).
    /// (`uniform(-1.0, 1.0)` equals `signed(1.0)` bit for bit.)
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `[-scale, scale)`: `scale·(2u - 1)` with `u` from [`unit`](Self::unit).
    pub fn signed(&mut self, scale: f64) -> f64 {
        scale * (self.unit() * 2.0 - 1.0)
    }

    /// Uniform in `[-scale, scale)` from the top 24 bits only: `scale·(2u - 1)` with
    /// `u = (bits >> 40) / 2^24`, so that for `scale = 1` every value is exactly an f32
    /// (the f32 data of the candle tests).
    pub fn signed_f32(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    /// Standard normal (Box–Muller on two [`unit`](Self::unit) draws).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform in `0..n` (`next_u64() % n`; `n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// `n` draws of [`signed`](Self::signed)`(scale)`.
    pub fn signed_vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.signed(scale)).collect()
    }

    /// `n` draws of [`normal`](Self::normal).
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }

    /// `n` draws of [`signed`](Self::signed)`(scale)`, each rounded once to `T`.
    pub fn elements<T: Element>(&mut self, n: usize, scale: f64) -> Vec<T> {
        (0..n).map(|_| T::from_f64(self.signed(scale))).collect()
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

/// `n` values uniform in `[-scale, scale)` from a fresh [`Rng::new`]`(seed)`: the data of
/// most tests and benches.
pub fn signed_vec(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    Rng::new(seed).signed_vec(n, scale)
}

/// [`signed_vec`] rounded once to `T`.
pub fn elements<T: Element>(n: usize, seed: u64, scale: f64) -> Vec<T> {
    Rng::new(seed).elements(n, scale)
}

/// A value [`check_close`] can compare: f64 itself and every [`Element`] (exact widening).
pub trait Widen: Copy {
    /// The value as f64 (exact).
    fn widen(self) -> f64;
}

impl Widen for f64 {
    fn widen(self) -> f64 {
        self
    }
}

impl<T: Element> Widen for T {
    fn widen(self) -> f64 {
        self.to_f64()
    }
}

/// Whether `got` matches `want` under the rules of [`check_close`].
pub fn is_close(got: f64, want: f64, atol: f64, rtol: f64) -> bool {
    if got.is_nan() || want.is_nan() {
        got.is_nan() && want.is_nan()
    } else if got.is_infinite() || want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= atol + rtol * want.abs()
    }
}

/// One element outside the tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mismatch {
    /// Index in the compared slices.
    pub index: usize,
    /// The value under test (widened to f64).
    pub got: f64,
    /// The expected value (widened to f64).
    pub want: f64,
}

/// What [`check_close`] found: how many elements failed and the first few of them.
#[derive(Clone, Debug, PartialEq)]
pub struct CloseReport {
    /// Number of elements compared.
    pub len: usize,
    /// Number of elements outside the tolerance.
    pub count: usize,
    /// The first (at most [`CloseReport::FIRST`]) mismatches, in index order.
    pub first: Vec<Mismatch>,
    /// The absolute tolerance used.
    pub atol: f64,
    /// The relative tolerance used.
    pub rtol: f64,
}

impl CloseReport {
    /// How many mismatches a report lists.
    pub const FIRST: usize = 8;
}

impl fmt::Display for CloseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} elements outside atol {:e} + rtol {:e}·|want|; first:",
            self.count, self.len, self.atol, self.rtol
        )?;
        for m in &self.first {
            write!(
                f,
                "\n  [{}] got {:e} want {:e} diff {:e}",
                m.index,
                m.got,
                m.want,
                (m.got - m.want).abs()
            )?;
        }
        Ok(())
    }
}

/// Elementwise closeness of `got` to `want` (llm.c style), for slices of f64 or of any
/// [`Element`] (compared after exact widening to f64, see [`Widen`]).
///
/// Rules, per element:
/// - NaN matches only NaN (any payload, any sign);
/// - +Inf matches only +Inf, and -Inf only -Inf (a finite value never matches an
///   infinity, whatever the tolerances);
/// - finite values match when `|got - want| <= atol + rtol·|want|` (`want` is the
///   reference: the tolerance scales with it, not with `got`).
///
/// Returns `Err` with the number of mismatches and the first [`CloseReport::FIRST`] of
/// them. Panics if the lengths differ.
pub fn check_close<T: Widen>(
    got: &[T],
    want: &[T],
    atol: f64,
    rtol: f64,
) -> Result<(), CloseReport> {
    assert_eq!(
        got.len(),
        want.len(),
        "check_close: lengths differ ({} vs {})",
        got.len(),
        want.len()
    );
    let mut report = CloseReport {
        len: got.len(),
        count: 0,
        first: Vec::new(),
        atol,
        rtol,
    };
    for (index, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (got, want) = (g.widen(), w.widen());
        if !is_close(got, want, atol, rtol) {
            report.count += 1;
            if report.first.len() < CloseReport::FIRST {
                report.first.push(Mismatch { index, got, want });
            }
        }
    }
    if report.count == 0 {
        Ok(())
    } else {
        Err(report)
    }
}

/// [`check_close`], panicking with `what` and the report on any mismatch (or on a length
/// difference).
#[track_caller]
pub fn assert_close<T: Widen>(what: &str, got: &[T], want: &[T], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: lengths differ ({} vs {})",
        got.len(),
        want.len()
    );
    if let Err(report) = check_close(got, want, atol, rtol) {
        panic!("{what}: {report}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// The generator the tests used before it moved here, verbatim.
    fn old_rand_vec(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn old_candle_data(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn sequence_is_the_old_one_bit_for_bit() {
        for seed in [0u64, 1, 7, 100, 12345, u64::MAX] {
            let old = old_rand_vec(1000, seed);
            let new = signed_vec(1000, seed, 1.0);
            assert!(old
                .iter()
                .zip(&new)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let mut r = Rng::new(seed);
            assert!(old
                .iter()
                .all(|a| a.to_bits() == r.uniform(-1.0, 1.0).to_bits()));
            let old32 = old_candle_data(seed, 1000);
            let mut r = Rng::new(seed);
            assert!(old32
                .iter()
                .all(|a| a.to_bits() == r.signed_f32(1.0).to_bits()));
            // Scaled: both operand orders of the old copies give the same bits.
            let scaled = signed_vec(1000, seed, 0.37);
            assert!(old
                .iter()
                .zip(&scaled)
                .all(|(a, b)| (a * 0.37).to_bits() == b.to_bits()));
        }
        // A pinned value, so that a change of the formulas cannot go unnoticed.
        assert_eq!(Rng::new(1).next_u64(), {
            let mut s = 0x9E37_79B9_7F4A_7C15u64;
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        });
    }

    #[test]
    fn draws_stay_in_range() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            assert!((0.0..1.0).contains(&r.unit()));
            assert!((2.0..5.0).contains(&r.uniform(2.0, 5.0)));
            assert!(r.below(7) < 7);
            assert!((-1.0..1.0).contains(&r.signed_f32(1.0)));
        }
        let mut p = r.permutation(50);
        p.sort_unstable();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
        let h: Vec<f16> = elements(10, 4, 2.0);
        let b: Vec<bf16> = elements(10, 4, 2.0);
        let w = signed_vec(10, 4, 2.0);
        for i in 0..10 {
            assert_eq!(h[i], f16::from_f64(w[i]));
            assert_eq!(b[i], bf16::from_f64(w[i]));
        }
    }

    #[test]
    fn closeness_rules() {
        let (inf, nan) = (f64::INFINITY, f64::NAN);
        assert!(is_close(nan, nan, 0.0, 0.0));
        assert!(is_close(-nan, nan, 0.0, 0.0));
        assert!(!is_close(nan, 1.0, 1e9, 1e9));
        assert!(!is_close(1.0, nan, 1e9, 1e9));
        assert!(!is_close(nan, inf, 1e9, 1e9));
        assert!(is_close(inf, inf, 0.0, 0.0));
        assert!(is_close(-inf, -inf, 0.0, 0.0));
        assert!(!is_close(-inf, inf, 1e9, 1e9));
        assert!(!is_close(1e300, inf, 1e9, 1e9));
        assert!(!is_close(inf, 1e300, 1e9, 1e9));
        assert!(
            is_close(1.0625, 1.0, 0.0625, 0.0),
            "the bound itself passes"
        );
        assert!(!is_close(1.0625, 1.0, 0.0624, 0.0));
        assert!(is_close(2.25, 2.0, 0.0, 0.125));
        assert!(!is_close(2.0, 2.25, 0.0, 0.1), "rtol scales with want");
        assert!(!is_close(1.0 + 1e-15, 1.0, 0.0, 0.0));
    }

    #[test]
    fn report_lists_the_first_mismatches() {
        let want: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let mut got = want.clone();
        for i in [3, 5, 7, 9, 11, 13, 15, 17, 19] {
            got[i] += 1.0;
        }
        assert_eq!(check_close(&want, &want, 0.0, 0.0), Ok(()));
        let r = check_close(&got, &want, 0.5, 0.0).unwrap_err();
        assert_eq!((r.len, r.count, r.first.len()), (20, 9, CloseReport::FIRST));
        assert_eq!(
            r.first[0],
            Mismatch {
                index: 3,
                got: 4.0,
                want: 3.0
            }
        );
        let text = r.to_string();
        assert!(text.starts_with("9 of 20 elements"), "{text}");
        assert!(text.contains("[3] got 4e0 want 3e0"), "{text}");
        let e = std::panic::catch_unwind(|| assert_close("x", &got, &want, 0.5, 0.0));
        assert!(e.is_err());
        assert_close("f16", &[f16::ONE], &[f16::ONE], 0.0, 0.0);
    }
}
