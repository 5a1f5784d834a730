//! [`PidFileStore`]: PID files only, at `<run-dir>/s3/<target>.pid`.
//!
//! The synchronous core ([`PidDir`]) is shared with the SQLite backend, which writes the
//! very same files through it.

use crate::{Entry, Error, PidStore, Record, Result, Stored, TargetId};
use async_trait::async_trait;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod dir;
mod read;
#[cfg(test)]
mod tests;

pub(crate) use dir::PidDir;

/// The largest PID file accepted, in bytes. A PID has at most 7 digits; the slack allows
/// whitespace written by other tools.
pub const MAX_PID_FILE_LEN: u64 = 64;

/// Mode of the PID files dms writes (set explicitly, whatever the umask).
pub const PID_FILE_MODE: u32 = 0o644;

/// Mode of the directories dms creates (set explicitly, whatever the umask).
pub const DIR_MODE: u32 = 0o755;

/// Name of the PID directory inside the run directory.
pub const PID_SUBDIR: &str = "s3";

/// Temporary files older than this are left over from a crashed write and are removed
/// when a store is opened. Younger ones may belong to a write in progress in another
/// process, so they are left alone (they are never listed as entries either way).
pub(crate) const STALE_TEMP_AGE: Duration = Duration::from_secs(300);

/// Suffix of the temporary files of an atomic write (`.<target>.pid.<pid>-<n>.tmp`).
const TEMP_SUFFIX: &str = ".tmp";

/// The steps of an atomic PID-file write, in order; a test can stop after any of them to
/// simulate a crash there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WriteStep {
    /// The temporary file exists, still empty.
    TempCreated,
    /// The temporary file holds the PID and is fsynced.
    TempSynced,
    /// The temporary file has been renamed over `<target>.pid`.
    Renamed,
    /// The directory has been fsynced: the write is durable.
    DirSynced,
}

/// Which file a PID file is: its inode number and mtime. A put creates a new inode while
/// the previous file still exists, so the new file's stamp always differs from the old
/// one's, even when both hold the same PID within one clock tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Inode number.
    pub(crate) ino: u64,
    /// mtime in nanoseconds since the Unix epoch.
    pub(crate) mtime_ns: i64,
}

impl Stamp {
    /// The stamp in an fstat(2) result (the same fields as [`Stamp::of`]).
    // (`st_mtime` is an i64 on 64-bit Linux, narrower on some 32-bit targets.)
    #[allow(clippy::useless_conversion)]
    fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            mtime_ns: i64::try_from(st.st_mtime)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000_000)
                .saturating_add(i64::try_from(st.st_mtime_nsec).unwrap_or(0)),
        }
    }

    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }
}

/// What a write did: completed, or stopped early on purpose (crash simulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Done; the stamp of the new PID file.
    Done(Stamp),
    /// Stopped after the given step, as a crash would.
    Stopped,
}
/// Runs blocking `f` on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(op: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Cancelled { op }),
    }
}

/// A [`PidStore`] that keeps only PID files: `<run-dir>/s3/<target>.pid`, each holding
/// `PID\n`, the format other tools and the existing deployment read and write.
///
/// - **put** is atomic and durable: a temporary file `.<target>.pid.<pid>-<n>.tmp` in the
///   same directory, created exclusively with mode 0644 (set explicitly, whatever the
///   umask), gets `PID\n` and an fsync, is renamed over `<target>.pid`, then the
///   directory is fsynced. A crash leaves either the old file or the new one, and at worst
///   a temporary file, which is never listed and is removed by a later
///   [`open`](Self::open) once it is older than 5 minutes (younger ones may be a write in
///   progress in another process). `put` over a symlink replaces the link, never its
///   target; `put` over a directory fails and says to remove it.
/// - **get/list** open with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY` and `fstat`:
///   a symlink, FIFO, socket, device, directory, a file over 64 bytes, an unreadable file
///   or content that is not one valid PID are corrupt entries with a reason. They are
///   never followed and never block. Identity and metadata are not kept (`None`/empty);
///   `written_at` is the file's mtime.
/// - **remove** removes the entry itself: `unlink` for a file, symlink (never its
///   target), FIFO or socket; `rmdir` for a directory named `<target>.pid`, which must be
///   empty (a non-empty one is refused with an error: dms never deletes a tree it did not
///   create). Then the directory is fsynced.
/// - Names: files not ending in `.pid` are ignored; a `*.pid` file whose name is not a
///   valid target ID is an [`Entry::Stray`].
/// - Threads: `list` and `remove_stray` run on tokio's blocking pool. So do `put`, `get`
///   and `remove`, except on a memory file system (tmpfs, like production's `/run`): there they touch one small file and never wait for a device (`fsync`
///   returns at once), so they run on the calling task, which is cheaper than the trip
///   through the pool (that trip dominated startup over thousands of PID files).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use dms_store::{Stored, Pid, PidFileStore, PidStore, Record, TargetId};
/// let run_dir = tempfile::tempdir()?;
/// let store = PidFileStore::open(run_dir.path())?;
/// let t: TargetId = "target-123".parse()?;
/// store.put(&t, &Record::bare(Pid::new(12345)?)).await?;
/// assert_eq!(std::fs::read_to_string(run_dir.path().join("s3/target-123.pid"))?, "12345\n");
/// assert!(matches!(store.get(&t).await?, Some(Stored::Valid(r)) if r.pid.get() == 12345));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct PidFileStore {
    dir: Arc<PidDir>,
}

impl PidFileStore {
    /// Opens the store in `run_dir`, creating `run_dir` and `run_dir/s3` (mode 0755) when
    /// missing, and removing temporary files left by interrupted writes.
    ///
    /// This does blocking I/O: call it at startup or from `spawn_blocking`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when a directory cannot be created or read, with
    /// the user who needs access when permission is denied. [`Error::Unsafe`] when the
    /// run directory or its `s3/`, `locks/` or `logs/` is writable by every user, owned
    /// by another unprivileged user, or (for the subdirectories) a symbolic link; the
    /// message says how to fix it (e.g. `chmod o-w /run/dms`).
    pub fn open(run_dir: &Path) -> Result<PidFileStore> {
        Ok(PidFileStore {
            dir: Arc::new(PidDir::open(run_dir)?),
        })
    }

    /// [`PidFileStore::open`] for a reader that changes nothing in `s3/` (`dms status`):
    /// the same checks, but stale temporary files of interrupted writes are left for the
    /// next [`PidFileStore::open`] to remove (a listing never shows them).
    pub fn open_for_reading(run_dir: &Path) -> Result<PidFileStore> {
        Ok(PidFileStore {
            dir: Arc::new(PidDir::open_unswept(run_dir)?),
        })
    }

    /// The run directory this store was opened in.
    pub fn run_dir(&self) -> &Path {
        self.dir.run_dir()
    }
}

#[async_trait]
impl PidStore for PidFileStore {
    async fn put(&self, target: &TargetId, record: &Record) -> Result<()> {
        if self.dir.in_memory() {
            return self.dir.write(target, record.pid).map(drop);
        }
        let (dir, target, pid) = (self.dir.clone(), target.clone(), record.pid);
        blocking("put", move || dir.write(&target, pid).map(drop)).await
    }

    async fn get(&self, target: &TargetId) -> Result<Option<Stored>> {
        if self.dir.in_memory() {
            return self.dir.read(target).map(|(l, _)| l);
        }
        let (dir, target) = (self.dir.clone(), target.clone());
        blocking("get", move || dir.read(&target).map(|(l, _)| l)).await
    }

    async fn remove(&self, target: &TargetId) -> Result<bool> {
        if self.dir.in_memory() {
            return self.dir.remove(target);
        }
        let (dir, target) = (self.dir.clone(), target.clone());
        blocking("remove", move || dir.remove(&target)).await
    }

    async fn list(&self, batches: tokio::sync::mpsc::Sender<Vec<Entry>>) -> Result<()> {
        let dir = self.dir.clone();
        blocking("list", move || dir.list(&batches)).await
    }

    async fn remove_stray(&self, file_name: &str) -> Result<bool> {
        let (dir, name) = (self.dir.clone(), file_name.to_owned());
        blocking("remove stray", move || dir.remove_stray(&name)).await
    }

    fn pid_dir(&self) -> &Path {
        self.dir.pid_dir()
    }

    fn exists(&self, target: &TargetId) -> bool {
        self.dir.exists(target)
    }

    fn backend_name(&self) -> &'static str {
        "pidfile"
    }
}
