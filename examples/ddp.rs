//! Data-parallel RedReg over MPI: every rank trains a replica of a small two-modality model
//! on its own (uneven) slice of every batch; one all-reduce per step sums the gradients
//! **and** the statistics' sums and counts, so every rank's controller sees the statistics
//! of the whole batch and decides the same thing; the replicas stay bit-identical.
//!
//! ```text
//! cargo build --release --no-default-features --features mpi --example ddp
//! mpirun --allow-run-as-root --oversubscribe -n 3 target/release/examples/ddp [--epochs 4]
//! ```
//!
//! A pure-Rust toy of `examples/balance.rs` (no candle, hand-written gradients): 4 classes;
//! modality A a strong 12-dim code of the label (in 90 % of the samples), modality B a weak
//! 24-dim code; encoders `z = tanh(W x + b)` (8 features each); a fused linear head on
//! `z_a + z_b` (sum fusion, which aligns the two feature spaces so the agreement gate can
//! open) and one linear probe per modality on the detached features; loss
//! `L_mm + L_a + L_b`; SGD with momentum 0.9, weight decay 1e-4. RedReg per step: true-label
//! probabilities of the probes, redundancy from two noisy copies (sigma 0.03), cosine
//! agreement of `z_a`, `z_b` → `RedRegStats::from_reduced` → `Controller::step` (drift of
//! the dominant encoder projected into its gradient) → SGD.

use redreg::controller::{
    Config, Controller, HostEncoder, JointBasis, ModalityShapes, RedRegStats,
};
use redreg::dist::{agree, AllReduce, MpiComm};
use redreg::stats::{CpuStats, ReducibleStats, StatHandle, Stats, StatsPlan};
use redreg::testing::Rng;
use redreg::{Backend, CpuBackend, DType, Segments};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const C: usize = 4;
const F: usize = 8;
const DIMS: [usize; 2] = [12, 24];
const N: usize = 1024;
const BATCH: usize = 64;
const LR: f32 = 0.05;

/// The dataset (the same on every rank: generated from the seed).
struct Data {
    x: [Vec<f32>; 2],
    y: Vec<i64>,
}

fn make_data(rng: &mut Rng, codes: &[Vec<f32>; 2], n: usize) -> Data {
    let y: Vec<i64> = (0..n).map(|_| rng.below(C) as i64).collect();
    let x = std::array::from_fn(|m| {
        let mut x = Vec::with_capacity(n * DIMS[m]);
        for &yi in &y {
            let amp = match m {
                0 if rng.unit() < 0.9 => 1.5,
                0 => 0.0,
                _ => 0.5,
            };
            for d in 0..DIMS[m] {
                x.push(amp * codes[m][yi as usize * DIMS[m] + d] + rng.normal() as f32);
            }
        }
        x
    });
    Data { x, y }
}

/// `out[i] = W in[i] + b` for `rows` rows; `w` is `out_dim x in_dim` then `out_dim` biases.
fn linear(w: &[f32], input: &[f32], in_dim: usize, out_dim: usize) -> Vec<f32> {
    let rows = input.len() / in_dim;
    let mut out = vec![0f32; rows * out_dim];
    for i in 0..rows {
        for o in 0..out_dim {
            let row = &w[o * in_dim..(o + 1) * in_dim];
            let dot: f32 = row
                .iter()
                .zip(&input[i * in_dim..])
                .map(|(a, b)| a * b)
                .sum();
            out[i * out_dim + o] = dot + w[out_dim * in_dim + o];
        }
    }
    out
}

/// Backward of [`linear`]: accumulates `dW`, `db` into `grad`, returns `d input`.
fn linear_back(
    w: &[f32],
    input: &[f32],
    dout: &[f32],
    in_dim: usize,
    grad: &mut [f32],
) -> Vec<f32> {
    let out_dim = dout.len() / (input.len() / in_dim).max(1);
    let rows = input.len() / in_dim;
    let mut din = vec![0f32; input.len()];
    for i in 0..rows {
        for o in 0..out_dim {
            let g = dout[i * out_dim + o];
            grad[out_dim * in_dim + o] += g;
            for d in 0..in_dim {
                grad[o * in_dim + d] += g * input[i * in_dim + d];
                din[i * in_dim + d] += g * w[o * in_dim + d];
            }
        }
    }
    din
}

fn encode(w: &[f32], x: &[f32], dim: usize) -> Vec<f32> {
    linear(w, x, dim, F).into_iter().map(f32::tanh).collect()
}

/// Softmax cross-entropy: `(d logits · scale, Σ loss)`.
fn ce(logits: &[f32], y: &[i64], scale: f32) -> (Vec<f32>, f64) {
    let mut d = vec![0f32; logits.len()];
    let mut loss = 0.0;
    for (i, &yi) in y.iter().enumerate() {
        let l = &logits[i * C..(i + 1) * C];
        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = l.iter().map(|v| (v - m).exp()).sum();
        for c in 0..C {
            let p = (l[c] - m).exp() / s;
            d[i * C + c] = (p - f32::from(c as i64 == yi)) * scale;
        }
        loss += f64::from(s.ln() + m - l[yi as usize]);
    }
    (d, loss)
}

/// Rank `rank`'s rows of a batch of `b`: uneven (weights 1, 2, 3, …).
fn my_rows(b: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let all: usize = (1..=size).sum();
    let before: usize = (1..=rank).sum();
    b * before / all..b * (before + rank + 1) / all
}

fn hash(xs: &[f32]) -> u64 {
    xs.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn main() -> Res<()> {
    let universe = mpi::initialize().ok_or("MPI was already initialised")?;
    let world = universe.world();
    let comm = MpiComm::new(&world);
    let (rank, size) = (comm.rank(), comm.size());
    let mut epochs = 4;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--epochs") {
        epochs = args.get(i + 1).ok_or("--epochs N")?.parse()?;
    }

    // Same data and initialisation on every rank.
    let mut rng = Rng::new(7);
    let codes: [Vec<f32>; 2] =
        std::array::from_fn(|m| (0..C * DIMS[m]).map(|_| rng.normal() as f32).collect());
    let data = make_data(&mut rng, &codes, N);
    let test = make_data(&mut rng, &codes, 512);
    let enc_segs: Vec<Segments> = DIMS
        .iter()
        .map(|&d| Segments::from_lengths(&[F * d, F]))
        .collect::<redreg::Result<_>>()?;
    let mut enc: Vec<Vec<f32>> = DIMS
        .iter()
        .map(|&d| {
            (0..F * d + F)
                .map(|_| rng.normal() as f32 / (d as f32).sqrt())
                .collect()
        })
        .collect();
    // Heads: fused (C x F, on z_a + z_b), probe A (C x F), probe B (C x F), with C biases.
    let head_len = [C * F + C; 3];
    let mut heads: Vec<Vec<f32>> = head_len
        .iter()
        .map(|&n| (0..n).map(|_| rng.normal() as f32 * 0.1).collect())
        .collect();

    let rows = my_rows(BATCH, rank, size);
    let nl = rows.len();
    let shapes: Vec<ModalityShapes> = DIMS
        .iter()
        .map(|&d| ModalityShapes {
            dtype: DType::F32,
            batch: nl,
            classes: C,
            features: nl * F,
            inputs: nl * d,
            pooled: F,
        })
        .collect();
    let mut plan = StatsPlan::new();
    let h = RedRegStats::declare(&mut plan, &shapes)?;
    let mut exec = CpuStats::new(&plan)?;
    let mut sums = ReducibleStats::new(&plan);
    let mut ctl = Controller::new(Config::new(epochs), 2)?;
    let backend = CpuBackend::new();
    let mut theta0: Vec<Vec<f32>> = enc.iter().map(|e| vec![0f32; e.len()]).collect();
    let n_params: usize = enc.iter().chain(&heads).map(Vec::len).sum();
    let mut mom = vec![0f32; n_params];
    let mut noise = Rng::new(1000 + rank as u64);
    let mut log_hash = 0u64;

    for epoch in 0..epochs {
        ctl.begin_epoch(epoch)?;
        for m in 0..2 {
            backend.copy(&enc[m], &mut theta0[m])?; // the epoch-start snapshot
        }
        let (mut seq, mut loss, mut max_beta) = (String::new(), 0.0, 0.0f64);
        let (mut dominant, mut pos_sim) = (0usize, 0.0);
        for step in 0..N / BATCH {
            let idx: Vec<usize> = rows.clone().map(|i| step * BATCH + i).collect();
            let x: [Vec<f32>; 2] = std::array::from_fn(|m| {
                idx.iter()
                    .flat_map(|&i| data.x[m][i * DIMS[m]..(i + 1) * DIMS[m]].to_vec())
                    .collect()
            });
            let y: Vec<i64> = idx.iter().map(|&i| data.y[i]).collect();

            // Forward and backward on this rank's rows; gradients of the batch mean.
            let z: [Vec<f32>; 2] = std::array::from_fn(|m| encode(&enc[m], &x[m], DIMS[m]));
            let zsum: Vec<f32> = z[0].iter().zip(&z[1]).map(|(a, b)| a + b).collect();
            let scale = 1.0 / BATCH as f32;
            let lmm = linear(&heads[0], &zsum, F, C);
            let lm: [Vec<f32>; 2] = std::array::from_fn(|m| linear(&heads[1 + m], &z[m], F, C));
            let mut g_enc: Vec<Vec<f32>> = enc.iter().map(|e| vec![0f32; e.len()]).collect();
            let mut g_head: Vec<Vec<f32>> = heads.iter().map(|e| vec![0f32; e.len()]).collect();
            let (d, l0) = ce(&lmm, &y, scale);
            let dz = linear_back(&heads[0], &zsum, &d, F, &mut g_head[0]);
            let mut step_loss = l0;
            for m in 0..2 {
                let (d, l) = ce(&lm[m], &y, scale);
                step_loss += l;
                linear_back(&heads[1 + m], &z[m], &d, F, &mut g_head[1 + m]); // detached
                let dpre: Vec<f32> = (0..nl * F)
                    .map(|j| dz[j] * (1.0 - z[m][j] * z[m][j]))
                    .collect();
                linear_back(&enc[m], &x[m], &dpre, DIMS[m], &mut g_enc[m]);
            }

            // RedReg statistics on this rank's rows: two noisy copies per modality.
            let noisy = |x: &[f32], r: &mut Rng| -> Vec<f32> {
                x.iter().map(|v| v + 0.03 * r.normal() as f32).collect()
            };
            let x1: [Vec<f32>; 2] = std::array::from_fn(|m| noisy(&x[m], &mut noise));
            let x2: [Vec<f32>; 2] = std::array::from_fn(|m| noisy(&x[m], &mut noise));
            let z1: [Vec<f32>; 2] = std::array::from_fn(|m| encode(&enc[m], &x1[m], DIMS[m]));
            let z2: [Vec<f32>; 2] = std::array::from_fn(|m| encode(&enc[m], &x2[m], DIMS[m]));
            let run = exec.run(&mut [
                h.score[0].bind((&lm[0], &y)),
                h.score[1].bind((&lm[1], &y)),
                h.feature_diff[0].bind((&z1[0], &z2[0])),
                h.feature_diff[1].bind((&z1[1], &z2[1])),
                h.input_diff[0].bind((&x1[0], &x2[0])),
                h.input_diff[1].bind((&x1[1], &x2[1])),
                h.agreement[0].bind((&z[0], &z[1])),
            ]);
            if let Err(e) = run {
                // Label faults still go through the all-reduce (every rank must call it);
                // anything else is a bug in this example.
                if !matches!(e, redreg::Error::LabelOutOfRange { .. }) {
                    return Err(e.into());
                }
            }
            sums.fill(exec.results())?;

            // One all-reduce per step: statistics' sums and counts, loss, gradients.
            let mut buf: Vec<f64> = sums.as_slice().to_vec();
            buf.push(step_loss);
            buf.extend(g_enc.iter().chain(&g_head).flatten().map(|&g| f64::from(g)));
            comm.all_reduce_sum_checked(&mut buf)?;
            let ns = sums.len();
            sums.as_mut_slice().copy_from_slice(&buf[..ns]);
            loss += buf[ns] / BATCH as f64 / 3.0;
            let mut it = buf[ns + 1..].iter();
            for g in g_enc.iter_mut().chain(g_head.iter_mut()).flatten() {
                *g = *it.next().ok_or("short buffer")? as f32;
            }

            // The same inputs on every rank -> the same decision -> the same update.
            let inputs = h.from_reduced(&sums)?;
            let (ga, gb) = g_enc.split_at_mut(1);
            let mut encoders = [
                HostEncoder {
                    segs: &enc_segs[0],
                    theta: &enc[0],
                    theta0: &theta0[0],
                    grad: &mut ga[0],
                    basis: JointBasis::Gradient,
                },
                HostEncoder {
                    segs: &enc_segs[1],
                    theta: &enc[1],
                    theta0: &theta0[1],
                    grad: &mut gb[0],
                    basis: JointBasis::Gradient,
                },
            ];
            let (d, _) = ctl.step(&inputs, &backend, &mut encoders)?;
            seq.push(d.suppressed.map_or('-', |m| ['A', 'B'][m]));
            max_beta = max_beta.max(d.beta);
            dominant += usize::from(d.dominant.is_some());
            pos_sim += d.pos_sim / (N / BATCH) as f64;
            log_hash = log_hash.rotate_left(5) ^ d.beta.to_bits() ^ d.gate.to_bits();

            // SGD with momentum and weight decay, on every parameter.
            let params = enc.iter_mut().chain(heads.iter_mut()).flatten();
            let grads = g_enc.iter().chain(&g_head).flatten();
            for ((p, g), v) in params.zip(grads).zip(mom.iter_mut()) {
                *v = 0.9 * *v + g + 1e-4 * *p;
                *p -= LR * *v;
            }
        }
        let params: Vec<f32> = enc.iter().chain(&heads).flatten().copied().collect();
        println!(
            "rank {rank}/{size} epoch {epoch}: loss {:.4}, dominant {dominant}/{}, mean pos_sim {pos_sim:.3}, suppressed per step {seq}, max beta {max_beta:.6}, params {:016x}",
            loss / (N / BATCH) as f64,
            N / BATCH,
            hash(&params)
        );
    }

    // Test accuracy of the fused head and the two probes (every rank: identical replicas).
    let z: [Vec<f32>; 2] = std::array::from_fn(|m| encode(&enc[m], &test.x[m], DIMS[m]));
    let n = test.y.len();
    let zsum: Vec<f32> = z[0].iter().zip(&z[1]).map(|(a, b)| a + b).collect();
    let acc = |logits: &[f32]| {
        let hits = (0..n)
            .filter(|&i| {
                let l = &logits[i * C..(i + 1) * C];
                let best = (0..C).fold(0, |b, c| if l[c] > l[b] { c } else { b });
                best as i64 == test.y[i]
            })
            .count();
        hits as f64 / n as f64
    };
    let params: Vec<f32> = enc.iter().chain(&heads).flatten().copied().collect();
    let same = agree(&comm, &[hash(&params), log_hash])?;
    println!(
        "rank {rank}/{size}: test accuracy fused {:.3}, A only {:.3}, B only {:.3}; all ranks identical decisions and parameters: {same}",
        acc(&linear(&heads[0], &zsum, F, C)),
        acc(&linear(&heads[1], &z[0], F, C)),
        acc(&linear(&heads[2], &z[1], F, C)),
    );
    if !same {
        return Err("ranks diverged".into());
    }
    Ok(())
}
