//! Mutation tests: the crate's REAL kernels, deliberately broken (tests/emu/mutate.py), must
//! fail the mode that is responsible for that kind of bug. The test run must fail; the
//! verdict is whether its log names the expected report.

use super::test_run::{self, RunOpts};
use super::{Ctx, Mode};
use crate::{proc, test_log};
use std::process::Command;

/// (mutation, the mode that must catch it, what its log must say)
const MUTATIONS: [(&str, Mode, &str); 2] = [
    ("barrier", Mode::Tsan, "ThreadSanitizer: data race"),
    ("oob", Mode::Asan, "AddressSanitizer: heap-buffer-overflow"),
];

pub fn run(ctx: &mut Ctx) {
    // (a missing gpu_kernels binary: the run cannot start, nothing is caught: FAIL)
    let kbin = ctx
        .bins
        .iter()
        .find(|(n, _)| n == "gpu_kernels")
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    for (mutation, mode, pattern) in MUTATIONS {
        let dir = ctx.emu.join(format!("mut-{mutation}"));
        let mut mutate = Command::new("python3");
        mutate
            .arg("tests/emu/mutate.py")
            .arg("kernels")
            .arg(dir.join("kernels"))
            .arg(mutation);
        mutate.stdout(std::process::Stdio::null());
        if proc::run(&mut mutate) != 0 {
            ctx.failed = true;
            continue;
        }
        let build_log = ctx.logs.join(format!("build-mut-{mutation}.log"));
        let mut build = Command::new("bash");
        build
            .arg("tests/emu/build.sh")
            .arg(mode.name())
            .arg(&dir)
            .arg(dir.join("kernels"));
        if proc::run_logged(&mut build, &build_log, None).map_or(true, |o| o.rc != 0) {
            print!("{}", test_run::read_lossy(&build_log));
            ctx.failed = true;
            continue;
        }
        let tag = format!(" (mutation {mutation})");
        let opts = RunOpts {
            tag: &tag,
            lib: Some(dir),
            ..Default::default()
        };
        let run = test_run::run(ctx, mode, "gpu_kernels", &kbin, &[], &opts);
        let log = test_run::read_lossy(&run.log);
        if log.contains(pattern) {
            println!(
                "ok    mutation {mutation} caught by the {} mode: {pattern}",
                mode.name()
            );
            let reports = test_log::sanitizer_reports(&log);
            let m = mode.name();
            ctx.row(&format!("{m} | gpu_kernels, mutation {mutation} | caught (as it must be) | {reports} report(s) | –"));
        } else {
            // (the run's own row stays, as in the table of a run that was not caught)
            ctx.row(&run.row());
            println!(
                "FAIL  mutation {mutation} was NOT caught by the {} mode (see {})",
                mode.name(),
                run.log.display()
            );
            ctx.failed = true;
        }
    }
}
