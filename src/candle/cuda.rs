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
use crate::project::{Output, ProjectOptions, Projection, TensorList};
use crate::segments::Segments;
use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Device, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

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
    /// Every job as one [`CudaBackend::project_list`] call on this backend's stream: 2
    /// launches whatever the number of tensors (1 for k = 0), the pointer table uploaded
    /// when the tensors moved, the ranks read back with one device-to-host copy at the end
    /// (the only synchronisation).
    fn project_jobs(&self, jobs: &[Job], opts: &ProjectOptions) -> Result<(Vec<Tensor>, Vec<u32>)> {
        let Some(first) = jobs.first() else {
            return Ok((Vec::new(), Vec::new()));
        };
        match dtype_of(first.v.dtype())? {
            crate::DType::F32 => cuda_list::<f32>(self, jobs, opts),
            crate::DType::F16 => cuda_list::<half::f16>(self, jobs, opts),
            crate::DType::BF16 => cuda_list::<half::bf16>(self, jobs, opts),
        }
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

/// The views of one operand over every job (`None` when the jobs have no such operand),
/// each checked to be on `backend`'s stream.
fn operand_views<'j>(
    backend: &CudaBackend,
    what: &'static str,
    jobs: &'j [Job],
    f: impl Fn(&'j Job) -> Option<&'j Tensor>,
) -> Result<Option<Vec<CudaTensorView<'j>>>> {
    let views: Option<Vec<&Tensor>> = jobs.iter().map(f).collect();
    views
        .map(|ts| {
            ts.into_iter()
                .map(|t| {
                    let v = cuda_view(t)?;
                    check_stream(backend, what, &v)?;
                    Ok(v)
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()
}

/// Typed device views of checked tensor views.
fn typed<'a, T: CandleCudaElement>(
    vs: &'a Option<Vec<CudaTensorView<'_>>>,
) -> Result<Option<TensorList<CudaView<'a, T>>>> {
    vs.as_ref()
        .map(|vs| vs.iter().map(|v| v.view::<T>()).collect::<Result<_>>())
        .transpose()
}

/// Every job as one tensor-list projection. Each result is a new device allocation
/// (`max(len, 1)` elements: a zero-byte allocation is an error), written by the kernels and
/// wrapped as candle storage without a copy; an empty tensor's result is the empty input
/// itself. Not in place into the gradients: a candle tensor is an immutable value whose
/// storage may be shared with every clone the caller holds (the `GradStore` entry, the
/// caller's own handles), so writing into it would change tensors the caller never passed.
fn cuda_list<T: CandleCudaElement>(
    backend: &CudaBackend,
    jobs: &[Job],
    opts: &ProjectOptions,
) -> Result<(Vec<Tensor>, Vec<u32>)> {
    let c = super::Common::of(jobs)?;
    let k = c.k;
    let vv = operand_views(backend, "v", jobs, |j| Some(&j.v))?;
    let v0v = operand_views(backend, "theta0", jobs, |j| j.v0.as_ref())?;
    let basev = operand_views(backend, "base", jobs, |j| j.base.as_ref())?;
    let bv: Vec<Option<Vec<CudaTensorView<'_>>>> = (0..k)
        .map(|i| operand_views(backend, "basis", jobs, |j| Some(&j.basis[i])))
        .collect::<Result<_>>()?;
    let v = typed::<T>(&vv)?.unwrap_or_default();
    let basis: Vec<TensorList<CudaView<'_, T>>> = bv
        .iter()
        .map(|b| typed::<T>(b).map(Option::unwrap_or_default))
        .collect::<Result<_>>()?;
    let lens: Vec<usize> = v.0.iter().map(|x| x.len()).collect();
    let segs = Segments::from_lengths(&lens)?;
    let stream = backend.stream();
    // SAFETY: `project_list` with `Output::Write` writes every element of each `out`
    // tensor before anything reads it (on this stream), so the uninitialised memory is
    // never read (the spare element of an empty tensor's buffer is never touched).
    let mut outs: Vec<CudaSlice<T>> = lens
        .iter()
        .map(|&n| unsafe { stream.alloc::<T>(n.max(1)) }.map_err(drv))
        .collect::<Result<_>>()?;
    let ranks = {
        let out: TensorList<CudaViewMut<'_, T>> = outs
            .iter_mut()
            .zip(&lens)
            .map(|(o, &n)| o.slice_mut(0..n))
            .collect();
        let mut p = Projection::new(
            v,
            basis,
            Output::Write {
                base: typed::<T>(&basev)?,
                out,
            },
        )
        .alpha(c.alpha)
        .beta(c.beta())
        .opts(*opts);
        p.v0 = typed::<T>(&v0v)?;
        backend.project_list(&segs, p)?
    };
    let ranks = ranks.to_vec()?;
    let mut tensors = Vec::with_capacity(jobs.len());
    for ((o, &n), (job, view)) in outs
        .into_iter()
        .zip(&lens)
        .zip(jobs.iter().zip(vv.iter().flatten()))
    {
        if n == 0 {
            tensors.push(job.v.clone());
            continue;
        }
        let device = view.cuda_device()?.clone();
        let storage = CudaStorage::wrap_cuda_slice(o, device);
        tensors.push(Tensor::from_storage(
            Storage::Cuda(storage),
            job.v.dims(),
            BackpropOp::none(),
            false,
        ));
    }
    Ok((tensors, ranks))
}
