//! Per-target locking: an in-process async mutex plus a `flock` on
//! `<run-dir>/locks/<target>.lock`, so that changes to one target are serialised between
//! tasks of this process and between dms processes sharing the run directory.

use crate::error::{Error, Result};
use dms_store::TargetId;
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// The in-process mutexes, by target: an entry exists only while its mutex is held or
/// awaited, so the table does not grow with every target ever locked.
type Table = Arc<Mutex<HashMap<TargetId, Arc<tokio::sync::Mutex<()>>>>>;

/// Hands out [`TargetGuard`]s.
#[derive(Debug)]
pub(crate) struct TargetLocks {
    dir: PathBuf,
    mutexes: Table,
}

/// Held while a target is being changed. Dropping it releases the `flock` and then the
/// in-process mutex.
#[derive(Debug)]
pub(crate) struct TargetGuard {
    _flock: Flocked,
    _mutex: MemoryGuard,
}

/// A target's in-process mutex, held. Dropping it releases the mutex, and removes the
/// table entry when nobody else holds or awaits it.
#[derive(Debug)]
pub(crate) struct MemoryGuard {
    guard: Option<OwnedMutexGuard<()>>,
    table: Table,
    target: TargetId,
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let mut map = self.table.lock().unwrap_or_else(|p| p.into_inner());
        // One reference in the table, one in this guard: no other holder or waiter, and
        // none can appear while the table is locked (clones are made under its lock).
        if Arc::strong_count(OwnedMutexGuard::mutex(&guard)) == 2 {
            map.remove(&self.target);
        }
        drop(guard);
    }
}

impl TargetLocks {
    pub(crate) fn new(dir: PathBuf) -> TargetLocks {
        TargetLocks {
            dir,
            mutexes: Arc::default(),
        }
    }

    fn mutex(&self, target: &TargetId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.mutexes.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(target.clone()).or_default().clone()
    }

    /// Takes the target's in-process mutex only (for changes to memory alone).
    pub(crate) async fn lock_memory(&self, target: &TargetId) -> MemoryGuard {
        let guard = self.mutex(target).lock_owned().await;
        MemoryGuard {
            guard: Some(guard),
            table: self.mutexes.clone(),
            target: target.clone(),
        }
    }

    /// How many targets have an entry in the in-process table (held or awaited).
    #[cfg(test)]
    fn table_len(&self) -> usize {
        self.mutexes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes the target's mutex, then its `flock`. The `flock` is first tried without
    /// blocking (`LOCK_NB`, in line: an uncontended lock costs an `open` and a `flock`,
    /// not a trip through the blocking pool); only when another process holds it does
    /// the wait run on the blocking pool, never on the executor.
    pub(crate) async fn lock(&self, target: &TargetId) -> Result<TargetGuard> {
        let mutex = self.lock_memory(target).await;
        let path = target.lock_file_in(&self.dir);
        match try_flock_file(&path) {
            Ok(Some(flock)) => {
                return Ok(TargetGuard {
                    _flock: flock,
                    _mutex: mutex,
                })
            }
            Ok(None) => {}
            Err(source) => return Err(Error::Lock { path, source }),
        }
        let for_blocking = path.clone();
        let flock = tokio::task::spawn_blocking(move || flock_file(&for_blocking))
            .await
            .map_err(|e| Error::Lock {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| Error::Lock { path, source })?;
        Ok(TargetGuard {
            _flock: flock,
            _mutex: mutex,
        })
    }
}

impl TargetLocks {
    /// Takes the target's mutex and `flock` if nobody holds either right now; `None`
    /// when someone does (a lookup that would only load memory does not wait for a
    /// `kill` in its grace period).
    pub(crate) fn try_lock(&self, target: &TargetId) -> Result<Option<TargetGuard>> {
        let Ok(guard) = self.mutex(target).try_lock_owned() else {
            return Ok(None);
        };
        let mutex = MemoryGuard {
            guard: Some(guard),
            table: self.mutexes.clone(),
            target: target.clone(),
        };
        let path = target.lock_file_in(&self.dir);
        match try_flock_file(&path) {
            Ok(Some(flock)) => Ok(Some(TargetGuard {
                _flock: flock,
                _mutex: mutex,
            })),
            Ok(None) => Ok(None),
            Err(source) => Err(Error::Lock { path, source }),
        }
    }

    /// Whether a task of this process holds or awaits the target's lock (a spawn, kill or
    /// adopt in progress); no lock is taken.
    pub(crate) fn in_use(&self, target: &TargetId) -> bool {
        self.mutexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(target)
    }

    /// Whether someone (another task of this process, or another process) holds the
    /// `flock` of `target` right now. Creates its lock file if missing.
    pub(crate) fn is_held(&self, target: &TargetId) -> bool {
        matches!(try_flock_file(&target.lock_file_in(&self.dir)), Ok(None))
    }

    /// Takes the run directory's mount-record lock (`locks/.mounts.lock`; no target ID
    /// starts with `.`), held while a spawn checks the other targets' mount records and
    /// writes its own, so two spawns of different targets never take one directory.
    pub(crate) async fn lock_mounts(&self) -> Result<Flocked> {
        let path = self.dir.join(".mounts.lock");
        let for_blocking = path.clone();
        tokio::task::spawn_blocking(move || flock_file(&for_blocking))
            .await
            .map_err(|e| Error::Lock {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| Error::Lock { path, source })
    }
}

/// Opens (creating, 0644, never following a symlink) the lock file at `path`.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc_o_nofollow())
        .open(path)
}

/// A lock file held with an exclusive `flock`. Dropping it unlocks (`LOCK_UN`) and
/// closes the file.
#[derive(Debug)]
pub(crate) struct Flocked(File);

impl Drop for Flocked {
    fn drop(&mut self) {
        // Closing the file would release the lock too; unlocking first says so plainly.
        let _ = rustix::fs::flock(&self.0, FlockOperation::NonBlockingUnlock);
    }
}

/// `flock(file, op)`, retried on `EINTR`.
fn flock_retrying(file: &File, op: FlockOperation) -> rustix::io::Result<()> {
    loop {
        match rustix::fs::flock(file, op) {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Opens and exclusively locks `path`, waiting for another holder.
fn flock_file(path: &Path) -> std::io::Result<Flocked> {
    let file = open_lock_file(path)?;
    flock_retrying(&file, FlockOperation::LockExclusive)?;
    Ok(Flocked(file))
}

/// Opens and exclusively locks `path` if nobody holds it; `Ok(None)` if someone does.
fn try_flock_file(path: &Path) -> std::io::Result<Option<Flocked>> {
    let file = open_lock_file(path)?;
    match flock_retrying(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Flocked(file))),
        Err(Errno::WOULDBLOCK) => Ok(None),
        Err(errno) => Err(std::io::Error::from(errno)),
    }
}

/// `O_NOFOLLOW`, for [`OpenOptionsExt::custom_flags`].
fn libc_o_nofollow() -> i32 {
    // The flag's bits fit an `i32` (`custom_flags` takes the C `int`).
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_table_holds_only_targets_being_locked() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Arc::new(TargetLocks::new(dir.path().to_owned()));
        let a: TargetId = "a".parse().unwrap();
        let b: TargetId = "b".parse().unwrap();
        {
            let _ga = locks.lock(&a).await.unwrap();
            let _gb = locks.lock_memory(&b).await;
            assert_eq!(locks.table_len(), 2);
        }
        assert_eq!(locks.table_len(), 0, "released: no entry left");

        // A waiter keeps the entry (and gets the same mutex) after the holder leaves.
        let held = locks.lock(&a).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let (locks, a) = (locks.clone(), a.clone());
            tokio::spawn(async move {
                let _g = locks.lock(&a).await.unwrap();
                rx.await.unwrap();
            })
        };
        // Let the waiter queue up on the mutex.
        while Arc::strong_count(&locks.mutex(&a)) < 4 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert_eq!(locks.table_len(), 1, "the waiter still needs the entry");
        tx.send(()).unwrap();
        waiter.await.unwrap();
        assert_eq!(locks.table_len(), 0);
    }
}
