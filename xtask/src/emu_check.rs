//! `cargo xtask emu-check [STEP ...]`: the crate's real CUDA kernels run on the CPU, through
//! the crate's own cudarc wrappers, on the emulated CUDA driver of tests/emu (no GPU, no CUDA
//! driver needed). The steps and what they check: [`crate::USAGE`]. This is the former
//! scripts/emu-check.sh (issue #22), which is now its entry point: each step's verdict is
//! kept apart (a failing step does not stop the next), the table is written as it goes.

mod builds;
mod candle;
mod coverage;
mod filters;
mod modes;
mod mutation;
mod selftest;
mod test_run;

use crate::repo::{self, CudaEnv};
use crate::{proc, test_log};
use candle::CandleBuild;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

/// Every step, in the order of a run without arguments.
pub const STEPS: [&str; 7] = [
    "selftest", "negative", "plain", "address", "race", "mutation", "candle",
];

/// An emulated driver's build mode (tests/emu/build.sh MODE).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Plain,
    Asan,
    Tsan,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Asan => "asan",
            Mode::Tsan => "tsan",
        }
    }
}

/// What the steps share: the folders, the built binaries, the verdict so far.
pub struct Ctx {
    /// target/emu (absolute)
    emu: PathBuf,
    logs: PathBuf,
    results: PathBuf,
    /// LD_LIBRARY_PATH after the CUDA env file (NVRTC): after the emulated driver's folder.
    base_ld: String,
    /// (name, path) of each GPU test binary, in cargo's order.
    bins: Vec<(String, String)>,
    bench: Option<String>,
    failed: bool,
}

impl Ctx {
    /// Appends a row to target/emu/results.md.
    fn row(&self, cells: &str) {
        let appended = OpenOptions::new()
            .append(true)
            .open(&self.results)
            .and_then(|mut f| writeln!(f, "| {cells} |"));
        if let Err(e) = appended {
            eprintln!("emu-check: {}: {e}", self.results.display());
        }
    }

    /// Runs a test binary, prints its PASS/FAIL line and writes its row.
    fn run_and_report(
        &mut self,
        mode: Mode,
        name: &str,
        bin: &str,
        args: &[&str],
        opts: &test_run::RunOpts,
    ) {
        let run = test_run::run(self, mode, name, bin, args, opts);
        run.print(&test_run::read_lossy(&run.log));
        self.row(&run.row());
        if !run.passed() {
            self.failed = true;
        }
    }

    /// Builds the emulated driver for `mode` in target/emu/MODE; false (its log printed)
    /// when that fails, which ends the run.
    fn build_lib(&self, mode: Mode) -> bool {
        section(&format!("build the emulated driver ({})", mode.name()));
        let log = self.logs.join(format!("build-{}.log", mode.name()));
        let mut cmd = Command::new("bash");
        cmd.arg("tests/emu/build.sh")
            .arg(mode.name())
            .arg(self.emu.join(mode.name()));
        let rc = proc::run_logged(&mut cmd, &log, None).map_or(127, |o| o.rc);
        let text = test_run::read_lossy(&log);
        if rc != 0 {
            print!("{text}");
            return false;
        }
        test_log::tail(&text, 1)
            .iter()
            .for_each(|l| println!("{l}"));
        true
    }
}

pub fn section(title: &str) {
    println!("\n== emu-check: {title}");
}

/// The steps named by the arguments (each may hold several, as the shell split them), or
/// every step; `Err(step)`: one is unknown.
pub fn parse_steps(args: &[String]) -> Result<Vec<String>, String> {
    let steps: Vec<String> = args
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(String::from)
        .collect();
    if steps.is_empty() {
        return Ok(STEPS.map(String::from).to_vec());
    }
    match steps.iter().find(|s| !STEPS.contains(&s.as_str())) {
        Some(bad) => Err(bad.clone()),
        None => Ok(steps),
    }
}

/// Ends the background candle build on any return (the shell's EXIT trap).
struct KillBackground;
impl Drop for KillBackground {
    fn drop(&mut self) {
        proc::kill_background();
    }
}

pub fn main(args: &[String]) -> i32 {
    let steps = match parse_steps(args) {
        Ok(steps) => steps,
        Err(bad) => {
            eprintln!("emu-check: unknown step {bad}");
            return 2;
        }
    };
    // The test binaries get the caller's LD_LIBRARY_PATH, not `cargo run`'s; NVCC (fatbins,
    // as gpu-check builds them; when unset: the path .ci/run exports) and NVRTC on
    // LD_LIBRARY_PATH (the NVRTC tests, REDREG_REQUIRE_NVRTC=1).
    let root = match repo::enter("emu-check", CudaEnv::Import) {
        Ok(root) => root,
        Err(rc) => return rc,
    };
    if std::env::var("CUDA_COMPUTE_CAP").map_or(true, |c| c.is_empty()) {
        std::env::set_var("CUDA_COMPUTE_CAP", "90");
    }
    let emu = root.join("target/emu");
    let mut ctx = Ctx {
        logs: emu.join("logs"),
        results: emu.join("results.md"),
        emu,
        base_ld: std::env::var("LD_LIBRARY_PATH").unwrap_or_default(),
        bins: Vec::new(),
        bench: None,
        failed: false,
    };
    if let Err(e) = std::fs::create_dir_all(&ctx.logs) {
        eprintln!("emu-check: {}: {e}", ctx.logs.display());
        return 1;
    }
    let header = "| mode | test binary | result | sanitizer / launch findings | time |\n|---|---|---|---|---|\n";
    if let Err(e) = std::fs::write(&ctx.results, header) {
        eprintln!("emu-check: {}: {e}", ctx.results.display());
        return 1;
    }
    let _kill_background = KillBackground;
    let has = |s: &str| steps.iter().any(|x| x == s);
    // Every cargo build first (the GPU test binaries and the bench reuse the README's test
    // build), then the candle-cuda build in the background: cargo's lock on the build
    // directory is free by then, nothing in the foreground builds until the candle step.
    if ["plain", "address", "race", "mutation"]
        .iter()
        .any(|s| has(s))
    {
        let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
        section(&format!(
            "build the GPU test binaries and the GPU bench (cargo, features cuda + candle, nvcc fatbins for sm_{cap})"
        ));
        match builds::test_binaries(&ctx.logs) {
            Some(bins) => ctx.bins = bins,
            None => return 1,
        }
        if has("plain") {
            ctx.bench = builds::bench_binary(&ctx.logs);
        }
    }
    let mut candle = CandleBuild::NotStarted;
    if has("candle") && steps != ["candle"] {
        let log = ctx.logs.join("cargo-build-candle.log");
        section(&format!(
            "candle-cuda test binary: building in the background (log: {})",
            log.display()
        ));
        candle = CandleBuild::start(&ctx);
    }
    for step in &steps {
        match step.as_str() {
            "selftest" => {
                section("f16 host conversions (all 2^32 f32 values)");
                if !selftest::run(&ctx.emu) {
                    ctx.failed = true;
                }
            }
            "negative" => {
                section("negative tests: each mode must catch its broken kernel");
                if proc::run(Command::new("bash").arg("tests/emu/negative/run.sh")) != 0 {
                    ctx.failed = true;
                }
            }
            "plain" | "address" | "race" => {
                let mode = match step.as_str() {
                    "plain" => Mode::Plain,
                    "address" => Mode::Asan,
                    _ => Mode::Tsan,
                };
                if !modes::run(&mut ctx, step, mode) {
                    return 1;
                }
            }
            "mutation" => {
                section(
                    "mutation tests: the real kernels, deliberately broken, must fail their mode",
                );
                mutation::run(&mut ctx);
            }
            "candle" => {
                if !candle::step(&mut ctx, &mut candle) {
                    return 1;
                }
            }
            _ => unreachable!("parse_steps let through {step}"),
        }
    }
    section("summary (emulated driver: logic, bounds, barriers; timings mean nothing)");
    print!(
        "{}",
        std::fs::read_to_string(&ctx.results).unwrap_or_default()
    );
    println!("emu-check: {}", if ctx.failed { "FAIL" } else { "PASS" });
    i32::from(ctx.failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(args: &[&str]) -> Result<Vec<String>, String> {
        parse_steps(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn steps_default_to_all_in_order_and_unknown_ones_are_refused() {
        assert_eq!(steps(&[]).unwrap(), STEPS);
        assert_eq!(steps(&["plain mutation"]).unwrap(), ["plain", "mutation"]);
        assert_eq!(steps(&["race", "selftest"]).unwrap(), ["race", "selftest"]);
        assert_eq!(steps(&["plain", "asan"]), Err("asan".to_string()));
    }
}
