//! [`Optimizer`]: the one optimizer type, generic over the backend it steps on
//! ([`OptimBackend`]: the CPU's pass in `cpu.rs`, CUDA's launch in `cuda.rs`). The rule, the
//! step count and the checks live here once; a backend adds its state and its pass.

use super::{Correction, Rule};
use crate::backend::{Backend, Dst, Src};
use crate::{CpuBackend, Element, Result};

/// A backend an [`Optimizer`] steps on: the state it keeps in its memory (f32, allocated
/// once) and the pass that updates parameters and state. Sealed: [`CpuBackend`] and, with
/// feature `cuda`, [`crate::cuda::CudaBackend`].
pub trait OptimBackend: Backend + sealed::Sealed {
    /// The optimizer's state in this backend's memory, with whatever the pass keeps.
    type State: std::fmt::Debug + Send;

    /// The zeroed state for tensors of lengths `lens` under `rule` (checked).
    #[doc(hidden)]
    fn new_state(&self, rule: &Rule, lens: &[usize]) -> Result<Self::State>;

    /// Step `t` (1 for the first) over checked lists; `Err` with nothing written.
    #[doc(hidden)]
    fn optim_step<'a, T: Element>(
        &self,
        st: &mut Self::State,
        rule: &Rule,
        t: u64,
        params: &mut [Dst<'a, Self, T>],
        grads: &[Src<'a, Self, T>],
    ) -> Result<()>;

    /// Step `t` with the correction folded in; the encoder's ranks.
    #[doc(hidden)]
    fn optim_step_corrected<'a, T: Element>(
        &self,
        st: &mut Self::State,
        rule: &Rule,
        t: u64,
        params: &mut [Dst<'a, Self, T>],
        grads: &[Src<'a, Self, T>],
        c: &Correction<'_, Src<'a, Self, T>>,
    ) -> Result<Self::Ranks>;

    /// The checks of [`OptimBackend::optim_step_corrected`] alone: `Ok` when that step
    /// would run, nothing written.
    #[doc(hidden)]
    fn optim_check_corrected<'a, T: Element>(
        &self,
        st: &Self::State,
        params: &mut [Dst<'a, Self, T>],
        grads: &[Src<'a, Self, T>],
        c: &Correction<'_, Src<'a, Self, T>>,
    ) -> Result<()>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::CpuBackend {}
    #[cfg(feature = "cuda")]
    impl Sealed for crate::cuda::CudaBackend {}
}

/// An optimizer over a fixed list of tensors on backend `B` (the CPU by default): the rule,
/// the step count and the state (f32; one or two buffers per tensor, allocated once, in
/// `B`'s memory). Every step takes the backend whose memory the lists are in.
#[derive(Debug)]
pub struct Optimizer<B: OptimBackend = CpuBackend> {
    rule: Rule,
    t: u64,
    state: B::State,
}

impl<B: OptimBackend> Clone for Optimizer<B>
where
    B::State: Clone,
{
    fn clone(&self) -> Self {
        Optimizer {
            rule: self.rule,
            t: self.t,
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
            t: 0,
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

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One step: `params[i] ← update(params[i], grads[i])` for every tensor, in one
    /// parallel pass on the CPU, one launch on CUDA (asynchronous on its stream). `Err`
    /// (nothing written, the step count unchanged) when the lists do not match the layout
    /// and, on CUDA, when a buffer belongs to another context or a parameter overlaps
    /// another parameter or any gradient.
    pub fn step<'a, T: Element>(
        &mut self,
        be: &B,
        params: &mut [Dst<'a, B, T>],
        grads: &[Src<'a, B, T>],
    ) -> Result<()> {
        be.optim_step(&mut self.state, &self.rule, self.t + 1, params, grads)?;
        self.t += 1;
        Ok(())
    }

    /// One step with the RedReg correction folded in ([`Correction`]): the projection's
    /// pass 1 and per-tensor solve over the encoder's tensors, then the same pass as
    /// [`Optimizer::step`], which uses `g + β·(d − P d)` (f64, never written) for the
    /// encoder's tensors and `g` for the others — on CUDA 2 launches, no host
    /// synchronisation. Returns the encoder's per-tensor ranks (on CUDA on the device).
    /// `Err` (nothing written, the step count unchanged) as [`Optimizer::step`], and on a
    /// correction the projection rejects (tensors out of the list, lengths, k > 8, β not
    /// finite, options) or, on CUDA, whose θ₀ or extra vectors overlap a parameter.
    pub fn step_corrected<'a, T: Element>(
        &mut self,
        be: &B,
        params: &mut [Dst<'a, B, T>],
        grads: &[Src<'a, B, T>],
        c: &Correction<'_, Src<'a, B, T>>,
    ) -> Result<B::Ranks> {
        let ranks =
            be.optim_step_corrected(&mut self.state, &self.rule, self.t + 1, params, grads, c)?;
        self.t += 1;
        Ok(ranks)
    }

    /// `Ok` when [`Optimizer::step_corrected`] with these arguments would run (the lists'
    /// layout, the correction's range, lengths, β and options, and on CUDA the buffers'
    /// context and aliasing); nothing written, the step count unchanged. For a caller that
    /// must know before it changes other state ([`crate::controller::Controller::step_optimizer`]).
    pub fn check_corrected<'a, T: Element>(
        &self,
        be: &B,
        params: &mut [Dst<'a, B, T>],
        grads: &[Src<'a, B, T>],
        c: &Correction<'_, Src<'a, B, T>>,
    ) -> Result<()> {
        be.optim_check_corrected(&self.state, params, grads, c)
    }
}

impl Optimizer<CpuBackend> {
    /// An optimizer for host tensors of the given lengths (the layout every step must
    /// match): [`Optimizer::on`] a CPU backend, which the state does not depend on.
    pub fn new(rule: Rule, lens: &[usize]) -> Result<Self> {
        rule.check()?;
        Ok(Optimizer {
            state: super::cpu::HostState::new(&rule, lens),
            rule,
            t: 0,
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
