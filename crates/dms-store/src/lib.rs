//! Durable tracking of helper processes for `dms`.
//!
//! Every helper is recorded on disk as a PID file `<run-dir>/s3/<target>.pid` holding the
//! decimal PID: that file format and path are a contract with other tools and with the
//! existing deployment. This crate owns that contract:
//!
//! - [`TargetId`] and [`Pid`]: validated newtypes, the only way to name a file or a process;
//! - [`PidStore`]: the storage trait, with its crash contract;
//! - backends: [`PidFileStore`] (PID files only), [`SqliteStore`] (the same PID files, plus
//!   identity and metadata written through to `<run-dir>/dms.sqlite3`), and
//!   [`MemoryStore`] (in memory, for tests of the layers above);
//! - `conformance` (feature `conformance`): the suite every backend passes.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use dms_store::{Entry, MemoryStore, Pid, PidStore, Record, TargetId};
//! let store: Box<dyn PidStore> = Box::new(MemoryStore::new("/run/dms/s3".into()));
//! let target: TargetId = "target-123".parse()?;
//! store.put(&target, &Record::bare(Pid::new(12345)?)).await?;
//! let entries = dms_store::list_sorted(&*store).await?;
//! assert!(matches!(&entries[..], [Entry::Target { target: t, .. }] if t == &target));
//! assert!(store.remove(&target).await?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
mod memory;
mod names;
mod pid;
mod pidfile;
mod record;
mod safety;
mod sqlite;
mod target;

pub use error::{Error, Result};
pub use memory::{MemoryStore, StoreOp};
pub use pid::{pid_max, InvalidPid, Pid, PID_MAX_LIMIT};
pub use pidfile::{PidFileStore, DIR_MODE, MAX_PID_FILE_LEN, PID_FILE_MODE, PID_SUBDIR};
pub use record::{Corrupt, Entry, Identity, Metadata, Record, Stored};
pub use sqlite::{SqliteStore, BUSY_TIMEOUT, DB_FILE_NAME, READ_BUSY_TIMEOUT, SCHEMA_VERSION};
pub use target::{InvalidTargetId, TargetId, TARGET_ID_MAX_LEN, TARGET_ID_RULE};

use async_trait::async_trait;
use std::fmt::Debug;
use std::path::Path;
use tokio::sync::mpsc;

/// Where helpers are recorded. Implementations must be safe to share between tasks.
///
/// # Contract
///
/// - **put** replaces the record of a target atomically: a reader (in this or another
///   process) sees either the old record or the new one, never a mix or a partial file.
///   When `put` returns `Ok`, the PID file is durable (fsynced, and so is its directory).
///   When it returns `Err`, the entry holds the old record or the new PID: read it to
///   know. `record.written_at` is ignored; reads fill it in (the PID file's mtime).
/// - **get** returns [`None`] when there is no PID file, [`Stored::Corrupt`] when
///   something is at the path but it is not a valid PID file (with the reason: a symlink,
///   FIFO, socket, device, directory, a file over 64 bytes, an unreadable file, or content
///   that is not one PID in `2..pid_max`), else the record. Nothing at the path is ever
///   followed or blocked on.
/// - **remove** deletes the entry itself (never what a symlink points to) and reports
///   whether there was one. Removing an absent entry is not an error.
/// - **list** returns every entry in the PID directory, corrupt ones included with the
///   reason, and `*.pid` names that are not valid target IDs as [`Entry::Stray`]; nothing
///   is dropped silently. Files not ending in `.pid` (lock files, temporary files of an
///   atomic write) are not entries. Order is by name without `.pid` (for targets: by
///   target ID).
/// - The PID file is authoritative for existence and for the PID: an entry exists
///   exactly when something is at its path. Identity and metadata live only in backends
///   that keep them ([`SqliteStore`], [`MemoryStore`]); [`PidFileStore`] returns `None`
///   and empty metadata. A backend never returns identity recorded for another PID or
///   for an earlier PID file: when the file was changed behind its back, the identity is
///   `None` (unknown), so the layer above must treat it as unverified.
///
/// # Crashes
///
/// A crash of the process (or the machine) at any point leaves, for each target:
///
/// - during **put**, before the rename of the temporary file: the old entry, unchanged
///   (old PID, old identity), and perhaps a temporary file that is never listed and is
///   removed by a later open once stale;
/// - after the rename: the new PID. [`SqliteStore`] writes its metadata row after the
///   PID file, so if the crash comes before the row, the new PID is reported with
///   identity unknown (never the old identity) and the row is repaired on the next read;
/// - during **remove**: the PID file is removed first, so the entry is either still
///   there with everything it had, or gone (a leftover metadata row is dropped on the
///   next read).
///
/// [`MemoryStore`] keeps nothing across a restart of the process that owns it.
#[async_trait]
pub trait PidStore: Debug + Send + Sync {
    /// Records `record` for `target`, replacing any previous entry atomically.
    async fn put(&self, target: &TargetId, record: &Record) -> Result<()>;

    /// Reads the entry of `target`.
    async fn get(&self, target: &TargetId) -> Result<Option<Stored>>;

    /// Removes the entry of `target`; `Ok(true)` if there was one.
    async fn remove(&self, target: &TargetId) -> Result<bool>;

    /// Every entry once, corrupt ones and strays included, in no particular order,
    /// handed over in batches on `batches` as they are read, so that a caller can work on
    /// the first ones while the rest are read (the PID-file backends read their files on
    /// another thread, which overlaps the two). Stops early, without error, when the
    /// receiver is gone. [`list_sorted`] collects the batches sorted by name.
    async fn list(&self, batches: mpsc::Sender<Vec<Entry>>) -> Result<()>;

    /// Removes an entry whose file name is not a valid target ID (an
    /// [`Entry::Stray`]), by that exact file name. Refuses names that are not a single
    /// path component ending in `.pid`.
    async fn remove_stray(&self, file_name: &str) -> Result<bool>;

    /// The directory holding the PID files (`<run-dir>/s3`).
    fn pid_dir(&self) -> &Path;

    /// Whether an entry of `target` exists now (something is at its PID-file path),
    /// without reading it: one `lstat` for the file backends, in line (the run
    /// directory is local). For a caller that holds the entry in memory and only needs
    /// to know that its file is still there; a path that cannot be looked up for another
    /// reason than its absence counts as existing.
    fn exists(&self, target: &TargetId) -> bool;

    /// A short name for the backend: `"pidfile"`, `"sqlite"` or `"memory"`.
    fn backend_name(&self) -> &'static str;
}

#[async_trait]
#[warn(clippy::missing_trait_methods)]
impl<T: PidStore + ?Sized> PidStore for std::sync::Arc<T> {
    async fn put(&self, target: &TargetId, record: &Record) -> Result<()> {
        (**self).put(target, record).await
    }
    async fn get(&self, target: &TargetId) -> Result<Option<Stored>> {
        (**self).get(target).await
    }
    async fn remove(&self, target: &TargetId) -> Result<bool> {
        (**self).remove(target).await
    }
    async fn list(&self, batches: mpsc::Sender<Vec<Entry>>) -> Result<()> {
        (**self).list(batches).await
    }
    async fn remove_stray(&self, file_name: &str) -> Result<bool> {
        (**self).remove_stray(file_name).await
    }
    fn pid_dir(&self) -> &Path {
        (**self).pid_dir()
    }
    fn exists(&self, target: &TargetId) -> bool {
        (**self).exists(target)
    }
    fn backend_name(&self) -> &'static str {
        (**self).backend_name()
    }
}

/// Every entry of `store`, sorted by name (the file name without `.pid`, see
/// [`Entry::name`]): [`PidStore::list`]'s batches collected. For a caller that wants the
/// whole listing at once, in a stable order; one that works entry by entry reads the
/// batches as they come instead.
pub async fn list_sorted(store: &dyn PidStore) -> Result<Vec<Entry>> {
    let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(8);
    let collect = async {
        let mut all = Vec::new();
        while let Some(batch) = rx.recv().await {
            // The first batch is kept as it is: a store that sends one batch (memory)
            // costs no copy of its entries.
            if all.is_empty() {
                all = batch;
            } else {
                all.extend(batch);
            }
        }
        all
    };
    let (listed, mut all) = tokio::join!(store.list(tx), collect);
    listed?;
    all.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(all)
}
