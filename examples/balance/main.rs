//! Balanced multimodal training with RedReg, on candle (CPU or CUDA): on real data by
//! default — the UCI Multiple Features handwritten digits, a strong and a weak view of the
//! same images (`data/mfeat/`, vendored) — and on a synthetic controlled case.
//!
//! ```text
//! cargo run --release --features candle --example balance                           # mfeat, views pix (strong) + zer (weak)
//! cargo run --release --features candle --example balance -- --screen               # mfeat: every candidate pair's baseline
//! cargo run --release --features candle --example balance -- --dataset synthetic    # the controlled case
//! cargo run --release --features candle-cuda --example balance   # on the GPU when one is present (--cpu: not)
//! ```
//!
//! Data (`data.rs`): **mfeat** (`mfeat.rs` reads the CSVs): 2,000 digits, 10 classes, six
//! views; a stratified seeded 70/30 split per seed, features standardised with the training
//! rows' statistics; modality A is the strong view, B the weak one (`--views`). First, every
//! view is trained alone (`screen.rs`) and every candidate strong/weak pair's single-view
//! accuracies are printed; `--screen` also trains the fused baseline on every candidate pair
//! and reports how far its weak-view probe falls below the weak view alone (the measurement
//! behind the default pair). **synthetic**: 8 classes; A a 16-dim, low-noise code of the
//! class in 92 % of the samples and noise in the other 8 % (a fast shortcut); B a 64-dim code
//! of the class with a random sign per sample in unit-variance noise (no linear read-out of
//! the raw input; the only source where A is noise).
//!
//! Model (`model.rs`): two MLP encoders, a fused linear head on the concatenation and one
//! linear head per modality; loss `L_mm + L_a + L_b` in one of two forms (`--loss`): the
//! script's (`L_a + L_b` reach the encoders) or the probe form (the unimodal heads are linear
//! probes on detached features, so B-only accuracy measures what B's encoder learned from
//! the joint objective); SGD with momentum 0.9 and weight decay 1e-4; the script's
//! modality-dropout schedule (`DropoutSchedule`, ramp `max(1, int(0.3·epochs))`).
//!
//! RedReg per step (`train.rs`, the only file that calls the crate): two noisy copies of the
//! undropped input (sigma 0.03) through each encoder; the per-step statistics (`p_m`,
//! redundancy ratios, `pos_sim`) by the crate's fused statistics plan through
//! `redreg::candle::stats`; `Controller::observe`; projection of the suppressed encoder's
//! drift into its gradients (`redreg::candle`, `OnDevice<Backends>`). Where `p_m` and `pos_sim`
//! come from is the **pipeline** (`--pipelines`):
//! - `script`: the authors' script exactly — the main forward pass, whose input has modality
//!   dropout applied (so on a batch where A is zeroed, B "leads" and is suppressed);
//! - `clean`: the trainer-side fix — an undropped forward pass (no gradient) on batches with
//!   a dropped modality;
//! - `skip-dropped`: the script's statistics, no suppression applied on dropped batches.
//!
//! The comparator (`ogm.rs`): OGM-GE (Peng et al., CVPR 2022) as in its authors' `main.py`.
//!
//! Per seed and loss, with the same data, initialisation, data order and dropout draws:
//! baseline, RedReg with each pipeline, OGM-GE, and B alone (only `L_b`: the reference for
//! the imbalance). Prints per-epoch tables (means over the seeds), the final-epoch summary
//! with paired differences, the step's cost, and writes the plot (`plot.rs`; one per loss).

mod args;
mod data;
mod mfeat;
mod model;
mod ogm;
mod plot;
mod report;
mod screen;
mod train;

use args::{Args, DatasetKind};
use candle_core::Device;
use data::{mfeat_data, synthetic_data, Dataset, Res};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Instant;
use train::{train, Loss, Mode, RunLog};

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

// ---------------------------------------------------------------- machine
/// The 1-minute load average (Linux `/proc/loadavg`; "?" elsewhere): printed with every
/// timing, so that a reader knows how loaded the machine was.
pub fn machine_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// CPU seconds (user + system, all threads) this process has used: with the wall time and
/// the load average, what the run would take on an idle machine. Linux `/proc/self/stat`
/// (fields 14 and 15, in USER_HZ = 100 ticks per second); "?" elsewhere.
pub fn cpu_seconds() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    match (
        f.get(11).and_then(|u| u.parse::<f64>().ok()),
        f.get(12).and_then(|s| s.parse::<f64>().ok()),
    ) {
        (Some(u), Some(s)) => format!("{:.1}", (u + s) / 100.0),
        _ => "?".into(),
    }
}

/// The closing line: wall and CPU time, the machine and its load, the reproduce command.
fn closing(args: &Args, start: Instant, load_start: &str, device: &str) {
    println!(
        "\ntotal {:.1} s wall, {} s CPU (user + system) on {} CPU(s), load average {load_start} at start, {} at end; \
         device: {device}\nreproduce: {}",
        start.elapsed().as_secs_f64(),
        cpu_seconds(),
        cpus(),
        machine_load(),
        args.repro()
    );
}

// ---------------------------------------------------------------- run
/// The data of every seed.
enum Source {
    Mfeat(Vec<mfeat::View>),
    Synthetic,
}

impl Source {
    fn dataset(&self, args: &Args, seed: u64) -> Res<Dataset> {
        match self {
            Source::Synthetic => Ok(synthetic_data(seed)),
            Source::Mfeat(views) => {
                let get = |name: &str| screen::find(views, name);
                Ok(mfeat_data(
                    [get(&args.views[0])?, get(&args.views[1])?],
                    seed,
                ))
            }
        }
    }
}

/// A progress bar on a terminal; off a terminal (a log) one line per finished run.
pub struct Progress {
    bar: ProgressBar,
    tty: bool,
}

impl Progress {
    fn new(total_epochs: usize) -> Res<Self> {
        let bar =
            ProgressBar::with_draw_target(Some(total_epochs as u64), ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template(
            "{msg:<40} [{bar:30}] {pos}/{len} epochs, {elapsed}",
        )?);
        Ok(Self {
            bar,
            tty: std::io::stderr().is_terminal(),
        })
    }
    /// Runs `f` under the label `what` and reports it when done.
    pub fn run<T>(&self, what: &str, f: impl FnOnce(&ProgressBar) -> Res<T>) -> Res<T> {
        self.bar.set_message(what.to_string());
        let t = Instant::now();
        let out = f(&self.bar)?;
        if !self.tty {
            eprintln!("{what} done in {:.1} s", t.elapsed().as_secs_f64());
        }
        Ok(out)
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Errors are printed with their message (a bad file: its path and line), not as `Debug`.
fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = Args::parse()?;
    let start = Instant::now();
    let load_start = machine_load();
    let device = choose_device(args.cpu);
    let source = match args.dataset {
        DatasetKind::Mfeat => {
            let names: Vec<&str> = mfeat::VIEWS.iter().map(|v| v.0).collect();
            Source::Mfeat(mfeat::load_views(&args.data, &names)?)
        }
        DatasetKind::Synthetic => Source::Synthetic,
    };
    let first = source.dataset(&args, args.seed)?;
    report::header(&args, &first, &device);

    let mut modes = vec![Mode::Baseline];
    modes.extend(args.pipelines.iter().map(|&p| Mode::RedReg(p)));
    if args.ogm {
        modes.push(Mode::OgmGe);
    }
    // On mfeat the screen trains every view alone, the weak one included: its runs are the
    // main runs' "B alone".
    let mut total = match (args.screen, &source) {
        (true, _) => 0,
        (false, Source::Mfeat(_)) => args.seeds * modes.len() * args.losses.len() * args.epochs,
        (false, Source::Synthetic) => {
            args.seeds * (modes.len() * args.losses.len() + 1) * args.epochs
        }
    };
    if let Source::Mfeat(views) = &source {
        total += screen::epochs(&args, views);
    }
    let progress = Progress::new(total)?;

    let mut alone: Vec<RunLog> = Vec::new();
    if let Source::Mfeat(views) = &source {
        match screen::run(&args, views, &progress)? {
            screen::Screen::Continue { weak_alone } => alone = weak_alone,
            screen::Screen::Stop => {
                progress.finish();
                closing(&args, start, &load_start, &device);
                return Ok(());
            }
        }
    }

    // runs[loss][mode][seed]; B alone does not depend on the loss form: once per seed.
    let mut runs: Vec<Vec<Vec<RunLog>>> = args
        .losses
        .iter()
        .map(|_| modes.iter().map(|_| Vec::new()).collect())
        .collect();
    for si in 0..args.seeds {
        let seed = args.seed + si as u64;
        let data = source.dataset(&args, seed)?;
        for (li, &loss) in args.losses.iter().enumerate() {
            for (mi, &mode) in modes.iter().enumerate() {
                let what = format!("seed {seed}, {} loss: {}", loss.name(), mode.label());
                let log = progress.run(&what, |bar| train(mode, loss, &args, seed, &data, bar))?;
                runs[li][mi].push(log);
            }
        }
        if let Source::Synthetic = source {
            let what = format!("seed {seed}: B alone");
            let log = progress.run(&what, |bar| {
                train(Mode::BAlone, Loss::Script, &args, seed, &data, bar)
            })?;
            alone.push(log);
        }
    }
    progress.finish();
    for (li, &loss) in args.losses.iter().enumerate() {
        let mut named: Vec<(Mode, &[RunLog])> = modes
            .iter()
            .zip(&runs[li])
            .map(|(m, r)| (*m, r.as_slice()))
            .collect();
        named.push((Mode::BAlone, alone.as_slice()));
        println!("\n======== {} loss ({})", loss.name(), loss.describe());
        report::per_epoch(&args, &named);
        report::summary(&args, &named);
        report::timing(&named);
        let path = args.plot_path(loss);
        plot::write(&path, &args, &first, loss, &named)?;
        println!("plot: {path}");
    }
    closing(&args, start, &load_start, &device);
    Ok(())
}
