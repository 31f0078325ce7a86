//! The printed report: header, per-epoch tables, final-epoch summary, the step's cost.

use super::args::{Args, DatasetKind};
use super::data::{Dataset, SYN_P_A};
use super::model::{FEAT, MOMENTUM};
use super::train::{EpochLog, Mode, Pipeline, RunLog, Timing};
use redreg::controller::DropoutSchedule;

pub fn header(a: &Args, ds: &Dataset, device: &str) {
    let [na, nb] = &ds.names;
    let [da, db] = ds.dims();
    let [ha, hb] = ds.hidden;
    let (tr, te) = (ds.train.len(), ds.test.len());
    match a.dataset {
        DatasetKind::Mfeat => println!(
            "balance on mfeat (UCI Multiple Features handwritten digits, data/mfeat/): {tr} train / {te} test \
             images per seed (stratified seeded split), {} classes; A = {na} ({da} features, the strong view), \
             B = {nb} ({db} features, the weak view); features standardised with the training rows' statistics",
            ds.classes
        ),
        DatasetKind::Synthetic => println!(
            "balance on synthetic data: {tr} train / {te} test samples, {} classes; A = {da}-dim low-noise code of \
             the class in {:.0}% of samples (noise otherwise); B = {db}-dim code of the class with a random sign \
             (not linearly separable)",
            ds.classes,
            100.0 * SYN_P_A
        ),
    }
    println!(
        "encoders A {da}→{ha}→{FEAT}, B {db}→{hb}→{FEAT} (ReLU); {} epochs, seeds {}..{}, k = {}, batch {}, SGD lr {} \
         momentum {MOMENTUM}; modality dropout: {}; OGM-GE: {}",
        a.epochs,
        a.seed,
        a.seed + a.seeds as u64 - 1,
        a.k,
        a.batch,
        a.lr,
        if a.no_dropout {
            "off (--no-dropout)"
        } else {
            "the script's (0.6 -> 0.1 over max(1, int(0.3 epochs)) epochs)"
        },
        if a.ogm {
            format!(
                "alpha = {} (the OGM-GE README's value for CREMA-D), modulation in epochs 1..={}",
                a.ogm_alpha,
                a.epochs / 2 + 1
            )
        } else {
            "off (--no-ogm)".into()
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
pub fn epoch_mean(runs: &[RunLog], e: usize, f: impl Fn(&EpochLog) -> f64) -> f64 {
    runs.iter().map(|r| f(&r.epochs[e])).sum::<f64>() / runs.len() as f64
}

/// One column per run, one row per epoch: `f` averaged over the seeds.
fn epoch_table(a: &Args, title: &str, named: &[(Mode, &[RunLog])], f: fn(&EpochLog) -> f64) {
    let n = named[0].1.len();
    println!("\n{title} (mean over {n} seed(s))");
    let heads: Vec<String> = named
        .iter()
        .map(|(m, _)| format!("{:>16}", m.label()))
        .collect();
    println!("epoch | {}", heads.join(" | "));
    for e in 0..a.epochs {
        let cols: Vec<String> = named
            .iter()
            .map(|(_, r)| format!("{:>16.3}", epoch_mean(r, e, f)))
            .collect();
        println!("{:>5} | {}", e + 1, cols.join(" | "));
    }
}

pub fn per_epoch(a: &Args, named: &[(Mode, &[RunLog])]) {
    epoch_table(
        a,
        "B-only test accuracy per epoch (B's unimodal head)",
        named,
        |l| l.acc[1],
    );
    let fused: Vec<(Mode, &[RunLog])> = named
        .iter()
        .filter(|(m, _)| *m != Mode::BAlone)
        .copied()
        .collect();
    epoch_table(
        a,
        "fused training loss L_mm per epoch (mean over the epoch's steps, main forward pass: \
         what is left for B's encoder to learn from)",
        &fused,
        |l| l.loss_mm / l.steps.max(1) as f64,
    );
    let sched = DropoutSchedule::default();
    for (mode, runs) in named {
        if *mode == Mode::OgmGe {
            ogm_per_epoch(a, runs);
        }
        let Mode::RedReg(p) = mode else { continue };
        println!(
            "\nRedReg ({}) per epoch, mean over seeds: steps whose decision suppressed A or B, on batches \
             without + with a dropped modality{}; mean β of those steps; gate-open fraction; the smallest r \
             of the leading modality (over seeds; the monitor blocks only below R = 0.15)",
            p.name(),
            if *p == Pipeline::SkipDropped {
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

/// OGM-GE per epoch: how often each modality was the modulated one, its mean coefficient.
fn ogm_per_epoch(a: &Args, runs: &[RunLog]) {
    println!(
        "\nOGM-GE per epoch, mean over seeds: steps whose coefficient for A or B was below 1 (inside the \
         modulation window; noise is added to both encoders' weights there), mean coefficient over all steps \
         (computed on every step, applied only inside the window)"
    );
    println!("epoch | modulated A | modulated B | mean coeff A | mean coeff B | B acc");
    for e in 0..a.epochs {
        let c = |m: usize| {
            epoch_mean(runs, e, |l| {
                (l.suppressed[m][0] + l.suppressed[m][1]) as f64
            })
        };
        let k = |m: usize| epoch_mean(runs, e, |l| l.coeff_sum[m] / l.steps.max(1) as f64);
        println!(
            "{:>5} | {:>11.1} | {:>11.1} | {:>12.3} | {:>12.3} | {:.3}",
            e + 1,
            c(0),
            c(1),
            k(0),
            k(1),
            epoch_mean(runs, e, |l| l.acc[1])
        );
    }
}

fn finals(runs: &[RunLog], f: impl Fn(&EpochLog) -> f64) -> Vec<f64> {
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
        "run", "fused acc", "A-only", "B-only"
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
    if let Some((_, alone)) = named.iter().find(|(m, _)| *m == Mode::BAlone) {
        let d: Vec<f64> = finals(base, |l| l.acc[1])
            .iter()
            .zip(finals(alone, |l| l.acc[1]))
            .map(|(b, w)| b - w)
            .collect();
        let (m, s) = mean_std(&d);
        println!(
            "\nimbalance, paired by seed: the baseline's B-only accuracy − B trained alone = {m:+.3} ± {s:.3} \
             ({} of {n} seeds below B alone)",
            d.iter().filter(|x| **x < 0.0).count()
        );
    }
    println!("\npaired by seed, method − baseline at the final epoch:");
    for (mode, runs) in named {
        if !matches!(mode, Mode::RedReg(_) | Mode::OgmGe) {
            continue;
        }
        let diff = |f: &dyn Fn(&EpochLog) -> f64| -> Vec<f64> {
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
            "  {:<20} B-only {m:+.3} ± {s:.3} ({} of {n} seeds better), fused {mf:+.3} ± {sf:.3} ({} of {n} better)",
            mode.label(),
            db.iter().filter(|d| **d > 0.0).count(),
            df.iter().filter(|d| **d > 0.0).count(),
        );
    }
}

pub fn timing(named: &[(Mode, &[RunLog])]) {
    println!("\ntime per training step (mean over all steps of all seeds; this run, on the machine and load of the last line):");
    for (mode, runs) in named {
        let sum = |f: &dyn Fn(&Timing) -> f64| runs.iter().map(|r| f(&r.time)).sum::<f64>();
        let steps = sum(&|t| t.steps as f64).max(1.0);
        let per = |f: &dyn Fn(&Timing) -> f64| 1e3 * sum(f) / steps;
        let total = per(&|t| t.total);
        // The optimizer step: redreg's FusedOptimizer (on RedReg's projecting steps with
        // the correction folded in) or, with --candle-sgd and for "B alone", candle ops.
        let opt = per(&|t| t.optimizer);
        let folded = sum(&|t| t.fused as f64);
        let opt_note = if folded > 0.0 {
            format!(
                "; optimizer step {opt:.3} ms (the RedReg correction folded in on {:.0} % of steps)",
                100.0 * folded / steps
            )
        } else {
            format!("; optimizer step {opt:.3} ms")
        };
        if let Mode::RedReg(_) = mode {
            let (fw, st, ct, pr) = (
                per(&|t| t.forwards),
                per(&|t| t.stats),
                per(&|t| t.controller),
                per(&|t| t.projection),
            );
            let np = sum(&|t| t.projected as f64);
            // With the fused optimizer the projection runs inside the optimizer step: its
            // own column is then the projections that did not fold in (none at k = 1).
            let outside = np - folded;
            let proj = if outside > 0.0 {
                format!(
                    "projection {pr:.3} ({:.3} ms on each of the {:.0} % of steps that project)",
                    1e3 * sum(&|t| t.projection) / outside,
                    100.0 * outside / steps
                )
            } else {
                "the projection inside the optimizer step".to_string()
            };
            println!(
                "  {:<22} {total:.3} ms: extra candle forwards for the statistics {fw:.3} ms; the crate's part \
                 {:.3} ms ({:.1} % of the step) = statistics plan {st:.3} + controller {ct:.4} + {proj}{opt_note}",
                mode.label(),
                st + ct + pr,
                100.0 * (st + ct + pr) / total,
            );
        } else if *mode == Mode::OgmGe {
            println!(
                "  {:<22} {total:.3} ms: OGM-GE's scores, coefficients and noisy gradients {:.3} ms{opt_note}",
                mode.label(),
                per(&|t| t.ogm)
            );
        } else {
            println!("  {:<22} {total:.3} ms{opt_note}", mode.label());
        }
    }
}
