//! Data-parallel and sharded training: what to all-reduce, through any
//! collective engine that can sum a contiguous `f64` buffer.
//!
//! - **Data parallel** (every rank a slice of the batch): the statistics plan's results as
//!   sums and counts ([`crate::stats::ReducibleStats`]), all-reduced once per step, give
//!   every rank the same [`crate::controller::StepInputs`]
//!   ([`crate::controller::RedRegStats::from_reduced`]) — the ones one process computes on
//!   the whole batch — hence the same decision everywhere.
//! - **Sharded parameters** (every rank a slice of every tensor): the split form's partials
//!   ([`crate::Partials`], all tensors in one buffer) all-reduced once between pass 1 and
//!   pass 2 ([`project_sharded`]) — equal to the unsharded projection.
//!
//! The engine is the one-method trait [`AllReduce`]: an MPI adapter (`MpiComm`, feature
//! `mpi`), an NCCL adapter (`NcclComm`, feature `nccl`), an in-process group of threads
//! ([`ThreadGroup`], for tests and single-node use), or a few lines over a trainer's own.
//! See `docs/distributed.md`.
//!
//! # Lengths are checked collectively
//! A collective with mismatched lengths hangs or corrupts memory in most engines. The
//! provided [`AllReduce::all_reduce_sum_checked`] first all-reduces a fixed-size header
//! (9 values, whatever the buffer) from which every rank sees whether all lengths agree;
//! if not, **every** rank returns `Err` and nobody reduces the payload.

mod local;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod sharded;

pub use local::ThreadGroup;
#[cfg(feature = "mpi")]
pub use mpi::MpiComm;
#[cfg(feature = "nccl")]
pub use nccl::NcclComm;
pub use sharded::project_sharded;

use crate::error::{invalid, Result};

/// An all-reduce-sum over a group of ranks. Every rank of the group calls the methods in
/// the same order (they are collectives).
pub trait AllReduce {
    /// Replaces `buf` on every rank by the element-wise sum over all ranks of their `buf`.
    /// Every rank must pass the same length (use
    /// [`AllReduce::all_reduce_sum_checked`] unless the lengths are known to agree).
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()>;

    /// [`AllReduce::all_reduce_sum`] after [`check_same_len`]: a rank whose `buf` has
    /// another length than some other rank's makes the call return `Err` on every rank,
    /// and no rank reduces `buf` (it is left unchanged).
    fn all_reduce_sum_checked(&self, buf: &mut [f64]) -> Result<()> {
        check_same_len(self, buf.len())?;
        self.all_reduce_sum(buf)
    }
}

impl<A: AllReduce + ?Sized> AllReduce for &A {
    fn all_reduce_sum(&self, buf: &mut [f64]) -> Result<()> {
        (**self).all_reduce_sum(buf)
    }
}

/// 16-bit limbs of a `u64` (exact in f64, and so are their sums and squares over up to
/// 2^20 ranks).
const LIMBS: usize = 4;

fn limbs(x: u64) -> [f64; LIMBS] {
    std::array::from_fn(|i| ((x >> (16 * i)) & 0xffff) as f64)
}

/// Collectively: `Ok(true)` on every rank when every rank holds the same `values`, `Ok(false)`
/// on every rank otherwise (for `u64` values; use `f64::to_bits` to compare floats bit for
/// bit). Every rank must pass the same number of values. One all-reduce of
/// `1 + 8·values.len()` numbers, exact: per 16-bit limb `l`, all ranks agree iff
/// `n·Σl² = (Σl)²` (equality in Cauchy–Schwarz).
pub fn agree<A: AllReduce + ?Sized>(comm: &A, values: &[u64]) -> Result<bool> {
    let mut buf = vec![0.0f64; 1 + 2 * LIMBS * values.len()];
    buf[0] = 1.0;
    for (v, out) in values.iter().zip(buf[1..].chunks_exact_mut(2 * LIMBS)) {
        for (i, l) in limbs(*v).into_iter().enumerate() {
            out[2 * i] = l;
            out[2 * i + 1] = l * l;
        }
    }
    comm.all_reduce_sum(&mut buf)?;
    let n = buf[0];
    if !(n >= 1.0 && n <= (1u64 << 20) as f64 && n.fract() == 0.0) {
        return Err(invalid(
            "all-reduce",
            format!("the group size came back as {n}: the engine did not sum the header"),
        ));
    }
    let n = n as u128;
    Ok(buf[1..].chunks_exact(2).all(|p| {
        let (s, s2) = (p[0] as u128, p[1] as u128);
        n * s2 == s * s
    }))
}

/// Collectively: `Ok` when every rank passes the same `len`, `Err` on **every** rank
/// otherwise. One all-reduce of 9 numbers whatever `len` ([`agree`]), so a mismatch cannot
/// hang the group.
pub fn check_same_len<A: AllReduce + ?Sized>(comm: &A, len: usize) -> Result<()> {
    if agree(comm, &[len as u64])? {
        return Ok(());
    }
    Err(invalid(
        "all-reduce buffer",
        format!(
            "the ranks pass buffers of different lengths (this rank: {len}); did the ranks \
             declare different statistics, segments or k?"
        ),
    ))
}
