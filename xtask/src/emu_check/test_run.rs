//! One GPU test binary run on the emulated driver: its environment per mode, its log and
//! its verdict (exit status, skips, sanitizer and launch findings).

use super::{Ctx, Mode};
use crate::proc;
use crate::test_log::{self, LogSummary};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// What differs between runs of the same mode.
#[derive(Default)]
pub struct RunOpts<'a> {
    /// Appended to the name in the log file, the PASS/FAIL line and the table.
    pub tag: &'a str,
    /// The emulated driver's folder instead of target/emu/MODE (a mutation's build).
    pub lib: Option<PathBuf>,
    /// Added to (or replacing) the mode's environment.
    pub env: Vec<(&'static str, &'static str)>,
}

/// A finished run.
pub struct TestRun {
    pub rc: i32,
    pub secs: u64,
    pub log: PathBuf,
    pub summary: LogSummary,
    mode: Mode,
    /// The binary's name and the tag.
    name: String,
}

impl TestRun {
    pub fn passed(&self) -> bool {
        self.summary.passed(self.rc)
    }

    /// The PASS or FAIL line, and on failure the log's first lines that say why.
    pub fn print(&self, log_text: &str) {
        let s = &self.summary;
        let label = format!("{} {}", self.mode.name(), self.name);
        if self.passed() {
            println!("PASS {label} ({}s): {}", self.secs, s.result);
        } else {
            println!(
                "FAIL {label} (rc {}, {}s, {} skip(s), sanitizer/launch findings: {}): see {}",
                self.rc,
                self.secs,
                s.skips,
                s.findings,
                self.log.display()
            );
            for line in test_log::failure_excerpt(log_text, 12) {
                println!("{line}");
            }
        }
    }

    /// The results table's row (mode | binary | result | findings | time).
    pub fn row(&self) -> String {
        let result = match self.summary.result.as_str() {
            "" => format!("no result (rc {})", self.rc),
            r => r.to_string(),
        };
        let (mode, name, findings) = (self.mode.name(), &self.name, &self.summary.findings);
        format!("{mode} | {name} | {result} | {findings} | {} s", self.secs)
    }
}

/// The environment of a test binary in `mode`, beside what it inherits. `quick`: the
/// inherited REDREG_GPU_QUICK (the tests' quick layouts unless set otherwise).
pub fn mode_env(
    mode: Mode,
    emu: &Path,
    lib: &Path,
    base_ld: &str,
    quick: Option<&str>,
) -> Vec<(String, String)> {
    let ld = match base_ld {
        "" => lib.display().to_string(),
        base => format!("{}:{base}", lib.display()),
    };
    let quick = quick.filter(|q| !q.is_empty()).unwrap_or("1");
    let mut env: Vec<(String, String)> = [
        (
            "EMU_COVERAGE_DIR",
            emu.join(format!("coverage-{}", mode.name()))
                .display()
                .to_string(),
        ),
        ("LD_LIBRARY_PATH", ld),
        ("EMU_DEVICES", "2".into()),
        ("REDREG_REQUIRE_GPU", "1".into()),
        ("REDREG_REQUIRE_NVRTC", "1".into()),
        ("REDREG_GPU_QUICK", quick.into()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    let sanitizer = match mode {
        Mode::Plain => None,
        Mode::Asan => Some((
            "libasan.so",
            "ASAN_OPTIONS",
            "detect_leaks=0:abort_on_error=0",
        )),
        Mode::Tsan => Some((
            "libtsan.so",
            "TSAN_OPTIONS",
            "ignore_noninstrumented_modules=1 halt_on_error=1 exitcode=66",
        )),
    };
    if let Some((runtime, var, options)) = sanitizer {
        env.push(("LD_PRELOAD".into(), gcc_file(runtime)));
        env.push((var.into(), options.into()));
    }
    env
}

/// `gcc -print-file-name=NAME`: the sanitizer runtime to preload (the emulated driver is
/// instrumented, the Rust test binary is not), asked once per name.
fn gcc_file(name: &str) -> String {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache
        .entry(name.to_string())
        .or_insert_with(|| {
            let out = Command::new("gcc")
                .arg(format!("-print-file-name={name}"))
                .output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// Runs test binary `bin` (named `name`) with `args` in `mode`; the log is
/// target/emu/logs/MODE-NAME(TAG).log. Prints nothing: see [`TestRun::print`].
pub fn run(ctx: &Ctx, mode: Mode, name: &str, bin: &str, args: &[&str], opts: &RunOpts) -> TestRun {
    let log = ctx
        .logs
        .join(format!("{}-{name}{}.log", mode.name(), opts.tag));
    let lib = opts
        .lib
        .clone()
        .unwrap_or_else(|| ctx.emu.join(mode.name()));
    let quick = std::env::var("REDREG_GPU_QUICK").ok();
    let mut cmd = Command::new(bin);
    cmd.args(args).envs(mode_env(
        mode,
        &ctx.emu,
        &lib,
        &ctx.base_ld,
        quick.as_deref(),
    ));
    cmd.envs(opts.env.iter().copied());
    let outcome = proc::run_logged(&mut cmd, &log, None).unwrap_or_else(|e| {
        eprintln!("emu-check: {}: {e}", log.display());
        proc::Outcome { rc: 127, secs: 0 }
    });
    let text = read_lossy(&log);
    let name = format!("{name}{}", opts.tag);
    TestRun {
        rc: outcome.rc,
        secs: outcome.secs,
        summary: LogSummary::of(&text),
        log,
        mode,
        name,
    }
}

/// A log's text (a test may print bytes that are not UTF-8).
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(mode: Mode, base_ld: &str, quick: Option<&str>) -> HashMap<String, String> {
        mode_env(
            mode,
            Path::new("/r/target/emu"),
            Path::new("/r/target/emu/x"),
            base_ld,
            quick,
        )
        .into_iter()
        .collect()
    }

    #[test]
    fn every_mode_requires_the_gpu_and_nvrtc_on_two_devices() {
        let e = env(Mode::Plain, "/venv/lib", None);
        assert_eq!(e["LD_LIBRARY_PATH"], "/r/target/emu/x:/venv/lib");
        assert_eq!(e["EMU_COVERAGE_DIR"], "/r/target/emu/coverage-plain");
        assert_eq!(e["EMU_DEVICES"], "2");
        assert_eq!(e["REDREG_REQUIRE_GPU"], "1");
        assert_eq!(e["REDREG_REQUIRE_NVRTC"], "1");
        assert_eq!(e["REDREG_GPU_QUICK"], "1");
        assert!(!e.contains_key("LD_PRELOAD"));
        let e = env(Mode::Plain, "", Some("0"));
        assert_eq!(e["LD_LIBRARY_PATH"], "/r/target/emu/x");
        assert_eq!(e["REDREG_GPU_QUICK"], "0");
        assert_eq!(env(Mode::Plain, "", Some(""))["REDREG_GPU_QUICK"], "1");
    }

    #[test]
    fn sanitizer_modes_preload_their_runtime() {
        let e = env(Mode::Asan, "", None);
        assert_eq!(e["ASAN_OPTIONS"], "detect_leaks=0:abort_on_error=0");
        assert!(e.contains_key("LD_PRELOAD"));
        assert_eq!(e["EMU_COVERAGE_DIR"], "/r/target/emu/coverage-asan");
        let e = env(Mode::Tsan, "", None);
        assert_eq!(
            e["TSAN_OPTIONS"],
            "ignore_noninstrumented_modules=1 halt_on_error=1 exitcode=66"
        );
        assert!(!e.contains_key("ASAN_OPTIONS"));
    }
}
