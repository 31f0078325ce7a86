//! The plain, address and race steps: every GPU test binary in one mode, the mode's kernel
//! coverage, and in plain mode the NVRTC path and the GPU bench's smoke run.

use super::coverage::Coverage;
use super::test_run::{self, RunOpts};
use super::{filters, section, Ctx, Mode};
use crate::{proc, test_log};
use std::process::Command;
use std::time::Duration;

/// Runs `step`'s mode; false when the driver did not build (the run ends there).
pub fn run(ctx: &mut Ctx, step: &str, mode: Mode) -> bool {
    if !ctx.build_lib(mode) {
        return false;
    }
    let coverage_dir = ctx.emu.join(format!("coverage-{}", mode.name()));
    let _ = std::fs::remove_dir_all(&coverage_dir);
    let _ = std::fs::create_dir_all(&coverage_dir);
    section(&format!("{step} mode"));
    // EMU_FULL=1: the plain mode at full size.
    let full = std::env::var("EMU_FULL").is_ok_and(|v| v == "1");
    for (name, bin) in ctx.bins.clone() {
        let Some(args) = filters::test_args(mode, &name) else {
            continue;
        };
        let mut opts = RunOpts::default();
        if mode == Mode::Plain && full {
            opts.env.push(("REDREG_GPU_QUICK", "0"));
        }
        ctx.run_and_report(mode, &name, &bin, &args, &opts);
    }
    section(&format!(
        "{step} mode: kernels launched (every extern \"C\" __global__ of kernels/*.cu must run)"
    ));
    if !coverage(ctx, mode) {
        ctx.failed = true;
    }
    if mode == Mode::Plain {
        // One binary suffices for the loading path (module → NVRTC PTX → the emulated
        // driver's module by name); the stats module compiles in seconds, the project
        // module's 129 kernels in minutes (their NVRTC compile is check-kernels' step 3).
        section("plain mode, the NVRTC path (REDREG_FORCE_NVRTC=1: PTX from the embedded sources)");
        for (name, bin) in ctx.bins.clone().iter().filter(|(n, _)| n == "stats") {
            let opts = RunOpts {
                tag: " (NVRTC)",
                env: vec![("REDREG_FORCE_NVRTC", "1")],
                ..Default::default()
            };
            ctx.run_and_report(Mode::Plain, name, bin, &["cuda"], &opts);
        }
        section(
            "plain mode, the GPU bench in smoke mode (REDREG_BENCH_SMOKE=1: small layouts, one call per case)",
        );
        if !bench_smoke(ctx) {
            ctx.failed = true;
        }
    }
    true
}

/// Every kernel registered in the mode's emulated driver was launched by the mode's runs.
fn coverage(ctx: &Ctx, mode: Mode) -> bool {
    let m = mode.name();
    let lib = ctx.emu.join(m);
    let c = Coverage::read(&lib, &ctx.emu.join(format!("coverage-{m}")));
    let ran = ctx.emu.join(format!("coverage-{m}.txt"));
    if let Err(e) = c.write(&lib.join("kernels.txt"), &ran) {
        eprintln!("emu-check: coverage lists: {e}");
    }
    let missing = c.missing();
    let total = c.registered.len();
    let nran = total - missing.len();
    // (an empty sum printed as awk did: nothing)
    let launches = if c.launches.is_empty() {
        String::new()
    } else {
        c.total_launches().to_string()
    };
    println!(
        "kernels launched in {m} mode: {nran} of {total} ({launches} launches; per kernel: {})",
        ran.display()
    );
    ctx.row(&format!(
        "{m} | (all binaries) | {nran} of {total} kernels launched | – | –"
    ));
    if !missing.is_empty() {
        println!("never launched: {}", missing.join(" "));
        return false;
    }
    true
}

/// The criterion GPU bench (benches/gpu.rs) end to end, every case once; timings meaningless.
fn bench_smoke(ctx: &Ctx) -> bool {
    let Some(bench) = &ctx.bench else {
        println!("FAIL plain bench gpu, smoke: the bench did not build");
        let log = test_run::read_lossy(&ctx.logs.join("cargo-build-bench.log"));
        test_log::tail(&log, 20)
            .iter()
            .for_each(|l| println!("{l}"));
        return false;
    };
    let log = ctx.logs.join("plain-bench-gpu.log");
    let ld = match ctx.base_ld.as_str() {
        "" => ctx.emu.join("plain").display().to_string(),
        base => format!("{}:{base}", ctx.emu.join("plain").display()),
    };
    let mut cmd = Command::new(bench);
    cmd.arg("--bench")
        .env("LD_LIBRARY_PATH", ld)
        .env("EMU_COVERAGE_DIR", ctx.emu.join("coverage-plain"))
        .env("REDREG_REQUIRE_GPU", "1")
        .env("REDREG_BENCH_SMOKE", "1");
    let limit = Some(Duration::from_secs(600));
    let outcome =
        proc::run_logged(&mut cmd, &log, limit).unwrap_or(proc::Outcome { rc: 127, secs: 0 });
    let text = test_run::read_lossy(&log);
    let secs = outcome.secs;
    if outcome.rc == 0 && text.lines().any(|l| l.starts_with("| controller_step")) {
        let cases = bench_cases(&text);
        println!("PASS plain bench gpu, smoke ({secs}s): {cases} cases ran");
        ctx.row(&format!(
            "plain | bench gpu (smoke) | {cases} cases ran to completion | none | {secs} s"
        ));
        true
    } else {
        println!("FAIL plain bench gpu, smoke: see {}", log.display());
        test_log::tail(&text, 15)
            .iter()
            .for_each(|l| println!("{l}"));
        ctx.row(&format!(
            "plain | bench gpu (smoke) | FAILED | see log | {secs} s"
        ));
        false
    }
}

/// The smoke run's table rows (`| case ...`), less its header (`| op ...`).
fn bench_cases(log: &str) -> usize {
    let is_case = |l: &&str| {
        l.strip_prefix("| ")
            .and_then(|r| r.chars().next())
            .is_some_and(|c| c.is_ascii_lowercase())
    };
    log.lines()
        .filter(is_case)
        .filter(|l| !l.starts_with("| op "))
        .count()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_cases_are_the_table_rows() {
        let log = "\
| op | layout | time |
|---|---|---|
| project_f32 | 4x1024 | 1.2 ms |
| controller_step | small | 3 ms |
| Summary | x |
gpu/project time: [1 ms]
";
        assert_eq!(super::bench_cases(log), 2);
    }
}
