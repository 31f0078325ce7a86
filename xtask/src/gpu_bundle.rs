//! `cargo xtask gpu-bundle` (was `scripts/gpu-check.sh bundle`), HERE (no GPU): builds the GPU
//! test binaries with kernels for sm_90 (CUDA_COMPUTE_CAP, default 90) and
//! REDREG_REQUIRE_NVCC=1, strips and xz-packs them into ./gpu-bundle/ (gitignored; must stay
//! < 64 MiB), with this binary (for `gpu-bundle/xtask gpu-run` there) and the commit.
//!
//! REDREG_BUNDLE_TESTS names the test targets (default below). REDREG_BUNDLE_CANDLE=1 also
//! bundles tests/gpu_candle.rs and the balance example built with feature candle-cuda (slow:
//! candle's own kernels; linked against scripts/cuda-link-stubs.sh). Benches:
//! REDREG_BUNDLE_BENCHES (default "gpu", empty: none) names the `cargo bench` targets
//! bundled. REDREG_BUNDLE_MUTANTS=0 leaves out the sanitizers' planted bugs.

use crate::artifacts;
use crate::repo::{self, CudaEnv};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUNDLE: &str = "gpu-bundle";
const DEFAULT_TESTS: &str = "project gpu_kernels stats controller gpu_reliability gpu_isolation gpu_launches tensor_list optim nccl_dist";
/// The carry that takes the bundle to the GPU machine holds 64 MiB.
const LIMIT_MIB: u64 = 64;

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn err<T>(what: impl std::fmt::Display) -> Result<T, String> {
    Err(what.to_string())
}

/// Runs a command, its output to the terminal; Err unless it succeeds.
fn sh(cmd: &mut Command) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => err(format!("{cmd:?}: {s}")),
        Err(e) => err(format!("{cmd:?}: {e}")),
    }
}

/// Takes into this process the environment that a bash snippet sets (`eval
/// "$(scripts/cuda-link-stubs.sh)"`), so that the cargo builds started later inherit it.
fn source_env(snippet: &str) -> Result<(), String> {
    let out = Command::new("bash")
        .args(["-c", &format!("{snippet} >&2 && env -0")])
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    if !out.status.success() {
        return err(format!(
            "`{snippet}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for kv in out.stdout.split(|&b| b == 0) {
        let kv = String::from_utf8_lossy(kv);
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if matches!(k, "_" | "SHLVL" | "PWD" | "OLDPWD") || k.is_empty() {
            continue;
        }
        if var(k).as_deref() != Some(v) {
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

/// Builds with `cargo CARGO_ARGS` and copies each executable the build made into the bundle
/// as <kind>-<target> (kind: test, bench or example), or as `name` when given.
fn collect(name: Option<&str>, cargo_args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let args: Vec<String> = cargo_args.iter().map(|s| s.to_string()).collect();
    let found = artifacts::build(
        &args,
        None,
        |cmd| {
            cmd.envs(envs.iter().copied());
        },
        |_| {},
    )
    .map_err(|f| {
        format!(
            "cargo {} failed ({}): {}",
            args.join(" "),
            f.code,
            f.message
        )
    })?;
    for a in found {
        let dest = Path::new(BUNDLE).join(match name {
            Some(n) => n.to_string(),
            None => format!("{}-{}", a.kind, a.name),
        });
        fs::copy(&a.path, &dest).map_err(|e| format!("{} -> {}: {e}", a.path, dest.display()))?;
        println!("bundled {}", dest.display());
    }
    Ok(())
}

/// A copy of the tracked files in `dir` (`git ls-files | cp --parents`).
fn copy_tracked(dir: &Path) -> Result<(), String> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        return err("git ls-files failed");
    }
    for f in out.stdout.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let f = PathBuf::from(String::from_utf8_lossy(f).into_owned());
        let dest = dir.join(&f);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::copy(&f, &dest).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(())
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

pub fn main(_args: &[String]) -> i32 {
    // NVCC from the CUDA compiler venv's env file unless one is set (cuda_env::import)
    let root = match repo::enter("gpu-bundle", CudaEnv::Import) {
        Ok(root) => root,
        Err(rc) => return rc,
    };
    match bundle(root) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ERROR: {e}");
            1
        }
    }
}

fn bundle(root: &Path) -> Result<(), String> {
    std::env::set_var("REDREG_REQUIRE_NVCC", "1");
    if var("CUDA_COMPUTE_CAP").unwrap_or_default().is_empty() {
        std::env::set_var("CUDA_COMPUTE_CAP", "90");
    }
    let _ = fs::remove_dir_all(BUNDLE);
    fs::create_dir_all(BUNDLE).map_err(|e| format!("{BUNDLE}: {e}"))?;

    let tests = var("REDREG_BUNDLE_TESTS").unwrap_or_else(|| DEFAULT_TESTS.into());
    // nccl: the NCCL adapter test (tests/nccl_dist.rs; libnccl is loaded at run time only).
    let mut args = vec!["test", "--features", "cuda,nccl", "--no-run"];
    for t in words(&tests) {
        args.extend(["--test", t]);
    }
    collect(None, &args, &[])?;

    // (unset: the gpu bench; set and empty: none)
    let benches = var("REDREG_BUNDLE_BENCHES").unwrap_or_else(|| "gpu".into());
    if !benches.is_empty() {
        let mut args = vec!["bench", "--features", "cuda", "--no-run"];
        for b in words(&benches) {
            args.extend(["--bench", b]);
        }
        collect(None, &args, &[])?;
    }

    if var("REDREG_BUNDLE_MUTANTS").unwrap_or_else(|| "1".into()) == "1" {
        // The sanitizers' own check (a checker counts only once a planted bug makes it fail):
        // gpu_kernels built against the real kernels deliberately broken by
        // tests/emu/mutate.py, as the emulated driver's mutation step does. `run` requires
        // memcheck to report `oob` and racecheck to report `barrier`.
        let target = var("CARGO_TARGET_DIR")
            .filter(|t| !t.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let tmp = var("TMPDIR")
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "/tmp".into());
        for m in ["oob", "barrier"] {
            let src = Path::new(&tmp).join(format!("redreg-mutant-{m}"));
            let _ = fs::remove_dir_all(&src);
            fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
            copy_tracked(&src)?;
            let kmut = src.join("kernels.mut");
            sh(Command::new("python3")
                .arg("tests/emu/mutate.py")
                .arg("kernels")
                .arg(&kmut)
                .arg(m))?;
            fs::remove_dir_all(src.join("kernels")).map_err(|e| e.to_string())?;
            fs::rename(&kmut, src.join("kernels")).map_err(|e| e.to_string())?;
            let manifest = src.join("Cargo.toml");
            let manifest = manifest.to_string_lossy();
            let target = target.to_string_lossy();
            collect(
                Some(&format!("mutant-{m}")),
                &[
                    "test",
                    "--manifest-path",
                    &manifest,
                    "--features",
                    "cuda",
                    "--no-run",
                    "--test",
                    "gpu_kernels",
                ],
                &[("CARGO_TARGET_DIR", &target)],
            )?;
            let _ = fs::remove_dir_all(&src);
        }
    }

    if var("REDREG_BUNDLE_CANDLE").as_deref() == Some("1") {
        // candle CUDA tensors (feature candle-cuda): candle-kernels takes ~12 min to build on
        // 2 cores; libcuda/cuBLAS/cuRAND are linked against stubs (real ones load there).
        source_env("eval \"$(scripts/cuda-link-stubs.sh)\"")?;
        let nvcc = var("NVCC").unwrap_or_default();
        let nvcc_dir = Path::new(&nvcc).parent().unwrap_or(Path::new(""));
        let path = format!("{}:{}", nvcc_dir.display(), var("PATH").unwrap_or_default());
        std::env::set_var("PATH", path);
        // candle-kernels' builder: half the cores by default
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("CUDAFORGE_THREADS", cores.to_string());
        collect(
            None,
            &[
                "test",
                "--features",
                "candle-cuda",
                "--no-run",
                "--test",
                "gpu_candle",
            ],
            &[],
        )?;
        collect(
            None,
            &[
                "build",
                "--release",
                "--features",
                "candle-cuda",
                "--example",
                "balance",
            ],
            &[],
        )?;
    }

    // Stripped, the binaries are ~10 MB each (~55 MB with candle's PTX and kernels): xz
    // brings them to ~2.5 MB (~8 MB) and the bundle under the 64 MiB carry; `run` unpacks.
    let mut names: Vec<PathBuf> = fs::read_dir(BUNDLE)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    for f in &names {
        let n = f.file_name().unwrap_or_default().to_string_lossy();
        let packable = ["test-", "bench-", "mutant-", "example-"]
            .iter()
            .any(|p| n.starts_with(p));
        if packable && !n.ends_with(".xz") && f.is_file() {
            sh(Command::new("strip").arg(f))?;
            sh(Command::new("xz").args(["-T2", "-6", "-f"]).arg(f))?;
        }
    }

    // The xtask, uncompressed: on the GPU machine (no cargo) it runs the checks (`gpu-run`),
    // unpacks the binaries and finds the lib folders of NVIDIA's Python wheels. It is this
    // very binary: `cargo xtask` built it for this machine's target, as the GPU machine's.
    let me = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
    let dest = Path::new(BUNDLE).join("xtask");
    fs::copy(&me, &dest).map_err(|e| format!("{} -> {}: {e}", me.display(), dest.display()))?;
    sh(Command::new("strip").arg(&dest))?;
    if let Ok(out) = Command::new("git").args(["rev-parse", "HEAD"]).output() {
        if out.status.success() {
            let _ = fs::write(Path::new(BUNDLE).join("COMMIT"), &out.stdout);
        }
    }

    let mut files: Vec<(String, u64)> = fs::read_dir(BUNDLE)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    files.sort();
    let bytes: u64 = files.iter().map(|(_, l)| l).sum();
    for (n, l) in &files {
        println!("{l:>10}  {BUNDLE}/{n}");
    }
    let mib = size_mib(bytes);
    println!("bundle: {mib} MiB");
    if mib >= LIMIT_MIB {
        return err(format!("bundle >= {LIMIT_MIB} MiB"));
    }
    Ok(())
}

/// Bytes in whole MiB, rounded up (as `du -sm` gives them).
pub fn size_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_rounds_up_to_the_mib() {
        assert_eq!(super::size_mib(0), 0);
        assert_eq!(super::size_mib(1), 1);
        assert_eq!(super::size_mib(64 << 20), 64);
        assert_eq!(super::size_mib((63 << 20) + 1), 64);
    }
}
