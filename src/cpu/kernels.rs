//! Per-chunk loops of the CPU backend, monomorphised over k (0..=8) so the inner loops
//! unroll and vectorise. Each function handles one chunk of one segment.

// Index loops on purpose: this code mirrors the CUDA C kernels line for line.
#![allow(clippy::needless_range_loop)]

use crate::dtype::Element;
use crate::projection::BaseMode;
use crate::solve::{partial_stride, MAX_K};
use crate::sum::Acc;

/// Partials of the largest supported k.
pub(crate) const MAX_STRIDE: usize = partial_stride(MAX_K);

/// Interleaved compensated accumulators per product: independent chains for ILP and SIMD,
/// merged lane 0, 1, 2, 3 at the end, always in that order.
const LANES: usize = 4;

/// Compensated partial sums of one chunk: packed Gram upper triangle then `Bᵀv` (zeros
/// without `v`).
pub(crate) fn chunk_partial<T: Element>(v: Option<&[T]>, basis: &[&[T]]) -> [Acc; MAX_STRIDE] {
    match basis.len() {
        0 => [Acc::default(); MAX_STRIDE],
        1 => partial_k::<T, 1>(v, basis),
        2 => partial_k::<T, 2>(v, basis),
        3 => partial_k::<T, 3>(v, basis),
        4 => partial_k::<T, 4>(v, basis),
        5 => partial_k::<T, 5>(v, basis),
        6 => partial_k::<T, 6>(v, basis),
        7 => partial_k::<T, 7>(v, basis),
        _ => partial_k::<T, 8>(v, basis),
    }
}

#[inline(always)]
fn accumulate<const K: usize>(
    acc: &mut [[Acc; LANES]; MAX_STRIDE],
    l: usize,
    b: &[f64; K],
    x: f64,
) {
    let mut idx = 0;
    for i in 0..K {
        for j in i..K {
            acc[idx][l].add(b[i] * b[j]);
            idx += 1;
        }
    }
    for i in 0..K {
        acc[idx][l].add(b[i] * x);
        idx += 1;
    }
}

fn partial_k<T: Element, const K: usize>(v: Option<&[T]>, basis: &[&[T]]) -> [Acc; MAX_STRIDE] {
    let n = basis[0].len();
    let bs: [&[T]; K] = std::array::from_fn(|i| &basis[i][..n]);
    let v = v.map(|v| &v[..n]);
    let mut acc = [[Acc::default(); LANES]; MAX_STRIDE];
    let load = |e: usize| -> ([f64; K], f64) {
        let b: [f64; K] = std::array::from_fn(|i| bs[i][e].to_f64());
        (b, v.map_or(0.0, |v| v[e].to_f64()))
    };
    let full = n - n % LANES;
    let mut e = 0;
    while e < full {
        for l in 0..LANES {
            let (b, x) = load(e + l);
            accumulate::<K>(&mut acc, l, &b, x);
        }
        e += LANES;
    }
    for (l, e) in (full..n).enumerate() {
        let (b, x) = load(e);
        accumulate::<K>(&mut acc, l, &b, x);
    }
    let mut out = [Acc::default(); MAX_STRIDE];
    for (o, a) in out.iter_mut().zip(&acc).take(partial_stride(K)) {
        for lane in a {
            o.merge(*lane);
        }
    }
    out
}

/// `out = base_term + beta·(v - Σ_i w_i b_i)` over one chunk, in f64, one rounding.
pub(crate) fn chunk_apply<T: Element>(
    v: &[T],
    basis: &[&[T]],
    w: &[f64],
    alpha: f64,
    beta: f64,
    mode: BaseMode<'_, T>,
    out: &mut [T],
) {
    match basis.len() {
        0 => apply_k::<T, 0>(v, basis, w, alpha, beta, mode, out),
        1 => apply_k::<T, 1>(v, basis, w, alpha, beta, mode, out),
        2 => apply_k::<T, 2>(v, basis, w, alpha, beta, mode, out),
        3 => apply_k::<T, 3>(v, basis, w, alpha, beta, mode, out),
        4 => apply_k::<T, 4>(v, basis, w, alpha, beta, mode, out),
        5 => apply_k::<T, 5>(v, basis, w, alpha, beta, mode, out),
        6 => apply_k::<T, 6>(v, basis, w, alpha, beta, mode, out),
        7 => apply_k::<T, 7>(v, basis, w, alpha, beta, mode, out),
        _ => apply_k::<T, 8>(v, basis, w, alpha, beta, mode, out),
    }
}

fn apply_k<T: Element, const K: usize>(
    v: &[T],
    basis: &[&[T]],
    w: &[f64],
    alpha: f64,
    beta: f64,
    mode: BaseMode<'_, T>,
    out: &mut [T],
) {
    let n = out.len();
    let v = &v[..n];
    let bs: [&[T]; K] = std::array::from_fn(|i| &basis[i][..n]);
    let w: [f64; K] = std::array::from_fn(|i| w[i]);
    let perp = |e: usize| {
        let mut y = v[e].to_f64();
        for i in 0..K {
            y -= w[i] * bs[i][e].to_f64();
        }
        y
    };
    match mode {
        BaseMode::None => {
            for (e, o) in out.iter_mut().enumerate() {
                *o = T::from_f64(beta * perp(e));
            }
        }
        BaseMode::Slice(base) => {
            let base = &base[..n];
            for (e, o) in out.iter_mut().enumerate() {
                *o = T::from_f64(alpha * base[e].to_f64() + beta * perp(e));
            }
        }
        BaseMode::InPlace => {
            for (e, o) in out.iter_mut().enumerate() {
                *o = T::from_f64(alpha * o.to_f64() + beta * perp(e));
            }
        }
    }
}

/// In place over one chunk: `q_j = Σ_{i<=j} m[i*k + j] · b_i` for every element.
pub(crate) fn chunk_orth<T: Element>(basis: &mut [&mut [T]], m: &[f64]) {
    let k = basis.len();
    if k == 0 {
        return;
    }
    let n = basis[0].len();
    let mut b = [0.0f64; MAX_K];
    for e in 0..n {
        for i in 0..k {
            b[i] = basis[i][e].to_f64();
        }
        for j in 0..k {
            let mut q = 0.0;
            for i in 0..=j {
                q += m[i * k + j] * b[i];
            }
            basis[j][e] = T::from_f64(q);
        }
    }
}
