//! `statfs(2)` of a mount point in a forked child, waited for with a timeout, at most
//! one per path at a time (see [`super::probe`]).

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Paths with a probe still in flight (a hung mount keeps its prober; no second one).
fn in_flight() -> &'static Mutex<HashSet<PathBuf>> {
    static SET: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Exit codes of the prober child.
const PROBE_OK: i32 = 0;
const PROBE_NOTCONN: i32 = 1;
/// Other errors: this plus the errno.
const PROBE_ERRNO_BASE: i32 = 10;

/// What the prober child found.
pub(super) enum Answer {
    Ok,
    NotConnected,
    Other(i32),
    Silent,
}

/// Reaps the prober `child` (blocking until it is gone); its exit code, if it exited.
fn reap(child: Pid) -> Option<i32> {
    loop {
        match rustix::process::waitpid(Some(child), WaitOptions::empty()) {
            Ok(Some((_, status))) => return status.exit_status(),
            Ok(None) => return None,
            Err(Errno::INTR) => continue,
            Err(_) => return None,
        }
    }
}

/// SIGKILLs the prober `child` and leaves its reaping to a thread.
fn abandon(child: Pid) {
    let _ = rustix::process::kill_process(child, Signal::KILL);
    std::thread::spawn(move || reap(child));
}

/// `statfs(path)` in a forked child process, waited for at most `timeout`.
///
/// Not a thread: a request the FUSE daemon has read but never answers blocks the caller
/// in an uninterruptible sleep, and a thread stuck there would keep the whole dms
/// process from exiting. A stuck child is SIGKILLed and left to a thread that reaps it
/// whenever the kernel lets it go; dms itself stays free to exit.
fn statfs_in_child(path: &Path, timeout: Duration) -> io::Result<Answer> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // fork(2) through libc: rustix has no fork for applications (its
    // `runtime::kernel_fork` is for a libc implementation only: it skips libc's own
    // at-fork bookkeeping). The child runs only raw system calls.
    // SAFETY: the child runs only async-signal-safe system calls (prctl, close_range,
    // statfs, _exit) on memory prepared before the fork, then exits.
    let raw = unsafe { libc::fork() };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    if raw == 0 {
        // SAFETY: raw system calls only; see above.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, c"dms-mount-probe".as_ptr());
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
            let mut buf: libc::statfs = std::mem::zeroed();
            let code = if libc::statfs(c_path.as_ptr(), &mut buf) == 0 {
                PROBE_OK
            } else {
                match *libc::__errno_location() {
                    libc::ENOTCONN | libc::ECONNABORTED => PROBE_NOTCONN,
                    e => PROBE_ERRNO_BASE + e.clamp(1, 200),
                }
            };
            libc::_exit(code)
        }
    }
    let child = Pid::from_raw(raw).ok_or_else(|| io::Error::other("fork returned PID 0"))?;
    // Nobody else reaps this child (no waitpid(-1) in dms), so its PID stays ours.
    let pidfd = match rustix::process::pidfd_open(child, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            abandon(child);
            return Err(e.into());
        }
    };
    let limit = Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    let exited = loop {
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&limit)) {
            Ok(0) => break false,
            Ok(_) => break true,
            Err(Errno::INTR) => continue,
            Err(e) => {
                abandon(child);
                return Err(e.into());
            }
        }
    };
    if !exited {
        let _ = rustix::process::kill_process(child, Signal::KILL);
        // The path stays "in flight" until the stuck prober is gone, so a hung mount
        // never collects more than one stuck prober.
        let p = path.to_owned();
        std::thread::Builder::new()
            .name("dms-probe-reaper".into())
            .spawn(move || {
                let _ = reap(child);
                in_flight()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&p);
            })?;
        return Ok(Answer::Silent);
    }
    Ok(match reap(child) {
        Some(PROBE_OK) => Answer::Ok,
        Some(PROBE_NOTCONN) => Answer::NotConnected,
        Some(code) => Answer::Other(code - PROBE_ERRNO_BASE),
        None => Answer::Silent,
    })
}

/// [`statfs_in_child`] off the async runtime, at most one per path at a time.
pub(super) async fn statfs_with_timeout(path: &Path, timeout: Duration) -> io::Result<Answer> {
    {
        let mut set = in_flight().lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(path.to_owned()) {
            return Ok(Answer::Silent);
        }
    }
    let p = path.to_owned();
    let out = tokio::task::spawn_blocking(move || statfs_in_child(&p, timeout))
        .await
        .map_err(|e| io::Error::other(format!("probe task failed: {e}")))
        .and_then(|r| r);
    // A silent prober's reaper clears the path once the prober is gone.
    if !matches!(out, Ok(Answer::Silent)) {
        in_flight()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }
    out
}
