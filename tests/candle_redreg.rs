//! `redreg::candle::RedReg`, the high-level candle integration, on the CPU device: a trainer
//! loop with a short last batch; the gradients after `step` against the crate's f64
//! reference projection and its decision against an independent controller fed by the f64
//! statistics reference; the zero first step of an epoch; bad inputs are `Err` and change
//! nothing.
#![cfg(feature = "candle")]

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Optimizer, VarBuilder, VarMap, SGD};
use common::candle::{flat, tensor};
use redreg::candle::stats::ModalityTensors;
use redreg::candle::RedReg;
use redreg::controller::{Config, Controller, Decision, Redundancy, StepInputs};
use redreg::stats::reference as stats_ref;
use redreg::{reference, Projection, Segments};

const C: usize = 4; // classes
const D_POOL: usize = 5; // pooled width, the same for both modalities
const WIDTHS: [usize; 2] = [8, 6]; // input widths of modalities a and b
const EPOCHS: usize = 3;

fn cpu() -> &'static Device {
    &Device::Cpu
}

/// One MLP encoder per modality in its own VarMap, deterministic weights.
struct Encoder {
    map: VarMap,
    l1: candle_nn::Linear,
    l2: candle_nn::Linear,
}

impl Encoder {
    fn new(seed: u64, width: usize) -> Self {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, cpu());
        let l1 = candle_nn::linear(width, 7, vb.pp("l1")).unwrap();
        let l2 = candle_nn::linear(7, D_POOL, vb.pp("l2")).unwrap();
        fix_init(&map, seed);
        Self { map, l1, l2 }
    }

    /// Pooled features B×D (a sigmoid: positive, so the two modalities' features agree
    /// and the co-information gate opens).
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.l1.forward(x).unwrap().relu().unwrap();
        candle_nn::ops::sigmoid(&self.l2.forward(&h).unwrap()).unwrap()
    }

    fn vars(&self) -> Vec<Var> {
        sorted_vars(&self.map)
    }
}

/// The variables of a map sorted by name (as `RedReg::new` takes them).
fn sorted_vars(map: &VarMap) -> Vec<Var> {
    let data = map.data().lock().unwrap();
    let mut named: Vec<_> = data.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    named.into_iter().map(|(_, v)| v.clone()).collect()
}

/// Replaces candle's random initialisation (unseeded on the CPU) by fixed values.
fn fix_init(map: &VarMap, seed: u64) {
    for (i, v) in sorted_vars(map).iter().enumerate() {
        v.set(&(tensor(seed + i as u64, v.dims(), cpu()) * 0.5).unwrap())
            .unwrap();
    }
}

/// Two encoders, one unimodal head each and a head on the concatenation.
struct Model {
    enc: [Encoder; 2],
    heads: VarMap,
    uni: [candle_nn::Linear; 2],
    fused: candle_nn::Linear,
}

impl Model {
    fn new() -> Self {
        let heads = VarMap::new();
        let vb = VarBuilder::from_varmap(&heads, DType::F32, cpu());
        let m = Self {
            enc: [Encoder::new(100, WIDTHS[0]), Encoder::new(200, WIDTHS[1])],
            uni: [
                candle_nn::linear(D_POOL, C, vb.pp("ua")).unwrap(),
                candle_nn::linear(D_POOL, C, vb.pp("ub")).unwrap(),
            ],
            fused: candle_nn::linear(2 * D_POOL, C, vb.pp("fused")).unwrap(),
            heads,
        };
        fix_init(&m.heads, 300);
        m
    }

    fn all_vars(&self) -> Vec<Var> {
        let mut v = self.enc[0].vars();
        v.extend(self.enc[1].vars());
        v.extend(sorted_vars(&self.heads));
        v
    }

    fn redreg(&self, max_batch: usize) -> RedReg {
        RedReg::new(
            Config::new(EPOCHS),
            &[&self.enc[0].map, &self.enc[1].map],
            max_batch,
        )
        .unwrap()
    }
}

/// A step's statistics tensors: per modality logits, pooled, x1, x2, z1, z2.
struct StepTensors {
    mods: Vec<[Tensor; 6]>,
}

impl StepTensors {
    fn views(&self) -> Vec<ModalityTensors<'_>> {
        self.mods
            .iter()
            .map(|m| ModalityTensors {
                logits: &m[0],
                pooled: &m[1],
                x1: &m[2],
                x2: &m[3],
                z1: &m[4],
                z2: &m[5],
            })
            .collect()
    }
}

/// The forward pass, the loss `L_mm + L_a + L_b`, its gradients and the statistics
/// tensors (noisy copies: the inputs plus fixed noise of scale 0.03).
fn forward(model: &Model, x: [&Tensor; 2], y: &Tensor, seed: u64) -> (GradStore, StepTensors) {
    let pooled: Vec<Tensor> = (0..2).map(|m| model.enc[m].forward(x[m])).collect();
    let logits: Vec<Tensor> = (0..2)
        .map(|m| model.uni[m].forward(&pooled[m]).unwrap())
        .collect();
    let fused = model
        .fused
        .forward(&Tensor::cat(&pooled, D::Minus1).unwrap())
        .unwrap();
    let ce = |l: &Tensor| candle_nn::loss::cross_entropy(l, y).unwrap();
    let loss = ((ce(&fused) + ce(&logits[0])).unwrap() + ce(&logits[1])).unwrap();
    let grads = loss.backward().unwrap();
    let mods = (0..2)
        .map(|m| {
            let noisy = |s: u64| (x[m] + (tensor(s, x[m].dims(), cpu()) * 0.03).unwrap()).unwrap();
            let (x1, x2) = (noisy(seed + 2 * m as u64), noisy(seed + 2 * m as u64 + 1));
            let z1 = model.enc[m].forward(&x1).detach();
            let z2 = model.enc[m].forward(&x2).detach();
            [logits[m].detach(), pooled[m].detach(), x1, x2, z1, z2]
        })
        .collect();
    (grads, StepTensors { mods })
}

/// `n` samples: labels 0..C, modality b carries the label (one-hot plus noise), a noise.
fn dataset(n: usize) -> ([Tensor; 2], Tensor) {
    let y: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % C as u32).collect();
    let labels = Tensor::new(y.as_slice(), cpu()).unwrap();
    let xa = tensor(1, &[n, WIDTHS[0]], cpu());
    let onehot = candle_nn::encoding::one_hot(labels.clone(), WIDTHS[1], 3f32, 0f32).unwrap();
    let xb = (onehot + (tensor(2, &[n, WIDTHS[1]], cpu()) * 0.3).unwrap()).unwrap();
    ([xa, xb], labels)
}

/// Step inputs of the f64 statistics reference (independent of the plan and its executor).
fn oracle_inputs(t: &StepTensors, y: &Tensor) -> StepInputs {
    let labels = redreg::candle::stats::labels_i64(y).unwrap();
    let rows = labels.len();
    let f = |x: &Tensor| flat::<f32>(x);
    let mut scores = Vec::new();
    let mut redundancy = Vec::new();
    for m in &t.mods {
        scores.push(stats_ref::true_prob_mean(&f(&m[0]), &labels, rows, C).unwrap());
        let num = stats_ref::sq_diff_mean(&f(&m[4]), &f(&m[5])).unwrap();
        let den = stats_ref::sq_diff_mean(&f(&m[2]), &f(&m[3])).unwrap();
        redundancy.push(Redundancy::from_parts(num, den));
    }
    let pos_sim =
        stats_ref::row_cos_mean(&f(&t.mods[0][1]), &f(&t.mods[1][1]), rows, D_POOL).unwrap();
    StepInputs::pair(scores[0], scores[1], redundancy[0], redundancy[1], pos_sim)
}

/// Every variable's gradient on the host (None where the store has none).
fn grads_of(grads: &GradStore, vars: &[Var]) -> Vec<Option<Vec<f32>>> {
    vars.iter()
        .map(|v| grads.get(v.as_tensor()).map(flat::<f32>))
        .collect()
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{what}: got {got}, want {want}"
    );
}

/// The trainer loop of a user: 50 samples in batches of 16 (the last has 2), SGD, RedReg
/// between backward and the optimizer step — no plan per batch size, no special case.
#[test]
fn a_trainer_with_a_short_last_batch_runs_through_redreg() {
    let model = Model::new();
    let (x, y) = dataset(50);
    let mut rr = model.redreg(16);
    let mut opt = SGD::new(model.all_vars(), 0.05).unwrap();
    let oracle_ctl = &mut Controller::new(Config::new(EPOCHS), 2).unwrap();
    let (mut sizes, mut projected_with_drift) = (Vec::new(), 0);
    for epoch in 0..EPOCHS {
        rr.begin_epoch(epoch).unwrap();
        oracle_ctl.begin_epoch(epoch).unwrap();
        for (s, start) in (0..50).step_by(16).enumerate() {
            let len = 16.min(50 - start);
            let xb = [
                &x[0].narrow(0, start, len).unwrap(),
                &x[1].narrow(0, start, len).unwrap(),
            ];
            let yb = y.narrow(0, start, len).unwrap();
            let (mut grads, t) = forward(&model, xb, &yb, 1000 + s as u64);
            let before = grads_of(&grads, &model.all_vars());
            let d = rr.step(&yb, &t.views(), &mut grads).unwrap();
            // The decision is the one an independent controller makes from the f64
            // statistics of the samples given (2 on the last step, not 16).
            let want = oracle_ctl.observe(&oracle_inputs(&t, &yb)).unwrap();
            assert_eq!(d.suppressed, want.suppressed, "epoch {epoch} step {s}");
            close(d.beta, want.beta, 1e-9, "beta");
            for m in 0..2 {
                close(d.modalities[m].score, want.modalities[m].score, 1e-9, "p_m");
                close(d.modalities[m].red, want.modalities[m].red, 1e-9, "red_m");
            }
            if d.suppressed.is_some() && s > 0 && before != grads_of(&grads, &model.all_vars()) {
                projected_with_drift += 1;
            }
            sizes.push(len);
            opt.step(&grads).unwrap();
        }
    }
    assert_eq!(sizes.iter().filter(|&&n| n == 2).count(), EPOCHS);
    assert!(projected_with_drift > 0, "no step changed a gradient");
}

/// One suppressed step after the parameters moved: the dominant encoder's gradients are
/// the f64 reference projection of the same θ, θ₀ and g with the controller's β; the other
/// encoder's and the heads' gradients are untouched.
#[test]
fn gradients_after_step_equal_the_f64_reference() {
    let model = Model::new();
    let (x, y) = dataset(12);
    let mut rr = model.redreg(12);
    rr.begin_epoch(0).unwrap();
    let vars = [model.enc[0].vars(), model.enc[1].vars()];
    let theta0: Vec<Vec<Vec<f32>>> = vars
        .iter()
        .map(|vs| vs.iter().map(|v| flat::<f32>(v.as_tensor())).collect())
        .collect();
    // Move every parameter as an optimizer would (in place).
    for (i, v) in model.all_vars().iter().enumerate() {
        let step = (tensor(500 + i as u64, v.dims(), cpu()) * 0.05).unwrap();
        v.set(&(v.as_tensor() + step).unwrap()).unwrap();
    }
    let (mut grads, t) = forward(&model, [&x[0], &x[1]], &y, 77);
    let before = grads_of(&grads, &model.all_vars());
    let d = rr.step(&y, &t.views(), &mut grads).unwrap();

    let mut ctl = Controller::new(Config::new(EPOCHS), 2).unwrap();
    ctl.begin_epoch(0).unwrap();
    let want: Decision = ctl.observe(&oracle_inputs(&t, &y)).unwrap();
    let m = d
        .suppressed
        .expect("the leader's r > R and the gate is open");
    assert_eq!(Some(m), want.suppressed);
    close(d.beta, want.beta, 1e-9, "beta");
    assert!(d.beta > 1.0);

    // model.all_vars() is encoder a's, then encoder b's, then the heads' variables.
    let first = if m == 0 { 0 } else { vars[0].len() };
    let after = grads_of(&grads, &model.all_vars());
    for (i, v) in vars[m].iter().enumerate() {
        let theta = flat::<f32>(v.as_tensor());
        let mut want = before[first + i]
            .clone()
            .expect("every variable has a gradient");
        let segs = Segments::from_lengths(&[theta.len()]).unwrap();
        let p = Projection::drift(&theta[..], &theta0[m][i][..], [], &mut want[..]).beta(d.beta);
        reference::project_out(&segs, p).unwrap();
        let got = after[first + i].clone().unwrap();
        redreg::testing::assert_close("projected gradient", &got, &want, 1e-6, 1e-5);
        assert_ne!(
            after[first + i],
            before[first + i],
            "tensor {i} not projected"
        );
    }
    // Everything else is bit for bit what backward gave.
    for i in (0..after.len()).filter(|i| !(first..first + vars[m].len()).contains(i)) {
        assert_eq!(after[i], before[i], "variable {i} changed");
    }
}

/// θ₀ = θ right after `begin_epoch`: the drift is zero, so the first suppressed step of an
/// epoch leaves the gradients unchanged, bit for bit (the documented zero first step).
#[test]
fn first_suppressed_step_of_an_epoch_changes_nothing() {
    let model = Model::new();
    let (x, y) = dataset(16);
    let mut rr = model.redreg(16);
    let mut opt = SGD::new(model.all_vars(), 0.05).unwrap();
    for epoch in 0..2 {
        rr.begin_epoch(epoch).unwrap();
        for s in 0..3 {
            let (mut grads, t) = forward(&model, [&x[0], &x[1]], &y, 40 + s);
            let before = grads_of(&grads, &model.all_vars());
            let d = rr.step(&y, &t.views(), &mut grads).unwrap();
            assert!(
                d.suppressed.is_some(),
                "epoch {epoch} step {s}: nothing suppressed"
            );
            let after = grads_of(&grads, &model.all_vars());
            if s == 0 {
                assert_eq!(
                    after, before,
                    "epoch {epoch}: the first step changed a gradient"
                );
            } else {
                assert_ne!(after, before, "epoch {epoch} step {s}: no drift projected");
            }
            opt.step(&grads).unwrap();
        }
    }
}

/// The state a failed call must leave as it was: the controller and θ₀.
fn state(rr: &RedReg) -> (redreg::controller::ControllerState, Vec<Vec<f32>>) {
    let theta0 = (0..2)
        .flat_map(|m| {
            rr.theta0(m)
                .unwrap_or(&[])
                .iter()
                .map(flat::<f32>)
                .collect::<Vec<_>>()
        })
        .collect();
    (rr.controller().state().clone(), theta0)
}

#[test]
fn bad_inputs_are_errors_and_change_nothing() {
    let model = Model::new();
    let (x, y) = dataset(9);
    let vars = model.all_vars();

    // Construction.
    let cfg = || Config::new(EPOCHS);
    let (a, b) = (&model.enc[0].map, &model.enc[1].map);
    let err = |r: redreg::Result<RedReg>| r.unwrap_err().to_string();
    assert!(err(RedReg::new(cfg(), &[a, b], 0)).contains("max_batch"));
    assert!(err(RedReg::new(cfg(), &[a], 8)).contains("at least 2"));
    assert!(err(RedReg::new(cfg(), &[a, &VarMap::new()], 8)).contains("no variables"));
    assert!(RedReg::new(Config::new(0), &[a, b], 8).is_err());

    let mut rr = model.redreg(8);
    let (mut grads, t) = forward(
        &model,
        [
            &x[0].narrow(0, 0, 8).unwrap(),
            &x[1].narrow(0, 0, 8).unwrap(),
        ],
        &y.narrow(0, 0, 8).unwrap(),
        9,
    );
    let y8 = y.narrow(0, 0, 8).unwrap();
    let msg = rr
        .step(&y8, &t.views(), &mut grads)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("begin_epoch"), "{msg}");
    assert!(rr.begin_epoch(EPOCHS).is_err());
    assert!(
        rr.theta0(0).is_none(),
        "a failed begin_epoch took a snapshot"
    );
    rr.begin_epoch(0).unwrap();

    // A batch of 9 for a declared 8, and the other bad steps: Err, nothing changed.
    let (_, t9) = forward(&model, [&x[0], &x[1]], &y, 9);
    let check = |rr: &mut RedReg,
                 labels: &Tensor,
                 mods: &[ModalityTensors<'_>],
                 g: &mut GradStore,
                 want: &str| {
        let (s0, g0) = (state(rr), grads_of(g, &vars));
        let msg = rr.step(labels, mods, g).unwrap_err().to_string();
        assert!(msg.contains(want), "expected `{want}` in: {msg}");
        assert_eq!(state(rr), s0, "{msg}: the state changed");
        assert_eq!(grads_of(g, &vars), g0, "{msg}: the gradients changed");
    };
    check(&mut rr, &y, &t9.views(), &mut grads, "1 to 8");
    check(
        &mut rr,
        &y8,
        &t.views()[..1],
        &mut grads,
        "1 modalities given",
    );
    check(
        &mut rr,
        &y.narrow(0, 0, 0).unwrap(),
        &t.views(),
        &mut grads,
        "a batch of 0",
    );
    check(
        &mut rr,
        &y.narrow(0, 0, 7).unwrap(),
        &t.views(),
        &mut grads,
        "the batch of the logits",
    );
    let wide = tensor(3, &[8, 3], cpu());
    let mut v = t.views();
    v[0].z2 = &wide;
    check(&mut rr, &y8, &v, &mut grads, "z2 has 24 elements");
    let mut v = t.views();
    v[1].pooled = &wide;
    check(&mut rr, &y8, &v, &mut grads, "pooled");
    // A label out of range fails in the statistics' run: the plan declared on the way is
    // dropped, so the first good step may have other widths (5 classes in modality a's
    // logits instead of 4); later steps must keep them.
    let bad_y = Tensor::new(&[0u32, 1, 2, 3, 4, 0, 1, 2], cpu()).unwrap();
    check(&mut rr, &bad_y, &t.views(), &mut grads, "label");
    let five = (tensor(4, &[8, 5], cpu()) * 3.0).unwrap();
    let mut v = t.views();
    v[0].logits = &five;
    rr.step(&y8, &v, &mut grads).unwrap();
    check(&mut rr, &y8, &t.views(), &mut grads, "the classes");
    // A gradient of the wrong shape fails in the projection, after the controller decided
    // (a fresh RedReg: its first step suppresses the leader): the controller is rolled back
    // and the plan declared on the way dropped.
    let mut rr = model.redreg(8);
    rr.begin_epoch(0).unwrap();
    for v in model.enc[0].vars().iter().chain(&model.enc[1].vars()) {
        grads.insert(v.as_tensor(), Tensor::zeros(3, DType::F32, cpu()).unwrap());
    }
    check(&mut rr, &y8, &t.views(), &mut grads, "gradient");
    let mut v = t.views();
    v[0].logits = &five;
    rr.step(
        &y8,
        &v,
        &mut forward(
            &model,
            [
                &x[0].narrow(0, 0, 8).unwrap(),
                &x[1].narrow(0, 0, 8).unwrap(),
            ],
            &y8,
            9,
        )
        .0,
    )
    .unwrap();
}
