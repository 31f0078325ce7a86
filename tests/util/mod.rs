//! Test utilities shared by the CPU test files: a seeded generator, layouts, data with
//! prescribed conditioning, and the llm.c-style `|got - ref| <= atol + rtol*|ref|` check
//! that reports the first mismatches.
#![allow(dead_code)]

use redreg::{Element, Segments};

/// SplitMix64: tiny, seeded, reproducible.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Segment lengths drawn from a mix of edge cases: empty, 1, primes, block-ish sizes.
pub fn random_lengths(rng: &mut Gen, nseg: usize, max_len: usize) -> Vec<usize> {
    const SPECIAL: [usize; 12] = [0, 1, 2, 3, 7, 31, 32, 33, 97, 255, 257, 1021];
    (0..nseg)
        .map(|_| match rng.below(3) {
            0 => SPECIAL[rng.below(SPECIAL.len())].min(max_len),
            _ => rng.below(max_len + 1),
        })
        .collect()
}

pub fn to_t<T: Element>(xs: &[f64]) -> Vec<T> {
    xs.iter().map(|&x| T::from_f64(x)).collect()
}

pub fn to_f64<T: Element>(xs: &[T]) -> Vec<f64> {
    xs.iter().map(|x| x.to_f64()).collect()
}

/// Unit roundoff of `T`.
pub fn eps<T: Element>() -> f64 {
    match T::DTYPE {
        redreg::DType::F32 => f32::EPSILON as f64,
        redreg::DType::F16 => 9.765625e-4,
        redreg::DType::BF16 => 7.8125e-3,
    }
}

/// `|got - want| <= atol + rtol*|want|` elementwise (NaN must match NaN); on failure,
/// panics listing the first mismatches.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut bad = Vec::new();
    let mut count = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        if !ok {
            count += 1;
            if bad.len() < 8 {
                bad.push(format!(
                    "  [{i}] got {g:e} want {w:e} diff {:e}",
                    (g - w).abs()
                ));
            }
        }
    }
    assert!(
        count == 0,
        "{what}: {count} of {} elements outside atol {atol:e} + rtol {rtol:e}; first:\n{}",
        got.len(),
        bad.join("\n")
    );
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// k orthonormal f64 vectors of length n (Gram-Schmidt, twice, of Gaussian vectors).
pub fn orthonormal(rng: &mut Gen, n: usize, k: usize) -> Vec<Vec<f64>> {
    let mut qs: Vec<Vec<f64>> = Vec::new();
    while qs.len() < k {
        let mut x = rng.normals(n);
        for _ in 0..2 {
            for q in &qs {
                let c = dot(q, &x);
                x.iter_mut().zip(q).for_each(|(a, b)| *a -= c * b);
            }
        }
        let nr = norm(&x);
        x.iter_mut().for_each(|a| *a /= nr);
        qs.push(x);
    }
    qs
}

/// A basis `U diag(s) Vᵀ` of length-n vectors with singular values `s` (condition number
/// `max(s)/min(s)`), mixed by a random k×k rotation so no vector is singular on its own.
pub fn conditioned_basis(rng: &mut Gen, n: usize, s: &[f64]) -> Vec<Vec<f64>> {
    let k = s.len();
    let u = orthonormal(rng, n, k);
    let v = orthonormal(rng, k, k);
    (0..k)
        .map(|j| {
            (0..n)
                .map(|e| (0..k).map(|i| u[i][e] * s[i] * v[i][j]).sum())
                .collect()
        })
        .collect()
}

/// Splits a layout into `shards` layouts: every segment is cut at random points; shard
/// `r` holds the r-th piece of every segment. Returns per shard the lengths and, per
/// segment, the element ranges (absolute, in the unsharded buffer) it holds.
pub fn shard_layout(
    rng: &mut Gen,
    segs: &Segments,
    shards: usize,
) -> Vec<Vec<std::ops::Range<usize>>> {
    let mut out = vec![Vec::new(); shards];
    for r in segs.iter() {
        let mut cuts: Vec<usize> = (0..shards - 1)
            .map(|_| r.start + rng.below(r.len() + 1))
            .collect();
        cuts.sort_unstable();
        let mut start = r.start;
        for (sh, &c) in cuts.iter().chain(std::iter::once(&r.end)).enumerate() {
            out[sh].push(start..c);
            start = c;
        }
    }
    out
}

/// Gathers the elements of `ranges` from `buf` into one contiguous vector.
pub fn gather<T: Copy>(buf: &[T], ranges: &[std::ops::Range<usize>]) -> Vec<T> {
    ranges
        .iter()
        .flat_map(|r| buf[r.clone()].iter().copied())
        .collect()
}
