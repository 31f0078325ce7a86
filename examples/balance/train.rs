//! One training run (baseline, RedReg with one of its pipelines, OGM-GE, or B alone) and
//! what it logs per epoch. The example's calls into the crate (statistics plan, controller,
//! projection, candle adapter) are all in this file.

use super::data::{batch, Data, Dataset, Res, Rng};
use super::model::{sgd_step, Forward, Model};
use super::ogm::Ogm;
use super::{dev, Args};
use candle_core::{Tensor, D};
use indicatif::ProgressBar;
use redreg::candle::stats::{modality_shapes, step_inputs, ModalityTensors};
use redreg::candle::FusedOptimizer;
use redreg::candle::{project_drift_into_grads, Backends, Executors, OnDevice};
use redreg::controller::{Config, Controller, DropoutSchedule, Dropped, RedRegStats};
use redreg::optim::{Rule, Sgd};
use redreg::stats::StatsPlan;
use std::time::Instant;

/// Sigma of the Gaussian noise of the two noisy copies (the script's 0.03).
pub const NOISE_SIGMA: f32 = 0.03;

/// Where RedReg's scores `p_m` and agreement `pos_sim` come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipeline {
    /// The authors' script exactly: `p_m` and `pos_sim` from the main forward pass, whose
    /// input has modality dropout applied.
    Script,
    /// The trainer-side fix: on a batch with a dropped modality, `p_m` and `pos_sim` come
    /// from an extra forward pass of the undropped batch (no gradient); elsewhere the main
    /// forward is already undropped and is used as in the script.
    Clean,
    /// Another trainer-side fix: the script's statistics, but no suppression is applied on
    /// a batch with a dropped modality (the controller still observes every step).
    SkipDropped,
}

impl Pipeline {
    pub fn name(self) -> &'static str {
        match self {
            Pipeline::Script => "script",
            Pipeline::Clean => "clean",
            Pipeline::SkipDropped => "skip-dropped",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Pipeline::Script, Pipeline::Clean, Pipeline::SkipDropped]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// Which losses reach the encoders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The authors' script: `L_mm + L_a + L_b`, all reaching the encoders.
    Script,
    /// `L_mm` reaches the encoders; the unimodal heads are linear probes on detached
    /// features (trained by `L_a + L_b`), so B-only accuracy measures what B's encoder
    /// learned from the joint objective.
    Probe,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::Script => "script",
            Loss::Probe => "probe",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Loss::Script, Loss::Probe]
            .into_iter()
            .find(|l| l.name() == s)
    }
    pub fn describe(self) -> &'static str {
        match self {
            Loss::Script => {
                "the script's loss: L_mm + L_a + L_b, the unimodal heads' losses reach the encoders"
            }
            Loss::Probe => {
                "probe loss: L_mm reaches the encoders; the unimodal heads are linear probes on detached features"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Baseline,
    RedReg(Pipeline),
    /// OGM-GE (`ogm.rs`) with its α.
    OgmGe,
    BAlone,
}

impl Mode {
    pub fn label(self) -> String {
        match self {
            Mode::Baseline => "baseline".into(),
            Mode::RedReg(p) => format!("RedReg ({})", p.name()),
            Mode::OgmGe => "OGM-GE".into(),
            Mode::BAlone => "B alone".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EpochLog {
    pub fused: f64,
    /// Test accuracy of the unimodal heads `[A, B]`.
    pub acc: [f64; 2],
    /// Steps whose decision suppressed modality m, on batches `[without, with]` a dropped
    /// modality (applied or not: see `Pipeline::SkipDropped`); OGM-GE: steps whose
    /// coefficient for m is below 1.
    pub suppressed: [[usize; 2]; 2],
    /// OGM-GE: sum over the steps of each modality's coefficient.
    pub coeff_sum: [f64; 2],
    /// Sum of β over the suppressed steps.
    pub beta_sum: f64,
    /// Steps with the co-information gate open.
    pub gate_open: usize,
    /// The smallest `r` of the leading modality (what the monitor compares with R).
    pub min_r: f64,
    /// Sum over the steps of the fused training loss `L_mm` (of the main forward pass).
    pub loss_mm: f64,
    pub steps: usize,
}

impl EpochLog {
    fn new() -> Self {
        Self {
            fused: 0.0,
            acc: [0.0; 2],
            suppressed: [[0; 2]; 2],
            coeff_sum: [0.0; 2],
            beta_sum: 0.0,
            gate_open: 0,
            min_r: f64::INFINITY,
            loss_mm: 0.0,
            steps: 0,
        }
    }
    pub fn n_suppressed(&self) -> usize {
        self.suppressed.iter().flatten().sum()
    }
}

/// Seconds spent per part of the step, summed over the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub steps: usize,
    pub total: f64,
    /// Extra candle forwards for the statistics (noisy copies; the clean pass).
    pub forwards: f64,
    /// The crate's fused statistics plan (binding + run, on the training device).
    pub stats: f64,
    /// `Controller::observe`.
    pub controller: f64,
    /// The crate's projection into the gradients.
    pub projection: f64,
    /// Steps that ran the projection.
    pub projected: usize,
    /// The optimizer step (with `FusedOptimizer`, on a projecting step the projection's
    /// pass 1 is inside it and `projection` stays 0).
    pub optimizer: f64,
    /// Steps whose RedReg correction the fused optimizer step folded in.
    pub fused: usize,
    /// OGM-GE: scores, coefficients and the modulated gradients (with the noise).
    pub ogm: f64,
}

pub struct RunLog {
    pub epochs: Vec<EpochLog>,
    pub time: Timing,
}

fn accuracy(logits: &Tensor, y: &[u32]) -> Res<f64> {
    let am = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(am.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64)
}

fn evaluate(m: &Model, test: &Data) -> Res<(f64, [f64; 2])> {
    let idx: Vec<usize> = (0..test.len()).collect();
    let (xa, xb, _) = batch(test, &idx)?;
    let f = m.forward(&xa, &xb, true)?;
    let acc = |t: &Tensor| accuracy(t, &test.y);
    Ok((acc(&f.out)?, [acc(&f.uni[0])?, acc(&f.uni[1])?]))
}

/// RedReg's per-step state: controller, statistics plan, epoch-start snapshot.
struct RedReg {
    pipeline: Pipeline,
    ctl: Controller,
    plan: Option<(OnDevice<Executors>, RedRegStats)>,
    noise: Rng,
    history: [Vec<Vec<Tensor>>; 2],
}

pub fn train(
    mode: Mode,
    loss_form: Loss,
    args: &Args,
    seed: u64,
    data: &Dataset,
    bar: &ProgressBar,
) -> Res<RunLog> {
    let (train_d, test_d) = (&data.train, &data.test);
    let model = Model::new(seed, data)?;
    let vars = model.all_vars();
    let enc_vars = [model.enc[0].vars(), model.enc[1].vars()];
    // The optimizer: redreg's FusedOptimizer (SGD with the script's momentum 0.9 and weight
    // decay 1e-4, the same semantics as `sgd_step`; one pass over every variable, the RedReg
    // correction folded in), or `--candle-sgd`'s candle tensor ops. "B alone" trains only
    // B's side (A's variables get no gradient): candle's, with which its documented numbers
    // (docs/candle.md, also the screen's "each view alone") were measured; the fused
    // optimizer would skip A's variables too (PyTorch's semantics) but computes in f64.
    let mut mom: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut fused = match args.candle_sgd || mode == Mode::BAlone {
        true => None,
        false => Some(FusedOptimizer::for_vars(
            vars.clone(),
            Rule::Sgd(Sgd::script(args.lr)),
        )?),
    };
    // Where each encoder's variables start in `vars` (the model's order: A, B, …).
    let enc_first = [0, enc_vars[0].len()];
    let cfg = Config::new(args.epochs);
    let dropout: DropoutSchedule = cfg.dropout;
    let mut rr = match mode {
        Mode::RedReg(pipeline) => Some(RedReg {
            pipeline,
            ctl: Controller::new(cfg, 2)?,
            plan: None,
            noise: Rng(seed ^ 0x4015E),
            history: [Vec::new(), Vec::new()],
        }),
        _ => None,
    };
    let mut ogm = (mode == Mode::OgmGe).then(|| Ogm::new(args.ogm_alpha, seed));
    let backend = OnDevice::<Backends>::for_device(dev())?;
    // Same data order and dropout draws in every run of a seed (paired runs).
    let mut order_rng = Rng(seed ^ 0x0D0E);
    let n_train = train_d.len();
    let steps_per_epoch = n_train / args.batch;
    let mut time = Timing::default();
    let mut log = Vec::new();
    let probe = loss_form == Loss::Probe && mode != Mode::BAlone;
    for epoch in 0..args.epochs {
        let theta0 = [
            redreg::candle::snapshot(&enc_vars[0])?,
            redreg::candle::snapshot(&enc_vars[1])?,
        ];
        if let Some(r) = rr.as_mut() {
            r.ctl.begin_epoch(epoch)?;
        }
        let p_drop = if args.no_dropout {
            0.0
        } else {
            dropout.probability(epoch, args.epochs)?
        };
        let perm = order_rng.permutation(n_train);
        let mut el = EpochLog::new();
        for s in 0..steps_per_epoch {
            let t0 = Instant::now();
            let (xa, xb, y) = batch(train_d, &perm[s * args.batch..(s + 1) * args.batch])?;
            let dropped = DropoutSchedule::decide(p_drop, order_rng.uniform());
            let (fa, fb) = match dropped {
                Dropped::First => (xa.zeros_like()?, xb.clone()),
                Dropped::Second => (xa.clone(), xb.zeros_like()?),
                Dropped::None => (xa.clone(), xb.clone()),
            };
            let ce = |l: &Tensor| candle_nn::loss::cross_entropy(l, &y);
            if mode == Mode::BAlone {
                // Only B's encoder and head: L_b alone.
                let grads = ce(&model.forward_b(&fb)?)?.backward()?;
                let t = Instant::now();
                sgd_step(&vars, &grads, &mut mom, args.lr)?;
                time.optimizer += t.elapsed().as_secs_f64();
                time.total += t0.elapsed().as_secs_f64();
                time.steps += 1;
                el.steps += 1;
                continue;
            }
            let f = model.forward(&fa, &fb, probe)?;
            let l_mm = ce(&f.out)?;
            el.loss_mm += l_mm.to_scalar::<f32>()? as f64;
            let loss = ((l_mm + ce(&f.uni[0])?)? + ce(&f.uni[1])?)?;
            let mut grads = loss.backward()?;
            // Whether the RedReg step below already ran the optimizer (the fused form).
            let mut stepped = false;
            let was_dropped = dropped != Dropped::None;
            if let Some(o) = ogm.as_mut() {
                let t = Instant::now();
                // OGM-GE has no modality dropout: on a dropped batch its scores come from
                // an undropped pass, so that dropout does not decide its ratio.
                let clean;
                let src = if was_dropped {
                    clean = model.forward(&xa, &xb, probe)?;
                    &clean
                } else {
                    &f
                };
                let st = o.step(&model, src, &y, &mut grads, epoch, args.epochs)?;
                for m in 0..2 {
                    el.coeff_sum[m] += st.coeff[m];
                    if st.coeff[m] < 1.0 && st.applied {
                        el.suppressed[m][was_dropped as usize] += 1;
                    }
                }
                time.ogm += t.elapsed().as_secs_f64();
            }
            if let Some(r) = rr.as_mut() {
                let d = r.decide(
                    &model,
                    &f,
                    [&xa, &xb],
                    &y,
                    was_dropped,
                    probe,
                    &backend,
                    &mut time,
                )?;
                if let Some(m) = d.suppressed {
                    el.suppressed[m][was_dropped as usize] += 1;
                    el.beta_sum += d.beta;
                    let apply = !(r.pipeline == Pipeline::SkipDropped && was_dropped);
                    if apply && args.k == 1 {
                        if let Some(f) = fused.as_mut() {
                            // The correction folded into the optimizer's pass: the
                            // projection's pass 1, then one update pass (never written
                            // into the gradients).
                            let t = Instant::now();
                            f.step_redreg(&grads, enc_first[m], &theta0[m], d.beta)?;
                            time.optimizer += t.elapsed().as_secs_f64();
                            time.projected += 1;
                            time.fused += 1;
                            stepped = true;
                        }
                    }
                    if apply && !stepped {
                        let t = Instant::now();
                        r.project(
                            m,
                            args.k,
                            &enc_vars[m],
                            &theta0[m],
                            &mut grads,
                            &d,
                            &backend,
                        )?;
                        time.projection += t.elapsed().as_secs_f64();
                        time.projected += 1;
                    }
                }
                el.gate_open += (d.gate > 0.0) as usize;
                el.min_r = el.min_r.min(d.modalities[d.leader].r);
            }
            if !stepped {
                let t = Instant::now();
                match fused.as_mut() {
                    Some(f) => f.try_step(&grads)?,
                    None => sgd_step(&vars, &grads, &mut mom, args.lr)?,
                }
                time.optimizer += t.elapsed().as_secs_f64();
            }
            time.total += t0.elapsed().as_secs_f64();
            time.steps += 1;
            el.steps += 1;
        }
        let (fused, acc) = evaluate(&model, test_d)?;
        el.fused = fused;
        el.acc = acc;
        log.push(el);
        bar.inc(1);
    }
    Ok(RunLog { epochs: log, time })
}

impl RedReg {
    /// Statistics (noisy copies, the crate's plan) and the controller's decision.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        model: &Model,
        main: &Forward,
        x: [&Tensor; 2],
        y: &Tensor,
        dropped: bool,
        probe: bool,
        backend: &OnDevice<Backends>,
        time: &mut Timing,
    ) -> Res<redreg::controller::Decision> {
        let t = Instant::now();
        // Two noisy copies of the undropped input per modality, encoder features without
        // gradient (the script's redundancy).
        let mut noisy = Vec::with_capacity(2);
        for (xm, enc) in x.iter().zip(&model.enc) {
            let n = xm.elem_count();
            let n1 = Tensor::from_vec(self.noise.normals(n, NOISE_SIGMA), xm.dims(), dev())?;
            let n2 = Tensor::from_vec(self.noise.normals(n, NOISE_SIGMA), xm.dims(), dev())?;
            let (x1, x2) = ((*xm + n1)?, (*xm + n2)?);
            let z1 = enc.forward(&x1)?;
            let z2 = enc.forward(&x2)?;
            noisy.push([x1, x2, z1, z2]);
        }
        // Scores and agreement: the main forward (the script), or an undropped pass.
        let clean;
        let src = if self.pipeline == Pipeline::Clean && dropped {
            clean = model.forward(x[0], x[1], probe)?;
            &clean
        } else {
            main
        };
        let (logits, pooled) = (&src.uni, &src.feat);
        time.forwards += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mods: Vec<ModalityTensors> = (0..2)
            .map(|m| ModalityTensors {
                logits: &logits[m],
                x1: &noisy[m][0],
                x2: &noisy[m][1],
                z1: &noisy[m][2],
                z2: &noisy[m][3],
                pooled: &pooled[m],
            })
            .collect();
        if self.plan.is_none() {
            let shapes = [modality_shapes(&mods[0])?, modality_shapes(&mods[1])?];
            let mut plan = StatsPlan::new();
            let handles = RedRegStats::declare(&mut plan, &shapes)?;
            self.plan = Some((OnDevice::<Executors>::new(backend, &plan)?, handles));
        }
        let (exec, handles) = self.plan.as_mut().ok_or("statistics plan")?;
        let inputs = step_inputs(exec, handles, y, &mods)?;
        time.stats += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let d = self.ctl.observe(&inputs)?;
        time.controller += t.elapsed().as_secs_f64();
        Ok(d)
    }

    /// `grad += β·(d − P d)` for encoder `m`, with the rank-k joint basis (`--k`).
    #[allow(clippy::too_many_arguments)]
    fn project(
        &mut self,
        m: usize,
        k: usize,
        vars: &[candle_core::Var],
        theta0: &[Tensor],
        grads: &mut candle_core::backprop::GradStore,
        d: &redreg::controller::Decision,
        backend: &OnDevice<Backends>,
    ) -> Res<()> {
        let own: Option<Vec<Tensor>> = if k > 1 {
            Some(
                vars.iter()
                    .map(|v| grads.get(v.as_tensor()).cloned())
                    .collect::<Option<Vec<_>>>()
                    .ok_or("missing encoder gradient")?,
            )
        } else {
            None
        };
        let extra: Vec<&[Tensor]> = self.history[m].iter().map(|h| h.as_slice()).collect();
        project_drift_into_grads(
            backend,
            vars,
            theta0,
            grads,
            &extra,
            d.beta,
            &self.ctl.config().project,
        )?;
        if let Some(g) = own {
            // Rank-k joint subspace: the own gradient plus the k-1 latest ones.
            self.history[m].push(g);
            if self.history[m].len() > k - 1 {
                self.history[m].remove(0);
            }
        }
        Ok(())
    }
}
