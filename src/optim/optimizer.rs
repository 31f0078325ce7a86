//! [`Optimizer`]: the one optimizer type, generic over the backend it steps on
//! ([`OptimBackend`]: the CPU's pass in `cpu.rs`, CUDA's launch in `cuda.rs`). The rule, the
//! per-tensor step counts and the checks live here once; a backend adds its state and its
//! pass.
//!
//! **Per-tensor steps (PyTorch's semantics).** `torch.optim.SGD` and `torch.optim.AdamW`
//! keep their state per parameter: a parameter whose `.grad` is `None` is skipped (θ, its
//! state and its `step` unchanged), AdamW's bias correction uses that parameter's own step
//! count, and SGD's momentum buffer starts as the gradient at that parameter's first step.
//! So does [`Optimizer`]: one step count per tensor, and every step is
//! [`Optimizer::step_some`] over optional gradients (`None`: the tensor is skipped, nothing
//! of it read or written); [`Optimizer::step`] is that step with every gradient present.

use super::{Correction, Rule};
use crate::backend::{Backend, Dst, Memory, Src};
use crate::{CpuBackend, Element, Result};

/// A backend an [`Optimizer`] steps on: the state it keeps in its memory (f32, allocated
/// once) and the pass that updates parameters and state. Sealed: [`CpuBackend`] and, with
/// feature `cuda`, [`crate::cuda::CudaBackend`].
///
/// A step's `steps[i]` is the step count tensor `i`'s update uses (its own count including
/// this step: 1 for its first), read only where `grads[i]` is `Some`; a tensor whose
/// gradient is `None` is skipped (its parameter and state neither read nor written).
pub trait OptimBackend: Backend + sealed::Sealed {
    /// The optimizer's state in this backend's memory, with whatever the pass keeps.
    type State: std::fmt::Debug + Send;

    /// The zeroed state for tensors of lengths `lens` under `rule` (checked).
    #[doc(hidden)]
    fn new_state(&self, rule: &Rule, lens: &[usize]) -> Result<Self::State>;

    /// One step over checked lists (the tensors with a gradient); `Err` with nothing
    /// written.
    #[doc(hidden)]
    fn optim_step<'p, 'g, T: Element>(
        &self,
        st: &mut Self::State,
        rule: &Rule,
        steps: &[u64],
        params: &mut [Dst<'p, Self, T>],
        grads: &[Option<Src<'g, Self, T>>],
    ) -> Result<()>;

    /// One step with the correction folded in (every encoder tensor has a gradient, else
    /// `Err`); the encoder's ranks.
    #[doc(hidden)]
    fn optim_step_corrected<'p, 'g, 'c, T: Element>(
        &self,
        st: &mut Self::State,
        rule: &Rule,
        steps: &[u64],
        params: &mut [Dst<'p, Self, T>],
        grads: &[Option<Src<'g, Self, T>>],
        c: &Correction<'_, Src<'c, Self, T>>,
    ) -> Result<Self::Ranks>;

    /// The checks of [`OptimBackend::optim_step_corrected`] alone: `Ok` when that step
    /// would run, nothing written.
    #[doc(hidden)]
    fn optim_check_corrected<'p, 'g, 'c, T: Element>(
        &self,
        st: &Self::State,
        params: &mut [Dst<'p, Self, T>],
        grads: &[Option<Src<'g, Self, T>>],
        c: &Correction<'_, Src<'c, Self, T>>,
    ) -> Result<()>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::CpuBackend {}
    #[cfg(feature = "cuda")]
    impl Sealed for crate::cuda::CudaBackend {}
}

/// An optimizer over a fixed list of tensors on backend `B` (the CPU by default): the rule,
/// one step count per tensor and the state (f32; one or two buffers per tensor, allocated
/// once, in `B`'s memory). Every step takes the backend whose memory the lists are in.
#[derive(Debug)]
pub struct Optimizer<B: OptimBackend = CpuBackend> {
    rule: Rule,
    /// Completed calls of a step method.
    calls: u64,
    /// Each tensor's step count (PyTorch's per-parameter `state['step']`).
    t: Vec<u64>,
    state: B::State,
}

impl<B: OptimBackend> Clone for Optimizer<B>
where
    B::State: Clone,
{
    fn clone(&self) -> Self {
        Optimizer {
            rule: self.rule,
            calls: self.calls,
            t: self.t.clone(),
            state: self.state.clone(),
        }
    }
}

impl<B: OptimBackend> Optimizer<B> {
    /// An optimizer for tensors of the given lengths (the layout every step must match),
    /// its state zeroed in `be`'s memory (on CUDA on its stream).
    pub fn on(be: &B, rule: Rule, lens: &[usize]) -> Result<Self> {
        rule.check()?;
        Ok(Optimizer {
            state: be.new_state(&rule, lens)?,
            rule,
            calls: 0,
            t: vec![0; lens.len()],
        })
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Changes the learning rate (a schedule); `Err` (nothing changed) unless it is finite
    /// and ≥ 0.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let mut rule = self.rule;
        match &mut rule {
            Rule::Sgd(p) => p.lr = lr,
            Rule::AdamW(p) => p.lr = lr,
        }
        rule.check()?;
        self.rule = rule;
        Ok(())
    }

    /// Steps taken so far: completed calls of [`Optimizer::step`], [`Optimizer::step_some`],
    /// [`Optimizer::step_corrected`] or [`Optimizer::step_corrected_some`], whichever
    /// tensors they updated. A tensor's own count is [`Optimizer::steps_of`]; with every
    /// gradient present at every step the two agree.
    pub fn steps(&self) -> u64 {
        self.calls
    }

    /// Tensor `i`'s step count: the steps that updated it (PyTorch's per-parameter
    /// `state["step"]`, which AdamW's bias correction uses); `None` for `i` out of range.
    pub fn steps_of(&self, i: usize) -> Option<u64> {
        self.t.get(i).copied()
    }

    /// One step: `params[i] ← update(params[i], grads[i])` for every tensor, in one
    /// parallel pass on the CPU, one launch on CUDA (asynchronous on its stream):
    /// [`Optimizer::step_some`] with every gradient present. `Err` (nothing written, the
    /// step counts unchanged) when the lists do not match the layout and, on CUDA, when a
    /// buffer belongs to another context or a parameter overlaps another parameter or any
    /// gradient.
    pub fn step<'p, 'g, T: Element>(
        &mut self,
        be: &B,
        params: &mut [Dst<'p, B, T>],
        grads: &[Src<'g, B, T>],
    ) -> Result<()> {
        self.step_some(be, params, &all::<B, T>(grads))
    }

    /// One step over the tensors that have a gradient, with PyTorch's per-parameter
    /// semantics: tensor `i` with `grads[i] = Some(g)` takes its own next step (its count
    /// [`Optimizer::steps_of`] + 1: AdamW's bias correction of that count, SGD's momentum
    /// buffer set to the gradient at its first step); a tensor with `None` is skipped — its
    /// parameter, state and step count are neither read nor written (`torch.optim`'s
    /// `if p.grad is None: continue`). The parameter list is the whole layout either way.
    /// One pass on the CPU (the skipped tensors' chunks not visited), one launch on CUDA
    /// (no launch when every gradient is `None`). `Err` as [`Optimizer::step`].
    pub fn step_some<'p, 'g, T: Element>(
        &mut self,
        be: &B,
        params: &mut [Dst<'p, B, T>],
        grads: &[Option<Src<'g, B, T>>],
    ) -> Result<()> {
        let next = self.next(grads);
        be.optim_step(&mut self.state, &self.rule, &next, params, grads)?;
        self.commit(next);
        Ok(())
    }

    /// One step with the RedReg correction folded in ([`Correction`]): the projection's
    /// pass 1 and per-tensor solve over the encoder's tensors, then the same pass as
    /// [`Optimizer::step`], which uses `g + β·(d − P d)` (f64, never written) for the
    /// encoder's tensors and `g` for the others — on CUDA 2 launches, no host
    /// synchronisation. Returns the encoder's per-tensor ranks (on CUDA on the device).
    /// `Err` (nothing written, the step counts unchanged) as [`Optimizer::step`], and on a
    /// correction the projection rejects (tensors out of the list, lengths, k > 8, β not
    /// finite, options) or, on CUDA, whose θ₀ or extra vectors overlap a parameter.
    pub fn step_corrected<'p, 'g, 'c, T: Element>(
        &mut self,
        be: &B,
        params: &mut [Dst<'p, B, T>],
        grads: &[Src<'g, B, T>],
        c: &Correction<'_, Src<'c, B, T>>,
    ) -> Result<B::Ranks> {
        self.step_corrected_some(be, params, &all::<B, T>(grads), c)
    }

    /// [`Optimizer::step_corrected`] over the tensors that have a gradient, as
    /// [`Optimizer::step_some`]: the tensors outside the encoder with `None` are skipped;
    /// every tensor of the encoder must have a gradient (the projection reads it as basis
    /// vector 0), else `Err` with nothing written. Each tensor's update uses its own step
    /// count.
    pub fn step_corrected_some<'p, 'g, 'c, T: Element>(
        &mut self,
        be: &B,
        params: &mut [Dst<'p, B, T>],
        grads: &[Option<Src<'g, B, T>>],
        c: &Correction<'_, Src<'c, B, T>>,
    ) -> Result<B::Ranks> {
        let next = self.next(grads);
        let ranks =
            be.optim_step_corrected(&mut self.state, &self.rule, &next, params, grads, c)?;
        self.commit(next);
        Ok(ranks)
    }

    /// `Ok` when [`Optimizer::step_corrected`] with these arguments would run (the lists'
    /// layout, the correction's range, lengths, β and options, and on CUDA the buffers'
    /// context and aliasing); nothing written, the step counts unchanged. For a caller that
    /// must know before it changes other state ([`crate::controller::Controller::step_optimizer`]).
    pub fn check_corrected<'p, 'g, 'c, T: Element>(
        &self,
        be: &B,
        params: &mut [Dst<'p, B, T>],
        grads: &[Src<'g, B, T>],
        c: &Correction<'_, Src<'c, B, T>>,
    ) -> Result<()> {
        be.optim_check_corrected(&self.state, params, &all::<B, T>(grads), c)
    }

    /// The step counts a step with these gradients uses: each tensor's count, plus one
    /// where it has a gradient (the lists' length is the backend's check).
    fn next<G>(&self, grads: &[Option<G>]) -> Vec<u64> {
        (self.t.iter().enumerate())
            .map(|(i, &t)| t + u64::from(matches!(grads.get(i), Some(Some(_)))))
            .collect()
    }

    fn commit(&mut self, next: Vec<u64>) {
        self.t = next;
        self.calls += 1;
    }
}

/// Every gradient present (another handle to each, for the call).
fn all<'b, 'a: 'b, B: Backend, T: Element>(
    grads: &'b [Src<'a, B, T>],
) -> Vec<Option<Src<'b, B, T>>> {
    (grads.iter())
        .map(|g| Some(<B::Memory as Memory>::share(g)))
        .collect()
}

impl Optimizer<CpuBackend> {
    /// An optimizer for host tensors of the given lengths (the layout every step must
    /// match): [`Optimizer::on`] a CPU backend, which the state does not depend on.
    pub fn new(rule: Rule, lens: &[usize]) -> Result<Self> {
        rule.check()?;
        Ok(Optimizer {
            state: super::cpu::HostState::new(&rule, lens),
            rule,
            calls: 0,
            t: vec![0; lens.len()],
        })
    }

    /// The state of tensor `i`: SGD's momentum buffer (empty without momentum) or AdamW's
    /// first moment, and AdamW's second moment (empty for SGD).
    pub fn state(&self, i: usize) -> Option<(&[f32], &[f32])> {
        self.state.get(i)
    }
}

#[cfg(feature = "cuda")]
impl Optimizer<crate::cuda::CudaBackend> {
    /// The state of tensor `i`, copied to the host (**synchronises** the stream): SGD's
    /// momentum buffer (empty without momentum) or AdamW's first moment, and AdamW's second
    /// moment (empty for SGD). `None` for `i` out of range.
    pub fn state(
        &self,
        be: &crate::cuda::CudaBackend,
        i: usize,
    ) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        self.state.get(be, i)
    }
}
