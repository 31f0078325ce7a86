//! The fused RedReg optimizer step on the CPU (`Optimizer::step_corrected`) against the
//! f64 oracle: the projection's pass 1, then `reference::corrected_grads` (the corrected
//! gradient in f64, never rounded), then `reference::{sgd_step, adamw_step}`.
//!
//! - Bit for bit when the oracle is given the same pass-1 partials (the CPU's, for the
//!   backend's chunk size): every dtype, SGD and AdamW, k = 1 and 3, scalar and per-tensor
//!   β, first and later steps, 1/2/8 threads, several chunk sizes and cache budgets (the
//!   encoder in one group, or cut into groups); tensors outside the
//!   encoder take the plain step in the same pass.
//! - Within one rounding when the oracle runs its own pass 1 (`reference::partials`, another
//!   summation order: `docs/numerics.md`, *The fused optimizer step*).
//! - The corrected gradient rounded to `T` is bit for bit the projection oracle's output.
//! - Bad input: `Err`, with θ, the state and the step count unchanged.

use redreg::optim::reference::{adamw_step, corrected_grads, sgd_step, widen};
use redreg::optim::{AdamW, Correction, Optimizer, Rule, Sgd};
use redreg::testing::elements;
use redreg::{
    bf16, f16, reference, Backend, Beta, CpuBackend, Element, Partials, ProjectOptions, Projection,
    Segments,
};

/// The optimizer's tensors: plain ones around an encoder (tensors `FIRST..FIRST + 5`) with
/// a one-element tensor (length ≤ k: the rank cap), an empty one, and multi-chunk ones.
const LENS: [usize; 8] = [5, 0, 1, 37, 1000, 5000, 64, 300];
const FIRST: usize = 2;
const ENC: usize = 5;

fn rules() -> Vec<Rule> {
    vec![
        Rule::Sgd(Sgd::new(0.05)),
        Rule::Sgd(Sgd::script(0.01)),
        Rule::Sgd(Sgd {
            momentum: 0.8,
            nesterov: true,
            weight_decay: 1e-2,
            ..Sgd::new(0.05)
        }),
        Rule::AdamW(AdamW::default()),
        Rule::AdamW(AdamW {
            lr: 0.02,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-6,
            weight_decay: 0.1,
        }),
    ]
}

/// One model's data: θ, θ₀ (for the encoder), extra basis lists.
struct Model<T> {
    theta: Vec<Vec<T>>,
    theta0: Vec<Vec<T>>,
    extra: Vec<Vec<Vec<T>>>,
}

fn model<T: Element>(extras: usize) -> Model<T> {
    let theta: Vec<Vec<T>> = LENS
        .iter()
        .enumerate()
        .map(|(i, &n)| elements(n, 10 + i as u64, 1.0))
        .collect();
    let (theta0, extra) = super::encoder(&theta, FIRST, ENC, extras);
    Model {
        theta,
        theta0,
        extra,
    }
}

fn grads<T: Element>(step: u64) -> Vec<Vec<T>> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| elements(n, 100 * step + i as u64, 0.2))
        .collect()
}

fn refs<T>(x: &[Vec<T>]) -> Vec<&[T]> {
    x.iter().map(|v| v.as_slice()).collect()
}

fn refs2<T>(x: &[Vec<Vec<T>>]) -> Vec<Vec<&[T]>> {
    x.iter().map(|l| refs(l)).collect()
}

/// Pass 1 of the encoder's drift projection on `be`, on the encoder packed flat (bit for bit
/// the tensor-list partials: the same chunk table, `docs/numerics.md`).
fn cpu_partials<T: Element>(
    be: &CpuBackend,
    theta: &[&[T]],
    theta0: &[&[T]],
    grad: &[&[T]],
    extra: &[Vec<&[T]>],
) -> Partials {
    let segs = Segments::from_lengths(&LENS[FIRST..FIRST + ENC]).unwrap();
    let (th, th0, mut g) = (theta.concat(), theta0.concat(), grad.concat());
    let ex: Vec<Vec<T>> = extra.iter().map(|e| e.concat()).collect();
    let p = Projection::drift(&th[..], &th0[..], ex.iter().map(|e| &e[..]), &mut g[..]);
    be.partials(&segs, &p).unwrap()
}

/// The oracle's step: the corrected gradients of the encoder from `parts`, the plain ones
/// elsewhere, then the rule per tensor. Returns the ranks.
#[allow(clippy::too_many_arguments)]
fn oracle_step<T: Element>(
    rule: &Rule,
    t: u64,
    parts: &Partials,
    theta: &mut [Vec<T>],
    s0: &mut [Vec<f32>],
    s1: &mut [Vec<f32>],
    g: &[Vec<T>],
    m: &Model<T>,
    beta: Beta<'_>,
) -> Vec<u32> {
    let (gc, ranks) = corrected_grads(
        parts,
        &refs(&theta[FIRST..FIRST + ENC]),
        &refs(&m.theta0),
        &refs(&g[FIRST..FIRST + ENC]),
        &refs2(&m.extra),
        beta,
        &ProjectOptions::default(),
    )
    .unwrap();
    for i in 0..LENS.len() {
        let gi = if (FIRST..FIRST + ENC).contains(&i) {
            gc[i - FIRST].clone()
        } else {
            widen(&g[i])
        };
        match rule {
            Rule::Sgd(p) => sgd_step(p, t, &mut theta[i], &gi, &mut s0[i]).unwrap(),
            Rule::AdamW(p) => adamw_step(p, t, &mut theta[i], &gi, &mut s0[i], &mut s1[i]).unwrap(),
        }
    }
    ranks
}

fn bits<T: Element>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// `Err` naming the first element whose bits differ.
fn same_bits<T: Element>(got: &[T], want: &[T]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} elements, want {}", got.len(), want.len()));
    }
    match (0..got.len()).find(|&e| got[e].to_f64().to_bits() != want[e].to_f64().to_bits()) {
        None => Ok(()),
        Some(e) => Err(format!(
            "[{e}]: {} vs {}",
            got[e].to_f64(),
            want[e].to_f64()
        )),
    }
}

fn check<T: Element>() {
    let per_seg = [0.5, 1.0, 2.0, 0.0, 1.5];
    for rule in rules() {
        for (extras, beta) in [(0, Beta::Scalar(1.0)), (2, Beta::PerSegment(&per_seg))] {
            // Cache budgets (bytes): the default (the encoder in one group), off, 1 (every
            // tensor a group of its own) and 20 000 (the small tensors grouped, the
            // 5000-element one alone).
            let configs = [(1, 1 << 15, CpuBackend::DEFAULT_CACHE_BYTES), (2, 64, 0)];
            for (threads, chunk, cache) in configs.into_iter().chain([(8, 64, 1), (8, 7, 20_000)]) {
                let be = CpuBackend::with_threads(threads)
                    .unwrap()
                    .with_chunk(chunk)
                    .unwrap()
                    .with_inline_elements(0)
                    .with_cache_bytes(cache);
                let m = model::<T>(extras);
                let mut opt = Optimizer::new(rule, &LENS).unwrap();
                let mut plain = opt.clone();
                let mut params = m.theta.clone();
                let mut plain_params = m.theta.clone();
                let mut want = m.theta.clone();
                let mut s0: Vec<Vec<f32>> = LENS.iter().map(|&n| vec![0.0; n]).collect();
                let mut s1 = s0.clone();
                let what = format!(
                    "{:?} {rule:?} k={} {threads}t chunk {chunk} cache {cache} B",
                    T::DTYPE,
                    extras + 1
                );
                for t in 1..=3u64 {
                    let g = grads::<T>(t);
                    let parts = cpu_partials(
                        &be,
                        &refs(&params[FIRST..FIRST + ENC]),
                        &refs(&m.theta0),
                        &refs(&g[FIRST..FIRST + ENC]),
                        &refs2(&m.extra),
                    );
                    let want_ranks =
                        oracle_step(&rule, t, &parts, &mut want, &mut s0, &mut s1, &g, &m, beta);
                    let c = Correction::new(FIRST, refs(&m.theta0), beta).extra(refs2(&m.extra));
                    let mut pv: Vec<&mut [T]> = params.iter_mut().map(|p| &mut p[..]).collect();
                    let ranks = opt.step_corrected(&be, &mut pv, &refs(&g), &c).unwrap();
                    assert_eq!(ranks, want_ranks, "{what} step {t}");
                    assert_eq!(ranks[0], 1, "{what}: a one-element tensor has rank 1");
                    for i in 0..LENS.len() {
                        assert_eq!(
                            bits(&params[i]),
                            bits(&want[i]),
                            "{what} step {t} tensor {i}"
                        );
                        let (a, b) = opt.state(i).unwrap();
                        if !matches!(rule, Rule::Sgd(p) if p.momentum == 0.0) {
                            assert_eq!(a, &s0[i][..], "{what} step {t} state 0 of {i}");
                        }
                        if matches!(rule, Rule::AdamW(_)) {
                            assert_eq!(b, &s1[i][..], "{what} step {t} state 1 of {i}");
                        }
                    }
                    // The correction acts: the plain step differs on the encoder (where
                    // β ≠ 0) and equals it elsewhere.
                    let mut pv: Vec<&mut [T]> =
                        plain_params.iter_mut().map(|p| &mut p[..]).collect();
                    plain.step(&be, &mut pv, &refs(&g)).unwrap();
                    if t == 1 {
                        assert_ne!(bits(&plain_params[4]), bits(&params[4]), "{what}");
                        assert_eq!(bits(&plain_params[7]), bits(&params[7]), "{what}");
                    }
                }
                assert_eq!(opt.steps(), 3);
            }
        }
    }
}

#[test]
fn fused_matches_the_oracle_f32() {
    check::<f32>();
}

#[test]
fn fused_matches_the_oracle_f16() {
    check::<f16>();
}

#[test]
fn fused_matches_the_oracle_bf16() {
    check::<bf16>();
}

/// The oracle's corrected gradient, rounded to `T`, is the projection oracle's output
/// (`reference::apply` of `Projection::drift` on the same partials), bit for bit.
fn matches_projection<T: Element>() {
    let m = model::<T>(2);
    let g = grads::<T>(1);
    let segs = Segments::from_lengths(&LENS[FIRST..FIRST + ENC]).unwrap();
    let th = refs(&m.theta[FIRST..FIRST + ENC]);
    let gr = refs(&g[FIRST..FIRST + ENC]);
    let ex = refs2(&m.extra);
    let beta = [0.5, 1.0, 2.0, -0.3, 1.5];
    let (flat_th, flat_th0, flat_g) = (th.concat(), m.theta0.concat(), gr.concat());
    let flat_ex: Vec<Vec<T>> = ex.iter().map(|e| e.concat()).collect();
    let mut out = flat_g.clone();
    let p = Projection::drift(
        &flat_th[..],
        &flat_th0[..],
        flat_ex.iter().map(|e| &e[..]),
        &mut out[..],
    )
    .beta(&beta[..]);
    let parts = reference::partials(&segs, &p).unwrap();
    let ranks = reference::apply(&segs, &parts, p).unwrap();
    let (gc, r2) = corrected_grads(
        &parts,
        &th,
        &refs(&m.theta0),
        &gr,
        &ex,
        Beta::PerSegment(&beta),
        &ProjectOptions::default(),
    )
    .unwrap();
    assert_eq!(ranks, r2);
    let rounded: Vec<T> = gc.concat().into_iter().map(T::from_f64).collect();
    if let Err(e) = same_bits(&rounded, &out) {
        panic!("{:?}: {e}", T::DTYPE);
    }
    assert_ne!(
        bits(&out),
        bits(&flat_g),
        "the correction changes the gradient"
    );
}

#[test]
fn corrected_gradient_is_the_projection_oracles() {
    matches_projection::<f32>();
    matches_projection::<f16>();
    matches_projection::<bf16>();
}

/// Against the oracle's own pass 1 (`reference::partials`: another summation order than the
/// CPU's chunked lanes), 3 steps: every θ within one rounding of `T` and every state value
/// within two f32 roundings (`docs/numerics.md`).
fn close_to_full_oracle<T: Element>(ulp: f64) {
    for rule in [Rule::Sgd(Sgd::script(0.05)), Rule::AdamW(AdamW::default())] {
        let be = CpuBackend::with_threads(2)
            .unwrap()
            .with_chunk(256)
            .unwrap();
        let m = model::<T>(1);
        let mut opt = Optimizer::new(rule, &LENS).unwrap();
        let mut params = m.theta.clone();
        let mut want = m.theta.clone();
        let mut s0: Vec<Vec<f32>> = LENS.iter().map(|&n| vec![0.0; n]).collect();
        let mut s1 = s0.clone();
        let segs = Segments::from_lengths(&LENS[FIRST..FIRST + ENC]).unwrap();
        for t in 1..=3u64 {
            let g = grads::<T>(t);
            let (th, th0) = (refs(&want[FIRST..FIRST + ENC]).concat(), m.theta0.concat());
            let mut gf = refs(&g[FIRST..FIRST + ENC]).concat();
            let ex: Vec<Vec<T>> = m.extra.iter().map(|e| refs(e).concat()).collect();
            let p = Projection::drift(&th[..], &th0[..], ex.iter().map(|e| &e[..]), &mut gf[..]);
            let parts = reference::partials(&segs, &p).unwrap();
            let beta = Beta::Scalar(0.7);
            oracle_step(&rule, t, &parts, &mut want, &mut s0, &mut s1, &g, &m, beta);
            let c = Correction::new(FIRST, refs(&m.theta0), beta).extra(refs2(&m.extra));
            let mut pv: Vec<&mut [T]> = params.iter_mut().map(|p| &mut p[..]).collect();
            opt.step_corrected(&be, &mut pv, &refs(&g), &c).unwrap();
            for i in 0..LENS.len() {
                for (e, (a, b)) in params[i].iter().zip(&want[i]).enumerate() {
                    let (a, b) = (a.to_f64(), b.to_f64());
                    assert!(
                        (a - b).abs() <= ulp * b.abs(),
                        "{:?} {rule:?} step {t} tensor {i}[{e}]: {a} vs {b}",
                        T::DTYPE
                    );
                }
                let (x, y) = opt.state(i).unwrap();
                for (got, want) in [(x, &s0[i]), (y, &s1[i])] {
                    for (a, b) in got.iter().zip(want.iter()) {
                        let tol = 2.0 * f32::EPSILON as f64 * (*b as f64).abs();
                        assert!((*a as f64 - *b as f64).abs() <= tol, "state {a} vs {b}");
                    }
                }
            }
        }
    }
}

#[test]
fn close_to_the_oracles_own_pass1() {
    close_to_full_oracle::<f32>(f32::EPSILON as f64);
    close_to_full_oracle::<f16>(f16::EPSILON.to_f64());
    close_to_full_oracle::<bf16>(bf16::EPSILON.to_f64());
}

/// β = 0: `g + 0·y` is `g` exactly, so the fused pass is the plain step bit for bit.
#[test]
fn beta_zero_is_the_plain_step() {
    let be = CpuBackend::with_threads(2)
        .unwrap()
        .with_chunk(100)
        .unwrap();
    let m = model::<bf16>(0);
    let rule = Rule::AdamW(AdamW::default());
    let (mut a, mut b) = (
        Optimizer::new(rule, &LENS).unwrap(),
        Optimizer::new(rule, &LENS).unwrap(),
    );
    let (mut pa, mut pb) = (m.theta.clone(), m.theta.clone());
    for t in 1..=2 {
        let g = grads::<bf16>(t);
        let c = Correction::new(FIRST, refs(&m.theta0), 0.0);
        let mut v: Vec<&mut [bf16]> = pa.iter_mut().map(|p| &mut p[..]).collect();
        a.step_corrected(&be, &mut v, &refs(&g), &c).unwrap();
        let mut v: Vec<&mut [bf16]> = pb.iter_mut().map(|p| &mut p[..]).collect();
        b.step(&be, &mut v, &refs(&g)).unwrap();
    }
    assert_eq!(pa, pb);
    for i in 0..LENS.len() {
        assert_eq!(a.state(i), b.state(i));
    }
}

/// Every bad input is an `Err` with θ, the state and the step count unchanged (checked
/// after one good step, so the state is not zero).
#[test]
fn bad_input_writes_nothing() {
    let be = CpuBackend::with_threads(2).unwrap().with_chunk(64).unwrap();
    let m = model::<f32>(1);
    let mut opt = Optimizer::new(Rule::AdamW(AdamW::default()), &LENS).unwrap();
    let mut params = m.theta.clone();
    let g = grads::<f32>(1);
    let gr = refs(&g);
    {
        let c = Correction::new(FIRST, refs(&m.theta0), 1.0);
        let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        opt.step_corrected(&be, &mut pv, &gr, &c).unwrap();
    }
    let snapshot = |o: &Optimizer| -> Vec<(Vec<f32>, Vec<f32>)> {
        (0..LENS.len())
            .map(|i| {
                let (a, b) = o.state(i).unwrap();
                (a.to_vec(), b.to_vec())
            })
            .collect()
    };
    let (p0, st0) = (params.clone(), snapshot(&opt));
    let th0 = refs(&m.theta0);
    let short: Vec<&[f32]> = th0
        .iter()
        .map(|t| &t[..t.len().saturating_sub(1)])
        .collect();
    let wrong_beta = [1.0; 4];
    let nine: Vec<Vec<&[f32]>> = (0..8).map(|_| refs(&m.extra[0])).collect();
    let bad: Vec<(&str, Correction<'_, &[f32]>)> = vec![
        ("beta", Correction::new(FIRST, th0.clone(), f64::NAN)),
        ("beta", Correction::new(FIRST, th0.clone(), f64::INFINITY)),
        ("beta", Correction::new(FIRST, th0.clone(), &wrong_beta[..])),
        ("v0", Correction::new(FIRST, short, 1.0)),
        (
            "correction",
            Correction::new(LENS.len() - 2, th0.clone(), 1.0),
        ),
        ("correction", Correction::new(usize::MAX, th0.clone(), 1.0)),
        (
            "basis",
            Correction::new(FIRST, th0.clone(), 1.0).extra(vec![refs(&m.extra[0])[..4].to_vec()]),
        ),
        (
            "k must be",
            Correction::new(FIRST, th0.clone(), 1.0).extra(nine),
        ),
        (
            "tol",
            Correction::new(FIRST, th0.clone(), 1.0).opts(ProjectOptions {
                tol: f64::NAN,
                ridge: 0.0,
            }),
        ),
    ];
    for (want, c) in &bad {
        let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        let e = opt
            .step_corrected(&be, &mut pv, &gr, c)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    // Lists of another layout, with a valid correction.
    let c = Correction::new(FIRST, th0.clone(), 1.0);
    let mut other = params.clone();
    other[6].push(0.0);
    let mut pv: Vec<&mut [f32]> = other.iter_mut().map(|p| &mut p[..]).collect();
    assert!(opt.step_corrected(&be, &mut pv, &gr, &c).is_err());
    let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
    assert!(opt.step_corrected(&be, &mut pv, &gr[1..], &c).is_err());
    assert!(opt.step_corrected(&be, &mut pv[1..], &gr, &c).is_err());
    let mut fewer = Optimizer::new(Rule::AdamW(AdamW::default()), &LENS[..7]).unwrap();
    assert!(fewer.step_corrected(&be, &mut pv, &gr, &c).is_err());
    assert_eq!(params, p0);
    assert_eq!(snapshot(&opt), st0);
    assert_eq!(opt.steps(), 1);
}

/// `Controller::step_optimizer` (the controller's fused step) against its unfused form:
/// `Controller::step` (the projection writes the corrected gradients) followed by the
/// optimizer's plain step. Two encoders and a head in one optimizer list; the visual
/// encoder suppressed (p_a = 0.3 < p_v = 0.7, β = exp(0.9·tanh 0.4), tests/controller.rs).
/// The same decision and ranks; the suppressed encoder's θ and state within the rounding
/// of the corrected gradient to f32 (the fused step never rounds it) and visibly moved by
/// the correction; every other tensor bit for bit the plain step. Then an encoder outside
/// the list: `Err`, with the controller, the optimizer and θ unchanged.
#[test]
fn controller_fused_step_is_step_then_optimizer() {
    use redreg::controller::{HostEncoder, JointBasis};
    // The optimizer's list: audio = tensors 0..3, visual = 3..7, the head = 7.
    const LIST: [usize; 8] = [5, 0, 1000, 37, 1, 5000, 64, 300];
    let encs = [0..3, 3..7];
    let be = CpuBackend::with_threads(2)
        .unwrap()
        .with_chunk(256)
        .unwrap();
    let theta: Vec<Vec<f32>> = (0..8)
        .map(|i| elements(LIST[i], 10 + i as u64, 1.0))
        .collect();
    let grad: Vec<Vec<f32>> = (0..8)
        .map(|i| elements(LIST[i], 30 + i as u64, 0.1))
        .collect();
    let (theta0, _) = super::encoder::<f32>(&theta, 0, 8, 0);
    let (inputs, controller) = (super::suppress_visual(), super::controller);
    let flat = |x: &[Vec<f32>], r: &std::ops::Range<usize>| x[r.clone()].concat();
    for rule in [Rule::Sgd(Sgd::script(0.05)), Rule::AdamW(AdamW::default())] {
        // Unfused: the controller's step on flat encoders, then the plain optimizer step.
        let mut ctl_a = controller();
        let mut opt_a = Optimizer::new(rule, &LIST).unwrap();
        let mut th_a: Vec<Vec<f32>> = encs.iter().map(|r| flat(&theta, r)).collect();
        th_a.push(theta[7].clone());
        let mut g_a: Vec<Vec<f32>> = encs.iter().map(|r| flat(&grad, r)).collect();
        g_a.push(grad[7].clone());
        let segs: Vec<Segments> = (encs.iter())
            .map(|r| Segments::from_lengths(&LIST[r.clone()]).unwrap())
            .collect();
        let th0: Vec<Vec<f32>> = encs.iter().map(|r| flat(&theta0, r)).collect();
        let (d_a, ranks_a) = {
            let (g0, g1) = g_a.split_at_mut(1);
            let mut e = [
                HostEncoder {
                    segs: &segs[0],
                    theta: &th_a[0],
                    theta0: &th0[0],
                    grad: &mut g0[0],
                    basis: JointBasis::Gradient,
                },
                HostEncoder {
                    segs: &segs[1],
                    theta: &th_a[1],
                    theta0: &th0[1],
                    grad: &mut g1[0],
                    basis: JointBasis::Gradient,
                },
            ];
            ctl_a.step(&inputs, &be, &mut e).unwrap()
        };
        // Cut the flat buffers back into the optimizer's list.
        let cut = |bufs: &mut Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            let mut out = Vec::new();
            for (b, r) in bufs.iter().zip(&encs) {
                let mut at = 0;
                for &n in &LIST[r.clone()] {
                    out.push(b[at..at + n].to_vec());
                    at += n;
                }
            }
            out.push(bufs[2].clone());
            out
        };
        let mut p_a = cut(&mut th_a);
        let g_corr = cut(&mut g_a);
        {
            let mut pv: Vec<&mut [f32]> = p_a.iter_mut().map(|p| &mut p[..]).collect();
            opt_a.step(&be, &mut pv, &refs(&g_corr)).unwrap();
        }
        // Fused.
        let mut ctl_b = controller();
        let mut opt_b = Optimizer::new(rule, &LIST).unwrap();
        let mut p_b = theta.clone();
        let t0 = refs(&theta0);
        let mut corr: Vec<Correction<'_, &[f32]>> = (encs.iter())
            .map(|r| Correction::new(r.start, t0[r.clone()].to_vec(), 0.0))
            .collect();
        let (d_b, ranks_b) = {
            let mut pv: Vec<&mut [f32]> = p_b.iter_mut().map(|p| &mut p[..]).collect();
            ctl_b
                .step_optimizer(&inputs, &be, &mut opt_b, &mut pv, &refs(&grad), &corr)
                .unwrap()
        };
        // The plain step, for the tensors outside the suppressed encoder.
        let mut opt_c = Optimizer::new(rule, &LIST).unwrap();
        let mut p_c = theta.clone();
        {
            let mut pv: Vec<&mut [f32]> = p_c.iter_mut().map(|p| &mut p[..]).collect();
            opt_c.step(&be, &mut pv, &refs(&grad)).unwrap();
        }
        assert_eq!(d_a, d_b, "{rule:?}: decisions");
        assert_eq!(d_b.suppressed, Some(1));
        assert_eq!(ranks_a, ranks_b, "{rule:?}: ranks");
        for i in 0..8 {
            let what = format!("{rule:?} tensor {i}");
            if encs[1].contains(&i) {
                redreg::testing::assert_close(&what, &p_b[i], &p_a[i], 1e-7, 1e-6);
                let (sa, sb) = (opt_a.state(i).unwrap(), opt_b.state(i).unwrap());
                redreg::testing::assert_close(&what, sb.0, sa.0, 1e-7, 1e-5);
                redreg::testing::assert_close(&what, sb.1, sa.1, 1e-9, 1e-5);
                if LIST[i] > 1 {
                    assert_ne!(
                        bits(&p_b[i]),
                        bits(&p_c[i]),
                        "{what}: the correction moved nothing"
                    );
                }
            } else {
                assert_eq!(bits(&p_b[i]), bits(&p_c[i]), "{what}: not the plain step");
            }
        }
        // An encoder that does not fit the list: Err, nothing changed.
        let (state, steps, before) = (ctl_b.state().clone(), opt_b.steps(), p_b.clone());
        corr[0].first = 6;
        let mut pv: Vec<&mut [f32]> = p_b.iter_mut().map(|p| &mut p[..]).collect();
        let e = ctl_b.step_optimizer(&inputs, &be, &mut opt_b, &mut pv, &refs(&grad), &corr);
        drop(pv);
        assert!(e.unwrap_err().to_string().contains("encoder 0"));
        assert_eq!(ctl_b.state(), &state, "{rule:?}: controller state changed");
        assert_eq!(opt_b.steps(), steps);
        assert_eq!(p_b, before);
    }
}
