//! The CPU backend: the same operations as the CUDA backend, multi-threaded with rayon.
//!
//! # Parallel layout and determinism
//! Every buffer is cut into the fixed chunk table of [`crate::segments::chunk_tasks`]
//! (default [`CpuBackend::DEFAULT_CHUNK`] elements). Pass 1 computes one f64 partial per chunk with a
//! fixed summation pattern (4 interleaved lanes, combined pairwise), then sums the chunk
//! partials of each segment in chunk order. Which thread computes which chunk does not
//! change a single bit, so results are identical run to run and for any thread count.
//!
//! # Methods
//! - `project_out` = `partials` + `apply` ([`Backend`]): the Gram-matrix method of
//!   [`crate::project::solve`] (same shared solve as the reference).
//! - `orthonormalize`: Cholesky QR applied twice (CholQR2) through
//!   [`crate::project::solve::orth_segment`]. In exact arithmetic it yields the same Q as CGS2 (QR
//!   with a positive diagonal is unique), and it makes the same rank decisions; the second
//!   round restores orthogonality lost to conditioning and to rounding of the stored
//!   intermediate (f16/bf16). Four passes over the basis for any k.

use super::cpu_kernels as kernels;
use crate::backend::{host_copy, Backend, Host};
use crate::cpu::two_pass::TwoPass;
use crate::cpu::CpuBackend;
use crate::dtype::Element;
use crate::error::Result;
use crate::project::reference::HostProjection;
use crate::project::solve::{orth_segment, partial_stride, solve_segment, MAX_K};
use crate::project::{
    check_orthonormalize, BasisRef, Implicit, Partials, ProjectOptions, Projection, TensorList,
};
use crate::segments::{chunk_tasks, ChunkTask, Segments};
use crate::sum::Acc;

/// A projection's buffers cut per segment (`[s]` = segment s's elements): the one form the
/// CPU loops take. A flat buffer is cut at the segment offsets, a tensor list is already
/// one buffer per segment ([`Projection::map`] does either).
type Cut<'a, 'b, T> = Projection<'a, Vec<&'b [T]>, Vec<&'b mut [T]>>;

/// The basis of a cut projection as pass 1 reads it, the implicit vector first (`out`
/// reads the destination).
fn pass1_basis<'p, T, D>(
    c: &'p Projection<'_, Vec<&'p [T]>, D>,
    out: impl Fn(&'p D) -> Vec<&'p [T]>,
) -> Vec<Vec<&'p [T]>> {
    c.basis_refs()
        .map(|b| match b {
            BasisRef::Src(s) => s.clone(),
            BasisRef::Out(o) => out(o),
        })
        .collect()
}

impl CpuBackend {
    /// Pass 1 of a validated projection cut per segment.
    fn partials_of<T: Element, D>(
        &self,
        segs: &Segments,
        tasks: &[ChunkTask],
        c: &Projection<'_, Vec<&[T]>, D>,
        out: impl Fn(&D) -> Vec<&[T]>,
    ) -> Partials {
        let basis = pass1_basis(c, out);
        let basis: Vec<&[&[T]]> = basis.iter().map(|b| &b[..]).collect();
        let mut parts = Partials::from_parts(
            basis.len(),
            segs.len(),
            vec![0.0; partial_stride(basis.len()) * segs.len()],
        );
        self.partials_into(
            segs,
            tasks,
            Some((&c.v, c.v0.as_deref())),
            &basis,
            &mut parts,
        );
        parts
    }

    /// Chunk partials in parallel, then per-segment sums in chunk order. Every operand is
    /// cut per segment (`[s]` holds segment s); a task reads its range of each.
    #[allow(clippy::type_complexity)]
    fn partials_into<T: Element>(
        &self,
        segs: &Segments,
        tasks: &[ChunkTask],
        v: Option<(&[&[T]], Option<&[&[T]]>)>,
        basis: &[&[&[T]]],
        p: &mut Partials,
    ) {
        let k = basis.len();
        let st = partial_stride(k);
        let chunk_sums: Vec<[Acc; kernels::MAX_STRIDE]> =
            self.map_tasks(segs.total(), tasks, |t| {
                let (s, r) = (t.seg, local(segs, t));
                let bs: Vec<&[T]> = basis.iter().map(|b| &b[s][r.clone()]).collect();
                kernels::chunk_partial(
                    v.map(|(v, _)| &v[s][r.clone()]),
                    v.and_then(|(_, v0)| v0).map(|v0| &v0[s][r.clone()]),
                    &bs,
                )
            });
        // Per segment, merge the chunk sums in chunk order, then round once to f64.
        let out = p.as_mut_slice();
        out.iter_mut().for_each(|x| *x = 0.0);
        let mut seg_acc = [Acc::default(); kernels::MAX_STRIDE];
        let mut i = 0;
        while i < tasks.len() {
            let seg = tasks[i].seg;
            seg_acc.iter_mut().for_each(|a| *a = Acc::default());
            while i < tasks.len() && tasks[i].seg == seg {
                seg_acc
                    .iter_mut()
                    .zip(&chunk_sums[i])
                    .for_each(|(a, c)| a.merge(*c));
                i += 1;
            }
            out[seg * st..(seg + 1) * st]
                .iter_mut()
                .zip(&seg_acc)
                .for_each(|(o, a)| *o = a.value());
        }
    }

    /// Pass 2 of a validated projection cut per segment (the split form's `apply`: the ranks
    /// are not capped at the segments' lengths, as the partials may be a sum over shards,
    /// `crate::project::solve`).
    fn apply_cut<T: Element>(
        &self,
        segs: &Segments,
        tasks: &[ChunkTask],
        partials: &Partials,
        c: Cut<'_, '_, T>,
    ) -> Result<Vec<u32>> {
        let k = c.k();
        partials.check_shape(segs, k)?;
        let (coef, ranks) = solve_all(segs, partials, k, &c.opts);
        // The kernels' apply mode (the base term, the implicit vector's flag), as on CUDA;
        // pass 2 reads every basis vector from its buffer except the destination
        // (`MODE_B0_OUT`: its value before the write, slot 0).
        let mode = c.mode();
        let basis: Vec<Vec<&[T]>> = c
            .basis_refs()
            .filter_map(|b| match b {
                BasisRef::Src(s) => Some(s.clone()),
                BasisRef::Out(_) => None,
            })
            .collect();
        let (alpha, beta, v, v0) = (c.alpha, c.beta, c.v, c.v0);
        let (out, base) = c.out.into_parts();
        let outs = split_by_tasks(out, tasks);
        self.zip_tasks(segs.total(), tasks, outs, |t, o| {
            let (s, r) = (t.seg, local(segs, t));
            let bs: Vec<&[T]> = basis.iter().map(|b| &b[s][r.clone()]).collect();
            let x = kernels::ApplyIn {
                v: &v[s][r.clone()],
                v0: v0.as_ref().map(|v0| &v0[s][r.clone()]),
                basis: &bs,
                base: base.as_ref().map(|b| &b[s][r.clone()]),
                mode,
            };
            kernels::chunk_apply(x, &coef[s * k..(s + 1) * k], alpha, beta.at(s), o);
        });
        Ok(ranks)
    }

    /// Both passes of a validated projection cut per segment, in one parallel region
    /// ([`TwoPass`]): pass 2 of a segment starts as soon as its pass 1 and solve are done,
    /// and pass 1 runs at most one cache group ([`cache_groups`]) ahead of pass 2, so a
    /// step reads most operands from DRAM once instead of twice, without a barrier between
    /// groups. Per segment the same chunks, the same sums in chunk order and the same solve
    /// as one pass 1 over everything followed by one pass 2: the same bits.
    fn project_cut<T: Element>(&self, segs: &Segments, c: Cut<'_, '_, T>) -> Result<Vec<u32>> {
        let k = c.k();
        let tasks = chunk_tasks(segs, self.chunk())?;
        let budget = self.cache_elements(operands(&c) * std::mem::size_of::<T>());
        let groups = step_groups(segs, budget);
        let mode = c.mode();
        let out_first = matches!(c.implicit, Some(Implicit::Out));
        let Projection {
            v,
            v0,
            basis,
            out,
            alpha,
            beta,
            opts,
            ..
        } = c;
        let (out, base) = out.into_parts();
        // Each task's item is its piece of the destination: read by its pass 1 (the
        // implicit basis vector), then written by its pass 2.
        let outs = split_by_tasks(out, &tasks);
        let pass1 = |i: usize, o: &&mut [T]| {
            let (s, r) = (tasks[i].seg, local(segs, &tasks[i]));
            let mut bs: [&[T]; MAX_K] = [&[]; MAX_K];
            let mut nb = 0;
            if out_first {
                bs[0] = o;
                nb = 1;
            }
            for b in &basis {
                bs[nb] = &b[s][r.clone()];
                nb += 1;
            }
            kernels::chunk_partial(
                Some(&v[s][r.clone()]),
                v0.as_ref().map(|v0| &v0[s][r.clone()]),
                &bs[..nb],
            )
        };
        let solve =
            |s: usize, parts: &[&ChunkPartial]| solve_chunks(k, segs.seg_len(s), &opts, parts);
        let pass2 = |i: usize, o: &mut [T], (w, _): &Solved| {
            let (s, r) = (tasks[i].seg, local(segs, &tasks[i]));
            let bs: [&[T]; MAX_K] = std::array::from_fn(|j| match basis.get(j) {
                Some(b) => &b[s][r.clone()],
                None => &[],
            });
            let x = kernels::ApplyIn {
                v: &v[s][r.clone()],
                v0: v0.as_ref().map(|v0| &v0[s][r.clone()]),
                basis: &bs[..basis.len()],
                base: base.as_ref().map(|b| &b[s][r.clone()]),
                mode,
            };
            kernels::chunk_apply(x, &w[..k], alpha, beta.at(s), o);
        };
        let plan = TwoPass::new(&tasks, segs.len(), &groups);
        let sols = plan.run(self, segs.total(), outs, pass1, solve, pass2);
        Ok(sols.into_iter().map(|(_, rank)| rank).collect())
    }

    /// How many elements of a projection with `per_element` bytes per element (over all
    /// its operands) one cache group may hold; `usize::MAX` when grouping is off.
    pub(crate) fn cache_elements(&self, per_element: usize) -> usize {
        match self.cache_bytes() {
            0 => usize::MAX,
            b => (b / per_element.max(1)).max(1),
        }
    }

    /// CholQR2 (see the module docs).
    fn orthonormalize_impl<T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [&mut [T]],
        tol: f64,
    ) -> Result<Vec<u32>> {
        let k = check_orthonormalize(segs, basis, tol)?;
        let tasks = chunk_tasks(segs, self.chunk())?;
        let mut p = Partials::zeros(k, segs.len())?;
        let mut m = vec![0.0f64; segs.len() * k * k];
        let mut ranks = vec![0u32; segs.len()];
        for _round in 0..2 {
            {
                let views: Vec<Vec<&[T]>> = basis.iter().map(|b| cut(segs, b)).collect();
                let views: Vec<&[&[T]]> = views.iter().map(|b| &b[..]).collect();
                self.partials_into(segs, &tasks, None, &views, &mut p);
            }
            for (s, rank) in ranks.iter_mut().enumerate() {
                let max_rank = segs.seg_len(s).min(k);
                *rank = orth_segment(
                    k,
                    p.seg(s),
                    max_rank,
                    tol,
                    &mut m[s * k * k..(s + 1) * k * k],
                );
            }
            // Per task, the k sub-slices of the basis buffers for that chunk.
            let mut per_task: Vec<Vec<&mut [T]>> = (0..tasks.len()).map(|_| Vec::new()).collect();
            for b in basis.iter_mut() {
                let pieces = split_by_tasks(cut_mut(segs, b), &tasks);
                for (slot, piece) in per_task.iter_mut().zip(pieces) {
                    slot.push(piece);
                }
            }
            let m = &m;
            self.zip_tasks(segs.total(), &tasks, per_task, |t, mut bs| {
                kernels::chunk_orth(&mut bs, &m[t.seg * k * k..(t.seg + 1) * k * k]);
            });
        }
        Ok(ranks)
    }
}

/// Host slices; `project_out` = pass 1 + pass 2 (module docs), `orthonormalize` = CholQR2.
/// Flat buffers and tensor lists are both cut per segment ([`Projection::map`]) and run
/// the same loops.
impl Backend for CpuBackend {
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
        p.validate(segs)?;
        self.project_cut(segs, p.map(|s| cut(segs, s), |d| cut_mut(segs, d)))
    }

    /// The same chunks and loops as [`CpuBackend::project_out`], each task reading its
    /// tensor's range: bit for bit the flat result.
    fn project_list<'a, T: Element>(
        &self,
        segs: &Segments,
        p: Projection<'_, TensorList<&'a [T]>, TensorList<&'a mut [T]>>,
    ) -> Result<Vec<u32>> {
        p.validate(segs)?;
        self.project_cut(segs, p.map(|l| l.0, |l| l.0))
    }

    fn partials<T: Element>(&self, segs: &Segments, p: &HostProjection<'_, T>) -> Result<Partials> {
        p.validate_inputs(segs)?;
        let tasks = chunk_tasks(segs, self.chunk())?;
        let c = p.as_ref().map(|s| cut(segs, s), |d| cut(segs, d));
        Ok(self.partials_of(segs, &tasks, &c, |o| o.clone()))
    }

    fn apply<T: Element>(
        &self,
        segs: &Segments,
        partials: &Partials,
        p: HostProjection<'_, T>,
    ) -> Result<Vec<u32>> {
        p.validate(segs)?;
        let tasks = chunk_tasks(segs, self.chunk())?;
        let c = p.map(|s| cut(segs, s), |d| cut_mut(segs, d));
        self.apply_cut(segs, &tasks, partials, c)
    }

    fn orthonormalize<T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [&mut [T]],
        tol: f64,
    ) -> Result<Vec<u32>> {
        self.orthonormalize_impl(segs, basis, tol)
    }

    fn copy<'a, T: Element>(&self, src: &'a [T], dst: &'a mut [T]) -> Result<()> {
        host_copy(src, dst)
    }
}

/// One chunk's pass 1 partials (compensated sums, the Gram triangle then `Bᵀx`).
pub(crate) type ChunkPartial = [Acc; kernels::MAX_STRIDE];

/// A segment's solution in a two-pass step: its k coefficients and its rank.
type Solved = ([f64; MAX_K], u32);

/// The step's `solve` ([`TwoPass`]) for a projection with k basis vectors: a segment's
/// chunk partials merged in chunk order, rounded once to f64 and solved, the rank capped
/// at the segment's length (the operations of `partials_into` and `solve_all`, which does
/// not cap).
pub(crate) fn solve_chunks(
    k: usize,
    seg_len: usize,
    opts: &ProjectOptions,
    parts: &[&ChunkPartial],
) -> Solved {
    let mut acc = [Acc::default(); kernels::MAX_STRIDE];
    for p in parts {
        acc.iter_mut().zip(p.iter()).for_each(|(a, c)| a.merge(*c));
    }
    let g: [f64; kernels::MAX_STRIDE] = std::array::from_fn(|j| acc[j].value());
    let mut w = [0.0f64; MAX_K];
    let st = partial_stride(k);
    let rank = solve_segment(
        k,
        &g[..st],
        seg_len.min(k),
        opts.tol,
        opts.ridge,
        &mut w[..k],
    );
    (w, rank)
}

/// The cache groups of a two-pass step ([`cache_groups`] with `budget` elements), each with
/// whether its pass 2 runs backwards: a segment larger than the budget is a group of its
/// own, and its pass 2 starts on the chunks pass 1 read last (still cached). With one
/// group, nothing runs backwards.
pub(crate) fn step_groups(segs: &Segments, budget: usize) -> Vec<(std::ops::Range<usize>, bool)> {
    let groups = cache_groups(segs, budget);
    let single = groups.len() <= 1;
    groups
        .into_iter()
        .map(|r| {
            let n: usize = r.clone().map(|s| segs.seg_len(s)).sum();
            (r, !single && n > budget)
        })
        .collect()
}

/// The per-segment solve of checked partials for the split form's `apply`: k coefficients
/// per segment and the ranks, not capped at the segments' lengths (the partials may be a
/// sum over shards).
fn solve_all(
    segs: &Segments,
    partials: &Partials,
    k: usize,
    opts: &ProjectOptions,
) -> (Vec<f64>, Vec<u32>) {
    let mut coef = vec![0.0f64; segs.len() * k];
    let ranks = (0..segs.len())
        .map(|s| {
            let w = &mut coef[s * k..(s + 1) * k];
            solve_segment(k, partials.seg(s), k, opts.tol, opts.ridge, w)
        })
        .collect();
    (coef, ranks)
}

/// A task's element range inside its own segment.
pub(crate) fn local(segs: &Segments, t: &ChunkTask) -> std::ops::Range<usize> {
    let off = segs.offsets()[t.seg];
    t.start - off..t.end - off
}

/// A flat buffer cut at the segment offsets (`[s]` = segment s).
fn cut<'a, T>(segs: &Segments, buf: &'a [T]) -> Vec<&'a [T]> {
    segs.iter().map(|r| &buf[r]).collect()
}

/// A flat destination cut at the segment offsets.
fn cut_mut<'a, T>(segs: &Segments, buf: &'a mut [T]) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(segs.len());
    let mut rest = buf;
    for r in segs.iter() {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(r.len());
        parts.push(head);
        rest = tail;
    }
    parts
}

/// Splits per-segment destinations into the disjoint pieces covered by `tasks` (in order,
/// covering every non-empty segment, see [`chunk_tasks`]), one per task.
fn split_by_tasks<'a, T>(mut segs: Vec<&'a mut [T]>, tasks: &[ChunkTask]) -> Vec<&'a mut [T]> {
    let mut pieces = Vec::with_capacity(tasks.len());
    for t in tasks {
        let rest = std::mem::take(&mut segs[t.seg]);
        let (piece, tail) = rest.split_at_mut(t.end - t.start);
        pieces.push(piece);
        segs[t.seg] = tail;
    }
    pieces
}

/// The bytes per element of a projection's operands (each read-only buffer and the
/// destination): what one element of a cache group costs in cache.
fn operands<T>(c: &Cut<'_, '_, T>) -> usize {
    2 + usize::from(c.v0.is_some()) + c.basis.len() + usize::from(c.out.base().is_some())
}

/// The segments cut into consecutive groups of at most `max` elements each (a longer
/// segment is a group of its own); empty segments join the group they stand in. One group
/// when everything fits.
fn cache_groups(segs: &Segments, max: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut size) = (0, 0usize);
    for (s, r) in segs.iter().enumerate() {
        let n = r.len();
        if size > 0 && size.saturating_add(n) > max {
            groups.push(start..s);
            (start, size) = (s, 0);
        }
        size += n;
    }
    if start < segs.len() || groups.is_empty() {
        groups.push(start..segs.len());
    }
    groups
}

const _: () = assert!(kernels::MAX_STRIDE == partial_stride(crate::project::solve::MAX_K));
