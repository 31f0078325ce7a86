//! Balanced multimodal training with RedReg, on candle (CPU or CUDA), on a synthetic
//! imbalanced two-modality dataset generated in code.
//!
//! ```text
//! cargo run --release --features candle --example balance [-- --epochs 16 --seed 7 --seeds 5 --pipelines script,clean]
//! cargo run --release --features candle-cuda --example balance   # on the GPU when one is present (--cpu: not)
//! ```
//!
//! Data (`data.rs`, 8 classes): modality A is a 16-dim, low-noise code of the class in 92 %
//! of the samples and pure noise in the other 8 % (a strong, fast shortcut); modality B is a
//! 64-dim code of the class with a random sign per sample in unit-variance noise: nothing
//! linear in the raw input reads it, the encoder has to learn it (slow), and it is the only
//! source for the samples where A is noise.
//! Model (`model.rs`): two MLP encoders, a fused linear head and one linear head per
//! modality; loss `L_mm + L_a + L_b` (by default the unimodal heads are linear probes on
//! detached features, so the B-only accuracy measures what B's encoder learned from the
//! joint objective; `--script-loss` lets `L_a + L_b` reach the encoders as in the script);
//! SGD with momentum 0.9 and weight decay 1e-4; the script's modality-dropout schedule
//! (`DropoutSchedule`, ramp `max(1, int(0.3·epochs))`).
//!
//! RedReg per step (`train.rs`): two noisy copies of the undropped input (sigma 0.03) through
//! each encoder; the per-step statistics (`p_m`, redundancy ratios, `pos_sim`) by the crate's
//! fused statistics plan through `redreg::candle::stats` (`DeviceStats`: on the training
//! device, tensors read in place); `Controller::observe`; projection of the suppressed
//! encoder's drift into its gradients (`redreg::candle`, `DeviceBackend`). Where `p_m` and
//! `pos_sim` come from is the **pipeline** (`--pipelines`):
//! - `script`: the authors' script exactly — the main forward pass, whose input has modality
//!   dropout applied (so on a batch where A is zeroed, B "leads" and is suppressed);
//! - `clean`: the trainer-side fix — an undropped forward pass (no gradient) on batches with
//!   a dropped modality;
//! - `skip-dropped`: the script's statistics, no suppression applied on dropped batches.
//!
//! Per seed, with the same data, initialisation, data order and dropout draws: baseline (no
//! RedReg), RedReg with each pipeline, and B alone (only `L_b`: the reference for the
//! imbalance). Prints per-epoch tables (means over the seeds), the final-epoch summary with
//! paired differences, the step's cost, and writes `out/balance.svg` (`plot.rs`).

mod data;
mod model;
mod plot;
mod report;
mod train;

use candle_core::Device;
use data::{make_data, Res};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Instant;
use train::{train, Mode, Pipeline, RunLog};

// ---------------------------------------------------------------- device
/// Where the model trains: the first CUDA GPU when the example is built with feature
/// `candle-cuda`, a GPU is present and `--cpu` is not given; the CPU otherwise.
static DEVICE: OnceLock<Device> = OnceLock::new();

fn dev() -> &'static Device {
    DEVICE.get_or_init(|| Device::Cpu)
}

/// Picks the device (once, before training) and says which and why.
fn choose_device(force_cpu: bool) -> String {
    let (d, why) = if force_cpu {
        (Device::Cpu, "CPU (--cpu)".to_string())
    } else {
        gpu_device()
    };
    let _ = DEVICE.set(d);
    why
}

#[cfg(feature = "candle-cuda")]
fn gpu_device() -> (Device, String) {
    let probe = redreg::cuda::cuda_available()
        .and_then(|()| Device::new_cuda(0).map_err(|e| format!("candle: {e}")));
    match probe {
        Ok(d) => (d, "CUDA device 0 (feature candle-cuda)".into()),
        Err(why) => (Device::Cpu, format!("CPU (no usable GPU: {why})")),
    }
}

#[cfg(not(feature = "candle-cuda"))]
fn gpu_device() -> (Device, String) {
    (
        Device::Cpu,
        "CPU (built without feature candle-cuda)".into(),
    )
}

// ---------------------------------------------------------------- arguments
pub struct Args {
    epochs: usize,
    seed: u64,
    seeds: usize,
    lr: f64,
    k: usize,
    out: String,
    pipelines: Vec<Pipeline>,
    script_loss: bool,
    no_dropout: bool,
    cpu: bool,
}

const USAGE: &str = "balance [--epochs N (16)] [--seed S (7)] [--seeds N (5)] [--lr LR (0.02)] \
    [--k K (1)] [--pipelines LIST (script,clean; also skip-dropped)] [--out PATH (out/balance.svg)] \
    [--script-loss] [--no-dropout] [--cpu]";

fn parse_args() -> Res<Args> {
    let mut a = Args {
        epochs: 16,
        seed: 7,
        seeds: 5,
        lr: 0.02,
        k: 1,
        out: "out/balance.svg".into(),
        pipelines: vec![Pipeline::Script, Pipeline::Clean],
        script_loss: false,
        no_dropout: false,
        cpu: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = val()?.parse()?,
            "--seed" => a.seed = val()?.parse()?,
            "--seeds" => a.seeds = val()?.parse()?,
            "--lr" => a.lr = val()?.parse()?,
            "--k" => a.k = val()?.parse()?,
            "--out" => a.out = val()?,
            "--pipelines" => {
                a.pipelines = val()?
                    .split(',')
                    .map(|s| Pipeline::parse(s).ok_or(format!("unknown pipeline {s:?} ({USAGE})")))
                    .collect::<Result<_, _>>()?
            }
            "--script-loss" => a.script_loss = true,
            "--no-dropout" => a.no_dropout = true,
            "--cpu" => a.cpu = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other} ({USAGE})").into()),
        }
    }
    if a.epochs == 0 || a.seeds == 0 || a.k == 0 || a.k > 8 || !(a.lr > 0.0 && a.lr.is_finite()) {
        return Err("need --epochs >= 1, --seeds >= 1, 0 < --lr < inf and 1 <= --k <= 8".into());
    }
    if a.pipelines.is_empty() {
        return Err("--pipelines needs at least one pipeline".into());
    }
    Ok(a)
}

/// The flags that differ from the defaults, for the reproduce line.
fn repro(a: &Args) -> String {
    let mut s = String::from("cargo run --release --features candle --example balance");
    let mut f = Vec::new();
    if a.epochs != 16 {
        f.push(format!("--epochs {}", a.epochs));
    }
    if a.seed != 7 {
        f.push(format!("--seed {}", a.seed));
    }
    if a.seeds != 5 {
        f.push(format!("--seeds {}", a.seeds));
    }
    if a.lr != 0.02 {
        f.push(format!("--lr {}", a.lr));
    }
    if a.k != 1 {
        f.push(format!("--k {}", a.k));
    }
    if a.pipelines != [Pipeline::Script, Pipeline::Clean] {
        let p: Vec<_> = a.pipelines.iter().map(|p| p.name()).collect();
        f.push(format!("--pipelines {}", p.join(",")));
    }
    for (on, flag) in [
        (a.script_loss, "--script-loss"),
        (a.no_dropout, "--no-dropout"),
        (a.cpu, "--cpu"),
    ] {
        if on {
            f.push(flag.into());
        }
    }
    if !f.is_empty() {
        s += " -- ";
        s += &f.join(" ");
    }
    s
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let device = choose_device(args.cpu);
    report::header(&args, &device);
    let mut modes = vec![Mode::Baseline];
    modes.extend(args.pipelines.iter().map(|&p| Mode::RedReg(p)));
    modes.push(Mode::BAlone);
    // A progress bar on a terminal; off a terminal (a log) one line per finished run.
    let total = (args.seeds * modes.len() * args.epochs) as u64;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(
        "{msg:<28} [{bar:30}] {pos}/{len} epochs, {elapsed}",
    )?);
    let tty = std::io::stderr().is_terminal();
    // runs[mode][seed]
    let mut runs: Vec<Vec<RunLog>> = modes.iter().map(|_| Vec::new()).collect();
    for si in 0..args.seeds {
        let seed = args.seed + si as u64;
        let data = make_data(seed);
        for (mi, &mode) in modes.iter().enumerate() {
            bar.set_message(format!("seed {seed}: {}", mode.label()));
            let t = Instant::now();
            runs[mi].push(train(mode, &args, seed, &data, &bar)?);
            if !tty {
                eprintln!(
                    "seed {seed}: {} done in {:.1} s",
                    mode.label(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    bar.finish_and_clear();
    let named: Vec<(Mode, &[RunLog])> = modes
        .iter()
        .zip(&runs)
        .map(|(m, r)| (*m, r.as_slice()))
        .collect();
    report::per_epoch(&args, &named);
    report::summary(&args, &named);
    report::timing(&named);
    plot::write(&args.out, &named)?;
    println!(
        "plot: {}  (total {:.1} s)\nreproduce: {}",
        args.out,
        start.elapsed().as_secs_f64(),
        repro(&args)
    );
    Ok(())
}
