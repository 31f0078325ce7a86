//! [`Controller`]: the config plus the per-modality monitors, driven once per step.

use super::config::Config;
use super::decision::{Decision, StepInputs};
use super::monitor::{Monitor, MonitorOutput};
use crate::error::{check_count, invalid, Result};

/// The resumable part of a [`Controller`]: the epoch, the step within it and every
/// modality's [`Monitor`]. Serialise it into a checkpoint and pass it to
/// [`Controller::resume`] to continue with identical decisions. Floating-point values
/// are stored as their IEEE bit patterns (`u64`), so any serde format restores them
/// exactly (a decimal round trip through serde_json's default parser can be off by an ulp).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ControllerState {
    /// The current epoch (0-based), `None` before the first [`Controller::begin_epoch`].
    pub epoch: Option<usize>,
    /// Steps observed in the current epoch.
    pub step: u64,
    /// One monitor per modality.
    pub monitors: Vec<Monitor>,
}

/// The RedReg controller for M ≥ 2 modalities: call [`Controller::begin_epoch`] at every
/// epoch start (with [`crate::Backend::copy`] of the encoders' parameters), then
/// [`Controller::observe`] once per step and apply the decision with [`super::step`] —
/// or do both with [`Controller::step`].
#[derive(Clone, Debug, PartialEq)]
pub struct Controller {
    config: Config,
    threshold: f64,
    state: ControllerState,
}

impl Controller {
    /// A controller for `modalities` (≥ 2) modalities. `Err` on an invalid config
    /// ([`Config::validate`]) or fewer than 2 modalities.
    pub fn new(config: Config, modalities: usize) -> Result<Self> {
        config.validate()?;
        if modalities < 2 {
            return Err(invalid(
                "modalities",
                format!("RedReg needs at least 2 modalities, got {modalities}"),
            ));
        }
        let monitors = (0..modalities)
            .map(|_| Monitor::new(config.window))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            threshold: 0.0,
            state: ControllerState {
                epoch: None,
                step: 0,
                monitors,
            },
        })
    }

    /// A controller continuing from a saved `state`. `Err` if the config is invalid or
    /// does not fit the state (another window, fewer than 2 monitors, an epoch past
    /// `config.epochs`).
    pub fn resume(config: Config, state: ControllerState) -> Result<Self> {
        config.validate()?;
        if state.monitors.len() < 2 {
            return Err(invalid(
                "modalities",
                format!(
                    "the saved state has {} monitors, RedReg needs at least 2",
                    state.monitors.len()
                ),
            ));
        }
        for m in &state.monitors {
            m.check(&config)?;
        }
        let threshold = match state.epoch {
            Some(e) => config.agreement_threshold(e)?,
            None => 0.0,
        };
        Ok(Self {
            config,
            threshold,
            state,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state to checkpoint.
    pub fn state(&self) -> &ControllerState {
        &self.state
    }

    /// Number of modalities M.
    pub fn modalities(&self) -> usize {
        self.state.monitors.len()
    }

    /// The current epoch, `None` before the first [`Controller::begin_epoch`].
    pub fn epoch(&self) -> Option<usize> {
        self.state.epoch
    }

    /// Epoch start: resets every score history and redundancy EMA (as the script does)
    /// and sets the agreement threshold of `epoch`. `Err` if `epoch >= config.epochs`;
    /// the state is then unchanged.
    ///
    /// Take the epoch's snapshot θ₀ of the encoders here too. Until the optimizer has
    /// stepped, the drift `θ − θ₀` is zero, so a suppressed step right after it adds
    /// `β·0`: the first step of an epoch leaves the gradients unchanged (the script's
    /// behaviour, not a bug).
    pub fn begin_epoch(&mut self, epoch: usize) -> Result<()> {
        self.threshold = self.config.agreement_threshold(epoch)?;
        self.state.epoch = Some(epoch);
        self.state.step = 0;
        self.state.monitors.iter_mut().for_each(Monitor::reset);
        Ok(())
    }

    /// One step: updates every modality's monitor with its score and redundancy and
    /// decides. `Err` (state unchanged) before the first [`Controller::begin_epoch`], on
    /// inputs of the wrong shape, on a NaN or infinite score, agreement or redundancy, or
    /// a negative redundancy.
    ///
    /// Finite inputs always give a decision; inputs of extreme magnitude (near
    /// `f64::MAX`) can make an intermediate infinite or NaN, which then compares false
    /// and suppresses nothing; `beta` is always finite.
    pub fn observe(&mut self, inputs: &StepInputs) -> Result<Decision> {
        let epoch = self
            .state
            .epoch
            .ok_or_else(|| invalid("epoch", "call begin_epoch before the first observe"))?;
        let m = self.modalities();
        check_count("scores (one per modality)", m, inputs.scores.len())?;
        let reds = inputs.validate(m, self.config.eps)?;
        let outs: Vec<MonitorOutput> = self
            .state
            .monitors
            .iter_mut()
            .zip(inputs.scores.iter().zip(&reds))
            .map(|(mon, (&p, &red))| mon.update(&self.config, p, red))
            .collect();
        let d = Decision::make(
            &self.config,
            epoch,
            self.state.step,
            self.threshold,
            inputs,
            &reds,
            &outs,
        );
        self.state.step = self.state.step.saturating_add(1);
        Ok(d)
    }
}
