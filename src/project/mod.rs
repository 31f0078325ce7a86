//! The projection, one operation in one place: its arguments ([`Projection`]), the f64
//! oracle ([`mod@reference`]), the shared per-segment solve, the CPU kernels and the CUDA
//! wrapper (the kernels are `kernels/project.cu`).

mod args;
mod cpu;
mod cpu_kernels;
#[cfg(feature = "cuda")]
mod cuda;
pub mod reference;
pub(crate) mod solve;

pub use args::*;
pub(crate) use args::{check_k, check_orthonormalize, check_tol, BasisRef};
pub(crate) use cpu::{local, solve_chunks, step_groups, ChunkPartial};
pub(crate) use cpu_kernels::chunk_partial;
#[cfg(all(feature = "cuda", feature = "testing"))]
pub(crate) use cuda::project_kernel_names;
#[cfg(feature = "cuda")]
pub use cuda::CudaProjection;
#[cfg(feature = "cuda")]
pub(crate) use cuda::Workspaces;
pub use reference::Reference;
