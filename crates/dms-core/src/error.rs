//! The manager's error type, and [`Report`], the one way to render an error of dms.
//!
//! Every error of dms (this crate's [`Error`], `dms_store::Error`, `dms_proc::ProcError`)
//! follows one rule: its `Display` says what failed and where, its cause is its
//! [`std::error::Error::source`] only (never repeated in the `Display`), and how to fix
//! it is its `hint()`, in words that name no command-line flag. [`Report`] renders
//! `what: cause: cause; hint`. Front ends (the daemon's API, the command line) render
//! with [`Report::with_hint`] where they have a better fix to name, such as their flag.

use dms_proc::ProcError;
use dms_store::{Pid, TargetId};
use std::path::PathBuf;

/// A manager operation failed. Its `Display` says what failed and where (target, PID,
/// path); the cause is its `source()`; [`Error::hint`] says how to fix it. Render it with
/// [`Report`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target already has a live helper, proven ours.
    #[error("target {target} already has a running helper (PID {pid})")]
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
        "cannot verify PID {pid} of target {target}: {reason} (the entry is kept, nothing \
         was signalled)"
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
        "mount point {} of target {target} is already a mount point",
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
        /// Whether the ready timeout passed (else the helper exited, or its mount came
        /// up and does not answer): front ends then name their flag for it.
        timed_out: bool,
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
    #[error("cannot {op} {}", path.display())]
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
    #[error(transparent)]
    Store(#[from] dms_store::Error),
    /// The process layer failed (spawn, exec, probe, signal).
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// A per-target lock file could not be opened or locked.
    #[error("cannot lock {}", path.display())]
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
         {pid}) was left running and nothing changed"
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
        "target {target}: the old helper (PID {old_pid}) was stopped and the new one \
         failed, so the target has no helper now"
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
        "cannot make the {what} {} absolute",
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
        "cannot create directory {}",
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

impl Error {
    /// How to fix it, where there is a fix to name, in words (no command-line flags).
    /// A store or process error is wrapped transparently: its `Display` and hint are
    /// its own. The hints of deeper causes are theirs: [`Report`] collects them.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Error::AlreadyRunning { .. } => "stop it first or replace it",
            Error::Unverified { .. } => "run dms as root or as the helper's user",
            Error::AlreadyMounted { .. } => {
                "clean up its mounts (if it is stale) or unmount it, then spawn again"
            }
            Error::Mount { .. } => "check the path and that dms runs as root",
            Error::Lock { source, .. } => lock_hint(source),
            Error::Path { .. } => "pass an absolute path",
            Error::RunDir { .. } => "create it or choose another run directory",
            Error::Store(e) => return e.hint(),
            Error::Proc(e) => return e.hint().map(str::to_owned),
            _ => return None,
        };
        Some(hint.to_owned())
    }

    /// Whether the fix is to choose another run directory (it cannot be created, it is
    /// read-only, or a component of its path is not a directory), here or in a cause:
    /// front ends name their flag for it.
    pub fn wants_other_run_dir(&self) -> bool {
        match self {
            Error::RunDir { .. } => true,
            Error::Lock { source, .. } => source.raw_os_error() == Some(libc::EROFS),
            Error::Store(e) => e.wants_other_run_dir(),
            Error::NotReplaced { source, .. } | Error::ReplacedThenFailed { source, .. } => {
                source.wants_other_run_dir()
            }
            _ => false,
        }
    }
}

/// An error of dms rendered on one line: its `Display`, then each cause, joined with
/// `": "`, then how to fix it after `"; "`: the hints of every level of the chain that
/// has one ([`Error::hint`], `dms_store::Error::hint`, `dms_proc::ProcError::hint`), or
/// the one given to [`Report::with_hint`].
///
/// ```
/// use dms_core::{Error, Report};
/// let e = Error::RunDir {
///     path: "/run/dms/locks".into(),
///     source: std::io::Error::from_raw_os_error(libc::EACCES),
/// };
/// assert_eq!(e.to_string(), "cannot create directory /run/dms/locks");
/// assert_eq!(
///     Report::new(&e).to_string(),
///     "cannot create directory /run/dms/locks: Permission denied (os error 13); \
///      create it or choose another run directory"
/// );
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    error: &'a (dyn std::error::Error + 'static),
    hint: Option<&'a str>,
}

impl<'a> Report<'a> {
    /// `error` with the hints of its own chain.
    pub fn new(error: &'a (dyn std::error::Error + 'static)) -> Report<'a> {
        Report { error, hint: None }
    }

    /// `error` with `hint` instead of the hints of its chain (a front end's words for
    /// the same fix, naming its flag).
    pub fn with_hint(error: &'a (dyn std::error::Error + 'static), hint: &'a str) -> Report<'a> {
        Report {
            error,
            hint: Some(hint),
        }
    }
}

/// The hint of one level of a chain, if it is an error of dms that has one.
fn hint_of(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    // The cause of `NotReplaced` and `ReplacedThenFailed` is a boxed `Error`.
    if let Some(e) = e.downcast_ref::<Error>() {
        e.hint()
    } else if let Some(e) = e.downcast_ref::<Box<Error>>() {
        e.hint()
    } else if let Some(e) = e.downcast_ref::<dms_store::Error>() {
        e.hint()
    } else if let Some(e) = e.downcast_ref::<ProcError>() {
        e.hint().map(str::to_owned)
    } else {
        None
    }
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&detail(self.error))?;
        if let Some(h) = self.hint {
            return write!(f, "; {h}");
        }
        std::iter::successors(Some(self.error), |e| e.source())
            .filter_map(hint_of)
            .try_for_each(|h| write!(f, "; {h}"))
    }
}

/// `e` and its causes, without hints: the detail of an error that becomes part of
/// another's message (whose own hint then says what to do).
pub(crate) fn detail(e: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(e.source(), |c| c.source());
    causes.fold(e.to_string(), |line, c| format!("{line}: {c}"))
}

/// What to do about a lock file that cannot be created or locked, by its errno.
fn lock_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            "free some space (or inodes) in the run directory's file system"
        }
        Some(libc::EROFS) => {
            "the run directory's file system is read-only; choose another run directory"
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn t(s: &str) -> TargetId {
        TargetId::new(s).unwrap()
    }

    fn pid(n: i64) -> Pid {
        Pid::new(n).unwrap()
    }

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    /// Every variant with a cause, as built by the manager.
    fn with_causes() -> Vec<Error> {
        let exec = || {
            Error::Proc(ProcError::Exec {
                program: "/usr/bin/helper".into(),
                source: os(libc::ENOENT),
            })
        };
        vec![
            Error::Mount {
                path: "/mnt/a".into(),
                op: "unmount",
                source: os(libc::EBUSY),
            },
            Error::Lock {
                path: "/run/dms/locks/a.lock".into(),
                source: os(libc::ENOSPC),
            },
            Error::Path {
                path: "rel".into(),
                what: "log",
                source: os(libc::ENOENT),
            },
            Error::RunDir {
                path: "/run/dms/logs".into(),
                source: os(libc::EACCES),
            },
            exec(),
            Error::NotReplaced {
                target: t("a"),
                pid: pid(42),
                source: Box::new(exec()),
            },
            Error::ReplacedThenFailed {
                target: t("a"),
                old_pid: pid(42),
                source: Box::new(exec()),
            },
        ]
    }

    #[test]
    fn a_display_never_repeats_its_cause() {
        for e in with_causes() {
            let cause = std::error::Error::source(&e).expect("a cause").to_string();
            let shown = e.to_string();
            assert!(
                !shown.contains(&cause),
                "{shown:?} repeats its cause {cause:?}"
            );
            let report = Report::new(&e).to_string();
            assert_eq!(report.matches(&cause).count(), 1, "{report}");
        }
    }

    #[test]
    fn no_library_message_names_a_flag() {
        let mut all = with_causes();
        all.push(Error::AlreadyRunning {
            target: t("a"),
            pid: pid(42),
        });
        all.push(Error::AlreadyMounted {
            target: t("a"),
            path: "/mnt/a".into(),
        });
        for errno in [libc::EROFS, libc::EACCES, libc::ELOOP, libc::EMFILE] {
            all.push(Error::Lock {
                path: "/run/dms/locks/a.lock".into(),
                source: os(errno),
            });
        }
        for e in &all {
            let report = Report::new(e).to_string();
            assert!(
                !report.contains("--") && !report.contains("`dms "),
                "{report}"
            );
        }
    }

    #[test]
    fn a_report_is_what_then_each_cause_then_the_hints() {
        let e = Error::Lock {
            path: "/run/dms/locks/a.lock".into(),
            source: os(libc::EROFS),
        };
        assert_eq!(
            Report::new(&e).to_string(),
            format!(
                "cannot lock /run/dms/locks/a.lock: {}; the run directory's file system is \
                 read-only; choose another run directory",
                os(libc::EROFS)
            )
        );
        assert!(e.wants_other_run_dir());
        assert_eq!(
            Report::with_hint(&e, "use another --run-dir").to_string(),
            format!(
                "cannot lock /run/dms/locks/a.lock: {}; use another --run-dir",
                os(libc::EROFS)
            )
        );
        // A store error is wrapped transparently: its text, its cause, its hint.
        let store = dms_store::Error::Invalid("a stray name with a '/'".into());
        assert_eq!(Error::Store(store).to_string(), "a stray name with a '/'");
        let denied = Error::Proc(ProcError::PermissionDenied {
            pid: pid(42),
            what: "signal".into(),
        });
        assert_eq!(
            Report::new(&denied).to_string(),
            "permission denied on PID 42: signal; run dms as the helper's user or as root"
        );
    }

    #[test]
    fn a_wrapped_cause_keeps_its_hint() {
        let e = Error::NotReplaced {
            target: t("a"),
            pid: pid(42),
            source: Box::new(Error::RunDir {
                path: "/ro/logs".into(),
                source: os(libc::EROFS),
            }),
        };
        let report = Report::new(&e).to_string();
        assert!(
            report.ends_with("; create it or choose another run directory"),
            "{report}"
        );
        assert!(e.wants_other_run_dir());
    }
}
