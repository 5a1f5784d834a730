//! Errors of the store.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A store operation failed. Every variant names the path involved; the cause is its
/// [`std::error::Error::source`] only (never repeated in its `Display`), and what to do
/// about it, where known, is [`Error::hint`]. No variant ever carries an environment
/// value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done ("write", "create directory", ...).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
        /// How to fix it, where known (e.g. which user needs write access).
        hint: Option<String>,
    },
    /// The SQLite metadata database failed in a way that could not be repaired.
    #[error("SQLite database {}", path.display())]
    Sqlite {
        /// The database path.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The run directory (or its `s3/`, `locks/` or `logs/`) is unsafe to trust: writable
    /// by every user, owned by another unprivileged user, or (for the subdirectories) a
    /// symbolic link. Nothing was read or written.
    #[error("refusing to use {}: {problem}", path.display())]
    Unsafe {
        /// The directory (or symlink).
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
    /// A request the store refuses (e.g. a stray name with a `/`).
    #[error("{0}")]
    Invalid(String),
    /// The blocking task doing the I/O was cancelled, which happens only while the async
    /// runtime shuts down; the operation may or may not have taken effect.
    #[error("{op} was cancelled because the async runtime is shutting down; retry it")]
    Cancelled {
        /// The operation ("put", "list", ...).
        op: &'static str,
    },
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an operation needed to read or to change a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

impl Error {
    /// How to fix it, where known (in words: no command-line flags).
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Io { hint, .. } => hint.clone(),
            Error::Unsafe { fix, .. } => Some(format!("fix: {fix}")),
            _ => None,
        }
    }

    /// Whether the fix is to choose another run directory (it is read-only, or a
    /// component of its path is not a directory): front ends name their flag for it.
    pub fn wants_other_run_dir(&self) -> bool {
        matches!(self, Error::Io { source, .. } if matches!(
            source.kind(),
            ErrorKind::ReadOnlyFilesystem | ErrorKind::NotADirectory
        ))
    }

    /// An [`Error::Io`] on `path` with a hint derived from the OS error: for permission
    /// errors it names the effective user who needs `access` to `dir`.
    pub(crate) fn io(
        op: &'static str,
        path: &Path,
        source: std::io::Error,
        dir: &Path,
        access: Access,
    ) -> Error {
        let hint = hint_for(&source, dir, access);
        Error::Io {
            op,
            path: path.to_owned(),
            source,
            hint,
        }
    }
}

fn hint_for(source: &std::io::Error, dir: &Path, access: Access) -> Option<String> {
    let what = match access {
        Access::Read => "read",
        Access::Write => "write",
    };
    match source.kind() {
        ErrorKind::PermissionDenied => Some(format!(
            "{} needs {what} access to {}; fix the owner or mode of that directory \
             (e.g. the tmpfiles.d entry `d /run/dms 0755 USER GROUP -`) or run dms as its owner",
            effective_user(),
            dir.display()
        )),
        ErrorKind::ReadOnlyFilesystem => Some(format!(
            "{} is on a read-only file system; choose a writable run directory",
            dir.display()
        )),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some(format!(
            "the file system holding {} is full; free some space and retry",
            dir.display()
        )),
        ErrorKind::NotADirectory => Some(format!(
            "a component of {} is not a directory; move it aside or choose another run directory",
            dir.display()
        )),
        _ => None,
    }
}

/// `user NAME (uid N)` for the effective user, or `uid N` when it has no name.
pub(crate) fn effective_user() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("user {} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}
