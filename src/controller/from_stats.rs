//! From the fused statistics plan (`crate::stats`) to the controller's [`StepInputs`]: the
//! handles of the per-step statistics RedReg needs, declared once, read every step.

use crate::backend::{Host, Memory};
use crate::dtype::DType;
use crate::error::{check_count, Result};
use crate::stats::{
    Buf, Input, Labels, ReducibleStats, RowCosMean, SqDiffMean, StatHandle, Stats, StatsPlan,
    StatsResults, TrueProbMean,
};

use super::decision::{Redundancy, StepInputs};

/// Shapes of one modality's per-step statistics inputs, at the largest batch (the
/// declared batch size is a maximum: any batch of 1 to `batch` samples runs, see
/// [`RedRegStats::declare`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModalityShapes {
    /// Element type of every buffer of this modality.
    pub dtype: DType,
    /// Batch size B (the largest: a step may have fewer samples).
    pub batch: usize,
    /// Classes C of the unimodal head's logits (B×C).
    pub classes: usize,
    /// Elements of the unpooled encoder features `z1`, `z2` of the two noisy copies of a
    /// batch of B samples (a multiple of B).
    pub features: usize,
    /// Elements of the noisy inputs `x1`, `x2` of B samples (a multiple of B).
    pub inputs: usize,
    /// Dimension D of the pooled features (B×D) used for the agreement `pos_sim`.
    pub pooled: usize,
}

/// One modality's buffers of one step, in memory `M` (host slices by default, device
/// views with `M = cuda::Device`), as [`RedRegStats::bind`] takes them.
pub struct ModalityBufs<'a, M: Memory = Host> {
    /// The unimodal head's logits, B×C.
    pub logits: Buf<'a, M>,
    /// Encoder features of the two noisy copies.
    pub z1: Buf<'a, M>,
    /// See `z1`.
    pub z2: Buf<'a, M>,
    /// The two noisy inputs.
    pub x1: Buf<'a, M>,
    /// See `x1`.
    pub x2: Buf<'a, M>,
    /// Pooled features for the agreement, B×D.
    pub pooled: Buf<'a, M>,
}

impl<M: Memory> std::fmt::Debug for ModalityBufs<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModalityBufs")
            .field("logits", &self.logits)
            .field("z1", &self.z1)
            .field("z2", &self.z2)
            .field("x1", &self.x1)
            .field("x2", &self.x2)
            .field("pooled", &self.pooled)
            .finish()
    }
}

/// The handles of RedReg's per-step statistics in a [`StatsPlan`]: per modality the
/// true-label probability mean `p_m` and the two squared-difference means of the redundancy
/// `red_m = mean((z1-z2)^2) / (mean((x1-x2)^2) + eps)`, and per pair of modalities the
/// agreement `pos_sim` (order (0,1), (0,2), …, as [`StepInputs::agreement`]).
#[derive(Clone, Debug)]
pub struct RedRegStats {
    /// `p_m` per modality (bind: unimodal logits, labels).
    pub score: Vec<TrueProbMean>,
    /// `mean((z1 - z2)^2)` per modality (bind: features of the two noisy copies).
    pub feature_diff: Vec<SqDiffMean>,
    /// `mean((x1 - x2)^2)` per modality (bind: the two noisy inputs).
    pub input_diff: Vec<SqDiffMean>,
    /// `pos_sim` per pair (bind: pooled features of modality i and j).
    pub agreement: Vec<RowCosMean>,
}

impl RedRegStats {
    /// Declares every statistic of one RedReg step in `plan` (M ≥ 2 modalities; the pooled
    /// features of a pair must have the same B and D; `features` and `inputs` whole
    /// multiples of B ≥ 1).
    ///
    /// B is the largest batch: a step's buffers may hold any number of samples from 1 to B
    /// (the last, smaller batch of an epoch; the same number for every buffer of the step),
    /// and every statistic is then the mean over the samples given.
    pub fn declare(plan: &mut StatsPlan, modalities: &[ModalityShapes]) -> Result<Self> {
        let m = modalities.len();
        if m < 2 {
            return Err(crate::error::invalid(
                "modalities",
                format!("RedReg needs at least 2 modalities, got {m}"),
            ));
        }
        let mut s = Self {
            score: Vec::with_capacity(m),
            feature_diff: Vec::with_capacity(m),
            input_diff: Vec::with_capacity(m),
            agreement: Vec::new(),
        };
        for (i, sh) in modalities.iter().enumerate() {
            // Per sample: the squared differences accept whole samples, up to B of them.
            let per_sample = |what: &str, n: usize| -> Result<usize> {
                if sh.batch == 0 || n % sh.batch != 0 {
                    return Err(crate::error::invalid(
                        "modalities",
                        format!(
                            "modality {i}: {what} has {n} elements, not a whole number of \
                             samples of a batch of {} (at least 1)",
                            sh.batch
                        ),
                    ));
                }
                Ok(n / sh.batch)
            };
            let (z, x) = (
                per_sample("features", sh.features)?,
                per_sample("inputs", sh.inputs)?,
            );
            s.score.push(plan.true_prob_mean(
                &format!("p[{i}]"),
                sh.dtype,
                sh.batch,
                sh.classes,
            )?);
            s.feature_diff.push(plan.sq_diff_mean(
                &format!("z1-z2[{i}]"),
                sh.dtype,
                sh.batch,
                z,
            )?);
            s.input_diff
                .push(plan.sq_diff_mean(&format!("x1-x2[{i}]"), sh.dtype, sh.batch, x)?);
        }
        for i in 0..m {
            for j in i + 1..m {
                let (a, b) = (modalities[i], modalities[j]);
                check_count("pooled batch of a modality pair", a.batch, b.batch)?;
                check_count("pooled dimension of a modality pair", a.pooled, b.pooled)?;
                if a.dtype != b.dtype {
                    return Err(crate::error::invalid(
                        "modalities",
                        format!(
                            "pair ({i},{j}): pooled features of {} and {}",
                            a.dtype, b.dtype
                        ),
                    ));
                }
                s.agreement.push(plan.row_cos_mean(
                    &format!("pos_sim[{i},{j}]"),
                    a.dtype,
                    a.batch,
                    a.pooled,
                )?);
            }
        }
        Ok(s)
    }

    /// `Err` unless `n` buffer sets fit these handles (one per declared modality).
    pub fn check_modalities(&self, n: usize) -> Result<()> {
        let m = self.score.len();
        if n != m || self.agreement.len() != m * m.saturating_sub(1) / 2 {
            return Err(crate::error::invalid(
                "modalities",
                format!("{n} buffer sets for a plan of {m} modalities"),
            ));
        }
        Ok(())
    }

    /// Binds one step's buffers, in any memory, to every statistic: per modality (in the
    /// order of the declaration) `p_m` ← (logits, `labels`), the two squared differences ←
    /// (z1, z2), (x1, x2); per pair `pos_sim` ← (pooled_i, pooled_j). `Err` for a
    /// modality count that differs from the declaration; shapes and dtypes are checked by
    /// the executor's `run` (any batch of 1 to the declared B samples).
    pub fn bind<'a, 'l: 'a, 'm: 'a, M: Memory>(
        &self,
        labels: &'a M::Src<'l, i64>,
        mods: &'a [ModalityBufs<'m, M>],
    ) -> Result<Vec<Input<'a, M>>> {
        self.check_modalities(mods.len())?;
        let mut inputs = Vec::with_capacity(3 * mods.len() + self.agreement.len());
        for (i, b) in mods.iter().enumerate() {
            inputs.push(self.score[i].bind((b.logits.share(), Labels(M::share(labels)))));
            inputs.push(self.feature_diff[i].bind((b.z1.share(), b.z2.share())));
            inputs.push(self.input_diff[i].bind((b.x1.share(), b.x2.share())));
        }
        let mut k = 0;
        for i in 0..mods.len() {
            for j in i + 1..mods.len() {
                let (a, b) = (mods[i].pooled.share(), mods[j].pooled.share());
                inputs.push(self.agreement[k].bind((a, b)));
                k += 1;
            }
        }
        Ok(inputs)
    }

    /// One step on any executor: [`RedRegStats::bind`], [`Stats::run`], then
    /// [`RedRegStats::inputs`].
    pub fn run<S: Stats>(
        &self,
        exec: &mut S,
        labels: &<S::Memory as Memory>::Src<'_, i64>,
        mods: &[ModalityBufs<'_, S::Memory>],
    ) -> Result<StepInputs> {
        let mut inputs = self.bind(labels, mods)?;
        let r = exec.run(&mut inputs)?;
        self.inputs(r)
    }

    /// The controller's inputs from one run of the plan.
    pub fn inputs(&self, r: &StatsResults) -> Result<StepInputs> {
        let scores = self
            .score
            .iter()
            .map(|&h| r.get(h))
            .collect::<Result<_>>()?;
        let redundancy = self
            .feature_diff
            .iter()
            .zip(&self.input_diff)
            .map(|(&n, &d)| Ok(Redundancy::from_parts(r.get(n)?, r.get(d)?)))
            .collect::<Result<_>>()?;
        let agreement = self
            .agreement
            .iter()
            .map(|&h| r.get(h))
            .collect::<Result<_>>()?;
        Ok(StepInputs {
            scores,
            redundancy,
            agreement,
        })
    }

    /// The controller's inputs from the statistics of all data-parallel ranks: this rank's
    /// [`ReducibleStats`] after the all-reduce (sum) of every rank's. Every rank gets the
    /// same `StepInputs` — those of one process on the whole batch, up to f64 summation
    /// order — hence the same decision. `Err` (the same on every rank) if some rank saw a
    /// label out of range.
    pub fn from_reduced(&self, reduced: &ReducibleStats) -> Result<StepInputs> {
        self.inputs(&reduced.means()?)
    }
}
