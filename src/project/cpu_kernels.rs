//! Per-chunk loops of the CPU backend, monomorphised over k (0..=8) so the inner loops
//! unroll and vectorise. Each function handles one chunk of one segment.
//!
//! # Layout of the loops
//! Elements are processed in blocks of [`LANES`] = 8: every block is widened to f64 lanes
//! (exactly) and every product keeps 8 independent compensated accumulators, one per lane,
//! stored as separate `hi`/`lo` arrays so that one TwoSum is a handful of vector
//! instructions. The lanes are merged 0, 1, …, 7 at the end, always in that order. Results
//! are rounded once from f64 to the element type, a block at a time.
//!
//! # Instruction sets
//! The same generic body is compiled for each level and chosen at run time by [`level`]:
//! baseline x86-64 (conversions by the scalar code of [`crate::dtype::convert`], left to
//! LLVM's vectoriser), AVX2 + F16C (block conversions by intrinsics,
//! [`crate::dtype::avx2`]) and, where `build.rs` found a compiler that has them (Rust ≥
//! 1.89, cfg `redreg_avx512`), AVX-512 F/BW/VL ([`crate::dtype::avx512`]: a block is one
//! 512-bit f64 vector, so the f64 arithmetic takes half the instructions), and the same
//! with BF16 (f64 → bf16 by `vcvtneps2bf16`). Only IEEE
//! add/sub/mul/convert are used (no FMA, no reassociation), on the same lanes in the same
//! order, and the block conversions give the scalar code's bits, so every version gives
//! the same bits (`levels_give_the_same_bits`; a NaN's sign or payload excepted,
//! `docs/numerics.md`).

// Index loops on purpose: this code mirrors the CUDA C kernels line for line.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use crate::abi::{MODE_B0_OUT, MODE_INPLACE, MODE_MASK};
#[cfg(target_arch = "x86_64")]
use crate::dtype::avx2::Avx2F16c;
#[cfg(all(target_arch = "x86_64", redreg_avx512))]
use crate::dtype::avx512::{Avx512, Avx512Bf16};
use crate::dtype::convert::{narrow, widen, Convert, Scalar, BLOCK};
#[cfg(test)]
use crate::dtype::level::levels;
use crate::dtype::level::{level, Level};
use crate::dtype::Element;
use crate::project::solve::{partial_stride, MAX_K};
use crate::sum::Acc;

/// Partials of the largest supported k.
pub(crate) const MAX_STRIDE: usize = partial_stride(MAX_K);

/// Interleaved compensated accumulators per product (one per f64 lane of a block).
const LANES: usize = BLOCK;

/// Widened block of `LANES` elements starting at `e`.
#[inline(always)]
fn block<T: Element, C: Convert>(cv: C, s: &[T], e: usize) -> [f64; LANES] {
    let b: &[T; LANES] = s[e..e + LANES].try_into().expect("block in range");
    cv.widen_block(b)
}

/// `LANES` values rounded once to `T` into `out[e..e + LANES]`.
#[inline(always)]
fn narrow_block<T: Element, C: Convert>(cv: C, x: &[f64; LANES], out: &mut [T], e: usize) {
    let o: &mut [T; LANES] = (&mut out[e..e + LANES]).try_into().expect("block in range");
    cv.narrow_block(x, o);
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

/// Defines `$name`, which runs the inline body `$body` (same arguments after its
/// conversion token, generic over `T`, `K` and the token's type) compiled for the given
/// level.
macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[inline]
        fn $name<T: Element, const K: usize>(lv: Level, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,avx,f16c")]
                unsafe fn avx2<T: Element, const K: usize>(cv: Avx2F16c, $($arg: $ty),*) -> $ret {
                    $body::<T, K, Avx2F16c>(cv, $($arg),*)
                }
                if let Level::Avx2(cv) = lv {
                    // SAFETY: the token proves the CPU has AVX2 and F16C.
                    return unsafe { avx2::<T, K>(cv, $($arg),*) };
                }
                #[cfg(redreg_avx512)]
                {
                    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,avx,f16c")]
                    unsafe fn avx512<T: Element, const K: usize>(cv: Avx512, $($arg: $ty),*) -> $ret {
                        $body::<T, K, Avx512>(cv, $($arg),*)
                    }
                    if let Level::Avx512(cv) = lv {
                        // SAFETY: the token proves the CPU has AVX-512 F/BW/VL, AVX2, F16C.
                        return unsafe { avx512::<T, K>(cv, $($arg),*) };
                    }
                    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512dq,avx2,avx,f16c")]
                    unsafe fn avx512bf16<T: Element, const K: usize>(cv: Avx512Bf16, $($arg: $ty),*) -> $ret {
                        $body::<T, K, Avx512Bf16>(cv, $($arg),*)
                    }
                    if let Level::Avx512Bf16(cv) = lv {
                        // SAFETY: the token proves the CPU has AVX-512 F/BW/VL/BF16/DQ, AVX2,
                        // F16C.
                        return unsafe { avx512bf16::<T, K>(cv, $($arg),*) };
                    }
                }
            }
            $body::<T, K, Scalar>(Scalar, $($arg),*)
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
    chunk_partial_at(level(), v, v0, basis)
}

/// [`chunk_partial`] at a given level.
fn chunk_partial_at<T: Element>(
    lv: Level,
    v: Option<&[T]>,
    v0: Option<&[T]>,
    basis: &[&[T]],
) -> [Acc; MAX_STRIDE] {
    match basis.len() {
        0 => [Acc::default(); MAX_STRIDE],
        1 => partial_mv::<T, 1>(lv, v, v0, basis),
        2 => partial_mv::<T, 2>(lv, v, v0, basis),
        3 => partial_mv::<T, 3>(lv, v, v0, basis),
        4 => partial_mv::<T, 4>(lv, v, v0, basis),
        5 => partial_mv::<T, 5>(lv, v, v0, basis),
        6 => partial_mv::<T, 6>(lv, v, v0, basis),
        7 => partial_mv::<T, 7>(lv, v, v0, basis),
        _ => partial_mv::<T, 8>(lv, v, v0, basis),
    }
}

multiversion!(partial_mv, partial_k, (v: Option<&[T]>, v0: Option<&[T]>, basis: &[&[T]]) -> [Acc; MAX_STRIDE]);

/// Widened block of `v` (or `v - v0`, in f64) starting at `e`.
#[inline(always)]
fn x_block<T: Element, C: Convert>(cv: C, v: &[T], v0: Option<&[T]>, e: usize) -> [f64; LANES] {
    let mut x = block(cv, v, e);
    if let Some(v0) = v0 {
        let y = block(cv, v0, e);
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
/// lane's plain run is 64 products long, as the CUDA kernels' per-thread runs. (Runs of 16
/// cost 6–9 % more time per drift step, in the flushes; the accuracy against CGS2 at
/// κ = 1e6 goes from 1.0e-7 to 3.2e-7, `tests/reference_props.rs`.)
const RUN: usize = 64;

#[inline(always)]
fn partial_k<T: Element, const K: usize, C: Convert>(
    cv: C,
    v: Option<&[T]>,
    v0: Option<&[T]>,
    basis: &[&[T]],
) -> [Acc; MAX_STRIDE] {
    match v {
        Some(v) => partial_kv::<T, K, true, C>(cv, v, v0, basis),
        None => partial_kv::<T, K, false, C>(cv, &[], None, basis),
    }
}

#[inline(always)]
fn partial_kv<T: Element, const K: usize, const V: bool, C: Convert>(
    cv: C,
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
        let b: [[f64; LANES]; K] = std::array::from_fn(|i| block(cv, bs[i], e));
        let x = if V {
            x_block(cv, v, v0, e)
        } else {
            [0.0; LANES]
        };
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

/// What pass 2 adds to `beta·(x - P x)`, from the apply mode.
enum BaseTerm<'a, T> {
    None,
    Slice(&'a [T]),
    InPlace,
}

/// `out = base_term + beta·(x - Σ_i w_i b_i)` over one chunk, in f64, one rounding.
pub(crate) fn chunk_apply<T: Element>(
    x: ApplyIn<'_, T>,
    w: &[f64],
    alpha: f64,
    beta: f64,
    out: &mut [T],
) {
    chunk_apply_at(level(), x, w, alpha, beta, out)
}

/// [`chunk_apply`] at a given level.
fn chunk_apply_at<T: Element>(
    lv: Level,
    x: ApplyIn<'_, T>,
    w: &[f64],
    alpha: f64,
    beta: f64,
    out: &mut [T],
) {
    match x.basis.len() + usize::from(x.mode & MODE_B0_OUT != 0) {
        0 => apply_mv::<T, 0>(lv, x, w, alpha, beta, out),
        1 => apply_mv::<T, 1>(lv, x, w, alpha, beta, out),
        2 => apply_mv::<T, 2>(lv, x, w, alpha, beta, out),
        3 => apply_mv::<T, 3>(lv, x, w, alpha, beta, out),
        4 => apply_mv::<T, 4>(lv, x, w, alpha, beta, out),
        5 => apply_mv::<T, 5>(lv, x, w, alpha, beta, out),
        6 => apply_mv::<T, 6>(lv, x, w, alpha, beta, out),
        7 => apply_mv::<T, 7>(lv, x, w, alpha, beta, out),
        _ => apply_mv::<T, 8>(lv, x, w, alpha, beta, out),
    }
}

multiversion!(apply_mv, apply_k, (x: ApplyIn<'_, T>, w: &[f64], alpha: f64, beta: f64, out: &mut [T]) -> ());

/// `x - Σ w_i b_i` of pass 2, per element or per block. Functions rather than closures:
/// a closure is compiled without the AVX2 copy's target features, and LLVM left it out of
/// line (a call per block, results through the stack).
struct Perp<'a, T, const K: usize> {
    v: &'a [T],
    v0: Option<&'a [T]>,
    /// Slot i < `off` is the destination (its value is passed in), never read from here.
    bs: [&'a [T]; K],
    off: usize,
    w: [f64; K],
}

impl<T: Element, const K: usize> Perp<'_, T, K> {
    /// Element `e`; `o` is the destination's current value.
    #[inline(always)]
    fn elem(&self, e: usize, o: f64) -> f64 {
        let mut y = x_elem(self.v, self.v0, e);
        for i in 0..K {
            y -= self.w[i]
                * if i < self.off {
                    o
                } else {
                    widen(self.bs[i][e])
                };
        }
        y
    }

    /// The block at `e`; `o` holds the destination's current values.
    #[inline(always)]
    fn block<C: Convert>(&self, cv: C, e: usize, o: &[f64; LANES]) -> [f64; LANES] {
        let mut y = x_block(cv, self.v, self.v0, e);
        for i in 0..K {
            let b = if i < self.off {
                *o
            } else {
                block(cv, self.bs[i], e)
            };
            for l in 0..LANES {
                y[l] -= self.w[i] * b[l];
            }
        }
        y
    }
}

#[inline(always)]
fn apply_k<T: Element, const K: usize, C: Convert>(
    cv: C,
    x: ApplyIn<'_, T>,
    w: &[f64],
    alpha: f64,
    beta: f64,
    out: &mut [T],
) {
    let n = out.len();
    let off = usize::from(x.mode & MODE_B0_OUT != 0);
    let mode = match (x.base, x.mode & MODE_MASK) {
        (Some(b), _) => BaseTerm::Slice(b),
        (None, MODE_INPLACE) => BaseTerm::InPlace,
        (None, _) => BaseTerm::None,
    };
    let empty: &[T] = &[];
    let p = Perp::<T, K> {
        v: &x.v[..n],
        v0: x.v0.map(|v0| &v0[..n]),
        bs: std::array::from_fn(|i| {
            if i < off {
                empty
            } else {
                &x.basis[i - off][..n]
            }
        }),
        off,
        w: std::array::from_fn(|i| w[i]),
    };
    let zeros = [0.0f64; LANES];
    let full = n - n % LANES;
    match mode {
        BaseTerm::None => {
            for e in (0..full).step_by(LANES) {
                let y = p.block(cv, e, &zeros);
                let r: [f64; LANES] = std::array::from_fn(|l| beta * y[l]);
                narrow_block(cv, &r, out, e);
            }
            for e in full..n {
                out[e] = narrow::<T>(beta * p.elem(e, 0.0));
            }
        }
        BaseTerm::Slice(base) => {
            let base = &base[..n];
            for e in (0..full).step_by(LANES) {
                let y = p.block(cv, e, &zeros);
                let bb = block(cv, base, e);
                let r: [f64; LANES] = std::array::from_fn(|l| alpha * bb[l] + beta * y[l]);
                narrow_block(cv, &r, out, e);
            }
            for e in full..n {
                out[e] = narrow::<T>(alpha * widen(base[e]) + beta * p.elem(e, 0.0));
            }
        }
        // `1·o` is `o` bit for bit (every widened value is a quiet NaN or a number), so
        // the script's `alpha = 1` skips the multiply: one f64 operation of six per
        // element, the same bits.
        BaseTerm::InPlace if alpha == 1.0 => in_place::<T, K, C, true>(cv, &p, 1.0, beta, out),
        BaseTerm::InPlace => in_place::<T, K, C, false>(cv, &p, alpha, beta, out),
    }
}

/// Pass 2 in place, `out = alpha·out + beta·(x - Σ w_i b_i)`; `ONE`: `alpha` is 1.
#[inline(always)]
fn in_place<T: Element, const K: usize, C: Convert, const ONE: bool>(
    cv: C,
    p: &Perp<'_, T, K>,
    alpha: f64,
    beta: f64,
    out: &mut [T],
) {
    let n = out.len();
    let full = n - n % LANES;
    let scale = |o: f64| if ONE { o } else { alpha * o };
    for e in (0..full).step_by(LANES) {
        let ob = block(cv, out, e);
        let y = p.block(cv, e, &ob);
        let r: [f64; LANES] = std::array::from_fn(|l| scale(ob[l]) + beta * y[l]);
        narrow_block(cv, &r, out, e);
    }
    for e in full..n {
        let o = widen(out[e]);
        out[e] = narrow::<T>(scale(o) + beta * p.elem(e, o));
    }
}

/// In place over one chunk: `q_j = Σ_{i<=j} m[i*k + j] · b_i` for every element.
pub(crate) fn chunk_orth<T: Element>(basis: &mut [&mut [T]], m: &[f64]) {
    chunk_orth_at(level(), basis, m)
}

/// [`chunk_orth`] at a given level.
fn chunk_orth_at<T: Element>(lv: Level, basis: &mut [&mut [T]], m: &[f64]) {
    match basis.len() {
        0 => {}
        1 => orth_mv::<T, 1>(lv, basis, m),
        2 => orth_mv::<T, 2>(lv, basis, m),
        3 => orth_mv::<T, 3>(lv, basis, m),
        4 => orth_mv::<T, 4>(lv, basis, m),
        5 => orth_mv::<T, 5>(lv, basis, m),
        6 => orth_mv::<T, 6>(lv, basis, m),
        7 => orth_mv::<T, 7>(lv, basis, m),
        _ => orth_mv::<T, 8>(lv, basis, m),
    }
}

multiversion!(orth_mv, orth_k, (basis: &mut [&mut [T]], m: &[f64]) -> ());

#[inline(always)]
fn orth_k<T: Element, const K: usize, C: Convert>(cv: C, basis: &mut [&mut [T]], m: &[f64]) {
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
            if lanes == LANES {
                b[i] = block(cv, basis[i], e);
            } else {
                let s = &basis[i][e..e + lanes];
                for l in 0..lanes {
                    b[i][l] = widen(s[l]);
                }
            }
        }
        for j in 0..K {
            let mut q = [0.0f64; LANES];
            for i in 0..=j {
                for l in 0..LANES {
                    q[l] += mm[i][j] * b[i][l];
                }
            }
            if lanes == LANES {
                narrow_block(cv, &q, basis[j], e);
            } else {
                let d = &mut basis[j][e..e + lanes];
                for l in 0..lanes {
                    d[l] = narrow::<T>(q[l]);
                }
            }
        }
        e += lanes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{MODE_BASE, MODE_NONE};
    use crate::testing::Rng;
    use half::{bf16, f16};

    /// Random elements with every special class sprinkled in (±0, subnormals, ±Inf, NaN,
    /// values near the type's overflow).
    fn data<T: Element>(rng: &mut Rng, n: usize, specials: bool) -> Vec<T> {
        let tiny = [1e-40, 3e-8, 6e-5, 1e-320];
        (0..n)
            .map(|_| {
                let x = rng.signed(1.0);
                T::from_f64(match rng.below(if specials { 40 } else { 1 }) {
                    1 => 0.0,
                    2 => -0.0,
                    3 => f64::NAN,
                    4 => f64::INFINITY,
                    5 => tiny[rng.below(tiny.len())] * x,
                    6 => 65000.0 * x,
                    _ => x,
                })
            })
            .collect()
    }

    /// The bits of `x`, any NaN as one: which NaN an arithmetic operation returns when
    /// both operands are NaN depends on the operand order the compiler picked, which the
    /// two copies of a loop may pick differently (`docs/numerics.md`, *NaN payloads*).
    fn key(x: f64) -> u64 {
        if x.is_nan() {
            f64::NAN.to_bits()
        } else {
            x.to_bits()
        }
    }

    fn bits<T: Element>(xs: &[T]) -> Vec<u64> {
        xs.iter().map(|&x| key(widen(x))).collect()
    }

    fn acc_bits(p: &[Acc; MAX_STRIDE]) -> Vec<(u64, u64)> {
        p.iter().map(|a| (key(a.hi), key(a.lo))).collect()
    }

    /// Every kernel at every level this machine has gives the baseline's bits: pass 1,
    /// pass 2 in every mode (with and without `v0`, with the destination as basis 0), and
    /// orthonormalize, over full blocks and a tail, with NaN, Inf and subnormals in the
    /// data.
    fn same_bits<T: Element>() {
        let levels = levels();
        if levels.len() == 1 {
            println!("SKIP {}: only the baseline level on this CPU", T::DTYPE);
        }
        let mut rng = Rng::new(0xb175);
        for k in 0..=MAX_K {
            for (n, specials) in [
                (8 * 37 + 5, false),
                (8 * 37 + 5, true),
                (8, true),
                (3, true),
            ] {
                let v: Vec<T> = data(&mut rng, n, specials);
                let v0: Vec<T> = data(&mut rng, n, specials);
                let basis: Vec<Vec<T>> = (0..k).map(|_| data(&mut rng, n, specials)).collect();
                let bs: Vec<&[T]> = basis.iter().map(|b| b.as_slice()).collect();
                let base: Vec<T> = data(&mut rng, n, specials);
                let w: Vec<f64> = (0..MAX_K).map(|_| rng.signed(2.0)).collect();
                let m: Vec<f64> = (0..k * k).map(|_| rng.signed(2.0)).collect();
                let run = |lv: Level| {
                    let mut out = Vec::new();
                    if k > 0 {
                        for (vv, vv0) in [
                            (None, None),
                            (Some(&v[..]), None),
                            (Some(&v[..]), Some(&v0[..])),
                        ] {
                            out.push(acc_bits(&chunk_partial_at(lv, vv, vv0, &bs)));
                        }
                    }
                    let mut dests = Vec::new();
                    for (i, b0_out) in [(0, false), (1, false), (2, false), (2, true)] {
                        if b0_out && k == 0 {
                            continue;
                        }
                        let (mode, base_buf) = match i {
                            0 if !b0_out => (MODE_NONE, None),
                            1 if !b0_out => (MODE_BASE, Some(&base[..])),
                            _ => (MODE_INPLACE, None),
                        };
                        let x = ApplyIn {
                            v: &v,
                            v0: (i > 0).then_some(&v0[..]),
                            basis: if b0_out { &bs[1..] } else { &bs },
                            base: base_buf,
                            mode: mode | if b0_out { MODE_B0_OUT } else { 0 },
                        };
                        for alpha in [0.75, 1.0] {
                            let mut o = base.clone();
                            chunk_apply_at(lv, x, &w[..k], alpha, -1.5, &mut o);
                            dests.push(bits(&o));
                        }
                    }
                    let mut ob = basis.clone();
                    let mut views: Vec<&mut [T]> =
                        ob.iter_mut().map(|b| b.as_mut_slice()).collect();
                    chunk_orth_at(lv, &mut views, &m);
                    dests.extend(ob.iter().map(|b| bits(b)));
                    (out, dests)
                };
                let want = run(Level::Base);
                for &lv in &levels[1..] {
                    let got = run(lv);
                    assert_eq!(got.0, want.0, "pass 1 {} k={k} n={n} at {lv:?}", T::DTYPE);
                    for (g, w) in got.1.iter().zip(&want.1) {
                        assert_eq!(g, w, "{} k={k} n={n} at {lv:?}", T::DTYPE);
                    }
                }
            }
        }
    }

    /// The `alpha = 1` copy of pass 2 in place (no multiply) gives the general copy's
    /// bits at `alpha = 1`, specials included.
    fn alpha_one<T: Element>() {
        let mut rng = Rng::new(0xa1);
        let n = 8 * 41 + 6;
        let v: Vec<T> = data(&mut rng, n, true);
        let v0: Vec<T> = data(&mut rng, n, true);
        let b1: Vec<T> = data(&mut rng, n, true);
        let empty: &[T] = &[];
        let p = Perp::<T, 2> {
            v: &v,
            v0: Some(&v0),
            bs: [empty, &b1],
            off: 1,
            w: [0.625, -1.25],
        };
        let start: Vec<T> = data(&mut rng, n, true);
        let (mut one, mut general) = (start.clone(), start);
        in_place::<T, 2, Scalar, true>(Scalar, &p, 1.0, -0.375, &mut one);
        in_place::<T, 2, Scalar, false>(Scalar, &p, 1.0, -0.375, &mut general);
        assert_eq!(bits(&one), bits(&general), "{}", T::DTYPE);
    }

    #[test]
    fn alpha_one_gives_the_general_bits() {
        alpha_one::<f32>();
        alpha_one::<f16>();
        alpha_one::<bf16>();
    }

    #[test]
    fn levels_give_the_same_bits() {
        same_bits::<f32>();
        same_bits::<f16>();
        same_bits::<bf16>();
    }
}
