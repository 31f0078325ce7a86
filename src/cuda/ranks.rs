//! [`DeviceRanks`]: the per-segment ranks of one projection or orthonormalisation call.

use super::drv;
use crate::error::{check_len, Result};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use std::sync::Arc;

/// The ranks (`u32`, one per segment) that one call of [`crate::Backend::project_out`],
/// [`crate::Backend::apply`] or [`crate::Backend::orthonormalize`] on the CUDA backend
/// computed, in a
/// device buffer owned by this handle alone: no later call, on any thread, can overwrite
/// them. Written asynchronously on the backend's stream; read them with
/// [`DeviceRanks::to_vec`] (synchronises) or keep them on the device
/// ([`DeviceRanks::as_view`], [`DeviceRanks::copy_into`]).
#[derive(Debug)]
pub struct DeviceRanks {
    /// `max(len, 1)` values (a zero-byte device allocation is an error), zero-initialised.
    buf: CudaSlice<u32>,
    len: usize,
    stream: Arc<CudaStream>,
}

impl DeviceRanks {
    /// A zeroed buffer for `len` segments on `stream` (queued, asynchronous).
    pub(crate) fn zeros(stream: &Arc<CudaStream>, len: usize) -> Result<Self> {
        Ok(Self {
            buf: stream.alloc_zeros(len.max(1)).map_err(drv)?,
            len,
            stream: stream.clone(),
        })
    }

    /// The whole buffer, as the kernels' `ranks` argument.
    pub(crate) fn buffer_mut(&mut self) -> &mut CudaSlice<u32> {
        &mut self.buf
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a layout without segments.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the ranks to the host. **Synchronises** the stream they were written on.
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        self.stream
            .clone_dtoh(&self.buf.slice(0..self.len))
            .map_err(drv)
    }

    /// The ranks as a device view (valid once the stream has run the call's kernels).
    pub fn as_view(&self) -> CudaView<'_, u32> {
        self.buf.slice(0..self.len)
    }

    /// Copies the ranks into `dst` (device to device, asynchronous on the stream they were
    /// written on): lets a caller that runs many layouts collect every rank and read them
    /// back with one copy. `Err` unless `dst` has [`DeviceRanks::len`] elements.
    pub fn copy_into(&self, dst: &mut CudaViewMut<'_, u32>) -> Result<()> {
        check_len("rank destination", self.len, dst.len())?;
        if self.len == 0 {
            return Ok(());
        }
        self.stream
            .memcpy_dtod(&self.buf.slice(0..self.len), dst)
            .map_err(drv)
    }
}

impl crate::backend::RankList for DeviceRanks {
    /// Copies the ranks to the host. **Synchronises** the stream they were written on.
    fn to_vec(&self) -> Result<Vec<u32>> {
        DeviceRanks::to_vec(self)
    }
}
