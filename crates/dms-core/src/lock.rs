//! Per-target locking: an in-process async mutex plus a `flock` on
//! `<run-dir>/locks/<target>.lock`, so that changes to one target are serialised between
//! tasks of this process and between dms processes sharing the run directory.

use crate::error::{Error, Result};
use dms_store::TargetId;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// Hands out [`TargetGuard`]s.
#[derive(Debug)]
pub(crate) struct TargetLocks {
    dir: PathBuf,
    mutexes: Mutex<HashMap<TargetId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a target is being changed. Dropping it releases the `flock` and then the
/// in-process mutex.
#[derive(Debug)]
pub(crate) struct TargetGuard {
    _flock: Flock<File>,
    _mutex: OwnedMutexGuard<()>,
}

impl TargetLocks {
    pub(crate) fn new(dir: PathBuf) -> TargetLocks {
        TargetLocks {
            dir,
            mutexes: Mutex::new(HashMap::new()),
        }
    }

    fn mutex(&self, target: &TargetId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.mutexes.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(target.clone()).or_default().clone()
    }

    /// Takes the target's in-process mutex only (for changes to memory alone).
    pub(crate) async fn lock_memory(&self, target: &TargetId) -> OwnedMutexGuard<()> {
        self.mutex(target).lock_owned().await
    }

    /// Takes the target's mutex, then its `flock`. The `flock` is first tried without
    /// blocking (`LOCK_NB`, in line: an uncontended lock costs an `open` and a `flock`,
    /// not a trip through the blocking pool); only when another process holds it does
    /// the wait run on the blocking pool, never on the executor.
    pub(crate) async fn lock(&self, target: &TargetId) -> Result<TargetGuard> {
        let mutex = self.mutex(target).lock_owned().await;
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

/// Opens and exclusively locks `path`, waiting for another holder.
fn flock_file(path: &Path) -> std::io::Result<Flock<File>> {
    let mut file = open_lock_file(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, errno)) => return Err(std::io::Error::from(errno)),
        }
    }
}

/// Opens and exclusively locks `path` if nobody holds it; `Ok(None)` if someone does.
fn try_flock_file(path: &Path) -> std::io::Result<Option<Flock<File>>> {
    let mut file = open_lock_file(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(lock)),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(std::io::Error::from(errno)),
        }
    }
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}
