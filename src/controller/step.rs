//! Applying a decision to the encoders' gradients on any [`Backend`]: the drift
//! `d = theta - theta_0` projected off the joint gradient and added with β to the
//! suppressed encoder's gradient — the script's `grad += beta * d_perp`, per tensor.
//!
//! One fused projection ([`Projection::drift`]): `d` is formed in f64 inside both passes
//! (no drift buffer, no rounding of `d`), and the gradient is the basis and the
//! destination at once (each element's basis value is read before it is written), so the
//! step reads θ, θ₀ and g twice and writes g once — 7 element passes, no scratch, 2
//! launches on CUDA — identically on the host and on the device.

use crate::backend::{Backend, Memory, ProjectionOf, Src};
use crate::dtype::Element;
use crate::error::{check_count, invalid, Result};
use crate::project::{Output, ProjectOptions, Projection};
use crate::segments::Segments;

use super::decision::{Decision, StepInputs};
use super::state::Controller;

/// The joint-gradient subspace the drift is projected off, per tensor. `S` is the
/// backend's read-only buffer (`&[T]` on the host, `CudaView<T>` on CUDA).
#[derive(Clone, Copy, Debug)]
pub enum JointBasis<'a, S> {
    /// Rank 1, `span{g}` with `g` the encoder's own accumulated gradient (of
    /// `L_mm + L_a + L_v`) before the update — the script. The gradient is read in place.
    Gradient,
    /// `span{g, extra_1, …}`: the own gradient plus extra buffers (k = 1 + extra.len()).
    GradientAnd(&'a [S]),
    /// Exactly these buffers (for example `g_mm, g_a, g_v` kept separately).
    Explicit(&'a [S]),
}

/// The buffers of one modality's encoder, all covering `segs` (one segment per parameter
/// tensor): host slices (`Encoder<&[T], &mut [T]>`) or device views
/// (`Encoder<CudaView<T>, CudaViewMut<T>>`).
#[derive(Debug)]
pub struct Encoder<'a, S, D> {
    /// Layout of the encoder's flattened parameters.
    pub segs: &'a Segments,
    /// Current parameters `theta`.
    pub theta: S,
    /// Parameters at the epoch start (`theta_0`; take it with [`Backend::copy`]).
    pub theta0: S,
    /// Gradient; receives `beta · d_perp` if this modality is suppressed.
    pub grad: D,
    /// The joint subspace.
    pub basis: JointBasis<'a, S>,
}

/// An encoder of host slices; as a struct literal (`HostEncoder { theta: &vec, .. }`) the
/// field types are known, so `&Vec<T>` coerces to `&[T]`.
pub type HostEncoder<'a, T> = Encoder<'a, &'a [T], &'a mut [T]>;

/// An encoder of CUDA device views.
#[cfg(feature = "cuda")]
pub type DeviceEncoder<'a, T> =
    Encoder<'a, cudarc::driver::CudaView<'a, T>, cudarc::driver::CudaViewMut<'a, T>>;

/// An encoder on backend `B` with elements `T`.
pub type EncoderOf<'a, B, T> = Encoder<'a, Src<'a, B, T>, crate::backend::Dst<'a, B, T>>;

/// The projection of one encoder's update: `grad += beta · (d - P d)`, `d = theta -
/// theta0` in f64, `P` onto its joint basis (the gradient as the implicit basis vector
/// unless the basis is explicit). The one place the step's projection is built: the
/// checks before a step and the step itself use it.
fn encoder_projection<'e, 'a: 'e, T: Element, B: Backend>(
    enc: &'e mut EncoderOf<'a, B, T>,
    beta: f64,
    opts: &ProjectOptions,
) -> ProjectionOf<'e, 'e, B, T> {
    let (explicit, extra) = match enc.basis {
        JointBasis::Gradient => (false, &[][..]),
        JointBasis::GradientAnd(b) => (false, b),
        JointBasis::Explicit(b) => (true, b),
    };
    let extra = extra.iter().map(|s| <B::Memory as Memory>::share(s));
    let theta = <B::Memory as Memory>::share(&enc.theta);
    let theta0 = <B::Memory as Memory>::share(&enc.theta0);
    let grad = <B::Memory as Memory>::reborrow(&mut enc.grad);
    let p = if explicit {
        Projection::new(theta, extra, Output::Accumulate(grad)).minus(theta0)
    } else {
        Projection::drift(theta, theta0, extra, grad)
    };
    p.beta(beta).opts(*opts)
}

/// Applies `decision` to the encoders (one per modality, in the controller's order): for
/// the suppressed modality only, per tensor, `grad += beta · (d - P d)` with
/// `d = theta - theta_0` (in f64) and `P` the projector onto the joint basis
/// (`opts.ridge` = 1e-12 gives the script's `d - (d·g / (g·g + 1e-12)) g`; a zero `g`
/// leaves `d` whole). The other encoders are not touched. Returns the suppressed encoder's
/// per-tensor ranks, or `None` when nothing is suppressed. On CUDA asynchronous (the ranks
/// are a `DeviceRanks`).
///
/// `Err` (no buffer touched) on a wrong encoder count or when any encoder's projection
/// fails the backend's checks ([`Backend::check`]: lengths, and on CUDA device contexts
/// and aliasing).
pub fn step<'a, T: Element, B: Backend>(
    backend: &B,
    decision: &Decision,
    encoders: &mut [EncoderOf<'a, B, T>],
    opts: &ProjectOptions,
) -> Result<Option<B::Ranks>> {
    check_encoders(backend, decision.modalities.len(), encoders, opts)?;
    step_checked(backend, decision, encoders, opts)
}

/// [`step`] on encoders that passed [`check_encoders`].
fn step_checked<'a, T: Element, B: Backend>(
    backend: &B,
    decision: &Decision,
    encoders: &mut [EncoderOf<'a, B, T>],
    opts: &ProjectOptions,
) -> Result<Option<B::Ranks>> {
    let Some(m) = decision.suppressed else {
        return Ok(None);
    };
    let n_enc = encoders.len();
    let enc = encoders.get_mut(m).ok_or_else(|| {
        invalid(
            "decision",
            format!("suppressed modality {m} but only {n_enc} encoders"),
        )
    })?;
    let segs = enc.segs;
    let ranks = backend.project_out(segs, encoder_projection::<T, B>(enc, decision.beta, opts))?;
    Ok(Some(ranks))
}

/// `Err` unless there are `m` encoders and every encoder's projection passes the backend's
/// checks (with β = 1: the decision's β is finite by construction).
fn check_encoders<'a, T: Element, B: Backend>(
    backend: &B,
    m: usize,
    encoders: &mut [EncoderOf<'a, B, T>],
    opts: &ProjectOptions,
) -> Result<()> {
    check_count("encoders (one per modality)", m, encoders.len())?;
    for (i, e) in encoders.iter_mut().enumerate() {
        let segs = e.segs;
        backend
            .check(segs, &encoder_projection::<T, B>(e, 1.0, opts))
            .map_err(|err| invalid("encoders", format!("encoder {i}: {err}")))?;
    }
    Ok(())
}

impl Controller {
    /// One whole step: [`Controller::observe`] then [`step`] with the config's projection
    /// options, on any backend. Returns the decision and the suppressed encoder's ranks.
    /// Every encoder's projection passes the backend's checks ([`Backend::check`]: lengths,
    /// and on CUDA device contexts and aliasing) before the state changes, so an `Err`
    /// leaves both the controller's state and the buffers unchanged.
    pub fn step<'a, T: Element, B: Backend>(
        &mut self,
        inputs: &StepInputs,
        backend: &B,
        encoders: &mut [EncoderOf<'a, B, T>],
    ) -> Result<(Decision, Option<B::Ranks>)> {
        let opts = self.config().project;
        check_encoders(backend, self.modalities(), encoders, &opts)?;
        let decision = self.observe(inputs)?;
        let ranks = step_checked(backend, &decision, encoders, &opts)?;
        Ok((decision, ranks))
    }
}
