//! Running the steps' commands: exit statuses as the shell reports them, a log file for
//! stdout and stderr together, a time limit, and a background process group that an early
//! exit (or Ctrl-C) does not leave running.

use std::fs::File;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

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

/// Runs `cmd` with stdout and stderr to `log` (created anew), stdin closed, killed after
/// `limit` if given.
pub fn run_logged(cmd: &mut Command, log: &Path, limit: Option<Duration>) -> io::Result<Outcome> {
    let out = File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let t0 = Instant::now();
    let rc = match cmd.spawn() {
        Ok(child) => wait_limited(child, limit)?,
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

/// Waits for `child`; past `limit` it gets SIGTERM (as `timeout` sends: mpirun then ends
/// its ranks) and the status is 124.
fn wait_limited(mut child: Child, limit: Option<Duration>) -> io::Result<i32> {
    let Some(limit) = limit else {
        return child.wait().map(rc);
    };
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(rc(status));
        }
        if Instant::now() >= deadline {
            // SAFETY: kill has no memory effects; the child is not reaped yet, so its pid is
            // still its own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait()?;
            return Ok(124);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `cmd` with our stdout and stderr, ended after `limit` (124, as `timeout`).
pub fn run_limited(cmd: &mut Command, limit: Duration) -> i32 {
    match cmd.spawn() {
        Ok(child) => wait_limited(child, Some(limit)).unwrap_or(1),
        Err(e) => {
            eprintln!("cannot start {:?}: {e}", cmd.get_program());
            127
        }
    }
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
    BACKGROUND.store(child.id() as i32, Ordering::SeqCst);
    extern "C" fn on_signal(sig: libc::c_int) {
        kill_background();
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
    let pgid = BACKGROUND.swap(0, Ordering::SeqCst);
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
