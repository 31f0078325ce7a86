//! What a libtest binary's log says: the result line, skips and sanitizer findings. Pure
//! functions over the log's text, so that each verdict rule is tested on recorded samples.

/// Lines that report a sanitizer or an emulated launch failure (each one counts).
const FINDINGS: [&str; 3] = [
    "ERROR: AddressSanitizer",
    "WARNING: ThreadSanitizer",
    "emulated CUDA: launch failed",
];
/// Sanitizer reports only (what a mutation's row counts).
const SANITIZER_REPORTS: [&str; 2] = ["ERROR: AddressSanitizer", "WARNING: ThreadSanitizer"];
/// Lines worth showing when a run failed.
const FAILURE_LINES: [&str; 5] = [
    "panicked",
    "ERROR: AddressSanitizer",
    "WARNING: ThreadSanitizer",
    "emulated CUDA:",
    "SUMMARY",
];
/// What a test prints when it cannot run at the quick sizes (not a failure).
const QUICK_SKIP: &str = "REDREG_GPU_QUICK=1";

/// A test log's verdict apart from the exit status.
#[derive(Debug, PartialEq)]
pub struct LogSummary {
    /// The last `test result:` line, shortened (see [`result_line`]), with the quick-mode
    /// skips appended; empty when there is none and nothing was skipped.
    pub result: String,
    /// SKIP lines other than quick-mode skips: each one is a failure (with
    /// REDREG_REQUIRE_GPU=1 a missing GPU is already one; anything else skipped is a hole).
    pub skips: usize,
    /// `"none"` or `"N report(s)"`: sanitizer and emulated-launch failure lines.
    pub findings: String,
}

impl LogSummary {
    pub fn of(log: &str) -> Self {
        let mut result = result_line(log).unwrap_or_default();
        let skip_lines = log.lines().filter(|l| l.contains("SKIP"));
        let (quick, other): (Vec<&str>, Vec<&str>) =
            skip_lines.partition(|l| l.contains(QUICK_SKIP));
        if !quick.is_empty() {
            result = format!("{result}; {} quick-mode skip(s)", quick.len());
        }
        let findings = match count_lines(log, &FINDINGS) {
            0 => "none".to_string(),
            n => format!("{n} report(s)"),
        };
        LogSummary {
            result,
            skips: other.len(),
            findings,
        }
    }

    /// A run passes when it exited 0 and skipped nothing it should have run.
    pub fn passed(&self, rc: i32) -> bool {
        rc == 0 && self.skips == 0
    }
}

/// The last `test result: ...` line without its prefix, its timing and the zero
/// `ignored`/`measured` counts: `ok. 12 passed; 0 failed; 3 filtered out`.
pub fn result_line(log: &str) -> Option<String> {
    let line = log.lines().rfind(|l| l.starts_with("test result"))?;
    let mut r = line
        .strip_prefix("test result: ")
        .unwrap_or(line)
        .to_string();
    if let Some(i) = r.find("; finished") {
        r.truncate(i);
    }
    Some(r.replacen(" 0 ignored; 0 measured;", "", 1))
}

/// How many lines contain any of `patterns`.
pub fn count_lines(log: &str, patterns: &[&str]) -> usize {
    log.lines()
        .filter(|l| patterns.iter().any(|p| l.contains(p)))
        .count()
}

/// Sanitizer report lines (ASan errors, TSan warnings).
pub fn sanitizer_reports(log: &str) -> usize {
    count_lines(log, &SANITIZER_REPORTS)
}

/// The first `max` lines that say why a run failed, each cut to 300 characters.
pub fn failure_excerpt(log: &str, max: usize) -> Vec<String> {
    log.lines()
        .filter(|l| FAILURE_LINES.iter().any(|p| l.contains(p)))
        .take(max)
        .map(|l| l.chars().take(300).collect())
        .collect()
}

/// The last `n` lines (as `tail -n`).
pub fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from plain-stats.log and tsan-gpu_kernels (mutation barrier).log, trimmed.
    const PASSED: &str = "\
running 31 tests
test cuda::plan_matches_the_oracle ... ok
SKIP: cuda::large_plan: needs full sizes (REDREG_GPU_QUICK=1)
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

running 31 tests
test result: ok. 14 passed; 0 failed; 0 ignored; 0 measured; 17 filtered out; finished in 41.20s
";
    const RACE: &str = "\
running 12 tests
==================
WARNING: ThreadSanitizer: data race (pid=4242)
  Write of size 4 at 0x7b0c00001230 by thread T3:
SUMMARY: ThreadSanitizer: data race project.cu:211 in rr_partials
==================
WARNING: ThreadSanitizer: data race (pid=4242)
thread 'project_kernels' panicked at tests/gpu_kernels.rs:88:5:
SKIP: no CUDA device
emulated CUDA: launch failed: rr_apply (grid 4x1x1)
";

    #[test]
    fn result_line_is_the_last_one_shortened() {
        assert_eq!(
            result_line(PASSED).as_deref(),
            Some("ok. 14 passed; 0 failed; 17 filtered out")
        );
        assert_eq!(result_line(RACE), None);
        // Nonzero ignored/measured counts stay.
        let l = "test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s";
        assert_eq!(
            result_line(l).as_deref(),
            Some("FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out")
        );
    }

    #[test]
    fn quick_mode_skips_are_counted_apart() {
        let s = LogSummary::of(PASSED);
        assert_eq!(
            s.result,
            "ok. 14 passed; 0 failed; 17 filtered out; 1 quick-mode skip(s)"
        );
        assert_eq!(s.skips, 0);
        assert_eq!(s.findings, "none");
        assert!(s.passed(0));
        assert!(!s.passed(101));
    }

    #[test]
    fn other_skips_and_findings_fail() {
        let s = LogSummary::of(RACE);
        assert_eq!(s.result, "");
        assert_eq!(s.skips, 1);
        // Two TSan warnings and one failed launch; the SUMMARY line is not a report.
        assert_eq!(s.findings, "3 report(s)");
        assert_eq!(sanitizer_reports(RACE), 2);
        assert!(!s.passed(0));
        let why = failure_excerpt(RACE, 12);
        assert_eq!(why.len(), 5);
        assert!(why[1].starts_with("SUMMARY: ThreadSanitizer"));
        assert_eq!(failure_excerpt(RACE, 2).len(), 2);
        assert_eq!(
            failure_excerpt(&"panicked ".repeat(100), 1)[0]
                .chars()
                .count(),
            300
        );
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), ["b", "c"]);
        assert_eq!(tail("a\n", 5), ["a"]);
    }
}
