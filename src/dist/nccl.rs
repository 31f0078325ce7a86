//! [`AllReduce`] over NCCL (cudarc's `nccl` module; feature `nccl`).
//!
//! libnccl is opened at the first NCCL call by cudarc's loader, which tries `libnccl.so`
//! and CUDA-versioned names (`libnccl.so.12` with this crate's `cuda-12080`), not
//! `libnccl.so.2` — the only name the PyPI wheels (`nvidia-nccl-cu12`, `nvidia-nccl-cu13`)
//! ship. Put a `libnccl.so -> libnccl.so.2` link in a directory on `LD_LIBRARY_PATH` (see
//! docs/distributed.md); without any, the first NCCL call panics inside cudarc.

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, NcclType, ReduceOp};

use super::AllReduce;
use crate::cuda::drv_ctx;
use crate::error::{Error, Result};

fn nccl_err(context: &'static str) -> impl Fn(cudarc::nccl::result::NcclError) -> Error {
    move |error| Error::Nccl {
        context: context.to_string(),
        error,
    }
}

/// An NCCL communicator, created by the trainer (`Comm::from_rank` with an `Id` shared by
/// rank 0) and borrowed. Reductions run on the communicator's stream — make it the
/// backend's stream (`CudaBackend::from_stream(comm.stream())`) so they are ordered with
/// the kernels without host synchronisation.
#[derive(Debug)]
pub struct NcclComm<'c> {
    comm: &'c Comm,
}

impl<'c> NcclComm<'c> {
    /// Borrows `comm`.
    pub fn new(comm: &'c Comm) -> Self {
        Self { comm }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.comm.world_size()
    }

    /// The borrowed communicator.
    pub fn comm(&self) -> &'c Comm {
        self.comm
    }

    /// Sums a device buffer over the ranks in place, enqueued on the communicator's stream:
    /// **no host synchronisation**. The lengths must agree (check them once with
    /// [`super::check_same_len`] when the layout is set up: it costs a synchronisation).
    pub fn all_reduce_sum_device<T: NcclType>(&self, buf: &mut CudaSlice<T>) -> Result<()> {
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map_err(nccl_err("all-reducing a device buffer"))?;
        Ok(())
    }
}

/// Host buffers (the statistics' sums, the split form's partials from
/// `CudaBackend::partials`, both small): copied to the device, reduced, copied back — this
/// synchronises the communicator's stream.
impl AllReduce for NcclComm<'_> {
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let stream = self.comm.stream();
        let mut dev = stream.clone_htod(buf).map_err(drv_ctx(
            "NCCL all-reduce: copying the host buffer to the device",
        ))?;
        self.all_reduce_sum_device(&mut dev)?;
        stream
            .memcpy_dtoh(&dev, buf)
            .map_err(drv_ctx("NCCL all-reduce: copying the sums to the host"))?;
        stream
            .synchronize()
            .map_err(drv_ctx("NCCL all-reduce: synchronizing"))?;
        Ok(())
    }
}
