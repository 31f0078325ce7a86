//! CUDA backend (feature `cuda`): the kernels of `kernels/*.cu`, wrapped with cudarc.
//!
//! # Loading
//! `build.rs` compiles every `kernels/<name>.cu` to a fatbin (SASS for `CUDA_COMPUTE_CAP`,
//! PTX of the lowest arch) when nvcc is found, and always embeds the sources. A module is
//! loaded once per [`CudaBackend`], on first use: the prebuilt fatbin if there is one (and
//! `REDREG_FORCE_NVRTC` is unset), else — or when the fatbin does not load on this GPU —
//! the embedded source compiled by NVRTC for the device's compute capability. Modules are
//! cached by name and functions by name, so a new `kernels/foo.cu` is used with
//! `backend.function("foo", "foo_kernel_f32")` and nothing else.
//!
//! # Probing
//! cudarc panics when libcuda is missing; every entry point here first calls
//! [`cuda_available`] (which probes for the driver library before any driver call) and returns
//! [`Error::CudaUnavailable`] instead.
//!
//! # Operations
//! See [`CudaBackend::project_out`], [`CudaBackend::partials`], [`CudaBackend::apply`],
//! [`CudaBackend::orthonormalize`] (module `project`, `kernels/project.cu`).

mod foreign;
mod project;

/// The cudarc this crate is built against (0.19.10), so users name the same types.
pub use cudarc;
pub use foreign::ForeignSlice;
pub use project::DeviceOutput;

use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::segments::Segments;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Elements per chunk task (one thread block); must match `RR_CHUNK` in `kernels/common.cuh`.
pub const CHUNK: usize = 16384;
/// Threads per block of the chunk kernels; must match `RR_THREADS`.
pub const THREADS: u32 = 256;

/// One kernel module as embedded by `build.rs`.
pub(crate) struct KernelModule {
    /// File stem of `kernels/<name>.cu`.
    pub name: &'static str,
    /// Fatbin compiled by nvcc at build time, if nvcc was found.
    pub fatbin: Option<&'static [u8]>,
    /// The CUDA source (headers not yet inlined).
    pub source: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/redreg_kernels.rs"));

/// True when this build embeds nvcc-compiled fatbins (else NVRTC compiles at run time).
pub const PREBUILT_KERNELS: bool = cfg!(redreg_prebuilt_kernels);

/// Element types of the CUDA backend: f32, f16, bf16 (cudarc's `f16` feature makes the
/// `half` types device-representable).
pub trait CudaElement: Element + DeviceRepr + ValidAsZeroBits {}
impl CudaElement for f32 {}
impl CudaElement for half::f16 {}
impl CudaElement for half::bf16 {}

/// File names under which cudarc's loader looks for the driver library (a subset of its
/// candidates: the ones that exist on Linux and Windows installs).
const DRIVER_LIBS: &[&str] = &["libcuda.so", "libcuda.so.1", "nvcuda.dll"];
/// The same for NVRTC. Only names cudarc (built for CUDA 12.8) also tries: it does not
/// look for `libnvrtc.so.13`, so a 13.x NVRTC needs a `libnvrtc.so` link (the installer
/// script makes one); a probe that accepted `.so.13` would let cudarc panic later.
const NVRTC_LIBS: &[&str] = &[
    "libnvrtc.so",
    "libnvrtc.so.12",
    "libnvrtc.so.11",
    "nvrtc64_120_0.dll",
    "nvrtc64_12.dll",
];

/// Whether one of `names` can be opened by the dynamic loader. Our own probe rather than
/// cudarc's `is_culib_present`, which exists only with cudarc's `dynamic-loading`: when
/// candle's `cuda` feature is on, cudarc is built with `dynamic-linking` instead (then the
/// library was loaded with the program and the probe finds it at once).
fn lib_present(names: &[&str]) -> bool {
    names.iter().any(|name| {
        // SAFETY: opening a CUDA library runs only its initialisers, which make no driver
        // call; the handle is closed again at once.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// `Ok(())` when the CUDA driver library loads and reports at least one device; otherwise
/// the reason, as text. Never panics (cudarc's own panics are caught as well).
pub fn cuda_available() -> std::result::Result<(), String> {
    if !lib_present(DRIVER_LIBS) {
        return Err("the CUDA driver library (libcuda.so.1) was not found".into());
    }
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("the CUDA driver reports no device".into()),
        Ok(Err(e)) => Err(format!("CUDA driver initialisation failed: {e}")),
        Err(_) => Err("the CUDA driver panicked during initialisation".into()),
    }
}

/// `Ok(())` when the NVRTC library can be loaded (no GPU needed).
pub fn nvrtc_available() -> std::result::Result<(), String> {
    if lib_present(NVRTC_LIBS) {
        Ok(())
    } else {
        Err("the NVRTC library (libnvrtc.so) was not found; put it on LD_LIBRARY_PATH".into())
    }
}

/// Names of the embedded kernel modules (`kernels/*.cu` file stems).
pub fn module_names() -> Vec<&'static str> {
    MODULES.iter().map(|m| m.name).collect()
}

/// The source of module `name` with every `#include "<header>.cuh"` line of `kernels/`
/// replaced by the header's text (NVRTC has no file system).
pub fn inlined_source(name: &str) -> Result<String> {
    let m = MODULES
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::CudaUnavailable(format!("no kernel module named {name:?}")))?;
    let mut done = Vec::new();
    let mut src = String::new();
    inline_into(&mut src, m.source, &mut done, 0);
    Ok(src)
}

/// Appends `text` to `dst`, replacing each line that is exactly `#include "<h>"` for a
/// header `h` of `kernels/` by the header's text (recursively, each header once, like
/// `#pragma once`). Other lines, comments included, are copied unchanged.
fn inline_into(dst: &mut String, text: &str, done: &mut Vec<&'static str>, depth: usize) {
    for line in text.lines() {
        let t = line.trim();
        let inc = t
            .strip_prefix("#include")
            .map(str::trim)
            .and_then(|r| r.strip_prefix('"'))
            .and_then(|r| r.strip_suffix('"'));
        if let Some(h) = inc.and_then(|n| HEADERS.iter().find(|(name, _)| *name == n)) {
            if !done.contains(&h.0) && depth < 16 {
                done.push(h.0);
                inline_into(dst, h.1, done, depth + 1);
            }
            continue;
        }
        dst.push_str(line);
        dst.push('\n');
    }
}

/// Compiles module `name`'s embedded source with NVRTC for `arch` (e.g. `"compute_90"`)
/// and returns the PTX text. Needs libnvrtc but no GPU (used by `scripts/check-kernels.sh`).
pub fn nvrtc_compile(name: &str, arch: &str) -> Result<String> {
    nvrtc_available().map_err(Error::CudaUnavailable)?;
    let src = inlined_source(name)?;
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-DREDREG_NVRTC=1".into(),
        ],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    let ptx = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(&src, opts))
        .map_err(|_| Error::CudaUnavailable("NVRTC panicked".into()))?
        .map_err(|e| Error::CudaUnavailable(format!("NVRTC failed on {name}.cu: {e:?}")))?;
    Ok(ptx.to_src())
}

pub(crate) fn drv(e: cudarc::driver::DriverError) -> Error {
    Error::Cuda(e.to_string())
}

/// The CUDA backend: one context and stream, its loaded modules, and per-layout device
/// workspaces (chunk-task table, partial sums, coefficients, ranks) kept across calls, so
/// a training step allocates nothing on the device after the first call with a layout.
///
/// All operations are asynchronous on [`CudaBackend::stream`] unless documented otherwise.
/// Buffers passed in must belong to the same context. The backend is `Send + Sync`
/// (internal state behind mutexes); calls from several threads serialise on the workspace.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cc: (i32, i32),
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    pub(crate) workspaces: Mutex<HashMap<Segments, project::Workspace>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.ctx.ordinal())
            .field("compute_capability", &self.cc)
            .field("prebuilt_kernels", &PREBUILT_KERNELS)
            .finish()
    }
}

impl CudaBackend {
    /// A backend on device `ordinal`, using that device's default stream.
    /// `Err(CudaUnavailable)` without driver or device.
    pub fn new(ordinal: usize) -> Result<Self> {
        cuda_available().map_err(Error::CudaUnavailable)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| {
            Error::CudaUnavailable(format!("cannot create a context on device {ordinal}: {e}"))
        })?;
        let stream = ctx.default_stream();
        Self::from_stream(stream)
    }

    /// A backend that runs on an existing stream (for example a trainer's), sharing its
    /// context.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        cuda_available().map_err(Error::CudaUnavailable)?;
        let ctx = stream.context().clone();
        let cc = ctx.compute_capability().map_err(drv)?;
        Ok(Self {
            ctx,
            stream,
            cc,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            workspaces: Mutex::new(HashMap::new()),
        })
    }

    /// `Err` unless `buf` was allocated in this backend's context: a buffer of another
    /// context (another device) would make the kernel read an invalid address.
    pub fn check_context<T, B: cudarc::driver::DeviceSlice<T>>(
        &self,
        name: &'static str,
        buf: &B,
    ) -> Result<()> {
        let other = buf.stream().context();
        if other.cu_ctx() == self.ctx.cu_ctx() {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                name,
                reason: format!(
                    "buffer belongs to the CUDA context of device {}, the backend runs on device {}",
                    other.ordinal(),
                    self.ctx.ordinal()
                ),
            })
        }
    }

    /// The stream every operation is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Compute capability (major, minor) of the device.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// Waits for all work queued on the backend's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv)
    }

    /// Loads module `name` (once; later calls return the cached module).
    pub fn module(&self, name: &str) -> Result<Arc<CudaModule>> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(name) {
            return Ok(m.clone());
        }
        let km = MODULES
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::CudaUnavailable(format!("no kernel module named {name:?}")))?;
        let force_nvrtc = std::env::var_os("REDREG_FORCE_NVRTC").is_some();
        let mut fatbin_err = None;
        if let (Some(fb), false) = (km.fatbin, force_nvrtc) {
            match self
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(fb.to_vec()))
            {
                Ok(m) => {
                    mods.insert(km.name, m.clone());
                    return Ok(m);
                }
                Err(e) => fatbin_err = Some(e.to_string()),
            }
        }
        let arch = format!("compute_{}{}", self.cc.0, self.cc.1);
        let ptx = nvrtc_compile(name, &arch).map_err(|e| match &fatbin_err {
            Some(f) => Error::CudaUnavailable(format!("prebuilt fatbin did not load ({f}); {e}")),
            None => e,
        })?;
        let m = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| Error::CudaUnavailable(format!("loading NVRTC PTX of {name}: {e}")))?;
        mods.insert(km.name, m.clone());
        Ok(m)
    }

    /// Kernel `func` of module `module` (loaded and cached on first use).
    pub fn function(&self, module: &str, func: &str) -> Result<CudaFunction> {
        let key = format!("{module}/{func}");
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(f.clone());
        }
        let m = self.module(module)?;
        let f = m
            .load_function(func)
            .map_err(|e| Error::Cuda(format!("kernel {func} in module {module}: {e}")))?;
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, f.clone());
        Ok(f)
    }
}
