//! The memory families whose buffers are candle storage read in place — the one part of the
//! adapter that differs between CPU and CUDA tensors. [`Host`]: CPU tensors as host slices,
//! results as new host buffers; with feature `candle-cuda`, `cuda::Device`: CUDA tensors as
//! cudarc views of candle's `CudaSlice`s on candle's stream, results as new device buffers
//! wrapped without a copy (its implementation is in `src/candle/cuda.rs`). The projection
//! (`src/candle/project.rs`) and the statistics (`src/candle/stats.rs`) are each one generic
//! path over this trait.

use super::{candle_err, view, CandleElement, TensorView, CUDA_HINT};
use crate::backend::{Backend, Host, Memory};
use crate::error::{invalid, Result};
use crate::stats::{Buf, CpuStats, Stats};
use crate::CpuBackend;
use candle_core::{Storage, Tensor};
use std::ops::Range;

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::backend::Host {}
    #[cfg(feature = "candle-cuda")]
    impl Sealed for crate::cuda::Device {}
}

/// A memory family whose buffers are candle storage: its backend and statistics executor,
/// how a tensor is read in place and how a result becomes a tensor. Sealed: the adapter's
/// functions are the interface.
pub trait TensorMemory: Memory + Sized + sealed::Sealed {
    /// The projection backend of this memory ([`CpuBackend`], `CudaBackend`).
    type Backend: Backend<Memory = Self> + crate::optim::OptimBackend + std::fmt::Debug + Send;
    /// The statistics executor of this memory ([`CpuStats`], `CudaStats`).
    type Stats: Stats<Memory = Self> + std::fmt::Debug + Send;
    /// What a tensor must run on besides its storage: nothing on the host, on CUDA the
    /// stream of the backend or executor.
    #[doc(hidden)]
    type Stream;
    /// A result's buffer before it becomes a tensor.
    #[doc(hidden)]
    type Out<T: CandleElement>: Send;
    /// True for device memory (CUDA tensors).
    #[doc(hidden)]
    const CUDA: bool;

    /// The stream a backend runs on.
    #[doc(hidden)]
    fn backend_stream(b: &Self::Backend) -> &Self::Stream;

    /// The stream an executor runs on.
    #[doc(hidden)]
    fn stats_stream(s: &Self::Stats) -> &Self::Stream;

    /// `Err` (naming `what`) unless `t` is storage of this memory (on CUDA: on `stream`).
    #[doc(hidden)]
    fn check(stream: &Self::Stream, what: &'static str, t: &Tensor) -> Result<()>;

    /// The tensor's elements in place; `Err` unless it passes [`TensorMemory::check`], is
    /// contiguous and of a supported dtype.
    #[doc(hidden)]
    fn tensor_view<'t>(
        stream: &Self::Stream,
        what: &'static str,
        t: &'t Tensor,
    ) -> Result<TensorView<'t>> {
        Self::check(stream, what, t)?;
        view(t)
    }

    /// The typed buffer of a view (`Err` unless `T` is its dtype).
    #[doc(hidden)]
    fn src<'a, T: CandleElement>(v: &'a TensorView<'_>) -> Result<Self::Src<'a, T>>;

    /// The elements `r` of an i64 storage of this memory.
    #[doc(hidden)]
    fn labels(s: &Storage, r: Range<usize>) -> Result<Self::Src<'_, i64>>;

    /// A result buffer of `n` elements, every one of which the projection writes.
    #[doc(hidden)]
    fn alloc<T: CandleElement>(b: &Self::Backend, n: usize) -> Result<Self::Out<T>>;

    /// The writable view of a result buffer's `n` elements.
    #[doc(hidden)]
    fn dst<T: CandleElement>(o: &mut Self::Out<T>, n: usize) -> Self::Dst<'_, T>;

    /// Copies the first `n` elements of `from` into `var`'s storage, in place (an in-place
    /// custom op: candle's write lock on the storage; `Err` if the storage changed).
    #[doc(hidden)]
    fn write_back<T: CandleElement>(var: &Tensor, from: &Self::Out<T>, n: usize) -> Result<()>;

    /// The result as a tensor of `like`'s shape on `like`'s device (`view`: `like`'s view).
    #[doc(hidden)]
    fn into_tensor<T: CandleElement>(
        o: Self::Out<T>,
        like: &Tensor,
        view: &TensorView<'_>,
    ) -> Result<Tensor>;
}

/// The statistics plan's buffer for a view of a tensor in memory `M` (the view's dtype
/// decides the variant).
pub fn stats_buf<'a, M: TensorMemory>(v: &'a TensorView<'_>) -> Result<Buf<'a, M>> {
    Ok(match v.dtype() {
        crate::DType::F32 => Buf::F32(M::src(v)?),
        crate::DType::F16 => Buf::F16(M::src(v)?),
        crate::DType::BF16 => Buf::BF16(M::src(v)?),
    })
}

/// CPU tensors: host slices of candle's storage; each result one new host buffer.
impl TensorMemory for Host {
    type Backend = CpuBackend;
    type Stats = CpuStats;
    type Stream = ();
    type Out<T: CandleElement> = Vec<T>;
    const CUDA: bool = false;

    fn backend_stream(_: &CpuBackend) -> &() {
        &()
    }

    fn stats_stream(_: &CpuStats) -> &() {
        &()
    }

    fn check(_: &(), what: &'static str, t: &Tensor) -> Result<()> {
        if t.device().is_cpu() {
            return Ok(());
        }
        Err(invalid(
            what,
            format!(
                "a tensor on {:?} was given to the CPU backend; {CUDA_HINT}",
                t.device().location()
            ),
        ))
    }

    fn src<'a, T: CandleElement>(v: &'a TensorView<'_>) -> Result<&'a [T]> {
        v.as_slice()
    }

    fn labels(s: &Storage, r: Range<usize>) -> Result<&[i64]> {
        let Storage::Cpu(cs) = s else {
            return Err(invalid("labels", "not a CPU tensor"));
        };
        let all = cs.as_slice::<i64>().map_err(candle_err("labels"))?;
        all.get(r)
            .ok_or_else(|| invalid("labels", "layout outside its storage"))
    }

    fn alloc<T: CandleElement>(_: &CpuBackend, n: usize) -> Result<Vec<T>> {
        Ok(vec![T::default(); n])
    }

    fn dst<T: CandleElement>(o: &mut Vec<T>, n: usize) -> &mut [T] {
        &mut o[..n]
    }

    fn write_back<T: CandleElement>(var: &Tensor, from: &Vec<T>, n: usize) -> Result<()> {
        var.inplace_op1(&HostCopyBack(&from[..n]))
            .map_err(candle_err("optimizer copy-back"))
    }

    fn into_tensor<T: CandleElement>(
        o: Vec<T>,
        like: &Tensor,
        _: &TensorView<'_>,
    ) -> Result<Tensor> {
        Tensor::from_vec(o, like.dims(), like.device()).map_err(candle_err("output tensor"))
    }
}

/// Copies a host buffer into a variable's CPU storage, in place (`Tensor::inplace_op1`).
struct HostCopyBack<'a, T>(&'a [T]);

impl<T: CandleElement> candle_core::InplaceOp1 for HostCopyBack<'_, T> {
    fn name(&self) -> &'static str {
        "redreg-optimizer-copy-back"
    }

    fn cpu_fwd(
        &self,
        s: &mut candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let n = self.0.len();
        let dst = T::host_storage_mut(s)
            .and_then(|v| v.get_mut(l.start_offset()..l.start_offset() + n))
            .filter(|_| l.is_contiguous() && l.shape().elem_count() == n)
            .ok_or_else(|| {
                candle_core::Error::Msg("optimizer copy-back: storage changed".into())
            })?;
        dst.copy_from_slice(self.0);
        Ok(())
    }
}
