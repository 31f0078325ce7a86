//! Fused redundancy statistics: every per-step reduction of RedReg (the scores `p_m`, the
//! redundancy ratios' squared-difference means, the agreement `pos_sim`) declared once as a
//! plan and executed per step in one pass. A plan's batch size is a maximum: any batch of
//! 1 up to it runs (the last, smaller batch of an epoch). From candle,
//! `redreg::candle::RedReg` (feature `candle`) declares and runs it for you.
//!
//! # Use
//! ```
//! use redreg::stats::{CpuStats, StatHandle, Stats, StatsPlan, REDUNDANCY_EPS};
//! use redreg::{DType, Segments};
//! # fn main() -> redreg::Result<()> {
//! let segs = Segments::from_lengths(&[3, 2])?;
//! let mut plan = StatsPlan::new();
//! let num = plan.sq_diff_mean("z_a", DType::F32, 2, 2)?; // up to 2 rows of 2 features
//! let den = plan.sq_diff_mean("x_a", DType::F32, 2, 1)?;
//! let sim = plan.row_cos_mean("pos_sim", DType::F32, 2, 2)?;
//! let p_a = plan.true_prob_mean("p_a", DType::F32, 2, 3)?;
//! let fisher = plan.seg_sums("grad_a", DType::F32, &segs, true)?;
//! let drift = plan.seg_dots("drift.grad", DType::F32, &segs)?;
//! let mut exec = CpuStats::new(&plan)?; // all storage allocated here, once
//!
//! // Every step: bind the step's buffers through the handles (`StatHandle::bind`) and run.
//! let (z1, z2) = ([1.0f32, 2.0, 3.0, 4.0], [1.0f32, 2.0, 3.0, 5.0]);
//! let (x1, x2) = ([0.5f32, 0.5], [0.5f32, 0.0]);
//! let (fa, fv) = ([1.0f32, 0.0, 0.0, 1.0], [1.0f32, 0.0, 0.0, -1.0]);
//! let (logits, labels) = ([0.0f32, 0.0, 0.0, 1e4, 0.0, 0.0], [2i64, 0]);
//! let (g, d) = ([1.0f32, -2.0, 3.0, 4.0, 0.0], [1.0f32; 5]);
//! let mut acc = vec![0.0f32; 5];
//! let r = exec.run(&mut [
//!     num.bind((&z1, &z2)),
//!     den.bind((&x1, &x2)),
//!     sim.bind((&fa, &fv)),
//!     p_a.bind((&logits, &labels)),
//!     fisher.bind_acc(&g, &mut acc),
//!     drift.bind((&d, &g)),
//! ])?;
//! assert_eq!(r.get(num)?, 0.25);
//! assert_eq!(r.redundancy(num, den, REDUNDANCY_EPS)?, 0.25 / (0.125 + 1e-12));
//! assert_eq!(r.get(sim)?, 0.0); // (1 + -1) / 2
//! assert!((r.get(p_a)? - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
//! assert_eq!(r.get(fisher)?.sum_sq, &[14.0, 16.0]);
//! assert_eq!(r.get(drift)?, &[2.0, 4.0]);
//! # drop(r);
//! assert_eq!(acc, [1.0, 4.0, 9.0, 16.0, 0.0]);
//!
//! // The last, smaller batch (1 row of the 2 declared): the means over the rows given.
//! let r = exec.run(&mut [
//!     num.bind((&z1[..2], &z2[..2])),
//!     den.bind((&x1[..1], &x2[..1])),
//!     sim.bind((&fa[..2], &fv[..2])),
//!     p_a.bind((&logits[..3], &labels[..1])),
//!     fisher.bind_acc(&g, &mut acc),
//!     drift.bind((&d, &g)),
//! ])?;
//! assert_eq!(r.get(num)?, 0.0);
//! assert_eq!(r.get(sim)?, 1.0);
//! assert!((r.get(p_a)? - 1.0 / 3.0).abs() < 1e-12);
//! # Ok(()) }
//! ```
//!
//! # Statistics
//! All arithmetic is in f64 (inputs f32, f16 or bf16 are widened exactly).
//! - **squared-difference mean** `mean((x - y)^2)` over two buffers of equal length
//!   ([`StatsPlan::sq_diff_mean`]); [`StatsResults::redundancy`] / [`redundancy_ratio`]
//!   give the redundancy `mean((z1-z2)^2) / (mean((x1-x2)^2) + eps)`.
//! - **row cosine mean** `mean_i cos(a_i, b_i)` over two row-major B×D matrices. A row that
//!   is entirely zero (in either matrix) gives cosine **0** (PyTorch's `cosine_similarity`
//!   also gives 0 there; unlike it, no `eps` clamps tiny non-zero norms).
//! - **true-label probability mean** `mean_i softmax(logits_i)[label_i]`, B×C logits and B
//!   labels of type **`i64`** (PyTorch's class-index dtype, so a trainer passes its target
//!   tensor as is). Max-subtracted, stable for logits of any finite magnitude (1e4 and
//!   beyond); a row whose logits are all -Inf gives NaN. A label outside `0..C` (negative
//!   included) is never used as an index: the run finishes, the statistic reads NaN and
//!   `run` returns `Err(LabelOutOfRange)` naming the statistic, the first offending row and
//!   its label.
//! - **per-segment sums** Σx, Σx², Σ|x| over a buffer laid out by [`crate::Segments`]
//!   (empty segments give 0), optionally with `acc[e] = f32(f64(acc[e]) + x[e]^2)` on an
//!   f32 accumulator in the same pass ([`reference::acc_update`]; one rounding of the f64
//!   sum, identical on every backend).
//! - **per-segment dot products** ⟨x, y⟩.
//!
//! # Batch size
//! A row statistic (`sq_diff_mean`, `row_cos_mean`, `true_prob_mean`) is declared with the
//! largest number of rows it will see (the batch size); that maximum sizes every buffer an
//! executor allocates, once. Each run accepts any whole number of rows from 1 to it (the
//! last, smaller batch of an epoch) and gives the mean over the rows given — bit for bit the
//! result of a plan declared with exactly that many rows. More rows than declared, no
//! rows, or a length that is not a whole number of rows is an `Err` before anything runs.
//! The per-segment statistics keep their declared layout.
//!
//! The mean over zero elements (rows of zero elements) is NaN (as `torch.mean` of an
//! empty tensor).
//!
//! # Non-finite input
//! A NaN or ±Inf in an input makes NaN (or ±Inf) only the statistics that read that
//! element: the statistic's mean, the row's cosine (hence the mean), the row's
//! probability, or the one segment's sums/dot. Every other statistic of the same run —
//! including other segments of the same buffer — is unaffected. One exception by design:
//! a -Inf logit is a masked class (probability 0, as in PyTorch's softmax), not poison;
//! NaN and +Inf logits poison their row. A non-finite accumulator element follows IEEE
//! arithmetic in place.
//!
//! # Determinism
//! Results are bitwise identical run to run and for any number of rayon threads: the work
//! is split by a fixed table of [`STATS_CHUNK`]-element tasks, each task reduces in a fixed
//! order into its own slot, and the slots are combined sequentially in task order (see
//! [`cpu`]). The CPU result equals the sequential oracle ([`reference`](mod@reference)) up to f64
//! summation order (relative differences ~1e-15 of Σ|terms|).
//!
//! # Data-parallel ranks
//! [`ReducibleStats`] packs one run's results as sums and counts in one `f64` buffer;
//! summed over the ranks (an all-reduce, [`crate::dist`]) its
//! [`means`](ReducibleStats::means) are the results of the whole batch.
//!
//! # Memory
//! Inputs are [`Buf`]s of a memory family ([`crate::Memory`]): host slices
//! ([`crate::Host`], the default type parameter) for [`CpuStats`], cudarc views
//! (`redreg::cuda::Device`) for `CudaStats`. Every handle binds through the one
//! [`StatHandle::bind`], which takes the statistic's operands as one value ([`Operands`]:
//! `(x, y)`, `(logits, labels)`, or `x`), generic over the memory and inferred from the
//! buffers (`From` impls for `&[f32]`, `&Vec<f16>`, `&[bf16; N]`, `CudaView<T>`,
//! `&CudaSlice<T>`); labels are [`Labels`] (`&[i64]`, `CudaView<i64>`, …), the accumulator
//! of [`SegSums::bind_acc`] `&mut [f32]` / `CudaViewMut<f32>`. Both executors implement
//! [`Stats`], the only place their `plan`, `results` and `run` are defined: import the
//! trait to call them.
//!
//! # Validation
//! An input count, dtype, length, handle or accumulator mismatch is an `Err` that names the
//! statistic and the numbers, returned before anything is read or written; results are
//! read through typed handles (`Err` for a handle of another plan), never by panicking.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod plan;
mod reduce;
pub mod reference;

pub use cpu::CpuStats;
#[cfg(feature = "cuda")]
pub use cuda::CudaStats;
pub use plan::{
    redundancy_ratio, Buf, Input, Labels, Operands, RowCosMean, SegDots, SegSums, SegSumsRef,
    SqDiffMean, StatHandle, StatKind, StatsPlan, StatsResults, TrueProbMean, REDUNDANCY_EPS,
    STATS_CHUNK,
};
pub use reduce::ReducibleStats;

use crate::backend::Memory;
use crate::error::Result;

/// An executor of a [`StatsPlan`] on the buffers of one [`Memory`]: [`CpuStats`] on host
/// slices, (feature `cuda`) `CudaStats` on device views. Generic code (the candle binding,
/// [`crate::controller::RedRegStats::run`]) is written once over it.
pub trait Stats {
    /// Where the buffers it reads live.
    type Memory: Memory;

    /// The plan it runs.
    fn plan(&self) -> &StatsPlan;

    /// The results of the last run (NaN before the first).
    fn results(&self) -> &StatsResults;

    /// Executes every statistic of the plan on `inputs` (one per declared statistic, any
    /// order, each made by [`StatHandle::bind`]); a row statistic over the rows it is given
    /// (1 up to the declared number, see the module docs). Validation first: on a count,
    /// plan, dtype, shape or accumulator mismatch (on a device also: another context, an
    /// accumulator overlapping its input) nothing is read or written. Then everything runs
    /// (accumulators included); a label out of range gives `Err(LabelOutOfRange)` for the
    /// first such statistic (first offending row), whose mean reads NaN, while every other
    /// result in [`Stats::results`] is valid.
    fn run(&mut self, inputs: &mut [Input<'_, Self::Memory>]) -> Result<&StatsResults>;
}

macro_rules! with_buf {
    ($b:expr, |$x:ident| $body:expr) => {
        match $b {
            $crate::stats::Buf::F32($x) => $body,
            $crate::stats::Buf::F16($x) => $body,
            $crate::stats::Buf::BF16($x) => $body,
        }
    };
}

macro_rules! with_pair {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            ($crate::stats::Buf::F32($x), $crate::stats::Buf::F32($y)) => $body,
            ($crate::stats::Buf::F16($x), $crate::stats::Buf::F16($y)) => $body,
            ($crate::stats::Buf::BF16($x), $crate::stats::Buf::BF16($y)) => $body,
            _ => unreachable!("dtypes are validated before execution"),
        }
    };
}
pub(crate) use {with_buf, with_pair};
