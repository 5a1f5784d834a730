//! The manager's error type.

use dms_proc::ProcError;
use dms_store::{Pid, TargetId};
use std::path::PathBuf;

/// A manager operation failed. Messages say what failed, where (target, PID, path) and
/// how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target already has a live helper, proven ours.
    #[error(
        "target {target} already has a running helper (PID {pid}); stop it first \
         (`dms kill {target}`) or replace it (`dms spawn --replace`)"
    )]
    AlreadyRunning {
        /// The target.
        target: TargetId,
        /// The PID of the running helper.
        pid: Pid,
    },
    /// The PID to adopt is not a live process (gone, or a zombie).
    #[error(
        "cannot adopt PID {pid} for target {target}: no live process has that PID \
         (it exited or is a zombie); start the helper and adopt its current PID"
    )]
    NotRunning {
        /// The target.
        target: TargetId,
        /// The PID asked for.
        pid: Pid,
    },
    /// The PID is already the helper of another target.
    #[error(
        "cannot adopt PID {pid} for target {target}: it is already the helper of target \
         {other}; kill that target first or adopt a different process"
    )]
    AlreadyTracked {
        /// The target asked for.
        target: TargetId,
        /// The PID.
        pid: Pid,
        /// The target that already tracks it.
        other: TargetId,
    },
    /// The PID to adopt is a thread of a process, not a process.
    #[error("cannot adopt PID {pid} for target {target}: {}; adopt the PID of a process", thread_detail(*pid, *tgid))]
    NotAProcess {
        /// The target.
        target: TargetId,
        /// The PID asked for (a thread ID).
        pid: Pid,
        /// The thread's process, when known.
        tgid: Option<i32>,
    },
    /// The process named by the target's entry is alive, but whether it is ours cannot be
    /// proven (the probe was denied). It is neither signalled nor forgotten.
    #[error(
        "cannot verify PID {pid} of target {target}: {reason}; run dms as root or as the \
         helper's user (the entry is kept, nothing was signalled)"
    )]
    Unverified {
        /// The target.
        target: TargetId,
        /// The PID.
        pid: Pid,
        /// What the probe said.
        reason: String,
    },
    /// The helper survived SIGTERM and SIGKILL.
    #[error(
        "helper of target {target} (PID {pid}) is still alive after SIGKILL; it is \
         probably blocked in the kernel (see the state in /proc/{pid}/status); it is \
         still tracked"
    )]
    StillRunning {
        /// The target.
        target: TargetId,
        /// The PID.
        pid: Pid,
    },
    /// The mount directory is already a mount point.
    #[error(
        "mount point {} of target {target} is already a mount point; run `dms cleanup \
         --mounts` (if it is stale) or unmount it, then spawn again",
        path.display()
    )]
    AlreadyMounted {
        /// The target.
        target: TargetId,
        /// The mount directory.
        path: PathBuf,
    },
    /// The mount directory is refused: `/`, inside or holding the run directory, or the
    /// recorded mount of another target whose helper runs. Nothing was stopped or started.
    #[error(
        "mount point {} of target {target} is refused: {why}; nothing was started or stopped",
        path.display()
    )]
    MountRefused {
        /// The target.
        target: TargetId,
        /// The mount directory (resolved).
        path: PathBuf,
        /// Why, and what to do instead.
        why: String,
        /// Whether the directory itself is bad input (else it conflicts with another
        /// target's helper).
        bad_input: bool,
    },
    /// The helper did not mount its directory (it exited first or the ready timeout
    /// passed), or its mount came up but does not answer. It was stopped, its mount
    /// detached, and its record removed.
    #[error(
        "helper of target {target} (PID {pid}) did not mount {}: {why}; nothing was kept \
         (no helper, no PID file); fix the helper's settings (see {}), then spawn again. \
         Last lines of its log: {log_tail}",
        path.display(), log.display()
    )]
    NotMounted {
        /// The target.
        target: TargetId,
        /// The helper's PID.
        pid: Pid,
        /// The mount directory.
        path: PathBuf,
        /// What happened (exit status, or the timeout).
        why: String,
        /// The helper's log file.
        log: PathBuf,
        /// Its last lines, joined with ` | `.
        log_tail: String,
    },
    /// The helper went into the background (its first process exited and left others
    /// running) and dms could not tell which process is the helper, or the helper
    /// failed doing so. The processes it left were stopped and its record removed.
    #[error(
        "helper of target {target} (PID {pid}) went into the background and {why}; \
         nothing was kept (the processes it left were stopped, no PID file); run it in \
         the foreground (its -f / --foreground flag: s3fs -f, bindfs -f, sshfs -f, \
         rclone mount without --daemon), then spawn again. Last lines of its log ({}): \
         {log_tail}",
        log.display()
    )]
    Daemonized {
        /// The target.
        target: TargetId,
        /// The PID of the helper's first process.
        pid: Pid,
        /// What happened.
        why: String,
        /// The helper's log file.
        log: PathBuf,
        /// Its last lines, joined with ` | `.
        log_tail: String,
    },
    /// A mount operation failed.
    #[error("cannot {op} {}: {source}; check the path and that dms runs as root", path.display())]
    Mount {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store (PID files, SQLite metadata) failed.
    #[error("store: {0}")]
    Store(#[from] dms_store::Error),
    /// The process layer failed (spawn, exec, probe, signal).
    #[error("process: {0}")]
    Proc(#[from] ProcError),
    /// A per-target lock file could not be opened or locked.
    #[error("cannot lock {}: {source}; {}", path.display(), lock_hint(source))]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `spawn --replace`: the new helper would fail to start (checked before anything
    /// was stopped), so the running helper was left as it is.
    #[error(
        "target {target}: the new helper cannot be started, so the running helper (PID \
         {pid}) was left running and nothing changed: {source}"
    )]
    NotReplaced {
        /// The target.
        target: TargetId,
        /// The PID of the running helper, still running.
        pid: Pid,
        /// Why the new helper cannot start.
        source: Box<Error>,
    },
    /// `spawn --replace`: the old helper was stopped, then the new one failed to start.
    #[error(
        "target {target}: the old helper (PID {old_pid}) was stopped; the new one failed: \
         {source}; the target has no helper now"
    )]
    ReplacedThenFailed {
        /// The target.
        target: TargetId,
        /// The PID of the old helper, stopped.
        old_pid: Pid,
        /// Why the new helper failed.
        source: Box<Error>,
    },
    /// A relative path of a helper spec could not be made absolute.
    #[error(
        "cannot make the {what} {} absolute: {source}; pass an absolute path",
        path.display()
    )]
    Path {
        /// The path as given.
        path: PathBuf,
        /// Which path of the spec.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory of the run-dir layout could not be created.
    #[error(
        "cannot create directory {}: {source}; create it or choose another --run-dir",
        path.display()
    )]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What to do about a lock file that cannot be created or locked, by its errno.
fn lock_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            "free some space (or inodes) in the run directory's file system"
        }
        Some(libc::EROFS) => {
            "the run directory's file system is read-only; choose another --run-dir"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => "the run directory must be writable by this user",
        Some(libc::ELOOP) => "it is a symbolic link; remove it (dms recreates the lock file)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "too many open files; raise the limit (ulimit -n)"
        }
        _ => "check the run directory's locks/ folder and its file system",
    }
}

/// The manager's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Says that `pid` is a thread of process `tgid`, not a process: the detail of a
/// `foreign` entry and of a refused adopt.
pub(crate) fn thread_detail(pid: Pid, tgid: Option<i32>) -> String {
    let own = i32::try_from(std::process::id()).ok();
    match tgid {
        Some(t) if Some(t) == own => {
            format!("PID {pid} is a thread of dms itself (process {t}), not a process")
        }
        Some(t) => format!("PID {pid} is a thread of process {t}, not a process"),
        None => format!("PID {pid} is a thread of another process, not a process"),
    }
}
