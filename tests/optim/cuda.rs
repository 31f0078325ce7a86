//! The CUDA optimizer step (`Optimizer<CudaBackend>`, `kernels/optim.cu`) against the f64 oracle, on
//! a GPU or the emulated driver (tests/emu); without either every test prints `SKIP`
//! (`REDREG_REQUIRE_GPU=1` makes that fail: tests/common/gpu.rs).
//!
//! - Plain step: bit for bit `reference::{sgd_step, adamw_step}` for every dtype, SGD (no
//!   momentum, momentum with dampening, Nesterov with weight decay, the script's) and
//!   AdamW (two settings), steps 1..3, parameters and state.
//! - Corrected step: bit for bit the oracle given the same pass-1 partials (the CUDA
//!   projection's own, from `Backend::partials` on the encoder packed flat: the same chunk
//!   table, hence the same bits as the tensor list), k = 1 and 3, scalar and per-tensor β;
//!   the ranks are the oracle's; tensors outside the encoder take the plain step.
//! - Per-tensor steps (`step_some`, PyTorch's per-parameter semantics): the skip pattern of
//!   `super::skipped` over 5 calls, every rule and dtype, bit for bit the per-parameter
//!   oracle (`reference::ListState`), skipped tensors' θ and state bit for bit unchanged, the
//!   per-tensor counts; the corrected step with skipped tensors outside the encoder and
//!   encoder counts behind the others', and an encoder tensor without a gradient refused.
//! - Repeated runs give the same bits; bad input is `Err` with nothing written; launch
//!   counts on the emulated driver: 120 tensors, plain step 1 launch, corrected 2; a step
//!   with skipped tensors 1 launch (plus the pointer table's upload when the skipped set
//!   changes), with differing step constants 1 launch plus the per-tensor step table's
//!   upload.
//!
//! The tests share one lock: the launch-count test reads process-wide counters.

#[path = "../common/emu.rs"]
mod emu;
#[path = "../common/gpu.rs"]
mod gpu;

use super::{rules, skipped};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use redreg::cuda::CudaBackend;
use redreg::optim::reference::{adamw_step, corrected_grads, sgd_step, widen, ListState};
use redreg::optim::{AdamW, Correction, Optimizer, Rule, Sgd};
use redreg::testing::elements;
use redreg::{bf16, f16, Backend, Beta, Element, Partials, ProjectOptions, Projection, Segments};
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Plain tensors around an encoder (tensors `FIRST..FIRST + ENC`) holding a one-element
/// tensor (length ≤ k), an empty one and one of three chunks (RR_CHUNK = 16384).
const LENS: [usize; 8] = [5, 0, 1, 37, 1000, 40000, 64, 300];
const FIRST: usize = 2;
const ENC: usize = 5;

fn up<T: Element>(b: &CudaBackend, x: &[T]) -> CudaSlice<T> {
    // A zero-length allocation is valid for cudarc; keep at least one element so that every
    // tensor has its own address.
    if x.is_empty() {
        return b.stream().alloc_zeros::<T>(1).unwrap();
    }
    b.stream().clone_htod(x).unwrap()
}

fn down<T: Element>(b: &CudaBackend, x: &CudaSlice<T>, n: usize) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    b.stream().clone_dtoh(&x.slice(0..n)).unwrap()
}

fn ups<T: Element>(b: &CudaBackend, x: &[Vec<T>]) -> Vec<CudaSlice<T>> {
    x.iter().map(|v| up(b, v)).collect()
}

fn views<'a, T>(x: &'a [CudaSlice<T>], lens: &[usize]) -> Vec<CudaView<'a, T>> {
    x.iter().zip(lens).map(|(s, &n)| s.slice(0..n)).collect()
}

fn views_mut<'a, T>(x: &'a mut [CudaSlice<T>], lens: &[usize]) -> Vec<CudaViewMut<'a, T>> {
    x.iter_mut()
        .zip(lens)
        .map(|(s, &n)| s.slice_mut(0..n))
        .collect()
}

fn downs<T: Element>(b: &CudaBackend, x: &[CudaSlice<T>], lens: &[usize]) -> Vec<Vec<T>> {
    x.iter().zip(lens).map(|(s, &n)| down(b, s, n)).collect()
}

fn refs<T>(x: &[Vec<T>]) -> Vec<&[T]> {
    x.iter().map(|v| v.as_slice()).collect()
}

/// Bits of every element (f16/bf16 widen exactly, so f64 bits identify the value).
fn bits<T: Element>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}

fn same<T: Element>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) =
        (0..got.len()).find(|&i| got[i].to_f64().to_bits() != want[i].to_f64().to_bits())
    {
        panic!(
            "{what}: element {i} of {}: got {}, want {}",
            got.len(),
            got[i].to_f64(),
            want[i].to_f64()
        );
    }
}

fn grads<T: Element>(step: u64) -> Vec<Vec<T>> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| elements(n, 100 * step + i as u64, 0.2))
        .collect()
}

fn theta<T: Element>() -> Vec<Vec<T>> {
    LENS.iter()
        .enumerate()
        .map(|(i, &n)| elements(n, 10 + i as u64, 1.0))
        .collect()
}

/// The oracle's step on every tensor with the given f64 gradients.
fn oracle(
    rule: &Rule,
    t: u64,
    th: &mut [Vec<impl Element>],
    g: &[Vec<f64>],
    s0: &mut [Vec<f32>],
    s1: &mut [Vec<f32>],
) {
    for i in 0..th.len() {
        match rule {
            Rule::Sgd(p) => sgd_step(p, t, &mut th[i], &g[i], &mut s0[i]).unwrap(),
            Rule::AdamW(p) => adamw_step(p, t, &mut th[i], &g[i], &mut s0[i], &mut s1[i]).unwrap(),
        }
    }
}

fn check_state(
    b: &CudaBackend,
    opt: &Optimizer<CudaBackend>,
    rule: &Rule,
    s0: &[Vec<f32>],
    s1: &[Vec<f32>],
    what: &str,
) {
    for i in 0..LENS.len() {
        let (a, c) = opt.state(b, i).unwrap().unwrap();
        let has0 = !matches!(rule, Rule::Sgd(p) if p.momentum == 0.0);
        if has0 {
            same(&a, &s0[i], &format!("{what}: state 0 of tensor {i}"));
        } else {
            assert!(a.is_empty());
        }
        if matches!(rule, Rule::AdamW(_)) {
            same(&c, &s1[i], &format!("{what}: state 1 of tensor {i}"));
        } else {
            assert!(c.is_empty());
        }
    }
    assert!(opt.state(b, LENS.len()).unwrap().is_none());
}

fn plain<T: Element>(test: &str) {
    let _l = lock();
    let Some(b) = gpu::backend(test) else {
        return;
    };
    for rule in rules() {
        let what = format!("{} {rule:?}", T::DTYPE);
        let mut opt = Optimizer::on(b, rule, &LENS).unwrap();
        let mut want = theta::<T>();
        let mut dev = ups(b, &want);
        let mut s0: Vec<Vec<f32>> = LENS.iter().map(|&n| vec![0.0; n]).collect();
        let mut s1 = s0.clone();
        for t in 1..=3u64 {
            let g = grads::<T>(t);
            let gw: Vec<Vec<f64>> = g.iter().map(|x| widen(x)).collect();
            oracle(&rule, t, &mut want, &gw, &mut s0, &mut s1);
            let gd = ups(b, &g);
            let mut pv = views_mut(&mut dev, &LENS);
            opt.step(b, &mut pv, &views(&gd, &LENS)).unwrap();
            assert_eq!(opt.steps(), t);
            let got = downs(b, &dev, &LENS);
            for i in 0..LENS.len() {
                same(&got[i], &want[i], &format!("{what} step {t} tensor {i}"));
            }
            check_state(b, &opt, &rule, &s0, &s1, &format!("{what} step {t}"));
        }
    }
}

#[test]
fn plain_step_matches_the_oracle_f32() {
    plain::<f32>("plain_step_matches_the_oracle_f32");
}

#[test]
fn plain_step_matches_the_oracle_f16() {
    plain::<f16>("plain_step_matches_the_oracle_f16");
}

#[test]
fn plain_step_matches_the_oracle_bf16() {
    plain::<bf16>("plain_step_matches_the_oracle_bf16");
}

/// The per-parameter oracle's state against the optimizer's: buffers and step counts.
fn check_list_state(
    b: &CudaBackend,
    opt: &Optimizer<CudaBackend>,
    rule: &Rule,
    want: &ListState,
    what: &str,
) {
    check_state(b, opt, rule, &want.s0, &want.s1, what);
    for (i, &t) in want.steps.iter().enumerate() {
        assert_eq!(opt.steps_of(i), Some(t), "{what}: steps of tensor {i}");
    }
}

/// Gradient views, `None` where `present` says so.
fn some_views<'a, T>(
    x: &'a [CudaSlice<T>],
    present: impl Fn(usize) -> bool,
) -> Vec<Option<CudaView<'a, T>>> {
    (views(x, &LENS).into_iter().enumerate())
        .map(|(i, v)| present(i).then_some(v))
        .collect()
}

/// One rule's run of the per-tensor step tests: the optimizer with θ on the device, and
/// the per-parameter oracle (`reference::ListState`) with its own θ.
struct ListRun<'b, T> {
    b: &'b CudaBackend,
    rule: Rule,
    opt: Optimizer<CudaBackend>,
    dev: Vec<CudaSlice<T>>,
    want: Vec<Vec<T>>,
    oracle: ListState,
    what: String,
}

/// The correction of the per-tensor corrected steps: the encoder's θ₀ (on the host for the
/// oracle, on the device for the step) and β.
struct Encoder<'a, T> {
    e: Enc<T>,
    t0d: Vec<CudaSlice<T>>,
    beta: Beta<'a>,
}

impl<'b, T: Element> ListRun<'b, T> {
    fn new(b: &'b CudaBackend, rule: Rule) -> Self {
        let want = theta::<T>();
        ListRun {
            b,
            rule,
            opt: Optimizer::on(b, rule, &LENS).unwrap(),
            dev: ups(b, &want),
            want,
            oracle: ListState::new(&rule, &LENS),
            what: format!("{} {rule:?}", T::DTYPE),
        }
    }

    /// Call `t` with the gradients of the tensors `present` names, corrected over the
    /// encoder when `enc` is given (`step_corrected_some`, else `step_some`). The oracle
    /// steps the present tensors with their widened gradients — the encoder's replaced by
    /// the corrected ones from the CUDA projection's pass-1 partials (`corrected_grads`).
    /// Before a corrected step, the same step with an encoder tensor's gradient missing:
    /// `Err`, θ bit for bit unchanged, the call not counted. Then: the call counted, θ bit
    /// for bit the oracle's, a skipped tensor's θ bit for bit what it was, the state and
    /// every tensor's count the oracle's.
    fn call(&mut self, t: u64, present: &dyn Fn(usize) -> bool, enc: Option<&Encoder<'_, T>>) {
        let (b, r) = (self.b, FIRST..FIRST + ENC);
        let g = grads::<T>(t);
        let mut gw: Vec<Option<Vec<f64>>> = (0..LENS.len())
            .map(|i| present(i).then(|| widen(&g[i])))
            .collect();
        if let Some(c) = enc {
            let parts = cuda_partials(b, &self.want, &c.e, &g);
            let (gc, _) = corrected_grads(
                &parts,
                &refs(&self.want[r.clone()]),
                &refs(&c.e.theta0),
                &refs(&g[r.clone()]),
                &[],
                c.beta,
                &ProjectOptions::default(),
            )
            .unwrap();
            for (s, x) in gc.into_iter().enumerate() {
                gw[FIRST + s] = Some(x);
            }
        }
        self.oracle.step(&self.rule, &mut self.want, &gw).unwrap();
        let what = format!("{} step {t}", self.what);
        let before = downs(b, &self.dev, &LENS);
        let gd = ups(b, &g);
        let c = enc.map(|c| Correction::new(FIRST, views(&c.t0d, &LENS[r.clone()]), c.beta));
        if let Some(c) = &c {
            let mut pv = views_mut(&mut self.dev, &LENS);
            let missing = some_views(&gd, |i| present(i) && i != FIRST + 2);
            let err = (self.opt.step_corrected_some(b, &mut pv, &missing, c)).unwrap_err();
            assert!(err.to_string().contains("no gradient"), "{err}");
            drop(pv);
            let now = downs(b, &self.dev, &LENS);
            for i in 0..LENS.len() {
                same(&now[i], &before[i], &format!("{what} refused, tensor {i}"));
            }
            assert_eq!(self.opt.steps(), t - 1, "{what} refused: calls");
        }
        let mut pv = views_mut(&mut self.dev, &LENS);
        let gv = some_views(&gd, present);
        match &c {
            None => self.opt.step_some(b, &mut pv, &gv).unwrap(),
            Some(c) => {
                self.opt.step_corrected_some(b, &mut pv, &gv, c).unwrap();
            }
        }
        assert_eq!(self.opt.steps(), t, "{what}: calls");
        let got = downs(b, &self.dev, &LENS);
        for i in 0..LENS.len() {
            let w = format!("{what} tensor {i}");
            same(&got[i], &self.want[i], &w);
            if !present(i) {
                same(&got[i], &before[i], &format!("{w} (skipped)"));
            }
        }
        check_list_state(b, &self.opt, &self.rule, &self.oracle, &what);
    }
}

fn skipping<T: Element>(test: &str) {
    let _l = lock();
    let Some(b) = gpu::backend(test) else {
        return;
    };
    for rule in rules() {
        let mut run = ListRun::<T>::new(b, rule);
        for t in 1..=5u64 {
            run.call(t, &|i| !skipped(i, t), None);
        }
    }
}

#[test]
fn skipped_tensors_match_the_per_parameter_oracle_f32() {
    skipping::<f32>("skipped_tensors_match_the_per_parameter_oracle_f32");
}

#[test]
fn skipped_tensors_match_the_per_parameter_oracle_f16() {
    skipping::<f16>("skipped_tensors_match_the_per_parameter_oracle_f16");
}

#[test]
fn skipped_tensors_match_the_per_parameter_oracle_bf16() {
    skipping::<bf16>("skipped_tensors_match_the_per_parameter_oracle_bf16");
}

/// The corrected step with per-tensor counts: call 1 skips the encoder (a plain step of the
/// others), call 2 is corrected with tensors 0 and 7 (outside the encoder) skipped, call 3
/// corrected with every gradient; bit for bit the oracle given the CUDA projection's pass-1
/// partials (SGD with momentum and dampening, AdamW; f32 and bf16). Before each corrected
/// step, the same step with an encoder tensor's gradient missing: `Err`, nothing written.
fn corrected_skipping<T: Element>(test: &str) {
    let _l = lock();
    let Some(b) = gpu::backend(test) else {
        return;
    };
    let rules = [
        Rule::Sgd(Sgd {
            momentum: 0.9,
            dampening: 0.1,
            ..Sgd::new(0.05)
        }),
        Rule::AdamW(AdamW::default()),
    ];
    let r = FIRST..FIRST + ENC;
    let e = enc(&theta::<T>(), 0);
    let t0d = ups(b, &e.theta0);
    let enc = Encoder {
        e,
        t0d,
        beta: Beta::Scalar(1.5),
    };
    for rule in rules {
        let mut run = ListRun::<T>::new(b, rule);
        for t in 1..=3u64 {
            let present = |i: usize| match t {
                1 => !r.contains(&i),
                2 => i != 0 && i != 7,
                _ => true,
            };
            run.call(t, &present, (t > 1).then_some(&enc));
        }
    }
}

#[test]
fn corrected_step_with_skipped_tensors_f32() {
    corrected_skipping::<f32>("corrected_step_with_skipped_tensors_f32");
}

#[test]
fn corrected_step_with_skipped_tensors_bf16() {
    corrected_skipping::<bf16>("corrected_step_with_skipped_tensors_bf16");
}

/// The encoder's data: θ₀ near θ, extra basis vectors.
struct Enc<T> {
    theta0: Vec<Vec<T>>,
    extra: Vec<Vec<Vec<T>>>,
}

fn enc<T: Element>(th: &[Vec<T>], extras: usize) -> Enc<T> {
    let (theta0, extra) = super::encoder(th, FIRST, ENC, extras);
    Enc { theta0, extra }
}

/// The CUDA projection's pass-1 partials of the encoder's drift projection, on the encoder
/// packed flat (bit for bit the tensor list's: the same chunk table, docs/numerics.md).
fn cuda_partials<T: Element>(b: &CudaBackend, th: &[Vec<T>], e: &Enc<T>, g: &[Vec<T>]) -> Partials {
    let segs = Segments::from_lengths(&LENS[FIRST..FIRST + ENC]).unwrap();
    let r = FIRST..FIRST + ENC;
    let flat = |x: &[Vec<T>]| -> CudaSlice<T> { up(b, &x.concat()) };
    let (tv, t0v, mut gv) = (flat(&th[r.clone()]), flat(&e.theta0), flat(&g[r.clone()]));
    let ex: Vec<CudaSlice<T>> = e.extra.iter().map(|x| flat(x)).collect();
    let n = segs.total();
    let p = Projection::drift(
        tv.slice(0..n),
        t0v.slice(0..n),
        ex.iter().map(|x| x.slice(0..n)),
        gv.slice_mut(0..n),
    );
    b.partials(&segs, &p).unwrap()
}

fn corrected<T: Element>(test: &str) {
    let _l = lock();
    let Some(b) = gpu::backend(test) else {
        return;
    };
    let betas = [1.5, 0.0, 1.9, 1.2, 1.7];
    for rule in rules() {
        for (extras, per_tensor) in [(0, false), (2, true)] {
            let what = format!(
                "{} {rule:?} k={} per-tensor β {per_tensor}",
                T::DTYPE,
                extras + 1
            );
            let mut opt = Optimizer::on(b, rule, &LENS).unwrap();
            let mut want = theta::<T>();
            let e = enc(&want, extras);
            let mut dev = ups(b, &want);
            let t0d = ups(b, &e.theta0);
            let exd: Vec<Vec<CudaSlice<T>>> = e.extra.iter().map(|x| ups(b, x)).collect();
            let beta = if per_tensor {
                Beta::PerSegment(&betas)
            } else {
                Beta::Scalar(1.5)
            };
            let mut s0: Vec<Vec<f32>> = LENS.iter().map(|&n| vec![0.0; n]).collect();
            let mut s1 = s0.clone();
            for t in 1..=3u64 {
                let g = grads::<T>(t);
                let parts = cuda_partials(b, &want, &e, &g);
                let r = FIRST..FIRST + ENC;
                let exr: Vec<Vec<&[T]>> = e.extra.iter().map(|x| refs(x)).collect();
                let (gc, ranks) = corrected_grads(
                    &parts,
                    &refs(&want[r.clone()]),
                    &refs(&e.theta0),
                    &refs(&g[r.clone()]),
                    &exr,
                    beta,
                    &ProjectOptions::default(),
                )
                .unwrap();
                let mut gw: Vec<Vec<f64>> = g.iter().map(|x| widen(x)).collect();
                for (s, x) in gc.into_iter().enumerate() {
                    gw[FIRST + s] = x;
                }
                oracle(&rule, t, &mut want, &gw, &mut s0, &mut s1);

                let gd = ups(b, &g);
                let c = Correction::new(FIRST, views(&t0d, &LENS[r.clone()]), beta)
                    .extra(exd.iter().map(|x| views(x, &LENS[r.clone()])).collect());
                let mut pv = views_mut(&mut dev, &LENS);
                let got_ranks = opt
                    .step_corrected(b, &mut pv, &views(&gd, &LENS), &c)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                assert_eq!(got_ranks, ranks, "{what} step {t}: ranks");
                let got = downs(b, &dev, &LENS);
                for i in 0..LENS.len() {
                    same(&got[i], &want[i], &format!("{what} step {t} tensor {i}"));
                }
                check_state(b, &opt, &rule, &s0, &s1, &format!("{what} step {t}"));
            }
        }
    }
}

#[test]
fn corrected_step_matches_the_oracle_f32() {
    corrected::<f32>("corrected_step_matches_the_oracle_f32");
}

#[test]
fn corrected_step_matches_the_oracle_f16() {
    corrected::<f16>("corrected_step_matches_the_oracle_f16");
}

#[test]
fn corrected_step_matches_the_oracle_bf16() {
    corrected::<bf16>("corrected_step_matches_the_oracle_bf16");
}

/// The same steps from the same start twice: the same bits (parameters and state).
#[test]
fn repeated_runs_give_the_same_bits() {
    let _l = lock();
    let Some(b) = gpu::backend("repeated_runs_give_the_same_bits") else {
        return;
    };
    let run = || {
        let rule = Rule::AdamW(AdamW::default());
        let mut opt = Optimizer::on(b, rule, &LENS).unwrap();
        let th = theta::<bf16>();
        let e = enc(&th, 1);
        let mut dev = ups(b, &th);
        let t0d = ups(b, &e.theta0);
        let exd: Vec<Vec<CudaSlice<bf16>>> = e.extra.iter().map(|x| ups(b, x)).collect();
        for t in 1..=3u64 {
            let gd = ups(b, &grads::<bf16>(t));
            let r = FIRST..FIRST + ENC;
            let c = Correction::new(FIRST, views(&t0d, &LENS[r.clone()]), 1.5)
                .extra(exd.iter().map(|x| views(x, &LENS[r.clone()])).collect());
            let mut pv = views_mut(&mut dev, &LENS);
            opt.step_corrected(b, &mut pv, &views(&gd, &LENS), &c)
                .unwrap();
        }
        let states: Vec<_> = (0..LENS.len())
            .map(|i| opt.state(b, i).unwrap().unwrap())
            .collect();
        (
            downs(b, &dev, &LENS)
                .iter()
                .map(|x| bits(x))
                .collect::<Vec<_>>(),
            format!("{states:?}"),
        )
    };
    let first = run();
    for _ in 0..2 {
        assert!(run() == first, "a repeated run changed the bits");
    }
}

/// Bad input: `Err`, with the parameters, the state and the step count unchanged.
#[test]
fn bad_input_writes_nothing() {
    use cudarc::driver::DevicePtr;
    use redreg::cuda::ForeignSlice;
    let _l = lock();
    let Some(b) = gpu::backend("bad_input_writes_nothing") else {
        return;
    };
    let rule = Rule::Sgd(Sgd::script(0.1));
    let mut opt = Optimizer::on(b, rule, &LENS).unwrap();
    let th = theta::<f32>();
    let e = enc(&th, 0);
    let mut dev = ups(b, &th);
    let gd = ups(b, &grads::<f32>(1));
    let t0d = ups(b, &e.theta0);
    // One good step first, so that the state holds something to keep.
    {
        let mut pv = views_mut(&mut dev, &LENS);
        opt.step(b, &mut pv, &views(&gd, &LENS)).unwrap();
    }
    let before = downs(b, &dev, &LENS);
    let state: Vec<_> = (0..LENS.len()).map(|i| opt.state(b, i).unwrap()).collect();
    let unchanged = |opt: &Optimizer<CudaBackend>, dev: &[CudaSlice<f32>], what: &str| {
        assert_eq!(opt.steps(), 1, "{what}: step count");
        let now = downs(b, dev, &LENS);
        for i in 0..LENS.len() {
            same(&now[i], &before[i], &format!("{what}: tensor {i}"));
            assert!(opt.state(b, i).unwrap() == state[i], "{what}: state {i}");
        }
    };
    let r = FIRST..FIRST + ENC;
    let mut errs: Vec<(&str, redreg::Error)> = Vec::new();
    {
        // Lists of another layout.
        let mut pv = views_mut(&mut dev, &LENS);
        let gv = views(&gd, &LENS);
        errs.push(("count", opt.step(b, &mut pv[1..], &gv[1..]).unwrap_err()));
        let short = gd[4].slice(0..LENS[4] - 1);
        let mut gv2 = views(&gd, &LENS);
        gv2[4] = short;
        errs.push(("length", opt.step(b, &mut pv, &gv2).unwrap_err()));
        // Corrections the projection rejects, or that do not fit the list.
        let bad: Vec<(&str, Correction<'_, CudaView<'_, f32>>)> = vec![
            (
                "beta NaN",
                Correction::new(FIRST, views(&t0d, &LENS[r.clone()]), f64::NAN),
            ),
            (
                "out of the list",
                Correction::new(LENS.len() - 2, views(&t0d, &LENS[r.clone()]), 1.0),
            ),
            (
                "theta0 length",
                Correction::new(FIRST + 1, views(&t0d, &LENS[r.clone()]), 1.0),
            ),
            (
                "k > 8",
                Correction::new(FIRST, views(&t0d, &LENS[r.clone()]), 1.0)
                    .extra((0..8).map(|_| views(&t0d, &LENS[r.clone()])).collect()),
            ),
        ];
        for (what, c) in &bad {
            errs.push((what, opt.step_corrected(b, &mut pv, &gv, c).unwrap_err()));
        }
    }
    unchanged(&opt, &dev, "lists and corrections");
    // A parameter that aliases a gradient (two views of one allocation).
    {
        let mem = up(b, &th[3]);
        let addr = mem.device_ptr(b.stream()).0;
        // SAFETY: both views cover `mem` (LENS[3] f32), which outlives them.
        let (mut p_alias, g_alias) = unsafe {
            (
                ForeignSlice::<f32>::new(b, addr, LENS[3]).unwrap(),
                ForeignSlice::<f32>::new(b, addr, LENS[3]).unwrap(),
            )
        };
        let mut pv = views_mut(&mut dev, &LENS);
        pv[3] = p_alias.view_mut();
        let mut gv = views(&gd, &LENS);
        gv[3] = g_alias.view();
        let e = opt.step(b, &mut pv, &gv).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        drop(pv);
        assert_eq!(
            down(b, &mem, LENS[3]),
            th[3],
            "the aliased parameter was written"
        );
    }
    unchanged(&opt, &dev, "aliasing");
    for (what, e) in &errs {
        assert!(!e.to_string().is_empty(), "{what}");
    }
    // A buffer on another device (the emulated driver's EMU_DEVICES=2, or 2 GPUs).
    let devices = cudarc::driver::CudaContext::device_count().unwrap_or(1);
    if devices < 2 {
        gpu::skip(
            "bad_input_writes_nothing (another device)",
            "REDREG_REQUIRE_2_DEVICES",
            &format!("needs 2 devices, found {devices}"),
        );
        return;
    }
    let other = CudaBackend::new(1).unwrap();
    let g_other = ups(&other, &grads::<f32>(1));
    {
        let mut pv = views_mut(&mut dev, &LENS);
        let e = opt.step(b, &mut pv, &views(&g_other, &LENS)).unwrap_err();
        assert!(e.to_string().contains("context"), "{e}");
        // The optimizer's state lives on device 0: a step through device 1's backend is Err.
        let e = opt.step(&other, &mut pv, &views(&gd, &LENS)).unwrap_err();
        assert!(e.to_string().contains("context"), "{e}");
    }
    unchanged(&opt, &dev, "another device");
}

/// Launch counts on the emulated driver: 120 tensors of a ResNet-18 audio-visual pair's
/// layout, plain step = 1 launch, corrected step (the audio encoder) = pass 1 + 1.
#[test]
fn launch_counts_on_the_emulated_driver() {
    let _l = lock();
    let Some(b) = gpu::backend("launch_counts_on_the_emulated_driver") else {
        return;
    };
    let c = match emu::Counters::open() {
        Ok(c) => c,
        Err(reason) => {
            gpu::skip(
                "launch_counts_on_the_emulated_driver",
                "REDREG_REQUIRE_EMU",
                &reason,
            );
            return;
        }
    };
    let (audio, visual) = redreg::testing::layouts::resnet18_av_pair();
    let quick = std::env::var("REDREG_GPU_QUICK").is_ok_and(|v| v == "1");
    // The tensor count is what is measured; quick mode shrinks each tensor (the same
    // count) so that the emulator runs few blocks.
    let lens: Vec<usize> = audio
        .iter()
        .chain(&visual)
        .map(|s| {
            let n: usize = s.iter().product();
            if quick {
                n.min(3000)
            } else {
                n
            }
        })
        .take(120)
        .collect();
    assert_eq!(lens.len(), 120, "the layouts give at least 120 tensors");
    let n_audio = audio.len().min(120);
    let th: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| elements(n, i as u64, 1.0))
        .collect();
    let g: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| elements(n, 500 + i as u64, 0.1))
        .collect();
    let mut dev = ups(b, &th);
    let gd = ups(b, &g);
    let t0d = ups(b, &th[..n_audio]);
    let mut opt = Optimizer::on(b, Rule::AdamW(AdamW::default()), &lens).unwrap();
    let mut pv = views_mut(&mut dev, &lens);
    let gv = views(&gd, &lens);
    // Warm-up: module loading, the pointer table's first upload.
    opt.step(b, &mut pv, &gv).unwrap();
    b.stream().synchronize().unwrap();
    let c0 = c.now();
    opt.step(b, &mut pv, &gv).unwrap();
    b.stream().synchronize().unwrap();
    let plain = c.now() - c0;
    let corr = Correction::new(0, views(&t0d, &lens[..n_audio]), 1.5);
    opt.step_corrected(b, &mut pv, &gv, &corr).unwrap();
    b.stream().synchronize().unwrap();
    let c1 = c.now();
    opt.step_corrected(b, &mut pv, &gv, &corr).unwrap();
    b.stream().synchronize().unwrap();
    let corrected = c.now() - c1;
    eprintln!(
        "optimizer launches, 120 tensors ({n_audio} corrected): plain {plain:?}, corrected {corrected:?}"
    );
    assert_eq!(plain.launches, 1, "plain step: one launch for 120 tensors");
    assert_eq!(
        plain.htod + plain.dtoh,
        0,
        "plain step: no copy with unchanged pointers"
    );
    assert_eq!(
        corrected.launches, 2,
        "corrected step: pass 1 + the optimizer's launch"
    );
    assert_eq!(corrected.dtoh, 0, "corrected step: no device-to-host copy");

    // Per-tensor steps. Every count is 4 now.
    let skip0 = |on: bool| -> Vec<Option<CudaView<'_, f32>>> {
        (views(&gd, &lens).into_iter().enumerate())
            .map(|(i, v)| (!(on && i == 0)).then_some(v))
            .collect()
    };
    // Tensor 0 skipped (the stepped tensors share their count): 1 launch, the pointer
    // table's upload (its skipped set changed); the same again: no copy (a stable skipped
    // set, as a modality that never gets a gradient).
    let first_skip = step_counts(&c, b, &mut opt, &mut pv, skip0(true));
    let again = step_counts(&c, b, &mut opt, &mut pv, skip0(true));
    // Every tensor again (tensor 0's count is now 2 behind: its own bias correction): 1
    // launch, the pointer table (skipped set changed) and the per-tensor step table; then
    // the same step: the step table alone.
    let mixed_first = step_counts(&c, b, &mut opt, &mut pv, skip0(false));
    let mixed = step_counts(&c, b, &mut opt, &mut pv, skip0(false));
    // No gradient at all: nothing launched, nothing copied.
    let none = step_counts(
        &c,
        b,
        &mut opt,
        &mut pv,
        (0..lens.len()).map(|_| None).collect(),
    );
    eprintln!(
        "per-tensor steps: skip {first_skip:?}, again {again:?}, mixed {mixed_first:?}, \
         {mixed:?}, none {none:?}"
    );
    let lh = |x: emu::Counts| (x.launches, x.htod, x.dtoh);
    assert_eq!(
        lh(first_skip),
        (1, 1, 0),
        "skip: 1 launch + the pointer table"
    );
    assert_eq!(
        lh(again),
        (1, 0, 0),
        "the same skipped set: 1 launch, no copy"
    );
    assert_eq!(lh(mixed_first), (1, 2, 0), "pointer table + step table");
    assert_eq!(
        lh(mixed),
        (1, 1, 0),
        "mixed counts: 1 launch + the step table"
    );
    assert_eq!(lh(none), (0, 0, 0), "no gradient: nothing");
    assert_eq!((opt.steps_of(0), opt.steps_of(1)), (Some(6), Some(8)));
    // SGD with momentum: counts that differ but are all past the first step share the
    // constants: no step table.
    let mut sgd = Optimizer::on(b, Rule::Sgd(Sgd::script(0.01)), &lens).unwrap();
    step_counts(&c, b, &mut sgd, &mut pv, skip0(false));
    step_counts(&c, b, &mut sgd, &mut pv, skip0(true));
    step_counts(&c, b, &mut sgd, &mut pv, skip0(true));
    let sgd_mixed = step_counts(&c, b, &mut sgd, &mut pv, skip0(false));
    assert_eq!(lh(sgd_mixed), (1, 1, 0), "SGD: the pointer table alone");
    // A first step beside later ones (the momentum buffer's start): the step table.
    let mut sgd = Optimizer::on(b, Rule::Sgd(Sgd::script(0.01)), &lens).unwrap();
    step_counts(&c, b, &mut sgd, &mut pv, skip0(true));
    let sgd_first = step_counts(&c, b, &mut sgd, &mut pv, skip0(true));
    let sgd_first_mixed = step_counts(&c, b, &mut sgd, &mut pv, skip0(false));
    assert_eq!(lh(sgd_first), (1, 0, 0));
    assert_eq!(
        lh(sgd_first_mixed),
        (1, 2, 0),
        "SGD first step: pointer + step table"
    );
}

/// One `step_some`'s launches and copies (the stream synchronised).
fn step_counts(
    c: &emu::Counters,
    b: &CudaBackend,
    opt: &mut Optimizer<CudaBackend>,
    pv: &mut [CudaViewMut<'_, f32>],
    g: Vec<Option<CudaView<'_, f32>>>,
) -> emu::Counts {
    let c0 = c.now();
    opt.step_some(b, pv, &g).unwrap();
    b.stream().synchronize().unwrap();
    c.now() - c0
}

/// `Controller::step_optimizer` on CUDA: the decision and ranks of the same step on the
/// CPU, θ within f32 rounding (the pass-1 sums run over other chunks: docs/numerics.md);
/// and an encoder whose θ₀ aliases a parameter is refused by the device checks *before*
/// the controller observes: `Err`, with the controller's state, the optimizer and θ
/// unchanged (the contract of `Controller::step`, #22).
#[test]
fn controller_fused_step_on_cuda() {
    use cudarc::driver::DevicePtr;
    use redreg::cuda::ForeignSlice;
    use redreg::CpuBackend;
    let _l = lock();
    let Some(b) = gpu::backend("controller_fused_step_on_cuda") else {
        return;
    };
    let encs = [0..FIRST, FIRST..FIRST + ENC];
    let (inputs, controller) = (super::suppress_visual(), super::controller);
    let rule = Rule::AdamW(AdamW::default());
    let th = theta::<f32>();
    let g = grads::<f32>(1);
    let (theta0, _) = super::encoder::<f32>(&th, 0, LENS.len(), 0);
    // The CPU's step.
    let cpu = CpuBackend::with_threads(2).unwrap();
    let mut ctl_h = controller();
    let mut opt_h = Optimizer::new(rule, &LENS).unwrap();
    let mut p_h = th.clone();
    let t0h: Vec<&[f32]> = theta0.iter().map(|x| &x[..]).collect();
    let corr_h: Vec<Correction<'_, &[f32]>> = (encs.iter())
        .map(|r| Correction::new(r.start, t0h[r.clone()].to_vec(), 0.0))
        .collect();
    let (d_h, r_h) = {
        let mut pv: Vec<&mut [f32]> = p_h.iter_mut().map(|p| &mut p[..]).collect();
        let gv: Vec<&[f32]> = g.iter().map(|x| &x[..]).collect();
        ctl_h
            .step_optimizer(&inputs, &cpu, &mut opt_h, &mut pv, &gv, &corr_h)
            .unwrap()
    };
    // The same on CUDA.
    let mut ctl = controller();
    let mut opt = Optimizer::on(b, rule, &LENS).unwrap();
    let mut dev = ups(b, &th);
    let gd = ups(b, &g);
    let t0d = ups(b, &theta0);
    let (d, r) = {
        let corr: Vec<Correction<'_, CudaView<'_, f32>>> = (encs.iter())
            .map(|r| Correction::new(r.start, views(&t0d[r.clone()], &LENS[r.clone()]), 0.0))
            .collect();
        let mut pv = views_mut(&mut dev, &LENS);
        let (d, r) = ctl
            .step_optimizer(&inputs, b, &mut opt, &mut pv, &views(&gd, &LENS), &corr)
            .unwrap();
        (d, r.map(|r| r.to_vec().unwrap()))
    };
    assert_eq!(d, d_h, "decision");
    assert_eq!(d.suppressed, Some(1));
    assert_eq!(r, r_h, "ranks");
    let now = downs(b, &dev, &LENS);
    for i in 0..LENS.len() {
        redreg::testing::assert_close(&format!("tensor {i}"), &now[i], &p_h[i], 1e-7, 1e-6);
    }
    // Encoder 1's θ₀ of tensor FIRST + 1 aliases parameter FIRST + 1: refused before the
    // controller observes.
    let (state, before) = (ctl.state().clone(), now);
    let addr = dev[FIRST + 1].device_ptr(b.stream()).0;
    // SAFETY: the view covers LENS[FIRST + 1] f32 of `dev[FIRST + 1]`, which outlives it.
    let alias = unsafe { ForeignSlice::<f32>::new(b, addr, LENS[FIRST + 1]).unwrap() };
    {
        let mut corr: Vec<Correction<'_, CudaView<'_, f32>>> = (encs.iter())
            .map(|r| Correction::new(r.start, views(&t0d[r.clone()], &LENS[r.clone()]), 0.0))
            .collect();
        corr[1].theta0[1] = alias.view();
        let mut pv = views_mut(&mut dev, &LENS);
        let e = ctl
            .step_optimizer(&inputs, b, &mut opt, &mut pv, &views(&gd, &LENS), &corr)
            .unwrap_err();
        assert!(
            e.to_string().contains("encoder 1") && e.to_string().contains("overlaps"),
            "{e}"
        );
    }
    assert_eq!(ctl.state(), &state, "controller state changed");
    assert_eq!(opt.steps(), 1);
    let after = downs(b, &dev, &LENS);
    for i in 0..LENS.len() {
        same(
            &after[i],
            &before[i],
            &format!("tensor {i} after the refused step"),
        );
    }
}
