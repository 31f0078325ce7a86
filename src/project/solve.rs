//! The tiny per-segment solve shared by the CPU reference, the CPU backend and (in CUDA C,
//! line for line) the GPU kernels.
//!
//! # Method
//! For one segment with basis `B = [b_1 .. b_k]` (not assumed orthonormal) and vector `v`,
//! the first pass gives the Gram matrix `G = BᵀB` and `c = Bᵀv` (accumulated in f64; f32,
//! f16 and bf16 products are exact in f64, so only the summation rounds). Then:
//!
//! 1. **Rank decision** — a Cholesky factorisation of the raw `G` in the natural order
//!    `1..k`. Its pivot `d_j = G_jj - Σ_{i<j} L_ji²` is, in exact arithmetic, the squared
//!    norm of the residual of `b_j` after removing the span of the earlier kept vectors:
//!    exactly the quantity classical Gram-Schmidt tests. The rule is in *Rank rule* below.
//! 2. **Solve** — `(G_K + ridge·I) w_K = c_K` on the kept set K by Cholesky (positive
//!    definite there), `w_j = 0` for dropped j. With `ridge = 0` this is the exact
//!    orthogonal projector onto `span{b_j}`. The default `ridge = 1e-12` is the authors'
//!    script's `g·g + 1e-12` (see [`crate::ProjectOptions`]); with k = 1 the result is the
//!    script's closed form `v - (v·g / (g·g + 1e-12)) g`.
//! 3. **Apply** (second pass, elsewhere): `out = alpha·base + beta·(v - Σ_j w_j b_j)`.
//!
//! # Limits
//! Normal equations square the condition number κ of the basis, so one long plain f64
//! sum (error ~ `sqrt(n)·1e-16` of the Gram matrix) gives up to ~1e-4 at κ = 1e6. The pass-1
//! sums are therefore kept short before they are combined exactly: the reference sums
//! every product with TwoSum ([`crate::sum::Acc`]); the CPU backend sums 64 products per
//! lane plainly and adds each run with TwoSum. Measured against explicit CGS2 at κ = 1e6
//! with f32 data (k = 2, 4, 8): ≤ 1.1e-7 for the reference (the test asks for 1e-5),
//! ≤ 3.2e-7 for the CPU backend (the test asks for 1e-6, which one plain sum per lane
//! misses; `tests/reference_props.rs`). What remains is mostly the f64 Cholesky.
//!
//! The CUDA kernels sum plainly in f64 per thread (≤ 64 products) and combine the
//! thread, warp and chunk partials in fixed trees; a simulation of exactly that order
//! (numpy, κ = 1e6, k = 4) stays within 1e-6 of CGS2, against up to 1e-4 for one
//! sequential plain sum. The GPU tests check the agreement with the oracle.
//!
//! # Rank rule
//! Vector `b_j` is kept when `G_jj > 0`, fewer than `max_rank` vectors are kept so far, and
//!
//! ```text
//! d_j > max(tol²·G_jj, 64·k·u·a_j²),   a_j = |b_j| + Σ_{i kept} |w_i|·|b_i|,   u = 2^-53
//! ```
//!
//! where `w = L_K⁻ᵀ l_j` are `b_j`'s coefficients on the kept vectors (`b_j ≈ Σ w_i b_i`;
//! `l_j` is row j of the factor) and `|b_i| = sqrt(G_ii)`.
//!
//! *Why the noise term.* The computed factor is the exact one of `G + ΔG` with
//! `|ΔG_ik| ≲ c·u·|b_i|·|b_k|` (Cholesky is backward stable; the pass-1 sums add a similar
//! relative error). The pivot is the Schur complement `d_j = G_jj − 2wᵀg_j + wᵀG_K w` at
//! the optimum, so to first order it moves by `ΔG_jj − 2wᵀΔg_j + wᵀΔG_K w`, which is at
//! most `c·u·a_j²`. For a vector that depends on ill-conditioned kept vectors, `w` is large
//! (up to `|b_j|/σ_min(B_K)`): that is the squared-condition loss of Gram-based methods,
//! here measured for the actual vector instead of assumed for the worst direction. With
//! only `tol² = 1e-14` (≈ 100·u), noise alone kept vectors: 129 of 3000 segments of length
//! 0..8 at k = 8 reported a rank above their length.
//! *Margin.* Over 120,000 random segments (k = 2..8, length 0..8, uniform f32 data, Gram
//! sums exact or plain), the largest `d_j / (u·a_j²)` of an exactly dependent vector was
//! 1.34; the factor `64·k` (128..512) is ≥ 200× that at every k (k = 3..8; at k = 2 the
//! noise was 0). The smallest value of an independent vector in the same runs was 5e5.
//! Long segments: the pass-1 sums of the CUDA kernels are plain per thread (≤ 64 products,
//! then trees: up to ~75·u·|b_i||b_k| per entry), still inside the factor. Conditioned bases (`tests/reference_props.rs`,
//! κ = 1e6, f32): the last vector's `d/(u·a²)` is ~1e4, kept; at κ = 1e7 it is ~1e2 and
//! the vector is dropped (beyond what the f64 Gram matrix of f32 data resolves).
//!
//! *The cap.* `max_rank` is `min(segment length, k)` whenever the segment's own data gave
//! the partials (`project_out`, `orthonormalize`, every backend): once `len` vectors are
//! kept they span the segment, so any further vector is exactly dependent and dropped
//! without a test. The split form's `apply` takes partials that may be summed over shards
//! (the global length is unknown there), so it caps at `k` and relies on the noise term.
//!
//! *Limits.* A nearly dependent vector whose residual is below the noise term is dropped
//! where explicit CGS2 ([`crate::project::reference::orthonormalize`]) may keep it; its residual is
//! then below what the Gram matrix can resolve, so the projection changes by about that
//! residual. The bound is first order and uses the factor's own `L`, so a severely
//! ill-conditioned kept set (κ ≳ 1e7 in f64) can still misjudge; the cap bounds the rank by
//! the length in any case. With `tol` above the noise term, `tol` decides as before.
//!
//! # Same arithmetic on every backend
//! The solve uses only `+ - * / sqrt`, each rounded once to nearest: Rust never contracts
//! `a*b + c` into a fused multiply-add (it has no fast-math; `f64::mul_add` is not used
//! here), and the CUDA port (`kernels/project.cu`, `rr_factor` … `rr_orth_segment`) writes
//! every operation as an explicitly rounded intrinsic (`__dmul_rn`, `__dadd_rn`, `__dsub_rn`,
//! `__ddiv_rn`, `__dsqrt_rn`), which ptxas never fuses. The same partials therefore give the
//! same rank and bit-identical coefficients on every backend (the split form feeds the same
//! host partials to both: `tests/project.rs`, `split_form_matches_reference`). When the backends' Gram matrices differ
//! in the last bits (different summation orders in pass 1), a decision within a small
//! factor of the threshold may still differ; [`decision_margin`] says how close a segment
//! was, and the cross-backend tests accept rank differences only on such borderline segments.

//! # Non-finite input
//! Any NaN or ±Inf in `G` or `c` gives NaN coefficients and rank 0: the whole segment's
//! output becomes NaN rather than a silently wrong number (`docs/numerics.md`).

// Index loops on purpose: this code mirrors the CUDA C kernels line for line.
#![allow(clippy::needless_range_loop)]

/// Largest supported number of basis vectors per segment (GPU kernels keep the k×k Gram
/// accumulators in registers): the kernels' `RR_MAX_K`, from the ABI table ([`crate::abi`]).
pub use crate::abi::MAX_K;

/// Number of f64 values of one segment's partial sums (defined with the ABI table, which
/// generates the kernels' `RR_STRIDE(k)` from it).
pub use crate::abi::partial_stride;

/// Index of `G[i][j]` (`i <= j`) in the packed upper triangle of a k×k matrix.
#[inline(always)]
pub const fn tri_index(k: usize, i: usize, j: usize) -> usize {
    // Rows 0..i hold k + (k-1) + ... + (k-i+1) = i*k - i*(i-1)/2 values.
    i * k - (i * i - i) / 2 + (j - i)
}

/// Index of `c[i]` in a segment's partials.
#[inline(always)]
pub const fn rhs_index(k: usize, i: usize) -> usize {
    k * (k + 1) / 2 + i
}

/// Unit roundoff of f64 (`2^-53`).
const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

/// The rank rule's noise factor for `k` basis vectors: `64·k·u` (`u = 2^-53`; `k = 8`:
/// `5.7e-14`), multiplied by `a_j²` (module docs, *Rank rule*).
pub fn noise_factor(k: usize) -> f64 {
    64.0 * k as f64 * UNIT_ROUNDOFF
}

/// Solves one segment: from its partial sums (`partial_stride(k)` values, layout above)
/// writes the k projection coefficients into `coef` and returns the rank (number of kept
/// basis vectors, never more than `max_rank`). `max_rank` is `min(segment length, k)` when
/// the partials are the segment's own, `k` when they may be summed over shards (the
/// segment's global length is then unknown here). See the module docs for the method.
///
/// Preconditions (checked by every public caller, asserted here in debug builds):
/// `k <= MAX_K`, `partial.len() >= partial_stride(k)`, `coef.len() >= k`,
/// `0 <= tol < 1`, `ridge >= 0` and finite.
pub fn solve_segment(
    k: usize,
    partial: &[f64],
    max_rank: usize,
    tol: f64,
    ridge: f64,
    coef: &mut [f64],
) -> u32 {
    debug_assert!(k <= MAX_K && partial.len() >= partial_stride(k) && coef.len() >= k);
    let g = |i: usize, j: usize| {
        let (a, b) = if i <= j { (i, j) } else { (j, i) };
        partial[tri_index(k, a, b)]
    };
    if partial[..partial_stride(k)].iter().any(|x| !x.is_finite()) {
        coef[..k].iter_mut().for_each(|c| *c = f64::NAN);
        return 0;
    }

    let (mut l, kept) = factor(k, partial, max_rank, tol);
    let rank = kept[..k].iter().filter(|&&x| x).count() as u32;

    // k = 1 is the script's closed form, computed exactly as the script does:
    // `(d·g) / (g·g + 1e-12)`, one division (the Cholesky route would round twice).
    if k == 1 {
        coef[0] = if kept[0] {
            partial[rhs_index(1, 0)] / (partial[tri_index(1, 0, 0)] + ridge)
        } else {
            0.0
        };
        return rank;
    }

    // 2. With a ridge, refactor G_K + ridge·I on the kept set (positive definite there).
    if ridge != 0.0 {
        l = [[0.0; MAX_K]; MAX_K];
        for j in 0..k {
            if !kept[j] {
                continue;
            }
            for i in 0..=j {
                if !kept[i] {
                    continue;
                }
                let mut s = g(i, j) + if i == j { ridge } else { 0.0 };
                for m in 0..i {
                    s -= l[j][m] * l[i][m];
                }
                if i == j {
                    l[j][j] = s.sqrt();
                } else {
                    l[j][i] = s / l[i][i];
                }
            }
        }
    }

    // 3. Forward substitution L y = c, then back substitution Lᵀ w = y, on the kept set.
    let mut y = [0.0f64; MAX_K];
    for j in 0..k {
        if !kept[j] {
            continue;
        }
        let mut s = partial[rhs_index(k, j)];
        for i in 0..j {
            s -= l[j][i] * y[i];
        }
        y[j] = s / l[j][j];
    }
    for j in (0..k).rev() {
        if !kept[j] {
            coef[j] = 0.0;
            continue;
        }
        let mut s = y[j];
        for i in j + 1..k {
            s -= l[i][j] * coef[i];
        }
        coef[j] = s / l[j][j];
    }
    rank
}

/// The threshold of the rank rule for `d_j`: `max(tol²·G_jj, noise·a²)` (written without
/// `f64::max` so that the CUDA port's `x > y ? x : y` is the same).
#[inline(always)]
fn threshold(tol: f64, gjj: f64, noise: f64, a: f64) -> f64 {
    let t = tol * tol * gjj;
    let n = noise * (a * a);
    if t > n {
        t
    } else {
        n
    }
}

/// Rank-revealing Cholesky of the raw Gram matrix in packed `partial`, natural order:
/// returns the lower factor of the kept submatrix (zero rows/columns for dropped vectors)
/// and which vectors were kept (at most `max_rank`). Assumes finite input. The rank rule
/// is in the module docs.
fn factor(
    k: usize,
    partial: &[f64],
    max_rank: usize,
    tol: f64,
) -> ([[f64; MAX_K]; MAX_K], [bool; MAX_K]) {
    factor_recording(k, partial, max_rank, tol, &mut [0.0; MAX_K])
}

/// [`factor`], also writing `q[j] = d_j / (threshold·G_jj)` for every vector decided on
/// (the others' entries are left as they are).
fn factor_recording(
    k: usize,
    partial: &[f64],
    max_rank: usize,
    tol: f64,
    q: &mut [f64; MAX_K],
) -> ([[f64; MAX_K]; MAX_K], [bool; MAX_K]) {
    let g = |i: usize, j: usize| partial[tri_index(k, i, j)];
    let noise = noise_factor(k);
    let mut l = [[0.0f64; MAX_K]; MAX_K];
    let mut kept = [false; MAX_K];
    let mut norm = [0.0f64; MAX_K];
    let mut n_kept = 0usize;
    for j in 0..k {
        let gjj = g(j, j);
        if gjj <= 0.0 || n_kept >= max_rank {
            continue; // a zero vector, or the kept ones already span the segment
        }
        norm[j] = gjj.sqrt();
        let mut d = gjj;
        for i in 0..j {
            if !kept[i] {
                continue;
            }
            let mut s = g(i, j);
            for m in 0..i {
                s -= l[j][m] * l[i][m];
            }
            let lji = s / l[i][i];
            l[j][i] = lji;
            d -= lji * lji;
        }
        // w = L_K⁻ᵀ l_j: b_j's coefficients on the kept vectors (b_j ≈ Σ w_i b_i), and
        // a = |b_j| + Σ |w_i|·|b_i|, the scale of the rounding noise of d (module docs).
        let mut w = [0.0f64; MAX_K];
        for i in (0..j).rev() {
            if !kept[i] {
                continue;
            }
            let mut s = l[j][i];
            for r in i + 1..j {
                s -= l[r][i] * w[r];
            }
            w[i] = s / l[i][i];
        }
        let mut a = norm[j];
        for i in 0..j {
            if kept[i] {
                let wi = if w[i] < 0.0 { -w[i] } else { w[i] };
                a += wi * norm[i];
            }
        }
        let t = threshold(tol, gjj, noise, a);
        q[j] = d / t;
        if d > t {
            kept[j] = true;
            n_kept += 1;
            l[j][j] = d.sqrt();
        } else {
            l[j] = [0.0; MAX_K];
        }
    }
    (l, kept)
}

/// How far the rank decisions of one segment are from the rank rule's threshold: the
/// smallest, over the vectors the rule decided on (not those skipped as zero or beyond
/// `max_rank`), of `max(q, 1/q)` with `q = d_j / threshold_j` (`q <= 1`: dropped). A
/// value near 1 means that a last-bit change of the Gram matrix (another summation order)
/// can flip the decision; `f64::INFINITY` when no decision was made, NaN for non-finite
/// partials. Tests use it to accept rank differences between backends only on borderline
/// segments (`tests/common/ranks.rs`).
#[cfg(feature = "testing")]
pub fn decision_margin(k: usize, partial: &[f64], max_rank: usize, tol: f64) -> f64 {
    if partial[..k * (k + 1) / 2].iter().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let mut q = [f64::NAN; MAX_K];
    factor_recording(k, partial, max_rank, tol, &mut q);
    q[..k]
        .iter()
        .filter(|x| !x.is_nan())
        .map(|&x| {
            if x > 1.0 {
                x
            } else {
                1.0 / x.max(f64::MIN_POSITIVE)
            }
        })
        .fold(f64::INFINITY, f64::min)
}
/// Orthonormalisation coefficients of one segment (Cholesky QR): from the packed Gram
/// matrix in `partial` (only the triangle is read), writes the k×k row-major matrix `m`
/// with `q_j = Σ_i m[i*k + j] · b_i`, i.e. `m = L_K⁻ᵀ` on the kept set and zero columns for
/// dropped vectors, and returns the rank (at most `max_rank`, normally
/// `min(segment length, k)`). The rank decision is the same as [`solve_segment`]'s.
/// Non-finite Gram values give NaN coefficients and rank 0.
pub fn orth_segment(k: usize, partial: &[f64], max_rank: usize, tol: f64, m: &mut [f64]) -> u32 {
    debug_assert!(k <= MAX_K && partial.len() >= k * (k + 1) / 2 && m.len() >= k * k);
    if partial[..k * (k + 1) / 2].iter().any(|x| !x.is_finite()) {
        m[..k * k].iter_mut().for_each(|c| *c = f64::NAN);
        return 0;
    }
    let (l, kept) = factor(k, partial, max_rank, tol);
    m[..k * k].iter_mut().for_each(|c| *c = 0.0);
    // Column j of L⁻ᵀ solves Lᵀ x = e_j; Lᵀ upper triangular -> back substitution.
    for j in 0..k {
        if !kept[j] {
            continue;
        }
        m[j * k + j] = 1.0 / l[j][j];
        for i in (0..j).rev() {
            if !kept[i] {
                continue;
            }
            let mut s = 0.0;
            for r in i + 1..=j {
                s -= l[r][i] * m[r * k + j];
            }
            m[i * k + j] = s / l[i][i];
        }
    }
    kept[..k].iter().filter(|&&x| x).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(k: usize, g: &[&[f64]], c: &[f64]) -> Vec<f64> {
        let mut p = vec![0.0; partial_stride(k)];
        for i in 0..k {
            for j in i..k {
                p[tri_index(k, i, j)] = g[i][j];
            }
            p[rhs_index(k, i)] = c[i];
        }
        p
    }

    #[test]
    fn packed_indices_are_a_bijection() {
        for k in 0..=MAX_K {
            let mut seen = vec![false; partial_stride(k)];
            for i in 0..k {
                for j in i..k {
                    assert!(!seen[tri_index(k, i, j)]);
                    seen[tri_index(k, i, j)] = true;
                }
                assert!(!seen[rhs_index(k, i)]);
                seen[rhs_index(k, i)] = true;
            }
            assert!(seen.iter().all(|&x| x), "k={k}");
        }
    }

    #[test]
    fn k1_is_the_closed_form() {
        let p = packed(1, &[&[4.0]], &[3.0]);
        let mut w = [0.0];
        assert_eq!(solve_segment(1, &p, 1, 1e-7, 1e-12, &mut w), 1);
        assert_eq!(w[0], 3.0 / (4.0 + 1e-12)); // exactly the script's one division
        let p = packed(1, &[&[0.0]], &[0.0]);
        assert_eq!(solve_segment(1, &p, 1, 1e-7, 1e-12, &mut w), 0);
        assert_eq!(w[0], 0.0);
    }

    #[test]
    fn solves_a_2x2_system_and_drops_duplicates() {
        // G = [[2,1],[1,2]], c = [3,3] -> w = [1,1].
        let p = packed(2, &[&[2.0, 1.0], &[1.0, 2.0]], &[3.0, 3.0]);
        let mut w = [0.0; 2];
        assert_eq!(solve_segment(2, &p, 2, 1e-7, 0.0, &mut w), 2);
        assert!(
            (w[0] - 1.0).abs() < 1e-15 && (w[1] - 1.0).abs() < 1e-15,
            "{w:?}"
        );
        // b2 = 2 b1: G = [[1,2],[2,4]]; rank 1, all weight on b1.
        let p = packed(2, &[&[1.0, 2.0], &[2.0, 4.0]], &[5.0, 10.0]);
        assert_eq!(solve_segment(2, &p, 2, 1e-7, 0.0, &mut w), 1);
        assert_eq!(w, [5.0, 0.0]);
    }

    /// Packed Gram matrix and `Bᵀv` of explicit vectors (products summed plainly in f64).
    fn gram_of(b: &[&[f64]], v: &[f64]) -> Vec<f64> {
        let k = b.len();
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, c)| a * c).sum::<f64>();
        let mut p = vec![0.0; partial_stride(k)];
        for i in 0..k {
            for j in i..k {
                p[tri_index(k, i, j)] = dot(b[i], b[j]);
            }
            p[rhs_index(k, i)] = dot(b[i], v);
        }
        p
    }

    #[test]
    fn the_rank_never_exceeds_the_length_or_the_noise() {
        // Three vectors in R^2: the third is exactly dependent, its pivot is rounding noise.
        let b: [&[f64]; 3] = [&[0.7, -0.3], &[0.2, 0.9], &[-0.61, 0.83]];
        let p = gram_of(&b, &[0.5, 0.25]);
        let mut w = [0.0; 3];
        // Capped at the length (2), and without the cap the noise floor drops it too.
        assert_eq!(solve_segment(3, &p, 2, 1e-7, 0.0, &mut w), 2);
        assert_eq!(w[2], 0.0);
        assert_eq!(solve_segment(3, &p, 3, 1e-7, 0.0, &mut w), 2);
        assert_eq!(
            solve_segment(3, &p, 3, 0.0, 0.0, &mut w),
            2,
            "tol 0: the floor decides"
        );
        let mut m = [0.0; 9];
        assert_eq!(orth_segment(3, &p, 2, 1e-7, &mut m), 2);
        assert_eq!(orth_segment(3, &p, 1, 1e-7, &mut m), 1);
        assert!(decision_margin(3, &p, 3, 1e-7) > 8.0, "a clear decision");
    }

    #[test]
    fn the_noise_floor_follows_the_coefficients() {
        // b1 nearly parallel to b0 (relative residual 1e-5). b2 = (0, 1, 1e-2) needs
        // w = (-1e5, 1e5) on them, so a = |b2| + 2e5 and the noise of d is ~u·a² = 4e-6
        // (64·3 times that: 8.5e-4): its d = 1e-4 cannot be told from noise, and it is
        // dropped; after orthogonal vectors (w = (0, 1), a ≈ 2) the same d is kept.
        let e = 1e-5;
        let b_ill: [&[f64]; 3] = [&[1.0, 0.0, 0.0], &[1.0, e, 0.0], &[0.0, 1.0, 1e-2]];
        let b_ok: [&[f64]; 3] = [&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0], &[0.0, 1.0, 1e-2]];
        let mut w = [0.0; 3];
        let p = gram_of(&b_ill, &[0.0; 3]);
        assert_eq!(solve_segment(3, &p, 3, 1e-7, 0.0, &mut w), 2);
        let p = gram_of(&b_ok, &[0.0; 3]);
        assert_eq!(solve_segment(3, &p, 3, 1e-7, 0.0, &mut w), 3);
        // Ill-conditioned but not along b2's direction: b2 = (0, 0, 1) needs w = 0.
        let b_far: [&[f64]; 3] = [&[1.0, 0.0, 0.0], &[1.0, e, 0.0], &[0.0, 0.0, 1.0]];
        let p = gram_of(&b_far, &[0.0; 3]);
        assert_eq!(solve_segment(3, &p, 3, 1e-7, 0.0, &mut w), 3);
        assert!(noise_factor(8) > 5.6e-14 && noise_factor(8) < 5.7e-14);
    }

    #[test]
    fn decision_margin_flags_near_threshold_decisions() {
        // Two unit vectors whose squared relative residual is 1.5·tol² (tol = 1e-3 is far
        // above the noise floor): kept, but within a factor 1.5 of the threshold.
        let s = (1.5e-6f64).sqrt();
        let c = (1.0 - 1.5e-6f64).sqrt();
        let b: [&[f64]; 2] = [&[1.0, 0.0], &[c, s]];
        let p = gram_of(&b, &[0.0; 2]);
        let mut w = [0.0; 2];
        assert_eq!(solve_segment(2, &p, 2, 1e-3, 0.0, &mut w), 2);
        let m = decision_margin(2, &p, 2, 1e-3);
        assert!(m > 1.0 && m < 2.0, "{m}");
        // Non-finite partials: NaN.
        assert!(decision_margin(1, &[f64::NAN, 0.0], 1, 1e-3).is_nan());
    }

    #[test]
    fn non_finite_poisons() {
        let p = packed(1, &[&[f64::INFINITY]], &[1.0]);
        let mut w = [0.0];
        assert_eq!(solve_segment(1, &p, 1, 1e-7, 0.0, &mut w), 0);
        assert!(w[0].is_nan());
    }
}
