//! CUDA backend (feature `cuda`): kernels from `kernels/*.cu`, wrappers on cudarc.
