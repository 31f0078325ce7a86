//! compute-sanitizer's verdicts, read from its logs (was `sanitizer_errors` and
//! `racecheck_flags` in scripts/gpu-check.sh).

/// A compute-sanitizer log's verdict: the sum of its "ERROR SUMMARY: N errors" lines and, for
/// racecheck (which prints "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"
/// instead), of its hazards; None when the log holds no summary at all.
pub fn errors(log: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0u64;
    for (marker, unit) in [
        ("ERROR SUMMARY: ", " error"),
        ("RACECHECK SUMMARY: ", " hazard"),
    ] {
        let mut rest = log;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && rest[digits..].starts_with(unit) {
                if let Ok(n) = rest[..digits].parse::<u64>() {
                    sum += n;
                    found = true;
                }
            }
        }
    }
    found.then_some(sum)
}

/// racecheck's default report missed the planted barrier race (tests/emu/mutate.py barrier:
/// "0 hazards displayed" on the first H200 run, 2026-12-04) that `--racecheck-report all`
/// reports (3,584 errors), with 0 hazards on the unbroken kernels.
pub fn tool_flags(tool: &str) -> &'static [&'static str] {
    if tool == "racecheck" {
        &["--racecheck-report", "all"]
    } else {
        &[]
    }
}

/// The sanitizer's own verdict, apart from that of the tests it ran.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The log holds no summary (the tool did not finish, or did not start).
    NoSummary,
    Clean,
    Findings(u64),
}

impl Verdict {
    pub fn of(errors: Option<u64>) -> Verdict {
        match errors {
            None => Verdict::NoSummary,
            Some(0) => Verdict::Clean,
            Some(n) => Verdict::Findings(n),
        }
    }

    /// As in the summary: `NO-VERDICT (rc R[, timed out]; no ERROR SUMMARY)`,
    /// `CLEAN (0 errors)` or `FINDINGS (N errors)`; `rc` is the exit status of the last
    /// command of the tool's run.
    pub fn describe(&self, rc: i32) -> String {
        match self {
            Verdict::NoSummary => format!(
                "NO-VERDICT (rc {rc}{}; no ERROR SUMMARY)",
                if rc == 124 { ", timed out" } else { "" }
            ),
            Verdict::Clean => "CLEAN (0 errors)".into(),
            Verdict::Findings(n) => format!("FINDINGS ({n} errors)"),
        }
    }
}

/// The verdict of the tests run under a sanitizer: some `test result: ok` and no
/// `test result: FAILED` line.
pub fn tests_passed(log: &str) -> bool {
    log.lines().any(|l| l.starts_with("test result: ok"))
        && !log.lines().any(|l| l.starts_with("test result: FAILED"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from compute-sanitizer 2025.x on the H200 (2026-12-04), trimmed.
    const MEMCHECK_CLEAN: &str = "\
========= COMPUTE-SANITIZER
running 12 tests
test every_kernel ... ok
test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 41.20s

========= ERROR SUMMARY: 0 errors
========= COMPUTE-SANITIZER
running 3 tests
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 3.01s

========= ERROR SUMMARY: 0 errors
";
    const MEMCHECK_OOB: &str = "\
========= COMPUTE-SANITIZER
========= Invalid __global__ write of size 4 bytes
=========     at rr_proj_f32_k1+0x2d0
=========     by thread (255,0,0) in block (3,0,0)
test result: FAILED. 11 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
========= ERROR SUMMARY: 128 errors
========= ERROR SUMMARY: 1 error
";
    const RACECHECK_BARRIER: &str = "\
========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at rr_stats+0x1a0
=========     and Read access at rr_stats+0x220 [3584 hazards]
test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
========= RACECHECK SUMMARY: 3584 hazards displayed (3584 errors, 0 warnings)
========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)
";
    const KILLED: &str = "\
========= COMPUTE-SANITIZER
running 12 tests
test every_kernel ... ok
";

    #[test]
    fn sums_error_summaries_and_racecheck_hazards() {
        assert_eq!(errors(MEMCHECK_CLEAN), Some(0));
        assert_eq!(errors(MEMCHECK_OOB), Some(129));
        assert_eq!(errors(RACECHECK_BARRIER), Some(3584));
        assert_eq!(
            errors("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"),
            Some(0)
        );
        // both forms in one log add up
        assert_eq!(
            errors("ERROR SUMMARY: 2 errors\nRACECHECK SUMMARY: 5 hazards displayed\n"),
            Some(7)
        );
    }

    #[test]
    fn a_log_without_a_summary_has_no_verdict() {
        assert_eq!(errors(KILLED), None);
        assert_eq!(errors(""), None);
        // a number must follow, then the unit
        assert_eq!(
            errors("ERROR SUMMARY: none\nRACECHECK SUMMARY: 3 races\n"),
            None
        );
        assert_eq!(Verdict::of(errors(KILLED)), Verdict::NoSummary);
        assert_eq!(
            Verdict::of(None).describe(124),
            "NO-VERDICT (rc 124, timed out; no ERROR SUMMARY)"
        );
        assert_eq!(
            Verdict::of(None).describe(127),
            "NO-VERDICT (rc 127; no ERROR SUMMARY)"
        );
        assert_eq!(Verdict::of(Some(0)).describe(0), "CLEAN (0 errors)");
        assert_eq!(Verdict::of(Some(129)).describe(1), "FINDINGS (129 errors)");
    }

    #[test]
    fn test_verdicts_under_a_sanitizer() {
        assert!(tests_passed(MEMCHECK_CLEAN));
        assert!(
            !tests_passed(MEMCHECK_OOB),
            "one FAILED result fails the run"
        );
        assert!(tests_passed(RACECHECK_BARRIER));
        assert!(!tests_passed(KILLED), "no result at all is a failure");
    }

    #[test]
    fn only_racecheck_gets_flags() {
        assert_eq!(tool_flags("racecheck"), ["--racecheck-report", "all"]);
        assert!(tool_flags("memcheck").is_empty());
    }
}
