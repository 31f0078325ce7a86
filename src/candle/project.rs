//! The projection over candle tensors: one generic path for every backend whose buffers are
//! candle storage read in place ([`TensorStorage`]: the CPU's host slices, feature
//! `candle-cuda`: CUDA views on candle's stream). The adapter's functions build one
//! [`TensorProjection`] (each operand a list of tensors, one per parameter tensor) and
//! this path maps it — with [`Projection::try_map`], the one mapping of a projection's
//! buffers — to views, then to typed buffers, and runs one
//! [`Backend::project_list`] over every tensor.

use super::{dtype_of, CandleElement, TensorView};
use crate::backend::{Backend, Dst, RankList, Src};
use crate::error::Result;
use crate::project::{Projection, TensorList};
use crate::segments::Segments;
use crate::CpuBackend;
use candle_core::Tensor;

/// The projection as the adapter's functions build it from candle tensors: every operand a
/// list of tensors (one per parameter tensor, in order); the results are new tensors that
/// the backend makes (hence no destination, `()`).
#[doc(hidden)]
pub type TensorProjection<'a> = Projection<'a, TensorList<Tensor>, ()>;

/// What the one generic path needs from a backend whose buffers are candle storage: how to
/// read a tensor in place and how to make a result tensor.
pub(crate) trait TensorStorage: Backend {
    /// A result's buffer before it becomes a tensor.
    type Out<T: CandleElement>;

    /// The tensor's elements in place; `Err` unless this backend can read them (storage of
    /// its device, on CUDA its stream; contiguous; a supported dtype).
    fn view<'t>(&self, t: &'t Tensor) -> Result<TensorView<'t>>;

    /// The typed buffer of a view (`Err` unless `T` is its dtype).
    fn src<'a, T: CandleElement>(v: &'a TensorView<'_>) -> Result<Src<'a, Self, T>>;

    /// A result buffer of `n` elements, every one of which the projection writes.
    fn alloc<T: CandleElement>(&self, n: usize) -> Result<Self::Out<T>>;

    /// The writable view of a result buffer's `n` elements.
    fn dst<T: CandleElement>(o: &mut Self::Out<T>, n: usize) -> Dst<'_, Self, T>;

    /// The result as a tensor of `like`'s shape on `like`'s device (`view`: `like`'s view).
    fn into_tensor<T: CandleElement>(
        o: Self::Out<T>,
        like: &Tensor,
        view: &TensorView<'_>,
    ) -> Result<Tensor>;
}

/// Runs `p` as one tensor-list projection; the new tensors and each tensor's basis rank.
pub(crate) fn project_tensors<B: TensorStorage>(
    b: &B,
    p: &TensorProjection<'_>,
) -> Result<(Vec<Tensor>, Vec<u32>)> {
    let Some(first) = p.v.0.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    match dtype_of(first.dtype())? {
        crate::DType::F32 => run::<B, f32>(b, p),
        crate::DType::F16 => run::<B, half::f16>(b, p),
        crate::DType::BF16 => run::<B, half::bf16>(b, p),
    }
}

fn run<B: TensorStorage, T: CandleElement>(
    b: &B,
    p: &TensorProjection<'_>,
) -> Result<(Vec<Tensor>, Vec<u32>)> {
    // Every operand's views (candle's read locks), held until the results are made.
    let views = p.as_ref().try_map(
        |l| l.0.iter().map(|t| b.view(t)).collect::<Result<Vec<_>>>(),
        |_| Ok(()),
    )?;
    let lens: Vec<usize> = views.v.iter().map(TensorView::len).collect();
    let segs = Segments::from_lengths(&lens)?;
    let mut outs = lens
        .iter()
        .map(|&n| b.alloc::<T>(n))
        .collect::<Result<Vec<_>>>()?;
    let ranks = {
        let out: TensorList<Dst<'_, B, T>> = outs
            .iter_mut()
            .zip(&lens)
            .map(|(o, &n)| B::dst(o, n))
            .collect();
        let typed = views.as_ref().try_map(
            |vs| vs.iter().map(|v| B::src::<T>(v)).collect(),
            |_| Ok(out),
        )?;
        b.project_list(&segs, typed)?.to_vec()?
    };
    let tensors = outs
        .into_iter()
        .zip(&p.v.0)
        .zip(&views.v)
        .map(|((o, like), view)| B::into_tensor(o, like, view))
        .collect::<Result<_>>()?;
    Ok((tensors, ranks))
}

/// CPU tensors: host slices of candle's storage; each result one new host buffer.
impl TensorStorage for CpuBackend {
    type Out<T: CandleElement> = Vec<T>;

    fn view<'t>(&self, t: &'t Tensor) -> Result<TensorView<'t>> {
        super::cpu_view(t)
    }

    fn src<'a, T: CandleElement>(v: &'a TensorView<'_>) -> Result<&'a [T]> {
        v.as_slice()
    }

    fn alloc<T: CandleElement>(&self, n: usize) -> Result<Vec<T>> {
        Ok(vec![T::default(); n])
    }

    fn dst<T: CandleElement>(o: &mut Vec<T>, n: usize) -> &mut [T] {
        &mut o[..n]
    }

    fn into_tensor<T: CandleElement>(
        o: Vec<T>,
        like: &Tensor,
        _: &TensorView<'_>,
    ) -> Result<Tensor> {
        Tensor::from_vec(o, like.dims(), like.device()).map_err(super::candle_err("output tensor"))
    }
}
