//! What the adapter's functions run on, in one mechanism for both roles — the projection
//! backend ([`Backends`]) and the statistics executor ([`Executors`]): [`OnTensors`], the
//! one trait of what a function accepts (a memory family's own object, or an
//! [`OnDevice`]), [`OnDevice`], a memory family's object chosen from a candle device at
//! run time, and one dispatch (`on_device!`) for every call through it.

use super::memory::TensorMemory;
use super::project::{project_tensors, TensorProjection};
use super::stats::{step_on, ModalityTensors};
use super::{invalid, Result};
use crate::backend::{Backend, Host};
use crate::controller::{RedRegStats, StepInputs};
use crate::stats::{CpuStats, Stats, StatsPlan, StatsResults};
use crate::CpuBackend;
use candle_core::{Device, Tensor};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Backends {}
    impl Sealed for super::Executors {}
    impl Sealed for super::Optimizers {}
    /// Seals [`super::OnTensors`]: only this crate can call or implement its method.
    #[derive(Clone, Copy)]
    pub struct Token;
}
pub(super) use sealed::Token;

/// A role an object plays for the adapter: [`Backends`] (the projection backend of a
/// memory family) or [`Executors`] (its statistics executor). Sealed.
pub trait Role: sealed::Sealed {
    /// The object of memory family `M`.
    type Of<M: TensorMemory>: std::fmt::Debug + Send;
    /// The operation's inputs.
    #[doc(hidden)]
    type Args<'a>;
    /// The operation's result.
    #[doc(hidden)]
    type Output;
}

/// The projection backend of each memory family (`TensorMemory::Backend`); its operation
/// is the tensor-list projection of [`super::project_out_tensors`] and
/// [`super::project_drift_into_grads`].
#[derive(Debug)]
pub struct Backends;

/// The statistics executor of each memory family (`TensorMemory::Stats`); its operation is
/// one step of [`super::stats::step_inputs`].
#[derive(Debug)]
pub struct Executors;

/// The optimizer of each memory family ([`super::FusedOptimizer`]'s state: the family's
/// backend, its [`crate::optim::Optimizer`] and parameter buffers).
#[derive(Debug)]
pub struct Optimizers;

impl Role for Optimizers {
    type Of<M: TensorMemory> = super::optim::Family<M>;
    /// (No operation of its own through [`OnTensors`].)
    type Args<'a> = ();
    type Output = ();
}

impl Role for Backends {
    type Of<M: TensorMemory> = M::Backend;
    type Args<'a> = &'a TensorProjection<'a>;
    /// The new tensors and each tensor's basis rank, in order.
    type Output = (Vec<Tensor>, Vec<u32>);
}

impl Role for Executors {
    type Of<M: TensorMemory> = M::Stats;
    type Args<'a> = (&'a RedRegStats, &'a Tensor, &'a [ModalityTensors<'a>]);
    type Output = StepInputs;
}

/// What the adapter's functions accept in role `R`, by reference: a memory family's own
/// object — `&CpuBackend` for CPU tensors and, with feature `candle-cuda`, `&CudaBackend`
/// (made by `cuda_backend(&device)`, on candle's stream) for projections; `&mut CpuStats` /
/// `&mut CudaStats` for statistics — or an [`OnDevice`] (`&OnDevice<Backends>`,
/// `&mut OnDevice<Executors>`), either chosen at run time. Sealed: the adapter's functions
/// are the interface.
pub trait OnTensors<R: Role>: Sized {
    /// Runs the role's operation on the tensors of `args` (the token: only the adapter
    /// calls it).
    #[doc(hidden)]
    fn on_tensors(self, args: R::Args<'_>, _: Token) -> Result<R::Output>;
}

impl<B> OnTensors<Backends> for &B
where
    B: Backend,
    B::Memory: TensorMemory<Backend = B>,
{
    fn on_tensors(self, p: &TensorProjection<'_>, _: Token) -> Result<(Vec<Tensor>, Vec<u32>)> {
        project_tensors(self, p)
    }
}

impl<S> OnTensors<Executors> for &mut S
where
    S: Stats,
    S::Memory: TensorMemory<Stats = S>,
{
    fn on_tensors(
        self,
        (handles, labels, mods): (&RedRegStats, &Tensor, &[ModalityTensors<'_>]),
        _: Token,
    ) -> Result<StepInputs> {
        step_on(self, handles, labels, mods)
    }
}

/// The object of role `R` for the memory family of a candle device, chosen at run time:
/// `OnDevice<Backends>` (make it with [`OnDevice::<Backends>::for_device`]) holds
/// [`CpuBackend`] for `Device::Cpu` and, with feature `candle-cuda`, a
/// [`crate::cuda::CudaBackend`] on candle's stream for a CUDA device; `OnDevice<Executors>`
/// (made by [`OnDevice::<Executors>::new`] from the backend) holds [`CpuStats`] or
/// `CudaStats` on the same stream. Make each once per device (and plan) and keep it: on
/// CUDA it caches the loaded kernels and a workspace per layout.
#[derive(Debug)]
pub enum OnDevice<R: Role> {
    /// For CPU tensors.
    Cpu(R::Of<Host>),
    /// For CUDA tensors, on the device's candle stream.
    #[cfg(feature = "candle-cuda")]
    Cuda(R::Of<crate::cuda::Device>),
}

/// `$e` with `$x` bound to the object of whichever family `$v` holds (one expression,
/// type-checked for each family).
macro_rules! on_device {
    ($v:expr, $x:ident => $e:expr) => {
        match $v {
            OnDevice::Cpu($x) => $e,
            #[cfg(feature = "candle-cuda")]
            OnDevice::Cuda($x) => $e,
        }
    };
}
pub(super) use on_device;

impl<R: Role> OnDevice<R> {
    /// True when it serves CUDA tensors, false for CPU tensors.
    pub fn is_cuda(&self) -> bool {
        !matches!(self, OnDevice::Cpu(_))
    }
}

impl OnTensors<Backends> for &OnDevice<Backends> {
    fn on_tensors(self, p: &TensorProjection<'_>, t: Token) -> Result<(Vec<Tensor>, Vec<u32>)> {
        on_device!(self, b => b.on_tensors(p, t))
    }
}

impl OnTensors<Executors> for &mut OnDevice<Executors> {
    fn on_tensors(
        self,
        args: (&RedRegStats, &Tensor, &[ModalityTensors<'_>]),
        t: Token,
    ) -> Result<StepInputs> {
        on_device!(self, s => s.on_tensors(args, t))
    }
}

impl OnDevice<Backends> {
    /// The backend for tensors on `device`. `Err` for a device other than the CPU and (with
    /// feature `candle-cuda`) CUDA, or when the CUDA backend cannot be made.
    pub fn for_device(device: &Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::Cpu(CpuBackend::new())),
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(super::cuda_backend(device)?)),
            #[allow(unreachable_patterns)]
            other => Err(invalid(
                "device",
                format!(
                    "{:?} is not supported ({})",
                    other.location(),
                    if cfg!(feature = "candle-cuda") {
                        "CPU and CUDA devices are"
                    } else {
                        "CPU devices are; CUDA devices need redreg's feature `candle-cuda`"
                    }
                ),
            )),
        }
    }
}

impl OnDevice<Executors> {
    /// The executor of `plan` on `backend`'s device (on CUDA: on its stream, sharing its
    /// loaded kernels).
    pub fn new(backend: &OnDevice<Backends>, plan: &StatsPlan) -> Result<Self> {
        Ok(match backend {
            OnDevice::Cpu(_) => Self::Cpu(CpuStats::new(plan)?),
            #[cfg(feature = "candle-cuda")]
            OnDevice::Cuda(b) => Self::Cuda(crate::stats::CudaStats::new(b, plan)?),
        })
    }

    /// The executor of `plan` for tensors on `device` (`Err` for a device other than the
    /// CPU and, with feature `candle-cuda`, CUDA). On CUDA this makes its own backend on
    /// candle's stream; [`OnDevice::<Executors>::new`] shares one.
    pub fn for_device(device: &Device, plan: &StatsPlan) -> Result<Self> {
        Self::new(&OnDevice::<Backends>::for_device(device)?, plan)
    }

    /// The plan it runs.
    pub fn plan(&self) -> &StatsPlan {
        on_device!(self, s => s.plan())
    }

    /// The results of the last run (NaN before the first).
    pub fn results(&self) -> &StatsResults {
        on_device!(self, s => s.results())
    }
}
