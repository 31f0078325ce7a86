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

use super::{candle_err, dtype_of, CandleElement, Job, TensorBackend, TensorView};
use crate::backend::Backend;
use crate::cuda::{drv, CudaBackend};
use crate::dtype::Element;
use crate::error::{invalid, Result};
use crate::projection::ProjectOptions;
use crate::projection::{Output, Projection};
use crate::segments::Segments;
use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaView};

/// A [`CudaBackend`] on candle's stream for `device` (`Err` for a non-CUDA device). Make it
/// once per device and keep it: it caches the loaded kernels and a workspace per layout.
pub fn cuda_backend(device: &Device) -> Result<CudaBackend> {
    let dev = device.as_cuda_device().map_err(candle_err("device"))?;
    CudaBackend::from_stream(dev.cuda_stream())
}

/// The element types shared by redreg's CUDA kernels and candle's CUDA storage.
pub trait CandleCudaElement: CandleElement + Element + CudaDType {}
impl CandleCudaElement for f32 {}
impl CandleCudaElement for half::f16 {}
impl CandleCudaElement for half::bf16 {}

/// The view [`cuda_view`] returns.
pub type CudaTensorView<'a> = TensorView<'a>;

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
    pub fn view<T: CandleCudaElement>(&self) -> Result<CudaView<'_, T>> {
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
pub fn cuda_view(t: &Tensor) -> Result<CudaTensorView<'_>> {
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
    /// One `project_out` per tensor (3 launches each) on this backend's stream, each rank
    /// copied device-to-device into one buffer, read back with one copy at the end (the
    /// only synchronisation).
    fn project_jobs(&self, jobs: &[Job], opts: &ProjectOptions) -> Result<(Vec<Tensor>, Vec<u32>)> {
        let stream = self.stream();
        let mut ranks_dev = stream.alloc_zeros::<u32>(jobs.len().max(1)).map_err(drv)?;
        let mut outs = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            let mut rank = ranks_dev.slice_mut(i..i + 1);
            let t = match dtype_of(job.v.dtype())? {
                crate::DType::F32 => cuda_one::<f32>(self, job, opts, &mut rank)?,
                crate::DType::F16 => cuda_one::<half::f16>(self, job, opts, &mut rank)?,
                crate::DType::BF16 => cuda_one::<half::bf16>(self, job, opts, &mut rank)?,
            };
            outs.push(t);
        }
        let ranks = if jobs.is_empty() {
            Vec::new()
        } else {
            stream
                .clone_dtoh(&ranks_dev.slice(0..jobs.len()))
                .map_err(drv)?
        };
        Ok((outs, ranks))
    }
}

/// `Err` unless the tensor's storage is on `backend`'s stream.
fn check_stream(
    backend: &CudaBackend,
    what: &'static str,
    view: &CudaTensorView<'_>,
) -> Result<()> {
    let theirs = view.cuda_device()?.cuda_stream();
    if theirs.cu_stream() != backend.stream().cu_stream() {
        return Err(invalid(
            what,
            "the tensor's device runs on another CUDA stream than this backend; make the \
             backend with redreg::candle::cuda_backend(&device)",
        ));
    }
    Ok(())
}

fn cuda_one<T: CandleCudaElement>(
    backend: &CudaBackend,
    job: &Job,
    opts: &ProjectOptions,
    rank: &mut cudarc::driver::CudaViewMut<'_, u32>,
) -> Result<Tensor> {
    let vv = cuda_view(&job.v)?;
    check_stream(backend, "v", &vv)?;
    let bv: Vec<CudaTensorView<'_>> = job.basis.iter().map(cuda_view).collect::<Result<_>>()?;
    for b in &bv {
        check_stream(backend, "basis", b)?;
    }
    let basev = job.base.as_ref().map(cuda_view).transpose()?;
    if let Some(b) = &basev {
        check_stream(backend, "base", b)?;
    }
    let v0v = job.v0.as_ref().map(cuda_view).transpose()?;
    if let Some(b) = &v0v {
        check_stream(backend, "theta0", b)?;
    }
    let n = vv.len();
    if n == 0 {
        // Nothing to launch and nothing to allocate (a zero-byte device allocation is an
        // error): an empty tensor of the same shape is the result; the rank stays 0 in
        // the zero-initialised buffer.
        return Ok(job.v.clone());
    }
    let v = vv.view::<T>()?;
    let basis: Vec<CudaView<'_, T>> = bv.iter().map(|b| b.view::<T>()).collect::<Result<_>>()?;
    let base = basev.as_ref().map(|b| b.view::<T>()).transpose()?;
    let v0 = v0v.as_ref().map(|b| b.view::<T>()).transpose()?;
    let segs = Segments::from_lengths(&[n])?;
    // SAFETY: `project_out` with `Output::Write` writes every element of `out`
    // before anything reads it (on this stream), so the uninitialised memory is never read.
    let mut out = unsafe { backend.stream().alloc::<T>(n) }.map_err(drv)?;
    {
        let mut ov = out.slice_mut(0..n);
        let out = Output::Write {
            base,
            out: ov.slice_mut(..),
        };
        let mut p = Projection::new(v, &basis, out)
            .alpha(job.alpha)
            .beta(job.beta)
            .opts(*opts);
        p.v0 = v0;
        let ranks = backend.project_out(&segs, p)?;
        ranks.copy_into(rank)?;
    }
    let device = vv.cuda_device()?.clone();
    let storage = CudaStorage::wrap_cuda_slice(out, device);
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        job.v.dims(),
        BackpropOp::none(),
        false,
    ))
}
