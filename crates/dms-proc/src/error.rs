//! [`ProcError`]: what can go wrong in the process layer.

use crate::Pid;
#[cfg(doc)]
use crate::Spawner;
use std::ffi::OsString;
use std::path::PathBuf;

/// A process-layer failure. Its `Display` says what failed and where; the cause is its
/// [`std::error::Error::source`] only, and how to fix it is [`ProcError::hint`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// The program could not be started.
    #[error("cannot start {program:?}")]
    Exec {
        /// The program.
        program: OsString,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {}", path.display())]
    Log {
        /// The log path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The caller may not signal or inspect this process.
    #[error("permission denied on PID {pid}: {what}")]
    PermissionDenied {
        /// The PID.
        pid: Pid,
        /// What was attempted.
        what: String,
    },
    /// Refused: the PID is dms's own.
    #[error("refusing to act on PID {0}: it is dms itself")]
    SelfPid(Pid),
    /// Refused: the PID belongs to a process dms must never signal (an ancestor of dms,
    /// such as the shell or service that runs it). See [`Spawner::protected`].
    #[error("refusing to act on PID {pid}: {why}")]
    Protected {
        /// The PID.
        pid: Pid,
        /// Why it is protected.
        why: String,
    },
    /// Any other OS error.
    #[error("{op} PID {pid}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The PID.
        pid: Pid,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file under `/proc` could not be read.
    #[error("cannot read {}", path.display())]
    ProcFs {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shared exit watcher ([`Spawner::exit_watch`]) could not be set up.
    #[error("cannot {op} of the shared exit watcher")]
    ExitWatch {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A scripted failure of the fake spawner.
    #[error("injected failure: {0}")]
    Injected(String),
}

impl ProcError {
    /// How to fix it, where there is a fix to name (in words: no command-line flags).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ProcError::PermissionDenied { .. } => Some("run dms as the helper's user or as root"),
            ProcError::ProcFs { .. } => Some("is /proc mounted?"),
            ProcError::ExitWatch { .. } => Some("check the limit on open files (ulimit -n)"),
            _ => None,
        }
    }
}
