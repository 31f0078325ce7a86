//! The crate's one error type.
//!
//! Every check on user input returns one of these variants with the offending numbers in
//! the message, so a trainer's log says what was wrong without a debugger.

/// Everything that can go wrong in `redreg`.
///
/// Errors of the libraries underneath (the CUDA driver, NVRTC, candle) are kept as the
/// variant's `source` ([`std::error::Error::source`]), with what was being done in the
/// message; the message also repeats the source's own text, so that a log line of
/// `{error}` alone says what went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A segment layout that is not a valid partition (offsets not monotone, first offset
    /// not 0, a length sum that overflows `usize`).
    #[error("invalid segments: {0}")]
    InvalidSegments(String),

    /// A buffer whose length does not match what the segments (or a shape) require.
    #[error("length mismatch for `{name}`: expected {expected} elements, got {got}")]
    LengthMismatch {
        /// Which argument.
        name: &'static str,
        /// What the layout requires.
        expected: usize,
        /// What was passed.
        got: usize,
    },

    /// A wrong number of basis vectors, per-segment values or partial sums.
    #[error("count mismatch for `{name}`: expected {expected}, got {got}")]
    CountMismatch {
        /// Which argument.
        name: &'static str,
        /// What is required.
        expected: usize,
        /// What was passed.
        got: usize,
    },

    /// An argument outside its documented domain (a negative tolerance, k above the
    /// supported maximum, a NaN scalar, ...).
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Which argument.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// A byte buffer that cannot be viewed as the requested element type (length not a
    /// multiple of the element size, or misaligned).
    #[error("cannot cast byte buffer `{name}` of {len} bytes to {dtype}: {reason}")]
    Cast {
        /// Which argument.
        name: &'static str,
        /// Length of the byte buffer.
        len: usize,
        /// Requested element type.
        dtype: &'static str,
        /// What bytemuck reported.
        reason: String,
    },

    /// A class label outside `0..num_classes` seen by a statistics run.
    #[error("label out of range in `{name}`: row {row} has label {label}, but there are {classes} classes")]
    LabelOutOfRange {
        /// Which statistic.
        name: String,
        /// First offending row.
        row: usize,
        /// The label found there.
        label: i64,
        /// Number of classes.
        classes: usize,
    },

    /// CUDA is not usable: no driver library, no device, no NVRTC library where one is
    /// needed, or the crate was built without the `cuda` feature. The one variant for "this
    /// machine cannot run CUDA": a test or a trainer may skip or fall back on it. A kernel
    /// that fails to load is [`Error::Kernel`]; a driver call that fails is
    /// `Error::Driver` (feature `cuda`).
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),

    /// A CUDA driver call failed. `source` is the driver's error code (match on
    /// `source.0`, a `CUresult`); `context` says what was being done.
    #[cfg(feature = "cuda")]
    #[error("CUDA driver error while {context}: {source}")]
    Driver {
        /// What was being done (`"creating a context on device 3"`, `"a driver call"`).
        context: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// NVRTC could not compile a kernel module's embedded source (the log, when there is
    /// one, is in `source`: `CompileError::CompileError { log, .. }`).
    #[cfg(feature = "cuda")]
    #[error("NVRTC failed on {module}.cu ({target}): {}", nvrtc_message(.source))]
    Nvrtc {
        /// The module (`kernels/<module>.cu`).
        module: String,
        /// What was compiled: `"ptx, compute_90"`, `"cubin, sm_90"`.
        target: String,
        /// NVRTC's error.
        #[source]
        source: cudarc::nvrtc::CompileError,
    },

    /// A kernel module that does not exist or could not be loaded on this device by any
    /// path (fatbin, NVRTC cubin, NVRTC PTX): the driver and the device are there, the
    /// kernels are not usable. `reason` lists every path's failure; `source` is the last
    /// one's error (an [`Error`]: `Error::Driver`, `Error::Nvrtc`, ...), when there is
    /// one.
    #[error("kernel module `{module}` could not be loaded: {reason}")]
    Kernel {
        /// The module (`kernels/<module>.cu`).
        module: String,
        /// Why, for each path tried.
        reason: String,
        /// The last failure.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },

    /// A kernel function that a loaded module does not provide (`cuModuleGetFunction`
    /// failed, usually `CUDA_ERROR_NOT_FOUND`).
    #[cfg(feature = "cuda")]
    #[error("kernel `{function}` of module `{module}` could not be loaded: {source}")]
    KernelFunction {
        /// The module.
        module: String,
        /// The kernel's name.
        function: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// A CUDA failure that the driver did not report as an error code (cudarc panicked, an
    /// internal invariant of the crate).
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// An NCCL call failed (feature `nccl`). `error.0` is NCCL's `ncclResult_t`. (cudarc's
    /// `NcclError` does not implement `std::error::Error`, so it is a field, not a
    /// `source`.)
    #[cfg(feature = "nccl")]
    #[error("NCCL error while {context}: {:?}", .error.0)]
    Nccl {
        /// What was being done.
        context: String,
        /// NCCL's error.
        error: cudarc::nccl::result::NcclError,
    },

    /// A candle operation failed (feature `candle`); `source` is candle's error.
    #[cfg(feature = "candle")]
    #[error("candle error in `{context}`: {source}")]
    Candle {
        /// What was being done (the argument or step of the adapter).
        context: &'static str,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },

    /// A configuration value that makes no sense (controller, plans).
    #[error("invalid config `{name}`: {reason}")]
    Config {
        /// Which field.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

/// Candle's errors convert with the context `"candle"`, so that code mixing candle calls
/// and redreg calls can use `?` on both; the adapter (`redreg::candle`) names what it was
/// doing instead.
#[cfg(feature = "candle")]
impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Candle {
            context: "candle",
            source,
        }
    }
}

impl Error {
    /// An [`Error::Driver`] for a failed driver call while doing `context`.
    #[cfg(feature = "cuda")]
    pub(crate) fn driver(context: impl Into<String>, source: cudarc::driver::DriverError) -> Self {
        Error::Driver {
            context: context.into(),
            source,
        }
    }
}

/// NVRTC's message: the error code, and the compiler log when there is one (cudarc's own
/// `Display` is its `Debug`, with the log as an escaped C string).
#[cfg(feature = "cuda")]
fn nvrtc_message(e: &cudarc::nvrtc::CompileError) -> String {
    use cudarc::nvrtc::CompileError as C;
    match e {
        C::CompileError { nvrtc, log, .. } => {
            format!("{nvrtc:?}: {}", log.to_string_lossy().trim_end())
        }
        C::CreationError(n) => format!("creating the program: {n:?}"),
        C::GetLogError(n) => format!("getting the log: {n:?}"),
        C::GetPtxError(n) => format!("getting the output: {n:?}"),
        C::DestroyError(n) => format!("destroying the program: {n:?}"),
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Returns `Err(LengthMismatch)` unless `got == expected`.
pub(crate) fn check_len(name: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            name,
            expected,
            got,
        })
    }
}

/// Returns `Err(CountMismatch)` unless `got == expected`.
pub(crate) fn check_count(name: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::CountMismatch {
            name,
            expected,
            got,
        })
    }
}

/// Shorthand for an [`Error::InvalidArgument`].
pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name,
        reason: reason.into(),
    }
}
