//! Balanced multimodal training with RedReg, on candle (CPU or CUDA), on a synthetic imbalanced
//! two-modality dataset generated in code.
//!
//! ```text
//! cargo run --release --features candle --example balance [-- --epochs 16 --seed 7 --seeds 3 --lr 0.02 --k 1 --out out/balance.svg]
//! cargo run --release --features candle-cuda --example balance   # on the GPU when one is present (--cpu: not)
//! ```
//!
//! Data (8 classes, label `y`): modality A is a 16-dim, low-noise code of `y` in 92 % of
//! the samples and pure noise in the other 8 % (a strong, fast shortcut for most of the
//! label information); modality B is a 64-dim code of `y` with a random sign per sample,
//! amplitude 0.35 in unit-variance noise: its class-conditional mean is zero, so nothing
//! linear in the raw input reads it, the encoder has to learn it (slow, needs capacity), and
//! it is the only source for the samples where A is noise.
//! Model: two MLP encoders (A: 16→32→32, B: 64→128→32), a fused linear head on the
//! concatenated features and one linear head per modality; loss `L_mm + L_a + L_b`
//! (by default the unimodal heads are linear probes on detached features, so the B-only
//! accuracy measures what B's encoder learned from the joint objective; `--script-loss`
//! lets `L_a + L_b` reach the encoders as in the authors' script);
//! SGD with momentum 0.9 and weight decay 1e-4; the script's modality-dropout schedule;
//! `theta_0` snapshot at each epoch start. RedReg per step: statistics (true-label
//! probabilities of the unimodal heads, redundancy from two noisy copies with sigma 0.03,
//! cosine agreement of the pooled features) → `Controller::observe` → projection of the
//! dominant encoder's drift into its gradients (`redreg::candle`, `CpuBackend` or, on a GPU,
//! `CudaBackend` on candle's stream) → step.
//!
//! Three runs per seed with the same data, initialisation and data order: baseline (no
//! RedReg), RedReg, and B alone (only `L_b`: what modality B reaches without A, the
//! reference for the imbalance). `--seeds N` repeats this for seeds `seed..seed+N` and
//! prints the mean ± sample std of the final-epoch accuracies.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var, D};
use redreg::controller::{Config, Controller, DropoutSchedule, Dropped, Redundancy, StepInputs};
use redreg::CpuBackend;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const CLASSES: usize = 8;
const DIM_A: usize = 16;
const DIM_B: usize = 64;
const HID_A: usize = 32;
const HID_B: usize = 128;
const FEAT: usize = 32;
const N_TRAIN: usize = 6144;
const N_TEST: usize = 2048;
const BATCH: usize = 64;
const MOMENTUM: f64 = 0.9;
const WEIGHT_DECAY: f64 = 1e-4;
const NOISE_SIGMA: f32 = 0.03;
/// Fraction of samples whose A carries the class code (the rest: A is pure noise).
const P_A: f64 = 0.92;
/// Amplitude of B's class code (times a random sign per sample) in unit-variance noise.
const AMP_B: f32 = 0.35;

// ---------------------------------------------------------------- device
/// Where the model trains: the first CUDA GPU when the example is built with feature
/// `candle-cuda`, a GPU is present and `--cpu` is not given; the CPU otherwise.
static DEVICE: OnceLock<Device> = OnceLock::new();

fn dev() -> &'static Device {
    DEVICE.get_or_init(|| Device::Cpu)
}

/// Picks the device (once, before training) and says which and why.
fn choose_device(force_cpu: bool) -> String {
    let (d, why) = if force_cpu {
        (Device::Cpu, "CPU (--cpu)".to_string())
    } else {
        gpu_device()
    };
    let _ = DEVICE.set(d);
    why
}

#[cfg(feature = "candle-cuda")]
fn gpu_device() -> (Device, String) {
    let probe = redreg::cuda::cuda_available()
        .and_then(|()| Device::new_cuda(0).map_err(|e| format!("candle: {e}")));
    match probe {
        Ok(d) => (d, "CUDA device 0 (feature candle-cuda)".into()),
        Err(why) => (Device::Cpu, format!("CPU (no usable GPU: {why})")),
    }
}

#[cfg(not(feature = "candle-cuda"))]
fn gpu_device() -> (Device, String) {
    (
        Device::Cpu,
        "CPU (built without feature candle-cuda)".into(),
    )
}

/// The RedReg projection backend for the training device.
enum Backend {
    Cpu(CpuBackend),
    #[cfg(feature = "candle-cuda")]
    Cuda(redreg::cuda::CudaBackend),
}

impl Backend {
    fn for_device(d: &Device) -> Res<Self> {
        match d {
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(_) => Ok(Self::Cuda(redreg::candle::cuda_backend(d)?)),
            _ => Ok(Self::Cpu(CpuBackend::new())),
        }
    }

    fn project_drift_into_grads(
        &self,
        params: &[Var],
        theta0: &[Tensor],
        grads: &mut GradStore,
        extra: &[&[Tensor]],
        beta: f64,
        opts: &redreg::ProjectOptions,
    ) -> Res<Vec<u32>> {
        use redreg::candle::project_drift_into_grads as f;
        Ok(match self {
            Self::Cpu(b) => f(b, params, theta0, grads, extra, beta, opts)?,
            #[cfg(feature = "candle-cuda")]
            Self::Cuda(b) => f(b, params, theta0, grads, extra, beta, opts)?,
        })
    }
}

// ---------------------------------------------------------------- deterministic RNG
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        // SplitMix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn normals(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * sigma).collect()
    }
}

// ---------------------------------------------------------------- data
struct Data {
    xa: Vec<f32>,
    xb: Vec<f32>,
    y: Vec<u32>,
}

fn make_data(seed: u64) -> (Data, Data) {
    let mut rng = Rng(seed ^ 0xDA7A);
    let proto_a: Vec<f32> = rng.normals(CLASSES * DIM_A, 1.0);
    let proto_b: Vec<f32> = rng.normals(CLASSES * DIM_B, 1.0);
    let mut gen = |n: usize| {
        let mut d = Data {
            xa: Vec::with_capacity(n * DIM_A),
            xb: Vec::with_capacity(n * DIM_B),
            y: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let y = (rng.next_u64() % CLASSES as u64) as usize;
            let a_has = rng.uniform() < P_A;
            for j in 0..DIM_A {
                let c = if a_has {
                    1.5 * proto_a[y * DIM_A + j]
                } else {
                    0.0
                };
                d.xa.push(c + 0.5 * rng.normal());
            }
            // Random sign: the class-conditional mean of B is zero, so no linear read-out of
            // the raw input works; the encoder has to learn |proto_y · x|-like features.
            let amp = if rng.next_u64() & 1 == 0 {
                AMP_B
            } else {
                -AMP_B
            };
            for j in 0..DIM_B {
                d.xb.push(amp * proto_b[y * DIM_B + j] + rng.normal());
            }
            d.y.push(y as u32);
        }
        d
    };
    let train = gen(N_TRAIN);
    let test = gen(N_TEST);
    (train, test)
}

// ---------------------------------------------------------------- model
struct Linear {
    w: Var,
    b: Var,
}

impl Linear {
    fn new(rng: &mut Rng, fan_in: usize, fan_out: usize) -> Res<Self> {
        let bound = (1.0 / fan_in as f64).sqrt();
        let w: Vec<f32> = (0..fan_in * fan_out)
            .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
            .collect();
        let b: Vec<f32> = (0..fan_out)
            .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
            .collect();
        Ok(Self {
            w: Var::from_tensor(&Tensor::from_vec(w, (fan_out, fan_in), dev())?)?,
            b: Var::from_tensor(&Tensor::from_vec(b, fan_out, dev())?)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Res<Tensor> {
        Ok(x.matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.b.as_tensor())?)
    }
    fn vars(&self) -> [Var; 2] {
        [self.w.clone(), self.b.clone()]
    }
}

struct Encoder {
    l1: Linear,
    l2: Linear,
}

impl Encoder {
    fn new(rng: &mut Rng, d_in: usize, hidden: usize) -> Res<Self> {
        Ok(Self {
            l1: Linear::new(rng, d_in, hidden)?,
            l2: Linear::new(rng, hidden, FEAT)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Res<Tensor> {
        Ok(self.l2.forward(&self.l1.forward(x)?.relu()?)?.relu()?)
    }
    fn vars(&self) -> Vec<Var> {
        let mut v = self.l1.vars().to_vec();
        v.extend(self.l2.vars());
        v
    }
}

struct Model {
    enc: [Encoder; 2],
    head: Linear,
    uni: [Linear; 2],
}

impl Model {
    fn new(seed: u64) -> Res<Self> {
        let mut rng = Rng(seed ^ 0x5EED);
        Ok(Self {
            enc: [
                Encoder::new(&mut rng, DIM_A, HID_A)?,
                Encoder::new(&mut rng, DIM_B, HID_B)?,
            ],
            head: Linear::new(&mut rng, 2 * FEAT, CLASSES)?,
            uni: [
                Linear::new(&mut rng, FEAT, CLASSES)?,
                Linear::new(&mut rng, FEAT, CLASSES)?,
            ],
        })
    }
    /// (fused logits, [A logits, B logits], [A features, B features]).
    /// `probe`: the unimodal heads read detached features (linear probes).
    fn forward(
        &self,
        xa: &Tensor,
        xb: &Tensor,
        probe: bool,
    ) -> Res<(Tensor, [Tensor; 2], [Tensor; 2])> {
        let za = self.enc[0].forward(xa)?;
        let zb = self.enc[1].forward(xb)?;
        let out = self.head.forward(&Tensor::cat(&[&za, &zb], 1)?)?;
        let (ua, ub) = if probe {
            (za.detach(), zb.detach())
        } else {
            (za.clone(), zb.clone())
        };
        let oa = self.uni[0].forward(&ua)?;
        let ob = self.uni[1].forward(&ub)?;
        Ok((out, [oa, ob], [za, zb]))
    }
    fn all_vars(&self) -> Vec<Var> {
        let mut v = self.enc[0].vars();
        v.extend(self.enc[1].vars());
        v.extend(self.head.vars());
        v.extend(self.uni[0].vars());
        v.extend(self.uni[1].vars());
        v
    }
}

// ---------------------------------------------------------------- training
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Baseline,
    RedReg,
    BAlone,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::RedReg => "redreg",
            Mode::BAlone => "B alone",
        }
    }
}

#[derive(Clone, Default)]
struct EpochLog {
    fused: f64,
    acc: [f64; 2],
    beta_mean: f64,
    gate_open: f64,
    suppressed: [usize; 2],
    steps: usize,
}

struct RunLog {
    epochs: Vec<EpochLog>,
    overhead_ms: f64,
    step_ms: f64,
}

struct Args {
    epochs: usize,
    seed: u64,
    seeds: usize,
    lr: f64,
    k: usize,
    out: String,
    script_loss: bool,
    cpu: bool,
}

fn batch(d: &Data, idx: &[usize]) -> Res<(Tensor, Tensor, Tensor)> {
    let mut xa = Vec::with_capacity(idx.len() * DIM_A);
    let mut xb = Vec::with_capacity(idx.len() * DIM_B);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        xa.extend_from_slice(&d.xa[i * DIM_A..(i + 1) * DIM_A]);
        xb.extend_from_slice(&d.xb[i * DIM_B..(i + 1) * DIM_B]);
        y.push(d.y[i]);
    }
    let n = idx.len();
    Ok((
        Tensor::from_vec(xa, (n, DIM_A), dev())?,
        Tensor::from_vec(xb, (n, DIM_B), dev())?,
        Tensor::from_vec(y, n, dev())?,
    ))
}

/// Batch mean of softmax(logits)[y].
fn true_label_prob(logits: &Tensor, y: &Tensor) -> Res<f64> {
    let p = candle_nn::ops::softmax_last_dim(logits)?;
    let g = p.gather(&y.unsqueeze(1)?, 1)?;
    Ok(g.mean_all()?.to_scalar::<f32>()? as f64)
}

/// (mean((z1 - z2)^2), mean((x1 - x2)^2)) for one encoder and two noisy copies.
fn redundancy(enc: &Encoder, x: &Tensor, rng: &mut Rng) -> Res<(Redundancy, Tensor)> {
    let n = x.elem_count();
    let n1 = Tensor::from_vec(rng.normals(n, NOISE_SIGMA), x.dims(), dev())?;
    let n2 = Tensor::from_vec(rng.normals(n, NOISE_SIGMA), x.dims(), dev())?;
    let (x1, x2) = ((x + n1)?, (x + n2)?);
    let z1 = enc.forward(&x1)?.detach();
    let z2 = enc.forward(&x2)?.detach();
    let num = (&z1 - &z2)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    let den = (&x1 - &x2)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok((Redundancy::from_parts(num, den), z1))
}

/// Batch mean of the cosine between the two modalities' features of the same sample.
fn agreement(za: &Tensor, zb: &Tensor) -> Res<f64> {
    let dot = (za * zb)?.sum(D::Minus1)?;
    let na = za.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = zb.sqr()?.sum(D::Minus1)?.sqrt()?;
    let cos = dot.div(&((na * nb)? + 1e-8)?)?;
    Ok(cos.mean_all()?.to_scalar::<f32>()? as f64)
}

fn accuracy(logits: &Tensor, y: &[u32]) -> Res<f64> {
    let am = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(am.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64)
}

fn evaluate(m: &Model, test: &Data) -> Res<(f64, [f64; 2])> {
    let idx: Vec<usize> = (0..N_TEST).collect();
    let (xa, xb, _) = batch(test, &idx)?;
    let (out, [oa, ob], _) = m.forward(&xa, &xb, true)?;
    Ok((
        accuracy(&out, &test.y)?,
        [accuracy(&oa, &test.y)?, accuracy(&ob, &test.y)?],
    ))
}

fn sgd_step(vars: &[Var], grads: &GradStore, mom: &mut [Option<Tensor>], lr: f64) -> Res<()> {
    for (v, buf) in vars.iter().zip(mom.iter_mut()) {
        let Some(g) = grads.get(v.as_tensor()) else {
            continue;
        };
        let g = (g + (v.as_tensor() * WEIGHT_DECAY)?)?;
        let b = match buf.take() {
            Some(b) => ((b * MOMENTUM)? + g)?,
            None => g,
        };
        v.set(&(v.as_tensor() - (&b * lr)?)?)?;
        *buf = Some(b);
    }
    Ok(())
}

fn train(mode: Mode, args: &Args, seed: u64, train_d: &Data, test_d: &Data) -> Res<RunLog> {
    let model = Model::new(seed)?;
    let vars = model.all_vars();
    let enc_vars = [model.enc[0].vars(), model.enc[1].vars()];
    let mut mom: Vec<Option<Tensor>> = vec![None; vars.len()];
    let cfg = Config::new(args.epochs);
    let dropout: DropoutSchedule = cfg.dropout;
    let mut ctl = Controller::new(cfg.clone(), 2)?;
    let backend = Backend::for_device(dev())?;
    // Same data order and dropout draws in every run; RedReg's noise has its own stream.
    let mut order_rng = Rng(seed ^ 0x0D0E);
    let mut noise_rng = Rng(seed ^ 0x4015E);
    let mut history: [Vec<Vec<Tensor>>; 2] = [Vec::new(), Vec::new()];
    let steps_per_epoch = N_TRAIN / BATCH;
    let (mut overhead, mut total, mut nsteps) = (0.0f64, 0.0f64, 0usize);
    let mut log = Vec::new();
    for epoch in 0..args.epochs {
        let theta0 = [
            redreg::candle::snapshot(&enc_vars[0])?,
            redreg::candle::snapshot(&enc_vars[1])?,
        ];
        ctl.begin_epoch(epoch)?;
        let p_drop = dropout.probability(epoch, args.epochs)?;
        let mut perm: Vec<usize> = (0..N_TRAIN).collect();
        for i in (1..N_TRAIN).rev() {
            perm.swap(i, (order_rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut el = EpochLog::default();
        for s in 0..steps_per_epoch {
            let t0 = Instant::now();
            let idx = &perm[s * BATCH..(s + 1) * BATCH];
            let (xa, xb, y) = batch(train_d, idx)?;
            let u = order_rng.uniform();
            let (fa, fb) = match DropoutSchedule::decide(p_drop, u) {
                Dropped::First => (xa.zeros_like()?, xb.clone()),
                Dropped::Second => (xa.clone(), xb.zeros_like()?),
                Dropped::None => (xa.clone(), xb.clone()),
            };
            let probe = !args.script_loss && mode != Mode::BAlone;
            let (out, [oa, ob], _) = model.forward(&fa, &fb, probe)?;
            let l_b = candle_nn::loss::cross_entropy(&ob, &y)?;
            let loss = match mode {
                Mode::BAlone => l_b,
                _ => {
                    ((candle_nn::loss::cross_entropy(&out, &y)?
                        + candle_nn::loss::cross_entropy(&oa, &y)?)?
                        + l_b)?
                }
            };
            let mut grads = loss.backward()?;
            if mode == Mode::RedReg {
                let t1 = Instant::now();
                let p = [true_label_prob(&oa, &y)?, true_label_prob(&ob, &y)?];
                let (red_a, za) = redundancy(&model.enc[0], &xa, &mut noise_rng)?;
                let (red_b, zb) = redundancy(&model.enc[1], &xb, &mut noise_rng)?;
                let pos = agreement(&za, &zb)?;
                let d = ctl.observe(&StepInputs::pair(p[0], p[1], red_a, red_b, pos))?;
                let mut cur: Option<(usize, Vec<Tensor>)> = None;
                if let Some(m) = d.suppressed {
                    if args.k > 1 {
                        cur = Some((
                            m,
                            enc_vars[m]
                                .iter()
                                .map(|v| grads.get(v.as_tensor()).cloned())
                                .collect::<Option<Vec<_>>>()
                                .ok_or("missing encoder gradient")?,
                        ));
                    }
                    let extra: Vec<&[Tensor]> = history[m].iter().map(|h| h.as_slice()).collect();
                    backend.project_drift_into_grads(
                        &enc_vars[m],
                        &theta0[m],
                        &mut grads,
                        &extra,
                        d.beta,
                        &ctl.config().project,
                    )?;
                    el.suppressed[m] += 1;
                }
                if let Some((m, g)) = cur {
                    // Rank-k joint subspace: the own gradient plus the k-1 latest ones.
                    history[m].push(g);
                    if history[m].len() > args.k - 1 {
                        history[m].remove(0);
                    }
                }
                el.beta_mean += d.beta;
                el.gate_open += d.gate;
                overhead += t1.elapsed().as_secs_f64();
            }
            sgd_step(&vars, &grads, &mut mom, args.lr)?;
            total += t0.elapsed().as_secs_f64();
            nsteps += 1;
            el.steps += 1;
            if s % 8 == 0 || s + 1 == steps_per_epoch {
                let done = (s + 1) * 20 / steps_per_epoch;
                eprint!(
                    "\r  {:<8} epoch {:>2}/{} [{}{}]",
                    mode.name(),
                    epoch + 1,
                    args.epochs,
                    "#".repeat(done),
                    ".".repeat(20 - done)
                );
                std::io::stderr().flush().ok();
            }
        }
        let (fused, acc) = evaluate(&model, test_d)?;
        el.fused = fused;
        el.acc = acc;
        el.beta_mean /= el.steps as f64;
        el.gate_open /= el.steps as f64;
        log.push(el);
    }
    eprint!("\r{:60}\r", "");
    Ok(RunLog {
        epochs: log,
        overhead_ms: 1e3 * overhead / nsteps.max(1) as f64,
        step_ms: 1e3 * total / nsteps.max(1) as f64,
    })
}

// ---------------------------------------------------------------- output
fn print_table(title: &str, r: &RunLog, show_redreg: bool) {
    println!("\n{title}");
    if show_redreg {
        println!(
            "epoch | fused acc | A-only acc | B-only acc | mean beta | gate open | suppressed (steps A/B)"
        );
    } else {
        println!("epoch | fused acc | A-only acc | B-only acc");
    }
    for (e, l) in r.epochs.iter().enumerate() {
        if show_redreg {
            let sup = match (l.suppressed[0], l.suppressed[1]) {
                (0, 0) => "none".to_string(),
                (a, b) if a >= b => format!("A ({a}/{b})"),
                (a, b) => format!("B ({a}/{b})"),
            };
            println!(
                "{:>5} | {:>9.3} | {:>10.3} | {:>10.3} | {:>9.3} | {:>8.0}% | {}",
                e + 1,
                l.fused,
                l.acc[0],
                l.acc[1],
                l.beta_mean,
                100.0 * l.gate_open,
                sup
            );
        } else {
            println!(
                "{:>5} | {:>9.3} | {:>10.3} | {:>10.3}",
                e + 1,
                l.fused,
                l.acc[0],
                l.acc[1]
            );
        }
    }
}

fn write_svg(path: &str, runs: &[(&str, &RunLog)]) -> Res<()> {
    let (w, h, ml, mr, mt, mb) = (720.0, 420.0, 60.0, 170.0, 30.0, 50.0);
    let epochs = runs[0].1.epochs.len().max(2);
    let x = |e: usize| ml + (w - ml - mr) * e as f64 / (epochs - 1) as f64;
    let y = |a: f64| mt + (h - mt - mb) * (1.0 - a);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"18\" text-anchor=\"middle\">Test accuracy per modality (unimodal heads)</text>\n",
        (ml + w - mr) / 2.0
    );
    for i in 0..=10 {
        let a = i as f64 / 10.0;
        s += &format!(
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{a:.1}</text>\n",
            w - mr,
            ml - 6.0,
            y(a) + 4.0,
            y0 = y(a)
        );
    }
    for e in 0..epochs {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(e),
            h - mb + 18.0,
            e + 1
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\n",
        (ml + w - mr) / 2.0,
        h - 10.0
    );
    let colors = ["#1f77b4", "#d62728"];
    let dashes = ["", " stroke-dasharray=\"6 4\"", " stroke-dasharray=\"2 3\""];
    let mut ly = mt + 10.0;
    for (ri, (name, r)) in runs.iter().enumerate() {
        for (m, mname) in ["A", "B"].iter().enumerate() {
            if *name == "B alone" && m == 0 {
                continue;
            }
            let pts: Vec<String> = r
                .epochs
                .iter()
                .enumerate()
                .map(|(e, l)| format!("{:.1},{:.1}", x(e), y(l.acc[m])))
                .collect();
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} points=\"{}\"/>\n",
                colors[m],
                dashes[ri % 3],
                pts.join(" ")
            );
            s += &format!(
                "<line x1=\"{}\" x2=\"{}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"2\"{}/><text x=\"{}\" y=\"{:.1}\">{mname}-only, {name}</text>\n",
                w - mr + 10.0,
                w - mr + 40.0,
                colors[m],
                dashes[ri % 3],
                w - mr + 46.0,
                ly + 4.0
            );
            ly += 18.0;
        }
    }
    s += "</svg>\n";
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(path, s)?;
    Ok(())
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        epochs: 16,
        seed: 7,
        seeds: 3,
        lr: 0.02,
        k: 1,
        out: "out/balance.svg".into(),
        script_loss: false,
        cpu: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = val()?.parse()?,
            "--seed" => a.seed = val()?.parse()?,
            "--seeds" => a.seeds = val()?.parse()?,
            "--lr" => a.lr = val()?.parse()?,
            "--k" => a.k = val()?.parse()?,
            "--out" => a.out = val()?,
            "--script-loss" => a.script_loss = true,
            "--cpu" => a.cpu = true,
            "-h" | "--help" => {
                println!(
                    "balance [--epochs N (16)] [--seed S (7)] [--seeds N (3)] [--lr LR (0.02)] [--k K (1)] \
                     [--out PATH (out/balance.svg)] [--script-loss] [--cpu]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other} (see --help)").into()),
        }
    }
    if a.epochs == 0 || a.seeds == 0 || a.k == 0 || a.k > 8 || a.lr.is_nan() || a.lr <= 0.0 {
        return Err("need --epochs >= 1, --seeds >= 1, --lr > 0 and 1 <= --k <= 8".into());
    }
    Ok(a)
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let device = choose_device(args.cpu);
    println!(
        "balance: {N_TRAIN} train / {N_TEST} test samples, {CLASSES} classes; A = {DIM_A}-dim low-noise code of \
         the class, present in {:.0}% of samples (pure noise otherwise); B = {DIM_B}-dim noisy code of the class \
         with a random sign (not linearly separable); {} epochs, seeds {}..{}, k = {}, batch {BATCH}, \
         SGD lr {} momentum {MOMENTUM}",
        100.0 * P_A,
        args.epochs,
        args.seed,
        args.seed + args.seeds as u64 - 1,
        args.k,
        args.lr
    );
    println!(
        "unimodal heads: {}",
        if args.script_loss {
            "trained on the encoders' features, L_a + L_b reach the encoders (the script's loss)"
        } else {
            "linear probes on detached features (L_a + L_b train the heads only; the encoders learn from L_mm)"
        }
    );
    println!("device: {device}");
    let last = |r: &RunLog| r.epochs.last().cloned().unwrap_or_default();
    // finals[run][metric][seed]: run 0 baseline, 1 RedReg, 2 B alone; metric fused, A, B.
    let mut finals = vec![vec![Vec::new(); 3]; 3];
    let (mut step_base, mut step_rr, mut over_rr) = (0.0, 0.0, 0.0);
    for si in 0..args.seeds {
        let seed = args.seed + si as u64;
        let (train_d, test_d) = make_data(seed);
        let base = train(Mode::Baseline, &args, seed, &train_d, &test_d)?;
        let rr = train(Mode::RedReg, &args, seed, &train_d, &test_d)?;
        let alone = train(Mode::BAlone, &args, seed, &train_d, &test_d)?;
        for (ri, r) in [&base, &rr, &alone].iter().enumerate() {
            let l = last(r);
            finals[ri][0].push(l.fused);
            finals[ri][1].push(l.acc[0]);
            finals[ri][2].push(l.acc[1]);
        }
        step_base += base.step_ms / args.seeds as f64;
        step_rr += rr.step_ms / args.seeds as f64;
        over_rr += rr.overhead_ms / args.seeds as f64;
        if si == 0 {
            print_table(
                &format!("seed {seed}: baseline (joint training, no RedReg)"),
                &base,
                false,
            );
            print_table(&format!("seed {seed}: RedReg"), &rr, true);
            println!("\nseed {seed}: B alone (only L_b): B-only acc per epoch:");
            let b: Vec<String> = alone
                .epochs
                .iter()
                .map(|l| format!("{:.3}", l.acc[1]))
                .collect();
            println!("  {}", b.join(" "));
            write_svg(
                &args.out,
                &[("baseline", &base), ("RedReg", &rr), ("B alone", &alone)],
            )?;
        }
        println!(
            "seed {seed} final: baseline fused {:.3} A {:.3} B {:.3} | RedReg fused {:.3} A {:.3} B {:.3} | B alone {:.3}",
            finals[0][0][si],
            finals[0][1][si],
            finals[0][2][si],
            finals[1][0][si],
            finals[1][1][si],
            finals[1][2][si],
            finals[2][2][si]
        );
    }
    let ms = |v: &[f64]| {
        let (m, s) = mean_std(v);
        format!("{m:.3} ± {s:.3}")
    };
    println!(
        "\nsummary over {} seed(s), final epoch, mean ± std: baseline fused {} A {} B {} | RedReg fused {} A {} B {} | B alone {}",
        args.seeds,
        ms(&finals[0][0]),
        ms(&finals[0][1]),
        ms(&finals[0][2]),
        ms(&finals[1][0]),
        ms(&finals[1][1]),
        ms(&finals[1][2]),
        ms(&finals[2][2])
    );
    println!(
        "time per training step: baseline {step_base:.2} ms, RedReg {step_rr:.2} ms, of which RedReg overhead {over_rr:.2} ms \
         (statistics: 4 extra encoder forwards + controller + projection)"
    );
    println!(
        "plot (seed {}): {}  (total {:.1} s)",
        args.seed,
        args.out,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
