//! Running the steps' commands: exit statuses as the shell reports them, a log file for
//! stdout and stderr together, a time limit as `timeout` sets one (the command's whole
//! process group ended, SIGKILL after a grace period, status 124), and background process
//! groups that an early exit (or Ctrl-C) does not leave running. Every command of the xtask
//! runs through here (emu-check, check-kernels, mpi-check, gpu-run).

use std::fs::File;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// `timeout`'s exit status for a command it had to stop.
pub const TIMED_OUT: i32 = 124;
/// After SIGTERM at the time limit, how long a command may take to exit before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// The status as `$?` shows it: the exit code, or 128 + the signal that ended the process.
pub fn rc(status: ExitStatus) -> i32 {
    status
        .code()
        .or(status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// How a command run by [`run_logged`] ended.
pub struct Outcome {
    /// `$?`'s value: 124 when the time limit ended it (as `timeout` reports), 127 when it
    /// could not start (as the shell reports a missing command; the reason is in the log).
    pub rc: i32,
    /// Whole seconds, as the shell's `$SECONDS` differences.
    pub secs: u64,
}

/// Runs `cmd` with stdout and stderr to `log` (created anew), stdin closed, under `limit` if
/// given (see [`run_limited`]).
pub fn run_logged(cmd: &mut Command, log: &Path, limit: Option<Duration>) -> io::Result<Outcome> {
    let out = File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let t0 = Instant::now();
    let rc = match spawn(cmd, limit) {
        Ok(child) => wait(child, limit, GRACE)?,
        Err(e) => {
            std::fs::write(log, format!("cannot start {:?}: {e}\n", cmd.get_program()))?;
            127
        }
    };
    Ok(Outcome {
        rc,
        secs: t0.elapsed().as_secs(),
    })
}

/// Runs `cmd` with our stdout and stderr and stdin closed, ended after `limit` as `timeout`
/// ends a command: SIGTERM to its whole process group (what it started goes too: mpirun's
/// ranks, compute-sanitizer's target), SIGKILL after a grace period; the status is then 124.
/// (In its own process group a command cannot read the terminal, hence stdin closed; our
/// SIGINT, SIGTERM or SIGHUP end its group too.)
pub fn run_limited(cmd: &mut Command, limit: Duration) -> i32 {
    cmd.stdin(Stdio::null());
    match spawn(cmd, Some(limit)) {
        Ok(child) => wait(child, Some(limit), GRACE).unwrap_or(1),
        Err(e) => {
            eprintln!("cannot start {:?}: {e}", cmd.get_program());
            127
        }
    }
}

/// Starts `cmd`; under a limit, in its own process group, tracked as the group our end ends.
fn spawn(cmd: &mut Command, limit: Option<Duration>) -> io::Result<Child> {
    if limit.is_some() {
        cmd.process_group(0);
    }
    let child = cmd.spawn()?;
    if limit.is_some() {
        track(&LIMITED, child.id() as i32);
    }
    Ok(child)
}

/// Waits for `child` (started by [`spawn`]); past `limit` its process group gets SIGTERM,
/// after `grace` SIGKILL, and the status is 124.
fn wait(mut child: Child, limit: Option<Duration>, grace: Duration) -> io::Result<i32> {
    let Some(limit) = limit else {
        return child.wait().map(rc);
    };
    let pgid = child.id() as libc::pid_t;
    let deadline = Instant::now() + limit;
    let mut killed_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Err(e) => break Err(e),
            Ok(None) => {}
        }
        let now = Instant::now();
        // SAFETY: killpg has no memory effects; the group leader is not reaped yet, so the
        // group is still the command's.
        match killed_at {
            None if now >= deadline => {
                unsafe { libc::killpg(pgid, libc::SIGTERM) };
                killed_at = Some(now);
            }
            Some(t) if now >= t + grace => unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            },
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    LIMITED.store(0, Ordering::SeqCst);
    let status = status?;
    if killed_at.is_some() {
        // (whatever else of the group is left)
        // SAFETY: as above; a group without members makes it fail harmlessly.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        return Ok(TIMED_OUT);
    }
    Ok(rc(status))
}

/// Runs `cmd` with our stdout and stderr; its `$?` (127 when it cannot start).
pub fn run(cmd: &mut Command) -> i32 {
    match cmd.status() {
        Ok(status) => rc(status),
        Err(e) => {
            eprintln!("cannot start {:?}: {e}", cmd.get_program());
            127
        }
    }
}

/// The process group of the background build, 0 when none: what [`kill_background`] and the
/// signal handler end.
static BACKGROUND: AtomicI32 = AtomicI32::new(0);
/// The process group of the command running under a time limit, 0 when none: the signal
/// handler ends it (in its own group it does not see the terminal's Ctrl-C). One slot: the
/// limited commands run one at a time (each caller's main thread).
static LIMITED: AtomicI32 = AtomicI32::new(0);

/// Makes `cmd` a background job: its own process group (so that it can be ended with
/// everything it started: cargo's rustc and nvcc processes, a test binary), at scheduling
/// priority `nice` if given (absolute, as `renice -n`).
pub fn background(cmd: &mut Command, nice: Option<i32>) {
    cmd.process_group(0);
    let Some(nice) = nice else { return };
    // SAFETY: setpriority is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // (a failure leaves the priority as it was: the build still runs)
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            Ok(())
        });
    }
}

/// Records `child` (started with [`background`]) as the group to end on an early exit, and
/// makes SIGINT, SIGTERM and SIGHUP end it too: in its own process group it would not see
/// the terminal's Ctrl-C.
pub fn track_background(child: &Child) {
    track(&BACKGROUND, child.id() as i32);
}

/// Records `pgid` in `slot` and makes SIGINT, SIGTERM and SIGHUP end the tracked groups
/// before they end us.
fn track(slot: &AtomicI32, pgid: i32) {
    slot.store(pgid, Ordering::SeqCst);
    extern "C" fn on_signal(sig: libc::c_int) {
        kill_background();
        end_group(&LIMITED);
        // SAFETY: signal and raise are async-signal-safe; the default action then ends us
        // with the signal's status, as if we had not caught it.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// The background group is done (waited for): nothing to end any more.
pub fn untrack_background() {
    BACKGROUND.store(0, Ordering::SeqCst);
}

/// Ends the background group, if one is still tracked (SIGTERM to all of it).
pub fn kill_background() {
    end_group(&BACKGROUND);
}

/// SIGTERM to the group tracked in `slot`, if any; the slot is then empty.
fn end_group(slot: &AtomicI32) {
    let pgid = slot.swap(0, Ordering::SeqCst);
    if pgid > 0 {
        // SAFETY: kill is async-signal-safe and has no memory effects here.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
}

/// The CPUs this process may run on, as `nproc` counts them (no cgroup quota applied).
pub fn nproc() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return libc::CPU_COUNT(&set) as usize;
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("xtask-proc-{}-{name}", std::process::id()))
    }

    #[test]
    fn statuses_as_a_shell_gives_them() {
        let log = temp("statuses.log");
        let limit = Some(Duration::from_secs(5));
        let rc_of = |cmd: &mut Command, limit| run_logged(cmd, &log, limit).unwrap().rc;
        assert_eq!(rc_of(&mut sh("echo out; echo err >&2"), limit), 0);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
        assert_eq!(rc_of(&mut sh("exit 3"), limit), 3);
        assert_eq!(rc_of(&mut sh("exit 3"), None), 3);
        assert_eq!(rc_of(&mut sh("kill -SEGV $$"), limit), 128 + libc::SIGSEGV);
        assert_eq!(rc_of(&mut Command::new("/nonexistent/tool"), limit), 127);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.starts_with("cannot start \"/nonexistent/tool\": "),
            "{text}"
        );
        assert_eq!(run_limited(&mut sh("exit 4"), Duration::from_secs(5)), 4);
        assert_eq!(
            run_limited(
                &mut Command::new("/nonexistent/tool"),
                Duration::from_secs(5)
            ),
            127
        );
        std::fs::remove_file(&log).unwrap();
    }

    #[test]
    fn the_limit_ends_the_whole_group() {
        let log = temp("group.log");
        let pid_file = temp("group.pid");
        // a child of the command, left behind when the command itself is gone
        let script = format!("sleep 30 & echo $! >{}; sleep 30", pid_file.display());
        let t = Instant::now();
        let out = run_logged(&mut sh(&script), &log, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(out.rc, TIMED_OUT);
        assert!(t.elapsed() < Duration::from_secs(5), "stopped at its limit");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // (a zombie counts as gone: whoever reaps orphans here may take its time)
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with(['Z', 'X'])
            })
        };
        let t = Instant::now();
        while running() && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!running(), "the command's child {pid} survived its limit");
        assert_eq!(LIMITED.load(Ordering::SeqCst), 0, "nothing left tracked");
        for f in [&log, &pid_file] {
            std::fs::remove_file(f).unwrap();
        }
    }

    #[test]
    fn sigkill_after_the_grace_period() {
        let mut cmd = sh("trap '' TERM; sleep 30; sleep 30");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let limit = Some(Duration::from_millis(300));
        let t = Instant::now();
        let child = spawn(&mut cmd, limit).unwrap();
        assert_eq!(
            wait(child, limit, Duration::from_millis(500)).unwrap(),
            TIMED_OUT
        );
        assert!(t.elapsed() < Duration::from_secs(5), "SIGKILL ended it");
    }
}
