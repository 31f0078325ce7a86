//! The redundancy phase monitor of one modality: the score history and its growth rate,
//! and the redundancy EMA.
//!
//! The state is serialisable so that a run resumed from a checkpoint makes identical
//! decisions. Floating-point state is stored as IEEE bit patterns (`u64`), which every
//! serde format carries exactly — a decimal round trip (serde_json's default float parser,
//! for one) may be off by one ulp.

use std::collections::VecDeque;

use super::config::{cfg, Config};
use crate::error::{Error, Result};

/// Serde helpers that store f64 values as their bit patterns.
mod bits {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn ser<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        x.to_bits().serialize(s)
    }

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }

    pub fn ser_vec<S: Serializer>(xs: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(xs.iter().map(|x| x.to_bits()))
    }

    pub fn de_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<u64>::deserialize(d).map(|v| v.into_iter().map(f64::from_bits).collect())
    }
}

/// The last `W + 1` scores of the current epoch and how many were seen: exactly what the
/// script's growth rate reads from its full history, in O(W) memory.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreHistory {
    window: usize,
    /// Number of scores pushed since the last reset (the script's `len(h)`).
    count: u64,
    /// The last `min(count, W + 1)` scores, oldest first.
    last: VecDeque<f64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ScoreHistoryRepr {
    window: usize,
    count: u64,
    #[serde(serialize_with = "bits::ser_vec", deserialize_with = "bits::de_vec")]
    last: Vec<f64>,
}

impl serde::Serialize for ScoreHistory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ScoreHistoryRepr {
            window: self.window,
            count: self.count,
            last: self.last.iter().copied().collect(),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for ScoreHistory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let r = ScoreHistoryRepr::deserialize(d)?;
        ScoreHistory::from_parts(r.window, r.count, r.last).map_err(serde::de::Error::custom)
    }
}

impl ScoreHistory {
    /// An empty history for window `W = window` (`Err` if `window == 0`).
    pub fn new(window: usize) -> Result<Self> {
        if window == 0 {
            return Err(cfg(
                "window",
                "the growth-rate window W must be >= 1, got 0",
            ));
        }
        let mut last = VecDeque::new();
        last.try_reserve_exact(window.saturating_add(1))
            .map_err(|e| {
                cfg(
                    "window",
                    format!("cannot hold W + 1 = {window} + 1 scores: {e}"),
                )
            })?;
        Ok(Self {
            window,
            count: 0,
            last,
        })
    }

    fn from_parts(window: usize, count: u64, last: Vec<f64>) -> Result<Self> {
        if window == 0 {
            return Err(cfg(
                "window",
                "the growth-rate window W must be >= 1, got 0",
            ));
        }
        let keep = count.min((window as u64).saturating_add(1));
        if last.len() as u64 != keep {
            return Err(crate::error::invalid(
                "score history",
                format!(
                    "{} stored scores for count {count} and window {window}: expected {keep}",
                    last.len()
                ),
            ));
        }
        let mut h = Self::new(window)?;
        h.count = count;
        h.last.extend(last);
        Ok(h)
    }

    /// The window `W`.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Number of scores pushed since the last reset (`len(h)` in the script).
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when no score was pushed since the last reset.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forgets every score (epoch start).
    pub fn reset(&mut self) {
        self.count = 0;
        self.last.clear();
    }

    /// Appends a score; keeps only the last `W + 1`. Never reallocates.
    pub fn push(&mut self, score: f64) {
        if self.last.len() > self.window {
            self.last.pop_front();
        }
        self.last.push_back(score);
        self.count = self.count.saturating_add(1);
    }

    /// The script's growth rate of the history:
    /// `(mean(h[-W:]) - mean(h[-W-1:-1])) / (|mean(h[-W-1:-1])| + eps)`, and `1.0` while
    /// `len(h) <= W`. Each mean is a sequential f64 sum from the oldest value, divided by W.
    pub fn growth(&self, eps: f64) -> f64 {
        let w = self.window;
        if self.count <= w as u64 || self.last.len() != w + 1 {
            return 1.0;
        }
        let prev = self.last.iter().take(w).sum::<f64>() / w as f64;
        let cur = self.last.iter().skip(1).sum::<f64>() / w as f64;
        (cur - prev) / (prev.abs() + eps)
    }
}

/// The monitor state of one modality: score history and redundancy EMA.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Monitor {
    history: ScoreHistory,
    #[serde(serialize_with = "bits::ser", deserialize_with = "bits::de")]
    ema: f64,
    /// Steps since the EMA was reset (for the bias correction).
    ema_steps: u64,
}

/// What one monitor update computed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MonitorOutput {
    /// Growth rate `s` of the scores (1.0 during warm-up).
    pub growth: f64,
    /// The EMA after this step's update (before any bias correction).
    pub ema: f64,
    /// `red / (ema' + eps)`, where `ema'` is the EMA (bias-corrected if configured).
    pub red_norm: f64,
    /// `red_norm - gamma · max(growth, 0)`.
    pub r: f64,
}

impl Monitor {
    /// A fresh monitor for window `W` (`Err` if `window == 0`).
    pub fn new(window: usize) -> Result<Self> {
        Ok(Self {
            history: ScoreHistory::new(window)?,
            ema: 0.0,
            ema_steps: 0,
        })
    }

    /// The score history.
    pub fn history(&self) -> &ScoreHistory {
        &self.history
    }

    /// The current redundancy EMA (0 at an epoch start).
    pub fn ema(&self) -> f64 {
        self.ema
    }

    /// Epoch start: empties the history and sets the EMA to 0, as the script does.
    pub fn reset(&mut self) {
        self.history.reset();
        self.ema = 0.0;
        self.ema_steps = 0;
    }

    /// `Err` unless this state was made with `config`'s window.
    pub(crate) fn check(&self, config: &Config) -> Result<()> {
        if self.history.window != config.window {
            return Err(Error::Config {
                name: "window",
                reason: format!(
                    "the saved monitor state uses W = {}, the config W = {}",
                    self.history.window, config.window
                ),
            });
        }
        Ok(())
    }

    /// One step, in the script's order: append `score`, take the growth rate, update the
    /// EMA with `red` (`ema = m·ema + (1 - m)·red`), then `red_norm = red / (ema + eps)`
    /// and `r = red_norm - gamma·max(s, 0)`. With the script's defaults the first step of
    /// an epoch gives `red_norm = red / (0.1·red + eps) ≈ 10` (the quirk).
    pub fn update(&mut self, config: &Config, score: f64, red: f64) -> MonitorOutput {
        self.history.push(score);
        let growth = self.history.growth(config.eps);
        let m = config.ema_momentum;
        self.ema = m * self.ema + (1.0 - m) * red;
        self.ema_steps = self.ema_steps.saturating_add(1);
        let denom = if config.bias_corrected_ema {
            // 1 - m^t > 0 for m in [0, 1) and t >= 1.
            self.ema / (1.0 - m.powf(self.ema_steps as f64))
        } else {
            self.ema
        };
        let red_norm = red / (denom + config.eps);
        // Python's `max(s, 0)`: `s` unless `0 > s` (so a NaN `s` stays NaN).
        let s_pos = if 0.0 > growth { 0.0 } else { growth };
        let r = red_norm - config.gamma * s_pos;
        MonitorOutput {
            growth,
            ema: self.ema,
            red_norm,
            r,
        }
    }
}
