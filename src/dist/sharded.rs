//! The split form over sharded parameters: pass 1 on every rank's slice of every tensor,
//! one all-reduce of the packed partials, pass 2 on every rank.

use super::{agree, AllReduce};
use crate::controller::Reference;
use crate::dtype::Element;
use crate::error::{invalid, Result};
use crate::projection::{check_project, Beta, Output, Partials, ProjectOptions};
use crate::segments::Segments;
use crate::CpuBackend;

/// A host implementation of both passes of the split form.
pub trait SplitForm {
    /// Pass 1: per segment the Gram matrix of the basis and `Bᵀv`.
    fn partials<T: Element>(&self, segs: &Segments, v: &[T], basis: &[&[T]]) -> Result<Partials>;

    /// Pass 2: solve from (summed) partials, write `alpha·base + beta·(v - P v)`.
    #[allow(clippy::too_many_arguments)]
    fn apply<T: Element>(
        &self,
        segs: &Segments,
        v: &[T],
        basis: &[&[T]],
        partials: &Partials,
        out: Output<'_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<Vec<u32>>;
}

impl SplitForm for CpuBackend {
    fn partials<T: Element>(&self, segs: &Segments, v: &[T], basis: &[&[T]]) -> Result<Partials> {
        CpuBackend::partials(self, segs, v, basis)
    }

    fn apply<T: Element>(
        &self,
        segs: &Segments,
        v: &[T],
        basis: &[&[T]],
        partials: &Partials,
        out: Output<'_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<Vec<u32>> {
        CpuBackend::apply(self, segs, v, basis, partials, out, alpha, beta, opts)
    }
}

/// The f64 oracle.
impl SplitForm for Reference {
    fn partials<T: Element>(&self, segs: &Segments, v: &[T], basis: &[&[T]]) -> Result<Partials> {
        crate::reference::partials(segs, v, basis)
    }

    fn apply<T: Element>(
        &self,
        segs: &Segments,
        v: &[T],
        basis: &[&[T]],
        partials: &Partials,
        out: Output<'_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<Vec<u32>> {
        crate::reference::apply(segs, v, basis, partials, out, alpha, beta, opts)
    }
}

/// `project_out` on sharded tensors: every rank holds a slice of every tensor (`segs`
/// describes this rank's slices: the same number of segments on every rank, any lengths,
/// empty ones included) and gets `alpha·base + beta·(v - P v)` on its slices, with `P` the
/// projector of the **whole** tensors — equal to the unsharded projection. Collective: one
/// all-reduce of 3 header values plus `segments · (k(k+1)/2 + k)` partials.
///
/// Returns the per-segment ranks (the same on every rank: every rank solves the same summed
/// partials). `Err` on every rank if any rank's arguments are invalid or the ranks disagree
/// on k or the number of segments (that rank gets its own error, the others one saying
/// that the group disagrees); then no rank reduces or writes anything.
#[allow(clippy::too_many_arguments)]
pub fn project_sharded<T: Element, B: SplitForm, A: AllReduce + ?Sized>(
    backend: &B,
    comm: &A,
    segs: &Segments,
    v: &[T],
    basis: &[&[T]],
    out: Output<'_, T>,
    alpha: f64,
    beta: Beta<'_>,
    opts: &ProjectOptions,
) -> Result<Vec<u32>> {
    let local = check_project(segs, v, basis, &out, alpha, &beta, opts)
        .and_then(|()| backend.partials(segs, v, basis));
    // A rank whose arguments are invalid announces u64::MAX, so the group disagrees.
    let shape = match &local {
        Ok(p) => [p.k() as u64, p.num_segments() as u64],
        Err(_) => [u64::MAX; 2],
    };
    let same = agree(comm, &shape)?;
    let mut partials = local?;
    if !same {
        return Err(invalid(
            "sharded projection",
            format!(
                "the ranks disagree on k or the number of segments, or another rank's \
                 arguments are invalid (this rank: k = {}, {} segments)",
                partials.k(),
                partials.num_segments()
            ),
        ));
    }
    comm.all_reduce_sum(partials.as_mut_slice())?;
    backend.apply(segs, v, basis, &partials, out, alpha, beta, opts)
}
