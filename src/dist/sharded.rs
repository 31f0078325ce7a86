//! The split form over sharded parameters: pass 1 on every rank's slice of every tensor,
//! one all-reduce of the packed partials, pass 2 on every rank — on any [`Backend`].

use super::{agree, AllReduce};
use crate::backend::{Backend, ProjectionOf};
use crate::dtype::Element;
use crate::error::{invalid, Result};
use crate::segments::Segments;

/// `project_out` on sharded tensors: every rank holds a slice of every tensor (`segs`
/// describes this rank's slices: the same number of segments on every rank, any lengths,
/// empty ones included) and gets `alpha·base + beta·(x - P x)` on its slices, with `P` the
/// projector of the **whole** tensors — equal to the unsharded projection. Collective: one
/// all-reduce of 3 header values plus `segments · (k(k+1)/2 + k)` partials.
///
/// Returns the per-segment ranks (the same on every rank: every rank solves the same summed
/// partials). `Err` on every rank if any rank's arguments are invalid or the ranks disagree
/// on k or the number of segments (that rank gets its own error, the others one saying
/// that the group disagrees); then no rank reduces or writes anything.
pub fn project_sharded<'a, T: Element, B: Backend, A: AllReduce + ?Sized>(
    backend: &B,
    comm: &A,
    segs: &Segments,
    p: ProjectionOf<'_, 'a, B, T>,
) -> Result<B::Ranks> {
    let local = backend
        .check(segs, &p)
        .and_then(|_| backend.partials(segs, &p));
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
    backend.apply(segs, &partials, p)
}
