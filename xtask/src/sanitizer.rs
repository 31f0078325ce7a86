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
    /// NO-VERDICT: the run was killed (its time limit), or its log holds no summary (the
    /// tool did not finish, or did not start).
    Missing,
    Clean,
    Findings(u64),
}

/// One test binary run under one tool (its own log): how it ended and what its log says.
#[derive(Debug)]
pub struct Run {
    /// its exit status (124: the time limit ended it)
    pub rc: i32,
    /// the log's summary ([`errors`])
    pub errors: Option<u64>,
    /// the tests' own verdict ([`tests_passed`])
    pub tests_passed: bool,
}

/// The statuses of a run ended from outside: the time limit (`timeout`'s 124; 137, SIGKILL,
/// as `timeout -k` reports its escalation).
fn killed(rc: i32) -> bool {
    rc == 124 || rc == 128 + 9
}

impl Run {
    pub fn read(rc: i32, log: &str) -> Run {
        Run {
            rc,
            errors: errors(log),
            tests_passed: tests_passed(log),
        }
    }

    /// A killed run has no verdict even if its log holds a summary: what it did not run
    /// was not checked.
    pub fn verdict(&self) -> Verdict {
        match self.errors {
            _ if killed(self.rc) => Verdict::Missing,
            None => Verdict::Missing,
            Some(0) => Verdict::Clean,
            Some(n) => Verdict::Findings(n),
        }
    }

    /// As in the summary: `NO-VERDICT (rc R[, timed out]; no ERROR SUMMARY)`,
    /// `CLEAN (0 errors)` or `FINDINGS (N errors)`.
    pub fn describe(&self) -> String {
        let rc = self.rc;
        match self.verdict() {
            Verdict::Missing => format!(
                "NO-VERDICT (rc {rc}{}; {})",
                match rc {
                    124 => ", timed out",
                    137 => ", killed",
                    _ => "",
                },
                match self.errors {
                    None => "no ERROR SUMMARY",
                    Some(_) => "a killed run's summary does not count",
                }
            ),
            Verdict::Clean => "CLEAN (0 errors)".into(),
            Verdict::Findings(n) => format!("FINDINGS ({n} errors)"),
        }
    }
}

impl Run {
    /// The run's line in the summary: `TOOL BINARY: sanitizer VERDICT; tests PASS|FAIL (see
    /// LOG)`.
    pub fn row(&self, tool: &str, binary: &str, log: &str) -> String {
        let tests = if self.tests_passed { "PASS" } else { "FAIL" };
        format!(
            "{tool} {binary}: sanitizer {}; tests {tests} (see {log})",
            self.describe()
        )
    }
}

/// A tool's verdict over its binaries' runs: CLEAN only when every run is CLEAN; FINDINGS
/// (their sum) when any run reported some; otherwise NO-VERDICT (nothing run counts as none).
pub fn tool_verdict(runs: &[Run]) -> Verdict {
    let verdicts: Vec<Verdict> = runs.iter().map(Run::verdict).collect();
    let found: u64 = verdicts
        .iter()
        .map(|v| match v {
            Verdict::Findings(n) => *n,
            _ => 0,
        })
        .sum();
    if found > 0 {
        Verdict::Findings(found)
    } else if !verdicts.is_empty() && verdicts.iter().all(|v| *v == Verdict::Clean) {
        Verdict::Clean
    } else {
        Verdict::Missing
    }
}

/// A tool's line in the summary: `TOOL: sanitizer CLEAN (0 errors); tests PASS`, FINDINGS
/// (N errors), or NO-VERDICT (K of N binaries without a verdict).
pub fn describe_tool(tool: &str, runs: &[Run]) -> String {
    let verdict = match tool_verdict(runs) {
        Verdict::Clean => "CLEAN (0 errors)".to_string(),
        Verdict::Findings(n) => format!("FINDINGS ({n} errors)"),
        Verdict::Missing => format!(
            "NO-VERDICT ({} of {} binaries without a verdict)",
            runs.iter()
                .filter(|r| r.verdict() == Verdict::Missing)
                .count(),
            runs.len()
        ),
    };
    let tests = if !runs.is_empty() && runs.iter().all(|r| r.tests_passed) {
        "PASS"
    } else {
        "FAIL"
    };
    format!("{tool}: sanitizer {verdict}; tests {tests}")
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
    // One binary's log each, as gpu-run now writes them (sanitizer-TOOL-BINARY.log).
    const GPU_KERNELS_CLEAN: &str = "\
========= COMPUTE-SANITIZER
running 12 tests
test every_kernel ... ok
test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 41.20s

========= ERROR SUMMARY: 0 errors
";
    const STATS_CLEAN: &str = "\
========= COMPUTE-SANITIZER
running 3 tests
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 3.01s

========= ERROR SUMMARY: 0 errors
";
    const OPTIM_FINDINGS: &str = "\
========= COMPUTE-SANITIZER
========= Invalid __global__ read of size 4 bytes
=========     at rr_adamw_f32+0x1c0
running 4 tests
test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 20 filtered out; finished in 2.50s

========= ERROR SUMMARY: 2 errors
";
    // The target died under the tool (SIGSEGV): no test result, no summary.
    const CRASHED: &str = "\
========= COMPUTE-SANITIZER
running 3 tests
test cuda::stats_match_cpu ... 
";
    // Ended by its limit (SIGTERM), yet the tool printed a summary of what it had seen.
    const KILLED_WITH_SUMMARY: &str = "\
========= COMPUTE-SANITIZER
running 12 tests
test every_kernel ... ok
========= ERROR SUMMARY: 0 errors
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
        assert_eq!(Run::read(0, KILLED).verdict(), Verdict::Missing);
        assert_eq!(
            Run::read(124, KILLED).describe(),
            "NO-VERDICT (rc 124, timed out; no ERROR SUMMARY)"
        );
        assert_eq!(
            Run::read(127, "").describe(),
            "NO-VERDICT (rc 127; no ERROR SUMMARY)"
        );
        assert_eq!(Run::read(0, MEMCHECK_CLEAN).describe(), "CLEAN (0 errors)");
        assert_eq!(
            Run::read(1, MEMCHECK_OOB).describe(),
            "FINDINGS (129 errors)"
        );
    }

    #[test]
    fn a_run_killed_by_its_limit_has_no_verdict_even_with_a_summary() {
        for rc in [124, 137] {
            let run = Run::read(rc, KILLED_WITH_SUMMARY);
            assert_eq!(run.errors, Some(0));
            assert_eq!(run.verdict(), Verdict::Missing, "rc {rc}");
        }
        assert_eq!(
            Run::read(124, KILLED_WITH_SUMMARY).describe(),
            "NO-VERDICT (rc 124, timed out; a killed run's summary does not count)"
        );
        assert_eq!(
            Run::read(137, KILLED).describe(),
            "NO-VERDICT (rc 137, killed; no ERROR SUMMARY)"
        );
    }

    #[test]
    fn first_binary_killed_the_others_clean_is_no_verdict() {
        // One log for the three binaries (as before) read CLEAN: the later summaries hid the
        // killed first run.
        let one_log = format!("{KILLED}{STATS_CLEAN}{STATS_CLEAN}");
        assert_eq!(errors(&one_log), Some(0));
        let runs = [
            Run::read(124, KILLED),
            Run::read(0, STATS_CLEAN),
            Run::read(0, STATS_CLEAN),
        ];
        assert_eq!(tool_verdict(&runs), Verdict::Missing);
        assert_eq!(
            describe_tool("memcheck", &runs),
            "memcheck: sanitizer NO-VERDICT (1 of 3 binaries without a verdict); tests FAIL"
        );
        assert_eq!(
            runs[0].row(
                "memcheck",
                "gpu_kernels",
                "sanitizer-memcheck-gpu_kernels.log"
            ),
            "memcheck gpu_kernels: sanitizer NO-VERDICT (rc 124, timed out; no ERROR SUMMARY); \
             tests FAIL (see sanitizer-memcheck-gpu_kernels.log)"
        );
        assert_eq!(
            runs[1].row("memcheck", "stats", "sanitizer-memcheck-stats.log"),
            "memcheck stats: sanitizer CLEAN (0 errors); tests PASS (see sanitizer-memcheck-stats.log)"
        );
    }

    #[test]
    fn a_binary_that_crashes_without_a_summary_is_no_verdict() {
        let runs = [
            Run::read(0, GPU_KERNELS_CLEAN),
            Run::read(128 + 11, CRASHED),
            Run::read(0, STATS_CLEAN),
        ];
        assert_eq!(runs[1].verdict(), Verdict::Missing);
        assert_eq!(runs[1].describe(), "NO-VERDICT (rc 139; no ERROR SUMMARY)");
        assert_eq!(tool_verdict(&runs), Verdict::Missing);
        assert_eq!(
            describe_tool("initcheck", &runs),
            "initcheck: sanitizer NO-VERDICT (1 of 3 binaries without a verdict); tests FAIL"
        );
    }

    #[test]
    fn every_binary_clean_is_clean() {
        let runs = [
            Run::read(0, GPU_KERNELS_CLEAN),
            Run::read(0, STATS_CLEAN),
            Run::read(0, STATS_CLEAN),
        ];
        assert_eq!(tool_verdict(&runs), Verdict::Clean);
        assert_eq!(
            describe_tool("synccheck", &runs),
            "synccheck: sanitizer CLEAN (0 errors); tests PASS"
        );
        // nothing run is no verdict
        assert_eq!(tool_verdict(&[]), Verdict::Missing);
    }

    #[test]
    fn findings_add_up_over_binaries_and_win_over_no_verdict() {
        let runs = [
            Run::read(0, GPU_KERNELS_CLEAN),
            Run::read(0, STATS_CLEAN),
            Run::read(0, OPTIM_FINDINGS),
        ];
        assert_eq!(tool_verdict(&runs), Verdict::Findings(2));
        assert_eq!(
            describe_tool("memcheck", &runs),
            "memcheck: sanitizer FINDINGS (2 errors); tests PASS"
        );
        let runs = [
            Run::read(1, MEMCHECK_OOB),
            Run::read(124, KILLED),
            Run::read(0, OPTIM_FINDINGS),
        ];
        assert_eq!(tool_verdict(&runs), Verdict::Findings(131));
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
