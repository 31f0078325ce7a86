//! candle-nn's [`candle_nn::Optimizer`] run by [`crate::optim::Optimizer`]: SGD or AdamW
//! with PyTorch's semantics over a model's `Var`s (a `VarMap`'s `all_vars()`), every
//! tensor in one parallel pass per step, optionally with the RedReg correction folded in
//! ([`FusedOptimizer::step_redreg`]). A candle trainer swaps
//! `candle_nn::AdamW::new(vars, params)` for `FusedOptimizer::new(vars, params.into())`.
//!
//! CPU storage for now. The pass needs every variable writable at once, and candle lends a
//! storage mutably only to one in-place custom op at a time (`Tensor::inplace_op1`), so
//! the new values are computed in host buffers owned by the optimizer and copied back into
//! each variable's storage by an in-place op: one copy of θ in and one out per step,
//! besides the pass, and no allocation (fresh buffers per step cost a page fault per
//! 4 KiB: `Var::set` from a new tensor made the ResNet-18 pair's step 95 ms instead of
//! about 60). The gradients are read in place; the state (f32) and the host buffers are
//! allocated once.

use super::{check_kind, dtype_of, view, CandleElement, TensorView};
use crate::error::{invalid, Error, Result};
use crate::optim::{AdamW, Correction, Optimizer, Rule};
use crate::{CpuBackend, Element};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};
use half::{bf16, f16};

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
    host: Host,
}

/// The host buffers the pass runs on, one per variable, of the variables' dtype.
#[derive(Debug)]
enum Host {
    None,
    F32(Vec<Vec<f32>>),
    F16(Vec<Vec<f16>>),
    BF16(Vec<Vec<bf16>>),
}

/// An element type of the optimizer's variables: its host buffers and its candle storage.
trait HostElement: CandleElement {
    /// The host buffers (allocated at the first call, or when the dtype changed).
    fn bufs<'h>(h: &'h mut Host, vars: &[Var]) -> &'h mut Vec<Vec<Self>>;
    /// The elements of a storage of this dtype.
    fn storage(s: &mut CpuStorage) -> Option<&mut Vec<Self>>;
}

macro_rules! host_element {
    ($t:ty, $v:ident) => {
        impl HostElement for $t {
            fn bufs<'h>(h: &'h mut Host, vars: &[Var]) -> &'h mut Vec<Vec<Self>> {
                if !matches!(h, Host::$v(_)) {
                    let zero = <$t as Element>::from_f64(0.0);
                    *h = Host::$v(vars.iter().map(|v| vec![zero; v.elem_count()]).collect());
                }
                match h {
                    Host::$v(b) => b,
                    _ => unreachable!("set just above"),
                }
            }

            fn storage(s: &mut CpuStorage) -> Option<&mut Vec<Self>> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
host_element!(f32, F32);
host_element!(f16, F16);
host_element!(bf16, BF16);

/// Copies a host buffer into a variable's storage, in place (`Tensor::inplace_op1`).
struct CopyBack<'a, T>(&'a [T]);

impl<T: HostElement> InplaceOp1 for CopyBack<'_, T> {
    fn name(&self) -> &'static str {
        "redreg-optimizer-copy-back"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let n = self.0.len();
        let dst = T::storage(s)
            .and_then(|v| v.get_mut(l.start_offset()..l.start_offset() + n))
            .filter(|_| l.is_contiguous() && l.shape().elem_count() == n)
            .ok_or_else(|| {
                candle_core::Error::Msg("optimizer copy-back: storage changed".into())
            })?;
        dst.copy_from_slice(self.0);
        Ok(())
    }
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
            host: Host::None,
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
            crate::DType::F16 => self.run_t::<f16>(grads, c),
            crate::DType::BF16 => self.run_t::<bf16>(grads, c),
        }
    }

    fn run_t<T: HostElement>(
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
        // The current values into the host buffers (each read lock dropped at once, so the
        // copy-back below can take the write lock).
        let params = T::bufs(&mut self.host, &self.vars);
        for (v, p) in self.vars.iter().zip(params.iter_mut()) {
            p.copy_from_slice(view(v.as_tensor())?.as_slice::<T>()?);
        }
        let ranks = {
            let gv = gts
                .iter()
                .map(|g| view(g))
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
                    .step(&self.be, &mut pv, &gs)
                    .map(|_| Vec::new())?,
                Some((start, theta0, beta)) => {
                    let tv = theta0
                        .iter()
                        .enumerate()
                        .map(|(i, t)| {
                            check_kind("theta0", i, first, t)?;
                            view(t)
                        })
                        .collect::<Result<Vec<TensorView<'_>>>>()?;
                    let ts = tv
                        .iter()
                        .map(|v| v.as_slice::<T>())
                        .collect::<Result<Vec<&[T]>>>()?;
                    let c = Correction::new(start, ts, beta);
                    self.inner.step_corrected(&self.be, &mut pv, &gs, &c)?
                }
            }
        };
        for (v, p) in self.vars.iter().zip(params.iter()) {
            v.as_tensor().inplace_op1(&CopyBack(&p[..])).map_err(cerr)?;
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
