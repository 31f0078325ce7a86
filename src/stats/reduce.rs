//! A plan's results as sums and counts, for an all-reduce across data-parallel ranks.
//!
//! [`StatsResults`] holds means, and a label fault as f64 bit patterns: summing those over
//! ranks is meaningless. [`ReducibleStats`] holds, in one `f64` buffer, what does sum:
//! per mean its numerator and denominator, per probability mean also a fault flag, and the
//! per-segment sums and dots as they are. After an element-wise sum over the ranks
//! ([`ReducibleStats::as_mut_slice`]), [`ReducibleStats::means`] gives the results one
//! process would compute on the whole batch (up to f64 summation order).

use super::plan::{no_fault, Decl, StatKind, StatsPlan, StatsResults};
use crate::error::{check_len, invalid, Result};

#[derive(Clone, Debug)]
struct Layout {
    kind: StatKind,
    name: String,
    /// Offset in the plan's results.
    res: usize,
    /// Offset in the reducible buffer.
    off: usize,
    /// Position in the plan.
    idx: usize,
    /// The mean's count per row of a run: elements per row for a squared-difference
    /// mean, 1 for the row means (0 for the per-segment statistics).
    per_row: usize,
    /// Values (segment statistics: as in the results).
    n: usize,
}

/// The sums and counts of one run of a [`StatsPlan`], packed in one `f64` buffer whose
/// element-wise sum over data-parallel ranks is the sums and counts of the whole batch.
///
/// Layout, statistic after statistic in declaration order:
/// - squared-difference mean, row cosine mean: `[sum, count]`;
/// - true-label probability mean: `[sum, rows, faults]`, `faults` = 1 on a rank whose run
///   saw a label out of range (then `sum` is NaN), else 0 — after the sum, the number of
///   such ranks;
/// - per-segment sums: `[Σx…, Σx²…, Σ|x|…]` (3 per segment); dots: one per segment.
///
/// Ranks must declare the same statistics in the same order; their batch sizes may differ
/// (uneven shards, a last short batch): each count is that of the rank's run, not the
/// declared maximum. The buffer's length then agrees, which
/// [`crate::dist::AllReduce::all_reduce_sum_checked`] verifies collectively.
#[derive(Clone, Debug)]
pub struct ReducibleStats {
    plan: u64,
    layout: Vec<Layout>,
    values: Vec<f64>,
    template: StatsResults,
}

impl ReducibleStats {
    /// Storage laid out for `plan` (all NaN until [`ReducibleStats::fill`]). Allocate it
    /// once and refill it every step.
    pub fn new(plan: &StatsPlan) -> Self {
        let mut off = 0;
        let layout = plan
            .entries
            .iter()
            .enumerate()
            .map(|(idx, e)| {
                let n = match &e.decl {
                    Decl::SqDiff { .. } | Decl::RowCos { .. } => 2,
                    Decl::TrueProb { .. } => 3,
                    Decl::SegSums { .. } | Decl::SegDots { .. } => e.n_values(),
                };
                let l = Layout {
                    kind: e.kind(),
                    name: e.name.clone(),
                    res: e.out,
                    off,
                    idx,
                    per_row: e.decl.count(1),
                    n,
                };
                off += n;
                l
            })
            .collect();
        Self {
            plan: plan.id,
            layout,
            values: vec![f64::NAN; off],
            template: plan.new_results(),
        }
    }

    /// Converts this rank's results (of the plan given to [`ReducibleStats::new`]) into
    /// sums and counts: `sum = mean · count` (a mean over zero elements gives sum 0), a
    /// label fault into the flag. Pass the executor's results even when its `run` returned
    /// `Err(LabelOutOfRange)`: they are complete, and the other ranks need this rank's part
    /// of the all-reduce. `Err` for results of another plan.
    pub fn fill(&mut self, r: &StatsResults) -> Result<()> {
        if r.plan != self.plan {
            return Err(invalid(
                "stats results",
                "the results belong to another plan than these sums",
            ));
        }
        for l in &self.layout {
            let src = &r.values[l.res..];
            let dst = &mut self.values[l.off..l.off + l.n];
            // What this run's mean was taken over (its rows: a short batch counts less).
            let count = r.rows[l.idx] * l.per_row;
            let sum = |mean: f64| {
                if count == 0 {
                    0.0
                } else {
                    mean * count as f64
                }
            };
            match l.kind {
                StatKind::SqDiffMean | StatKind::RowCosMean => {
                    dst[0] = sum(src[0]);
                    dst[1] = count as f64;
                }
                StatKind::TrueProbMean => {
                    let fault = src[1].to_bits() != no_fault().to_bits();
                    dst[0] = if fault { f64::NAN } else { sum(src[0]) };
                    dst[1] = count as f64;
                    dst[2] = f64::from(u8::from(fault));
                }
                StatKind::SegSums | StatKind::SegDots => dst.copy_from_slice(&src[..l.n]),
            }
        }
        Ok(())
    }

    /// The packed values.
    pub fn as_slice(&self) -> &[f64] {
        &self.values
    }

    /// The packed values, to all-reduce (sum) them in place.
    pub fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.values
    }

    /// Number of packed values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the plan declares nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Writes the means of the (summed) values into `out`, results of this rank's plan
    /// (from [`StatsPlan::new_results`]), readable by the plan's handles: `sum / count` per
    /// mean (NaN for a count of 0), segment values as they are. If some rank saw a label
    /// out of range, everything is written, that probability mean reads NaN and the call
    /// returns `Err` naming the statistic and how many ranks saw one — the same `Err` on
    /// every rank, since every rank holds the same sums.
    pub fn means_into(&self, out: &mut StatsResults) -> Result<()> {
        if out.plan != self.plan {
            return Err(invalid(
                "stats results",
                "the results belong to another plan than these sums",
            ));
        }
        check_len(
            "stats results",
            self.template.values.len(),
            out.values.len(),
        )?;
        let mut fault: Option<(&str, f64)> = None;
        for l in &self.layout {
            let src = &self.values[l.off..l.off + l.n];
            if l.per_row > 0 {
                // The rows of the whole batch (counts are exact integers in f64).
                out.rows[l.idx] = (src[1] / l.per_row as f64) as usize;
            }
            let dst = &mut out.values[l.res..];
            match l.kind {
                StatKind::SqDiffMean | StatKind::RowCosMean => dst[0] = src[0] / src[1],
                StatKind::TrueProbMean => {
                    dst[1] = no_fault();
                    dst[2] = no_fault();
                    if src[2] != 0.0 {
                        dst[0] = f64::NAN;
                        fault.get_or_insert((&l.name, src[2]));
                    } else {
                        dst[0] = src[0] / src[1];
                    }
                }
                StatKind::SegSums | StatKind::SegDots => dst[..l.n].copy_from_slice(src),
            }
        }
        match fault {
            None => Ok(()),
            Some((name, ranks)) => Err(invalid(
                "labels",
                format!(
                    "label out of range in `{name}` on {ranks} rank(s) (each such rank's own \
                     stats run named the row and label)"
                ),
            )),
        }
    }

    /// [`ReducibleStats::means_into`] into fresh results.
    pub fn means(&self) -> Result<StatsResults> {
        let mut out = self.template.clone();
        self.means_into(&mut out)?;
        Ok(out)
    }
}

impl StatsResults {
    /// These results as sums and counts (see [`ReducibleStats`]); `plan` is the plan they
    /// were computed for. Allocates: per step, prefer [`ReducibleStats::fill`].
    pub fn to_sums(&self, plan: &StatsPlan) -> Result<ReducibleStats> {
        let mut s = ReducibleStats::new(plan);
        s.fill(self)?;
        Ok(s)
    }
}
