//! The printed report: header, per-epoch tables, final-epoch summary, the step's cost.

use super::data::{CLASSES, DIM_A, DIM_B, N_TEST, N_TRAIN, P_A};
use super::model::MOMENTUM;
use super::train::{Mode, RunLog, BATCH};
use super::Args;
use redreg::controller::DropoutSchedule;

pub fn header(a: &Args, device: &str) {
    println!(
        "balance: {N_TRAIN} train / {N_TEST} test samples, {CLASSES} classes; A = {DIM_A}-dim low-noise code of \
         the class in {:.0}% of samples (noise otherwise); B = {DIM_B}-dim code of the class with a random sign \
         (not linearly separable); {} epochs, seeds {}..{}, k = {}, batch {BATCH}, SGD lr {} momentum {MOMENTUM}",
        100.0 * P_A,
        a.epochs,
        a.seed,
        a.seed + a.seeds as u64 - 1,
        a.k,
        a.lr
    );
    println!(
        "unimodal heads: {}; modality dropout: {}",
        if a.script_loss {
            "trained on the encoders' features, L_a + L_b reach the encoders (the script's loss)"
        } else {
            "linear probes on detached features (the encoders learn from L_mm)"
        },
        if a.no_dropout {
            "off (--no-dropout)"
        } else {
            "the script's (0.6 -> 0.1 over max(1, int(0.3 epochs)) epochs)"
        }
    );
    println!("device: {device}");
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn ms(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    format!("{m:.3} ± {s:.3}")
}

/// Mean over the seeds of `f(epoch log)` at epoch `e`.
pub fn epoch_mean(runs: &[RunLog], e: usize, f: impl Fn(&super::train::EpochLog) -> f64) -> f64 {
    runs.iter().map(|r| f(&r.epochs[e])).sum::<f64>() / runs.len() as f64
}

pub fn per_epoch(a: &Args, named: &[(Mode, &[RunLog])]) {
    let n = named[0].1.len();
    println!("\nB-probe test accuracy per epoch (mean over {n} seed(s))");
    let heads: Vec<String> = named
        .iter()
        .map(|(m, _)| format!("{:>20}", m.label()))
        .collect();
    println!("epoch | {}", heads.join(" | "));
    for e in 0..a.epochs {
        let cols: Vec<String> = named
            .iter()
            .map(|(_, r)| format!("{:>20.3}", epoch_mean(r, e, |l| l.acc[1])))
            .collect();
        println!("{:>5} | {}", e + 1, cols.join(" | "));
    }
    let sched = DropoutSchedule::default();
    for (mode, runs) in named {
        let Mode::RedReg(p) = mode else { continue };
        println!(
            "\nRedReg ({}) per epoch, mean over seeds: steps whose decision suppressed A or B, on batches \
             without + with a dropped modality{}; mean β of those steps; gate-open fraction; the smallest r \
             of the leading modality (over seeds; the monitor blocks only below R = 0.15)",
            p.name(),
            if *p == super::train::Pipeline::SkipDropped {
                " (skip-dropped: those on dropped batches are not applied)"
            } else {
                ""
            }
        );
        println!(
            "epoch | p_drop | suppressed A  | suppressed B  | mean β | gate open | min r | B acc"
        );
        for e in 0..a.epochs {
            let pd = if a.no_dropout {
                0.0
            } else {
                sched.probability(e, a.epochs).unwrap_or(f64::NAN)
            };
            let c = |m: usize, k: usize| epoch_mean(runs, e, |l| l.suppressed[m][k] as f64);
            let nsup: f64 = runs.iter().map(|r| r.epochs[e].n_suppressed() as f64).sum();
            let beta = runs.iter().map(|r| r.epochs[e].beta_sum).sum::<f64>() / nsup.max(1.0);
            let gate = epoch_mean(runs, e, |l| l.gate_open as f64 / l.steps as f64);
            let min_r = runs
                .iter()
                .map(|r| r.epochs[e].min_r)
                .fold(f64::INFINITY, f64::min);
            println!(
                "{:>5} | {pd:>6.3} | {:>5.1} + {:>5.1} | {:>5.1} + {:>5.1} | {:>6.3} | {:>8.0}% | {min_r:>5.2} | {:.3}",
                e + 1,
                c(0, 0),
                c(0, 1),
                c(1, 0),
                c(1, 1),
                if nsup > 0.0 { beta } else { 0.0 },
                100.0 * gate,
                epoch_mean(runs, e, |l| l.acc[1])
            );
        }
    }
}

fn finals(runs: &[RunLog], f: impl Fn(&super::train::EpochLog) -> f64) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r.epochs.last().map(&f))
        .collect()
}

pub fn summary(a: &Args, named: &[(Mode, &[RunLog])]) {
    let n = named[0].1.len();
    println!(
        "\nfinal epoch, mean ± sample std over {n} seed(s) ({}..{}):",
        a.seed,
        a.seed + n as u64 - 1
    );
    println!(
        "{:<22} | {:>13} | {:>13} | {:>13}",
        "run", "fused acc", "A-only", "B-only (probe)"
    );
    for (mode, runs) in named {
        let (fu, aa) = if *mode == Mode::BAlone {
            ("–".to_string(), "–".to_string())
        } else {
            (
                ms(&finals(runs, |l| l.fused)),
                ms(&finals(runs, |l| l.acc[0])),
            )
        };
        println!(
            "{:<22} | {fu:>13} | {aa:>13} | {:>13}",
            mode.label(),
            ms(&finals(runs, |l| l.acc[1]))
        );
    }
    let base = named[0].1;
    println!("\npaired by seed, RedReg − baseline at the final epoch:");
    for (mode, runs) in named {
        let Mode::RedReg(_) = mode else { continue };
        let diff = |f: &dyn Fn(&super::train::EpochLog) -> f64| -> Vec<f64> {
            finals(runs, f)
                .iter()
                .zip(finals(base, f))
                .map(|(r, b)| r - b)
                .collect()
        };
        let db = diff(&|l| l.acc[1]);
        let df = diff(&|l| l.fused);
        let (m, s) = mean_std(&db);
        let (mf, sf) = mean_std(&df);
        println!(
            "  {:<20} B-probe {m:+.3} ± {s:.3} ({} of {n} seeds better), fused {mf:+.3} ± {sf:.3} ({} of {n} better)",
            mode.label(),
            db.iter().filter(|d| **d > 0.0).count(),
            df.iter().filter(|d| **d > 0.0).count(),
        );
    }
}

pub fn timing(named: &[(Mode, &[RunLog])]) {
    println!("\ntime per training step (mean over all steps of all seeds):");
    for (mode, runs) in named {
        let sum =
            |f: &dyn Fn(&super::train::Timing) -> f64| runs.iter().map(|r| f(&r.time)).sum::<f64>();
        let steps = sum(&|t| t.steps as f64).max(1.0);
        let per = |f: &dyn Fn(&super::train::Timing) -> f64| 1e3 * sum(f) / steps;
        let total = per(&|t| t.total);
        if let Mode::RedReg(_) = mode {
            let (fw, st, ct, pr) = (
                per(&|t| t.forwards),
                per(&|t| t.stats),
                per(&|t| t.controller),
                per(&|t| t.projection),
            );
            let np = sum(&|t| t.projected as f64);
            let projected = np.max(1.0);
            println!(
                "  {:<22} {total:.3} ms: extra candle forwards for the statistics {fw:.3} ms; the crate's part \
                 {:.3} ms ({:.1} % of the step) = statistics plan {st:.3} + controller {ct:.4} + projection {pr:.3} \
                 ({:.3} ms on each of the {:.0} % of steps that project)",
                mode.label(),
                st + ct + pr,
                100.0 * (st + ct + pr) / total,
                1e3 * sum(&|t| t.projection) / projected,
                100.0 * np / steps
            );
        } else {
            println!("  {:<22} {total:.3} ms", mode.label());
        }
    }
}
