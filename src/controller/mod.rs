//! The RedReg controller (issue 5): redundancy phase monitor, co-information gate,
//! suppression strength, and one call per training step.
//!
//! Follows `shared/redreg-algorithm.md` (the authors' PyTorch script); every constant there
//! is a default of [`Config::new`], including the script's quirks (the redundancy EMA
//! restarts at 0 every epoch without bias correction, so `red_norm` is 10 at an epoch's
//! first step).
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
