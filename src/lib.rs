//! # redreg
//!
//! Kernels for RedReg (balanced multimodal training by adaptive redundancy regulation):
//! the batched projection of a gradient or parameter drift onto the orthogonal complement
//! of the joint-gradient subspace, for every parameter tensor of a model at once, and the
//! fused per-step redundancy statistics — on CUDA (feature `cuda`) and on the CPU.
//!
//! Start with [`Segments`] (the model's tensor layout), then [`Backend`] — the one
//! interface of [`CpuBackend`], `CudaBackend` and [`Reference`] (the f64 oracle every
//! backend is tested against) — and its arguments, [`Projection`].
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod abi;
pub mod backend;
#[cfg(feature = "candle")]
pub mod candle;
pub mod controller;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dist;
pub mod dtype;
pub mod error;
pub mod project;
pub mod segments;
pub mod stats;
pub mod sum;
pub mod testing;

pub use backend::{Backend, Host, ListProjectionOf, Memory, RankList};
pub use cpu::CpuBackend;
pub use dtype::{cast_bytes, cast_bytes_mut, DType, Element};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use project::{reference, reference::Reference, solve};
pub use project::{Beta, Buffer, Output, Partials, ProjectOptions, Projection, TensorList};
pub use segments::Segments;

/// The README's code blocks are compiled and run as doc tests (they use the CUDA API too,
/// hence only with the default feature `cuda`).
#[cfg(all(doctest, feature = "cuda"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
