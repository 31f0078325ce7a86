//! The oracle: plain, single-threaded, f64 arithmetic, written to be obviously correct.
//! Every backend (CPU and CUDA) is tested against these functions; nothing here is tuned.
//!
//! - [`partials`] / [`apply`]: the split form of the projection (pass 1 and pass 2).
//! - [`project_out`]: both passes, `out = alpha·base + beta·(x - P x)` per segment
//!   ([`Projection`]: `x = v` or `v - v0`, the destination optionally basis vector 0).
//! - [`orthonormalize`]: classical Gram-Schmidt with one re-orthogonalisation (CGS2).
//! - [`residual_cgs2`]: `v - QQᵀv` through explicit CGS2 in f64 — an independent check of
//!   the Gram-matrix method that [`project_out`] uses.
//!
//! [`Reference`] is this module as a [`Backend`].

use crate::backend::{host_copy, Backend, Host};
use crate::dtype::Element;
use crate::error::Result;
use crate::project::solve::{
    orth_segment, partial_stride, rhs_index, solve_segment, tri_index, MAX_K,
};
use crate::project::{
    check_orthonormalize, check_tol, BasisRef, Output, Partials, Projection, TensorList,
};
use crate::segments::Segments;
use crate::sum::Acc;

/// A projection's arguments on host slices (what [`Reference`] and [`crate::CpuBackend`]
/// take).
pub type HostProjection<'a, T> = Projection<'a, &'a [T], &'a mut [T]>;

/// `x_e = v_e` or `v_e - v0_e`, in f64.
#[inline]
pub(crate) fn x_at<T: Element>(v: &[T], v0: Option<&[T]>, e: usize) -> f64 {
    match v0 {
        Some(v0) => v[e].to_f64() - v0[e].to_f64(),
        None => v[e].to_f64(),
    }
}

/// Pass 1: per segment, the Gram matrix of the basis (the implicit vector first) and the
/// projections of `x`, summed sequentially with compensated f64 sums (TwoSum).
pub fn partials<T: Element>(segs: &Segments, p: &HostProjection<'_, T>) -> Result<Partials> {
    p.validate_inputs(segs)?;
    let basis: Vec<&[T]> = p
        .basis_refs()
        .map(|b| match b {
            BasisRef::Src(s) => &**s,
            BasisRef::Out(o) => &**o,
        })
        .collect();
    Ok(partials_of(segs, Some((p.v, p.v0)), &basis))
}

/// Pass 1 over validated slices (`x = None`: the Gram matrix only, `Bᵀx` zero).
fn partials_of<T: Element>(
    segs: &Segments,
    x: Option<(&[T], Option<&[T]>)>,
    basis: &[&[T]],
) -> Partials {
    let k = basis.len();
    let st = partial_stride(k);
    let mut data = vec![0.0; st * segs.len()];
    for (s, r) in segs.iter().enumerate() {
        let mut acc = vec![Acc::default(); st];
        for e in r {
            let x = x.map_or(0.0, |(v, v0)| x_at(v, v0, e));
            for i in 0..k {
                let bi = basis[i][e].to_f64();
                for j in i..k {
                    acc[tri_index(k, i, j)].add(bi * basis[j][e].to_f64());
                }
                acc[rhs_index(k, i)].add(bi * x);
            }
        }
        let seg = &mut data[s * st..(s + 1) * st];
        seg.iter_mut().zip(&acc).for_each(|(o, a)| *o = a.value());
    }
    Partials::from_parts(k, segs.len(), data)
}

/// Pass 2: solves each segment from `partials` (possibly summed over shards) and writes
/// `alpha·base + beta·(x - P x)`. Returns the rank of each segment's basis, at most k (the
/// partials may come from longer, sharded segments, so the local length does not cap it;
/// [`project_out`] caps at `min(length, k)` as well: `crate::project::solve`, *Rank rule*).
pub fn apply<T: Element>(
    segs: &Segments,
    partials: &Partials,
    p: HostProjection<'_, T>,
) -> Result<Vec<u32>> {
    apply_capped(segs, partials, p, false)
}

/// [`apply`]; with `cap_by_len` the rank is also capped at each segment's length (the
/// partials are known to be the segment's own).
fn apply_capped<T: Element>(
    segs: &Segments,
    partials: &Partials,
    p: HostProjection<'_, T>,
    cap_by_len: bool,
) -> Result<Vec<u32>> {
    let k = p.validate(segs)?;
    partials.check_shape(segs, k)?;
    let mut ranks = vec![0u32; segs.len()];
    let mut w = [0.0f64; MAX_K];
    let first = usize::from(p.implicit.is_some());
    let (v, v0, extra, alpha, beta) = (p.v, p.v0, p.basis, p.alpha, p.beta);
    let in_place = matches!(p.out, Output::Accumulate(_));
    let (out, base) = p.out.into_parts();
    for (s, r) in segs.iter().enumerate() {
        let max_rank = if cap_by_len { r.len().min(k) } else { k };
        ranks[s] = solve_segment(
            k,
            partials.seg(s),
            max_rank,
            p.opts.tol,
            p.opts.ridge,
            &mut w,
        );
        let b = beta.at(s);
        for e in r {
            // Every read of element e (the destination too, as basis vector 0 and as the
            // in-place base) happens before its write.
            let o = out[e].to_f64();
            let mut y = x_at(v, v0, e);
            if first == 1 {
                y -= w[0] * o;
            }
            for (i, bi) in extra.iter().enumerate() {
                y -= w[first + i] * bi[e].to_f64();
            }
            let z = match (base, in_place) {
                (Some(base), _) => alpha * base[e].to_f64() + b * y,
                (None, true) => alpha * o + b * y,
                (None, false) => b * y,
            };
            out[e] = T::from_f64(z);
        }
    }
    Ok(ranks)
}

/// Both passes: `out = alpha·base + beta·(x - P x)` per segment, where `P` projects onto
/// the span of the segment's basis vectors. Returns the rank of each segment's basis.
pub fn project_out<T: Element>(segs: &Segments, p: HostProjection<'_, T>) -> Result<Vec<u32>> {
    let parts = partials(segs, &p)?;
    apply_capped(segs, &parts, p, true)
}

/// [`project_out`] over tensor lists, by definition: every list packed into one flat
/// buffer, the flat projection, the destination unpacked. The other backends' lists are
/// tested against it.
pub fn project_list<T: Element>(
    segs: &Segments,
    p: Projection<'_, TensorList<&[T]>, TensorList<&mut [T]>>,
) -> Result<Vec<u32>> {
    p.validate(segs)?;
    let mut packed = p.map(
        |l| l.0.concat(),
        |o| {
            let flat: Vec<T> = o.0.iter().flat_map(|t| t.iter().copied()).collect();
            (o, flat)
        },
    );
    let ranks = project_out(
        segs,
        packed.as_mut().map(|s| &s[..], |(_, flat)| &mut flat[..]),
    )?;
    let (list, flat) = packed.out.into_parts().0;
    for (o, r) in list.0.into_iter().zip(segs.iter()) {
        o.copy_from_slice(&flat[r]);
    }
    Ok(ranks)
}

/// The f64 oracle of this module as a [`Backend`]: single-threaded, slow, written to be
/// obviously correct (tests, and a fallback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reference;

impl Backend for Reference {
    type Memory = Host;
    type Ranks = Vec<u32>;

    fn check<T: Element>(&self, segs: &Segments, p: &HostProjection<'_, T>) -> Result<usize> {
        p.validate(segs)
    }

    fn project_out<T: Element>(
        &self,
        segs: &Segments,
        p: HostProjection<'_, T>,
    ) -> Result<Vec<u32>> {
        project_out(segs, p)
    }

    /// Packs, projects, unpacks: the definition ([`project_list`]).
    fn project_list<'a, T: Element>(
        &self,
        segs: &Segments,
        p: Projection<'_, TensorList<&'a [T]>, TensorList<&'a mut [T]>>,
    ) -> Result<Vec<u32>> {
        project_list(segs, p)
    }

    fn partials<T: Element>(&self, segs: &Segments, p: &HostProjection<'_, T>) -> Result<Partials> {
        partials(segs, p)
    }

    fn apply<T: Element>(
        &self,
        segs: &Segments,
        partials: &Partials,
        p: HostProjection<'_, T>,
    ) -> Result<Vec<u32>> {
        apply(segs, partials, p)
    }

    fn orthonormalize<T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [&mut [T]],
        tol: f64,
    ) -> Result<Vec<u32>> {
        orthonormalize(segs, basis, tol)
    }

    fn copy<'a, T: Element>(&self, src: &'a [T], dst: &'a mut [T]) -> Result<()> {
        host_copy(src, dst)
    }
}

/// CGS2 on f64 vectors of one segment, in place: for j = 1..k, subtract the projections
/// on the earlier kept q's twice (classical GS: all coefficients from the same vector),
/// then normalise, or zero the vector if its residual norm is ≤ `tol` × its original norm
/// (or it is zero, or the kept ones already number the segment length: they span it).
/// Returns the rank. Non-finite input gives NaN vectors and rank 0.
fn cgs2_f64(vs: &mut [Vec<f64>], tol: f64) -> u32 {
    if vs.iter().flatten().any(|x| !x.is_finite()) {
        vs.iter_mut().flatten().for_each(|x| *x = f64::NAN);
        return 0;
    }
    let k = vs.len();
    let len = vs.first().map_or(0, Vec::len);
    let mut kept = vec![false; k];
    let mut n_kept = 0;
    for j in 0..k {
        if n_kept >= len {
            vs[j].iter_mut().for_each(|x| *x = 0.0);
            continue;
        }
        let norm0 = norm(&vs[j]);
        for _pass in 0..2 {
            let coefs: Vec<f64> = (0..j)
                .map(|i| if kept[i] { dot(&vs[i], &vs[j]) } else { 0.0 })
                .collect();
            let (done, rest) = vs.split_at_mut(j);
            for (i, c) in coefs.iter().enumerate() {
                if kept[i] {
                    rest[0]
                        .iter_mut()
                        .zip(&done[i])
                        .for_each(|(x, q)| *x -= c * q);
                }
            }
        }
        let nrm = norm(&vs[j]);
        if norm0 > 0.0 && nrm > tol * norm0 {
            kept[j] = true;
            n_kept += 1;
            vs[j].iter_mut().for_each(|x| *x /= nrm);
        } else {
            vs[j].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    kept.iter().filter(|&&x| x).count() as u32
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Orthonormalises the k basis vectors of every segment in place by CGS2 (f64
/// arithmetic, one rounding to `T` at the end). Dropped vectors are written as zeros.
/// Returns the rank of each segment.
pub fn orthonormalize<T: Element>(
    segs: &Segments,
    basis: &mut [&mut [T]],
    tol: f64,
) -> Result<Vec<u32>> {
    check_orthonormalize(segs, basis, tol)?;
    let mut ranks = Vec::with_capacity(segs.len());
    for r in segs.iter() {
        let mut vs: Vec<Vec<f64>> = basis
            .iter()
            .map(|b| b[r.clone()].iter().map(|x| x.to_f64()).collect())
            .collect();
        ranks.push(cgs2_f64(&mut vs, tol));
        for (b, q) in basis.iter_mut().zip(&vs) {
            b[r.clone()]
                .iter_mut()
                .zip(q)
                .for_each(|(x, &y)| *x = T::from_f64(y));
        }
    }
    Ok(ranks)
}

/// `v - Q Qᵀ v` per segment, with Q from explicit CGS2 of the basis, all in f64 — the
/// independent check of the Gram-matrix method (no ridge: the exact projector).
pub fn residual_cgs2<T: Element>(
    segs: &Segments,
    v: &[T],
    basis: &[&[T]],
    tol: f64,
) -> Result<Vec<f64>> {
    check_tol(tol)?;
    crate::project::check_k(basis.len())?;
    segs.check_buffer("v", v.len())?;
    for b in basis {
        segs.check_buffer("basis", b.len())?;
    }
    let mut out: Vec<f64> = v.iter().map(|x| x.to_f64()).collect();
    for r in segs.iter() {
        let mut qs: Vec<Vec<f64>> = basis
            .iter()
            .map(|b| b[r.clone()].iter().map(|x| x.to_f64()).collect())
            .collect();
        cgs2_f64(&mut qs, tol);
        let y = &mut out[r.clone()];
        // Two rounds, as for the basis itself, so the residual is orthogonal to f64 accuracy.
        for _ in 0..2 {
            for q in &qs {
                let c = dot(q, y);
                y.iter_mut().zip(q).for_each(|(x, qq)| *x -= c * qq);
            }
        }
    }
    Ok(out)
}

/// Orthonormalisation coefficients through the shared solve (Cholesky QR) — used by the
/// backends; exposed here so tests can compare it with [`orthonormalize`].
pub fn orth_coefficients<T: Element>(
    segs: &Segments,
    basis: &[&[T]],
    tol: f64,
) -> Result<(Vec<f64>, Vec<u32>)> {
    let k = check_orthonormalize(segs, basis, tol)?;
    let p = partials_of(segs, None, basis);
    let mut m = vec![0.0; k * k * segs.len()];
    let ranks = (0..segs.len())
        .map(|s| {
            let max_rank = segs.seg_len(s).min(k);
            orth_segment(
                k,
                p.seg(s),
                max_rank,
                tol,
                &mut m[s * k * k..(s + 1) * k * k],
            )
        })
        .collect();
    Ok((m, ranks))
}
