//! Criterion benches of the optimizer step on the CPU against a multi-threaded memcpy
//! measured in the same run with the same thread count, on two layouts: `resnet18_av`, the
//! ResNet-18 audio-visual pair (both encoders' 22.35 M f32 parameters in one optimizer, the
//! trainer's case; the audio encoder, tensors first, is the suppressed one), and
//! `resnet18_audio`, the suppressed encoder alone in its own optimizer.
//!
//! Cases (AdamW, PyTorch's defaults), N elements in all, `n_a` in the corrected encoder,
//! 4 bytes each; bytes counted as the minimal traffic of each algorithm:
//! - `adamw_redreg_fused`: `Optimizer::step_corrected` — the projection's pass 1 over
//!   the encoder (θ, θ₀, g: `3·n_a`), then one pass reading θ, g, m, v and writing θ, m, v
//!   (`7·N`) plus θ₀ in the encoder (`n_a`): `4·(4·n_a + 7·N)` bytes.
//! - `project_then_adamw` (unfused): `project_list` of the drift (`7·n_a`: pass 1, then θ,
//!   θ₀, g read and g written), then `Optimizer::step` (`7·N`): `4·(7·n_a + 7·N)`.
//! - `adamw_plain`: `Optimizer::step` alone, `4·7·N`.
//! - `candle_nn_adamw` (feature `candle`): candle-nn's `AdamW::step` on the same parameters
//!   as `Var`s with their gradients in a `GradStore`; counted with `adamw_plain`'s bytes
//!   (the minimum; its composite tensor ops move several times more).
//! - `candle_fused_adamw`, `candle_fused_redreg` (feature `candle`): the same steps through
//!   `redreg::candle::FusedOptimizer` on its own copy of the `Var`s: the plain step and the
//!   RedReg step (θ₀ as tensors), each with the adapter's copy of θ in and out
//!   (an in-place copy-back): `4·11·N` and `4·(4·n_a + 11·N)` bytes.
//! - SGD on the pair: `sgd_plain` (PyTorch's defaults, no momentum: θ, g read, θ written,
//!   `4·3·N`) against `candle_nn_sgd` (the same semantics; counted with the same bytes),
//!   and `sgd_script_redreg_fused` (momentum 0.9, weight decay 1e-4, the correction folded
//!   in: `4·(4·n_a + 5·N)`).
//!
//! Environment: `REDREG_BENCH_THREADS=T` (default: all cores), `REDREG_BENCH_QUICK=1`
//! (short measurement times). Besides criterion's report every case prints
//! `name: min .. ms, median .. ms, GB/s (min), ratio = x` (the ratio to the memcpy
//! bandwidth), then the speed-ups of the fused step (ratios of minimum times); then the
//! same cases interleaved round after round (`redreg::testing::bench::Rounds`: a shared
//! machine's busy periods slow every case alike), with their minima and speed-ups.
//!
//! The bound: at equal bandwidth the fused step's advantage over the unfused one is the
//! byte ratio `(7·n_a + 7·N) / (4·n_a + 7·N)`: 1.17 for the pair (`n_a ≈ N/2`), 1.27 for
//! the encoder alone (`n_a = N`).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use redreg::optim::{AdamW, Correction, Optimizer, Rule, Sgd};
use redreg::testing::{layouts, Rng};
use redreg::{Backend, CpuBackend, Projection, Segments, TensorList};
use std::time::{Duration, Instant};

use redreg::testing::bench::Rounds;
use redreg::testing::{bench_quick as quick, bench_threads as threads};

fn values(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.signed(scale) as f32).collect()
}

/// Runs `f` under criterion, prints the GB/s line and returns the minimum time per call
/// (NaN when a criterion filter left the case out).
fn timed(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    bytes: usize,
    memcpy: f64,
    f: &mut dyn FnMut(),
) -> f64 {
    let mut times = Vec::new();
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let d = t.elapsed();
            times.push(d.as_secs_f64() / iters as f64);
            d
        })
    });
    // Filtered out by a criterion filter: no time.
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_by(f64::total_cmp);
    let (min, med) = (times[0], times[times.len() / 2]);
    let gbs = bytes as f64 / min / 1e9;
    println!(
        "  {name:<22} min {:>9.3} ms  median {:>9.3} ms  {gbs:>7.2} GB/s  ratio = {:.2}",
        min * 1e3,
        med * 1e3,
        gbs / memcpy
    );
    min
}

fn cpu(c: &mut Criterion) {
    let t = threads();
    let be = CpuBackend::with_threads(t).expect("backend");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(t)
        .build()
        .expect("pool");
    let (audio, visual) = layouts::resnet18_av_pair();
    let numel = |s: &Vec<usize>| s.iter().product::<usize>();
    let pair: Vec<usize> = audio.iter().chain(&visual).map(numel).collect();
    let enc: Vec<usize> = audio.iter().map(numel).collect();
    let memcpy = redreg::testing::memcpy_gbs(&pool, 4 * pair.iter().sum::<usize>());
    println!(
        "redreg optimizer benches: {t} threads, chunk {}, memcpy {memcpy:.2} GB/s",
        be.chunk()
    );
    // The whole model in one optimizer (the trainer's case), and the corrected encoder
    // alone in its own optimizer.
    layout(c, &be, memcpy, "resnet18_av", &pair, audio.len());
    layout(c, &be, memcpy, "resnet18_audio", &enc, audio.len());
    sgd(c, &be, memcpy, &pair, audio.len());
}

/// SGD on the pair: the plain step (PyTorch's defaults, candle-nn's semantics) against
/// candle-nn's `SGD`, and the script's SGD (momentum 0.9, weight decay 1e-4) with the
/// RedReg correction folded in.
fn sgd(c: &mut Criterion, be: &CpuBackend, memcpy: f64, lens: &[usize], na: usize) {
    let n_a: usize = lens[..na].iter().sum();
    let n: usize = lens.iter().sum();
    let mut params: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| values(l, 1 + i as u64, 0.05))
        .collect();
    let theta0: Vec<Vec<f32>> = params[..na].to_vec();
    let grads: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| values(l, 2000 + i as u64, 1e-2))
        .collect();
    let th0: Vec<&[f32]> = theta0.iter().map(|x| &x[..]).collect();
    let mut plain = Optimizer::new(Rule::Sgd(Sgd::new(0.01)), lens).expect("sgd");
    let mut script = Optimizer::new(Rule::Sgd(Sgd::script(0.01)), lens).expect("sgd");
    let q = quick();
    let mut g = c.benchmark_group("cpu/optim_sgd/resnet18_av/f32");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(if q { 200 } else { 1000 }));
    g.measurement_time(Duration::from_millis(if q { 1000 } else { 5000 }));
    // Plain SGD reads θ and g and writes θ; with momentum the buffer is read and written.
    let t_plain = timed(&mut g, "sgd_plain", 4 * 3 * n, memcpy, &mut || {
        let gr: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
        let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|x| &mut x[..]).collect();
        plain.step(be, &mut pv, &gr).expect("step");
    });
    let bytes = 4 * (4 * n_a + 5 * n);
    timed(
        &mut g,
        "sgd_script_redreg_fused",
        bytes,
        memcpy,
        &mut || {
            let c = Correction::new(0, th0.clone(), 1.0);
            let gr: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
            let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|x| &mut x[..]).collect();
            script
                .step_corrected(be, &mut pv, &gr, &c)
                .expect("fused step");
        },
    );
    #[cfg(feature = "candle")]
    {
        use candle_core::{backprop::GradStore, Device, Tensor, Var};
        use candle_nn::Optimizer as _;
        let dev = Device::Cpu;
        let vars: Vec<Var> = params
            .iter()
            .map(|p| Var::from_slice(p, p.len(), &dev).expect("var"))
            .collect();
        let mut store = GradStore::default();
        for (v, gr) in vars.iter().zip(&grads) {
            let t = Tensor::from_slice(gr, gr.len(), &dev).expect("grad");
            store.insert(v.as_tensor(), t);
        }
        let mut theirs = candle_nn::SGD::new(vars, 0.01).expect("sgd");
        let t_candle = timed(&mut g, "candle_nn_sgd", 4 * 3 * n, memcpy, &mut || {
            theirs.step(&store).expect("candle step")
        });
        println!("  candle-nn SGD / plain SGD: {:.2}x", t_candle / t_plain);
    }
    #[cfg(not(feature = "candle"))]
    let _ = t_plain;
    g.finish();
}

/// The cases on one layout: `lens` in one optimizer, the first `na` tensors corrected.
fn layout(c: &mut Criterion, be: &CpuBackend, memcpy: f64, name: &str, lens: &[usize], na: usize) {
    let n_a: usize = lens[..na].iter().sum();
    let n: usize = lens.iter().sum();
    println!(
        "{name}: {n} f32 parameters in {} tensors, {n_a} in the corrected encoder",
        lens.len()
    );
    let mut params: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| values(l, 1 + i as u64, 0.05))
        .collect();
    // θ₀: the encoder a small drift ago.
    let theta0: Vec<Vec<f32>> = params[..na]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let d = values(p.len(), 1000 + i as u64, 1e-3);
            p.iter().zip(d).map(|(x, d)| x + d).collect()
        })
        .collect();
    let mut grads: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| values(l, 2000 + i as u64, 1e-2))
        .collect();
    let segs_a = Segments::from_lengths(&lens[..na]).expect("segments");
    let th0: Vec<&[f32]> = theta0.iter().map(|x| &x[..]).collect();
    let mut opt = Optimizer::new(Rule::AdamW(AdamW::default()), lens).expect("optimizer");
    #[cfg(feature = "candle")]
    let mut candle = CandleAdamW::new(&params, &grads, &theta0, be);

    let mut names = vec!["adamw_redreg_fused", "project_then_adamw", "adamw_plain"];
    let mut bytes = vec![4 * (4 * n_a + 7 * n), 4 * (7 * n_a + 7 * n), 4 * 7 * n];
    if cfg!(feature = "candle") {
        names.extend([
            "candle_nn_adamw",
            "candle_fused_adamw",
            "candle_fused_redreg",
        ]);
        // The adapter's own copies of θ in and out (`Var::set`): 4 more passes over θ.
        bytes.extend([4 * 7 * n, 4 * 11 * n, 4 * (4 * n_a + 11 * n)]);
    }
    // One closure for every case, so that the interleaved rounds below can run them in turn.
    let mut run = |case: usize| match case {
        0 => {
            let c = Correction::new(0, th0.clone(), 1.0);
            let gr: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
            let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|x| &mut x[..]).collect();
            opt.step_corrected(be, &mut pv, &gr, &c)
                .expect("fused step");
        }
        1 | 2 => {
            if case == 1 {
                let th: Vec<&[f32]> = params[..na].iter().map(|x| &x[..]).collect();
                let gm: Vec<&mut [f32]> = grads[..na].iter_mut().map(|x| &mut x[..]).collect();
                let p = Projection::drift(
                    TensorList(th),
                    TensorList(th0.clone()),
                    Vec::<TensorList<&[f32]>>::new(),
                    TensorList(gm),
                );
                be.project_list(&segs_a, p).expect("projection");
            }
            let gr: Vec<&[f32]> = grads.iter().map(|x| &x[..]).collect();
            let mut pv: Vec<&mut [f32]> = params.iter_mut().map(|x| &mut x[..]).collect();
            opt.step(be, &mut pv, &gr).expect("step");
        }
        _ => {
            #[cfg(feature = "candle")]
            candle.step(case - 3, na);
        }
    };

    let q = quick();
    let mut g = c.benchmark_group(format!("cpu/optim/{name}/f32"));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(if q { 200 } else { 1000 }));
    g.measurement_time(Duration::from_millis(if q { 1000 } else { 5000 }));
    let mins: Vec<f64> = (0..names.len())
        .map(|i| timed(&mut g, names[i], bytes[i], memcpy, &mut || run(i)))
        .collect();
    g.finish();
    if mins.iter().any(|t| t.is_nan()) {
        return; // a criterion filter chose some cases: no comparison
    }
    speedups("criterion minima", &mins);

    // The machine may be shared: the same cases interleaved, round after round, so that a
    // busy period slows all of them alike; the minimum of each over the rounds.
    let rounds = if q { 3 } else { 10 };
    let r = Rounds::run(rounds, names.len(), &mut run);
    let best: Vec<f64> = (0..names.len()).map(|i| r.min(i)).collect();
    for i in 0..names.len() {
        let gbs = bytes[i] as f64 / best[i] / 1e9;
        println!(
            "  interleaved {:<22} min {:>9.3} ms  {gbs:>7.2} GB/s  ratio = {:.2}",
            names[i],
            best[i] * 1e3,
            gbs / memcpy
        );
    }
    speedups(&format!("interleaved minima of {rounds} rounds"), &best);
}

/// The fused step's speed-ups from the minimum times (fused, unfused, plain[, candle]).
fn speedups(what: &str, t: &[f64]) {
    print!(
        "  {what}: fused vs unfused {:.2}x ({:.0} % less time), fused vs plain {:.2}x",
        t[1] / t[0],
        100.0 * (1.0 - t[0] / t[1]),
        t[2] / t[0]
    );
    if let Some(c) = t.get(3) {
        print!(
            "; candle-nn AdamW alone / fused: {:.2}x, / plain: {:.2}x",
            c / t[0],
            c / t[2]
        );
    }
    if let (Some(c), Some(p), Some(r)) = (t.get(3), t.get(4), t.get(5)) {
        print!(
            "; through candle (FusedOptimizer): candle-nn AdamW / plain step {:.2}x, \
             / RedReg step {:.2}x",
            c / p,
            c / r
        );
    }
    println!();
}

/// candle-nn's `AdamW` and the crate's `FusedOptimizer` (plain and RedReg steps) over the
/// same parameters (each its own copy, as `Var`s) with the same gradients in a `GradStore`.
#[cfg(feature = "candle")]
struct CandleAdamW {
    adam: candle_nn::AdamW,
    fused: redreg::candle::FusedOptimizer,
    theta0: Vec<candle_core::Tensor>,
    store: candle_core::backprop::GradStore,
}

#[cfg(feature = "candle")]
impl CandleAdamW {
    fn new(params: &[Vec<f32>], grads: &[Vec<f32>], theta0: &[Vec<f32>], be: &CpuBackend) -> Self {
        use candle_core::{backprop::GradStore, Device, Tensor, Var};
        use candle_nn::{Optimizer as _, ParamsAdamW};
        let dev = Device::Cpu;
        let vars = || -> Vec<Var> {
            params
                .iter()
                .map(|p| Var::from_slice(p, p.len(), &dev).expect("var"))
                .collect()
        };
        let (ours, theirs) = (vars(), vars());
        let mut store = GradStore::default();
        for ((a, b), gr) in ours.iter().zip(&theirs).zip(grads) {
            let t = Tensor::from_slice(gr, gr.len(), &dev).expect("grad");
            store.insert(a.as_tensor(), t.clone());
            store.insert(b.as_tensor(), t);
        }
        let theta0 = theta0
            .iter()
            .map(|x| Tensor::from_slice(x, x.len(), &dev).expect("theta0"))
            .collect();
        let adam = candle_nn::AdamW::new(theirs, ParamsAdamW::default()).expect("adamw");
        let rule = ParamsAdamW::default().into();
        let fused = redreg::candle::FusedOptimizer::with_backend(ours, rule, be.clone())
            .expect("fused optimizer");
        CandleAdamW {
            adam,
            fused,
            theta0,
            store,
        }
    }

    /// 0: candle-nn's step, 1: the plain fused step, 2: the RedReg step (the first `na`
    /// tensors corrected).
    fn step(&mut self, which: usize, na: usize) {
        use candle_nn::Optimizer as _;
        match which {
            0 => self.adam.step(&self.store).expect("candle step"),
            1 => self.fused.step(&self.store).expect("fused step"),
            _ => {
                let th0 = &self.theta0[..na];
                self.fused
                    .step_redreg(&self.store, 0, th0, 1.0)
                    .expect("redreg step");
            }
        }
    }
}

criterion_group!(benches, cpu);
criterion_main!(benches);
