//! `xtask gpu-run` (was `scripts/gpu-check.sh run`), on the GPU machine, from the bundle
//! (`gpu-bundle/xtask gpu-run`, $OUT set): nvidia-smi, every bundled test binary with
//! REDREG_REQUIRE_GPU=1 (default test threads), the kernel-loading path (default, then NVRTC
//! forced), and compute-sanitizer (memcheck, racecheck, initcheck, synccheck) over
//! gpu_kernels (every projection kernel), stats and optim (their CUDA tests), the
//! sanitizers' self-check on planted bugs, the benches and the PyTorch anchor; logs and
//! summary.txt under $OUT. The summary keeps test failures, sanitizer findings (the ERROR
//! SUMMARY of each tool on each binary, in its own log; a run killed by its time limit or
//! without a summary has no verdict) and the kernel path apart. The whole run fits in
//! REDREG_GPU_BUDGET_S (default 540 s; a lent GPU allows 600 s per command): steps that would
//! not fit say SKIP.

use crate::budget::Budget;
use crate::proc;
use crate::sanitizer::{self, Verdict};
use crate::summary::{self, Summary, Totals};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOOLS: [&str; 4] = ["memcheck", "racecheck", "initcheck", "synccheck"];
/// The binaries each tool runs, each into its own log with its own verdict, and their
/// arguments: gpu_kernels launches every projection kernel (each dtype x k) on a small
/// layout, stats's CUDA tests the statistics kernel and optim's the optimizer kernels.
const SANITIZED: [(&str, &[&str]); 3] = [
    ("gpu_kernels", &[]),
    ("stats", &["cuda"]),
    ("optim", &["cuda::"]),
];

/// The arguments a bundled test binary runs with, before `--nocapture`.
/// Files of backend_tests! bodies (tests/common/backends.rs): their CUDA tests only
/// (`cuda::…`, `cuda_only::…`); the optimizer's binary: its `cuda::` module.
pub fn test_filter(name: &str) -> &'static [&'static str] {
    match name {
        "test-tensor_list" | "test-controller" | "test-stats" => &["cuda"],
        // (its NVRTC compile of every module is check-kernels.sh's in CI and the forced
        // loads' below; NVRTC took over 100 s of the budget on the first H200 run)
        "test-project" => &["cuda", "--skip", "nvrtc_compiles_embedded_sources"],
        "test-optim" => &["cuda::"],
        _ => &[],
    }
}

struct Run {
    bundle: PathBuf,
    out: PathBuf,
    budget: Budget,
    summary: Summary,
    /// 0 while everything passed (the exit status)
    status: i32,
    totals: Totals,
}

fn read(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The files of `dir` whose name starts with `prefix`, sorted (bash's glob).
fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn tmpdir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The bundle: the folder of this binary when it is a `gpu-bundle` (the repository root is
/// its parent, where the run works, as the script did); otherwise `./gpu-bundle`.
fn locate_bundle() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if dir.file_name().is_some_and(|n| n == "gpu-bundle") {
            if let Some(root) = dir.parent() {
                let _ = std::env::set_current_dir(root);
            }
            return PathBuf::from("gpu-bundle");
        }
    }
    PathBuf::from("gpu-bundle")
}

pub fn main(_args: &[String]) -> i32 {
    let Some(out) = std::env::var_os("OUT").filter(|o| !o.is_empty()) else {
        eprintln!("xtask gpu-run: OUT must be set (output folder)");
        return 1;
    };
    let out = PathBuf::from(out);
    let budget = Budget::from_env();
    let bundle = locate_bundle();
    if let Err(e) = fs::create_dir_all(&out) {
        eprintln!("xtask gpu-run: {}: {e}", out.display());
        return 1;
    }
    let summary = match Summary::create(&out.join("summary.txt")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xtask gpu-run: {}/summary.txt: {e}", out.display());
            return 1;
        }
    };
    let mut r = Run {
        bundle,
        out,
        budget,
        summary,
        status: 0,
        totals: Totals::default(),
    };
    r.run()
}

impl Run {
    fn say(&mut self, line: &str) {
        self.summary.say(line);
    }

    fn fail(&mut self, line: &str) {
        self.summary.say(line);
        self.status = 1;
    }

    /// Runs a step's command for at most `secs` seconds (at least 1), its stdout and stderr
    /// in $OUT/`log` (made anew): its exit status (124: the limit ended it; 127: it could
    /// not start) and the log's text.
    fn run_step(&self, cmd: &mut Command, secs: i64, log: &str) -> (i32, String) {
        let path = self.out.join(log);
        let limit = Duration::from_secs(secs.max(1) as u64);
        let rc = match proc::run_logged(cmd, &path, Some(limit)) {
            Ok(outcome) => outcome.rc,
            Err(e) => {
                eprintln!("xtask gpu-run: {}: {e}", path.display());
                127
            }
        };
        (rc, read(&path))
    }

    fn run(&mut self) -> i32 {
        let commit = fs::read_to_string(self.bundle.join("COMMIT"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_else(|_| "unknown".into());
        self.say(&format!("commit: {commit}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.say(&format!("date: {}", summary::utc_timestamp(now)));
        self.nvidia_smi();
        self.library_path();
        let xz: Vec<String> = files_starting(&self.bundle, "")
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "xz"))
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if crate::gpu_host::unxz(&xz) != 0 {
            self.status = 1;
        }
        self.tests();
        let kpath = self.kernel_loading();
        self.sanitizers();
        self.self_check();
        for l in self.totals.lines(kpath.as_deref()) {
            self.say(&l);
        }
        self.benches();
        self.example();
        self.anchor();
        let elapsed = self.budget.elapsed_s();
        let total = self.budget.total_s;
        self.say(&format!("elapsed: {elapsed} s of a {total} s budget"));
        let overall = if self.status == 0 { "PASS" } else { "FAIL" };
        self.say(&format!("overall: {overall}"));
        self.archive();
        self.status
    }

    fn nvidia_smi(&mut self) {
        // (a hung nvidia-smi must not take the budget: 30 s each)
        self.run_step(&mut Command::new("nvidia-smi"), 30, "nvidia-smi.txt");
        let q = "nvidia-smi-query.txt";
        let (_, text) = self.run_step(
            Command::new("nvidia-smi").args([
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ]),
            30,
            q,
        );
        for l in text.lines() {
            self.say(l);
        }
        let _ = fs::remove_file(self.out.join(q));
    }

    /// Binaries built with candle-cuda link libcublas.so.13, libcublasLt.so.13,
    /// libcurand.so.10 and libcudart.so.13 dynamically: find them in the toolkit or in pip's
    /// nvidia wheels (the lib folders of NVIDIA's Python wheels: `xtask nvidia-lib-dirs`).
    fn library_path(&mut self) {
        let mut path: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        path.retain(|p| !p.as_os_str().is_empty());
        let mut dirs = vec![
            PathBuf::from("/usr/local/cuda/lib64"),
            PathBuf::from("/usr/local/cuda/targets/x86_64-linux/lib"),
        ];
        dirs.extend(crate::gpu_host::wheel_lib_dirs());
        for d in dirs {
            if d.is_dir() {
                path.insert(0, d);
            }
        }
        // cudarc's loader looks for libnccl.so, the nvidia-nccl wheels ship libnccl.so.2 only:
        // link it for tests/nccl_dist.rs (docs/distributed.md).
        if let Some(d) = path
            .iter()
            .find(|d| d.join("libnccl.so.2").is_file() && !d.join("libnccl.so").exists())
            .cloned()
        {
            let link_dir = tmpdir().join("redreg-nccl");
            let link = link_dir.join("libnccl.so");
            let _ = fs::create_dir_all(&link_dir);
            let _ = fs::remove_file(&link);
            if let Err(e) = std::os::unix::fs::symlink(d.join("libnccl.so.2"), &link) {
                eprintln!("xtask gpu-run: {}: {e}", link.display());
            }
            path.insert(0, link_dir);
        }
        let joined = std::env::join_paths(&path).unwrap_or_default();
        std::env::set_var("LD_LIBRARY_PATH", joined);
    }

    // --- tests: the default (parallel) test-thread count; each call owns its results.
    fn tests(&mut self) {
        self.say("== tests ==");
        let want = crate::env_num("REDREG_TEST_TIMEOUT", 200);
        for t in files_starting(&self.bundle, "test-") {
            if !is_executable(&t) {
                continue;
            }
            let n = name_of(&t);
            let tb = self.budget.budget_for(want, 20);
            if tb == 0 {
                self.fail(&format!("SKIP {n} (time budget spent)"));
                continue;
            }
            let (rc, text) = self.run_step(
                Command::new(&t)
                    .args(test_filter(&n))
                    .arg("--nocapture")
                    .env("REDREG_REQUIRE_GPU", "1"),
                tb,
                &format!("{n}.log"),
            );
            if rc == 0 {
                self.say(&format!("PASS {n}"));
            } else {
                self.fail(&format!("FAIL {n} (see {n}.log)"));
                self.totals.test_failures += 1;
            }
            self.summary.add(&summary::test_lines(&text));
        }
    }

    // --- kernel loading: which path each module took (fatbin / nvrtc-cubin / nvrtc-ptx),
    // printed by project's every_kernel_symbol_loads; then the NVRTC fallback forced.
    fn kernel_loading(&mut self) -> Option<String> {
        self.say("== kernel loading ==");
        let kpath =
            summary::kernel_path(&read(&self.out.join("test-project.log"))).map(String::from);
        self.say(&format!(
            "default: {}",
            kpath
                .as_deref()
                .unwrap_or("unknown (test-project did not report it)")
        ));
        let project = self.bundle.join("test-project");
        if is_executable(&project) {
            for force in ["1", "ptx"] {
                let name = format!("kernel-path-force-{force}.log");
                // (NVRTC compiles all 127 kernels: over 60 s to cubin on the first H200 run.)
                let (frc, text) = self.run_step(
                    Command::new(&project)
                        .args(["every_kernel_symbol_loads", "--nocapture"])
                        .env("REDREG_FORCE_NVRTC", force)
                        .env("REDREG_REQUIRE_GPU", "1"),
                    self.budget.tmo(180, 10),
                    &name,
                );
                let fpath = summary::kernel_path(&text).unwrap_or("");
                if frc == 0 {
                    self.say(&format!("REDREG_FORCE_NVRTC={force}: PASS {fpath}"));
                } else if text.contains("NVRTC library") {
                    self.say(&format!(
                        "REDREG_FORCE_NVRTC={force}: SKIP (no libnvrtc on this machine)"
                    ));
                } else {
                    self.fail(&format!("REDREG_FORCE_NVRTC={force}: FAIL (see {name})"));
                    let lines = summary::lines_where(&text, 3, |l| {
                        l.contains("panicked") || l.contains("could not be loaded")
                    });
                    self.summary.add(&lines);
                    self.totals.test_failures += 1;
                }
            }
        }
        kpath
    }

    /// compute-sanitizer on PATH, else the toolkit's.
    fn compute_sanitizer() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("compute-sanitizer"))
                .find(|c| is_executable(c))
        });
        on_path.or_else(|| {
            let c = PathBuf::from("/usr/local/cuda/bin/compute-sanitizer");
            c.exists().then_some(c)
        })
    }

    /// `compute-sanitizer --tool TOOL [flags] BIN ARGS --test-threads=1`, into $OUT/`log`.
    /// One test thread: the tools serialise anyway.
    fn sanitize(
        &self,
        cs: &Path,
        tool: &str,
        bin: &Path,
        args: &[&str],
        secs: i64,
        log: &str,
    ) -> (i32, String) {
        self.run_step(
            Command::new(cs)
                .args(["--tool", tool])
                .args(sanitizer::tool_flags(tool))
                .arg(bin)
                .args(args)
                .arg("--test-threads=1")
                .env("REDREG_REQUIRE_GPU", "1")
                .env("REDREG_GPU_QUICK", "1"),
            secs,
            log,
        )
    }

    // --- sanitizers: each (tool, binary) run's own verdict ("ERROR SUMMARY: N errors" in its
    // own log) apart from the verdict of the tests it ran (a test can fail without a memory
    // error and vice versa); a tool is CLEAN only when each of its binaries is (a run ended
    // by its time limit, or without a summary, has no verdict). Every kernel under every
    // tool, in seconds.
    fn sanitizers(&mut self) {
        self.say("== sanitizers ==");
        let target = self.bundle.join("test-gpu_kernels");
        let cs = Self::compute_sanitizer();
        let Some(cs) = cs.filter(|_| is_executable(&target)) else {
            self.say("SKIP compute-sanitizer (not found or no test-gpu_kernels)");
            return;
        };
        let want = crate::env_num("REDREG_SANITIZER_TIMEOUT", 90);
        for tool in TOOLS {
            let sb = self.budget.budget_for(want, 20);
            if sb == 0 {
                self.fail(&format!("{tool}: SKIP (time budget spent)"));
                continue;
            }
            let mut runs = Vec::new();
            for (i, (name, args)) in SANITIZED.into_iter().enumerate() {
                let bin = self.bundle.join(format!("test-{name}"));
                if !is_executable(&bin) {
                    self.say(&format!("{tool} {name}: SKIP (not in the bundle)"));
                    continue;
                }
                // (the first binary gets the tool's budget, the others what is left)
                let secs = if i == 0 { sb } else { self.budget.tmo(60, 10) };
                let log = format!("sanitizer-{tool}-{name}.log");
                let (rc, text) = self.sanitize(&cs, tool, &bin, args, secs, &log);
                let run = sanitizer::Run::read(rc, &text);
                self.count(&run);
                self.say(&run.row(tool, name, &log));
                let lines = summary::lines_where(&text, 5, |l| {
                    l.starts_with("test result") || l.contains("panicked")
                });
                self.summary.add(&lines);
                runs.push(run);
            }
            self.say(&sanitizer::describe_tool(tool, &runs));
        }
    }

    /// A sanitizer run's part of the totals and of the exit status.
    fn count(&mut self, run: &sanitizer::Run) {
        match run.verdict() {
            Verdict::Missing => self.totals.sanitizer_no_verdict += 1,
            Verdict::Clean => {}
            Verdict::Findings(n) => self.totals.sanitizer_findings += n,
        }
        if !run.tests_passed {
            self.totals.sanitizer_test_failures += 1;
        }
        if run.verdict() != Verdict::Clean || !run.tests_passed {
            self.status = 1;
        }
    }

    // --- the sanitizers' self-check: each planted bug must be reported by its tool, or the
    // CLEAN verdicts above mean nothing.
    fn self_check(&mut self) {
        self.say("== sanitizer self-check (planted bugs, must be reported) ==");
        let cs = Self::compute_sanitizer();
        for (mutant, tool) in [("oob", "memcheck"), ("barrier", "racecheck")] {
            let mbin = self.bundle.join(format!("mutant-{mutant}"));
            let Some(cs) = cs.as_deref().filter(|_| is_executable(&mbin)) else {
                self.say(&format!(
                    "mutant-{mutant}: SKIP (no compute-sanitizer or no mutant-{mutant} in the bundle)"
                ));
                continue;
            };
            let mb = self.budget.budget_for(60, 15);
            if mb == 0 {
                self.fail(&format!("mutant-{mutant}: SKIP (time budget spent)"));
                continue;
            }
            let name = format!("mutant-{mutant}-{tool}.log");
            let (_, text) = self.sanitize(cs, tool, &mbin, &[], mb, &name);
            let merrs = sanitizer::errors(&text).unwrap_or(0);
            if merrs > 0 {
                self.say(&format!(
                    "mutant-{mutant}: caught by {tool} ({merrs} errors), as it must be"
                ));
            } else {
                self.fail(&format!(
                    "mutant-{mutant}: NOT caught by {tool} (see {name})"
                ));
            }
            let lines = summary::lines_where(&text, 2, |l| {
                l.contains("Invalid __global__")
                    || l.contains("Race reported")
                    || l.contains("hazard")
            });
            self.summary.add(&lines);
        }
    }

    /// Every bundled bench (criterion, `--bench`; the table in $OUT/gpu-bench.md).
    fn benches(&mut self) {
        let want = crate::env_num("REDREG_BENCH_TIMEOUT", 180);
        for b in files_starting(&self.bundle, "bench-") {
            if !is_executable(&b) {
                continue;
            }
            let n = name_of(&b);
            let bb = self.budget.budget_for(want, 60);
            if bb == 0 {
                self.say(&format!("SKIP {n} (time budget spent)"));
                continue;
            }
            let (rc, _) = self.run_step(
                Command::new(&b)
                    .arg("--bench")
                    .env("REDREG_REQUIRE_GPU", "1")
                    .env("REDREG_BENCH_OUT", &self.out),
                bb,
                &format!("{n}.log"),
            );
            if rc == 0 {
                self.say(&format!("RAN {n}"));
            } else {
                self.fail(&format!("FAIL {n}"));
            }
        }
        let table = self.out.join("gpu-bench.md");
        if table.is_file() {
            let text = read(&table);
            self.summary.add_text(&text);
        }
    }

    /// The main job on the GPU (candle CUDA tensors, CudaBackend on candle's stream), when
    /// the bundle has it (REDREG_BUNDLE_CANDLE=1).
    fn example(&mut self) {
        let ex = self.bundle.join("example-balance");
        if !is_executable(&ex) {
            return;
        }
        let want = crate::env_num("REDREG_EXAMPLE_TIMEOUT", 120);
        let (rc, text) = self.run_step(
            Command::new(&ex)
                .args(["--seeds", "1", "--out"])
                .arg(self.out.join("balance-gpu.svg")),
            self.budget.tmo(want, 30),
            "example-balance.log",
        );
        if rc == 0 {
            self.say("RAN example-balance");
        } else {
            self.fail("FAIL example-balance (see example-balance.log)");
        }
        let lines = summary::lines_where(&text, usize::MAX, |l| {
            l.starts_with("device") || l.contains("time per training step") || l.contains("final")
        });
        self.summary.add(&lines);
        // On the GPU machine the example must have trained on the GPU, not fallen back.
        if !text.lines().any(|l| l.starts_with("device: CUDA")) {
            self.fail("FAIL example-balance did not run on the GPU (see its device line)");
        }
    }

    /// The anchor: what users would otherwise run (PyTorch, same GPU, same layout).
    /// (exit status 3: no PyTorch, or none with CUDA; a failure does not fail the run)
    fn anchor(&mut self) {
        let want = crate::env_num("REDREG_ANCHOR_TIMEOUT", 90);
        let (rc, text) = self.run_step(
            Command::new("python3").args(["benches/anchors/redreg_torch.py", "--device", "cuda"]),
            self.budget.tmo(want, 30),
            "anchor-torch.log",
        );
        match rc {
            0 => self.say("RAN anchor (PyTorch)"),
            3 => {
                let skip = text.lines().find(|l| l.starts_with("SKIP")).unwrap_or("");
                self.say(&format!("SKIP anchor: {skip}"));
            }
            _ => self.say("FAIL anchor (PyTorch), see anchor-torch.log"),
        }
        self.summary.add(&summary::tail(&text, 12));
    }

    /// A lent machine returns at most 8 files: summary.txt, gpu-bench.md, the example's plot
    /// and one archive of every log.
    /// (Written outside $OUT first: tar fails on a folder that changes while it reads it.)
    fn archive(&mut self) {
        let tgz = tmpdir().join("redreg-gpu-logs.tar.gz");
        let mut tar = Command::new("tar");
        tar.current_dir(&self.out).arg("czf").arg(&tgz).args([
            "--exclude=summary.txt",
            "--exclude=gpu-bench.md",
            "--exclude=*.svg",
            ".",
        ]);
        let ok = tar.status().is_ok_and(|s| s.success())
            && (fs::rename(&tgz, self.out.join("logs.tar.gz")).is_ok()
                || (fs::copy(&tgz, self.out.join("logs.tar.gz")).is_ok()
                    && fs::remove_file(&tgz).is_ok()));
        if ok {
            remove_logs(&self.out);
        } else {
            eprintln!("xtask gpu-run: the log archive failed; the logs stay in $OUT");
        }
    }
}

/// Every file under `dir` but logs.tar.gz, summary.txt, gpu-bench.md and *.svg (`find . -type f
/// ! -name … -delete`).
fn remove_logs(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let n = name_of(&p);
        match e.file_type() {
            Ok(t) if t.is_dir() => remove_logs(&p),
            Ok(t) if t.is_file() => {
                let keep = matches!(n.as_str(), "logs.tar.gz" | "summary.txt" | "gpu-bench.md")
                    || n.ends_with(".svg");
                if !keep {
                    let _ = fs::remove_file(&p);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_as_the_script_had_them() {
        assert_eq!(test_filter("test-stats"), ["cuda"]);
        assert_eq!(
            test_filter("test-project"),
            ["cuda", "--skip", "nvrtc_compiles_embedded_sources"]
        );
        assert_eq!(test_filter("test-optim"), ["cuda::"]);
        assert!(test_filter("test-gpu_kernels").is_empty());
    }
}
