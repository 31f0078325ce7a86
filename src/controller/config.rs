//! The controller's configuration: every constant of the authors' script as a default,
//! each one overridable and validated, plus the script's two schedules (agreement
//! threshold and modality dropout) as pure functions.

use crate::error::{Error, Result};
use crate::project::ProjectOptions;

/// How the co-information gate reduces the dominant modality's agreements with the other
/// modalities to one number when there are M ≥ 3 modalities (for M = 2 there is only one
/// agreement and every rule gives it unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GateRule {
    /// The smallest agreement (default): the gate opens only when the dominant modality
    /// agrees with *each* other modality above the threshold — the conservative reading
    /// of "suppress only what is shared".
    #[default]
    Min,
    /// The mean agreement.
    Mean,
    /// The largest agreement: the gate opens when the dominant modality agrees with at
    /// least one other modality above the threshold.
    Max,
}

/// The modality-dropout schedule of the script (training-loop policy; the controller does
/// not use it itself). See [`DropoutSchedule::probability`] and [`DropoutSchedule::decide`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DropoutSchedule {
    /// Dropout probability at epoch 0. Default 0.6.
    pub p_start: f64,
    /// Dropout probability once the ramp is over. Default 0.1.
    pub p_end: f64,
    /// Fraction of the epochs over which `p` falls linearly from `p_start` to `p_end`:
    /// the ramp lasts `max(1, int(ramp_fraction · epochs))` whole epochs, as in the
    /// script. Default 0.3.
    pub ramp_fraction: f64,
}

impl Default for DropoutSchedule {
    fn default() -> Self {
        Self {
            p_start: 0.6,
            p_end: 0.1,
            ramp_fraction: 0.3,
        }
    }
}

/// Which input the dropout schedule zeroes in a batch's main forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dropped {
    /// Keep both inputs.
    None,
    /// Zero the first modality (audio in the script).
    First,
    /// Zero the second modality (visual in the script).
    Second,
}

impl DropoutSchedule {
    /// `Err` unless both probabilities lie in `[0, 1]` and `0 < ramp_fraction <= 1`.
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [
            ("dropout.p_start", self.p_start),
            ("dropout.p_end", self.p_end),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(cfg(
                    name,
                    format!("must be a probability in [0, 1], got {p}"),
                ));
            }
        }
        let f = self.ramp_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(cfg(
                "dropout.ramp_fraction",
                format!("must be in (0, 1], got {f}"),
            ));
        }
        Ok(())
    }

    /// The number of ramp epochs, as the script computes it:
    /// `ramp = max(1, int(ramp_fraction · epochs))` (the product in f64, truncated toward
    /// zero as Python's `int`). 16 epochs: `int(4.8) = 4`; 3 epochs: `max(1, 0) = 1`.
    ///
    /// `Err` when `epochs == 0`.
    pub fn ramp_epochs(&self, epochs: usize) -> Result<usize> {
        if epochs == 0 {
            return Err(cfg("epochs", "must be >= 1, got 0"));
        }
        self.validate()?;
        // ramp_fraction is in (0, 1], so the product lies in (0, epochs]: the cast is exact
        // truncation and cannot overflow.
        Ok(((self.ramp_fraction * epochs as f64) as usize).max(1))
    }

    /// The dropout probability of `epoch` (0-based) in a run of `epochs` epochs, the
    /// script's `p = 0.6 - 0.5 · min(epoch, ramp) / ramp` with the integer
    /// `ramp = `[`ramp_epochs`](Self::ramp_epochs)`(epochs)`:
    /// `p_start - (p_start - p_end) · min(epoch, ramp) / ramp` — linear from `p_start` at
    /// epoch 0 to `p_end` at epoch `ramp`, constant after. For 16 epochs (ramp 4): 0.6,
    /// 0.475, 0.35, 0.225, then 0.1 from epoch 4 on.
    ///
    /// `Err` when `epochs == 0`, `epoch >= epochs` or the schedule is invalid.
    pub fn probability(&self, epoch: usize, epochs: usize) -> Result<f64> {
        check_epoch(epoch, epochs)?;
        let ramp = self.ramp_epochs(epochs)?;
        let t = epoch.min(ramp) as f64;
        Ok(self.p_start - (self.p_start - self.p_end) * t / ramp as f64)
    }

    /// The script's per-batch draw: with `u ~ U(0, 1)`, drop the first modality if
    /// `u < p/2`, the second if `p/2 <= u < p`, nothing otherwise. A NaN `u` or `p`
    /// compares false everywhere and drops nothing.
    pub fn decide(p: f64, u: f64) -> Dropped {
        if u < p / 2.0 {
            Dropped::First
        } else if u < p && u >= p / 2.0 {
            Dropped::Second
        } else {
            Dropped::None
        }
    }
}

/// Every constant of the RedReg controller. [`Config::new`] gives the authors' script's
/// values for a run of `epochs` epochs; every field is public and can be changed before
/// [`Config::validate`] (which [`crate::controller::Controller::new`] calls).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Number of epochs of the run (the agreement threshold rises over them). `>= 1`.
    pub epochs: usize,
    /// Growth-rate window `W` (default 10). `>= 1`.
    pub window: usize,
    /// Weight `gamma` of the growth rate in `r = red_norm - gamma·max(s, 0)` (default 0.6).
    /// Finite.
    pub gamma: f64,
    /// Redundancy threshold `R`: a modality can be suppressed only when `r > R`
    /// (default 0.15). Finite and `>= 0`.
    pub r_threshold: f64,
    /// `beta = exp(beta_scale · tanh(Δ))` (default 0.9). Finite.
    pub beta_scale: f64,
    /// Momentum of the redundancy EMA, `ema = m·ema + (1 - m)·red` (default 0.9). In
    /// `[0, 1)`.
    pub ema_momentum: f64,
    /// `eps` of the growth rate, of `red_norm` and of the ratio built by
    /// [`crate::controller::Redundancy::from_parts`] (default 1e-12). Finite and `>= 0`.
    pub eps: f64,
    /// Agreement threshold at epoch 0 (default 0.2). Finite.
    pub agree_start: f64,
    /// Rise of the agreement threshold over the run (default 0.3, so 0.2 → 0.5):
    /// `thr = agree_start + agree_rise · epoch / (epochs - 1)`. Finite.
    pub agree_rise: f64,
    /// **Deviation from the script, off by default.** When true, `red_norm` divides by the
    /// bias-corrected EMA `ema / (1 - m^t)` (t = steps since the epoch start), so the first
    /// step of an epoch gives `red_norm = 1` instead of the script's 10.
    pub bias_corrected_ema: bool,
    /// Reduction of the dominant modality's agreements for M ≥ 3 (default
    /// [`GateRule::Min`]).
    pub gate_rule: GateRule,
    /// Options of the projection done by `step` (default: `ProjectOptions::default()`,
    /// whose ridge 1e-12 is the script's `g·g + 1e-12`).
    pub project: ProjectOptions,
    /// The modality-dropout schedule (a helper for the training loop).
    pub dropout: DropoutSchedule,
}

impl Config {
    /// The script's constants for a run of `epochs` epochs: W = 10, gamma = 0.6,
    /// R = 0.15, beta_scale = 0.9, EMA momentum 0.9 without bias correction, eps = 1e-12,
    /// agreement threshold 0.2 → 0.5, dropout 0.6 → 0.1 over the first
    /// `max(1, int(0.3 · epochs))` epochs.
    pub fn new(epochs: usize) -> Self {
        Self {
            epochs,
            window: 10,
            gamma: 0.6,
            r_threshold: 0.15,
            beta_scale: 0.9,
            ema_momentum: 0.9,
            eps: 1e-12,
            agree_start: 0.2,
            agree_rise: 0.3,
            bias_corrected_ema: false,
            gate_rule: GateRule::Min,
            project: ProjectOptions::default(),
            dropout: DropoutSchedule::default(),
        }
    }

    /// `Err(Error::Config)` naming the first field that makes no sense: `epochs == 0`,
    /// `window == 0`, a NaN or infinite value, a negative `r_threshold` or `eps`,
    /// `ema_momentum` outside `[0, 1)`, invalid projection options or dropout schedule.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(cfg("epochs", "must be >= 1, got 0"));
        }
        if self.window == 0 {
            return Err(cfg(
                "window",
                "the growth-rate window W must be >= 1, got 0",
            ));
        }
        for (name, x) in [
            ("gamma", self.gamma),
            ("r_threshold", self.r_threshold),
            ("beta_scale", self.beta_scale),
            ("ema_momentum", self.ema_momentum),
            ("eps", self.eps),
            ("agree_start", self.agree_start),
            ("agree_rise", self.agree_rise),
        ] {
            if !x.is_finite() {
                return Err(cfg(name, format!("must be finite, got {x}")));
            }
        }
        if self.r_threshold < 0.0 {
            return Err(cfg(
                "r_threshold",
                format!("must be >= 0, got {}", self.r_threshold),
            ));
        }
        if self.eps < 0.0 {
            return Err(cfg("eps", format!("must be >= 0, got {}", self.eps)));
        }
        if !(0.0..1.0).contains(&self.ema_momentum) {
            return Err(cfg(
                "ema_momentum",
                format!("must be in [0, 1), got {}", self.ema_momentum),
            ));
        }
        self.project
            .validate()
            .map_err(|e| cfg("project", e.to_string()))?;
        self.dropout.validate()
    }

    /// The co-information agreement threshold of `epoch` (0-based):
    /// `agree_start + agree_rise · epoch / (epochs - 1)`, evaluated in the script's order
    /// (`agree_rise · epoch` first). With `epochs == 1` the script would divide by zero;
    /// here the single epoch gets `agree_start`.
    ///
    /// `Err` when `epoch >= epochs` (the formula would extrapolate past `agree_start +
    /// agree_rise`).
    pub fn agreement_threshold(&self, epoch: usize) -> Result<f64> {
        check_epoch(epoch, self.epochs)?;
        if self.epochs == 1 {
            return Ok(self.agree_start);
        }
        Ok(self.agree_start + self.agree_rise * epoch as f64 / (self.epochs - 1) as f64)
    }

    /// The dropout probability of `epoch` ([`DropoutSchedule::probability`] with this
    /// config's `epochs`).
    pub fn dropout_probability(&self, epoch: usize) -> Result<f64> {
        self.dropout.probability(epoch, self.epochs)
    }
}

fn check_epoch(epoch: usize, epochs: usize) -> Result<()> {
    if epochs == 0 {
        return Err(cfg("epochs", "must be >= 1, got 0"));
    }
    if epoch >= epochs {
        return Err(crate::error::invalid(
            "epoch",
            format!("epoch {epoch} is past the run's {epochs} epochs (0-based)"),
        ));
    }
    Ok(())
}

pub(crate) fn cfg(name: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        name,
        reason: reason.into(),
    }
}
