//! CUDA backend (feature `cuda`): the kernels of `kernels/*.cu`, wrapped with cudarc.
//!
//! # Loading
//! `build.rs` compiles every `kernels/<name>.cu` to a fatbin (SASS for `CUDA_COMPUTE_CAP`,
//! PTX of the lowest arch) when nvcc is found, and always embeds the sources. A module is
//! loaded once per [`CudaBackend`], on first use: the prebuilt fatbin if there is one (and
//! `REDREG_FORCE_NVRTC` is unset), else — or when the fatbin does not load on this GPU —
//! the embedded source compiled by NVRTC to a cubin for the device (`sm_XY`, no driver
//! JIT), else to PTX (`compute_XY`). [`CudaBackend::kernel_source`] says which path was
//! taken ([`KernelPath`]; order and overrides in `src/cuda/loading.rs`). Modules are
//! cached by name and functions by name, so a new `kernels/foo.cu` is used with
//! `backend.function("foo", "foo_kernel_f32")` and nothing else.
//!
//! Every constant the kernels share with this crate (chunk size, threads per block, modes,
//! table layouts) comes from the one ABI table (`src/abi.rs`): the kernels include the header `build.rs`
//! generates from it (`redreg_abi.cuh`, on nvcc's include path, inlined for NVRTC).
//!
//! # Probing
//! cudarc panics when libcuda is missing; every entry point here first calls
//! [`cuda_available`] (which probes for the driver library before any driver call) and returns
//! [`Error::CudaUnavailable`] instead.
//!
//! # Errors
//! [`Error::CudaUnavailable`]: no driver library or no device (the one case to skip or fall
//! back on). [`Error::Driver`]: a driver call failed (`source`: cudarc's `DriverError`).
//! [`Error::Kernel`]: a kernel module is unknown or loads by no path;
//! [`Error::KernelFunction`]: a loaded module lacks a kernel; [`Error::Nvrtc`]: NVRTC
//! rejected a source (`source`: cudarc's `CompileError`).
//!
//! # Operations
//! [`CudaBackend`] implements [`crate::Backend`] on cudarc views ([`CudaProjection`];
//! module `project`, `kernels/project.cu`, wrapped in `src/project/cuda.rs`).

mod checks;
mod foreign;
mod loading;
mod ranks;

pub(crate) use crate::project::project_kernel_names;
pub use crate::project::CudaProjection;
/// The cudarc this crate is built against (0.19.10), so users name the same types.
pub use cudarc;
pub use foreign::ForeignSlice;
pub use loading::{nvrtc_compile_cubin, KernelPath};
pub use ranks::DeviceRanks;

pub(crate) use checks::{
    byte_range, check_buffer_context, check_list_alias, check_no_alias, ByteRange,
};

use crate::dtype::Element;
use crate::error::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, CudaView, CudaViewMut, DeviceSlice,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Elements per chunk task (one thread block) and threads per block of the chunk kernels:
/// the kernels' `RR_CHUNK` and `RR_THREADS`, from the one ABI table (`src/abi.rs`).
pub use crate::abi::{CHUNK, THREADS};

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

/// Device memory: cudarc views ([`crate::Memory`] of [`CudaBackend`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Device;

impl crate::backend::Memory for Device {
    type Src<'a, T: 'a> = CudaView<'a, T>;
    type Dst<'a, T: 'a> = CudaViewMut<'a, T>;

    fn share<'b, 'a: 'b, T>(s: &'b CudaView<'a, T>) -> CudaView<'b, T> {
        s.slice(..)
    }

    fn reborrow<'b, 'a: 'b, T>(d: &'b mut CudaViewMut<'a, T>) -> CudaViewMut<'b, T> {
        d.slice_mut(..)
    }

    fn view<'b, 'a: 'b, T>(d: &'b CudaViewMut<'a, T>) -> CudaView<'b, T> {
        d.as_view()
    }
}

impl<T> crate::project::Buffer for CudaView<'_, T> {
    fn len(&self) -> usize {
        DeviceSlice::len(self)
    }
}

impl<T> crate::project::Buffer for CudaViewMut<'_, T> {
    fn len(&self) -> usize {
        DeviceSlice::len(self)
    }
}

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
/// (and of the generated `redreg_abi.cuh`) replaced by the header's text (NVRTC has no file
/// system).
pub fn inlined_source(name: &str) -> Result<String> {
    let m = MODULES
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| unknown_module(name))?;
    let mut done = Vec::new();
    let mut src = String::new();
    inline_into(&mut src, m.source, &mut done, 0);
    Ok(src)
}

/// The [`Error::Kernel`] for a module name that `kernels/` does not have.
fn unknown_module(name: &str) -> Error {
    Error::Kernel {
        module: name.to_string(),
        reason: format!(
            "no kernel module of that name (embedded: {})",
            module_names().join(", ")
        ),
        source: None,
    }
}

/// Appends `text` to `dst`, replacing each line that is exactly `#include "<h>"` for a
/// header `h` of `kernels/` or the generated ABI header by the header's text (recursively,
/// each header once, like `#pragma once`). Other lines, comments included, are copied
/// unchanged.
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
        .map_err(|source| Error::Nvrtc {
            module: name.to_string(),
            target: format!("ptx, {arch}"),
            source,
        })?;
    Ok(ptx.to_src())
}

/// A failed driver call as [`Error::Driver`] (the context says only "a driver call"; prefer
/// [`drv_ctx`] where the call site can say what it was doing).
pub(crate) fn drv(e: cudarc::driver::DriverError) -> Error {
    Error::driver("a driver call", e)
}

/// [`drv`] with what was being done: `.map_err(drv_ctx("copying the ranks to the host"))`.
pub(crate) fn drv_ctx(context: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::driver(context, e)
}

/// The CUDA backend: one context and stream, its loaded modules, and per-layout device
/// scratch workspaces (chunk-task table, partial sums, coefficients) kept across calls, so
/// a training step allocates only each call's small [`DeviceRanks`] (4 bytes per segment)
/// on the device after the first call with a layout. No result is kept in the backend:
/// each call returns its own ranks, so concurrent calls with one layout do not interfere.
///
/// All operations are asynchronous on [`CudaBackend::stream`] unless documented otherwise.
/// Buffers passed in must belong to the same context. The backend is `Send + Sync`
/// (internal state behind mutexes); calls from several threads serialise on the workspace.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    cc: (i32, i32),
    modules: Mutex<HashMap<&'static str, (Arc<CudaModule>, KernelPath)>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    pub(crate) workspaces: Mutex<crate::project::Workspaces>,
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
    /// `Err(CudaUnavailable)` without driver or device; [`Error::Driver`] when the driver
    /// refuses a context on `ordinal` (for example `CUDA_ERROR_INVALID_DEVICE`: there are
    /// fewer devices).
    pub fn new(ordinal: usize) -> Result<Self> {
        cuda_available().map_err(Error::CudaUnavailable)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::driver(format!("creating a context on device {ordinal}"), e))?;
        let stream = ctx.default_stream();
        Self::from_stream(stream)
    }

    /// A backend that runs on an existing stream (for example a trainer's), sharing its
    /// context.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        cuda_available().map_err(Error::CudaUnavailable)?;
        let ctx = stream.context().clone();
        let cc = ctx
            .compute_capability()
            .map_err(drv_ctx("reading the compute capability"))?;
        Ok(Self {
            ctx,
            stream,
            cc,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            workspaces: Mutex::new(crate::project::Workspaces::default()),
        })
    }

    /// `Err` unless `buf` was allocated in this backend's context: a buffer of another
    /// context (another device) would make the kernel read an invalid address.
    pub fn check_context<T, B: cudarc::driver::DeviceSlice<T>>(
        &self,
        name: &'static str,
        buf: &B,
    ) -> Result<()> {
        checks::check_buffer_context(&self.ctx, name, buf)
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
        self.stream
            .synchronize()
            .map_err(drv_ctx("synchronizing the stream"))
    }

    /// Loads module `name` (once; later calls return the cached module): the fatbin, else
    /// an NVRTC cubin for this device, else NVRTC PTX (see [`KernelPath`]).
    pub fn module(&self, name: &str) -> Result<Arc<CudaModule>> {
        Ok(self.load(name)?.0)
    }

    /// How module `name` was loaded (loading it first if needed): `"fatbin"`,
    /// `"nvrtc-cubin"` or `"nvrtc-ptx"` ([`KernelPath::as_str`]).
    pub fn kernel_source(&self, name: &str) -> Result<&'static str> {
        Ok(self.load(name)?.1.as_str())
    }

    fn load(&self, name: &str) -> Result<(Arc<CudaModule>, KernelPath)> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(name) {
            return Ok(m.clone());
        }
        let km = MODULES
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| unknown_module(name))?;
        let (fatbin_ok, cubin_ok) = loading::allowed_paths();
        // Each path's failure: what it was, and the typed error when there is one (the
        // last one becomes the `source` of the `Error::Kernel`).
        let mut failures: Vec<(String, Option<Error>)> = Vec::new();
        let load_bin = |bytes: Vec<u8>, what: &str| {
            self.ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(bytes))
                .map_err(|e| Error::driver(format!("loading the {what} of {name}"), e))
        };
        let mut found = None;
        match (km.fatbin, fatbin_ok) {
            (Some(fb), true) => match load_bin(fb.to_vec(), "prebuilt fatbin") {
                Ok(m) => found = Some((m, KernelPath::Fatbin)),
                Err(e) => failures.push(("prebuilt fatbin did not load".into(), Some(e))),
            },
            (Some(_), false) => failures.push(("fatbin skipped (REDREG_FORCE_NVRTC)".into(), None)),
            (None, _) => failures.push(("no prebuilt fatbin (built without nvcc)".into(), None)),
        }
        if found.is_none() && cubin_ok {
            let arch = format!("sm_{}{}", self.cc.0, self.cc.1);
            match loading::nvrtc_compile_cubin(name, &arch) {
                Ok(cubin) => match load_bin(cubin, &format!("NVRTC cubin for {arch}")) {
                    Ok(m) => found = Some((m, KernelPath::NvrtcCubin)),
                    Err(e) => {
                        failures.push((format!("NVRTC cubin for {arch} did not load"), Some(e)))
                    }
                },
                Err(e) => failures.push(("NVRTC cubin".into(), Some(e))),
            }
        }
        if found.is_none() {
            let arch = format!("compute_{}{}", self.cc.0, self.cc.1);
            match nvrtc_compile(name, &arch) {
                Ok(ptx) => match self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)) {
                    Ok(m) => found = Some((m, KernelPath::NvrtcPtx)),
                    Err(e) => failures.push((
                        format!(
                            "NVRTC PTX for {arch} did not load (a driver older than the NVRTC \
                             cannot JIT its PTX)"
                        ),
                        Some(Error::driver(format!("loading the NVRTC PTX of {name}"), e)),
                    )),
                },
                Err(e) => failures.push(("NVRTC PTX".into(), Some(e))),
            }
        }
        let Some(found) = found else {
            let reason = failures
                .iter()
                .map(|(what, e)| match e {
                    Some(e) => format!("{what} ({e})"),
                    None => what.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ");
            let source = failures
                .into_iter()
                .filter_map(|(_, e)| e)
                .last()
                .map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            return Err(Error::Kernel {
                module: name.to_string(),
                reason,
                source,
            });
        };
        mods.insert(km.name, found.clone());
        Ok(found)
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
            .map_err(|source| Error::KernelFunction {
                module: module.to_string(),
                function: func.to_string(),
                source,
            })?;
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, f.clone());
        Ok(f)
    }
}
