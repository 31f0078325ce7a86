//! [`Backend`]: the one interface of the projection, implemented by the f64 oracle
//! ([`crate::Reference`]), the multi-threaded [`crate::CpuBackend`] and (feature `cuda`) the
//! `CudaBackend`. Code generic over it — [`crate::controller`], [`crate::dist`], the candle
//! adapter, the benches — runs on any of them.
//!
//! Buffers are the backend's own: host slices (`&[T]`, `&mut [T]`) for the reference and
//! the CPU backend, cudarc views (`CudaView`, `CudaViewMut`) for CUDA. Ranks come back per
//! call: a `Vec<u32>` on the host, a `DeviceRanks` on CUDA (read with
//! [`RankList::to_vec`], which synchronises) — never shared state.
//!
//! # Adding an operation
//! A projection-like operation is a field or an [`crate::project::Implicit`] variant of
//! [`Projection`], its flag in the ABI table, its line in the kernel, the oracle and the CPU
//! kernel; no method here changes. `docs/ARCHITECTURE.md` walks through an example.

use crate::dtype::Element;
use crate::error::Result;
use crate::project::{Buffer, Partials, Projection, TensorList};
use crate::segments::Segments;

/// The per-segment ranks one call returns.
pub trait RankList {
    /// The ranks on the host (a copy; on CUDA this synchronises the stream).
    fn to_vec(&self) -> Result<Vec<u32>>;
}

impl RankList for Vec<u32> {
    fn to_vec(&self) -> Result<Vec<u32>> {
        Ok(self.clone())
    }
}

/// Where a backend's buffers live: [`Host`] memory (slices) or, with feature `cuda`,
/// `cuda::Device` memory (cudarc views). Generic code names buffers through it
/// ([`Src`], [`Dst`]); the statistics plan binds its inputs through it too.
pub trait Memory {
    /// A read-only buffer of `T`: `&[T]`, `CudaView<T>`.
    type Src<'a, T: 'a>: Buffer;
    /// A writable buffer of `T`: `&mut [T]`, `CudaViewMut<T>`.
    type Dst<'a, T: 'a>: Buffer;

    /// Another handle to the same elements, for a shorter time (a copy of `&[T]`; a
    /// re-slice of a cudarc view).
    fn share<'b, 'a: 'b, T>(s: &'b Self::Src<'a, T>) -> Self::Src<'b, T>;

    /// The same destination lent for a shorter time (`&mut **d`; `slice_mut(..)`).
    fn reborrow<'b, 'a: 'b, T>(d: &'b mut Self::Dst<'a, T>) -> Self::Dst<'b, T>;

    /// A destination read as a source (`&**d`; `as_view()`).
    fn view<'b, 'a: 'b, T>(d: &'b Self::Dst<'a, T>) -> Self::Src<'b, T>;
}

/// Host memory: slices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Host;

impl Memory for Host {
    type Src<'a, T: 'a> = &'a [T];
    type Dst<'a, T: 'a> = &'a mut [T];

    fn share<'b, 'a: 'b, T>(s: &'b &'a [T]) -> &'b [T] {
        s
    }

    fn reborrow<'b, 'a: 'b, T>(d: &'b mut &'a mut [T]) -> &'b mut [T] {
        d
    }

    fn view<'b, 'a: 'b, T>(d: &'b &'a mut [T]) -> &'b [T] {
        d
    }
}

/// A read-only buffer of backend `B`.
pub type Src<'a, B, T> = <<B as Backend>::Memory as Memory>::Src<'a, T>;
/// A writable buffer of backend `B`.
pub type Dst<'a, B, T> = <<B as Backend>::Memory as Memory>::Dst<'a, T>;

/// The arguments of a projection on backend `B` with elements `T`: buffers borrowed for
/// `'b`, the basis list for `'a`.
pub type ProjectionOf<'a, 'b, B, T> = Projection<'a, Src<'b, B, T>, Dst<'b, B, T>>;

/// The arguments of a projection over a [`TensorList`] (one buffer per segment) on backend
/// `B`.
pub type ListProjectionOf<'a, 'b, B, T> =
    Projection<'a, TensorList<Src<'b, B, T>>, TensorList<Dst<'b, B, T>>>;

/// The projection and orthonormalisation, on one kind of buffer. Every method takes the
/// projection whole ([`Projection`]: its buffers, options and factors travel together).
///
/// Every method validates its arguments first ([`Backend::check`]) and returns `Err`
/// without touching any buffer when they are invalid.
pub trait Backend {
    /// Where its buffers live.
    type Memory: Memory;
    /// The per-segment ranks of one call.
    type Ranks: RankList;

    /// Every check [`Backend::project_out`] and [`Backend::apply`] make before they touch
    /// data: [`Projection::validate`] and the backend's own (on CUDA: every buffer in the
    /// backend's context, the destination overlapping no input). Touches nothing; returns
    /// k. [`crate::controller::Controller::step`] runs it on every encoder before it
    /// changes its state.
    fn check<'a, T: Element>(
        &self,
        segs: &Segments,
        p: &Projection<'_, Src<'a, Self, T>, Dst<'a, Self, T>>,
    ) -> Result<usize>;

    /// Both passes: `out = alpha·base + beta·(x - P x)` per segment ([`Projection`]).
    /// Ranks at most `min(segment length, k)`.
    fn project_out<'a, T: Element>(
        &self,
        segs: &Segments,
        p: Projection<'_, Src<'a, Self, T>, Dst<'a, Self, T>>,
    ) -> Result<Self::Ranks>;

    /// [`Backend::project_out`] over tensor lists: every operand is a [`TensorList`], one
    /// buffer per segment (each tensor its own allocation). Bit for bit the result of
    /// packing every list into one flat buffer and calling `project_out`; on CUDA the same
    /// launches as the flat call (a per-segment pointer table, uploaded with one copy when
    /// the pointers change), on the CPU the same chunks.
    fn project_list<'a, T: Element>(
        &self,
        segs: &Segments,
        p: ListProjectionOf<'_, 'a, Self, T>,
    ) -> Result<Self::Ranks>;

    /// Pass 1 of the split form: per segment the Gram matrix of the projection's basis (the
    /// implicit vector first) and `Bᵀx` (`x = v`, or `v - v0` in f64), on the host (on
    /// CUDA this synchronises). Reads only ([`Projection::validate_inputs`]). Partials of
    /// shards of the same segments add up (an all-reduce sum) to those of the whole.
    fn partials<'a, T: Element>(
        &self,
        segs: &Segments,
        p: &Projection<'_, Src<'a, Self, T>, Dst<'a, Self, T>>,
    ) -> Result<Partials>;

    /// Pass 2 of the split form: solves each segment from `partials` (possibly summed over
    /// shards) and writes the output like [`Backend::project_out`]. Ranks at most k (not
    /// capped by the local length: the partials may be summed over shards).
    fn apply<'a, T: Element>(
        &self,
        segs: &Segments,
        partials: &Partials,
        p: Projection<'_, Src<'a, Self, T>, Dst<'a, Self, T>>,
    ) -> Result<Self::Ranks>;

    /// Orthonormalises the k basis vectors of every segment in place; dropped vectors
    /// become zeros. Ranks at most `min(segment length, k)`.
    fn orthonormalize<'a, T: Element>(
        &self,
        segs: &Segments,
        basis: &mut [Dst<'a, Self, T>],
        tol: f64,
    ) -> Result<Self::Ranks>;

    /// `dst = src` (for example the epoch-start snapshot `theta0 = theta`); on CUDA
    /// asynchronous on the backend's stream.
    fn copy<'a, T: Element>(&self, src: Src<'a, Self, T>, dst: Dst<'a, Self, T>) -> Result<()>;
}

/// `dst = src` for host slices; `Err` on different lengths.
pub(crate) fn host_copy<T: Copy>(src: &[T], dst: &mut [T]) -> Result<()> {
    crate::error::check_len("copy destination", src.len(), dst.len())?;
    dst.copy_from_slice(src);
    Ok(())
}
