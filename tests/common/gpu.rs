//! The SKIP convention of the GPU tests: without a usable GPU (or NVRTC) a test prints
//! `SKIP: <reason>` and passes; with `REDREG_REQUIRE_GPU=1` (or `REDREG_REQUIRE_NVRTC=1`
//! for the NVRTC-only tests) a skip panics, so a GPU run cannot pass vacuously.
#![allow(dead_code)]

use redreg::cuda::CudaBackend;
use std::sync::OnceLock;

fn env_is_1(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// Prints the skip (or panics when `require_var=1`).
pub fn skip(test: &str, require_var: &str, reason: &str) {
    if env_is_1(require_var) {
        panic!("{test}: {require_var}=1 but the test would be skipped: {reason}");
    }
    // Written to the stderr handle directly, not through `println!`, so that the line shows
    // in a plain `cargo test` run (the harness captures only the print macros).
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: {reason}");
}

/// A backend on device 0, shared by the tests of one binary, or `None` after printing
/// `SKIP` (panics instead with `REDREG_REQUIRE_GPU=1`).
pub fn backend(test: &str) -> Option<&'static CudaBackend> {
    static B: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    let b = B.get_or_init(|| {
        redreg::cuda::cuda_available()?;
        CudaBackend::new(0).map_err(|e| e.to_string())
    });
    match b {
        Ok(b) => Some(b),
        Err(reason) => {
            skip(test, "REDREG_REQUIRE_GPU", reason);
            None
        }
    }
}
