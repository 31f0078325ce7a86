//! The driver's errors keep their source (issue 14, "Errors"): a failed driver call is
//! `Error::Driver` whose `source()` is cudarc's `DriverError`; a kernel a module lacks is
//! `Error::KernelFunction` (its `source()` the driver's `CUDA_ERROR_NOT_FOUND`); a module
//! that does not exist is `Error::Kernel` — none of them `Error::CudaUnavailable`, which
//! means "no driver or no device" only. SKIP convention: tests/common/gpu.rs.
#![cfg(feature = "cuda")]

#[path = "common/gpu.rs"]
mod gpu;

use redreg::cuda::cudarc::driver::{sys::CUresult, DriverError};
use redreg::cuda::CudaBackend;
use redreg::Error;
use std::error::Error as StdError;

/// The `DriverError` that `e`'s `source()` downcasts to (panics, naming `e`, if none).
fn driver_source(e: &Error) -> DriverError {
    *e.source()
        .unwrap_or_else(|| panic!("no source: {e:?}"))
        .downcast_ref::<DriverError>()
        .unwrap_or_else(|| panic!("the source is not a DriverError: {e:?}"))
}

/// A device ordinal past the last device: the driver's `cuDeviceGet` refuses it
/// (`CUDA_ERROR_INVALID_DEVICE`), after `cuda_available` found a driver and a device.
#[test]
fn context_on_a_missing_device_is_a_driver_error() {
    let Some(b) = gpu::backend("context_on_a_missing_device_is_a_driver_error") else {
        return;
    };
    let n = redreg::cuda::cudarc::driver::CudaContext::device_count().unwrap() as usize;
    let ordinal = n + 97;
    let e = CudaBackend::new(ordinal).unwrap_err();
    match &e {
        Error::Driver { context, .. } => {
            assert!(context.contains(&ordinal.to_string()), "{e}")
        }
        other => panic!("expected Error::Driver, got {other:?}"),
    }
    assert_eq!(
        driver_source(&e).0,
        CUresult::CUDA_ERROR_INVALID_DEVICE,
        "{e}"
    );
    assert!(e.to_string().contains("CUDA_ERROR_INVALID_DEVICE"), "{e}");
    // The backend on device 0 is unaffected.
    b.synchronize().unwrap();
}

/// A kernel name the module does not have: the driver's `cuModuleGetFunction` fails.
#[test]
fn missing_kernel_is_a_kernel_function_error() {
    let Some(b) = gpu::backend("missing_kernel_is_a_kernel_function_error") else {
        return;
    };
    let e = b.function("project", "no_such_kernel_f32").unwrap_err();
    match &e {
        Error::KernelFunction {
            module, function, ..
        } => {
            assert_eq!(module, "project");
            assert_eq!(function, "no_such_kernel_f32");
        }
        other => panic!("expected Error::KernelFunction, got {other:?}"),
    }
    assert_eq!(driver_source(&e).0, CUresult::CUDA_ERROR_NOT_FOUND, "{e}");
    // The module itself loaded and still serves its kernels.
    b.function("project", "project_finish").unwrap();
}

/// A module name that `kernels/` does not have: a kernel error, not "CUDA unavailable".
#[test]
fn unknown_module_is_a_kernel_error() {
    let Some(b) = gpu::backend("unknown_module_is_a_kernel_error") else {
        return;
    };
    let e = b.module("no_such_module").unwrap_err();
    assert!(
        matches!(&e, Error::Kernel { module, .. } if module == "no_such_module"),
        "{e:?}"
    );
    let e = b.function("no_such_module", "k").unwrap_err();
    assert!(matches!(&e, Error::Kernel { .. }), "{e:?}");
}
