//! The optimizer oracle (`redreg::optim::reference`) against closed forms of PyTorch's
//! update rules: constant gradients, first steps, pure weight decay; and its bad inputs.

use redreg::optim::reference::{adamw_step, sgd_step, widen};
use redreg::optim::{AdamW, Sgd};
use redreg::{bf16, f16, Element};

fn theta0<T: Element>(n: usize) -> Vec<T> {
    (0..n)
        .map(|i| T::from_f64(0.5 - 0.013 * i as f64))
        .collect()
}

fn grad(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                -0.25
            } else {
                0.125 + 0.01 * i as f64
            }
        })
        .collect()
}

fn close(what: &str, got: f64, want: f64, rtol: f64) {
    assert!(
        (got - want).abs() <= rtol * want.abs().max(1e-3),
        "{what}: got {got}, want {want}"
    );
}

/// Plain SGD, momentum μ, no dampening, constant gradient g: b_t = g·(1 − μᵗ)/(1 − μ), so
/// θ_t = θ₀ − γ·g·Σ_{s≤t} (1 − μˢ)/(1 − μ).
#[test]
fn sgd_momentum_constant_gradient() {
    let (n, steps) = (40, 12);
    let p = Sgd {
        momentum: 0.9,
        ..Sgd::new(0.01)
    };
    let mut th: Vec<f32> = theta0(n);
    let t0 = th.clone();
    let g = grad(n);
    let mut b = vec![0f32; n];
    for t in 1..=steps {
        sgd_step(&p, t, &mut th, &g, &mut b).unwrap();
    }
    let sum: f64 = (1..=steps)
        .map(|s| (1.0 - 0.9f64.powi(s as i32)) / 0.1)
        .sum();
    for i in 0..n {
        let want = t0[i] as f64 - 0.01 * g[i] * sum;
        close(&format!("theta[{i}]"), th[i] as f64, want, 1e-5);
        close(
            &format!("buf[{i}]"),
            b[i] as f64,
            g[i] * (1.0 - 0.9f64.powi(steps as i32)) / 0.1,
            1e-6,
        );
    }
}

/// Nesterov, first step: b₁ = g, so the update is γ·(1 + μ)·g.
#[test]
fn sgd_nesterov_first_step() {
    let p = Sgd {
        momentum: 0.5,
        nesterov: true,
        ..Sgd::new(0.1)
    };
    let n = 9;
    let mut th: Vec<f32> = theta0(n);
    let t0 = th.clone();
    let g = grad(n);
    let mut b = vec![7f32; n]; // not read at t = 1
    sgd_step(&p, 1, &mut th, &g, &mut b).unwrap();
    for i in 0..n {
        close("theta", th[i] as f64, t0[i] as f64 - 0.1 * 1.5 * g[i], 1e-6);
        assert_eq!(b[i], g[i] as f32);
    }
}

/// Zero gradient, weight decay λ, no momentum: θ_t = θ₀·(1 − γλ)ᵗ (in every dtype).
#[test]
fn sgd_weight_decay_alone_decays_geometrically() {
    fn run<T: Element>(rtol: f64) {
        let p = Sgd {
            weight_decay: 0.5,
            ..Sgd::new(0.2)
        };
        let n = 16;
        let mut th: Vec<T> = theta0(n);
        let t0 = th.clone();
        let g = vec![0.0; n];
        for t in 1..=5 {
            sgd_step(&p, t, &mut th, &g, &mut []).unwrap();
        }
        for i in 0..n {
            close(
                "theta",
                th[i].to_f64(),
                t0[i].to_f64() * 0.9f64.powi(5),
                rtol,
            );
        }
    }
    run::<f32>(1e-6);
    run::<f16>(5e-3);
    run::<bf16>(3e-2);
}

/// AdamW with a constant gradient: the bias-corrected moments are g and g² at every step,
/// so each step moves θ by γ·g/(|g| + ε) after the decay θ·(1 − γλ).
#[test]
fn adamw_constant_gradient() {
    let p = AdamW::default();
    let n = 30;
    let mut th: Vec<f32> = theta0(n);
    let t0 = th.clone();
    let g = grad(n);
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let steps = 20;
    for t in 1..=steps {
        adamw_step(&p, t, &mut th, &g, &mut m, &mut v).unwrap();
    }
    let d = 1.0 - p.lr * p.weight_decay;
    for i in 0..n {
        let u = p.lr * g[i] / (g[i].abs() + p.eps);
        // θ_t = θ₀·dᵗ − u·Σ_{s<t} dˢ
        let geo: f64 = (0..steps).map(|s| d.powi(s as i32)).sum();
        let want = t0[i] as f64 * d.powi(steps as i32) - u * geo;
        close(&format!("theta[{i}]"), th[i] as f64, want, 1e-4);
    }
}

/// AdamW, first step, every dtype: θ₁ = θ₀·(1 − γλ) − γ·g/(|g| + ε).
#[test]
fn adamw_first_step_every_dtype() {
    fn run<T: Element>(rtol: f64) {
        let p = AdamW {
            lr: 0.05,
            ..AdamW::default()
        };
        let n = 12;
        let mut th: Vec<T> = theta0(n);
        let t0 = th.clone();
        let g = widen(&(0..n).map(|i| T::from_f64(grad(n)[i])).collect::<Vec<T>>());
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        adamw_step(&p, 1, &mut th, &g, &mut m, &mut v).unwrap();
        for i in 0..n {
            let want = t0[i].to_f64() * (1.0 - 0.05 * 0.01) - 0.05 * g[i] / (g[i].abs() + 1e-8);
            close("theta", th[i].to_f64(), want, rtol);
        }
    }
    run::<f32>(1e-6);
    run::<f16>(5e-3);
    run::<bf16>(3e-2);
}

/// Rejected arguments: `Err`, and nothing written.
#[test]
fn bad_inputs_write_nothing() {
    let n = 5;
    let g = grad(n);
    let th0: Vec<f32> = theta0(n);
    let bad_sgd = [
        Sgd::new(f64::NAN),
        Sgd::new(-1.0),
        Sgd {
            momentum: -0.1,
            ..Sgd::new(0.1)
        },
        Sgd {
            nesterov: true,
            ..Sgd::new(0.1)
        },
        Sgd {
            momentum: 0.9,
            dampening: 0.1,
            nesterov: true,
            ..Sgd::new(0.1)
        },
        Sgd {
            weight_decay: f64::INFINITY,
            ..Sgd::new(0.1)
        },
    ];
    for p in bad_sgd {
        let (mut th, mut b) = (th0.clone(), vec![1f32; n]);
        assert!(sgd_step(&p, 1, &mut th, &g, &mut b).is_err(), "{p:?}");
        assert_eq!(
            (th.as_slice(), b.as_slice()),
            (th0.as_slice(), &[1f32; 5][..])
        );
    }
    let (mut th, mut b) = (th0.clone(), vec![1f32; n]);
    assert!(sgd_step(&Sgd::new(0.1), 0, &mut th, &g, &mut b).is_err());
    assert!(sgd_step(&Sgd::new(0.1), 1, &mut th, &g[1..], &mut b).is_err());
    assert!(sgd_step(&Sgd::script(0.1), 1, &mut th, &g, &mut b[1..]).is_err());
    assert_eq!(th, th0);
    let bad_adam = [
        AdamW {
            lr: f64::NAN,
            ..AdamW::default()
        },
        AdamW {
            beta1: 1.0,
            ..AdamW::default()
        },
        AdamW {
            beta2: -0.5,
            ..AdamW::default()
        },
        AdamW {
            eps: -1e-8,
            ..AdamW::default()
        },
    ];
    for p in bad_adam {
        let (mut th, mut m, mut v) = (th0.clone(), vec![1f32; n], vec![2f32; n]);
        assert!(
            adamw_step(&p, 1, &mut th, &g, &mut m, &mut v).is_err(),
            "{p:?}"
        );
        assert_eq!(th, th0);
        assert_eq!((m, v), (vec![1f32; n], vec![2f32; n]));
    }
    let (mut th, mut m, mut v) = (th0.clone(), vec![0f32; n], vec![0f32; n - 1]);
    assert!(adamw_step(&AdamW::default(), 1, &mut th, &g, &mut m, &mut v).is_err());
    assert_eq!(th, th0);
}
