//! The projection over candle tensors: one generic path for every backend whose memory is
//! candle storage read in place ([`TensorMemory`]: the CPU's host slices, feature
//! `candle-cuda`: CUDA views on candle's stream). The adapter's functions build one
//! [`TensorProjection`] (each operand a list of tensors, one per parameter tensor) and
//! this path maps it — with [`Projection::try_map`], the one mapping of a projection's
//! buffers — to views, then to typed buffers, and runs one
//! [`Backend::project_list`] over every tensor.

use super::{dtype_of, CandleElement, TensorMemory, TensorView};
use crate::backend::{Backend, Dst, RankList};
use crate::error::Result;
use crate::project::{Projection, TensorList};
use crate::segments::Segments;
use candle_core::Tensor;

/// The projection as the adapter's functions build it from candle tensors: every operand a
/// list of tensors (one per parameter tensor, in order); the results are new tensors that
/// the backend makes (hence no destination, `()`).
#[doc(hidden)]
pub type TensorProjection<'a> = Projection<'a, TensorList<Tensor>, ()>;

/// Runs `p` as one tensor-list projection; the new tensors and each tensor's basis rank.
pub(crate) fn project_tensors<B>(b: &B, p: &TensorProjection<'_>) -> Result<(Vec<Tensor>, Vec<u32>)>
where
    B: Backend,
    B::Memory: TensorMemory<Backend = B>,
{
    let Some(first) = p.v.0.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    match dtype_of(first.dtype())? {
        crate::DType::F32 => run::<B, f32>(b, p),
        crate::DType::F16 => run::<B, half::f16>(b, p),
        crate::DType::BF16 => run::<B, half::bf16>(b, p),
    }
}

fn run<B, T: CandleElement>(b: &B, p: &TensorProjection<'_>) -> Result<(Vec<Tensor>, Vec<u32>)>
where
    B: Backend,
    B::Memory: TensorMemory<Backend = B>,
{
    type M<B> = <B as Backend>::Memory;
    let stream = M::<B>::backend_stream(b);
    // Every operand's views (candle's read locks), held until the results are made.
    let views = p.as_ref().try_map(
        |l| {
            (l.0.iter())
                .map(|t| M::<B>::tensor_view(stream, "tensor storage", t))
                .collect::<Result<Vec<_>>>()
        },
        |_| Ok(()),
    )?;
    let lens: Vec<usize> = views.v.iter().map(TensorView::len).collect();
    let segs = Segments::from_lengths(&lens)?;
    let mut outs = lens
        .iter()
        .map(|&n| M::<B>::alloc::<T>(b, n))
        .collect::<Result<Vec<_>>>()?;
    let ranks = {
        let out: TensorList<Dst<'_, B, T>> = outs
            .iter_mut()
            .zip(&lens)
            .map(|(o, &n)| M::<B>::dst(o, n))
            .collect();
        let typed = views.as_ref().try_map(
            |vs| vs.iter().map(|v| M::<B>::src::<T>(v)).collect(),
            |_| Ok(out),
        )?;
        b.project_list(&segs, typed)?.to_vec()?
    };
    let tensors = outs
        .into_iter()
        .zip(&p.v.0)
        .zip(&views.v)
        .map(|((o, like), view)| M::<B>::into_tensor(o, like, view))
        .collect::<Result<_>>()?;
    Ok((tensors, ranks))
}
