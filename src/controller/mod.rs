//! The RedReg controller: redundancy phase monitor, co-information gate, suppression
//! strength, and one call per training step.
//!
//! Follows the paper (Yang, Li, Chen, Wang, Xiong, Fan, "Adaptive Redundancy Regulation for
//! Balanced Multimodal Information Refinement", arXiv 2511.13755) as the authors' public
//! PyTorch training script applies it; every constant of that script is a default of
//! [`Config::new`], including its quirks. From candle, `redreg::candle::RedReg` (feature
//! `candle`) drives all of this in one call per step.
//!
//! # The algorithm (per step, for modalities `m`)
//! 1. **Score and growth** ([`Monitor`]): `p_m` = batch mean of the unimodal head's
//!    `softmax(out_m)[label]`; its history in the epoch gives the growth rate
//!    `s_m = (mean(h[-W:]) − mean(h[-W-1:-1])) / (|mean(h[-W-1:-1])| + eps)`, 1.0 while the
//!    history has at most `W` = 10 entries; `eps` = 1e-12.
//! 2. **Redundancy**: two noisy copies `x1 = x + n1`, `x2 = x + n2` of the undropped input
//!    (Gaussian noise, σ = 0.03) through the encoder without gradient give
//!    `red_m = mean((z1 − z2)²) / (mean((x1 − x2)²) + eps)` (element means);
//!    `ema_m = 0.9·ema_m + 0.1·red_m`, restarted at 0 every epoch **without bias
//!    correction** (the script's quirk: `red_norm` is therefore 10 at an epoch's first step;
//!    [`Config::bias_corrected_ema`] is the opt-in deviation);
//!    `red_norm_m = red_m / (ema_m + eps)`, `r_m = red_norm_m − γ·max(s_m, 0)`, γ = 0.6.
//! 3. **Dominance and strength** ([`Decision`]): the modality with the higher score
//!    dominates when its `r > R` (R = 0.15); its `β = exp(0.9·tanh(Δp))`, in (1, ~1.98);
//!    the other's β is 0.
//! 4. **Co-information gate**: `pos_sim` = batch mean of the cosine between the two
//!    modalities' pooled features of the same sample (so both must have the same width);
//!    β is kept only if `pos_sim > 0.2 + 0.3·epoch / (epochs − 1)`.
//! 5. **Projection** ([`step()`]): θ₀ = the parameters at the epoch's start; per parameter
//!    tensor of the suppressed encoder, `d = θ − θ₀` and `grad += β·(d − (d·g / (g·g +
//!    1e-12))·g)` with `g` the gradient of `L_mm + L_a + L_v` (`d` itself where `g` is
//!    absent or zero). Right after the snapshot `d` = 0, so the first suppressed step of
//!    an epoch leaves the gradients unchanged. Then the optimizer steps (the paper: SGD,
//!    lr 0.002, momentum 0.9, weight decay 1e-4).
//! 6. **Modality dropout** (a training-loop policy, [`DropoutSchedule`]): probability
//!    `p = 0.6 − 0.5·min(epoch, ramp)/ramp`, `ramp = max(1, int(0.3·epochs))`; per batch
//!    `u ~ U(0, 1)` drops the first modality if `u < p/2`, the second if `p/2 ≤ u < p`
//!    (zeroed in the main forward pass only).
//!
//! The crate generalises step 5 to a rank-k joint subspace per tensor ([`JointBasis`]);
//! k = 1 is the script.
//!
//! # Per training step
//! ```
//! use redreg::controller::{Config, Controller, HostEncoder, JointBasis, Redundancy, StepInputs};
//! use redreg::{Backend, CpuBackend, Segments};
//!
//! let backend = CpuBackend::new(); // made once, kept for the whole run
//! let segs = Segments::from_lengths(&[2, 1]).unwrap();
//! let mut ctl = Controller::new(Config::new(3), 2).unwrap();
//! let (theta_a, theta_v) = (vec![1.0f32, 2.0, 3.0], vec![0.5f32, 0.5, 0.5]);
//! let (mut theta0_a, mut theta0_v) = (vec![0.0f32; 3], vec![0.0f32; 3]);
//! let (mut grad_a, mut grad_v) = (vec![0.1f32; 3], vec![0.2f32; 3]);
//!
//! ctl.begin_epoch(0).unwrap();
//! backend.copy(&theta_a, &mut theta0_a).unwrap(); // the epoch-start snapshot
//! backend.copy(&theta_v, &mut theta0_v).unwrap();
//! // ... forward/backward, statistics ...
//! let inputs = StepInputs::pair(0.3, 0.7, Redundancy::ratio(0.5),
//!     Redundancy::from_parts(0.02, 0.01), 0.4);
//! let mut encoders = [
//!     HostEncoder { segs: &segs, theta: &theta_a, theta0: &theta0_a, grad: &mut grad_a,
//!               basis: JointBasis::Gradient },
//!     HostEncoder { segs: &segs, theta: &theta_v, theta0: &theta0_v, grad: &mut grad_v,
//!               basis: JointBasis::Gradient },
//! ];
//! let (decision, _ranks) = ctl.step(&inputs, &backend, &mut encoders).unwrap();
//! assert_eq!(decision.suppressed, Some(1)); // visual dominates, gate 0.4 > 0.2 open
//! // ... optimizer step ...
//! ```
//!
//! # Modules
//! - [`Config`] (with [`Config::validate`], the agreement-threshold and dropout schedules);
//! - [`Monitor`]: score history (O(W)) with the growth rate, and the redundancy EMA;
//! - [`Decision`]: who is suppressed, with which β, and every intermediate;
//! - [`step()`] / [`Controller::step`]: the projection of the drift into the gradient,
//!   generic over a [`crate::Backend`] (CPU, CUDA or the f64 oracle), one fused projection.
//!
//! # M ≥ 3 modalities
//! The leader is the highest score; Δ is measured against the strongest other modality;
//! the gate reads the leader's agreements with every other modality reduced by
//! [`GateRule`] (default: the minimum, so all must agree). See [`Decision`].

mod config;
mod decision;
mod from_stats;
mod fused;
mod monitor;
mod state;
mod step;

pub use config::{Config, DropoutSchedule, Dropped, GateRule};
pub use decision::{Decision, ModalityStats, Redundancy, StepInputs};
pub use from_stats::{ModalityBufs, ModalityShapes, RedRegStats};
pub use monitor::{Monitor, MonitorOutput, ScoreHistory};
pub use state::{Controller, ControllerState};
#[cfg(feature = "cuda")]
pub use step::DeviceEncoder;
pub use step::{step, Encoder, EncoderOf, HostEncoder, JointBasis};
