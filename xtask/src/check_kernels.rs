//! `cargo xtask check-kernels`: CI's check of the CUDA kernels, no GPU needed (the former
//! scripts/check-kernels.sh, now its entry point; the steps: [`crate::USAGE`]).

use crate::proc;
use crate::repo::{self, CudaEnv};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The temporary folder, and the NVRTC step's process group, gone on any return.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        proc::kill_background();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn main(args: &[String]) -> i32 {
    if !args.is_empty() {
        eprintln!("usage: cargo xtask check-kernels");
        return 2;
    }
    // NVCC (when unset: the same path .ci/run exports) and NVRTC's library path.
    if let Err(rc) = repo::enter("check-kernels", CudaEnv::Import) {
        return rc;
    }
    let Some(nvcc) = std::env::var("NVCC").ok().filter(|n| !n.is_empty()) else {
        eprintln!("check-kernels: NVCC not set: run scripts/install-cuda-compiler.sh");
        return 1;
    };
    let caps_var = std::env::var("REDREG_CHECK_CAPS")
        .ok()
        .filter(|c| !c.is_empty());
    let caps: Vec<String> = caps_var
        .as_deref()
        .unwrap_or("75,80,86,89,90")
        .split(',')
        .map(String::from)
        .collect();
    // The cargo build proves the build.rs pipeline (fatbin embedded, cfg set) for one arch;
    // step 2 compiles every kernel for every arch and checks spills, two nvcc jobs at a time.
    // The feature set and environment are .ci/run's (the README's `--features candle`,
    // sm_90, REDREG_REQUIRE_NVCC=1): after its test build, steps 1 and 3 compile nothing new.
    let build_cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or("90".into());
    std::env::set_var("REDREG_REQUIRE_NVCC", "1");
    std::env::set_var("CUDA_COMPUTE_CAP", &build_cap);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!(
        "== 1. cargo build with REDREG_REQUIRE_NVCC=1 (CUDA_COMPUTE_CAP={build_cap}): the crate and step 3's test"
    );
    let step1 = proc::run(Command::new(&cargo).args([
        "test",
        "--features",
        "candle",
        "--no-run",
        "--test",
        "project",
    ]));
    if step1 != 0 {
        return step1;
    }
    let tmp = Scratch(std::env::temp_dir().join(format!("check-kernels.{}", std::process::id())));
    if let Err(e) = std::fs::create_dir_all(&tmp.0) {
        eprintln!("check-kernels: {}: {e}", tmp.0.display());
        return 1;
    }
    // Step 3 (one NVRTC thread, nothing left to build after step 1) runs beside step 2 (two
    // nvcc jobs, unevenly long: the project module's dominate), so both cores stay busy; its
    // output is printed after step 2.
    let nvrtc_log = tmp.0.join("nvrtc.log");
    let mut nvrtc = Command::new(&cargo);
    nvrtc
        .args([
            "test",
            "--features",
            "candle",
            "--test",
            "project",
            "nvrtc_compiles_embedded_sources",
        ])
        .args(["--", "--nocapture"])
        .env("REDREG_REQUIRE_NVRTC", "1");
    let nvrtc = spawn_logged(&mut nvrtc, &nvrtc_log);
    println!("== 2. ptxas resource usage ({})", caps.join(","));
    if !ptxas_step(&nvcc, &caps, &tmp.0) {
        return 1;
    }
    println!("== 3. NVRTC compile of the embedded sources (ran beside step 2)");
    let ok = match nvrtc {
        Ok(mut child) => {
            let status = child.wait();
            proc::untrack_background();
            status.is_ok_and(|s| s.success())
        }
        Err(e) => {
            eprintln!("check-kernels: cannot start the NVRTC test: {e}");
            false
        }
    };
    print!(
        "{}",
        String::from_utf8_lossy(&std::fs::read(&nvrtc_log).unwrap_or_default())
    );
    if !ok {
        eprintln!("check-kernels: the NVRTC compile failed");
        return 1;
    }
    println!("check-kernels: OK");
    0
}

/// Starts `cmd` in its own process group (ended on an early exit) with its output to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> std::io::Result<std::process::Child> {
    let out = std::fs::File::create(log)?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    proc::background(cmd, None);
    let child = cmd.spawn()?;
    proc::track_background(&child);
    Ok(child)
}

/// Every kernels/*.cu for every cap through `nvcc --cubin -Xptxas -v`, REDREG_NVCC_JOBS (2)
/// at a time; prints each kernel's registers and spills; false on a failed compile or any
/// spill.
fn ptxas_step(nvcc: &str, caps: &[String], tmp: &Path) -> bool {
    // The generated ABI header (redreg_abi.cuh, from src/abi.rs; the text build.rs gives nvcc).
    let abi = tmp.join("abi");
    if proc::run(Command::new("bash").arg("scripts/abi-header.sh").arg(&abi)) != 0 {
        return false;
    }
    let mut modules: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    modules.retain(|p| p.extension().is_some_and(|e| e == "cu"));
    modules.sort();
    let jobs: Vec<(PathBuf, String)> = modules
        .iter()
        .flat_map(|m| caps.iter().map(move |c| (m.clone(), c.clone())))
        .collect();
    let stem = |m: &Path| {
        m.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let report = |m: &Path, cap: &str| tmp.join(format!("{}_sm{cap}.txt", stem(m)));
    let queue = Mutex::new(jobs.iter());
    let failed = Mutex::new(false);
    let workers: usize = std::env::var("REDREG_NVCC_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let Some((module, cap)) = queue.lock().unwrap().next() else {
                    return;
                };
                let mut cmd = Command::new(nvcc);
                cmd.args(["--cubin", "-O3", "-std=c++17", "-I", "kernels", "-I"])
                    .arg(&abi)
                    .arg(format!("-arch=sm_{cap}"))
                    .args(["-Xptxas", "-v", "-o"])
                    .arg(tmp.join(format!("{}_sm{cap}.cubin", stem(module))))
                    .arg(module);
                let log = report(module, cap);
                if proc::run_logged(&mut cmd, &log, None).map_or(true, |o| o.rc != 0) {
                    print!(
                        "{}",
                        String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default())
                    );
                    *failed.lock().unwrap() = true;
                }
            });
        }
    });
    if *failed.lock().unwrap() {
        return false;
    }
    let mut summary = Vec::new();
    for (module, cap) in &jobs {
        let text = String::from_utf8_lossy(&std::fs::read(report(module, cap)).unwrap_or_default())
            .into_owned();
        for line in kernel_lines(&text, cap) {
            println!("{line}");
            summary.push(line);
        }
    }
    let spills: Vec<&String> = summary.iter().filter(|l| !l.contains(NO_SPILL)).collect();
    if !spills.is_empty() {
        eprintln!("ERROR: register spills:");
        spills.iter().for_each(|l| eprintln!("{l}"));
        return false;
    }
    println!("no spills in {} kernel compilations", summary.len());
    true
}

const NO_SPILL: &str = " 0 bytes spill stores, 0 bytes spill loads";

/// One line per kernel of a `ptxas -v` report: arch, name, registers, spills (the last
/// "stack frame" line before the kernel's "Used N registers" line).
pub fn kernel_lines(report: &str, cap: &str) -> Vec<String> {
    let (mut name, mut spill) = (String::new(), String::new());
    let mut out = Vec::new();
    for line in report.lines() {
        if line.contains("Compiling entry function") {
            if let Some((_, rest)) = line.split_once('\'') {
                name = rest.split('\'').next().unwrap_or("").to_string();
            }
        }
        if line.contains("spill stores") {
            let at = line
                .rfind("stack frame, ")
                .map_or(0, |i| i + "stack frame, ".len());
            spill = line[at..].to_string();
        }
        if let Some(used) = used_registers(line) {
            out.push(format!("sm_{cap} {name:<32} {used:<18} {spill}"));
        }
    }
    out
}

/// "Used N registers" in a line, if there.
fn used_registers(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = line[from..].find("Used ") {
        let start = from + i;
        let rest = &line[start + 5..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && rest[digits..].starts_with(" registers") {
            return Some(&line[start..start + 5 + digits + " registers".len()]);
        }
        from = start + 5;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // ptxas -v output of nvcc 13.0 for kernels/optim.cu, sm_90 (trimmed), and a spilling
    // kernel after it (its numbers made up).
    const REPORT: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'optim_adamw_bf16' for 'sm_90'
ptxas info    : Function properties for optim_adamw_bf16
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 160 bytes smem
ptxas info    : Compile time = 60.438 ms
ptxas info    : Compiling entry function 'optim_adamw_f16' for 'sm_90'
ptxas info    : Function properties for optim_adamw_f16
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 160 bytes smem
ptxas info    : Compile time = 68.802 ms
ptxas info    : Compiling entry function 'rr_spilling' for 'sm_90'
ptxas info    : Function properties for rr_spilling
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 400 bytes cmem[0]
";

    #[test]
    fn one_line_per_kernel_with_its_spills() {
        // The first two lines as the shell version's awk printed them for this report.
        let want = [
            "sm_90 optim_adamw_bf16                 Used 32 registers  0 bytes spill stores, 0 bytes spill loads",
            "sm_90 optim_adamw_f16                  Used 32 registers  0 bytes spill stores, 0 bytes spill loads",
            "sm_90 rr_spilling                      Used 255 registers 8 bytes spill stores, 8 bytes spill loads",
        ];
        let lines = kernel_lines(REPORT, "90");
        assert_eq!(lines, want);
        assert!(lines[0].contains(NO_SPILL));
        assert!(!lines[2].contains(NO_SPILL));
    }

    #[test]
    fn used_registers_needs_a_number() {
        assert_eq!(
            used_registers("Used 7 registers, used 0 barriers"),
            Some("Used 7 registers")
        );
        assert_eq!(used_registers("Used many registers"), None);
    }
}
