//! How a kernel module gets onto the device, and which way it went.
//!
//! Order: the prebuilt fatbin (SASS for the build's architectures plus PTX; the driver
//! JIT-compiles that PTX when no SASS matches), then NVRTC compiling the embedded source to
//! a **cubin** for the device's own `sm_XY` (no driver JIT: works when the fatbin's PTX is
//! from a toolkit newer than the driver, e.g. nvcc 13.0 PTX on a 12.x driver), then NVRTC
//! to **PTX** for `compute_XY` (JIT-compiled by the driver: needs a driver at least as new
//! as the NVRTC). `REDREG_FORCE_NVRTC` (any value) skips the fatbin; `REDREG_FORCE_NVRTC=ptx`
//! also skips the cubin. The path taken is [`KernelPath`], reported by
//! [`super::CudaBackend::kernel_source`]; when every path fails the `Err` lists each reason.

use super::{inlined_source, nvrtc_available};
use crate::error::{Error, Result};
use cudarc::nvrtc::{result, sys, CompileError};
use std::ffi::{CStr, CString};

/// The way a kernel module was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// The fatbin nvcc built with the crate.
    Fatbin,
    /// The embedded source, compiled by NVRTC at run time to SASS (cubin) for the device.
    NvrtcCubin,
    /// The embedded source, compiled by NVRTC at run time to PTX, JIT-compiled by the driver.
    NvrtcPtx,
}

impl KernelPath {
    /// `"fatbin"`, `"nvrtc-cubin"` or `"nvrtc-ptx"`.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelPath::Fatbin => "fatbin",
            KernelPath::NvrtcCubin => "nvrtc-cubin",
            KernelPath::NvrtcPtx => "nvrtc-ptx",
        }
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which loading paths the environment allows: (fatbin, cubin).
pub(crate) fn allowed_paths() -> (bool, bool) {
    match std::env::var("REDREG_FORCE_NVRTC") {
        Err(_) => (true, true),
        Ok(v) => (false, v != "ptx"),
    }
}

/// Compiles module `name`'s embedded source with NVRTC to a cubin for `arch` (a real
/// architecture such as `"sm_90"`). Needs libnvrtc but no GPU.
pub fn nvrtc_compile_cubin(name: &str, arch: &str) -> Result<Vec<u8>> {
    nvrtc_available().map_err(Error::CudaUnavailable)?;
    let src = inlined_source(name)?;
    let csrc = CString::new(src).map_err(|_| Error::Kernel {
        module: name.to_string(),
        reason: format!("{name}.cu contains a NUL byte"),
        source: None,
    })?;
    let cname = CString::new(format!("{name}.cu")).expect("no NUL in a module name");
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-DREDREG_NVRTC=1".to_string(),
    ];
    match std::panic::catch_unwind(|| compile_cubin(&csrc, &cname, &opts))
        .map_err(|_| Error::CudaUnavailable("NVRTC panicked".into()))?
    {
        Ok(Some(cubin)) => Ok(cubin),
        Ok(None) => Err(Error::Kernel {
            module: name.to_string(),
            reason: format!("NVRTC produced no cubin for {arch} (is the architecture virtual?)"),
            source: None,
        }),
        Err(source) => Err(Error::Nvrtc {
            module: name.to_string(),
            target: format!("cubin, {arch}"),
            source,
        }),
    }
}

/// The cubin, `None` when NVRTC produced none, or NVRTC's error as cudarc's
/// [`CompileError`] (what cudarc's own PTX compilation returns; a failure to fetch the
/// cubin is reported as `GetPtxError`, cudarc's variant for fetching the output).
fn compile_cubin(
    src: &CStr,
    name: &CStr,
    opts: &[String],
) -> std::result::Result<Option<Vec<u8>>, CompileError> {
    let prog = result::create_program(src, Some(name)).map_err(CompileError::CreationError)?;
    // SAFETY: `prog` was just created from `src` and `name`, which outlive it, and is
    // destroyed exactly once below; the buffer passed to nvrtcGetCUBIN has the size
    // nvrtcGetCUBINSize reported.
    let out = unsafe {
        let r = match result::compile_program(prog, opts) {
            Err(nvrtc) => {
                let log = result::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_owned())
                    .unwrap_or_default();
                Err(CompileError::CompileError {
                    nvrtc,
                    options: opts.to_vec(),
                    log,
                })
            }
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(CompileError::GetPtxError(e)),
                    Ok(()) if size == 0 => Ok(None),
                    Ok(()) => {
                        let mut buf = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
                            .result()
                            .map(|()| Some(buf))
                            .map_err(CompileError::GetPtxError)
                    }
                }
            }
        };
        let _ = result::destroy_program(prog);
        r
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_have_stable_names() {
        assert_eq!(KernelPath::Fatbin.to_string(), "fatbin");
        assert_eq!(KernelPath::NvrtcCubin.as_str(), "nvrtc-cubin");
        assert_eq!(KernelPath::NvrtcPtx.as_str(), "nvrtc-ptx");
    }
}
