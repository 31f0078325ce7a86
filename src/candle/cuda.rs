//! candle tensors with CUDA storage (feature `candle-cuda`): read in place as cudarc views
//! of candle's own `CudaSlice`s, projected by [`CudaBackend`] on the device's stream, the
//! results wrapped as new CUDA tensors without a copy.
//!
//! # Streams
//! [`cuda_backend`] makes a backend on candle's stream for the device, so the kernels are
//! ordered after the candle ops that produced the inputs and before the ones that consume
//! the outputs, with no synchronisation. A backend on any other stream is refused with an
//! `Err` (candle may run with cudarc's cross-stream event tracking turned off, and then the
//! two streams would race).

use super::{candle_err, CandleElement, TensorMemory, TensorView};
use crate::cuda::{drv, CudaBackend};
use crate::error::{invalid, Result};
use crate::stats::CudaStats;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use std::ops::Range;
use std::sync::Arc;

/// A [`CudaBackend`] on candle's stream for `device` (`Err` for a non-CUDA device). Make it
/// once per device and keep it: it caches the loaded kernels and a workspace per layout.
pub fn cuda_backend(device: &Device) -> Result<CudaBackend> {
    let dev = device.as_cuda_device().map_err(candle_err("device"))?;
    CudaBackend::from_stream(dev.cuda_stream())
}

impl TensorView<'_> {
    fn cuda_storage(&self) -> Result<&CudaStorage> {
        match &*self.guard {
            Storage::Cuda(cs) => Ok(cs),
            _ => Err(invalid("tensor storage", "not CUDA storage")),
        }
    }

    /// candle's device of a CUDA tensor's storage (`Err` for other storage).
    pub fn cuda_device(&self) -> Result<&CudaDevice> {
        Ok(&self.cuda_storage()?.device)
    }

    /// The elements of a CUDA tensor, in place, as a cudarc view of candle's `CudaSlice`.
    /// `Err` if `T` is not the tensor's dtype or the storage is not CUDA storage.
    pub fn view<T: CandleElement>(&self) -> Result<CudaView<'_, T>> {
        self.check_dtype::<T>()?;
        let all: &CudaSlice<T> = self
            .cuda_storage()?
            .as_cuda_slice::<T>()
            .map_err(candle_err("tensor storage"))?;
        Ok(all.slice(self.range(all.len())?))
    }
}

/// CUDA tensors on the stream of the backend or executor, read in place as cudarc views of
/// candle's `CudaSlice`s. Each result is a new device allocation (`max(len, 1)` elements: a
/// zero-byte allocation is an error), written by the kernels and wrapped as candle storage
/// without a copy; an empty tensor's result is the empty input itself. Not in place into
/// the gradients: a candle tensor is an immutable value whose storage may be shared with
/// every clone the caller holds (the `GradStore` entry, the caller's own handles), so
/// writing into it would change tensors the caller never passed.
impl TensorMemory for crate::cuda::Device {
    type Backend = CudaBackend;
    type Stats = CudaStats;
    type Stream = Arc<CudaStream>;
    type Out<T: CandleElement> = CudaSlice<T>;
    const CUDA: bool = true;

    fn backend_stream(b: &CudaBackend) -> &Arc<CudaStream> {
        b.stream()
    }

    fn stats_stream(s: &CudaStats) -> &Arc<CudaStream> {
        s.stream()
    }

    fn check(stream: &Arc<CudaStream>, what: &'static str, t: &Tensor) -> Result<()> {
        let d = t.device().as_cuda_device().map_err(|_| {
            invalid(
                what,
                format!(
                    "a tensor on {:?} was given to the CUDA backend (use CpuBackend for CPU \
                     tensors)",
                    t.device().location()
                ),
            )
        })?;
        if d.cuda_stream().cu_stream() != stream.cu_stream() {
            return Err(invalid(
                what,
                "the tensor's device runs on another CUDA stream than this backend; make \
                 the backend with redreg::candle::cuda_backend(&device)",
            ));
        }
        Ok(())
    }

    fn src<'a, T: CandleElement>(v: &'a TensorView<'_>) -> Result<CudaView<'a, T>> {
        v.view()
    }

    fn labels(s: &Storage, r: Range<usize>) -> Result<CudaView<'_, i64>> {
        let Storage::Cuda(cs) = s else {
            return Err(invalid("labels", "not a CUDA tensor"));
        };
        let all = cs.as_cuda_slice::<i64>().map_err(candle_err("labels"))?;
        if r.end > all.len() {
            return Err(invalid("labels", "layout outside its storage"));
        }
        Ok(all.slice(r))
    }

    fn alloc<T: CandleElement>(b: &CudaBackend, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the projection (`Output::Write`) writes every one of the first `n`
        // elements before anything reads them, on this stream; the spare element of an
        // empty tensor's buffer is never read.
        unsafe { b.stream().alloc::<T>(n.max(1)) }.map_err(drv)
    }

    fn dst<T: CandleElement>(o: &mut CudaSlice<T>, n: usize) -> CudaViewMut<'_, T> {
        o.slice_mut(0..n)
    }

    fn write_back<T: CandleElement>(var: &Tensor, from: &CudaSlice<T>, n: usize) -> Result<()> {
        var.inplace_op1(&DeviceCopyBack(from.slice(0..n)))
            .map_err(candle_err("optimizer copy-back"))
    }

    fn into_tensor<T: CandleElement>(
        o: CudaSlice<T>,
        like: &Tensor,
        view: &TensorView<'_>,
    ) -> Result<Tensor> {
        if view.is_empty() {
            return Ok(like.clone());
        }
        let storage = CudaStorage::wrap_cuda_slice(o, view.cuda_device()?.clone());
        Ok(Tensor::from_storage(
            Storage::Cuda(storage),
            like.dims(),
            BackpropOp::none(),
            false,
        ))
    }
}

/// Copies a device buffer into a variable's CUDA storage, in place (`Tensor::inplace_op1`),
/// on the storage's stream (candle's: the optimizer's backend runs on it too).
struct DeviceCopyBack<'a, T>(CudaView<'a, T>);

impl<T: CandleElement> candle_core::InplaceOp1 for DeviceCopyBack<'_, T> {
    fn name(&self) -> &'static str {
        "redreg-optimizer-copy-back"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        Err(candle_core::Error::Msg(
            "optimizer copy-back: a CUDA buffer into CPU storage".into(),
        ))
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &candle_core::Layout) -> candle_core::Result<()> {
        let n = self.0.len();
        if !l.is_contiguous() || l.shape().elem_count() != n {
            return Err(candle_core::Error::Msg(
                "optimizer copy-back: storage changed".into(),
            ));
        }
        let stream = s.device.cuda_stream();
        let all = s.as_cuda_slice_mut::<T>()?;
        if l.start_offset() + n > all.len() {
            return Err(candle_core::Error::Msg(
                "optimizer copy-back: storage changed".into(),
            ));
        }
        let mut dst = all.slice_mut(l.start_offset()..l.start_offset() + n);
        stream
            .memcpy_dtod(&self.0, &mut dst)
            .map_err(|e| candle_core::Error::Msg(format!("optimizer copy-back: {e}")))
    }
}
