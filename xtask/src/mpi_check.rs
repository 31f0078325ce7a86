//! `cargo xtask mpi-check`: the distributed checks on the CPU (issue 17), the former
//! scripts/mpi-check.sh (now its entry point; the steps: [`crate::USAGE`]). Any failing
//! step ends the check with its status, as `set -e` did.

use crate::repo::{self, CudaEnv};
use crate::{artifacts, proc};
use std::process::Command;
use std::time::{Duration, Instant};

/// Debian packages: OpenMPI 4.1 and libclang (rsmpi's bindgen).
const PACKAGES: [&str; 3] = ["libopenmpi-dev", "openmpi-bin", "libclang-dev"];
/// Each run's limit: a hang fails the check instead of blocking CI.
const LIMIT: Duration = Duration::from_secs(300);

fn step(title: &str) {
    println!("\n== mpi-check: {title}");
}

/// A failed step's status (`Err`) ends the check.
fn check(rc: i32) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

pub fn main(args: &[String]) -> i32 {
    if !args.is_empty() {
        eprintln!("usage: cargo xtask mpi-check");
        return 2;
    }
    // (the test binaries and mpirun get the caller's LD_LIBRARY_PATH, as from the script)
    if let Err(rc) = repo::enter("mpi-check", CudaEnv::Leave) {
        return rc;
    }
    std::env::set_var("CARGO_TERM_COLOR", "never");
    match run() {
        Ok(()) => 0,
        Err(rc) => rc,
    }
}

fn run() -> Result<(), i32> {
    let t0 = Instant::now();
    step("MPI and libclang");
    install_packages()?;
    // (only the first line: the rest is OpenMPI's bug-report address)
    let version = Command::new("mpirun")
        .arg("--version")
        .output()
        .map_err(|e| {
            eprintln!("mpirun: {e}");
            127
        })?;
    println!(
        "{}",
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    println!("packages ready after {} s", t0.elapsed().as_secs());

    step("clippy with features mpi and nccl");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let clippy = [
        "clippy",
        "--all-targets",
        "--features",
        "mpi,nccl",
        "--",
        "-D",
        "warnings",
    ];
    check(proc::run(Command::new(&cargo).args(clippy)))?;

    step("build: tests/mpi_dist.rs and examples/ddp.rs (features mpi, no CUDA)");
    let test = executable(
        &[
            "test",
            "--no-default-features",
            "--features",
            "mpi",
            "--test",
            "mpi_dist",
            "--no-run",
        ],
        "mpi_dist",
        "test",
    )?;
    let example = executable(
        &[
            "build",
            "--profile",
            "test",
            "--no-default-features",
            "--features",
            "mpi",
            "--example",
            "ddp",
        ],
        "ddp",
        "example",
    )?;
    let (Some(test), Some(example)) = (test, example) else {
        eprintln!("mpi-check: test binary or example not found in cargo's output");
        return Err(1);
    };

    step("tests at world size 1 (no mpirun)");
    check(proc::run_limited(&mut Command::new(&test), LIMIT))?;
    for n in [2, 3] {
        step(&format!("tests under mpirun -n {n}"));
        check(proc::run_limited(&mut mpirun(n, &test), LIMIT))?;
    }
    for n in [2, 3] {
        step(&format!("example ddp under mpirun -n {n}"));
        check(proc::run_limited(
            mpirun(n, &example).args(["--epochs", "6"]),
            LIMIT,
        ))?;
    }
    step(&format!("passed in {} s", t0.elapsed().as_secs()));
    Ok(())
}

/// OpenMPI refuses root without --allow-run-as-root; --oversubscribe: more ranks than cores.
fn mpirun(n: u32, program: &str) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        &n.to_string(),
        program,
    ]);
    cmd
}

/// The path of executable `name` of `kind` that `cargo ARGS` made (`None`: not announced).
fn executable(cargo_args: &[&str], name: &str, kind: &str) -> Result<Option<String>, i32> {
    let args: Vec<String> = cargo_args.iter().map(|s| s.to_string()).collect();
    match artifacts::build(&args, None, |_| {}, |_| {}) {
        Ok(found) => Ok(found
            .into_iter()
            .find(|a| a.name == name && a.kind == kind)
            .map(|a| a.path)),
        Err(failure) => {
            eprintln!("cargo xtask artifacts: {}", failure.message);
            Err(failure.code)
        }
    }
}

/// Installs the missing Debian packages (as root; otherwise says which and fails).
fn install_packages() -> Result<(), i32> {
    let installed = |p: &str| {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output();
        out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    };
    let missing: Vec<&str> = PACKAGES.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: getuid cannot fail and has no memory effects.
    if unsafe { libc::getuid() } != 0 {
        eprintln!(
            "missing Debian packages: {} (run as root, or install them)",
            missing.join(" ")
        );
        return Err(1);
    }
    println!("installing {}", missing.join(" "));
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    check(proc::run(Command::new("apt-get").args(["update", "-qq"])))?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .stdout(std::process::Stdio::null());
    check(proc::run(&mut install))
}
