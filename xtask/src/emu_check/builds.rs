//! The cargo builds: the GPU test binaries and the GPU bench, with the README test build's
//! features and build-script environment (so that nothing is built twice).

use super::test_run;
use crate::artifacts;
use std::path::Path;
use std::process::Command;

/// The GPU test binaries (the README's `--features candle` build).
const TEST_BINARIES: [&str; 10] = [
    "project",
    "gpu_kernels",
    "stats",
    "controller",
    "gpu_reliability",
    "gpu_isolation",
    "gpu_launches",
    "gpu_errors",
    "tensor_list",
    "optim",
];

/// cargo's build of the README's feature set with, when there is an nvcc,
/// REDREG_REQUIRE_NVCC=1 as .ci/run and check-kernels build: the same build-script
/// environment, so cargo reuses the README test build (fatbins included) instead of
/// building again (minutes).
fn cargo_build(
    cargo_args: &[&str],
    log: &Path,
) -> Result<Vec<artifacts::Artifact>, artifacts::BuildFailure> {
    let args: Vec<String> = cargo_args.iter().map(|s| s.to_string()).collect();
    let nvcc = std::env::var("NVCC").is_ok_and(|n| !n.is_empty());
    let configure = |cmd: &mut Command| {
        if nvcc {
            cmd.env("REDREG_REQUIRE_NVCC", "1");
        }
    };
    artifacts::build(&args, Some(log), configure, |_| {})
}

/// (name, path) of each GPU test binary; `None` (the log printed) when the build failed.
pub fn test_binaries(logs: &Path) -> Option<Vec<(String, String)>> {
    let mut args = vec!["test", "--features", "candle", "--no-run"];
    TEST_BINARIES
        .iter()
        .for_each(|t| args.extend(["--test", t]));
    let log = logs.join("cargo-build.log");
    let bins: Vec<(String, String)> = match cargo_build(&args, &log) {
        Ok(found) => found
            .into_iter()
            .filter(|a| a.kind == "test")
            .map(|a| (a.name, a.path))
            .collect(),
        Err(failure) => {
            eprintln!("cargo xtask artifacts: {}", failure.message);
            print!("{}", test_run::read_lossy(&log));
            return None;
        }
    };
    if bins.is_empty() {
        println!("no test binaries built");
        print!("{}", test_run::read_lossy(&log));
        return None;
    }
    Some(bins)
}

/// The criterion GPU bench (benches/gpu.rs), built by `cargo test` (the test profile: the
/// README build's artifacts, where `cargo bench` would build every dependency again in the
/// release profile) and run with `--bench`. `None`: it did not build (the smoke run fails).
pub fn bench_binary(logs: &Path) -> Option<String> {
    let args = ["test", "--features", "candle", "--bench", "gpu", "--no-run"];
    match cargo_build(&args, &logs.join("cargo-build-bench.log")) {
        Ok(found) => found
            .into_iter()
            .find(|a| a.kind == "bench")
            .map(|a| a.path),
        Err(failure) => {
            eprintln!("cargo xtask artifacts: {}", failure.message);
            None
        }
    }
}
