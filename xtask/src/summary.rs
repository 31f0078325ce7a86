//! `$OUT/summary.txt` of `xtask gpu-run`: what is said goes to the terminal and the file
//! (bash's `| tee -a`), excerpts of logs to the file only (`>>`); and the pure parts of its
//! layout (what lines of a log it keeps, the totals).

use std::fs::File;
use std::io::Write;
use std::path::Path;

pub struct Summary {
    file: File,
}

impl Summary {
    /// Creates (empties) the file.
    pub fn create(path: &Path) -> std::io::Result<Summary> {
        Ok(Summary {
            file: File::create(path)?,
        })
    }

    /// A line for both the terminal and the summary.
    pub fn say(&mut self, line: &str) {
        println!("{line}");
        let _ = writeln!(self.file, "{line}");
    }

    /// Lines for the summary only (log excerpts).
    pub fn add(&mut self, lines: &[&str]) {
        for l in lines {
            let _ = writeln!(self.file, "{l}");
        }
    }

    /// Text for the summary only, as it is (a file's contents).
    pub fn add_text(&mut self, text: &str) {
        let _ = self.file.write_all(text.as_bytes());
    }
}

/// The lines of `log` that pass `keep`, at most `max` (bash's `grep -E … | head -N`).
pub fn lines_where(log: &str, max: usize, keep: impl Fn(&str) -> bool) -> Vec<&str> {
    log.lines().filter(|l| keep(l)).take(max).collect()
}

/// What the summary keeps of a test binary's log: its `test result` lines and any line that
/// says SKIP, panicked or borderline; 20 at most.
pub fn test_lines(log: &str) -> Vec<&str> {
    lines_where(log, 20, |l| {
        l.starts_with("test result")
            || l.contains("SKIP")
            || l.contains("panicked")
            || l.contains("borderline")
    })
}

/// The first `KERNEL-PATH: …` in a log (project's every_kernel_symbol_loads prints which path
/// each module took), from the marker to the end of its line.
pub fn kernel_path(log: &str) -> Option<&str> {
    let i = log.find("KERNEL-PATH: ")?;
    log[i..].lines().next()
}

/// The last `n` lines of a text (`tail -n N`).
pub fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The counts that the totals keep apart.
#[derive(Debug, Default, PartialEq)]
pub struct Totals {
    /// test binaries that failed, and forced-NVRTC loads that failed
    pub test_failures: u32,
    /// errors the sanitizers reported, all tools together
    pub sanitizer_findings: u64,
    /// sanitizer runs whose log holds no summary
    pub sanitizer_no_verdict: u32,
    /// sanitizer runs whose tests failed
    pub sanitizer_test_failures: u32,
}

impl Totals {
    /// The `== totals ==` block; `kpath` is project's `KERNEL-PATH: …` line, if any.
    pub fn lines(&self, kpath: Option<&str>) -> Vec<String> {
        vec![
            "== totals ==".into(),
            format!(
                "test failures: {} (binaries or forced-NVRTC loads)",
                self.test_failures
            ),
            format!(
                "sanitizer findings: {} errors; sanitizer runs without a verdict: {}; runs whose tests failed under a sanitizer: {}",
                self.sanitizer_findings, self.sanitizer_no_verdict, self.sanitizer_test_failures
            ),
            format!(
                "kernel path: {}",
                kpath
                    .map(|k| k.strip_prefix("KERNEL-PATH: ").unwrap_or(k))
                    .unwrap_or("")
            ),
        ]
    }
}

/// `date -u +%FT%TZ` for a time in seconds since the epoch.
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // days to a civil date (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // test-stats.log from the emulated rehearsal, trimmed.
    const STATS_LOG: &str = "\
running 9 tests
test cuda::stats_match_cpu ... ok
SKIP cuda::nccl: libnccl not found
test cuda::large ... ok
thread 'cuda::big' panicked at tests/stats.rs:88:5:
borderline: 3.1e-7 vs 3e-7
test result: FAILED. 8 passed; 1 failed; 0 ignored; 0 measured; 30 filtered out; finished in 12.01s
";

    #[test]
    fn keeps_test_results_skips_panics_and_borderlines() {
        assert_eq!(
            test_lines(STATS_LOG),
            [
                "SKIP cuda::nccl: libnccl not found",
                "thread 'cuda::big' panicked at tests/stats.rs:88:5:",
                "borderline: 3.1e-7 vs 3e-7",
                "test result: FAILED. 8 passed; 1 failed; 0 ignored; 0 measured; 30 filtered out; finished in 12.01s",
            ]
        );
        // `^test result` only at the start of a line; at most 20 lines
        assert!(test_lines("  test result: ok\n").is_empty());
        let many = "SKIP x\n".repeat(30);
        assert_eq!(test_lines(&many).len(), 20);
    }

    #[test]
    fn kernel_path_and_tail() {
        let log = "running 1 test\nmodules: KERNEL-PATH: fatbin (sm_90) x3\nKERNEL-PATH: nvrtc\n";
        assert_eq!(kernel_path(log), Some("KERNEL-PATH: fatbin (sm_90) x3"));
        assert_eq!(kernel_path("nothing\n"), None);
        assert_eq!(tail("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(tail("a\n", 12), ["a"]);
    }

    #[test]
    fn totals_keep_failures_findings_and_path_apart() {
        let t = Totals {
            test_failures: 2,
            sanitizer_findings: 129,
            sanitizer_no_verdict: 1,
            sanitizer_test_failures: 3,
        };
        assert_eq!(
            t.lines(Some("KERNEL-PATH: fatbin sm_90")),
            [
                "== totals ==",
                "test failures: 2 (binaries or forced-NVRTC loads)",
                "sanitizer findings: 129 errors; sanitizer runs without a verdict: 1; runs whose tests failed under a sanitizer: 3",
                "kernel path: fatbin sm_90",
            ]
        );
        assert_eq!(Totals::default().lines(None)[3], "kernel path: ");
    }

    #[test]
    fn utc_timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_796_442_986), "2026-12-05T03:56:26Z");
    }
}
