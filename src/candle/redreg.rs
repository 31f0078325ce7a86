//! [`RedReg`]: RedReg for a candle trainer in three calls — [`RedReg::new`] once,
//! [`RedReg::begin_epoch`] at every epoch start, [`RedReg::step`] once per batch between
//! `backward()` and the optimizer step.
//!
//! It owns what the lower layers need and a trainer would otherwise carry itself: the
//! backend for the model's device (an [`OnDevice<Backends>`]), the [`Controller`], the fused
//! statistics plan with its executor (an [`OnDevice<Executors>`], [`RedRegStats`]) and the epoch
//! snapshots θ₀ of every encoder. Everything it does goes through the public lower layers
//! ([`step_inputs`], [`Controller::observe`], [`project_drift_into_grads`]), which stay
//! available for trainers that need another arrangement.
//!
//! The complete trainer is `examples/minimal.rs` (two MLP encoders, a concatenation head,
//! SGD, a short last batch).

use super::stats::{modality_shapes, step_inputs, ModalityTensors};
use super::{project_drift_into_grads, snapshot, Backends, Executors, OnDevice};
use crate::controller::{Config, Controller, Decision, ModalityShapes, RedRegStats};
use crate::error::{invalid, Result};
use crate::stats::StatsPlan;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

/// The standard deviation of the Gaussian noise of the two noisy copies `x1 = x + n1`,
/// `x2 = x + n2` whose encoder features measure a modality's redundancy (the authors'
/// script; images are clamped to [0, 1] afterwards there). Make them with, for example,
/// `(x + Tensor::randn(0f32, NOISE_SIGMA as f32, x.dims(), x.device())?)?`.
pub const NOISE_SIGMA: f64 = 0.03;

/// RedReg for a candle trainer with one encoder per modality (M ≥ 2).
///
/// ```no_run
/// # fn main() -> redreg::Result<()> {
/// use candle_core::{DType, Device};
/// use candle_nn::VarMap;
/// use redreg::candle::RedReg;
/// use redreg::controller::Config;
///
/// // One VarMap per encoder (the head has its own, which RedReg never touches).
/// let (enc_a, enc_b) = (VarMap::new(), VarMap::new());
/// let _ = candle_nn::linear(8, 4, candle_nn::VarBuilder::from_varmap(&enc_a, DType::F32, &Device::Cpu))?;
/// let _ = candle_nn::linear(6, 4, candle_nn::VarBuilder::from_varmap(&enc_b, DType::F32, &Device::Cpu))?;
/// let mut rr = RedReg::new(Config::new(10), &[&enc_a, &enc_b], 64)?; // batches of up to 64
/// # Ok(()) }
/// ```
///
/// # Per step
/// [`RedReg::step`] takes the batch's labels, per modality a [`ModalityTensors`] (its
/// unimodal head's logits, its pooled features, and two noisy copies of its input with
/// their encoder features) and the step's [`GradStore`]; it runs the statistics, lets the
/// controller decide, adds `β·(d − P d)` (`d = θ − θ₀`) to the dominant encoder's
/// gradients in the store, and returns the [`Decision`].
///
/// # Batch sizes
/// Any batch of 1 up to the declared `max_batch` samples runs (the last, smaller batch of
/// an epoch included); the statistics are then means over the samples given. The
/// statistics plan is declared at the first successful step, for `max_batch` samples of
/// that step's per-sample widths (classes, feature and input elements per sample, pooled
/// width); every later step must have the same widths.
///
/// # The inputs
/// - The noisy copies: `x1 = x + n1`, `x2 = x + n2` with independent Gaussian noise of
///   standard deviation [`NOISE_SIGMA`] (0.03), from the undropped input; `z1`, `z2` their
///   encoder features, computed without gradient (`detach()`). Any shapes with B rows.
/// - The pooled features (B×D) of all modalities must have the **same width D**: their
///   per-sample cosine is the co-information gate's agreement `pos_sim`.
/// - Logits B×C, labels a vector of B class indices (u8, u32 or i64).
///
/// # The zero first step
/// [`RedReg::begin_epoch`] snapshots θ₀ = θ. Until the optimizer has stepped, the drift
/// `d = θ − θ₀` is zero, so a step that suppresses a modality before the epoch's first
/// optimizer step leaves its gradients unchanged (bit for bit): the first step of every
/// epoch changes nothing, as in the authors' script. It is not a bug.
///
/// # Errors
/// Every bad input is an `Err` with the argument named — tensors on another device than
/// the encoders', a batch larger than declared or empty, a modality count other than the
/// encoders', widths that differ from the first step's, a step before `begin_epoch` — and
/// an `Err` from `step` or `begin_epoch` leaves the controller, the snapshots, the plan and
/// the `GradStore` as they were.
#[derive(Debug)]
pub struct RedReg {
    device: Device,
    backend: OnDevice<Backends>,
    controller: Controller,
    encoders: Vec<Vec<Var>>,
    max_batch: usize,
    /// Declared at the first successful step (the per-sample widths are known only then).
    stats: Option<Stats>,
    /// θ₀ per encoder, taken by `begin_epoch`.
    theta0: Option<Vec<Vec<Tensor>>>,
}

/// The statistics plan's executor, its handles and the declared shapes (at `max_batch`).
#[derive(Debug)]
struct Stats {
    exec: OnDevice<Executors>,
    handles: RedRegStats,
    shapes: Vec<ModalityShapes>,
}

impl RedReg {
    /// RedReg for the encoders in `encoders` (one candle-nn `VarMap` per modality, in the
    /// order the modalities are given to [`RedReg::step`]; at least 2) and batches of up to
    /// `max_batch` samples. The variables of each map are taken once, sorted by name;
    /// variables added to a map later are not regulated. See [`RedReg::from_vars`].
    pub fn new(config: Config, encoders: &[&candle_nn::VarMap], max_batch: usize) -> Result<Self> {
        let vars = encoders
            .iter()
            .enumerate()
            .map(|(m, map)| {
                let data = map.data().lock().map_err(|_| {
                    invalid("encoders", format!("the VarMap of encoder {m} is poisoned"))
                })?;
                let mut named: Vec<(&String, &Var)> = data.iter().collect();
                named.sort_by(|a, b| a.0.cmp(b.0));
                Ok(named.into_iter().map(|(_, v)| v.clone()).collect())
            })
            .collect::<Result<Vec<Vec<Var>>>>()?;
        Self::from_vars(config, vars, max_batch)
    }

    /// RedReg for encoders given as their parameter lists (one `Vec<Var>` per modality, at
    /// least 2, none empty), on the device of their variables (CPU, or CUDA with feature
    /// `candle-cuda`), for batches of up to `max_batch` (≥ 1) samples. `Err` for an invalid
    /// config, variables on two devices, or a device the backend cannot serve.
    pub fn from_vars(config: Config, encoders: Vec<Vec<Var>>, max_batch: usize) -> Result<Self> {
        let controller = Controller::new(config, encoders.len())?;
        if max_batch == 0 {
            return Err(invalid("max_batch", "must be at least 1"));
        }
        if let Some(m) = encoders.iter().position(Vec::is_empty) {
            return Err(invalid("encoders", format!("encoder {m} has no variables")));
        }
        let device = encoders[0][0].device().clone();
        for (m, vars) in encoders.iter().enumerate() {
            for v in vars {
                if let Some(why) = off_device(&device, v.as_tensor()) {
                    return Err(invalid(
                        "encoders",
                        format!("a variable of encoder {m} {why}, the first one's"),
                    ));
                }
            }
        }
        Ok(Self {
            backend: OnDevice::<Backends>::for_device(&device)?,
            device,
            controller,
            encoders,
            max_batch,
            stats: None,
            theta0: None,
        })
    }

    /// Epoch start: resets the controller's score histories and redundancy EMAs, sets the
    /// epoch's agreement threshold, and snapshots θ₀ of every encoder (deep copies). Call
    /// it before the epoch's first [`RedReg::step`], with `epoch < config.epochs`. `Err`
    /// (nothing changed) for an epoch past the configured ones.
    pub fn begin_epoch(&mut self, epoch: usize) -> Result<()> {
        let theta0 = self
            .encoders
            .iter()
            .map(|vars| snapshot(vars))
            .collect::<Result<Vec<_>>>()?;
        self.controller.begin_epoch(epoch)?;
        self.theta0 = Some(theta0);
        Ok(())
    }

    /// One training step, after `backward()` and before the optimizer step: the fused
    /// statistics of `modalities` (one [`ModalityTensors`] per encoder, in the encoders'
    /// order) and `labels`, the controller's decision, and — when it suppresses modality
    /// `m` — `grad_i += β·(d_i − P_i d_i)` for every parameter `i` of encoder `m` in
    /// `grads` (`d_i = θ_i − θ₀_i`, `P_i` the projector onto `span{grad_i}`; a parameter
    /// without a gradient gets `β·d_i`). Returns the decision (who was suppressed, β, and
    /// every intermediate value, for logging).
    ///
    /// The batch may hold 1 to `max_batch` samples (the same number in every tensor).
    /// `Err` before the first [`RedReg::begin_epoch`], for tensors on another device, a
    /// batch of 0 or more than `max_batch` samples, a modality count other than the
    /// encoders', widths or dtypes that differ from the first step's, a label out of range,
    /// or gradients whose shapes differ from their parameters'; after an `Err` the
    /// controller, the plan and `grads` are as before the call.
    pub fn step(
        &mut self,
        labels: &Tensor,
        modalities: &[ModalityTensors<'_>],
        grads: &mut GradStore,
    ) -> Result<Decision> {
        let theta0 = self
            .theta0
            .as_ref()
            .ok_or_else(|| invalid("epoch", "call begin_epoch before the first step"))?;
        let shapes = self.check_inputs(labels, modalities)?;
        // A plan declared here is kept only if the whole step succeeds.
        let mut fresh = None;
        let stats = match self.stats.as_mut() {
            Some(s) => s,
            None => fresh.insert(declare(&self.backend, shapes, self.max_batch)?),
        };
        let inputs = step_inputs(&mut stats.exec, &stats.handles, labels, modalities)?;
        // The controller's state advances with `observe`; a projection that fails after it
        // must not leave a half-made step behind.
        let before = self.controller.clone();
        let decision = self.controller.observe(&inputs)?;
        if let Some(m) = decision.suppressed {
            let projected = project_drift_into_grads(
                &self.backend,
                &self.encoders[m],
                &theta0[m],
                grads,
                &[],
                decision.beta,
                &self.controller.config().project,
            );
            if let Err(e) = projected {
                self.controller = before;
                return Err(e);
            }
        }
        if let Some(s) = fresh {
            self.stats = Some(s);
        }
        Ok(decision)
    }

    /// Every input's device, batch size and per-sample widths (against the declaration
    /// once there is one); the step's shapes at its own batch size.
    fn check_inputs(
        &self,
        labels: &Tensor,
        modalities: &[ModalityTensors<'_>],
    ) -> Result<Vec<ModalityShapes>> {
        let m = self.encoders.len();
        if modalities.len() != m {
            return Err(invalid(
                "modalities",
                format!(
                    "{} modalities given, RedReg was made for {m} encoders",
                    modalities.len()
                ),
            ));
        }
        if let Some(why) = off_device(&self.device, labels) {
            return Err(invalid("labels", format!("{why}, the encoders'")));
        }
        let batch = match labels.dims() {
            &[b] => b,
            other => {
                return Err(invalid(
                    "labels",
                    format!("must be a vector of B class indices, got shape {other:?}"),
                ))
            }
        };
        if batch == 0 || batch > self.max_batch {
            return Err(invalid(
                "labels",
                format!(
                    "a batch of {batch} samples; RedReg was declared for 1 to {} (max_batch)",
                    self.max_batch
                ),
            ));
        }
        let mut shapes = Vec::with_capacity(m);
        for (i, t) in modalities.iter().enumerate() {
            for (what, x) in [
                ("logits", t.logits),
                ("z1", t.z1),
                ("z2", t.z2),
                ("x1", t.x1),
                ("x2", t.x2),
                ("pooled features", t.pooled),
            ] {
                if let Some(why) = off_device(&self.device, x) {
                    return Err(invalid(
                        "modalities",
                        format!("modality {i}: {what} {why}, the encoders'"),
                    ));
                }
            }
            let s = modality_shapes(t)?;
            let bad = |what: &str, got: usize, want: usize| {
                invalid(
                    "modalities",
                    format!("modality {i}: {what} is {got}, expected {want}"),
                )
            };
            if s.batch != batch {
                return Err(bad("the batch of the logits", s.batch, batch));
            }
            // Feature and input copies: equal, whole numbers of elements per sample.
            for (what, n, first) in [
                ("z1", t.z1.elem_count(), s.features),
                ("z2", t.z2.elem_count(), s.features),
                ("x1", t.x1.elem_count(), s.inputs),
                ("x2", t.x2.elem_count(), s.inputs),
            ] {
                if n != first || n % batch != 0 {
                    return Err(invalid(
                        "modalities",
                        format!(
                            "modality {i}: {what} has {n} elements; z1 and z2 ({} in z1), \
                             and x1 and x2 ({} in x1), must hold the same whole number of \
                             elements per sample for the {batch} samples",
                            s.features, s.inputs
                        ),
                    ));
                }
            }
            if let Some(d) = self.stats.as_ref().map(|st| st.shapes[i]) {
                if s.dtype != d.dtype {
                    return Err(invalid(
                        "modalities",
                        format!(
                            "modality {i}: dtype {}, the first step's was {}",
                            s.dtype, d.dtype
                        ),
                    ));
                }
                let per = |n: usize, b: usize| n / b;
                let checks = [
                    ("the classes", s.classes, d.classes),
                    ("the pooled width", s.pooled, d.pooled),
                    (
                        "features per sample",
                        per(s.features, batch),
                        per(d.features, d.batch),
                    ),
                    (
                        "inputs per sample",
                        per(s.inputs, batch),
                        per(d.inputs, d.batch),
                    ),
                ];
                for (what, got, want) in checks {
                    if got != want {
                        return Err(bad(what, got, want));
                    }
                }
            }
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// The controller (its config, state and epoch).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The device of the encoders, on which every tensor of a step must be.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The backend the projection runs on (CPU, or CUDA on candle's stream).
    pub fn backend(&self) -> &OnDevice<Backends> {
        &self.backend
    }

    /// The largest batch a step accepts.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The regulated variables of encoder `m` (in the order of its snapshot).
    pub fn encoder_vars(&self, m: usize) -> Option<&[Var]> {
        self.encoders.get(m).map(Vec::as_slice)
    }

    /// θ₀ of encoder `m` (the snapshot of the last [`RedReg::begin_epoch`]), `None` before
    /// the first.
    pub fn theta0(&self, m: usize) -> Option<&[Tensor]> {
        self.theta0.as_ref()?.get(m).map(Vec::as_slice)
    }
}

/// The plan for `max_batch` samples of the per-sample widths in `shapes` (one step's, at
/// its own batch size), and its executor on the backend's device.
fn declare(
    backend: &OnDevice<Backends>,
    shapes: Vec<ModalityShapes>,
    max_batch: usize,
) -> Result<Stats> {
    let at_max = |n: usize, b: usize| {
        (n / b)
            .checked_mul(max_batch)
            .ok_or_else(|| invalid("max_batch", format!("{max_batch} samples overflow usize")))
    };
    let shapes = shapes
        .into_iter()
        .map(|s| {
            Ok(ModalityShapes {
                batch: max_batch,
                features: at_max(s.features, s.batch)?,
                inputs: at_max(s.inputs, s.batch)?,
                ..s
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut plan = StatsPlan::new();
    let handles = RedRegStats::declare(&mut plan, &shapes)?;
    Ok(Stats {
        exec: OnDevice::<Executors>::new(backend, &plan)?,
        handles,
        shapes,
    })
}

/// Why `t` is not on `device` ("is on X, not on Y"), or `None` when it is.
fn off_device(device: &Device, t: &Tensor) -> Option<String> {
    (!t.device().same_device(device)).then(|| {
        format!(
            "is on {:?}, not on {:?}",
            t.device().location(),
            device.location()
        )
    })
}
