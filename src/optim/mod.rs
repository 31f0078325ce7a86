//! Optimizer steps over a model's tensors: SGD and AdamW with PyTorch's semantics, with the
//! RedReg correction folded in (issue #25).
//!
//! This module holds the arguments ([`Sgd`], [`AdamW`], [`Correction`]) and their checks;
//! [`mod@reference`] is the f64 oracle that every backend's pass is tested against.
//! [`Optimizer`]`<B>` is the one optimizer, generic over the backend it steps on
//! ([`OptimBackend`]): on [`crate::CpuBackend`] (the default) one parallel pass with the
//! state in host memory ([`HostState`]), on `CudaBackend` (feature `cuda`,
//! `kernels/optim.cu`) one launch for every tensor with the state on the device
//! (`CudaState`). A corrected step ([`Optimizer::step_corrected`]) runs the
//! projection's pass 1 and per-tensor solve over the corrected encoder, then the same
//! single pass as the plain step, which forms `g + β·(d − P d)` in f64 per element and uses
//! it without writing it: pass 1 (θ, θ₀, g) plus the optimizer's own pass plus one read of
//! θ₀, instead of the projection's 7 element passes plus the optimizer's.
//!
//! **Per-tensor steps.** As `torch.optim` keeps `state["step"]` per parameter, the optimizer
//! keeps one step count per tensor ([`Optimizer::steps_of`]): [`Optimizer::step_some`] takes
//! optional gradients and skips a tensor without one (θ, state and count unchanged, nothing
//! of it read), and each tensor's update uses its own count (AdamW's bias correction, SGD's
//! first-step momentum buffer); [`Optimizer::step`] is that step with every gradient present.
//! The oracle of a list is [`reference::ListState`].
//!
//! **State in f32.** Parameters may be f32, f16 or bf16; the optimizer's state (SGD's
//! momentum buffer, AdamW's first and second moments) is f32 for every parameter type, as
//! PyTorch's mixed-precision practice keeps it: a bf16 moment loses the small updates that
//! `β₂ = 0.999` averages over (8 bits of mantissa against the 10⁻³ step), and f64 state
//! would double the optimizer's memory traffic for no gain the f32 parameters could hold.
//! The arithmetic of a step is f64; each stored value (parameter, state) is rounded once.
//!
//! **Index arithmetic.** The CPU pass indexes with `usize` (64 bits on every supported
//! target) and cuts each tensor into chunks of the backend's chunk size by slice splitting,
//! so a tensor past 2³¹ elements needs no special case; a test at that size (4 GiB of f16
//! parameters plus 16 GiB of f32 state) does not fit this project's 24 GiB test machine.
//!
//! **Instruction sets.** The pass is compiled again for AVX2 and for AVX-512 (where the
//! build has the cfg `redreg_avx512`) and chosen at run time by the one level detection of
//! the CPU loops (`src/dtype/level.rs`; `REDREG_CPU_LEVEL=base|avx2|avx512|avx512bf16` caps it, as for the
//! projection's kernels); every level gives the same bits (`optim::cpu::tests::levels_give_the_same_bits`
//! runs one piece at every level this CPU has).

mod correction;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod optimizer;
pub mod reference;

pub use correction::Correction;
pub use cpu::HostState;
#[cfg(feature = "cuda")]
pub use cuda::CudaState;
pub use optimizer::{OptimBackend, Optimizer};

use crate::{Error, Result};

/// `torch.optim.SGD` (with `maximize = False`): learning rate, momentum, dampening, weight
/// decay (L2, added to the gradient) and Nesterov momentum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate γ (finite, ≥ 0).
    pub lr: f64,
    /// Momentum μ (finite, ≥ 0); 0 turns the momentum buffer off.
    pub momentum: f64,
    /// Dampening τ (finite); PyTorch's default 0.
    pub dampening: f64,
    /// Weight decay λ (finite, ≥ 0): `g + λ·θ`.
    pub weight_decay: f64,
    /// Nesterov momentum (needs μ > 0 and τ = 0, as in PyTorch).
    pub nesterov: bool,
}

impl Sgd {
    /// PyTorch's defaults with learning rate `lr`: no momentum, no dampening, no weight
    /// decay, no Nesterov.
    pub fn new(lr: f64) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    /// The authors' script's optimizer: momentum 0.9, weight decay 1e-4.
    pub fn script(lr: f64) -> Self {
        Sgd {
            momentum: 0.9,
            weight_decay: 1e-4,
            ..Sgd::new(lr)
        }
    }

    /// `Err` for a value PyTorch rejects or that has no meaning here.
    pub fn check(&self) -> Result<()> {
        nonneg("lr", self.lr)?;
        nonneg("momentum", self.momentum)?;
        finite("dampening", self.dampening)?;
        nonneg("weight_decay", self.weight_decay)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(invalid(
                "nesterov",
                "Nesterov momentum requires a momentum and zero dampening".into(),
            ));
        }
        Ok(())
    }
}

/// `torch.optim.AdamW` (with `amsgrad = False`, `maximize = False`): decoupled weight decay
/// `θ ← θ·(1 − γλ)`, then the bias-corrected Adam step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate γ (finite, ≥ 0).
    pub lr: f64,
    /// β₁, the first moment's decay (in [0, 1)).
    pub beta1: f64,
    /// β₂, the second moment's decay (in [0, 1)).
    pub beta2: f64,
    /// ε, added to the root of the second moment (finite, ≥ 0).
    pub eps: f64,
    /// Decoupled weight decay λ (finite, ≥ 0).
    pub weight_decay: f64,
}

impl Default for AdamW {
    /// PyTorch's defaults: γ = 1e-3, β = (0.9, 0.999), ε = 1e-8, λ = 1e-2.
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamW {
    /// The per-step constants of step `t`: `step_size = γ/(1 − β₁ᵗ)` and
    /// `1/√(1 − β₂ᵗ)` (the oracle and every backend use these bits). `β^t` by `powf`
    /// (`powi`'s exponent is i32; beyond it `1 − β^t` is 1 anyway).
    pub fn step_scalars(&self, t: u64) -> (f64, f64) {
        let bc1 = 1.0 - self.beta1.powf(t as f64);
        let bc2 = 1.0 - self.beta2.powf(t as f64);
        (self.lr / bc1, 1.0 / bc2.sqrt())
    }

    /// `Err` for a value PyTorch rejects or that has no meaning here.
    pub fn check(&self) -> Result<()> {
        nonneg("lr", self.lr)?;
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        nonneg("eps", self.eps)?;
        nonneg("weight_decay", self.weight_decay)
    }
}

/// Which update an [`Optimizer`] applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// `torch.optim.SGD`.
    Sgd(Sgd),
    /// `torch.optim.AdamW`.
    AdamW(AdamW),
}

impl Rule {
    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Rule::Sgd(p) => p.lr,
            Rule::AdamW(p) => p.lr,
        }
    }

    /// The rule's own check.
    pub fn check(&self) -> Result<()> {
        match self {
            Rule::Sgd(p) => p.check(),
            Rule::AdamW(p) => p.check(),
        }
    }
}

fn invalid(name: &'static str, reason: String) -> Error {
    Error::InvalidArgument { name, reason }
}

fn finite(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(invalid(name, format!("{x} is not finite")))
    }
}

fn nonneg(name: &'static str, x: f64) -> Result<()> {
    finite(name, x)?;
    if x < 0.0 {
        return Err(invalid(name, format!("{x} is negative")));
    }
    Ok(())
}

fn unit(name: &'static str, x: f64) -> Result<()> {
    nonneg(name, x)?;
    if x >= 1.0 {
        return Err(invalid(name, format!("{x} is not below 1")));
    }
    Ok(())
}
