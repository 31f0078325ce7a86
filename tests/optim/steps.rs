//! PyTorch's per-parameter step semantics on the CPU (`Optimizer::step_some`,
//! `Optimizer::step_corrected_some`): a tensor without a gradient is skipped — θ, its state
//! and its step count bit for bit unchanged — and each tensor's update uses its own step
//! count (AdamW's bias correction, SGD's first-step momentum buffer).
//!
//! - Against the per-parameter oracle (`reference::ListState`), bit for bit: every dtype,
//!   every rule of `rules()`, the skip pattern of `super::skipped` over 5 steps, 1/2/8
//!   threads and chunk sizes that cut tensors anywhere; the plain `step` is `step_some`
//!   with every gradient present (the same bits).
//! - Closed forms: AdamW's first step of a tensor whose first gradient comes at the third
//!   call is `θ·(1 − γλ) − γ·g/(|g| + ε)` (its own bias correction, t = 1, not the call
//!   count); SGD's momentum buffer is `g` at a tensor's first step, whatever the dampening.
//! - The corrected step with tensors outside the encoder skipped, and encoder tensors whose
//!   counts differ from the rest: bit for bit the oracle given the same pass-1 partials; an
//!   encoder tensor without a gradient is `Err` with nothing written.

use super::lists::{backends, bits, grads, same_buffers, theta};
use super::{rules, skipped};
use redreg::optim::reference::{corrected_grads, widen, ListState};
use redreg::optim::{AdamW, Correction, Optimizer, Rule, Sgd};
use redreg::{bf16, f16, Backend, Beta, CpuBackend, Element, ProjectOptions, Projection, Segments};

/// Tensor lengths with empty, tiny and multi-chunk tensors (each residue mod 4 twice).
const LENS: [usize; 8] = [0, 1, 37, 1000, 5000, 64, 3, 300];

/// The optimizer's state of every tensor, copied.
fn state(opt: &Optimizer, n: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    (0..n)
        .map(|i| {
            let (a, b) = opt.state(i).unwrap();
            (a.to_vec(), b.to_vec())
        })
        .collect()
}

/// The optimizer's state equals the oracle's (the buffers the rule keeps, the counts).
fn same_state(opt: &Optimizer, rule: &Rule, want: &ListState, what: &str) {
    same_buffers(opt, rule, &want.s0, &want.s1, what);
    for i in 0..want.steps.len() {
        assert_eq!(opt.steps_of(i), Some(want.steps[i]), "{what}: steps of {i}");
    }
    assert_eq!(opt.steps_of(want.steps.len()), None);
}

fn check<T: Element>() {
    for rule in rules() {
        for (cut, be) in backends() {
            let what = format!("{:?} {rule:?} {cut}", T::DTYPE);
            let mut opt = Optimizer::new(rule, &LENS).unwrap();
            let mut params = theta::<T>(&LENS);
            let mut want = params.clone();
            let mut oracle = ListState::new(&rule, &LENS);
            for t in 1..=5u64 {
                let g = grads::<T>(&LENS, t);
                let present = |i: usize| !skipped(i, t);
                let gw: Vec<Option<Vec<f64>>> = (0..LENS.len())
                    .map(|i| present(i).then(|| widen(&g[i])))
                    .collect();
                oracle.step(&rule, &mut want, &gw).unwrap();
                let (before, st_before) = (params.clone(), state(&opt, LENS.len()));
                let gv: Vec<Option<&[T]>> = (0..LENS.len())
                    .map(|i| present(i).then_some(&g[i][..]))
                    .collect();
                let mut pv: Vec<&mut [T]> = params.iter_mut().map(|p| &mut p[..]).collect();
                opt.step_some(&be, &mut pv, &gv).unwrap();
                let st_after = state(&opt, LENS.len());
                for i in 0..LENS.len() {
                    let w = format!("{what} step {t} tensor {i}");
                    assert_eq!(bits(&params[i]), bits(&want[i]), "{w}");
                    if !present(i) {
                        // Skipped: θ and the state bit for bit what they were.
                        assert_eq!(bits(&params[i]), bits(&before[i]), "{w}: skipped, θ");
                        let bits32 = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits32(&st_after[i].0), bits32(&st_before[i].0), "{w}");
                        assert_eq!(bits32(&st_after[i].1), bits32(&st_before[i].1), "{w}");
                    }
                }
                same_state(&opt, &rule, &oracle, &format!("{what} step {t}"));
                assert_eq!(opt.steps(), t, "{what}: calls");
            }
            // The counts the pattern gives: first steps at calls 3, 1, 1, 2.
            let counts: Vec<u64> = (0..LENS.len()).map(|i| opt.steps_of(i).unwrap()).collect();
            assert_eq!(counts, [3, 5, 3, 3, 3, 5, 3, 3], "{what}");
        }
    }
}

#[test]
fn skipped_tensors_match_the_per_parameter_oracle_f32() {
    check::<f32>();
}

#[test]
fn skipped_tensors_match_the_per_parameter_oracle_f16() {
    check::<f16>();
}

#[test]
fn skipped_tensors_match_the_per_parameter_oracle_bf16() {
    check::<bf16>();
}

/// `step` is `step_some` with every gradient present: the same bits, the same counts.
#[test]
fn step_is_step_some_with_every_gradient() {
    let be = CpuBackend::with_threads(2).unwrap().with_chunk(64).unwrap();
    for rule in rules() {
        let (mut a, mut b) = (
            Optimizer::new(rule, &LENS).unwrap(),
            Optimizer::new(rule, &LENS).unwrap(),
        );
        let (mut pa, mut pb) = (theta::<bf16>(&LENS), theta::<bf16>(&LENS));
        for t in 1..=3 {
            let g = grads::<bf16>(&LENS, t);
            let gv: Vec<&[bf16]> = g.iter().map(|x| &x[..]).collect();
            let go: Vec<Option<&[bf16]>> = gv.iter().map(|&x| Some(x)).collect();
            let mut v: Vec<&mut [bf16]> = pa.iter_mut().map(|p| &mut p[..]).collect();
            a.step(&be, &mut v, &gv).unwrap();
            let mut v: Vec<&mut [bf16]> = pb.iter_mut().map(|p| &mut p[..]).collect();
            b.step_some(&be, &mut v, &go).unwrap();
        }
        assert_eq!(pa, pb, "{rule:?}");
        assert_eq!(state(&a, LENS.len()), state(&b, LENS.len()), "{rule:?}");
        assert_eq!((a.steps(), a.steps_of(3)), (3, Some(3)));
        assert_eq!((b.steps(), b.steps_of(3)), (3, Some(3)));
    }
}

/// AdamW: tensor 0 gets its first gradient at the third call, after two steps of tensor 1.
/// Its update is a first step — `θ·(1 − γλ) − γ·g/(|g| + ε)`: the bias-corrected moments
/// are `g` and `g²` at its own t = 1 — not the third call's (the bias correction of t = 3
/// on moments of one step would move it by about `0.64·γ` instead of `γ`).
#[test]
fn adamw_bias_correction_uses_each_tensors_count() {
    let p = AdamW {
        lr: 0.01,
        ..AdamW::default()
    };
    let lens = [50, 20];
    let be = CpuBackend::with_threads(2).unwrap().with_chunk(16).unwrap();
    let mut opt = Optimizer::new(Rule::AdamW(p), &lens).unwrap();
    let mut params = theta::<f32>(&lens);
    let start = params[0].clone();
    for t in 1..=3 {
        let g = grads::<f32>(&lens, t);
        let gv: Vec<Option<&[f32]>> = vec![(t == 3).then_some(&g[0][..]), Some(&g[1][..])];
        let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        opt.step_some(&be, &mut pv, &gv).unwrap();
        if t < 3 {
            assert_eq!(params[0], start, "skipped at call {t}");
        } else {
            for e in 0..lens[0] {
                let (x, gi) = (start[e] as f64, g[0][e] as f64);
                let want = x * (1.0 - p.lr * p.weight_decay) - p.lr * gi / (gi.abs() + p.eps);
                let got = params[0][e] as f64;
                assert!(
                    (got - want).abs() <= 2.0 * f32::EPSILON as f64 * want.abs().max(1e-3),
                    "[{e}]: {got} vs {want}"
                );
            }
        }
    }
    assert_eq!(
        (opt.steps_of(0), opt.steps_of(1), opt.steps()),
        (Some(1), Some(3), 3)
    );
}

/// SGD with momentum and dampening: a tensor's momentum buffer is its gradient (plus weight
/// decay) at its own first step — not `μ·0 + (1 − τ)·g` — whenever that step comes.
#[test]
fn sgd_momentum_buffer_starts_at_each_tensors_first_step() {
    let p = Sgd {
        momentum: 0.9,
        dampening: 0.25,
        ..Sgd::new(0.1)
    };
    let lens = [40, 7];
    let be = CpuBackend::with_threads(2).unwrap().with_chunk(8).unwrap();
    let mut opt = Optimizer::new(Rule::Sgd(p), &lens).unwrap();
    let mut params = theta::<f32>(&lens);
    for t in 1..=2 {
        let g = grads::<f32>(&lens, t);
        let gv: Vec<Option<&[f32]>> = vec![(t == 2).then_some(&g[0][..]), Some(&g[1][..])];
        let before = params[0].clone();
        let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        opt.step_some(&be, &mut pv, &gv).unwrap();
        let (buf, _) = opt.state(0).unwrap();
        if t == 1 {
            assert!(buf.iter().all(|&b| b == 0.0), "skipped: buffer untouched");
        } else {
            assert_eq!(buf, &g[0][..], "the buffer starts as the gradient");
            for e in 0..lens[0] {
                let want = (before[e] as f64 - 0.1 * g[0][e] as f64) as f32;
                assert_eq!(params[0][e], want, "[{e}]");
            }
            // Tensor 1's second step: μ·b + (1 − τ)·g.
            let (b1, _) = opt.state(1).unwrap();
            let g1 = grads::<f32>(&lens, 1);
            for e in 0..lens[1] {
                let want = 0.9 * g1[1][e] as f64 + 0.75 * g[1][e] as f64;
                assert_eq!(b1[e], want as f32, "tensor 1 [{e}]");
            }
        }
    }
}

/// No gradient at all: nothing written, no count advanced (the call is counted).
#[test]
fn a_step_without_gradients_writes_nothing() {
    let be = CpuBackend::with_threads(2).unwrap().with_chunk(64).unwrap();
    let rule = Rule::AdamW(AdamW::default());
    let mut opt = Optimizer::new(rule, &LENS).unwrap();
    let mut params = theta::<f32>(&LENS);
    let g = grads::<f32>(&LENS, 1);
    let gv: Vec<&[f32]> = g.iter().map(|x| &x[..]).collect();
    let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
    opt.step(&be, &mut pv, &gv).unwrap();
    let (p0, s0) = (params.clone(), state(&opt, LENS.len()));
    let none: Vec<Option<&[f32]>> = vec![None; LENS.len()];
    let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
    opt.step_some(&be, &mut pv, &none).unwrap();
    assert_eq!(params, p0);
    assert_eq!(state(&opt, LENS.len()), s0);
    assert_eq!((opt.steps(), opt.steps_of(4)), (2, Some(1)));
    // A gradient of the wrong length is still an error when others are missing.
    let mut bad = none.clone();
    bad[3] = Some(&g[3][1..]);
    let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
    let e = opt.step_some(&be, &mut pv, &bad).unwrap_err().to_string();
    assert!(e.contains("grads"), "{e}");
    assert_eq!(params, p0);
    assert_eq!((opt.steps(), opt.steps_of(3)), (2, Some(1)));
}

/// The encoder of the corrected steps below: tensors 2..6 of `LENS`.
const FIRST: usize = 2;
const ENC: usize = 4;

/// The corrected step with per-tensor counts: call 1 skips the encoder (a plain step of
/// the others), call 2 is corrected with tensors 0 and 7 (outside the encoder) skipped,
/// call 3 corrected with every gradient. Bit for bit the oracle given the CPU's pass-1
/// partials (`corrected_grads`, then `ListState`), SGD with momentum and AdamW, f32 and
/// bf16; an encoder tensor without a gradient: `Err`, nothing written.
fn corrected<T: Element>() {
    let be = CpuBackend::with_threads(2)
        .unwrap()
        .with_chunk(64)
        .unwrap()
        .with_inline_elements(0);
    let enc = FIRST..FIRST + ENC;
    let segs = Segments::from_lengths(&LENS[enc.clone()]).unwrap();
    let rules = [
        Rule::Sgd(Sgd {
            momentum: 0.9,
            dampening: 0.1,
            ..Sgd::new(0.05)
        }),
        Rule::AdamW(AdamW::default()),
    ];
    for rule in rules {
        let what = format!("{:?} {rule:?}", T::DTYPE);
        let mut opt = Optimizer::new(rule, &LENS).unwrap();
        let mut params = theta::<T>(&LENS);
        let (theta0, _) = super::encoder(&params, FIRST, ENC, 0);
        let th0: Vec<&[T]> = theta0.iter().map(|x| &x[..]).collect();
        let mut want = params.clone();
        let mut oracle = ListState::new(&rule, &LENS);
        let beta = Beta::Scalar(1.3);
        for t in 1..=3u64 {
            let g = grads::<T>(&LENS, t);
            let present = |i: usize| match t {
                1 => !enc.contains(&i),
                2 => i != 0 && i != 7,
                _ => true,
            };
            // The oracle: corrected gradients of the encoder from the CPU's pass 1.
            let mut gw: Vec<Option<Vec<f64>>> = (0..LENS.len())
                .map(|i| present(i).then(|| widen(&g[i])))
                .collect();
            if t > 1 {
                let (th, t0, mut gf) = (
                    want[enc.clone()].concat(),
                    theta0.concat(),
                    g[enc.clone()].concat(),
                );
                let p = Projection::drift(&th[..], &t0[..], std::iter::empty(), &mut gf[..]);
                let parts = be.partials(&segs, &p).unwrap();
                let tr: Vec<&[T]> = want[enc.clone()].iter().map(|x| &x[..]).collect();
                let gr: Vec<&[T]> = g[enc.clone()].iter().map(|x| &x[..]).collect();
                let opts = ProjectOptions::default();
                let (gc, _) = corrected_grads(&parts, &tr, &th0, &gr, &[], beta, &opts).unwrap();
                for (s, x) in gc.into_iter().enumerate() {
                    gw[FIRST + s] = Some(x);
                }
            }
            oracle.step(&rule, &mut want, &gw).unwrap();
            let gv: Vec<Option<&[T]>> = (0..LENS.len())
                .map(|i| present(i).then_some(&g[i][..]))
                .collect();
            let c = Correction::new(FIRST, th0.clone(), beta);
            if t > 1 {
                // An encoder tensor without its gradient first: Err, nothing written.
                let (p0, s0) = (params.clone(), state(&opt, LENS.len()));
                let mut missing = gv.clone();
                missing[FIRST + 1] = None;
                let mut pv: Vec<&mut [T]> = params.iter_mut().map(|p| &mut p[..]).collect();
                let e = opt
                    .step_corrected_some(&be, &mut pv, &missing, &c)
                    .unwrap_err();
                assert!(e.to_string().contains("no gradient"), "{e}");
                assert_eq!(bits(&params.concat()), bits(&p0.concat()), "{what}");
                assert_eq!(state(&opt, LENS.len()), s0, "{what}");
                assert_eq!(opt.steps(), t - 1);
            }
            let mut pv: Vec<&mut [T]> = params.iter_mut().map(|p| &mut p[..]).collect();
            if t == 1 {
                opt.step_some(&be, &mut pv, &gv).unwrap();
            } else {
                opt.step_corrected_some(&be, &mut pv, &gv, &c).unwrap();
            }
            for i in 0..LENS.len() {
                assert_eq!(
                    bits(&params[i]),
                    bits(&want[i]),
                    "{what} step {t} tensor {i}"
                );
            }
            same_state(&opt, &rule, &oracle, &format!("{what} step {t}"));
        }
    }
}

#[test]
fn corrected_step_with_skipped_tensors_f32() {
    corrected::<f32>();
}

#[test]
fn corrected_step_with_skipped_tensors_bf16() {
    corrected::<bf16>();
}
