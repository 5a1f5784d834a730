//! [`LinuxSpawner`]: the real [`Spawner`], built on fork/execve, pidfds and `/proc`.
//!
//! # Spawning with a crash-atomic start barrier
//!
//! `std::process::Command::spawn` cannot be used: it blocks until the child has exec'd
//! (it reads an internal close-on-exec error pipe), so a `pre_exec` hook that waits for
//! the caller's confirmation would deadlock the caller. Instead [`Spawner::spawn`] forks
//! by hand:
//!
//! 1. **Before the fork**, in the parent, everything the child needs is prepared, so the
//!    child never allocates: the program path (a name without `/` is looked up in the
//!    `PATH` *of the given environment*, else `/usr/local/bin:/usr/bin:/bin`; not found is
//!    an [`ProcError::Exec`] at once and no process is created), `argv` (`argv[0]` is the
//!    program as given) and `envp` as C string arrays, the working directory, the log
//!    file (opened `O_APPEND|O_CREAT`, mode 0644) and `/dev/null`, a *gate* socket pair
//!    and an *error* pipe, all close-on-exec and all moved to descriptors >= 5.
//! 2. **In the child** (only async-signal-safe calls): reset the signal mask and every
//!    disposition to default; `setsid()` (own session and process group, so it survives
//!    dms and a terminal hang-up); `dup2` `/dev/null` to 0, the log to 1 and 2, the gate
//!    end to 3 and the error pipe to 4 (close-on-exec); close every other descriptor
//!    (`close_range(5, ~0)`, or a loop up to `RLIMIT_NOFILE`), so nothing of dms leaks into
//!    the helper and no other pending child holds a copy of *our* gate; `chdir`. Then it
//!    **blocks in `read()` on the gate**: one byte means "you are recorded, run"; end of
//!    file (the gate was dropped, or dms died and the kernel closed its end) means `_exit`
//!    with [`GATE_DROPPED_EXIT_CODE`] without running anything. After the byte it closes
//!    the gate and `execve`s with exactly the given environment. If `chdir` or `execve`
//!    fails it writes the stage and `errno` to the error pipe and `_exit(127)`s.
//! 3. **[`StartGate::release`]** sends the byte (`MSG_NOSIGNAL`: a dead child is an error,
//!    not a `SIGPIPE`), then reads the error pipe: end of file with no data means the
//!    `execve` succeeded (the close-on-exec end vanished); data means it failed: the child
//!    is reaped and the error names the program. A child that died before the byte was
//!    sent (killed while pending) is reported as an exec error as well.
//!
//! So a crash of dms at any moment either leaves a pending child, which sees end of file
//! on the gate and exits without running the program, or a helper that was released,
//! which the caller only does after recording it. One residual, documented gap: between
//! the fork and the `close_range` in another pending child (microseconds, no blocking),
//! or until another thread's `Command` child execs, a copy of a gate end can exist in a
//! second process; the gate still closes as soon as that copy does.
//!
//! # Reaping
//!
//! Each spawned child gets a tokio task that waits for its pidfd to become readable
//! (the child exited) and reaps it with `waitid(P_PIDFD, WEXITED)`, storing the status
//! for [`Spawner::wait_exit`]. So children never linger as zombies while the runtime
//! runs. (If the pidfd cannot be polled, the task falls back to a blocking `waitpid` on
//! the blocking pool.) Statuses are kept per PID and replaced when the PID is reused by
//! another child, so memory stays bounded by `pid_max`. Nothing in this crate calls
//! `waitpid(-1)`; a caller that does would steal these statuses.
//!
//! While a startup window is open ([`Spawner::begin_startup`]), this process is a child
//! subreaper, so grandchildren a helper leaves behind become our children too: one that
//! is adopted as the helper gets a reaper task like a spawned child; the others are
//! reaped, each by its PID (never "any child"), when they are found dead
//! (`linux/startup.rs`).
//!
//! # Probing
//!
//! [`Spawner::probe`] reads `/proc/PID/stat` relative to one `O_PATH` descriptor of
//! `/proc/PID` (so every file read describes the same process, even if its PID is
//! reused meanwhile), with one `read`, and parses only the fields it uses (a hand parser,
//! justified by a measurement and tested against `procfs`'s, see `linux/stat.rs`): the
//! state (a zombie is [`Probe::Zombie`], i.e. dead), the start time in clock ticks since
//! boot (field 22), the process group and session; the boot ID comes from
//! `/proc/sys/kernel/random/boot_id`, read once. `exe` and `cmdline` are best effort;
//! [`Spawner::probe_with_usage`] (the listing's probe) does not read `exe`.
//! `started_at` is derived from the start ticks and the current offset between
//! `CLOCK_REALTIME` and `CLOCK_BOOTTIME` (the clock the kernel uses for field 22), not
//! from the whole seconds of `btime`; it is informational, identities compare raw ticks.
//! `EACCES`/`EPERM` are errors ([`ProcError::PermissionDenied`]), never "dead".
//!
//! # Signalling
//!
//! [`Spawner::signal`] refuses dms's own PID ([`ProcError::SelfPid`]); [`Pid`] already
//! cannot hold 0, 1 or a negative number. Then:
//!
//! 1. open a pidfd for the PID (`ESRCH`: [`SignalOutcome::Gone`]);
//! 2. re-read `/proc/PID/stat` and compare start ticks and boot ID with the recorded
//!    identity ([`SignalOutcome::Mismatch`], nothing sent) and check it is not a zombie
//!    ([`SignalOutcome::Gone`]);
//! 3. signal through the pidfd.
//!
//! This order makes PID reuse harmless: if the process the pidfd refers to is not the
//! one verified in step 2, it must have died before the verified one got its PID, so the
//! signal fails with `ESRCH` instead of reaching anyone else.
//!
//! When the process leads its process group (pgid == pid, which holds for every helper
//! this spawner starts), the whole group is signalled with
//! `pidfd_send_signal(PIDFD_SIGNAL_PROCESS_GROUP)` (Linux >= 6.9): the group is named by
//! the pidfd's `struct pid`, not by a number, so it cannot be a recycled group, and each
//! member gets the signal once. On older kernels (`EINVAL`) it falls back to signalling
//! the leader through the pidfd and then `kill(-pgid)` while holding the verified pidfd.
//! Residual race of that fallback, stated honestly: if the leader and every member of its
//! group exit between the verification and the `kill`, and the PID is reused by a new
//! process that makes itself a group leader, all within those microseconds, the `kill`
//! reaches that group; the leader also receives the signal twice. A zombie leader is
//! treated as gone: members of its group that outlived it are not signalled.
//!
//! A SIGTERM is followed by a SIGCONT to the same process or group (as systemd does), so
//! a stopped (SIGSTOP) helper can act on it.
//!
//! [`Spawner::terminate`] escalates SIGTERM to SIGKILL after the grace period, for the
//! helper and every member of its process group, until all are gone: a member that
//! outlives its leader is found in `/proc`, proven a member, and signalled through its
//! own pidfd (`linux/group.rs` describes the proof).
//!
//! # Waiting and usage
//!
//! [`Spawner::wait_exit`] awaits the reaper for our children (so it knows the exit
//! status) and otherwise polls a verified pidfd for readability with
//! `tokio::io::unix::AsyncFd` under `tokio::time::timeout`: no sleep loops, and it works
//! for processes that are not our children (status [`ExitStatus::Unknown`]). A zombie is
//! exited. [`Spawner::usage`] reads `utime + stime`, `rss` (pages, times the page size)
//! and `num_threads` twice, `interval` apart, each time re-verifying the identity.
//!
//! # Logging
//!
//! Spawns are logged with `tracing` at info level with the program, the number of
//! arguments and the environment *keys*; environment values never reach a log.
//!
//! ```no_run
//! use dms_proc::linux::LinuxSpawner;
//! use dms_proc::{SpawnSpec, Spawner};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), dms_proc::ProcError> {
//! let spawner = LinuxSpawner::new()?;
//! let pending = spawner
//!     .spawn(&SpawnSpec {
//!         program: "sleep".into(),
//!         args: vec!["60".into()],
//!         env: vec![("PATH".into(), "/usr/bin:/bin".into())],
//!         log: "/tmp/helper.log".into(),
//!         cwd: None,
//!     })
//!     .await?;
//! let helper = pending.identity.clone();
//! // ... record `helper` durably here, then:
//! pending.gate.release().await?;
//! let stop = spawner.terminate(&helper, Duration::from_secs(10)).await?;
//! assert!(stop.stopped);
//! # Ok(()) }
//! ```

use crate::{
    ExitStatus, Pending, Pid, Probe, ProcError, ProcIdentity, ProcInfo, Signal, SignalOutcome,
    SpawnSpec, Spawner, StartGate, Usage, WaitOutcome, GATE_DROPPED_EXIT_CODE,
};
use async_trait::async_trait;
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{PidfdFlags, WaitId, WaitIdOptions};
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::unix::{AsyncFd, AsyncFdRegisterError};
use tokio::io::Interest;
use tokio::sync::watch;

mod exit_watch;
mod files;
mod group;
mod startup;
mod stat;
mod usage;

use stat::ProcStat;

/// Where the boot ID is read from.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// The search path used when the given environment has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// `PIDFD_SIGNAL_PROCESS_GROUP` from `<linux/pidfd.h>` (Linux 6.9).
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;
/// Exit code of a child whose `chdir` or `execve` failed.
const EXEC_FAILED_EXIT_CODE: i32 = 127;
/// The child's descriptor for the gate (read end).
const CHILD_GATE_FD: i32 = 3;
/// The child's descriptor for the error pipe (write end, close-on-exec).
const CHILD_ERR_FD: i32 = 4;
/// Descriptors below this are the child's fixed layout; parent-side copies are moved up.
const FIRST_FREE_FD: i32 = 5;
/// Stages reported through the error pipe.
const STAGE_SETUP: u32 = 1;
const STAGE_CHDIR: u32 = 2;
const STAGE_EXEC: u32 = 3;

/// Exit status of one of our children: `None` until the reaper has reaped it.
type StatusRx = watch::Receiver<Option<ExitStatus>>;

/// How many reaped children's exit statuses a [`LinuxSpawner`] keeps at least (the most
/// recent ones). Older ones are dropped when the table has twice as many, so a
/// long-running manager that respawns helpers keeps a bounded table. A status is wanted
/// right after the exit ([`Spawner::wait_exit`] after a signal); for a child whose
/// status was dropped, [`LinuxSpawner::child_status`] says `None` and `wait_exit` says
/// [`ExitStatus::Unknown`], as for a process that was never our child.
pub const KEPT_EXIT_STATUSES: usize = 128;

#[derive(Debug)]
struct Child {
    start_ticks: u64,
    /// Spawn order, so the oldest reaped children go first.
    seq: u64,
    status: StatusRx,
}

/// Drops the exit statuses of all but the [`KEPT_EXIT_STATUSES`] most recently spawned
/// reaped children, once there are twice as many entries (amortised: one pass per
/// [`KEPT_EXIT_STATUSES`] spawns). Running children are always kept.
fn prune_reaped(children: &mut HashMap<i32, Child>) {
    if children.len() < 2 * KEPT_EXIT_STATUSES {
        return;
    }
    let mut reaped: Vec<u64> = children
        .values()
        .filter(|c| c.status.borrow().is_some())
        .map(|c| c.seq)
        .collect();
    if reaped.len() <= KEPT_EXIT_STATUSES {
        return;
    }
    let cut = reaped.len() - KEPT_EXIT_STATUSES;
    let (_, &mut oldest_kept, _) = reaped.select_nth_unstable(cut);
    children.retain(|_, c| c.seq >= oldest_kept || c.status.borrow().is_none());
}

/// The real [`Spawner`] for Linux >= 5.4 (pidfds, `waitid(P_PIDFD)`). See the
/// [module docs](self) for the design.
///
/// Its async methods must run inside a tokio runtime with I/O and time enabled
/// (`enable_all()`): pidfds and the exec-error pipe are polled by the reactor, and each
/// spawned child gets a reaper task. Cheap to clone; clones share the child table.
#[derive(Debug, Clone)]
pub struct LinuxSpawner {
    boot_id: Arc<str>,
    /// Our children, by PID (replaced when the PID is reused by a later child); reaped
    /// ones beyond [`KEPT_EXIT_STATUSES`] are pruned.
    children: Arc<Mutex<HashMap<i32, Child>>>,
    /// The next [`Child::seq`].
    next_seq: Arc<std::sync::atomic::AtomicU64>,
    /// dms's ancestors when the spawner was made, with their start ticks (see
    /// [`Spawner::protected`]). A process gains no ancestors later (an orphan is
    /// reparented to an ancestor subreaper, or to init), so only these can be one; each
    /// is re-checked by its start ticks, since it may have exited and its PID been reused.
    ancestors: Arc<[(i32, u64)]>,
    /// The open startup windows (see `linux/startup.rs`).
    windows: startup::SharedWindows,
}

impl LinuxSpawner {
    /// A spawner; reads the boot ID and dms's ancestors once.
    pub fn new() -> Result<LinuxSpawner, ProcError> {
        let boot_id =
            std::fs::read_to_string(BOOT_ID_PATH).map_err(|source| ProcError::ProcFs {
                path: PathBuf::from(BOOT_ID_PATH),
                source,
            })?;
        Ok(LinuxSpawner {
            boot_id: Arc::from(boot_id.trim()),
            children: Arc::default(),
            next_seq: Arc::default(),
            ancestors: ancestors_with_start_ticks().into(),
            windows: Arc::default(),
        })
    }

    /// The exit status of one of our children once it has been reaped; `None` while it
    /// runs, if `who` is not a child of this spawner, or if its status was dropped (only
    /// the [`KEPT_EXIT_STATUSES`] most recent reaped children are sure to be kept).
    pub fn child_status(&self, who: &ProcIdentity) -> Option<ExitStatus> {
        self.child(who).and_then(|rx| *rx.borrow())
    }

    fn child(&self, who: &ProcIdentity) -> Option<StatusRx> {
        if *who.boot_id != *self.boot_id {
            return None;
        }
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .get(&who.pid.get())
            .filter(|c| c.start_ticks == who.start_ticks)
            .map(|c| c.status.clone())
    }

    fn identity(&self, pid: Pid, start_ticks: u64) -> ProcIdentity {
        ProcIdentity {
            pid,
            start_ticks,
            boot_id: self.boot_id.to_string(),
        }
    }

    /// [`Spawner::probe`] of `pid`, with the usage of a live process read from the same
    /// `/proc/PID/stat` (as [`Spawner::usage`] with a zero interval) when `with_usage`.
    /// `with_exe`: also read the `exe` link (a listing does not show it).
    fn probe_stat(
        &self,
        pid: Pid,
        with_usage: bool,
        with_exe: bool,
    ) -> Result<(Probe, Option<Usage>), ProcError> {
        // `kill(pid, 0)` settles a free PID in one cheap call (most entries of a scan
        // over stale PID files); a live PID, or one we may not signal, is read from
        // /proc. (A zombie passes this test and is told apart by its stat.)
        let raw = rustix::process::Pid::from_raw(pid.get()).expect("a Pid is positive");
        if rustix::process::test_kill_process(raw) == Err(Errno::SRCH) {
            return Ok((Probe::Gone, None));
        }
        // Every file is read relative to one descriptor of /proc/PID, which stays bound
        // to this process: if it exits and its PID is reused meanwhile, the reads fail
        // instead of describing the newcomer.
        let Some(dir) = open_proc_dir(pid)? else {
            return Ok((Probe::Gone, None));
        };
        let mut buf = Vec::with_capacity(STAT_BUF);
        let Some(stat) = stat_at(pid, &dir, &mut buf)? else {
            return Ok((Probe::Gone, None));
        };
        let identity = self.identity(pid, stat.starttime);
        Ok(match stat.state {
            'Z' => (Probe::Zombie(identity), None),
            'X' | 'x' => (Probe::Gone, None),
            _ => {
                if let Some(tgid) = thread_of(pid, &dir, &mut buf)? {
                    return Ok((Probe::Thread { tgid: Some(tgid) }, None));
                }
                let exe = with_exe
                    .then(|| rustix::fs::readlinkat(&dir, c"exe", Vec::new()).ok())
                    .flatten()
                    .map(|link| PathBuf::from(OsString::from_vec(link.into_bytes())));
                // Best effort, as `procfs`'s `cmdline()`: the NUL-separated arguments
                // when they are UTF-8, without empty ones.
                let cmdline = stat::read_at(&dir, c"cmdline", false, &mut buf)
                    .ok()
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .map(|text| {
                        text.split('\0')
                            .filter(|a| !a.is_empty())
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .filter(|c| !c.is_empty());
                (
                    Probe::Alive(ProcInfo {
                        identity,
                        started_at: started_at(stat.starttime),
                        pgid: stat.pgrp,
                        sid: stat.session,
                        exe,
                        cmdline,
                    }),
                    with_usage.then(|| lifetime_usage(&stat)),
                )
            }
        })
    }

    /// Re-reads `/proc/PID/stat` and classifies it against `who`.
    fn verify(&self, who: &ProcIdentity) -> Result<Verified, ProcError> {
        if *who.boot_id != *self.boot_id {
            return Ok(Verified::Mismatch);
        }
        Ok(match read_stat(who.pid)? {
            None => Verified::Gone,
            Some(stat) if matches!(stat.state, 'Z' | 'X' | 'x') => Verified::Gone,
            Some(stat) if stat.starttime != who.start_ticks => Verified::Mismatch,
            Some(stat) => Verified::Alive(stat),
        })
    }
}

enum Verified {
    Gone,
    Mismatch,
    Alive(ProcStat),
}

/// Room for a stat line (about 300 bytes) or a short command line.
const STAT_BUF: usize = 512;

/// Opens `/proc/PID` (`O_PATH`); `Ok(None)` when no process has the PID.
fn open_proc_dir(pid: Pid) -> Result<Option<OwnedFd>, ProcError> {
    match rustix::fs::open(
        format!("/proc/{pid}").as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => stat_error(pid, e),
    }
}

/// Maps an error opening or reading `/proc/PID/...`: gone, or an error naming the PID.
fn stat_error<T>(pid: Pid, e: Errno) -> Result<Option<T>, ProcError> {
    match e {
        Errno::NOENT | Errno::SRCH => Ok(None),
        Errno::ACCESS | Errno::PERM => Err(ProcError::PermissionDenied {
            pid,
            what: "read /proc/PID/stat".to_owned(),
        }),
        e => Err(ProcError::Os {
            op: "read /proc/PID/stat of",
            pid,
            source: e.into(),
        }),
    }
}

/// Reads and parses `stat` in the open `/proc/PID` directory `dir`; `Ok(None)` when the
/// process is gone.
fn stat_at(pid: Pid, dir: &OwnedFd, buf: &mut Vec<u8>) -> Result<Option<ProcStat>, ProcError> {
    let bytes = match stat::read_at(dir, c"stat", true, buf) {
        Ok(bytes) => bytes,
        Err(e) => return stat_error(pid, e),
    };
    stat::parse(bytes).map(Some).map_err(|e| ProcError::Os {
        op: "parse /proc/PID/stat of",
        pid,
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    })
}

/// Reads `/proc/PID/stat`; `Ok(None)` when no process has the PID.
fn read_stat(pid: Pid) -> Result<Option<ProcStat>, ProcError> {
    let Some(dir) = open_proc_dir(pid)? else {
        return Ok(None);
    };
    stat_at(pid, &dir, &mut Vec::with_capacity(STAT_BUF))
}

/// A pidfd of the process `pid`; `None` when no process has that PID: none at all
/// (`ESRCH`), or only a thread that is not its group's leader (`EINVAL`, or `ENOENT` on
/// Linux 6.15 and later: a thread ID is never the PID of a process, so a recorded
/// process with that PID is gone).
fn pidfd_open(pid: Pid) -> Result<Option<OwnedFd>, ProcError> {
    let raw = rustix::process::Pid::from_raw(pid.get()).expect("a Pid is positive");
    match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::SRCH | Errno::INVAL | Errno::NOENT) => Ok(None),
        Err(e) => Err(ProcError::Os {
            op: "pidfd_open",
            pid,
            source: e.into(),
        }),
    }
}

/// The process (thread-group ID) of which `pid` is a thread, when `pid` is a thread ID
/// and not a process (not its thread group's leader); `None` for a process.
///
/// `pidfd_open` refuses a non-leader thread (`EINVAL` up to Linux 6.14, `ENOENT` after):
/// one system call and a close for a process, where the `Tgid` line of
/// `/proc/PID/status` would cost a read of a file the kernel composes from many parts,
/// for every live entry of a listing. Only on a refusal is `status` (through `dir`, the
/// thread's own `/proc` directory) read, to tell a thread from a process that exited
/// meanwhile (whose `Tgid` is its own PID).
fn thread_of(pid: Pid, dir: &OwnedFd, buf: &mut Vec<u8>) -> Result<Option<i32>, ProcError> {
    let raw = rustix::process::Pid::from_raw(pid.get()).expect("a Pid is positive");
    match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(_) | Err(Errno::SRCH) => Ok(None),
        Err(Errno::INVAL | Errno::NOENT) => {
            let Ok(status) = stat::read_at(dir, c"status", false, buf) else {
                return Ok(None);
            };
            let tgid = status
                .split(|&b| b == b'\n')
                .find_map(|line| line.strip_prefix(b"Tgid:"))
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<i32>().ok());
            Ok(tgid.filter(|&t| t != pid.get()))
        }
        Err(e) => Err(ProcError::Os {
            op: "pidfd_open",
            pid,
            source: e.into(),
        }),
    }
}

fn rustix_signal(signal: Signal) -> rustix::process::Signal {
    match signal {
        Signal::Term => rustix::process::Signal::TERM,
        Signal::Kill => rustix::process::Signal::KILL,
    }
}

/// `pidfd_send_signal(fd, sig, NULL, flags)`; rustix has no flags argument.
fn pidfd_send_signal_flags(fd: &OwnedFd, signal: Signal, flags: libc::c_uint) -> Result<(), Errno> {
    pidfd_send_raw(fd, rustix_signal(signal).as_raw(), flags)
}

/// [`pidfd_send_signal_flags`] with a raw signal number.
fn pidfd_send_raw(fd: &OwnedFd, sig: i32, flags: libc::c_uint) -> Result<(), Errno> {
    // SAFETY: plain syscall with a valid descriptor, a valid signal and a null siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
    }
}

/// The current time of `clock`.
fn clock_now(clock: rustix::time::ClockId) -> Duration {
    let ts = rustix::time::clock_gettime(clock);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0).min(999_999_999),
    )
}

/// Time since boot, suspend included: the clock of `/proc/PID/stat`'s start time.
fn since_boot() -> Duration {
    clock_now(rustix::time::ClockId::Boottime)
}

/// The usage of a process from one read of its `/proc/PID/stat`, CPU percent the
/// average since it started, as ps(1) shows %CPU (both times count from boot).
fn lifetime_usage(stat: &ProcStat) -> Usage {
    let tps = procfs::ticks_per_second().max(1) as f64;
    let cpu_seconds = (stat.utime + stat.stime) as f64 / tps;
    let alive = since_boot().as_secs_f64() - stat.starttime as f64 / tps;
    let cpu_percent = if alive > 0.0 {
        (cpu_seconds / alive).max(0.0) * 100.0
    } else {
        0.0
    };
    Usage {
        cpu_seconds,
        cpu_percent,
        rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        stopped: stat.state == 'T',
    }
}

/// The instant of boot on the wall clock: `CLOCK_REALTIME` minus `CLOCK_BOOTTIME`, read
/// together (the boot clock read on both sides of the wall clock, and the midpoint
/// taken), so it is exact to well under a microsecond; `btime` of `/proc/stat` would
/// round it to whole seconds. It moves only when the wall clock is stepped (NTP slews
/// both clocks alike).
fn boot_instant() -> SystemTime {
    let before = since_boot();
    let wall = clock_now(rustix::time::ClockId::Realtime);
    let after = since_boot();
    let boot = before + (after.saturating_sub(before)) / 2;
    SystemTime::UNIX_EPOCH + wall.saturating_sub(boot)
}

/// Wall-clock time of the moment `start_ticks` after boot, through [`boot_instant`]: a
/// process start, exact to one clock tick (start ticks are rounded down to one).
fn started_at(start_ticks: u64) -> SystemTime {
    let tps = procfs::ticks_per_second().max(1);
    boot_instant()
        + Duration::from_secs(start_ticks / tps)
        + Duration::from_nanos((start_ticks % tps) * 1_000_000_000 / tps)
}

fn exec_error(program: &OsStr, source: io::Error) -> ProcError {
    ProcError::Exec {
        program: program.to_owned(),
        source,
    }
}

fn cstring(program: &OsStr, what: &str, bytes: &[u8]) -> Result<CString, ProcError> {
    CString::new(bytes).map_err(|_| {
        exec_error(
            program,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} contains a NUL byte"),
            ),
        )
    })
}

/// Finds the program: a path is used as is; a bare name is searched in the `PATH` of
/// the given environment.
fn resolve_program(spec: &SpawnSpec) -> Result<PathBuf, ProcError> {
    let program = Path::new(&spec.program);
    if spec.program.is_empty() {
        return Err(exec_error(
            &spec.program,
            io::Error::new(io::ErrorKind::InvalidInput, "empty program name"),
        ));
    }
    if spec.program.as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let path = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    for dir in path.as_bytes().split(|&b| b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        // The child runs in its working directory (`/` by default), not in dms's: a
        // relative `PATH` entry (`.`, or empty) is resolved here, against dms's.
        let candidate = dir.join(program);
        let candidate = std::path::absolute(&candidate).unwrap_or(candidate);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return Ok(candidate);
        }
    }
    Err(exec_error(
        &spec.program,
        io::Error::new(
            io::ErrorKind::NotFound,
            "no executable of that name in the PATH of the given environment",
        ),
    ))
}

/// Moves a descriptor to `FIRST_FREE_FD` or above, close-on-exec.
fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FIRST_FREE_FD {
        Ok(fd)
    } else {
        Ok(rustix::io::fcntl_dupfd_cloexec(&fd, FIRST_FREE_FD)?)
    }
}

/// Everything the child needs, prepared before the fork so the child never allocates.
struct ChildPlan {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    devnull: OwnedFd,
    log: OwnedFd,
    gate_r: OwnedFd,
    err_w: OwnedFd,
    max_fd: i32,
}

/// The parent's ends, kept by the [`StartGate`].
struct ParentEnds {
    gate_w: OwnedFd,
    err_r: OwnedFd,
}

fn prepare(spec: &SpawnSpec) -> Result<(ChildPlan, ParentEnds), ProcError> {
    let program = spec.program.as_os_str();
    let path = resolve_program(spec)?;
    let path = cstring(program, "the program path", path.as_os_str().as_bytes())?;
    let mut argv = vec![cstring(program, "the program", program.as_bytes())?];
    for arg in &spec.args {
        argv.push(cstring(program, "an argument", arg.as_bytes())?);
    }
    let mut envp = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        let key = k.as_bytes();
        if key.is_empty() || key.contains(&b'=') {
            return Err(exec_error(
                program,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("invalid environment key {k:?} (empty or containing '=')"),
                ),
            ));
        }
        let mut entry = Vec::with_capacity(key.len() + 1 + v.len());
        entry.extend_from_slice(key);
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        envp.push(cstring(
            program,
            &format!("environment variable {k:?}"),
            &entry,
        )?);
    }
    let cwd_path = spec.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
    let cwd = cstring(
        program,
        "the working directory",
        cwd_path.as_os_str().as_bytes(),
    )?;

    let log = files::open_log(&spec.log)?;
    let setup = |what: &str, e: io::Error| {
        exec_error(program, io::Error::new(e.kind(), format!("{what}: {e}")))
    };
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| setup("open /dev/null", e))?;
    let (gate_w, gate_r) = UnixStream::pair().map_err(|e| setup("socketpair", e))?;
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| setup("pipe", e.into()))?;
    rustix::io::ioctl_fionbio(&err_r, true).map_err(|e| setup("ioctl FIONBIO", e.into()))?;

    let high = |fd: OwnedFd| high_fd(fd).map_err(|e| setup("fcntl F_DUPFD_CLOEXEC", e));
    let max_fd = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(1 << 20, |n| n.min(1 << 20) as i32);

    let argv_ptrs = argv
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp_ptrs = envp
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    Ok((
        ChildPlan {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            cwd,
            devnull: high(devnull.into())?,
            log: high(log.into())?,
            gate_r: high(gate_r.into())?,
            err_w: high(err_w)?,
            max_fd,
        },
        ParentEnds {
            gate_w: gate_w.into(),
            err_r,
        },
    ))
}

/// Reports `stage` and the current `errno` on `fd` and exits with 127.
///
/// # Safety
///
/// Only for the forked child: async-signal-safe calls only.
unsafe fn child_fail(fd: i32, stage: u32) -> ! {
    // SAFETY: errno location is valid for the calling thread.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes from a valid buffer, then exits without running destructors.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXEC_FAILED_EXIT_CODE)
    }
}

/// Sets the disposition of `sig` to the default, including the two real-time signals
/// glibc reserves for itself (32, 33), which its `signal()` wrapper refuses to touch.
///
/// # Safety
///
/// Async-signal-safe; meant for the forked child.
#[cfg(target_arch = "x86_64")]
unsafe fn reset_disposition(sig: i32) {
    /// The kernel's `struct sigaction` on x86_64.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let act = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: raw rt_sigaction with a valid struct and the kernel's sigset size (8).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &raw const act,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Sets the disposition of `sig` to the default (glibc's reserved signals excepted).
///
/// # Safety
///
/// Async-signal-safe; meant for the forked child.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn reset_disposition(sig: i32) {
    // SAFETY: plain signal() call.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// The forked child: set up, wait at the gate, exec.
///
/// # Safety
///
/// Must only run in the child right after `fork()`: it uses only async-signal-safe
/// calls and never returns.
unsafe fn child_main(plan: &ChildPlan) -> ! {
    // SAFETY (whole body): raw async-signal-safe syscalls on descriptors and C strings
    // prepared by the parent; no allocation, no locks.
    unsafe {
        // Default signal handling: the helper must not inherit dms's mask or ignored
        // signals (Rust ignores SIGPIPE), and a pending child must die of SIGTERM.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                reset_disposition(sig);
            }
        }
        let err_src = plan.err_w.as_raw_fd();
        if libc::dup2(err_src, CHILD_ERR_FD) < 0 {
            child_fail(err_src, STAGE_SETUP);
        }
        if libc::fcntl(CHILD_ERR_FD, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            child_fail(CHILD_ERR_FD, STAGE_SETUP);
        }
        if libc::setsid() < 0 {
            child_fail(CHILD_ERR_FD, STAGE_SETUP);
        }
        let moves = [
            (plan.devnull.as_raw_fd(), 0),
            (plan.log.as_raw_fd(), 1),
            (plan.log.as_raw_fd(), 2),
            (plan.gate_r.as_raw_fd(), CHILD_GATE_FD),
        ];
        for (from, to) in moves {
            if libc::dup2(from, to) < 0 {
                child_fail(CHILD_ERR_FD, STAGE_SETUP);
            }
        }
        // Close everything else: no leak into the helper, and no copy of another
        // pending child's gate kept alive by us.
        if libc::syscall(
            libc::SYS_close_range,
            FIRST_FREE_FD as libc::c_uint,
            libc::c_uint::MAX,
            0,
        ) != 0
        {
            for fd in FIRST_FREE_FD..plan.max_fd {
                libc::close(fd);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            child_fail(CHILD_ERR_FD, STAGE_CHDIR);
        }
        // The start barrier.
        let mut byte = 0u8;
        loop {
            let n = libc::read(CHILD_GATE_FD, (&raw mut byte).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // End of file (gate dropped, or dms died) or an error: run nothing.
            libc::_exit(GATE_DROPPED_EXIT_CODE);
        }
        libc::close(CHILD_GATE_FD);
        libc::execve(
            plan.path.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
        child_fail(CHILD_ERR_FD, STAGE_EXEC)
    }
}

/// Registers an owned descriptor with the tokio reactor for readability.
fn readable_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, AsyncFdRegisterError<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that it alone closes, and its
    // `as_raw_fd` always returns the same number while the `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
}

fn convert_status(st: &rustix::process::WaitIdStatus) -> ExitStatus {
    if let Some(code) = st.exit_status() {
        ExitStatus::Code(code)
    } else if let Some(sig) = st.terminating_signal() {
        ExitStatus::Signaled(sig)
    } else {
        ExitStatus::Unknown
    }
}

/// Blocking `waitpid(pid)`: the fallback reaper.
fn blocking_reap(pid: i32) -> ExitStatus {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return ExitStatus::Unknown;
    }
    if libc::WIFEXITED(status) {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        ExitStatus::Unknown
    }
}

/// Waits for our child to exit and reaps it.
async fn reap(pid: i32, pidfd: Option<OwnedFd>) -> ExitStatus {
    if let Some(fd) = pidfd {
        if let Ok(afd) = readable_fd(fd) {
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    break;
                };
                let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
                match rustix::process::waitid(WaitId::PidFd(afd.get_ref().as_fd()), opts) {
                    Ok(Some(st)) => return convert_status(&st),
                    Ok(None) => guard.clear_ready(),
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        tracing::warn!(pid, error = %e, "waitid on pidfd failed; reaping with waitpid");
                        break;
                    }
                }
            }
        }
    }
    tokio::task::spawn_blocking(move || blocking_reap(pid))
        .await
        .unwrap_or(ExitStatus::Unknown)
}

#[async_trait]
impl Spawner for LinuxSpawner {
    fn preflight(&self, spec: &SpawnSpec) -> Result<(), ProcError> {
        files::preflight(spec)
    }

    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        let (plan, ends) = prepare(spec)?;
        // SAFETY: the child runs only `child_main`, which is async-signal-safe and never
        // returns; the parent continues normally.
        let forked = unsafe { libc::fork() };
        if forked < 0 {
            return Err(exec_error(
                &spec.program,
                io::Error::new(
                    io::Error::last_os_error().kind(),
                    format!("fork: {}", io::Error::last_os_error()),
                ),
            ));
        }
        if forked == 0 {
            // SAFETY: we are the freshly forked child.
            unsafe { child_main(&plan) }
        }
        drop(plan); // closes the child's ends in the parent
        let pid = match Pid::try_from(forked) {
            Ok(pid) => pid,
            Err(e) => {
                // Only possible if pid_max was raised after dms read it: the child is at
                // the barrier, so kill and reap it rather than run what we cannot track.
                // SAFETY: our own child, not yet reaped; valid out pointer.
                unsafe {
                    libc::kill(forked, libc::SIGKILL);
                    libc::waitpid(forked, &mut 0, 0);
                }
                return Err(exec_error(
                    &spec.program,
                    io::Error::other(format!("the new child has an untrackable PID: {e}")),
                ));
            }
        };

        // Our child cannot be reaped by anyone else, so the PID is stable until we reap.
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(%pid, error = %e, "pidfd_open of a new child failed; reaping with waitpid");
                None
            }
        };
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = reap(pid.get(), pidfd).await;
            tracing::debug!(%pid, ?status, "reaped helper");
            tx.send_replace(Some(status));
        });
        let start_ticks = match read_stat(pid) {
            Ok(Some(stat)) => stat.starttime,
            other => {
                // Cannot identify it: do not leave it behind.
                // SAFETY: our own child, not yet reaped.
                unsafe { libc::kill(pid.get(), libc::SIGKILL) };
                return Err(exec_error(
                    &spec.program,
                    io::Error::other(format!(
                        "cannot read /proc/{pid}/stat of the new child: {:?}",
                        other.err()
                    )),
                ));
            }
        };
        {
            let seq = self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            prune_reaped(&mut children);
            children.insert(
                pid.get(),
                Child {
                    start_ticks,
                    seq,
                    status: rx.clone(),
                },
            );
        }
        let identity = self.identity(pid, start_ticks);
        tracing::info!(
            %pid,
            start_ticks,
            program = ?spec.program,
            args = spec.args.len(),
            env_keys = ?spec.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            log = %spec.log.display(),
            "helper created, held at the start barrier"
        );
        Ok(Pending {
            identity,
            gate: Box::new(LinuxGate {
                pid,
                program: spec.program.clone(),
                ends: Some(ends),
                status: rx,
            }),
        })
    }

    async fn probe(&self, pid: Pid) -> Result<Probe, ProcError> {
        self.probe_stat(pid, false, true).map(|(probe, _)| probe)
    }

    async fn probe_with_usage(&self, pid: Pid) -> Result<(Probe, Option<Usage>), ProcError> {
        // The usage columns come from the same read of /proc/PID/stat as the identity;
        // the `exe` link is not read (a listing does not show it).
        self.probe_stat(pid, true, false)
    }

    async fn signal(&self, who: &ProcIdentity, signal: Signal) -> Result<SignalOutcome, ProcError> {
        if u32::try_from(who.pid.get()) == Ok(std::process::id()) {
            return Err(ProcError::SelfPid(who.pid));
        }
        if let Some(why) = self.protected(who.pid) {
            return Err(ProcError::Protected { pid: who.pid, why });
        }
        if *who.boot_id != *self.boot_id {
            tracing::info!(pid = %who.pid, "not signalling: recorded in another boot");
            return Ok(SignalOutcome::Mismatch);
        }
        let Some(pidfd) = pidfd_open(who.pid)? else {
            return Ok(SignalOutcome::Gone);
        };
        let stat = match self.verify(who)? {
            Verified::Gone => return Ok(SignalOutcome::Gone),
            Verified::Mismatch => {
                tracing::warn!(
                    pid = %who.pid,
                    start_ticks = who.start_ticks,
                    "not signalling: the PID now belongs to another process"
                );
                return Ok(SignalOutcome::Mismatch);
            }
            Verified::Alive(stat) => stat,
        };
        let leads_group = stat.pgrp == who.pid.get();
        let denied = || ProcError::PermissionDenied {
            pid: who.pid,
            what: format!("send {}", signal.name()),
        };
        let os = |e: Errno| ProcError::Os {
            op: "pidfd_send_signal to",
            pid: who.pid,
            source: e.into(),
        };
        let to_leader = || match rustix::process::pidfd_send_signal(&pidfd, rustix_signal(signal)) {
            Ok(()) => Ok(SignalOutcome::Delivered),
            Err(Errno::SRCH) => Ok(SignalOutcome::Gone),
            Err(Errno::PERM) => Err(denied()),
            Err(e) => Err(os(e)),
        };
        let outcome = if leads_group {
            match pidfd_send_signal_flags(&pidfd, signal, PIDFD_SIGNAL_PROCESS_GROUP) {
                Ok(()) => Ok(SignalOutcome::Delivered),
                // The leader left its group meanwhile (or the group is gone): the leader
                // alone, still through the verified pidfd.
                Err(Errno::SRCH) => to_leader(),
                Err(Errno::PERM) => Err(denied()),
                Err(Errno::INVAL) => {
                    // Kernel < 6.9: leader through the pidfd, then the group by number
                    // while holding the verified pidfd (see the module docs for the race).
                    let out = to_leader()?;
                    if out == SignalOutcome::Delivered {
                        let pgid = rustix::process::Pid::from_raw(who.pid.get())
                            .expect("a Pid is positive");
                        match rustix::process::kill_process_group(pgid, rustix_signal(signal)) {
                            Ok(()) | Err(Errno::SRCH) | Err(Errno::PERM) => {}
                            Err(e) => {
                                tracing::warn!(pid = %who.pid, error = %e, "kill(-pgid) failed")
                            }
                        }
                    }
                    Ok(out)
                }
                Err(e) => Err(os(e)),
            }
        } else {
            to_leader()
        }?;
        if signal == Signal::Term && outcome == SignalOutcome::Delivered {
            // As systemd does: a stopped (SIGSTOP) helper cannot act on SIGTERM until it
            // is continued. Same target as the SIGTERM (the group when it leads one).
            let cont = rustix::process::Signal::CONT;
            match leads_group
                .then(|| pidfd_send_raw(&pidfd, cont.as_raw(), PIDFD_SIGNAL_PROCESS_GROUP))
            {
                Some(Ok(())) => {}
                // Kernel < 6.9, as for the SIGTERM: the leader, then the group by number
                // while holding the verified pidfd.
                Some(Err(Errno::INVAL)) => {
                    let _ = rustix::process::pidfd_send_signal(&pidfd, cont);
                    let pgid =
                        rustix::process::Pid::from_raw(who.pid.get()).expect("a Pid is positive");
                    let _ = rustix::process::kill_process_group(pgid, cont);
                }
                // The group is gone (or the leader left it): the leader alone.
                Some(Err(_)) | None => {
                    let _ = rustix::process::pidfd_send_signal(&pidfd, cont);
                }
            }
        }
        tracing::info!(
            pid = %who.pid,
            start_ticks = who.start_ticks,
            signal = signal.name(),
            group = leads_group,
            ?outcome,
            "signal"
        );
        Ok(outcome)
    }

    async fn wait_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError> {
        let wait = async {
            if let Some(mut rx) = self.child(who) {
                // Our child: the reaper knows its status.
                let reaped = rx.wait_for(Option::is_some).await.map(|s| *s);
                return match reaped {
                    Ok(status) => Ok(WaitOutcome::Exited(status.unwrap_or(ExitStatus::Unknown))),
                    // The reaper task is gone (runtime shutting down): poll the pidfd.
                    Err(_) => self.wait_foreign(who).await,
                };
            }
            self.wait_foreign(who).await
        };
        match timeout {
            None => wait.await,
            Some(limit) => tokio::time::timeout(limit, wait)
                .await
                .unwrap_or(Ok(WaitOutcome::TimedOut)),
        }
    }

    async fn usage(
        &self,
        who: &ProcIdentity,
        interval: Duration,
    ) -> Result<Option<Usage>, ProcError> {
        let sample = || -> Result<Option<(ProcStat, Instant)>, ProcError> {
            Ok(match self.verify(who)? {
                Verified::Alive(stat) => Some((stat, Instant::now())),
                Verified::Gone | Verified::Mismatch => None,
            })
        };
        let Some((first, t0)) = sample()? else {
            return Ok(None);
        };
        if interval.is_zero() {
            return Ok(Some(lifetime_usage(&first)));
        }
        let tps = procfs::ticks_per_second().max(1) as f64;
        let cpu = |s: &ProcStat| (s.utime + s.stime) as f64 / tps;
        tokio::time::sleep(interval).await;
        let Some((second, t1)) = sample()? else {
            return Ok(None);
        };
        let wall = t1.duration_since(t0).as_secs_f64();
        let cpu_percent = if wall > 0.0 {
            ((cpu(&second) - cpu(&first)).max(0.0) / wall) * 100.0
        } else {
            0.0
        };
        Ok(Some(Usage {
            cpu_seconds: cpu(&second),
            cpu_percent,
            rss_bytes: second.rss.saturating_mul(procfs::page_size()),
            threads: u64::try_from(second.num_threads).unwrap_or(0),
            stopped: second.state == 'T',
        }))
    }

    async fn group_members(&self, leader: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        Ok(self.proven_group_members(leader))
    }

    fn begin_startup(&self) -> crate::StartupWindow {
        self.open_startup_window()
    }

    async fn settle(
        &self,
        leader: &ProcIdentity,
        limit: Duration,
    ) -> Result<crate::Settled, ProcError> {
        self.settle_leader(leader, limit).await
    }

    async fn orphans(
        &self,
        leader: &ProcIdentity,
        window: &crate::StartupWindow,
    ) -> Result<crate::Orphans, ProcError> {
        self.find_orphans(leader, window)
    }

    async fn fuse_children(&self, parent: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        Ok(self.find_fuse_children(parent))
    }

    async fn adopt_orphan(&self, orphan: &ProcIdentity) -> Result<(), ProcError> {
        self.adopt_child(orphan)
    }

    /// SIGTERM (then SIGCONT), `grace`, SIGKILL, `kill_wait`, applied to the helper and
    /// every member of its process group until all are gone (see `linux/group.rs`).
    async fn terminate_with(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<crate::StopOutcome, ProcError> {
        self.terminate_group(who, grace, kill_wait).await
    }

    fn exit_watch(
        &self,
        exited: crate::ExitSender,
    ) -> Result<Option<Box<dyn crate::ExitWatch>>, ProcError> {
        Ok(Some(Box::new(exit_watch::LinuxExitWatch::start(
            self.clone(),
            exited,
        )?)))
    }

    fn protected(&self, pid: Pid) -> Option<String> {
        if u32::try_from(pid.get()) == Ok(std::process::id()) {
            return Some("it is dms itself".into());
        }
        // Only a PID that was an ancestor can be one, if it is still that process: one
        // read of /proc for such a PID, none for any other (every entry of a scan).
        let &(_, ticks) = self.ancestors.iter().find(|(p, _)| *p == pid.get())?;
        // (Start ticks unknown: the ancestor's stat could not be read; as the walk did,
        // protect the PID itself.)
        let still = ticks == u64::MAX
            || matches!(read_stat(pid), Ok(Some(stat)) if stat.starttime == ticks);
        still
            .then(|| "it is an ancestor of dms (the process that runs dms, or one above it)".into())
    }

    fn usage_reader(
        &self,
        who: &ProcIdentity,
    ) -> Result<Option<Box<dyn crate::UsageReader>>, ProcError> {
        self.open_usage_reader(who)
    }

    fn boot_id(&self) -> &str {
        &self.boot_id
    }
}

impl LinuxSpawner {
    /// Waits for a process that is not (or no longer) tracked as our child, by polling a
    /// verified pidfd.
    async fn wait_foreign(&self, who: &ProcIdentity) -> Result<WaitOutcome, ProcError> {
        let gone = Ok(WaitOutcome::Exited(ExitStatus::Unknown));
        let Some(pidfd) = pidfd_open(who.pid)? else {
            return gone;
        };
        match self.verify(who)? {
            Verified::Gone | Verified::Mismatch => return gone,
            Verified::Alive(_) => {}
        }
        match readable_fd(pidfd) {
            Ok(afd) => {
                // Readable means exited; the guard is dropped with the descriptor.
                let _exited = afd.readable().await.map_err(|source| ProcError::Os {
                    op: "poll the pidfd of",
                    pid: who.pid,
                    source,
                })?;
                gone
            }
            Err(e) => {
                // The reactor refused this fd: poll it on the blocking pool instead. (On a
                // timeout that thread keeps waiting until the process exits.)
                let (fd, _) = e.into_parts();
                let pid = who.pid;
                tokio::task::spawn_blocking(move || loop {
                    let mut fds = [rustix::event::PollFd::new(
                        &fd,
                        rustix::event::PollFlags::IN,
                    )];
                    match rustix::event::poll(&mut fds, None) {
                        Ok(_) => return Ok(()),
                        Err(Errno::INTR) => continue,
                        Err(e) => return Err(e),
                    }
                })
                .await
                .map_err(|e| ProcError::Os {
                    op: "poll the pidfd of",
                    pid,
                    source: io::Error::other(e.to_string()),
                })?
                .map_err(|e| ProcError::Os {
                    op: "poll the pidfd of",
                    pid,
                    source: e.into(),
                })?;
                gone
            }
        }
    }
}

/// The start barrier of a real child. Dropping it closes the gate: the child exits.
struct LinuxGate {
    pid: Pid,
    program: OsString,
    ends: Option<ParentEnds>,
    status: StatusRx,
}

impl LinuxGate {
    /// Waits until the reaper has reaped the child.
    async fn reaped(&mut self) -> Option<ExitStatus> {
        self.status
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|s| *s)
    }
}

/// Reads the error pipe to its end: `None` at end of file with no data (exec happened
/// or the child died), else the reported stage and errno.
async fn read_exec_report(err_r: OwnedFd) -> io::Result<Option<(u32, i32)>> {
    let afd = match readable_fd(err_r) {
        Ok(afd) => afd,
        Err(e) => {
            // The reactor refused this fd: read on the blocking pool instead.
            let (fd, _) = e.into_parts();
            return tokio::task::spawn_blocking(move || read_exec_report_blocking(fd))
                .await
                .map_err(io::Error::other)?;
        }
    };
    let mut buf = [0u8; 8];
    let mut got = 0;
    loop {
        let mut guard = afd.readable().await?;
        match guard
            .try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf[got..]).map_err(io::Error::from))
        {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                got += n;
                if got == buf.len() {
                    break;
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    if got < buf.len() {
        return Ok(None);
    }
    let stage = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
    Ok(Some((stage, errno)))
}

/// [`read_exec_report`] without the reactor.
fn read_exec_report_blocking(fd: OwnedFd) -> io::Result<Option<(u32, i32)>> {
    rustix::io::ioctl_fionbio(&fd, false)?;
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&fd, &mut buf[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let stage = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
    Ok(Some((stage, errno)))
}

#[async_trait]
impl StartGate for LinuxGate {
    async fn release(mut self: Box<Self>) -> Result<(), ProcError> {
        let ParentEnds { gate_w, err_r } = self.ends.take().expect("released once");
        let byte = [1u8];
        // SAFETY: sends one byte from a valid buffer on our socket; MSG_NOSIGNAL turns a
        // dead peer into EPIPE instead of SIGPIPE.
        let sent = unsafe {
            libc::send(
                gate_w.as_raw_fd(),
                byte.as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        let send_error = (sent != 1).then(io::Error::last_os_error);
        drop(gate_w);
        let report = read_exec_report(err_r)
            .await
            .map_err(|e| exec_error(&self.program, e))?;
        let pid = self.pid;
        match (report, send_error) {
            (None, None) => {
                tracing::info!(%pid, program = ?self.program, "helper released: program started");
                Ok(())
            }
            (Some((stage, errno)), _) => {
                let status = self.reaped().await;
                let err = io::Error::from_raw_os_error(errno);
                let source = match stage {
                    STAGE_EXEC => err,
                    STAGE_CHDIR => io::Error::new(
                        err.kind(),
                        format!("cannot enter the working directory: {err}"),
                    ),
                    _ => io::Error::new(err.kind(), format!("child setup failed: {err}")),
                };
                tracing::warn!(%pid, program = ?self.program, error = %source, ?status, "helper failed to start");
                Err(exec_error(&self.program, source))
            }
            (None, Some(e)) => {
                let status = self.reaped().await;
                Err(exec_error(
                    &self.program,
                    io::Error::other(format!(
                        "the helper (PID {pid}) died at the start barrier before its program ran \
                         (status {status:?}; release: {e})"
                    )),
                ))
            }
        }
    }
}

/// The PIDs of dms's ancestors: its parent, the parent's parent, and so on up to (not
/// including) PID 1, read from `/proc/PID/stat` at the time of the call.
pub fn ancestors() -> Vec<i32> {
    ancestors_with_start_ticks()
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// [`ancestors`], each with its start ticks (an ancestor whose stat cannot be read ends
/// the chain, listed with `u64::MAX`: start ticks unknown).
fn ancestors_with_start_ticks() -> Vec<(i32, u64)> {
    let mut out: Vec<(i32, u64)> = Vec::new();
    let mut pid = std::os::unix::process::parent_id() as i32;
    // A PID chain is short; the bound only guards against a cycle seen through races.
    while pid > 1 && out.len() < 4096 && !out.iter().any(|(p, _)| *p == pid) {
        match Pid::try_from(pid).ok().map(read_stat) {
            Some(Ok(Some(stat))) => {
                out.push((pid, stat.starttime));
                pid = stat.ppid;
            }
            _ => {
                out.push((pid, u64::MAX));
                break;
            }
        }
    }
    out
}
