//! Per-chunk loops of the CPU backend, monomorphised over k (0..=8) so the inner loops
//! unroll and vectorise. Each function handles one chunk of one segment.
//!
//! # Layout of the loops
//! Elements are processed in blocks of [`LANES`] = 8: every block is widened to f64 lanes
//! (f32 by a cast, bf16 by a shift, f16 by a branch-free bit conversion — all exact), and
//! every product keeps 8 independent compensated accumulators, one per lane, stored as
//! separate `hi`/`lo` arrays so that one TwoSum is a handful of vector instructions. The
//! lanes are merged 0, 1, …, 7 at the end, always in that order.
//!
//! # Instruction sets
//! The same generic body is compiled twice: baseline x86-64 and AVX2, chosen at run time
//! (AVX-512 target features need Rust 1.89, above the crate's MSRV 1.80). Only IEEE add/sub/mul/convert are used (no FMA, no reassociation), on the
//! same lanes in the same order, so every version gives the same bits.

// Index loops on purpose: this code mirrors the CUDA C kernels line for line.
#![allow(clippy::needless_range_loop)]

use crate::abi::{MODE_B0_OUT, MODE_INPLACE, MODE_MASK};
use crate::dtype::{DType, Element};
use crate::project::solve::{partial_stride, MAX_K};
use crate::sum::Acc;
use std::sync::atomic::{AtomicU8, Ordering};

/// Partials of the largest supported k.
pub(crate) const MAX_STRIDE: usize = partial_stride(MAX_K);

/// Interleaved compensated accumulators per product (one per f64 lane of a block).
const LANES: usize = 8;

/// Exact widening of one element to f64, vectorisable (no runtime feature checks, no
/// branches): f32 by a cast, bf16 by a shift, f16 through f32 bits.
#[inline(always)]
fn widen<T: Element>(x: T) -> f64 {
    match T::DTYPE {
        DType::F32 => bytemuck::cast::<T, f32>(x) as f64,
        DType::BF16 => f32::from_bits((bytemuck::cast::<T, u16>(x) as u32) << 16) as f64,
        DType::F16 => f32::from_bits(f16_bits_to_f32_bits(bytemuck::cast::<T, u16>(x))) as f64,
    }
}

/// Exact f16 → f32 in integer arithmetic (branch-free selects): normals by rebiasing the
/// exponent, subnormals as `mantissa · 2^-24` (a normal f32: no denormal operand ever, whose
/// microcode assists made the float-multiply version 8× slower), Inf/NaN kept.
#[inline(always)]
fn f16_bits_to_f32_bits(h: u16) -> u32 {
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

/// One rounding from f64 to `T`: `Element::from_f64`, inlined so the loops vectorise.
#[inline(always)]
fn narrow<T: Element>(x: f64) -> T {
    T::from_f64(x)
}

/// Widened block of `LANES` elements starting at `e`.
#[inline(always)]
fn block<T: Element>(s: &[T], e: usize) -> [f64; LANES] {
    let b: &[T; LANES] = s[e..e + LANES].try_into().expect("block in range");
    std::array::from_fn(|l| widen(b[l]))
}

/// TwoSum of `x` into `(hi, lo)`, the same arithmetic as [`Acc::add`].
#[inline(always)]
fn two_sum(hi: &mut f64, lo: &mut f64, x: f64) {
    let s = *hi + x;
    let bp = s - *hi;
    let err = (*hi - (s - bp)) + (x - bp);
    *hi = s;
    *lo += err;
}

const LEVEL_UNKNOWN: u8 = 0;
const LEVEL_BASE: u8 = 1;
const LEVEL_AVX2: u8 = 2;
static LEVEL: AtomicU8 = AtomicU8::new(LEVEL_UNKNOWN);

/// The instruction-set level of this machine, detected once.
#[inline]
fn level() -> u8 {
    let l = LEVEL.load(Ordering::Relaxed);
    if l != LEVEL_UNKNOWN {
        return l;
    }
    #[cfg(target_arch = "x86_64")]
    let l = if std::arch::is_x86_feature_detected!("avx2") {
        LEVEL_AVX2
    } else {
        LEVEL_BASE
    };
    #[cfg(not(target_arch = "x86_64"))]
    let l = LEVEL_BASE;
    LEVEL.store(l, Ordering::Relaxed);
    l
}

/// Defines `$name` dispatching to AVX2 or baseline copies of the inline body
/// `$body` (same signature, generic over `T` and `K`).
macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[inline]
        fn $name<T: Element, const K: usize>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,avx")]
                unsafe fn avx2<T: Element, const K: usize>($($arg: $ty),*) -> $ret {
                    $body::<T, K>($($arg),*)
                }
                match level() {
                    // SAFETY: the CPU supports AVX2 (checked by `level`).
                    LEVEL_AVX2 => return unsafe { avx2::<T, K>($($arg),*) },
                    _ => {}
                }
            }
            $body::<T, K>($($arg),*)
        }
    };
}

/// Compensated partial sums of one chunk: packed Gram upper triangle then `Bᵀx` (zeros
/// without `v`), `x = v` or `v - v0` in f64.
pub(crate) fn chunk_partial<T: Element>(
    v: Option<&[T]>,
    v0: Option<&[T]>,
    basis: &[&[T]],
) -> [Acc; MAX_STRIDE] {
    match basis.len() {
        0 => [Acc::default(); MAX_STRIDE],
        1 => partial_mv::<T, 1>(v, v0, basis),
        2 => partial_mv::<T, 2>(v, v0, basis),
        3 => partial_mv::<T, 3>(v, v0, basis),
        4 => partial_mv::<T, 4>(v, v0, basis),
        5 => partial_mv::<T, 5>(v, v0, basis),
        6 => partial_mv::<T, 6>(v, v0, basis),
        7 => partial_mv::<T, 7>(v, v0, basis),
        _ => partial_mv::<T, 8>(v, v0, basis),
    }
}

multiversion!(partial_mv, partial_k, (v: Option<&[T]>, v0: Option<&[T]>, basis: &[&[T]]) -> [Acc; MAX_STRIDE]);

/// Widened block of `v` (or `v - v0`, in f64) starting at `e`.
#[inline(always)]
fn x_block<T: Element>(v: &[T], v0: Option<&[T]>, e: usize) -> [f64; LANES] {
    let mut x = block(v, e);
    if let Some(v0) = v0 {
        let y = block(v0, e);
        for l in 0..LANES {
            x[l] -= y[l];
        }
    }
    x
}

/// Element `e` of `v` (or `v - v0`, in f64).
#[inline(always)]
fn x_elem<T: Element>(v: &[T], v0: Option<&[T]>, e: usize) -> f64 {
    match v0 {
        Some(v0) => widen(v[e]) - widen(v0[e]),
        None => widen(v[e]),
    }
}

/// Adds the products of one block to the plain per-lane sums (a zero-padded tail adds
/// exact zeros).
#[inline(always)]
fn accumulate<const K: usize, const V: bool>(
    acc: &mut [[f64; LANES]; MAX_STRIDE],
    b: &[[f64; LANES]; K],
    x: &[f64; LANES],
) {
    let mut idx = 0;
    for i in 0..K {
        for j in i..K {
            for l in 0..LANES {
                acc[idx][l] += b[i][l] * b[j][l];
            }
            idx += 1;
        }
    }
    if V {
        for i in 0..K {
            for l in 0..LANES {
                acc[idx][l] += b[i][l] * x[l];
            }
            idx += 1;
        }
    }
}

/// Moves the plain per-lane sums of a run into the compensated lanes (TwoSum) and clears
/// them.
#[inline(always)]
fn flush(
    acc: &mut [[f64; LANES]; MAX_STRIDE],
    hi: &mut [[f64; LANES]; MAX_STRIDE],
    lo: &mut [[f64; LANES]; MAX_STRIDE],
    ns: usize,
) {
    for p in 0..ns {
        for l in 0..LANES {
            two_sum(&mut hi[p][l], &mut lo[p][l], acc[p][l]);
            acc[p][l] = 0.0;
        }
    }
}

/// Blocks of [`LANES`] elements summed plainly per lane before one compensated add: each
/// lane's plain run is 16 products long (the CUDA kernels run 64 per thread).
const RUN: usize = 16;

#[inline(always)]
fn partial_k<T: Element, const K: usize>(
    v: Option<&[T]>,
    v0: Option<&[T]>,
    basis: &[&[T]],
) -> [Acc; MAX_STRIDE] {
    match v {
        Some(v) => partial_kv::<T, K, true>(v, v0, basis),
        None => partial_kv::<T, K, false>(&[], None, basis),
    }
}

#[inline(always)]
fn partial_kv<T: Element, const K: usize, const V: bool>(
    v: &[T],
    v0: Option<&[T]>,
    basis: &[&[T]],
) -> [Acc; MAX_STRIDE] {
    let n = basis[0].len();
    let bs: [&[T]; K] = std::array::from_fn(|i| &basis[i][..n]);
    let v = if V { &v[..n] } else { v };
    let v0 = v0.map(|v0| &v0[..n]);
    let mut hi = [[0.0f64; LANES]; MAX_STRIDE];
    let mut lo = [[0.0f64; LANES]; MAX_STRIDE];
    let mut acc = [[0.0f64; LANES]; MAX_STRIDE];
    let full = n - n % LANES;
    let mut e = 0;
    let mut in_run = 0;
    while e < full {
        let b: [[f64; LANES]; K] = std::array::from_fn(|i| block(bs[i], e));
        let x = if V { x_block(v, v0, e) } else { [0.0; LANES] };
        accumulate::<K, V>(&mut acc, &b, &x);
        in_run += 1;
        if in_run == RUN {
            flush(&mut acc, &mut hi, &mut lo, partial_stride(K));
            in_run = 0;
        }
        e += LANES;
    }
    if full < n {
        let tail = n - full;
        let b: [[f64; LANES]; K] = std::array::from_fn(|i| {
            std::array::from_fn(|l| {
                if l < tail {
                    widen(bs[i][full + l])
                } else {
                    0.0
                }
            })
        });
        let x: [f64; LANES] = std::array::from_fn(|l| {
            if V && l < tail {
                x_elem(v, v0, full + l)
            } else {
                0.0
            }
        });
        accumulate::<K, V>(&mut acc, &b, &x);
    }
    flush(&mut acc, &mut hi, &mut lo, partial_stride(K));
    let mut out = [Acc::default(); MAX_STRIDE];
    for p in 0..partial_stride(K) {
        for l in 0..LANES {
            out[p].merge(Acc {
                hi: hi[p][l],
                lo: lo[p][l],
            });
        }
    }
    out
}

/// The operands of one chunk of pass 2: `x = v` or `v - v0`, the basis slices (after the
/// destination itself with `MODE_B0_OUT`), the base, and the kernels' apply mode (ABI
/// `MODE_*`, [`crate::Projection`]'s `mode`: the same bits the CUDA kernel reads).
#[derive(Clone, Copy)]
pub(crate) struct ApplyIn<'a, T> {
    pub v: &'a [T],
    pub v0: Option<&'a [T]>,
    pub basis: &'a [&'a [T]],
    /// The base term's buffer (`MODE_BASE`).
    pub base: Option<&'a [T]>,
    pub mode: i32,
}

/// `out = base_term + beta·(x - Σ_i w_i b_i)` over one chunk, in f64, one rounding.
pub(crate) fn chunk_apply<T: Element>(
    x: ApplyIn<'_, T>,
    w: &[f64],
    alpha: f64,
    beta: f64,
    out: &mut [T],
) {
    match x.basis.len() + usize::from(x.mode & MODE_B0_OUT != 0) {
        0 => apply_mv::<T, 0>(x, w, alpha, beta, out),
        1 => apply_mv::<T, 1>(x, w, alpha, beta, out),
        2 => apply_mv::<T, 2>(x, w, alpha, beta, out),
        3 => apply_mv::<T, 3>(x, w, alpha, beta, out),
        4 => apply_mv::<T, 4>(x, w, alpha, beta, out),
        5 => apply_mv::<T, 5>(x, w, alpha, beta, out),
        6 => apply_mv::<T, 6>(x, w, alpha, beta, out),
        7 => apply_mv::<T, 7>(x, w, alpha, beta, out),
        _ => apply_mv::<T, 8>(x, w, alpha, beta, out),
    }
}

multiversion!(apply_mv, apply_k, (x: ApplyIn<'_, T>, w: &[f64], alpha: f64, beta: f64, out: &mut [T]) -> ());

/// What pass 2 adds to `beta·(x - P x)`, from the apply mode.
enum BaseTerm<'a, T> {
    None,
    Slice(&'a [T]),
    InPlace,
}

#[inline(always)]
fn apply_k<T: Element, const K: usize>(
    x: ApplyIn<'_, T>,
    w: &[f64],
    alpha: f64,
    beta: f64,
    out: &mut [T],
) {
    let n = out.len();
    let v = &x.v[..n];
    let v0 = x.v0.map(|v0| &v0[..n]);
    let off = usize::from(x.mode & MODE_B0_OUT != 0);
    let mode = match (x.base, x.mode & MODE_MASK) {
        (Some(b), _) => BaseTerm::Slice(b),
        (None, MODE_INPLACE) => BaseTerm::InPlace,
        (None, _) => BaseTerm::None,
    };
    let empty: &[T] = &[];
    // Slot i < off is the destination (read from `o` below), never from `bs`.
    let bs: [&[T]; K] = std::array::from_fn(|i| {
        if i < off {
            empty
        } else {
            &x.basis[i - off][..n]
        }
    });
    let w: [f64; K] = std::array::from_fn(|i| w[i]);
    // x - Σ w_i b_i for element e; `o` is the destination's current value.
    let perp = |e: usize, o: f64| {
        let mut y = x_elem(v, v0, e);
        for i in 0..K {
            y -= w[i] * if i < off { o } else { widen(bs[i][e]) };
        }
        y
    };
    let perp_block = |e: usize, o: &[f64; LANES]| {
        let mut y = x_block(v, v0, e);
        for i in 0..K {
            let b = if i < off { *o } else { block(bs[i], e) };
            for l in 0..LANES {
                y[l] -= w[i] * b[l];
            }
        }
        y
    };
    let zeros = [0.0f64; LANES];
    let full = n - n % LANES;
    match mode {
        BaseTerm::None => {
            for e in (0..full).step_by(LANES) {
                let y = perp_block(e, &zeros);
                let o: &mut [T; LANES] = (&mut out[e..e + LANES]).try_into().expect("block");
                for l in 0..LANES {
                    o[l] = narrow::<T>(beta * y[l]);
                }
            }
            for e in full..n {
                out[e] = narrow::<T>(beta * perp(e, 0.0));
            }
        }
        BaseTerm::Slice(base) => {
            let base = &base[..n];
            for e in (0..full).step_by(LANES) {
                let y = perp_block(e, &zeros);
                let bb = block(base, e);
                let o: &mut [T; LANES] = (&mut out[e..e + LANES]).try_into().expect("block");
                for l in 0..LANES {
                    o[l] = narrow::<T>(alpha * bb[l] + beta * y[l]);
                }
            }
            for e in full..n {
                out[e] = narrow::<T>(alpha * widen(base[e]) + beta * perp(e, 0.0));
            }
        }
        BaseTerm::InPlace => {
            for e in (0..full).step_by(LANES) {
                let o: &mut [T; LANES] = (&mut out[e..e + LANES]).try_into().expect("block");
                let ob: [f64; LANES] = std::array::from_fn(|l| widen(o[l]));
                let y = perp_block(e, &ob);
                for l in 0..LANES {
                    o[l] = narrow::<T>(alpha * ob[l] + beta * y[l]);
                }
            }
            for e in full..n {
                let o = widen(out[e]);
                out[e] = narrow::<T>(alpha * o + beta * perp(e, o));
            }
        }
    }
}

/// In place over one chunk: `q_j = Σ_{i<=j} m[i*k + j] · b_i` for every element.
pub(crate) fn chunk_orth<T: Element>(basis: &mut [&mut [T]], m: &[f64]) {
    match basis.len() {
        0 => {}
        1 => orth_mv::<T, 1>(basis, m),
        2 => orth_mv::<T, 2>(basis, m),
        3 => orth_mv::<T, 3>(basis, m),
        4 => orth_mv::<T, 4>(basis, m),
        5 => orth_mv::<T, 5>(basis, m),
        6 => orth_mv::<T, 6>(basis, m),
        7 => orth_mv::<T, 7>(basis, m),
        _ => orth_mv::<T, 8>(basis, m),
    }
}

multiversion!(orth_mv, orth_k, (basis: &mut [&mut [T]], m: &[f64]) -> ());

#[inline(always)]
fn orth_k<T: Element, const K: usize>(basis: &mut [&mut [T]], m: &[f64]) {
    let n = basis[0].len();
    let mut mm = [[0.0f64; K]; K];
    for i in 0..K {
        for j in i..K {
            mm[i][j] = m[i * K + j];
        }
    }
    let mut e = 0;
    while e < n {
        let lanes = LANES.min(n - e);
        let mut b = [[0.0f64; LANES]; K];
        for i in 0..K {
            let s = &basis[i][e..e + lanes];
            for l in 0..lanes {
                b[i][l] = widen(s[l]);
            }
        }
        for j in 0..K {
            let mut q = [0.0f64; LANES];
            for i in 0..=j {
                for l in 0..LANES {
                    q[l] += mm[i][j] * b[i][l];
                }
            }
            let d = &mut basis[j][e..e + lanes];
            for l in 0..lanes {
                d[l] = narrow::<T>(q[l]);
            }
        }
        e += lanes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn f16_widening_is_exact() {
        for h in 0..=u16::MAX {
            let a = f32::from_bits(f16_bits_to_f32_bits(h));
            let b = f16::from_bits(h).to_f32();
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{h:#x}"
            );
        }
    }
}
