//! One step's inputs and the decision made from them: which modality is suppressed, with
//! which β, and every intermediate value for logging.

use crate::error::{check_count, invalid, Result};

use super::config::{Config, GateRule};
use super::monitor::MonitorOutput;

/// The redundancy measurement `red_m` of one modality for one step.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Redundancy {
    /// The ratio `red = mean((z1 - z2)^2) / (mean((x1 - x2)^2) + eps)`, already divided.
    Ratio(f64),
    /// Numerator `mean((z1 - z2)^2)` and denominator `mean((x1 - x2)^2)`; the controller
    /// forms `num / (den + eps)` with the config's `eps`, as the script does.
    Parts {
        /// `mean((z1 - z2)^2)` over the encoder features of the two noisy copies.
        num: f64,
        /// `mean((x1 - x2)^2)` over the two noisy inputs.
        den: f64,
    },
}

impl Redundancy {
    /// An already divided redundancy ratio.
    pub fn ratio(red: f64) -> Self {
        Redundancy::Ratio(red)
    }

    /// A redundancy from its two element means (see [`Redundancy::Parts`]).
    pub fn from_parts(num: f64, den: f64) -> Self {
        Redundancy::Parts { num, den }
    }

    /// The ratio: `Ratio(r)` → `r`, `Parts { num, den }` → `num / (den + eps)`.
    /// `Err` on a NaN, infinite or negative part or result (both means are means of
    /// squares).
    pub fn value(&self, eps: f64) -> Result<f64> {
        let red = match *self {
            Redundancy::Ratio(r) => r,
            Redundancy::Parts { num, den } => {
                for (name, x) in [
                    ("redundancy numerator", num),
                    ("redundancy denominator", den),
                ] {
                    if !(x.is_finite() && x >= 0.0) {
                        return Err(invalid(name, format!("must be finite and >= 0, got {x}")));
                    }
                }
                num / (den + eps)
            }
        };
        if !(red.is_finite() && red >= 0.0) {
            return Err(invalid(
                "redundancy",
                format!("must be finite and >= 0, got {red} (from {self:?})"),
            ));
        }
        Ok(red)
    }
}

/// The per-step statistics the controller needs, for M ≥ 2 modalities (index order is the
/// caller's; the script's pair is `[audio, visual]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepInputs {
    /// `p_m`: batch mean of the true-label probability of each modality's unimodal head.
    pub scores: Vec<f64>,
    /// `red_m` of each modality.
    pub redundancy: Vec<Redundancy>,
    /// Pairwise agreements `pos_sim` (batch mean cosine of the pooled features), one per
    /// unordered pair `i < j` in the order (0,1), (0,2), …, (0,M-1), (1,2), …, (M-2,M-1):
    /// `M(M-1)/2` values, so a single value for M = 2.
    pub agreement: Vec<f64>,
}

impl StepInputs {
    /// The script's two-modality case: scores, redundancies and `pos_sim` of audio
    /// (index 0) and visual (index 1).
    pub fn pair(p_a: f64, p_v: f64, red_a: Redundancy, red_v: Redundancy, pos_sim: f64) -> Self {
        Self {
            scores: vec![p_a, p_v],
            redundancy: vec![red_a, red_v],
            agreement: vec![pos_sim],
        }
    }

    /// Number of modalities M (the length of `scores`).
    pub fn modalities(&self) -> usize {
        self.scores.len()
    }

    /// The agreement of modalities `i` and `j` (`i != j`, both `< M`), or `None`.
    pub fn agreement_of(&self, i: usize, j: usize) -> Option<f64> {
        let m = self.modalities();
        if i == j || i >= m || j >= m {
            return None;
        }
        self.agreement
            .get(pair_index(m, i.min(j), i.max(j)))
            .copied()
    }

    /// Checks the shape and values; returns the M redundancy ratios.
    pub(crate) fn validate(&self, m: usize, eps: f64) -> Result<Vec<f64>> {
        check_count("scores (one per modality)", m, self.scores.len())?;
        check_count("redundancy (one per modality)", m, self.redundancy.len())?;
        check_count(
            "agreement (one per pair of modalities, M(M-1)/2)",
            m * (m - 1) / 2,
            self.agreement.len(),
        )?;
        if let Some(i) = self.scores.iter().position(|x| !x.is_finite()) {
            return Err(invalid(
                "scores",
                format!("score of modality {i} is {}", self.scores[i]),
            ));
        }
        if let Some(i) = self.agreement.iter().position(|x| !x.is_finite()) {
            return Err(invalid(
                "agreement",
                format!(
                    "agreement {i} (pair order (0,1), (0,2), …) is {}",
                    self.agreement[i]
                ),
            ));
        }
        self.redundancy.iter().map(|r| r.value(eps)).collect()
    }
}

/// Index of the pair `(i, j)`, `i < j < m`, in [`StepInputs::agreement`].
fn pair_index(m: usize, i: usize, j: usize) -> usize {
    // Pairs with first index < i: (m-1) + (m-2) + ... + (m-i) = i·m - i(i+1)/2.
    i * m - i * (i + 1) / 2 + (j - i - 1)
}

/// Everything the monitor computed for one modality in one step.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModalityStats {
    /// The score `p_m`.
    pub score: f64,
    /// Its growth rate `s_m` (1.0 during warm-up).
    pub growth: f64,
    /// The redundancy ratio `red_m`.
    pub red: f64,
    /// The EMA after this step's update.
    pub ema: f64,
    /// `red_m / (ema + eps)` (10 at an epoch's first step with the script's defaults).
    pub red_norm: f64,
    /// `red_norm - gamma · max(s_m, 0)`.
    pub r: f64,
}

/// The controller's decision for one step, with every intermediate value.
///
/// # Rule
/// - **Leader**: the modality with the highest score (the lowest index among ties).
///   `delta` = its score minus the highest score among the others (0 on a tie).
/// - **Dominant**: the leader, if `delta > 0` (no tie) and its `r > R`; then
///   `beta_raw = exp(beta_scale · tanh(delta))`, otherwise no dominant and `beta_raw = 0`.
/// - **Gate**: 1 if `pos_sim > threshold`, else 0, where `pos_sim` is the leader's
///   agreement with the other modalities reduced by [`GateRule`] (for M = 2 the one
///   agreement).
/// - **Suppressed**: the dominant modality if the gate is 1; `beta = beta_raw · gate`.
///
/// For M = 2 this is the script's rule exactly: "if `p_a < p_v` and `r_v > R`: v
/// dominates; symmetrically for a; else none", with `delta = |p_v - p_a|`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Epoch (0-based) of the step.
    pub epoch: usize,
    /// Step index within the epoch (0-based).
    pub step: u64,
    /// The agreement threshold of the epoch.
    pub threshold: f64,
    /// Per-modality intermediates, in input order.
    pub modalities: Vec<ModalityStats>,
    /// The leader (highest score, lowest index among ties).
    pub leader: usize,
    /// Leader's score minus the best other score (≥ 0; 0 on a tie).
    pub delta: f64,
    /// The leader's reduced agreement with the others (the gate's input).
    pub pos_sim: f64,
    /// 1.0 if `pos_sim > threshold`, else 0.0.
    pub gate: f64,
    /// The modality that dominates by scores and redundancy, before the gate.
    pub dominant: Option<usize>,
    /// `exp(beta_scale · tanh(delta))` if there is a dominant modality, else 0.
    pub beta_raw: f64,
    /// The modality whose drift is projected into its gradient: the dominant one when
    /// the gate is open.
    pub suppressed: Option<usize>,
    /// `beta_raw · gate` (0 when nothing is suppressed).
    pub beta: f64,
}

impl Decision {
    /// β of modality `m`: [`Decision::beta`] for the suppressed modality, 0 for the others
    /// (the script's `beta_a`, `beta_v`).
    pub fn beta_of(&self, m: usize) -> f64 {
        if self.suppressed == Some(m) {
            self.beta
        } else {
            0.0
        }
    }

    /// Builds the decision from validated inputs and the monitors' outputs.
    pub(crate) fn make(
        config: &Config,
        epoch: usize,
        step: u64,
        threshold: f64,
        inputs: &StepInputs,
        reds: &[f64],
        outs: &[MonitorOutput],
    ) -> Decision {
        let m = inputs.scores.len();
        let scores = &inputs.scores;
        let modalities: Vec<ModalityStats> = (0..m)
            .map(|i| ModalityStats {
                score: scores[i],
                growth: outs[i].growth,
                red: reds[i],
                ema: outs[i].ema,
                red_norm: outs[i].red_norm,
                r: outs[i].r,
            })
            .collect();

        // Leader: first index of the maximum score (scores are finite).
        let mut leader = 0;
        for i in 1..m {
            if scores[i] > scores[leader] {
                leader = i;
            }
        }
        let best_other = (0..m)
            .filter(|&i| i != leader)
            .map(|i| scores[i])
            .fold(f64::NEG_INFINITY, f64::max);
        let delta = scores[leader] - best_other;

        let dominant = (delta > 0.0 && modalities[leader].r > config.r_threshold).then_some(leader);
        let beta_raw = match dominant {
            Some(_) => (config.beta_scale * delta.tanh()).exp(),
            None => 0.0,
        };

        let agreements = (0..m)
            .filter(|&j| j != leader)
            .filter_map(|j| inputs.agreement_of(leader, j));
        let pos_sim = match config.gate_rule {
            GateRule::Min => agreements.fold(f64::INFINITY, f64::min),
            GateRule::Max => agreements.fold(f64::NEG_INFINITY, f64::max),
            GateRule::Mean => agreements.sum::<f64>() / (m - 1) as f64,
        };
        let gate = if pos_sim > threshold { 1.0 } else { 0.0 };
        let suppressed = dominant.filter(|_| gate == 1.0);
        let beta = if suppressed.is_some() {
            beta_raw * gate
        } else {
            0.0
        };

        Decision {
            epoch,
            step,
            threshold,
            modalities,
            leader,
            delta,
            pos_sim,
            gate,
            dominant,
            beta_raw,
            suppressed,
            beta,
        }
    }
}
