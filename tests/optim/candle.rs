//! `redreg::candle::FusedOptimizer` (a `candle_nn::Optimizer`) over a `VarMap`'s
//! variables: bit for bit the f64 oracle (`redreg::optim::reference`), within a few f32
//! roundings of candle-nn's own `AdamW` and `SGD` on the same variables and gradients
//! (candle-nn computes in f32, `docs/numerics.md`), the RedReg step bit for bit the host
//! optimizer's, a variable without a gradient skipped with PyTorch's per-parameter step
//! counts (bit for bit `reference::ListState`), and bad input an `Err` with nothing changed.
#![cfg(feature = "candle")]

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, Optimizer as _, ParamsAdamW, VarMap};
use redreg::candle::{snapshot, FusedOptimizer};
use redreg::optim::reference::{adamw_step, sgd_step, widen, ListState};
use redreg::optim::{AdamW, Correction, Optimizer, Rule, Sgd};
use redreg::testing::elements;
use redreg::{bf16, CpuBackend, Element};

const SHAPES: [&[usize]; 4] = [&[3, 5], &[7], &[2, 3, 4], &[1000]];

/// A `VarMap` with the shapes above (dtype `dt`), its variables in name order with
/// deterministic values.
fn varmap<T: Element + candle_core::WithDType>(dt: DType) -> (VarMap, Vec<Var>) {
    let map = VarMap::new();
    for (i, s) in SHAPES.iter().enumerate() {
        map.get(*s, &format!("w{i}"), Init::Const(0.0), dt, &Device::Cpu)
            .unwrap();
    }
    let mut named: Vec<(String, Var)> = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let vars: Vec<Var> = named.into_iter().map(|(_, v)| v).collect();
    for (i, v) in vars.iter().enumerate() {
        let x: Vec<T> = elements(v.elem_count(), 1 + i as u64, 1.0);
        v.set(&Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    (map, vars)
}

fn values<T: Element + candle_core::WithDType>(v: &Var) -> Vec<T> {
    v.as_tensor().flatten_all().unwrap().to_vec1::<T>().unwrap()
}

/// Gradients of step `t` for `vars` (the same values for any list of the same shapes).
fn grads<T: Element + candle_core::WithDType>(vars: &[Var], t: u64) -> (GradStore, Vec<Vec<T>>) {
    let mut store = GradStore::default();
    let mut host = Vec::new();
    for (i, v) in vars.iter().enumerate() {
        let g: Vec<T> = elements(v.elem_count(), 100 * t + i as u64, 0.3);
        let gt = Tensor::from_vec(g.clone(), v.shape(), &Device::Cpu).unwrap();
        store.insert(v.as_tensor(), gt);
        host.push(g);
    }
    (store, host)
}

fn copies(vars: &[Var]) -> Vec<Var> {
    vars.iter()
        .map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())
        .collect()
}

fn be() -> CpuBackend {
    CpuBackend::with_threads(2)
        .unwrap()
        .with_chunk(256)
        .unwrap()
        .with_inline_elements(0)
}

/// `|a − b| ≤ 8·ε_f32·max(|b|, 1)` for every element: a few f32 roundings of values of
/// unit scale (near zero the subtraction `θ − update` cancels, so the bound is absolute there).
fn close(what: &str, a: &[f32], b: &[f32]) {
    for (e, (x, y)) in a.iter().zip(b).enumerate() {
        let tol = 8.0 * f32::EPSILON * y.abs().max(1.0);
        assert!((x - y).abs() <= tol, "{what}[{e}]: {x} vs {y}");
    }
}

/// Three steps of `rule` through the candle trait, against the oracle (bitwise) and
/// against candle-nn's optimizer `theirs` on copies of the variables ([`close`]).
fn against<O: candle_nn::Optimizer>(rule: Rule, theirs: impl FnOnce(Vec<Var>) -> O) {
    let (_map, vars) = varmap::<f32>(DType::F32);
    let cvars = copies(&vars);
    let mut oracle: Vec<Vec<f32>> = vars.iter().map(values::<f32>).collect();
    let mut s0: Vec<Vec<f32>> = oracle.iter().map(|x| vec![0.0; x.len()]).collect();
    let mut s1 = s0.clone();
    let mut ours = FusedOptimizer::with_backend(vars.clone(), rule, be()).unwrap();
    let mut theirs = theirs(cvars.clone());
    for t in 1..=3 {
        let (store, host) = grads::<f32>(&vars, t);
        let (cstore, _) = grads::<f32>(&cvars, t);
        ours.step(&store).unwrap();
        theirs.step(&cstore).unwrap();
        for i in 0..vars.len() {
            let g = widen(&host[i]);
            match &rule {
                Rule::Sgd(p) => sgd_step(p, t, &mut oracle[i], &g, &mut s0[i]).unwrap(),
                Rule::AdamW(p) => {
                    adamw_step(p, t, &mut oracle[i], &g, &mut s0[i], &mut s1[i]).unwrap()
                }
            }
            let got = values::<f32>(&vars[i]);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&oracle[i]), "{rule:?} step {t} var {i}");
            close(
                &format!("{rule:?} step {t} var {i}"),
                &got,
                &values::<f32>(&cvars[i]),
            );
        }
    }
    assert_eq!(ours.steps(), 3);
}

#[test]
fn adamw_matches_the_oracle_and_candle_nn() {
    let p = ParamsAdamW {
        lr: 0.01,
        ..ParamsAdamW::default()
    };
    against(p.clone().into(), |v| candle_nn::AdamW::new(v, p).unwrap());
}

#[test]
fn sgd_matches_the_oracle_and_candle_nn() {
    against(Rule::Sgd(Sgd::new(0.1)), |v| {
        candle_nn::SGD::new(v, 0.1).unwrap()
    });
}

/// bf16 variables, SGD with momentum and weight decay: bit for bit the oracle.
#[test]
fn bf16_matches_the_oracle() {
    let rule = Rule::Sgd(Sgd::script(0.05));
    let (_map, vars) = varmap::<bf16>(DType::BF16);
    let mut oracle: Vec<Vec<bf16>> = vars.iter().map(values::<bf16>).collect();
    let mut s0: Vec<Vec<f32>> = oracle.iter().map(|x| vec![0.0; x.len()]).collect();
    let mut ours = FusedOptimizer::with_backend(vars.clone(), rule, be()).unwrap();
    let Rule::Sgd(p) = rule else { unreachable!() };
    for t in 1..=3 {
        let (store, host) = grads::<bf16>(&vars, t);
        ours.step(&store).unwrap();
        for i in 0..vars.len() {
            sgd_step(&p, t, &mut oracle[i], &widen(&host[i]), &mut s0[i]).unwrap();
            assert_eq!(values::<bf16>(&vars[i]), oracle[i], "step {t} var {i}");
        }
    }
}

/// `step_redreg` is the host optimizer's corrected step on the same values, bit for bit,
/// and differs from the plain step.
#[test]
fn redreg_step_is_the_host_corrected_step() {
    // SGD: AdamW's first step is ±lr whatever the gradient's size, which could hide the
    // correction from the last assertion.
    let rule = Rule::Sgd(Sgd::script(0.05));
    let (_map, vars) = varmap::<f32>(DType::F32);
    let mut host: Vec<Vec<f32>> = vars.iter().map(values::<f32>).collect();
    let theta0 = snapshot(&vars[1..3]).unwrap();
    // Drift the encoder (variables 1 and 2) away from θ₀.
    for v in &vars[1..3] {
        let x: Vec<f32> = values::<f32>(v).iter().map(|x| x * 1.01 + 0.003).collect();
        v.set(&Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    for (h, v) in host.iter_mut().zip(&vars) {
        *h = values::<f32>(v);
    }
    let th0: Vec<Vec<f32>> = theta0
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let lens: Vec<usize> = host.iter().map(|h| h.len()).collect();
    let mut ours = FusedOptimizer::with_backend(vars.clone(), rule, be()).unwrap();
    let mut reference = Optimizer::new(rule, &lens).unwrap();
    let mut plain = host.clone();
    let mut plain_opt = Optimizer::new(rule, &lens).unwrap();
    for t in 1..=2 {
        let (store, g) = grads::<f32>(&vars, t);
        let ranks = ours.step_redreg(&store, 1, &theta0, 0.8).unwrap();
        let gs: Vec<&[f32]> = g.iter().map(|x| &x[..]).collect();
        let c = Correction::new(1, th0.iter().map(|x| &x[..]).collect(), 0.8);
        let mut pv: Vec<&mut [f32]> = host.iter_mut().map(|x| &mut x[..]).collect();
        let want = reference.step_corrected(&be(), &mut pv, &gs, &c).unwrap();
        assert_eq!(ranks, want);
        let mut pv: Vec<&mut [f32]> = plain.iter_mut().map(|x| &mut x[..]).collect();
        plain_opt.step(&be(), &mut pv, &gs).unwrap();
        for i in 0..vars.len() {
            assert_eq!(values::<f32>(&vars[i]), host[i], "step {t} var {i}");
        }
        assert_ne!(host[2], plain[2], "the correction acts");
        assert_eq!(host[3], plain[3], "outside the encoder: the plain step");
    }
}

/// Variables without a gradient in the `GradStore` are skipped (PyTorch's `p.grad is
/// None`): their values and state unchanged, their step counts not advanced, and every
/// other variable's update at its own count — bit for bit the per-parameter oracle, AdamW
/// and SGD with momentum, through `Optimizer::step` (candle's trait) and `step_redreg`.
#[test]
fn missing_gradients_skip_their_variables() {
    let sgd = Sgd {
        momentum: 0.9,
        dampening: 0.2,
        ..Sgd::new(0.05)
    };
    for rule in [Rule::AdamW(AdamW::default()), Rule::Sgd(sgd)] {
        let (_map, vars) = varmap::<f32>(DType::F32);
        let mut want: Vec<Vec<f32>> = vars.iter().map(values::<f32>).collect();
        let lens: Vec<usize> = want.iter().map(|x| x.len()).collect();
        let mut oracle = ListState::new(&rule, &lens);
        let mut ours = FusedOptimizer::with_backend(vars.clone(), rule, be()).unwrap();
        // Per call, the variables without a gradient: 1 at its first two calls, 3 at the
        // third, none at the fourth.
        let missing = |t: u64, i: usize| (i == 1 && t <= 2) || (i == 3 && t == 3);
        for t in 1..=4u64 {
            let (mut store, host) = grads::<f32>(&vars, t);
            for (i, v) in vars.iter().enumerate() {
                if missing(t, i) {
                    store.remove(v.as_tensor()).unwrap();
                }
            }
            let gw: Vec<Option<Vec<f64>>> = (0..vars.len())
                .map(|i| (!missing(t, i)).then(|| widen(&host[i])))
                .collect();
            oracle.step(&rule, &mut want, &gw).unwrap();
            let before: Vec<Vec<f32>> = vars.iter().map(values::<f32>).collect();
            ours.step(&store).unwrap();
            for i in 0..vars.len() {
                let got = values::<f32>(&vars[i]);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want[i]), "{rule:?} step {t} var {i}");
                if missing(t, i) {
                    assert_eq!(bits(&got), bits(&before[i]), "{rule:?} step {t} var {i}");
                }
                let (a, b) = ours.state(i).unwrap().unwrap();
                assert_eq!(a, oracle.s0[i], "{rule:?} step {t} var {i}: state 0");
                assert_eq!(b, oracle.s1[i], "{rule:?} step {t} var {i}: state 1");
                assert_eq!(ours.steps_of(i), Some(oracle.steps[i]), "{rule:?} var {i}");
            }
        }
        assert_eq!(ours.steps(), 4);
        assert_eq!(oracle.steps, [4, 2, 4, 3]);
    }
}

/// `step_redreg` skips a variable without a gradient outside the encoder, bit for bit as the
/// host optimizer's `step_corrected_some`; an encoder variable without one is `Err` with
/// nothing changed.
#[test]
fn redreg_step_skips_outside_the_encoder() {
    let rule = Rule::AdamW(AdamW::default());
    let (_map, vars) = varmap::<f32>(DType::F32);
    let theta0 = snapshot(&vars[1..3]).unwrap();
    let th0: Vec<Vec<f32>> = (theta0.iter())
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let mut host: Vec<Vec<f32>> = vars.iter().map(values::<f32>).collect();
    let lens: Vec<usize> = host.iter().map(|h| h.len()).collect();
    let mut ours = FusedOptimizer::with_backend(vars.clone(), rule, be()).unwrap();
    let mut reference = Optimizer::new(rule, &lens).unwrap();
    for t in 1..=2 {
        // A drift, so that the correction acts.
        for (v, h) in vars.iter().zip(host.iter_mut()).skip(1).take(2) {
            h.iter_mut().for_each(|x| *x = *x * 1.01 + 0.003);
            v.set(&Tensor::from_vec(h.clone(), v.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let (mut store, g) = grads::<f32>(&vars, t);
        store.remove(vars[3].as_tensor()).unwrap();
        let gs: Vec<Option<&[f32]>> = (0..4).map(|i| (i != 3).then_some(&g[i][..])).collect();
        // An encoder variable (2) without its gradient: Err, nothing changed.
        let g2 = store.remove(vars[2].as_tensor()).unwrap();
        let e = ours.step_redreg(&store, 1, &theta0, 0.8).unwrap_err();
        assert!(e.to_string().contains("no gradient"), "{e}");
        for (v, h) in vars.iter().zip(&host) {
            assert_eq!(&values::<f32>(v), h, "after the refused step");
        }
        assert_eq!(ours.steps(), t - 1);
        store.insert(vars[2].as_tensor(), g2);
        let ranks = ours.step_redreg(&store, 1, &theta0, 0.8).unwrap();
        let c = Correction::new(1, th0.iter().map(|x| &x[..]).collect(), 0.8);
        let mut pv: Vec<&mut [f32]> = host.iter_mut().map(|x| &mut x[..]).collect();
        let want = (reference.step_corrected_some(&be(), &mut pv, &gs, &c)).unwrap();
        assert_eq!(ranks, want);
        for i in 0..vars.len() {
            assert_eq!(values::<f32>(&vars[i]), host[i], "step {t} var {i}");
        }
    }
    assert_eq!((ours.steps_of(0), ours.steps_of(3)), (Some(2), Some(0)));
    assert_eq!(ours.state(3).unwrap().unwrap().0, vec![0.0; 1000]);
}

/// A gradient of another shape or dtype, a bad learning rate or a bad θ₀: `Err`, no
/// variable and no state changed.
#[test]
fn bad_input_changes_nothing() {
    let (_map, vars) = varmap::<f32>(DType::F32);
    let before: Vec<Vec<f32>> = vars.iter().map(values::<f32>).collect();
    let mut ours =
        FusedOptimizer::with_backend(vars.clone(), Rule::AdamW(AdamW::default()), be()).unwrap();
    let (mut store, _) = grads::<f32>(&vars, 1);
    let g1 = store.remove(vars[1].as_tensor()).unwrap();
    store.insert(
        vars[1].as_tensor(),
        Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(ours.try_step(&store).is_err(), "shape");
    store.insert(vars[1].as_tensor(), g1.to_dtype(DType::BF16).unwrap());
    assert!(ours.try_step(&store).is_err(), "dtype");
    store.insert(vars[1].as_tensor(), g1);
    ours.set_learning_rate(f64::NAN);
    assert!(ours.try_step(&store).is_err(), "learning rate");
    ours.set_learning_rate(1e-3);
    let th0 = snapshot(&vars[..2]).unwrap();
    assert!(ours.step_redreg(&store, 3, &th0, 1.0).is_err(), "range");
    assert!(ours.step_redreg(&store, 0, &th0, f64::NAN).is_err(), "beta");
    assert!(
        ours.step_redreg(&store, 1, &th0, 1.0).is_err(),
        "theta0 shapes"
    );
    for (v, b) in vars.iter().zip(&before) {
        assert_eq!(&values::<f32>(v), b);
    }
    assert_eq!(ours.steps(), 0);
    for i in 0..vars.len() {
        let (m, v) = ours.state(i).unwrap().unwrap();
        assert!(m.iter().chain(&v).all(|&x| x == 0.0));
    }
    ours.try_step(&store).unwrap();
    assert_eq!(ours.steps(), 1);
}
