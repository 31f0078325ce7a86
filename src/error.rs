//! The crate's one error type.
//!
//! Every check on user input returns one of these variants with the offending numbers in
//! the message, so a trainer's log says what was wrong without a debugger.

/// Everything that can go wrong in `redreg`.
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

    /// CUDA is not usable: no driver library, no device, the crate was built without the
    /// `cuda` feature, or kernel compilation failed.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),

    /// An error reported by the CUDA driver or NVRTC.
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// A configuration value that makes no sense (controller, plans).
    #[error("invalid config `{name}`: {reason}")]
    Config {
        /// Which field.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
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
