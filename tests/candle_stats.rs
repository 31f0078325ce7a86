//! The candle binding of the fused statistics plan (`redreg::candle::stats`) against the
//! plan run on the same host slices and against a plain f64 computation of the script's
//! formulas; every rejected input is an `Err`.
#![cfg(feature = "candle")]

mod common;

use common::candle as helpers;

use candle_core::{DType, Device, Tensor};
use helpers::flat;
use redreg::candle::stats::{labels_i64, modality_shapes, step_inputs, ModalityTensors};
use redreg::controller::{RedRegStats, StepInputs};
use redreg::stats::{CpuStats, StatHandle, Stats, StatsPlan};

const B: usize = 6;
const C: usize = 4;

fn t(seed: u64, shape: &[usize]) -> Tensor {
    helpers::tensor(seed, shape, &Device::Cpu)
}

/// One modality's tensors: logits B×C, features B×F, inputs B×X, pooled B×D.
struct Mod {
    logits: Tensor,
    z1: Tensor,
    z2: Tensor,
    x1: Tensor,
    x2: Tensor,
    pooled: Tensor,
}

impl Mod {
    fn new(seed: u64, f: usize, x: usize, d: usize) -> Self {
        // The pooled features are a narrowed view (start offset B·D) of a larger tensor:
        // the binding must read from the layout's offset.
        let big = t(seed + 5, &[2 * B, d]);
        Self {
            logits: (t(seed, &[B, C]) * 3.0).unwrap(),
            z1: t(seed + 1, &[B, f]),
            z2: t(seed + 2, &[B, f]),
            x1: t(seed + 3, &[B, x]),
            x2: t(seed + 4, &[B, x]),
            pooled: big.narrow(0, B, B).unwrap(),
        }
    }
    fn tensors(&self) -> ModalityTensors<'_> {
        ModalityTensors {
            logits: &self.logits,
            z1: &self.z1,
            z2: &self.z2,
            x1: &self.x1,
            x2: &self.x2,
            pooled: &self.pooled,
        }
    }
}

fn f64s(x: &Tensor) -> Vec<f64> {
    flat::<f32>(&x.to_dtype(DType::F32).unwrap())
        .iter()
        .map(|&v| v as f64)
        .collect()
}

fn sq_diff_mean(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (f64s(a), f64s(b));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        / a.len() as f64
}

/// mean_i softmax(logits_i)[y_i], in f64.
fn true_prob(logits: &Tensor, y: &[i64]) -> f64 {
    let l = f64s(logits);
    let mut s = 0.0;
    for (i, &yi) in y.iter().enumerate() {
        let row = &l[i * C..(i + 1) * C];
        let z: f64 = row.iter().map(|v| v.exp()).sum();
        s += row[yi as usize].exp() / z;
    }
    s / y.len() as f64
}

fn cos_mean(a: &Tensor, b: &Tensor, d: usize) -> f64 {
    let (a, b) = (f64s(a), f64s(b));
    let rows = a.len() / d;
    (0..rows)
        .map(|i| {
            let (x, y) = (&a[i * d..(i + 1) * d], &b[i * d..(i + 1) * d]);
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let n = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
            dot / (n(x) * n(y))
        })
        .sum::<f64>()
        / rows as f64
}

fn setup(mods: &[Mod]) -> (CpuStats, RedRegStats) {
    let shapes: Vec<_> = mods
        .iter()
        .map(|m| modality_shapes(&m.tensors()).unwrap())
        .collect();
    let mut plan = StatsPlan::new();
    let h = RedRegStats::declare(&mut plan, &shapes).unwrap();
    (CpuStats::new(&plan).unwrap(), h)
}

fn labels() -> Tensor {
    Tensor::new(&[0u32, 3, 1, 2, 2, 0], &Device::Cpu).unwrap()
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{what}: got {got}, want {want}"
    );
}

fn check_against_oracle(got: &StepInputs, mods: &[Mod], y: &[i64], d: usize, tol: f64) {
    for (i, m) in mods.iter().enumerate() {
        close(got.scores[i], true_prob(&m.logits, y), tol, "p_m");
        let want = sq_diff_mean(&m.z1, &m.z2) / (sq_diff_mean(&m.x1, &m.x2) + 1e-12);
        close(got.redundancy[i].value(1e-12).unwrap(), want, tol, "red_m");
    }
    close(
        got.agreement[0],
        cos_mean(&mods[0].pooled, &mods[1].pooled, d),
        tol,
        "pos_sim",
    );
}

#[test]
fn step_inputs_match_the_plan_on_host_slices_and_the_f64_formulas() {
    let mods = [Mod::new(10, 7, 5, 3), Mod::new(20, 11, 9, 3)];
    let (mut exec, h) = setup(&mods);
    let y = labels();
    let got = step_inputs(&mut exec, &h, &y, &[mods[0].tensors(), mods[1].tensors()]).unwrap();
    let yi = [0i64, 3, 1, 2, 2, 0];
    assert_eq!(labels_i64(&y).unwrap(), yi);
    check_against_oracle(&got, &mods, &yi, 3, 1e-12);

    // The same plan on host copies of the same elements: bitwise the same inputs.
    let host: Vec<Vec<Vec<f32>>> = mods
        .iter()
        .map(|m| {
            [&m.logits, &m.z1, &m.z2, &m.x1, &m.x2, &m.pooled]
                .iter()
                .map(|x| flat::<f32>(x))
                .collect()
        })
        .collect();
    let mut inputs = Vec::new();
    for (i, v) in host.iter().enumerate() {
        inputs.push(h.score[i].bind((&v[0], &yi[..])));
        inputs.push(h.feature_diff[i].bind((&v[1], &v[2])));
        inputs.push(h.input_diff[i].bind((&v[3], &v[4])));
    }
    inputs.push(h.agreement[0].bind((&host[0][5], &host[1][5])));
    let want = h.inputs(exec.run(&mut inputs).unwrap()).unwrap();
    assert_eq!(got, want);
}

#[test]
fn step_inputs_bf16_and_i64_labels() {
    let mods = [Mod::new(30, 4, 4, 5), Mod::new(40, 6, 8, 5)];
    let cast = |m: &Mod| Mod {
        logits: m.logits.to_dtype(DType::BF16).unwrap(),
        z1: m.z1.to_dtype(DType::BF16).unwrap(),
        z2: m.z2.to_dtype(DType::BF16).unwrap(),
        x1: m.x1.to_dtype(DType::BF16).unwrap(),
        x2: m.x2.to_dtype(DType::BF16).unwrap(),
        pooled: m.pooled.to_dtype(DType::BF16).unwrap(),
    };
    let mods = [cast(&mods[0]), cast(&mods[1])];
    let (mut exec, h) = setup(&mods);
    let y = labels().to_dtype(DType::I64).unwrap();
    let got = step_inputs(&mut exec, &h, &y, &[mods[0].tensors(), mods[1].tensors()]).unwrap();
    // The oracle reads the same bf16 values widened to f64: only summation order differs.
    check_against_oracle(&got, &mods, &[0, 3, 1, 2, 2, 0], 5, 1e-12);
}

#[test]
fn rejected_inputs_are_errors() {
    let mods = [Mod::new(50, 4, 4, 3), Mod::new(60, 4, 4, 3)];
    let (mut exec, h) = setup(&mods);
    let y = labels();
    let ok = [mods[0].tensors(), mods[1].tensors()];
    assert!(step_inputs(&mut exec, &h, &y, &ok).is_ok());
    // one modality for a plan of two
    assert!(step_inputs(&mut exec, &h, &y, &ok[..1]).is_err());
    // a strided (transposed) tensor
    let tr = mods[0].z1.t().unwrap();
    let mut bad = ok;
    bad[0].z1 = &tr;
    assert!(step_inputs(&mut exec, &h, &y, &bad).is_err());
    // wrong element count for the declaration
    let short = t(1, &[B, 3]);
    let mut bad = ok;
    bad[1].x2 = &short;
    assert!(step_inputs(&mut exec, &h, &y, &bad).is_err());
    // an integer feature tensor
    let ints = Tensor::zeros((B, 4), DType::U32, &Device::Cpu).unwrap();
    let mut bad = ok;
    bad[0].z2 = &ints;
    assert!(step_inputs(&mut exec, &h, &y, &bad).is_err());
    // float labels, matrix labels, a label outside 0..C
    assert!(step_inputs(&mut exec, &h, &y.to_dtype(DType::F32).unwrap(), &ok).is_err());
    assert!(step_inputs(&mut exec, &h, &y.reshape((2, 3)).unwrap(), &ok).is_err());
    let out = Tensor::new(&[0u32, 3, 1, 2, 9, 0], &Device::Cpu).unwrap();
    assert!(step_inputs(&mut exec, &h, &out, &ok).is_err());
    // shapes: logits not a matrix, pooled batch mismatch, mixed dtypes
    let flat_logits = mods[0].logits.flatten_all().unwrap();
    let mut bad = ok[0];
    bad.logits = &flat_logits;
    assert!(modality_shapes(&bad).is_err());
    let p = t(2, &[B + 1, 3]);
    let mut bad = ok[0];
    bad.pooled = &p;
    assert!(modality_shapes(&bad).is_err());
    let half = mods[0].x1.to_dtype(DType::F16).unwrap();
    let mut bad = ok[0];
    bad.x1 = &half;
    assert!(modality_shapes(&bad).is_err());
}

/// The first `n` samples of every tensor of `m` (contiguous views: `narrow` on the rows).
fn first_rows(m: &Mod, n: usize) -> Mod {
    let r = |x: &Tensor| x.narrow(0, 0, n).unwrap();
    Mod {
        logits: r(&m.logits),
        z1: r(&m.z1),
        z2: r(&m.z2),
        x1: r(&m.x1),
        x2: r(&m.x2),
        pooled: r(&m.pooled),
    }
}

/// Declared from a full batch of B = 6, the plan takes the last, smaller batch of an epoch
/// (5 samples, and 1): each statistic is the f64 formula over the samples given (not the
/// full batch's value). More samples than declared, and labels that do not match the
/// logits' rows, are errors.
#[test]
fn the_last_smaller_batch_runs() {
    let mods = [Mod::new(70, 7, 5, 3), Mod::new(80, 11, 9, 3)];
    let (mut exec, h) = setup(&mods);
    let y = labels();
    let yi = [0i64, 3, 1, 2, 2, 0];
    let full = step_inputs(&mut exec, &h, &y, &[mods[0].tensors(), mods[1].tensors()]).unwrap();
    for n in [5, 1] {
        let short = [first_rows(&mods[0], n), first_rows(&mods[1], n)];
        let yn = y.narrow(0, 0, n).unwrap();
        let got = step_inputs(
            &mut exec,
            &h,
            &yn,
            &[short[0].tensors(), short[1].tensors()],
        )
        .unwrap();
        check_against_oracle(&got, &short, &yi[..n], 3, 1e-12);
        assert_ne!(got.scores, full.scores, "{n} samples");
        assert_ne!(got.agreement, full.agreement, "{n} samples");
    }
    // 7 samples for a plan declared with 6.
    let big = |seed, w| t(seed, &[B + 1, w]);
    let more = [
        Mod {
            logits: big(90, C),
            z1: big(91, 7),
            z2: big(92, 7),
            x1: big(93, 5),
            x2: big(94, 5),
            pooled: big(95, 3),
        },
        Mod {
            logits: big(96, C),
            z1: big(97, 11),
            z2: big(98, 11),
            x1: big(99, 9),
            x2: big(100, 9),
            pooled: big(101, 3),
        },
    ];
    let y7 = Tensor::new(&[0u32, 3, 1, 2, 2, 0, 1], &Device::Cpu).unwrap();
    let e = step_inputs(&mut exec, &h, &y7, &[more[0].tensors(), more[1].tensors()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the 6 rows declared"), "{e}");
    // 5 samples of every tensor, 6 labels.
    let short = [first_rows(&mods[0], 5), first_rows(&mods[1], 5)];
    let e = step_inputs(&mut exec, &h, &y, &[short[0].tensors(), short[1].tensors()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`labels` has 6 elements, expected 5"), "{e}");
}
