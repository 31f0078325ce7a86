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

use super::project::TensorStorage;
use super::{candle_err, dtype_of, CandleElement, TensorBackend, TensorProjection, TensorView};
use crate::cuda::{drv, CudaBackend};
use crate::error::{invalid, Result};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

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

/// In-place access to the device memory of `t`. `Err` unless `t` has CUDA storage, is
/// contiguous and is f32, f16 or bf16. Holds candle's read lock on the storage while the
/// view lives (do not update the same variable before dropping it).
pub fn cuda_view(t: &Tensor) -> Result<TensorView<'_>> {
    let dtype = dtype_of(t.dtype())?;
    let (guard, layout) = t.storage_and_layout();
    if !matches!(&*guard, Storage::Cuda(_)) {
        return Err(invalid(
            "tensor storage",
            format!(
                "a tensor on {:?} was given to the CUDA backend (use CpuBackend for CPU tensors)",
                t.device().location()
            ),
        ));
    }
    super::check_contiguous(layout)?;
    Ok(TensorView {
        start: layout.start_offset(),
        len: layout.shape().elem_count(),
        dtype,
        guard,
    })
}

impl TensorBackend for CudaBackend {
    /// One [`CudaBackend::project_list`] call on this backend's stream: 2 launches
    /// whatever the number of tensors (1 for k = 0), the pointer table uploaded when the
    /// tensors moved, the ranks read back with one device-to-host copy at the end (the only
    /// synchronisation).
    fn project_tensors(&self, p: &TensorProjection<'_>) -> Result<(Vec<Tensor>, Vec<u32>)> {
        super::project::project_tensors(self, p)
    }
}

/// CUDA tensors on this backend's stream, read in place as cudarc views of candle's
/// `CudaSlice`s. Each result is a new device allocation (`max(len, 1)` elements: a
/// zero-byte allocation is an error), written by the kernels and wrapped as candle storage
/// without a copy; an empty tensor's result is the empty input itself. Not in place into
/// the gradients: a candle tensor is an immutable value whose storage may be shared with
/// every clone the caller holds (the `GradStore` entry, the caller's own handles), so
/// writing into it would change tensors the caller never passed.
impl TensorStorage for CudaBackend {
    type Out<T: CandleElement> = CudaSlice<T>;

    fn view<'t>(&self, t: &'t Tensor) -> Result<TensorView<'t>> {
        let v = cuda_view(t)?;
        let theirs = v.cuda_device()?.cuda_stream();
        if theirs.cu_stream() != self.stream().cu_stream() {
            return Err(invalid(
                "tensor stream",
                "the tensor's device runs on another CUDA stream than this backend; make                  the backend with redreg::candle::cuda_backend(&device)",
            ));
        }
        Ok(v)
    }

    fn src<'a, T: CandleElement>(v: &'a TensorView<'_>) -> Result<CudaView<'a, T>> {
        v.view()
    }

    fn alloc<T: CandleElement>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the projection (`Output::Write`) writes every one of the first `n`
        // elements before anything reads them, on this stream; the spare element of an
        // empty tensor's buffer is never read.
        unsafe { self.stream().alloc::<T>(n.max(1)) }.map_err(drv)
    }

    fn dst<T: CandleElement>(o: &mut CudaSlice<T>, n: usize) -> CudaViewMut<'_, T> {
        o.slice_mut(0..n)
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
