//! Running a command under a time limit, its output appended to a log, for `gpu-run` (was
//! `timeout N CMD >>LOG 2>&1` in scripts/gpu-check.sh): the whole process group stopped,
//! SIGKILL after a grace period. (The other steps run through `proc`; one wait-with-limit
//! for both is still to be made.)

use std::fs::File;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `timeout`'s exit status for a command it had to stop.
pub const TIMED_OUT: i32 = 124;
/// After SIGTERM, how long a command may take to exit before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// Runs `cmd` with stdout and stderr appended to `log`, stopped after `secs` seconds (SIGTERM
/// to its whole process group, as `timeout` does, then SIGKILL after a grace period).
/// Returns its exit status as a shell gives it: the code, 128 + a signal, 124 when the time
/// ran out, 127 when it could not be started (said in the log).
pub fn run_logged(cmd: &mut Command, secs: i64, log: &Path) -> i32 {
    let file = match File::options().create(true).append(true).open(log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("xtask: {}: {e}", log.display());
            return 127;
        }
    };
    let (out, err) = match (file.try_clone(), file.try_clone()) {
        (Ok(o), Ok(e)) => (o, e),
        _ => return 127,
    };
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut file = file;
    run_limited(cmd, secs, &mut file)
}

/// Runs `cmd` (its stdio set by the caller) under the limit; see [`run_logged`]. A failure to
/// start is written to `note`.
pub fn run_limited(cmd: &mut Command, secs: i64, note: &mut dyn Write) -> i32 {
    // Its own process group, so that a timeout stops what it started too (compute-sanitizer's
    // target, a test binary's children).
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(note, "{}: {e}", cmd.get_program().to_string_lossy());
            return 127;
        }
    };
    let pgid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(secs.max(1) as u64);
    let mut killed_at: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if killed_at.is_some() {
                    // (whatever else of the group is left)
                    unsafe { libc::killpg(pgid, libc::SIGKILL) };
                    return TIMED_OUT;
                }
                return status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            }
            Ok(None) => {}
            Err(_) => return 127,
        }
        let now = Instant::now();
        match killed_at {
            None if now >= deadline => {
                unsafe { libc::killpg(pgid, libc::SIGTERM) };
                killed_at = Some(now);
            }
            Some(t) if now >= t + GRACE => {
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_as_a_shell_gives_them() {
        let log = std::env::temp_dir().join(format!("xtask-proc-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        };
        assert_eq!(run_logged(&mut sh("echo out; echo err >&2"), 5, &log), 0);
        assert_eq!(run_logged(&mut sh("exit 3"), 5, &log), 3);
        let t = Instant::now();
        assert_eq!(
            run_logged(&mut sh("sleep 30 & sleep 30"), 1, &log),
            TIMED_OUT
        );
        assert!(t.elapsed() < Duration::from_secs(5), "stopped at its limit");
        assert_eq!(
            run_logged(&mut Command::new("/nonexistent/tool"), 5, &log),
            127
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("out\nerr\n"), "{text}");
        assert!(text.contains("/nonexistent/tool: "), "{text}");
        std::fs::remove_file(&log).unwrap();
    }
}
