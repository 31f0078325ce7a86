//! CPU backend.
/// CPU backend.
pub struct CpuBackend;
