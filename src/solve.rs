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
//!    exactly the quantity classical Gram-Schmidt tests. `b_j` is dropped when
//!    `G_jj == 0` or `d_j <= tol² · G_jj` (residual norm ≤ `tol` × original norm), which is
//!    the same criterion as [`crate::reference::orthonormalize`] applies to explicit
//!    residuals, so both reveal the same rank away from the threshold.
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
//! every product with TwoSum ([`crate::sum::Acc`]); the CPU backend sums 16 products per
//! lane plainly and adds each run with TwoSum. Measured against explicit CGS2 at κ = 1e6
//! with f32 data (k = 2, 4, 8): ≤ 1e-7 (the test asks for 1e-5;
//! `tests/reference_props.rs`). What remains is mostly the f64 Cholesky.
//!
//! The CUDA kernels sum plainly in f64 per thread (≤ 64 products) and combine the
//! thread, warp and chunk partials in fixed trees; a simulation of exactly that order
//! (numpy, κ = 1e6, k = 4) stays within 1e-6 of CGS2, against up to 1e-4 for one
//! sequential plain sum. The GPU tests check the agreement with the oracle.
//!
//! The rank decision resolves relative residuals down to about `1e-8·κ_prev`, where
//! `κ_prev` is the condition number of the earlier kept vectors, so `tol` should stay
//! ≥ 1e-7 (the default). An exactly dependent vector that follows ill-conditioned ones can
//! be kept as a tiny direction: it lies in the span up to rounding, so the projection
//! barely changes, but the reported rank is then one higher than CGS2's.
//!
//! # Non-finite input
//! Any NaN or ±Inf in `G` or `c` gives NaN coefficients and rank 0: the whole segment's
//! output becomes NaN rather than a silently wrong number (`docs/numerics.md`).

// Index loops on purpose: this code mirrors the CUDA C kernels line for line.
#![allow(clippy::needless_range_loop)]

/// Largest supported number of basis vectors per segment (GPU kernels keep the k×k Gram
/// accumulators in registers).
pub const MAX_K: usize = 8;

/// Number of f64 values of one segment's partial sums for `k` basis vectors: the upper
/// triangle of `G` (row-major, `k(k+1)/2` values) followed by the k values of `c = Bᵀv`.
pub const fn partial_stride(k: usize) -> usize {
    k * (k + 1) / 2 + k
}

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

/// Solves one segment: from its partial sums (`partial_stride(k)` values, layout above)
/// writes the k projection coefficients into `coef` and returns the rank (number of kept
/// basis vectors). See the module docs for the method.
///
/// Preconditions (checked by every public caller, asserted here in debug builds):
/// `k <= MAX_K`, `partial.len() >= partial_stride(k)`, `coef.len() >= k`,
/// `0 <= tol < 1`, `ridge >= 0` and finite.
pub fn solve_segment(k: usize, partial: &[f64], tol: f64, ridge: f64, coef: &mut [f64]) -> u32 {
    debug_assert!(k <= MAX_K && partial.len() >= partial_stride(k) && coef.len() >= k);
    let g = |i: usize, j: usize| {
        let (a, b) = if i <= j { (i, j) } else { (j, i) };
        partial[tri_index(k, a, b)]
    };
    if partial[..partial_stride(k)].iter().any(|x| !x.is_finite()) {
        coef[..k].iter_mut().for_each(|c| *c = f64::NAN);
        return 0;
    }

    let (mut l, kept) = factor(k, partial, tol);
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

/// Rank-revealing Cholesky of the raw Gram matrix in packed `partial`, natural order:
/// returns the lower factor of the kept submatrix (zero rows/columns for dropped vectors)
/// and which vectors were kept. Assumes finite input.
fn factor(k: usize, partial: &[f64], tol: f64) -> ([[f64; MAX_K]; MAX_K], [bool; MAX_K]) {
    let g = |i: usize, j: usize| partial[tri_index(k, i, j)];
    let mut l = [[0.0f64; MAX_K]; MAX_K];
    let mut kept = [false; MAX_K];
    for j in 0..k {
        let gjj = g(j, j);
        if gjj <= 0.0 {
            continue; // a zero vector
        }
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
        if d > tol * tol * gjj {
            kept[j] = true;
            l[j][j] = d.sqrt();
        } else {
            l[j] = [0.0; MAX_K];
        }
    }
    (l, kept)
}

/// Orthonormalisation coefficients of one segment (Cholesky QR): from the packed Gram
/// matrix in `partial` (only the triangle is read), writes the k×k row-major matrix `m`
/// with `q_j = Σ_i m[i*k + j] · b_i`, i.e. `m = L_K⁻ᵀ` on the kept set and zero columns for
/// dropped vectors, and returns the rank. The rank decision is the same as
/// [`solve_segment`]'s. Non-finite Gram values give NaN coefficients and rank 0.
pub fn orth_segment(k: usize, partial: &[f64], tol: f64, m: &mut [f64]) -> u32 {
    debug_assert!(k <= MAX_K && partial.len() >= k * (k + 1) / 2 && m.len() >= k * k);
    if partial[..k * (k + 1) / 2].iter().any(|x| !x.is_finite()) {
        m[..k * k].iter_mut().for_each(|c| *c = f64::NAN);
        return 0;
    }
    let (l, kept) = factor(k, partial, tol);
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
        assert_eq!(solve_segment(1, &p, 1e-7, 1e-12, &mut w), 1);
        assert_eq!(w[0], 3.0 / (4.0 + 1e-12)); // exactly the script's one division
        let p = packed(1, &[&[0.0]], &[0.0]);
        assert_eq!(solve_segment(1, &p, 1e-7, 1e-12, &mut w), 0);
        assert_eq!(w[0], 0.0);
    }

    #[test]
    fn solves_a_2x2_system_and_drops_duplicates() {
        // G = [[2,1],[1,2]], c = [3,3] -> w = [1,1].
        let p = packed(2, &[&[2.0, 1.0], &[1.0, 2.0]], &[3.0, 3.0]);
        let mut w = [0.0; 2];
        assert_eq!(solve_segment(2, &p, 1e-7, 0.0, &mut w), 2);
        assert!(
            (w[0] - 1.0).abs() < 1e-15 && (w[1] - 1.0).abs() < 1e-15,
            "{w:?}"
        );
        // b2 = 2 b1: G = [[1,2],[2,4]]; rank 1, all weight on b1.
        let p = packed(2, &[&[1.0, 2.0], &[2.0, 4.0]], &[5.0, 10.0]);
        assert_eq!(solve_segment(2, &p, 1e-7, 0.0, &mut w), 1);
        assert_eq!(w, [5.0, 0.0]);
    }

    #[test]
    fn non_finite_poisons() {
        let p = packed(1, &[&[f64::INFINITY]], &[1.0]);
        let mut w = [0.0];
        assert_eq!(solve_segment(1, &p, 1e-7, 0.0, &mut w), 0);
        assert!(w[0].is_nan());
    }
}
