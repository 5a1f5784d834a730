//! Errors of the store.

use std::path::PathBuf;

/// A store operation failed. Every variant names the path involved and, where it can,
/// what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("cannot {op} {}: {source}{}", path.display(), hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
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
    #[error("SQLite database {}: {source}", path.display())]
    Sqlite {
        /// The database path.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A request the store refuses (e.g. a stray name with a `/`).
    #[error("{0}")]
    Invalid(String),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
