//! The candle-cuda test binary (tests/gpu_candle_list.rs). Link time: stand-ins for libcuda,
//! cuBLAS, cuBLASLt, cuRAND, links to NVRTC and cudart (candle's cudarc links them); run
//! time: the emulated driver's folder, which has libcuda.so.1 and the handle-only
//! cuBLAS/cuRAND first on the path. candle-kernels goes through nvcc (~12 min on 2 cores),
//! so with other steps to run it builds in the background at low priority while the modes
//! run (the emulated driver runs each launch on one thread: a core is mostly idle).

use super::test_run::{self, RunOpts};
use super::{section, Ctx, Mode};
use crate::{artifacts, proc, test_log};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

/// The background build's priority (`renice -n 10`: below the modes' runs).
const NICE: i32 = 10;

/// The candle-cuda binary: built in the foreground when asked for, or waited for.
pub enum CandleBuild {
    NotStarted,
    Background(JoinHandle<Option<String>>),
    Done(Option<String>),
}

impl CandleBuild {
    /// Starts the build on a thread; its processes get their own process group, which an
    /// early exit ends (proc::kill_background).
    pub fn start(ctx: &Ctx) -> Self {
        let (emu, logs) = (ctx.emu.clone(), ctx.logs.clone());
        CandleBuild::Background(std::thread::spawn(move || build(&emu, &logs, true)))
    }

    /// The binary's path (`None`: it did not build).
    pub fn binary(&mut self, ctx: &Ctx) -> Option<String> {
        let path = match std::mem::replace(self, CandleBuild::NotStarted) {
            CandleBuild::NotStarted => build(&ctx.emu, &ctx.logs, false),
            CandleBuild::Background(handle) => {
                println!("waiting for the background build of the candle-cuda test binary");
                handle.join().unwrap_or(None)
            }
            CandleBuild::Done(path) => path,
        };
        *self = CandleBuild::Done(path.clone());
        path
    }
}

/// Builds the binary; writes its path to target/emu/candle-bin.txt (empty on failure), as
/// the shell version did.
fn build(emu: &Path, logs: &Path, background: bool) -> Option<String> {
    let bin_txt = emu.join("candle-bin.txt");
    let _ = std::fs::write(&bin_txt, "");
    let stubs = emu.join("link-stubs");
    let mut cmd = Command::new("bash");
    cmd.arg("scripts/cuda-link-stubs.sh").arg(&stubs);
    if background {
        proc::background(&mut cmd, Some(NICE));
    }
    // (its stderr is ours, as before; a failure shows as the link failing)
    let stub_dir = match cmd.output() {
        Ok(out) => library_path_dir(&String::from_utf8_lossy(&out.stdout)),
        Err(e) => {
            eprintln!("emu-check: scripts/cuda-link-stubs.sh: {e}");
            None
        }
    };
    let library_path = match (
        stub_dir,
        std::env::var("LIBRARY_PATH").ok().filter(|p| !p.is_empty()),
    ) {
        (Some(dir), Some(old)) => Some(format!("{dir}:{old}")),
        (Some(dir), None) => Some(dir),
        (None, old) => old,
    };
    // nvcc on PATH for candle-kernels' builder (cudaforge), which looks for it there.
    let nvcc = std::env::var("NVCC")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or("nvcc".into());
    let nvcc_dir = match Path::new(&nvcc).parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let path = format!(
        "{}:{}",
        nvcc_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let args: Vec<String> = [
        "test",
        "--features",
        "candle-cuda",
        "--no-run",
        "--test",
        "gpu_candle_list",
    ]
    .map(String::from)
    .to_vec();
    let log = logs.join("cargo-build-candle.log");
    let configure = |cmd: &mut Command| {
        // CUDAFORGE_THREADS: candle-kernels' builder uses half the cores by default (one, here).
        cmd.env("CUDAFORGE_THREADS", proc::nproc().to_string())
            .env("PATH", path);
        if let Some(lp) = library_path {
            cmd.env("LIBRARY_PATH", lp);
        }
        if background {
            proc::background(cmd, Some(NICE));
        }
    };
    let started = |child: &std::process::Child| {
        if background {
            proc::track_background(child);
        }
    };
    let built = artifacts::build(&args, Some(&log), configure, started);
    if background {
        proc::untrack_background();
    }
    let paths: Vec<String> = match built {
        Ok(found) => found
            .into_iter()
            .filter(|a| a.kind == "test")
            .map(|a| a.path)
            .collect(),
        Err(failure) => {
            eprintln!("cargo xtask artifacts: {}", failure.message);
            Vec::new()
        }
    };
    let text: String = paths.iter().map(|p| format!("{p}\n")).collect();
    let _ = std::fs::write(&bin_txt, &text);
    Some(text.trim_end().to_string()).filter(|p| !p.is_empty())
}

/// The candle adapter's CUDA path in the three modes; false when a driver did not build.
pub fn step(ctx: &mut Ctx, candle: &mut CandleBuild) -> bool {
    section(
        "the candle adapter's CUDA path (feature candle-cuda) in plain, address and race modes",
    );
    let Some(cbin) = candle.binary(ctx) else {
        println!("FAIL candle: the candle-cuda test binary did not build");
        let log = test_run::read_lossy(&ctx.logs.join("cargo-build-candle.log"));
        test_log::tail(&log, 30)
            .iter()
            .for_each(|l| println!("{l}"));
        ctx.failed = true;
        return true;
    };
    for mode in [Mode::Plain, Mode::Asan, Mode::Tsan] {
        // (the handle-only cuBLAS is part of the driver's build: a mode step built it)
        let built = ctx.emu.join(mode.name()).join("libcublas.so.13").is_file();
        if !built && !ctx.build_lib(mode) {
            return false;
        }
        ctx.run_and_report(mode, "gpu_candle_list", &cbin, &[], &RunOpts::default());
    }
    true
}

/// The folder of cuda-link-stubs.sh's `export LIBRARY_PATH="DIR${LIBRARY_PATH:+:...}"` line.
pub fn library_path_dir(stubs_output: &str) -> Option<String> {
    let line = stubs_output
        .lines()
        .find(|l| l.starts_with("export LIBRARY_PATH="))?;
    let value = line.strip_prefix("export LIBRARY_PATH=\"")?;
    let dir = value.split("${LIBRARY_PATH").next()?;
    Some(dir.to_string()).filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_folder_from_the_export_line() {
        let out = "export LIBRARY_PATH=\"/r/target/emu/link-stubs${LIBRARY_PATH:+:$LIBRARY_PATH}\"\n\
                   export LD_LIBRARY_PATH=\"/r/target/emu/link-stubs:/venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\"\n";
        assert_eq!(
            library_path_dir(out).as_deref(),
            Some("/r/target/emu/link-stubs")
        );
        assert_eq!(library_path_dir("cuda-link-stubs: not found\n"), None);
    }
}
