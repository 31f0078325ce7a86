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

// The whole table is read by `build.rs` and `redreg::testing::abi`; the crate reads part.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
mod abi;
mod backend;
#[cfg(feature = "candle")]
pub mod candle;
pub mod controller;
mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dist;
mod dtype;
mod error;
pub mod optim;
pub mod project;
mod segments;
pub mod stats;
mod sum;
#[cfg(feature = "testing")]
pub mod testing;

pub use backend::{Backend, Dst, Host, ListProjectionOf, Memory, ProjectionOf, RankList, Src};
pub use cpu::CpuBackend;
pub use dtype::{cast_bytes, cast_bytes_mut, DType, Element};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use project::{
    reference, Beta, Buffer, Implicit, Output, Partials, ProjectOptions, Projection, Reference,
    TensorList,
};
pub use segments::Segments;

/// The README's code blocks are compiled and run as doc tests (they use the CUDA API too,
/// hence only with the default feature `cuda`).
#[cfg(all(doctest, feature = "cuda"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/distributed.md's code blocks, compiled (and run) as doc tests so they cannot drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../docs/distributed.md")]
pub struct DistributedDoctests;

/// docs/candle.md's code blocks are compiled and run as doc tests (they use candle).
#[cfg(all(doctest, feature = "candle"))]
#[doc = include_str!("../docs/candle.md")]
pub struct CandleMdDoctests;
