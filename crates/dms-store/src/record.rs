//! What is recorded per target.

use crate::{Pid, TargetId};
use std::path::PathBuf;
use std::time::SystemTime;

/// The identity of one incarnation of a process, as recorded when it was spawned.
///
/// Two processes with the same PID are the same incarnation only if both the start time
/// (clock ticks since boot, field 22 of `/proc/PID/stat`) and the boot ID
/// (`/proc/sys/kernel/random/boot_id`) match. Wall-clock times drift; these do not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
    /// The boot ID of the machine the process started on.
    pub boot_id: String,
}

/// Descriptive metadata about a helper. Never holds environment values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// The helper's command line: program and arguments.
    pub cmdline: Option<Vec<String>>,
    /// The mount path the helper serves, if any.
    pub mount: Option<PathBuf>,
    /// When dms spawned (or adopted) it.
    pub spawned_at: Option<SystemTime>,
    /// Where its stdout and stderr go.
    pub log_path: Option<PathBuf>,
}

/// Everything recorded for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The helper's PID: the only thing the PID file holds.
    pub pid: Pid,
    /// Its identity, where the backend keeps it (SQLite, memory); `None` from PID files.
    pub identity: Option<Identity>,
    /// Metadata, where the backend keeps it.
    pub meta: Metadata,
    /// When the PID file was last written (its mtime), filled in by reads. Ignored by `put`.
    pub written_at: Option<SystemTime>,
}

impl Record {
    /// A record holding only a PID, as a PID file written by another tool does.
    pub fn bare(pid: Pid) -> Record {
        Record {
            pid,
            identity: None,
            meta: Metadata::default(),
            written_at: None,
        }
    }
}

/// Why an entry is not a valid PID file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// The path of the entry.
    pub path: PathBuf,
    /// What is wrong, in words (e.g. "is a symlink", "not a decimal PID: \"abc\"").
    pub reason: String,
}

/// What one target's entry holds, as [`crate::PidStore::get`] (`None`: no PID file) and
/// [`crate::PidStore::list`] report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A valid record.
    Valid(Record),
    /// Something is at the PID-file path, but it is not a valid PID file.
    Corrupt(Corrupt),
}

/// One entry found by [`crate::PidStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A PID file whose name is a valid target ID.
    Target {
        /// The target.
        target: TargetId,
        /// What its file holds.
        state: Stored,
    },
    /// A `*.pid` file whose name is not a valid target ID: reported, never acted on,
    /// removable with [`crate::PidStore::remove_stray`].
    Stray {
        /// The file name, lossily converted to UTF-8.
        file_name: String,
        /// Why the name is refused.
        reason: String,
    },
}

impl Entry {
    /// The name entries are sorted by: the file name without `.pid` (for a target, its
    /// ID).
    pub fn name(&self) -> &str {
        match self {
            Entry::Target { target, .. } => target.as_str(),
            Entry::Stray { file_name, .. } => crate::names::sort_key(file_name),
        }
    }
}
