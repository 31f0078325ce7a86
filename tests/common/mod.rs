//! Helpers shared by every test file (CPU, GPU, candle, distributed): `mod common;` in a
//! test file brings them in. The data generator and the closeness check are
//! `redreg::testing`'s ([`Rng`], [`assert_close`], [`check_close`]), re-exported here; the
//! submodules hold what only some files need.
//!
//! - `backends`: one test body for every backend (`backend_tests!`, [`backends::TestBackend`]);
//! - `candle` (feature `candle`): the candle adapter tests' data and reference;
//! - `dist`: the distributed scenarios of `dist_threads.rs`, `mpi_dist.rs`, `nccl_dist.rs`;
//! - `emu` (feature `cuda`): the emulated driver's launch and copy counters;
//! - `gpu` (feature `cuda`): the SKIP convention and the shared backend of the GPU tests;
//! - `ranks`: rank comparison across backends with the solve's decision margin;
//! - `stats`: the statistics executors under `backend_tests!` ([`stats::TestStats`]).
#![allow(dead_code)]

pub mod backends;
#[cfg(feature = "candle")]
pub mod candle;
pub mod dist;
#[cfg(feature = "cuda")]
pub mod emu;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod ranks;
pub mod stats;

#[allow(unused_imports)]
pub use redreg::testing::{assert_close, check_close, Rng};
use redreg::{Element, Segments};

/// Segment lengths drawn from a mix of edge cases: empty, 1, primes, block-ish sizes.
pub fn random_lengths(rng: &mut Rng, nseg: usize, max_len: usize) -> Vec<usize> {
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

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// k orthonormal f64 vectors of length n (Gram-Schmidt, twice, of Gaussian vectors).
pub fn orthonormal(rng: &mut Rng, n: usize, k: usize) -> Vec<Vec<f64>> {
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
pub fn conditioned_basis(rng: &mut Rng, n: usize, s: &[f64]) -> Vec<Vec<f64>> {
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
    rng: &mut Rng,
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

/// The outputs the tensor-list tests run (`tests/tensor_list.rs`).
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// out = beta·(v − Pv)
    Write,
    /// out = alpha·base + beta·(v − Pv)
    Base,
    /// out = alpha·out + beta·(v − Pv)
    Accumulate,
    /// The RedReg step: out += beta·(d − P d), d = v − v0, P onto span{out, basis…}
    Drift,
}

impl Mode {
    /// The projection of this mode on any buffers (flat or lists, host or device); `v0`
    /// is used by `Drift` only, `base` by `Base` only.
    pub fn projection<'a, S, D>(
        self,
        v: S,
        v0: S,
        basis: Vec<S>,
        base: S,
        out: D,
    ) -> redreg::Projection<'a, S, D> {
        use redreg::{Output, Projection};
        match self {
            Mode::Write => Projection::new(v, basis, Output::Write { base: None, out }),
            Mode::Base => Projection::new(
                v,
                basis,
                Output::Write {
                    base: Some(base),
                    out,
                },
            ),
            Mode::Accumulate => Projection::new(v, basis, Output::Accumulate(out)),
            Mode::Drift => Projection::drift(v, v0, basis, out),
        }
    }
}

/// Pass 1 of the split form for `x = v` (or `v - v0`) against `basis` on a host backend:
/// the partials of a projection whose destination is a scratch buffer (pass 1 never reads
/// it).
#[allow(dead_code)]
pub fn host_partials<B: redreg::Backend<Memory = redreg::Host>, T: Element>(
    be: &B,
    segs: &Segments,
    v: &[T],
    v0: Option<&[T]>,
    basis: &[&[T]],
) -> redreg::Result<redreg::Partials> {
    let mut scratch = vec![T::default(); v.len()];
    let out = redreg::Output::Write {
        base: None,
        out: &mut scratch[..],
    };
    let mut p = redreg::Projection::host(v, basis, out);
    p.v0 = v0;
    be.partials(segs, &p)
}
