//! candle-nn's [`candle_nn::Optimizer`] run by [`crate::optim::Optimizer`]: SGD or AdamW
//! with PyTorch's semantics over a model's `Var`s (a `VarMap`'s `all_vars()`), every
//! tensor in one pass per step (one parallel pass on the CPU, one launch on CUDA),
//! optionally with the RedReg correction folded in ([`FusedOptimizer::step_redreg`]). A
//! candle trainer swaps `candle_nn::AdamW::new(vars, params)` for
//! `FusedOptimizer::new(vars, params.into())`.
//!
//! CPU and (feature `candle-cuda`) CUDA variables, through one generic path over the
//! memory family ([`TensorMemory`]): the backend of the variables' device
//! ([`OnDevice`]`<Optimizers>`). The pass needs every variable writable at once, and candle
//! lends a storage mutably only to one in-place custom op at a time
//! (`Tensor::inplace_op1`), so the new values are computed in buffers the optimizer owns
//! (host buffers, or device buffers on candle's stream) and copied back into each
//! variable's storage by an in-place op: one copy of θ in and one out per step, besides
//! the pass, and no allocation after the first step (fresh buffers per step cost a page
//! fault per 4 KiB on the CPU: `Var::set` from a new tensor made the ResNet-18 pair's step
//! 95 ms instead of about 60). The gradients (and θ₀) are read in place; the state (f32)
//! and the buffers are allocated once.
//!
//! A variable without a gradient in the `GradStore` is skipped, as PyTorch's optimizers skip
//! a parameter whose `.grad` is `None` (and as candle-nn's do): its value, its state and its
//! step count are unchanged, and each variable's update uses its own step count
//! ([`crate::optim::Optimizer::step_some`]). A trainer whose step leaves one modality's
//! variables without a gradient steps the others.

use super::device::{on_device, Optimizers};
use super::{check_kind, dtype_of, CandleElement, OnDevice, TensorMemory, TensorView};
use crate::backend::{Backend, Dst, RankList, Src};
use crate::error::{invalid, Result};
use crate::optim::{AdamW, Correction, Optimizer, Rule};
use crate::CpuBackend;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use half::{bf16, f16};

/// An optimizer over candle `Var`s, all of one dtype (f32, f16 or bf16) on one device (the
/// CPU or, with feature `candle-cuda`, one CUDA device). Like candle-nn's, it keeps only
/// the floating-point variables it is given and skips a variable without a gradient. Unlike
/// candle-nn's (one step count for all), it keeps PyTorch's per-parameter step counts: a
/// skipped variable's count does not advance, and AdamW's bias correction of each variable
/// uses its own ([`FusedOptimizer::steps_of`]).
#[derive(Debug)]
pub struct FusedOptimizer {
    vars: Vec<Var>,
    lr: f64,
    on: OnDevice<Optimizers>,
}

/// A memory family's side of a [`FusedOptimizer`]: its backend, the optimizer (its state
/// in that memory) and the parameter buffers its pass runs on.
pub struct Family<M: TensorMemory> {
    be: M::Backend,
    opt: Optimizer<M::Backend>,
    bufs: Bufs<M>,
}

impl<M: TensorMemory> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("be", &self.be)
            .field("opt", &self.opt)
            .finish_non_exhaustive()
    }
}

/// The buffers the pass runs on, one per variable, of the variables' dtype (allocated at
/// the first step, or when the dtype changed).
enum Bufs<M: TensorMemory> {
    None,
    F32(Vec<M::Out<f32>>),
    F16(Vec<M::Out<f16>>),
    BF16(Vec<M::Out<bf16>>),
}

/// An element type of the optimizer's variables: where its buffers are kept.
trait ParamElement: CandleElement {
    fn bufs<M: TensorMemory>(b: &mut Bufs<M>) -> Option<&mut Vec<M::Out<Self>>>;
    fn wrap<M: TensorMemory>(v: Vec<M::Out<Self>>) -> Bufs<M>;
}

macro_rules! param_element {
    ($t:ty, $v:ident) => {
        impl ParamElement for $t {
            fn bufs<M: TensorMemory>(b: &mut Bufs<M>) -> Option<&mut Vec<M::Out<Self>>> {
                match b {
                    Bufs::$v(b) => Some(b),
                    _ => None,
                }
            }

            fn wrap<M: TensorMemory>(v: Vec<M::Out<Self>>) -> Bufs<M> {
                Bufs::$v(v)
            }
        }
    };
}
param_element!(f32, F32);
param_element!(f16, F16);
param_element!(bf16, BF16);

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
    /// The optimizer on a given CPU backend (its thread pool and chunk size), for CPU
    /// variables.
    pub fn with_backend(vars: Vec<Var>, rule: Rule, be: CpuBackend) -> Result<Self> {
        Self::make(vars, rule, Some(be))
    }

    /// The optimizer for variables on their device: the CPU ([`CpuBackend::new`]) or, with
    /// feature `candle-cuda`, a CUDA device (a backend on candle's stream, the state on the
    /// device). `Err` for variables on several devices or another kind of device.
    pub fn for_vars(vars: Vec<Var>, rule: Rule) -> Result<Self> {
        Self::make(vars, rule, None)
    }

    fn make(vars: Vec<Var>, rule: Rule, cpu: Option<CpuBackend>) -> Result<Self> {
        let vars: Vec<Var> = vars.into_iter().filter(|v| v.dtype().is_float()).collect();
        let lens: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
        let device = vars.first().map_or(Device::Cpu, |v| v.device().clone());
        if let Some(i) = vars.iter().position(|v| !v.device().same_device(&device)) {
            return Err(invalid(
                "vars",
                format!("variable {i} is on another device than variable 0"),
            ));
        }
        fn family<M: TensorMemory>(
            be: M::Backend,
            rule: Rule,
            lens: &[usize],
        ) -> Result<Family<M>> {
            let opt = Optimizer::on(&be, rule, lens)?;
            Ok(Family {
                be,
                opt,
                bufs: Bufs::None,
            })
        }
        let on = match (cpu, OnDevice::<super::Backends>::for_device(&device)?) {
            (Some(be), OnDevice::Cpu(_)) => OnDevice::Cpu(family(be, rule, &lens)?),
            (None, OnDevice::Cpu(be)) => OnDevice::Cpu(family(be, rule, &lens)?),
            #[cfg(feature = "candle-cuda")]
            (None, OnDevice::Cuda(be)) => OnDevice::Cuda(family(be, rule, &lens)?),
            #[cfg(feature = "candle-cuda")]
            (Some(_), OnDevice::Cuda(_)) => {
                return Err(invalid("vars", "CUDA variables with a CPU backend"))
            }
        };
        Ok(FusedOptimizer {
            vars,
            lr: rule.lr(),
            on,
        })
    }

    /// The variables, in the optimizer's order (the order of a [`Correction`]'s tensors).
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Completed steps (calls of a step method that returned `Ok`), whichever variables
    /// they updated ([`crate::optim::Optimizer::steps`]).
    pub fn steps(&self) -> u64 {
        on_device!(&self.on, f => f.opt.steps())
    }

    /// Variable `i`'s step count: the steps in which it had a gradient (PyTorch's
    /// per-parameter `state["step"]`); `None` for `i` out of range.
    pub fn steps_of(&self, i: usize) -> Option<u64> {
        on_device!(&self.on, f => f.opt.steps_of(i))
    }

    /// The optimizer's state of variable `i` on the host (SGD's momentum buffer or AdamW's
    /// moments, as [`Optimizer::state`]; on CUDA a copy, which synchronises the stream).
    pub fn state(&self, i: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        match &self.on {
            OnDevice::Cpu(f) => Ok(f.opt.state(i).map(|(a, b)| (a.to_vec(), b.to_vec()))),
            #[cfg(feature = "candle-cuda")]
            OnDevice::Cuda(f) => f.opt.state(&f.be, i),
        }
    }

    /// One plain step over the variables that have a gradient in `grads` (the others are
    /// skipped: value, state and step count unchanged). `Err` with no variable and no state
    /// changed when a gradient does not match its variable (shape, dtype, device,
    /// contiguity), or the learning rate is invalid.
    pub fn try_step(&mut self, grads: &GradStore) -> Result<()> {
        self.run(grads, None).map(|_| ())
    }

    /// One step with the RedReg correction folded in for the encoder whose variables start
    /// at index `first` of [`FusedOptimizer::vars`]: `theta0` holds its epoch-start values
    /// (one tensor per variable, [`super::snapshot`]), `beta` the factor. The gradient
    /// used is `g + β·(d − P d)` with `P` onto `span{g}` per tensor (the script), formed
    /// in f64 in the pass and never written. Returns the encoder's per-tensor ranks. The
    /// variables outside the encoder without a gradient are skipped as in
    /// [`FusedOptimizer::try_step`]; every encoder variable needs one (`Err` otherwise, with
    /// nothing changed).
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
        let (vars, lr) = (&self.vars[..], self.lr);
        match dtype_of(first.dtype())? {
            crate::DType::F32 => {
                on_device!(&mut self.on, f => run_on::<_, f32>(f, vars, lr, grads, c))
            }
            crate::DType::F16 => {
                on_device!(&mut self.on, f => run_on::<_, f16>(f, vars, lr, grads, c))
            }
            crate::DType::BF16 => {
                on_device!(&mut self.on, f => run_on::<_, bf16>(f, vars, lr, grads, c))
            }
        }
    }
}

/// One step on a memory family: the checks, θ into the family's buffers, the pass, the
/// buffers back into the variables.
fn run_on<M: TensorMemory, T: ParamElement>(
    f: &mut Family<M>,
    vars: &[Var],
    lr: f64,
    grads: &GradStore,
    c: Option<(usize, &[Tensor], f64)>,
) -> Result<Vec<u32>> {
    let stream = M::backend_stream(&f.be);
    let first = vars[0].as_tensor();
    // The gradients, `None` for a variable without one (skipped).
    let mut gts: Vec<Option<&Tensor>> = Vec::with_capacity(vars.len());
    for (i, v) in vars.iter().enumerate() {
        check_kind("vars", i, first, v.as_tensor())?;
        let Some(g) = grads.get(v.as_tensor()) else {
            gts.push(None);
            continue;
        };
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
        gts.push(Some(g));
    }
    let lens: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
    if T::bufs(&mut f.bufs).is_none() {
        let bufs = (lens.iter())
            .map(|&n| M::alloc::<T>(&f.be, n))
            .collect::<Result<Vec<_>>>()?;
        f.bufs = T::wrap(bufs);
    }
    let bufs = T::bufs(&mut f.bufs).ok_or_else(|| invalid("vars", "buffers of another dtype"))?;
    // The current values into the buffers (each view's read lock dropped at once, so the
    // copy-back below can take the write lock); a skipped variable's buffer is neither
    // read nor written by the pass, nor copied back.
    let stepped = |i: usize| gts[i].is_some();
    for (i, ((v, b), &n)) in vars.iter().zip(bufs.iter_mut()).zip(&lens).enumerate() {
        if !stepped(i) {
            continue;
        }
        let tv = M::tensor_view(stream, "vars", v.as_tensor())?;
        f.be.copy(M::src::<T>(&tv)?, M::dst(b, n))?;
    }
    let ranks = {
        // θ₀'s views first: every view below borrows for the same lifetime (the buffer
        // types are invariant in it), so they are dropped last.
        let tv = match c {
            None => Vec::new(),
            Some((_, theta0, _)) => (theta0.iter().enumerate())
                .map(|(i, t)| {
                    check_kind("theta0", i, first, t)?;
                    M::tensor_view(stream, "theta0", t)
                })
                .collect::<Result<Vec<TensorView<'_>>>>()?,
        };
        let gv = (gts.iter())
            .map(|g| g.map(|g| M::tensor_view(stream, "grads", g)).transpose())
            .collect::<Result<Vec<Option<TensorView<'_>>>>>()?;
        let gs = (gv.iter())
            .map(|v| v.as_ref().map(|v| M::src::<T>(v)).transpose())
            .collect::<Result<Vec<Option<Src<'_, M::Backend, T>>>>>()?;
        let ts = (tv.iter())
            .map(|v| M::src::<T>(v))
            .collect::<Result<Vec<Src<'_, M::Backend, T>>>>()?;
        let mut pv: Vec<Dst<'_, M::Backend, T>> = (bufs.iter_mut())
            .zip(&lens)
            .map(|(b, &n)| M::dst(b, n))
            .collect();
        f.opt.set_lr(lr)?;
        match c {
            None => {
                f.opt.step_some(&f.be, &mut pv, &gs)?;
                Vec::new()
            }
            Some((start, _, beta)) => {
                let c = Correction::new(start, ts, beta);
                (f.opt.step_corrected_some(&f.be, &mut pv, &gs, &c)?).to_vec()?
            }
        }
    };
    for (i, ((v, b), &n)) in vars.iter().zip(bufs.iter()).zip(&lens).enumerate() {
        if stepped(i) {
            M::write_back::<T>(v.as_tensor(), b, n)?;
        }
    }
    Ok(ranks)
}

impl candle_nn::Optimizer for FusedOptimizer {
    type Config = Rule;

    /// On the variables' device ([`FusedOptimizer::for_vars`]).
    fn new(vars: Vec<Var>, rule: Rule) -> candle_core::Result<Self> {
        Self::for_vars(vars, rule).map_err(candle_core::Error::wrap)
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
