//! A memory family's object chosen from a candle device at run time: [`OnDevice`], one enum
//! for both the projection backend ([`DeviceBackend`]) and the statistics executor
//! ([`DeviceStats`]), and one dispatch (`on_device!`) for every call through it.

use super::memory::TensorMemory;
use super::stats::{step_on, ModalityTensors, TensorStats};
use super::{invalid, Result, TensorBackend, TensorProjection};
use crate::backend::Host;
use crate::controller::{RedRegStats, StepInputs};
use crate::stats::{CpuStats, Stats, StatsPlan, StatsResults};
use crate::CpuBackend;
use candle_core::{Device, Tensor};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Backends {}
    impl Sealed for super::Executors {}
}

/// What an [`OnDevice`] holds of each memory family: [`Backends`] (its projection backend)
/// or [`Executors`] (its statistics executor). Sealed.
pub trait Role: sealed::Sealed {
    /// The object of memory family `M`.
    type Of<M: TensorMemory>: std::fmt::Debug + Send;
}

/// The projection backend of each memory family (`TensorMemory::Backend`).
#[derive(Debug)]
pub struct Backends;

/// The statistics executor of each memory family (`TensorMemory::Stats`).
#[derive(Debug)]
pub struct Executors;

impl Role for Backends {
    type Of<M: TensorMemory> = M::Backend;
}

impl Role for Executors {
    type Of<M: TensorMemory> = M::Stats;
}

/// The object of role `R` for the memory family of a candle device, chosen at run time.
#[derive(Debug)]
pub enum OnDevice<R: Role> {
    /// For CPU tensors.
    Cpu(R::Of<Host>),
    /// For CUDA tensors, on the device's candle stream.
    #[cfg(feature = "candle-cuda")]
    Cuda(R::Of<crate::cuda::Device>),
}

/// The backend for a candle device, chosen at run time: [`CpuBackend`] for `Device::Cpu`
/// and, with feature `candle-cuda`, a [`crate::cuda::CudaBackend`] on candle's stream for a
/// CUDA device (`cuda_backend`). A [`TensorBackend`], so the adapter's functions take it
/// like either; [`DeviceStats`] is its statistics executor. Make it once per device and
/// keep it (on CUDA it caches the loaded kernels and a workspace per layout).
pub type DeviceBackend = OnDevice<Backends>;

/// The statistics executor for a candle device: [`CpuStats`] for `Device::Cpu`, with
/// feature `candle-cuda` `CudaStats` on candle's stream for a CUDA device — the executor
/// of the device a [`DeviceBackend`] was made for. Pass it to
/// [`super::stats::step_inputs`]. Made once per plan and kept.
pub type DeviceStats = OnDevice<Executors>;

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

impl<R: Role> OnDevice<R> {
    /// True when it serves CUDA tensors, false for CPU tensors.
    pub fn is_cuda(&self) -> bool {
        !matches!(self, OnDevice::Cpu(_))
    }
}

impl DeviceBackend {
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

impl super::sealed::Sealed for DeviceBackend {}

impl TensorBackend for DeviceBackend {
    fn project_tensors(&self, p: &TensorProjection<'_>) -> Result<(Vec<Tensor>, Vec<u32>)> {
        on_device!(self, b => b.project_tensors(p))
    }
}

impl DeviceStats {
    /// The executor of `plan` on `backend`'s device (on CUDA: on its stream, sharing its
    /// loaded kernels).
    pub fn new(backend: &DeviceBackend, plan: &StatsPlan) -> Result<Self> {
        Ok(match backend {
            OnDevice::Cpu(_) => Self::Cpu(CpuStats::new(plan)?),
            #[cfg(feature = "candle-cuda")]
            OnDevice::Cuda(b) => Self::Cuda(crate::stats::CudaStats::new(b, plan)?),
        })
    }

    /// The executor of `plan` for tensors on `device` (`Err` for a device other than the
    /// CPU and, with feature `candle-cuda`, CUDA). On CUDA this makes its own backend on
    /// candle's stream; [`DeviceStats::new`] shares one.
    pub fn for_device(device: &Device, plan: &StatsPlan) -> Result<Self> {
        Self::new(&DeviceBackend::for_device(device)?, plan)
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

impl super::stats::exec_sealed::Sealed for DeviceStats {}

impl TensorStats for DeviceStats {
    fn step(
        &mut self,
        handles: &RedRegStats,
        labels: &Tensor,
        mods: &[ModalityTensors<'_>],
    ) -> Result<StepInputs> {
        on_device!(self, s => step_on(s, handles, labels, mods))
    }
}
