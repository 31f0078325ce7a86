//! The CUDA path of [`super::step()`]: the same decision applied to device buffers, queued
//! on the backend's stream with no host synchronisation (the step's one device-to-host copy
//! is the statistics plan's, before the decision).
//!
//! Launches for the suppressed encoder: the drift `d = theta - theta_0` (the apply kernel
//! with k = 0: `out = -1·theta_0 + 1·theta`, computed in f64, one rounding), a
//! device-to-device copy of `g` (it is both the basis and the destination), then
//! `project_out` (pass 1, per-tensor solve, pass 2). Scratch buffers are allocated on the
//! first call and reused while the encoder sizes fit.

use crate::cuda::{CudaBackend, CudaElement, DeviceOutput};
use crate::error::{check_count, invalid, Error, Result};
use crate::projection::{Beta, ProjectOptions};
use crate::segments::Segments;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use super::decision::{Decision, StepInputs};
use super::state::Controller;

/// The device buffers of one modality's encoder (the twin of [`super::Encoder`]).
#[derive(Debug)]
pub struct CudaEncoder<'a, T> {
    /// Layout of the encoder's flattened parameters.
    pub segs: &'a Segments,
    /// Current parameters `theta`.
    pub theta: CudaView<'a, T>,
    /// Parameters at the epoch start (see [`snapshot_cuda`]).
    pub theta0: CudaView<'a, T>,
    /// Gradient; receives `beta · d_perp` if this modality is suppressed.
    pub grad: CudaViewMut<'a, T>,
    /// Extra basis buffers beside the gradient itself (empty: rank 1, the script).
    pub extra: &'a [CudaView<'a, T>],
}

impl<T> CudaEncoder<'_, T> {
    fn check(&self) -> Result<()> {
        self.segs.check_buffer("theta", self.theta.len())?;
        self.segs.check_buffer("theta0", self.theta0.len())?;
        self.segs.check_buffer("grad", self.grad.len())?;
        crate::projection::check_k(1 + self.extra.len())?;
        for b in self.extra {
            self.segs.check_buffer("basis", b.len())?;
        }
        Ok(())
    }
}

/// Reused device scratch of [`step_cuda`]: the drift and the copy of the gradient.
#[derive(Debug, Default)]
pub struct CudaWorkspace<T> {
    drift: Option<CudaSlice<T>>,
    grad_copy: Option<CudaSlice<T>>,
}

impl<T: CudaElement> CudaWorkspace<T> {
    /// Empty (allocated on first use).
    pub fn new() -> Self {
        Self {
            drift: None,
            grad_copy: None,
        }
    }

    /// The drift buffer of the last projected encoder (at least its length).
    pub fn drift(&self) -> Option<&CudaSlice<T>> {
        self.drift.as_ref()
    }
}

fn ensure<T: CudaElement>(
    backend: &CudaBackend,
    buf: &mut Option<CudaSlice<T>>,
    n: usize,
) -> Result<()> {
    let fits = matches!(buf.as_ref(), Some(b) if b.len() >= n);
    if !fits {
        let b = backend
            .stream()
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| Error::Cuda(format!("allocating {n} elements of step scratch: {e}")))?;
        *buf = Some(b);
    }
    Ok(())
}

/// Copies `theta` into `theta0` on the device (the epoch-start snapshot); asynchronous.
pub fn snapshot_cuda<T: CudaElement>(
    backend: &CudaBackend,
    theta: &CudaView<'_, T>,
    theta0: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    crate::error::check_len("theta0", theta.len(), theta0.len())?;
    backend
        .stream()
        .memcpy_dtod(theta, theta0)
        .map_err(|e| Error::Cuda(format!("snapshot copy: {e}")))
}

/// Applies `decision` to device encoders (one per modality, in the controller's order):
/// for the suppressed modality only, per tensor, `grad += beta · (d - P d)` with
/// `d = theta - theta_0` and `P` the projector onto `span{g, extra…}`. Asynchronous on the
/// backend's stream; the per-tensor ranks ([`crate::cuda::DeviceRanks`]) are not needed
/// by the controller and are dropped (freed in stream order).
/// Returns whether a projection was queued.
///
/// `Err` (nothing queued) on a wrong encoder count or buffers that do not cover their
/// segments.
pub fn step_cuda<T: CudaElement>(
    backend: &CudaBackend,
    decision: &Decision,
    encoders: &mut [CudaEncoder<'_, T>],
    ws: &mut CudaWorkspace<T>,
    opts: &ProjectOptions,
) -> Result<bool> {
    check_encoders(decision.modalities.len(), encoders)?;
    let Some(m) = decision.suppressed else {
        return Ok(false);
    };
    let n_enc = encoders.len();
    let enc = encoders.get_mut(m).ok_or_else(|| {
        invalid(
            "decision",
            format!("suppressed modality {m} but only {n_enc} encoders"),
        )
    })?;
    let n = enc.segs.total();
    ensure(backend, &mut ws.drift, n)?;
    ensure(backend, &mut ws.grad_copy, n)?;
    let (Some(drift), Some(gcopy)) = (ws.drift.as_mut(), ws.grad_copy.as_mut()) else {
        return Err(Error::Cuda("step scratch missing after allocation".into()));
    };
    let mut drift = drift.slice_mut(0..n);
    let mut gcopy = gcopy.slice_mut(0..n);
    // d = 1·theta + (-1)·theta_0: the apply kernel with an empty basis.
    backend.project_out(
        enc.segs,
        &enc.theta,
        &[],
        DeviceOutput::Write {
            base: Some(&enc.theta0),
            out: &mut drift,
        },
        -1.0,
        Beta::Scalar(1.0),
        opts,
    )?;
    backend
        .stream()
        .memcpy_dtod(&enc.grad, &mut gcopy)
        .map_err(|e| Error::Cuda(format!("gradient copy: {e}")))?;
    let mut basis: Vec<CudaView<'_, T>> = Vec::with_capacity(1 + enc.extra.len());
    basis.push(gcopy.as_view());
    basis.extend(enc.extra.iter().map(|b| b.slice(..)));
    backend.project_out(
        enc.segs,
        &drift.as_view(),
        &basis,
        DeviceOutput::Accumulate(&mut enc.grad),
        1.0,
        Beta::Scalar(decision.beta),
        opts,
    )?;
    Ok(true)
}

fn check_encoders<T>(m: usize, encoders: &[CudaEncoder<'_, T>]) -> Result<()> {
    check_count("encoders (one per modality)", m, encoders.len())?;
    for (i, e) in encoders.iter().enumerate() {
        e.check()
            .map_err(|err| invalid("encoders", format!("encoder {i}: {err}")))?;
    }
    Ok(())
}

impl Controller {
    /// One whole step on the GPU: [`Controller::observe`] then [`step_cuda`] with the
    /// config's projection options. The encoders are checked first, so an `Err` leaves the
    /// controller's state and the buffers unchanged.
    pub fn step_cuda<T: CudaElement>(
        &mut self,
        inputs: &StepInputs,
        backend: &CudaBackend,
        encoders: &mut [CudaEncoder<'_, T>],
        ws: &mut CudaWorkspace<T>,
    ) -> Result<(Decision, bool)> {
        check_encoders(self.modalities(), encoders)?;
        let decision = self.observe(inputs)?;
        let opts = self.config().project;
        let queued = step_cuda(backend, &decision, encoders, ws, &opts)?;
        Ok((decision, queued))
    }
}
