//! Buffers and streams owned by another framework (tch-rs `data_ptr()`, burn, a C++
//! trainer), used without copies and without taking ownership.
//!
//! ```no_run
//! use redreg::cuda::{CudaBackend, ForeignSlice};
//! use redreg::{Backend, Output, Projection, Segments};
//!
//! let backend = CudaBackend::new(0)?;
//! let segs = Segments::from_lengths(&[1000, 24])?;
//! // Stand-ins for another framework's tensors: plain cudarc allocations whose raw
//! // addresses are all that would cross the boundary (e.g. tch's `t.data_ptr() as u64`).
//! let drift = backend.stream().alloc_zeros::<f32>(segs.total()).unwrap();
//! let mut grad = backend.stream().alloc_zeros::<f32>(segs.total()).unwrap();
//! let g = backend.stream().alloc_zeros::<f32>(segs.total()).unwrap();
//! use cudarc::driver::DevicePtr;
//! let addr = |s: &cudarc::driver::CudaSlice<f32>| s.device_ptr(backend.stream()).0;
//! let (p_drift, p_grad, p_g) = (addr(&drift), addr(&grad), addr(&g));
//!
//! // SAFETY: the three allocations hold segs.total() f32 each, live until the end of this
//! // scope, and are only used on the backend's stream meanwhile.
//! let (d, gb, mut out) = unsafe {
//!     (
//!         ForeignSlice::<f32>::new(&backend, p_drift, segs.total())?,
//!         ForeignSlice::<f32>::new(&backend, p_g, segs.total())?,
//!         ForeignSlice::<f32>::new(&backend, p_grad, segs.total())?,
//!     )
//! };
//! let basis = [gb.view()];
//! let p = Projection::new(d.view(), basis, Output::Accumulate(out.view_mut()));
//! backend.project_out(&segs, p.beta(1.5))?;
//! backend.synchronize()?;
//! drop((d, gb, out)); // never frees the foreign memory
//! # drop((drift, grad, g));
//! # Ok::<(), redreg::Error>(())
//! ```

use super::{cuda_available, CudaBackend, Element};
use crate::error::{invalid, Error, Result};
use cudarc::driver::{sys, CudaContext, CudaSlice, CudaView, CudaViewMut};
use std::mem::ManuallyDrop;

/// A device buffer owned elsewhere, viewed as `len` elements of `T` on the backend's
/// stream. Dropping it never frees the memory.
#[derive(Debug)]
pub struct ForeignSlice<T> {
    inner: ManuallyDrop<CudaSlice<T>>,
}

impl<T: Element> ForeignSlice<T> {
    /// Wraps the device address `ptr` of `len` elements.
    ///
    /// `Err` for a null pointer with `len > 0`, an address not aligned to `T`, a range that
    /// wraps around the address space, or a driver error (for example after a sticky fault:
    /// cudarc creates two tracking events per slice and would panic on failure; this checks
    /// first and catches a panic as a backstop). Operations reject an output that overlaps
    /// one of their inputs, so wrapping one address twice is caught at the call.
    ///
    /// # Safety
    /// `ptr` must point to an allocation of the backend's context holding at least `len`
    /// initialised elements of `T`, which stays allocated while the returned value lives;
    /// other code must not access it concurrently except in order on the backend's stream
    /// (for example the framework's own stream, see [`CudaBackend::from_raw_stream`]).
    pub unsafe fn new(backend: &CudaBackend, ptr: u64, len: usize) -> Result<Self> {
        let size = std::mem::size_of::<T>() as u64;
        if ptr == 0 && len > 0 {
            return Err(invalid("ptr", "null device pointer"));
        }
        if ptr % size != 0 {
            return Err(invalid(
                "ptr",
                format!("device address {ptr:#x} is not aligned to {size} bytes"),
            ));
        }
        if (len as u64)
            .checked_mul(size)
            .and_then(|b| ptr.checked_add(b))
            .is_none()
        {
            return Err(invalid(
                "len",
                format!("{len} elements from {ptr:#x} run past the end of the address space"),
            ));
        }
        let stream = backend.stream();
        if stream.context().is_event_tracking() {
            // `upgrade_device_ptr` unwraps `new_event` twice: try one first, so that a
            // broken context is an `Err` here (the probe event is destroyed at once).
            stream
                .context()
                .new_event(None)
                .map_err(|e| Error::driver("wrapping a foreign buffer: creating an event", e))?;
        }
        // SAFETY: validity, size and lifetime of the allocation are the caller's contract;
        // the slice is never dropped as a CudaSlice (see Drop), so it never frees `ptr`.
        // A panic inside (an event creation that fails after the probe succeeded) unwinds
        // before any slice exists, so nothing is left half-built.
        let s = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            stream.upgrade_device_ptr::<T>(ptr, len)
        }))
        .map_err(|_| Error::Cuda("cannot wrap a foreign buffer: cudarc panicked".into()))?;
        Ok(Self {
            inner: ManuallyDrop::new(s),
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
    }

    /// A read view for the backend's operations.
    pub fn view(&self) -> CudaView<'_, T> {
        self.inner.slice(..)
    }

    /// A write view for the backend's operations.
    pub fn view_mut(&mut self) -> CudaViewMut<'_, T> {
        self.inner.slice_mut(..)
    }
}

impl<T> Drop for ForeignSlice<T> {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken exactly once, here; `leak` waits for the recorded work
        // and returns the address without freeing it.
        let s = unsafe { ManuallyDrop::take(&mut self.inner) };
        let _ = s.leak();
    }
}

impl CudaBackend {
    /// A backend on another library's stream (`cudaStream_t` / `CUstream`) of device
    /// `ordinal`, without owning it: redreg's work is queued in order with the trainer's.
    ///
    /// # Safety
    /// `stream` must be a valid stream of the primary context of device `ordinal` (what
    /// PyTorch, tch-rs and most frameworks use) and outlive the backend; `stream = null`
    /// means the legacy default stream.
    pub unsafe fn from_raw_stream(ordinal: usize, stream: *mut std::ffi::c_void) -> Result<Self> {
        cuda_available().map_err(Error::CudaUnavailable)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::driver(format!("opening device {ordinal}"), e))?;
        // SAFETY: the stream's validity and lifetime are the caller's contract; cudarc does
        // not destroy a borrowed stream.
        let s = unsafe { ctx.wrap_borrowed_stream(stream as sys::CUstream) };
        Self::from_stream(s)
    }
}
