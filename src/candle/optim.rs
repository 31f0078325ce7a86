//! candle-nn's [`candle_nn::Optimizer`] run by [`crate::optim::Optimizer`]: SGD or AdamW
//! with PyTorch's semantics over a model's `Var`s (a `VarMap`'s `all_vars()`), every
//! tensor in one parallel pass per step, optionally with the RedReg correction folded in
//! ([`FusedOptimizer::step_redreg`]). A candle trainer swaps
//! `candle_nn::AdamW::new(vars, params)` for `FusedOptimizer::new(vars, params.into())`.
//!
//! CPU storage for now. The variables' new values are computed in host buffers and written
//! back with `Var::set` (candle gives no public mutable access to a storage but
//! `Var::set` and the in-place custom ops): one copy of θ in and one out per step, besides
//! the pass itself. The gradients are read in place; the state (f32) lives in the
//! optimizer, allocated once.

use super::{check_kind, cpu_view, dtype_of, CandleElement, TensorView};
use crate::error::{invalid, Error, Result};
use crate::optim::{AdamW, Correction, Optimizer, Rule};
use crate::CpuBackend;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// An optimizer over candle `Var`s with CPU storage, all of one dtype (f32, f16 or bf16).
/// Like candle-nn's, it keeps only the floating-point variables it is given. Unlike
/// candle-nn's (which skips a variable without a gradient), every step needs a gradient for
/// every variable: one step count for all tensors, as in a step over one tensor list.
#[derive(Debug)]
pub struct FusedOptimizer {
    vars: Vec<Var>,
    inner: Optimizer,
    lr: f64,
    be: CpuBackend,
}

/// candle-nn's AdamW parameters as the same rule (both follow `torch.optim.AdamW`).
impl From<candle_nn::ParamsAdamW> for Rule {
    fn from(p: candle_nn::ParamsAdamW) -> Self {
        Rule::AdamW(AdamW {
            lr: p.lr,
            beta1: p.beta1,
            beta2: p.beta2,
            eps: p.eps,
            weight_decay: p.weight_decay,
        })
    }
}

impl FusedOptimizer {
    /// The optimizer on a given CPU backend (its thread pool and chunk size).
    pub fn with_backend(vars: Vec<Var>, rule: Rule, be: CpuBackend) -> Result<Self> {
        let vars: Vec<Var> = vars.into_iter().filter(|v| v.dtype().is_float()).collect();
        let lens: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
        let inner = Optimizer::new(rule, &lens)?;
        Ok(FusedOptimizer {
            vars,
            lr: rule.lr(),
            inner,
            be,
        })
    }

    /// The variables, in the optimizer's order (the order of a [`Correction`]'s tensors).
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The underlying optimizer (its rule, step count and state).
    pub fn inner(&self) -> &Optimizer {
        &self.inner
    }

    /// One plain step. `Err` with no variable and no state changed when a gradient is
    /// missing or does not match its variable (shape, dtype, device, contiguity), or the
    /// learning rate is invalid.
    pub fn try_step(&mut self, grads: &GradStore) -> Result<()> {
        self.run(grads, None).map(|_| ())
    }

    /// One step with the RedReg correction folded in for the encoder whose variables start
    /// at index `first` of [`FusedOptimizer::vars`]: `theta0` holds its epoch-start values
    /// (one tensor per variable, [`super::snapshot`]), `beta` the factor. The gradient
    /// used is `g + β·(d − P d)` with `P` onto `span{g}` per tensor (the script), formed
    /// in f64 in the pass and never written. Returns the encoder's per-tensor ranks.
    pub fn step_redreg(
        &mut self,
        grads: &GradStore,
        first: usize,
        theta0: &[Tensor],
        beta: f64,
    ) -> Result<Vec<u32>> {
        self.run(grads, Some((first, theta0, beta)))
    }

    fn run(&mut self, grads: &GradStore, c: Option<(usize, &[Tensor], f64)>) -> Result<Vec<u32>> {
        let Some(first) = self.vars.first() else {
            return Ok(Vec::new());
        };
        match dtype_of(first.dtype())? {
            crate::DType::F32 => self.run_t::<f32>(grads, c),
            crate::DType::F16 => self.run_t::<half::f16>(grads, c),
            crate::DType::BF16 => self.run_t::<half::bf16>(grads, c),
        }
    }

    fn run_t<T: CandleElement>(
        &mut self,
        grads: &GradStore,
        c: Option<(usize, &[Tensor], f64)>,
    ) -> Result<Vec<u32>> {
        let first = self.vars[0].as_tensor();
        let mut gts = Vec::with_capacity(self.vars.len());
        for (i, v) in self.vars.iter().enumerate() {
            let g = grads
                .get(v.as_tensor())
                .ok_or_else(|| invalid("grads", format!("variable {i} has no gradient")))?;
            check_kind("vars", i, first, v.as_tensor())?;
            check_kind("grads", i, first, g)?;
            if g.dims() != v.dims() {
                return Err(invalid(
                    "grads",
                    format!(
                        "gradient {i} has shape {:?}, its variable {:?}",
                        g.dims(),
                        v.dims()
                    ),
                ));
            }
            gts.push(g);
        }
        // The new values: copies of the current ones (each read lock dropped at once, so
        // `Var::set` below can take the write lock).
        let mut params = Vec::with_capacity(self.vars.len());
        for v in &self.vars {
            params.push(cpu_view(v.as_tensor())?.as_slice::<T>()?.to_vec());
        }
        let ranks = {
            let gv = gts
                .iter()
                .map(|g| cpu_view(g))
                .collect::<Result<Vec<TensorView<'_>>>>()?;
            let gs = gv
                .iter()
                .map(|v| v.as_slice::<T>())
                .collect::<Result<Vec<&[T]>>>()?;
            let mut pv: Vec<&mut [T]> = params.iter_mut().map(|p| &mut p[..]).collect();
            self.inner.set_lr(self.lr)?;
            match c {
                None => self
                    .inner
                    .step_cpu(&self.be, &mut pv, &gs)
                    .map(|_| Vec::new())?,
                Some((start, theta0, beta)) => {
                    let tv = theta0
                        .iter()
                        .enumerate()
                        .map(|(i, t)| {
                            check_kind("theta0", i, first, t)?;
                            cpu_view(t)
                        })
                        .collect::<Result<Vec<TensorView<'_>>>>()?;
                    let ts = tv
                        .iter()
                        .map(|v| v.as_slice::<T>())
                        .collect::<Result<Vec<&[T]>>>()?;
                    let c = Correction::new(start, ts, beta);
                    self.inner.step_cpu_corrected(&self.be, &mut pv, &gs, &c)?
                }
            }
        };
        for (v, p) in self.vars.iter().zip(params) {
            let t = Tensor::from_vec(p, v.shape(), v.device()).map_err(cerr)?;
            v.set(&t).map_err(cerr)?;
        }
        Ok(ranks)
    }
}

fn cerr(source: candle_core::Error) -> Error {
    Error::Candle {
        context: "optimizer step",
        source,
    }
}

impl candle_nn::Optimizer for FusedOptimizer {
    type Config = Rule;

    /// On [`CpuBackend::new`] (all cores).
    fn new(vars: Vec<Var>, rule: Rule) -> candle_core::Result<Self> {
        Self::with_backend(vars, rule, CpuBackend::new()).map_err(candle_core::Error::wrap)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.try_step(grads).map_err(candle_core::Error::wrap)
    }

    fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Takes effect at the next step, which fails if `lr` is not finite and ≥ 0.
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
}
