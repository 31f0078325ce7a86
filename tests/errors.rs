//! The crate's errors keep what went wrong underneath (issue 14, "Errors"): a candle error
//! is the `source` of the `Error` it becomes, NVRTC's error is the `source` of
//! `Error::Nvrtc`, and a kernel module that does not exist is `Error::Kernel`, not
//! `Error::CudaUnavailable` (which is kept for "no driver, no device"). CPU only; the
//! driver's errors are in `tests/gpu_errors.rs`.

#[cfg(feature = "cuda")]
#[path = "common/gpu.rs"]
mod gpu;

use redreg::Error;
use std::error::Error as StdError;

/// The error type is usable behind `Box<dyn Error + Send + Sync>` (anyhow, threads).
#[test]
fn error_is_send_sync_static() {
    fn check<E: StdError + Send + Sync + 'static>() {}
    check::<Error>();
}

/// Every link of `e`'s `source()` chain, outermost first (not including `e`).
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s);
        cur = s.source();
    }
    out
}

#[test]
fn kernel_error_chains_to_its_last_failure() {
    let inner = Error::CudaUnavailable("the NVRTC library was not found".into());
    let e = Error::Kernel {
        module: "project".into(),
        reason: "no prebuilt fatbin; NVRTC PTX".into(),
        source: Some(Box::new(inner)),
    };
    let links = chain(&e);
    assert_eq!(links.len(), 1, "{e}");
    let inner = links[0]
        .downcast_ref::<Error>()
        .expect("the source of Error::Kernel is the redreg::Error of the last path tried");
    assert!(matches!(inner, Error::CudaUnavailable(_)), "{inner:?}");
    assert!(e.to_string().contains("project"), "{e}");
}

#[cfg(feature = "candle")]
mod candle {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// A candle call that fails (a reshape to a different element count), through `?` into
    /// the crate's `Result`.
    fn bad_reshape() -> redreg::Result<Tensor> {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        Ok(t.reshape((4, 2))?)
    }

    #[test]
    fn candle_error_is_the_source() {
        let e = bad_reshape().unwrap_err();
        assert!(matches!(e, Error::Candle { .. }), "{e:?}");
        let src = e.source().expect("Error::Candle has a source");
        let ce = src
            .downcast_ref::<candle_core::Error>()
            .expect("the source downcasts to candle_core::Error");
        // The message says what happened (candle's own text), and the chain keeps it.
        let text = ce.to_string();
        assert!(e.to_string().contains(&text), "{e} vs {text}");
        assert!(
            chain(&e)
                .iter()
                .any(|s| s.downcast_ref::<candle_core::Error>().is_some()),
            "{e}"
        );
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    /// An unknown module is a kernel error whatever the machine: no driver is involved.
    #[test]
    fn unknown_module_is_a_kernel_error_not_unavailable() {
        let e = redreg::cuda::inlined_source("no_such_module").unwrap_err();
        match &e {
            Error::Kernel { module, .. } => assert_eq!(module, "no_such_module"),
            other => panic!("expected Error::Kernel, got {other:?}"),
        }
        assert!(e.to_string().contains("project"), "lists the modules: {e}");
    }

    /// NVRTC's error (an invalid architecture) is the `source` of `Error::Nvrtc`, for the PTX
    /// and the cubin path. Needs libnvrtc (no GPU); SKIPs without it.
    #[test]
    fn nvrtc_error_is_the_source() {
        if let Err(reason) = redreg::cuda::nvrtc_available() {
            gpu::skip("nvrtc_error_is_the_source", "REDREG_REQUIRE_NVRTC", &reason);
            return;
        }
        let ptx = redreg::cuda::nvrtc_compile("stats", "compute_1").unwrap_err();
        let cubin = redreg::cuda::nvrtc_compile_cubin("stats", "sm_1").unwrap_err();
        for (e, target) in [(ptx, "ptx, compute_1"), (cubin, "cubin, sm_1")] {
            match &e {
                Error::Nvrtc {
                    module, target: t, ..
                } => {
                    assert_eq!(module, "stats");
                    assert_eq!(t, target);
                }
                other => panic!("expected Error::Nvrtc, got {other:?}"),
            }
            let src = e.source().expect("Error::Nvrtc has a source");
            let ce = src
                .downcast_ref::<redreg::cuda::cudarc::nvrtc::CompileError>()
                .expect("the source downcasts to cudarc's CompileError");
            assert!(
                matches!(
                    ce,
                    redreg::cuda::cudarc::nvrtc::CompileError::CompileError { .. }
                ),
                "{ce:?}"
            );
            assert!(e.to_string().contains("stats.cu"), "{e}");
        }
    }
}
