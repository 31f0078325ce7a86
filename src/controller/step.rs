//! Applying a decision to the encoders' gradients (host buffers): the drift
//! `d = theta - theta_0` projected off the joint gradient and added with β to the
//! suppressed encoder's gradient — the script's `grad += beta * d_perp`, per tensor.

use crate::dtype::Element;
use crate::error::{check_count, invalid, Result};
use crate::projection::{Beta, Output, ProjectOptions};
use crate::segments::Segments;

use super::decision::{Decision, StepInputs};
use super::state::Controller;

/// A host-side implementation of `project_out` (see [`crate::reference::project_out`] for
/// the contract): `out = alpha·base + beta·(v - P v)` per segment, returning the ranks.
pub trait ProjectBackend {
    /// Projects `v` off the span of `basis` per segment and writes or accumulates it.
    #[allow(clippy::too_many_arguments)]
    fn project_out<T: Element>(
        &self,
        segs: &Segments,
        v: &[T],
        basis: &[&[T]],
        out: Output<'_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<Vec<u32>>;
}

/// The f64 oracle [`crate::reference::project_out`] as a [`ProjectBackend`] (slow,
/// single-threaded; for tests and as a fallback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reference;

impl ProjectBackend for Reference {
    fn project_out<T: Element>(
        &self,
        segs: &Segments,
        v: &[T],
        basis: &[&[T]],
        out: Output<'_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<Vec<u32>> {
        crate::reference::project_out(segs, v, basis, out, alpha, beta, opts)
    }
}

/// The multi-threaded [`crate::CpuBackend`].
impl ProjectBackend for crate::CpuBackend {
    fn project_out<T: Element>(
        &self,
        segs: &Segments,
        v: &[T],
        basis: &[&[T]],
        out: Output<'_, T>,
        alpha: f64,
        beta: Beta<'_>,
        opts: &ProjectOptions,
    ) -> Result<Vec<u32>> {
        crate::CpuBackend::project_out(self, segs, v, basis, out, alpha, beta, opts)
    }
}

/// The joint-gradient subspace the drift is projected off, per tensor.
#[derive(Clone, Copy, Debug)]
pub enum JointBasis<'a, T> {
    /// Rank 1, `span{g}` with `g` the encoder's own accumulated gradient (of
    /// `L_mm + L_a + L_v`) before the update — the script. `g` is copied into the
    /// workspace first, since the same buffer receives the update.
    Gradient,
    /// `span{g, extra_1, …}`: the own gradient plus extra buffers (k = 1 + extra.len()).
    GradientAnd(&'a [&'a [T]]),
    /// Exactly these buffers (for example `g_mm, g_a, g_v` kept separately).
    Explicit(&'a [&'a [T]]),
}

/// The buffers of one modality's encoder, all covering `segs` (one segment per parameter
/// tensor).
#[derive(Debug)]
pub struct Encoder<'a, T> {
    /// Layout of the encoder's flattened parameters.
    pub segs: &'a Segments,
    /// Current parameters `theta`.
    pub theta: &'a [T],
    /// Parameters at the epoch start (`theta_0`, see [`snapshot`]).
    pub theta0: &'a [T],
    /// Gradient; receives `beta · d_perp` if this modality is suppressed.
    pub grad: &'a mut [T],
    /// The joint subspace.
    pub basis: JointBasis<'a, T>,
}

impl<T> Encoder<'_, T> {
    fn check(&self) -> Result<()> {
        self.segs.check_buffer("theta", self.theta.len())?;
        self.segs.check_buffer("theta0", self.theta0.len())?;
        self.segs.check_buffer("grad", self.grad.len())?;
        let extra = match self.basis {
            JointBasis::Gradient => &[][..],
            JointBasis::GradientAnd(b) | JointBasis::Explicit(b) => b,
        };
        let k = extra.len() + usize::from(!matches!(self.basis, JointBasis::Explicit(_)));
        crate::projection::check_k(k)?;
        for b in extra {
            self.segs.check_buffer("basis", b.len())?;
        }
        Ok(())
    }
}

/// Reused scratch buffers of [`step`]: the drift and the copy of the gradient. They grow
/// to the largest encoder once and are not reallocated afterwards.
#[derive(Clone, Debug, Default)]
pub struct Workspace<T> {
    drift: Vec<T>,
    grad_copy: Vec<T>,
}

impl<T: Element> Workspace<T> {
    /// Empty buffers (they grow on first use).
    pub fn new() -> Self {
        Self {
            drift: Vec::new(),
            grad_copy: Vec::new(),
        }
    }

    /// The drift `theta - theta_0` of the last projected encoder.
    pub fn drift(&self) -> &[T] {
        &self.drift
    }
}

/// Copies `theta` into `theta0` (the epoch-start snapshot), reusing `theta0`'s allocation.
pub fn snapshot<T: Copy>(theta: &[T], theta0: &mut Vec<T>) {
    theta0.clear();
    theta0.extend_from_slice(theta);
}

/// Applies `decision` to the encoders (one per modality, in the controller's order): for
/// the suppressed modality only, `d = theta - theta_0` (rounded to `T` from f32, like the
/// framework's own subtraction) and, per tensor, `grad += beta · (d - P d)` with `P` the
/// projector onto the joint basis (`opts.ridge` = 1e-12 gives the script's
/// `d - (d·g / (g·g + 1e-12)) g`; a zero `g` leaves `d` whole). The other encoders are not
/// touched. Returns the suppressed encoder's per-tensor ranks, or `None` when nothing is
/// suppressed.
///
/// `Err` (no buffer touched) on a wrong encoder count or buffers that do not cover their
/// segments.
pub fn step<T: Element, B: ProjectBackend>(
    backend: &B,
    decision: &Decision,
    encoders: &mut [Encoder<'_, T>],
    ws: &mut Workspace<T>,
    opts: &ProjectOptions,
) -> Result<Option<Vec<u32>>> {
    check_encoders(decision.modalities.len(), encoders)?;
    let Some(m) = decision.suppressed else {
        return Ok(None);
    };
    let enc = encoders.get_mut(m).ok_or_else(|| {
        invalid(
            "decision",
            format!(
                "suppressed modality {m} but only {} encoders",
                decision.modalities.len()
            ),
        )
    })?;
    ws.drift.clear();
    ws.drift.extend(
        enc.theta
            .iter()
            .zip(enc.theta0)
            .map(|(&a, &b)| T::from_f32(a.to_f32() - b.to_f32())),
    );
    let mut basis: Vec<&[T]> = Vec::with_capacity(crate::solve::MAX_K);
    let extra = match enc.basis {
        JointBasis::Gradient => &[][..],
        JointBasis::GradientAnd(b) => b,
        JointBasis::Explicit(b) => b,
    };
    if !matches!(enc.basis, JointBasis::Explicit(_)) {
        ws.grad_copy.clear();
        ws.grad_copy.extend_from_slice(enc.grad);
        basis.push(&ws.grad_copy);
    }
    basis.extend_from_slice(extra);
    let ranks = backend.project_out(
        enc.segs,
        &ws.drift,
        &basis,
        Output::Accumulate(enc.grad),
        1.0,
        Beta::Scalar(decision.beta),
        opts,
    )?;
    Ok(Some(ranks))
}

fn check_encoders<T>(m: usize, encoders: &[Encoder<'_, T>]) -> Result<()> {
    check_count("encoders (one per modality)", m, encoders.len())?;
    for (i, e) in encoders.iter().enumerate() {
        e.check()
            .map_err(|err| invalid("encoders", format!("encoder {i}: {err}")))?;
    }
    Ok(())
}

impl Controller {
    /// One whole step: [`Controller::observe`] then [`step`] with the config's projection
    /// options. Returns the decision and the suppressed encoder's ranks. The encoders are
    /// checked first, so an `Err` leaves both the controller's state and the buffers
    /// unchanged.
    pub fn step<T: Element, B: ProjectBackend>(
        &mut self,
        inputs: &StepInputs,
        backend: &B,
        encoders: &mut [Encoder<'_, T>],
        ws: &mut Workspace<T>,
    ) -> Result<(Decision, Option<Vec<u32>>)> {
        check_encoders(self.modalities(), encoders)?;
        let decision = self.observe(inputs)?;
        let opts = self.config().project;
        let ranks = step(backend, &decision, encoders, ws, &opts)?;
        Ok((decision, ranks))
    }
}
