//! Automatic sync of the daemon's memory with its PID files (serve.md "Running it"):
//! an inotify watch of `<run-dir>/s3/` hands every PID file that was written, renamed
//! into place, renamed away or deleted to [`Manager::sync_target`], which loads a proven
//! helper written from outside (event `adopted`) and ends the tracking of a helper whose
//! file was removed from outside (event `untracked`; the helper is not signalled).
//!
//! inotify through `rustix::fs::inotify` and tokio's [`AsyncFd`]: rustix is already the
//! workspace's system-call layer (no new dependency for some forty lines), and its
//! reader parses the kernel's records in place.
//!
//! What is a change is decided by the manager, never by the event: the event only says
//! which name to look at again. A file replaced by an atomic rename (dms's own writes:
//! a temporary file, then `rename` onto `T.pid`) arrives as `IN_MOVED_TO` of `T.pid`,
//! and `sync_target` finds a file there; only a name with no file left at it ends a
//! tracking. The manager's own spawns and kills change memory and disk under the
//! target's lock, which `sync_target` takes before it looks, so they produce no event.

use dms_core::Manager;
use dms_store::TargetId;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::HashSet;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;

/// What a change to a PID file looks like.
const WATCHED: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::CREATE)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::DONT_FOLLOW)
    .union(WatchFlags::EXCL_UNLINK);

/// How often a lost watch (the directory removed or moved) is tried again.
const REWATCH_EVERY: Duration = Duration::from_secs(2);

/// An inotify watch of the PID directory, set up but not yet acting on anything.
#[derive(Debug)]
pub struct DiskWatch {
    fd: AsyncFd<OwnedFd>,
    dir: PathBuf,
    wd: Option<i32>,
}

/// What one read of the inotify descriptor said.
#[derive(Debug, Default, PartialEq, Eq)]
struct Batch {
    /// The targets whose PID file changed.
    targets: Vec<TargetId>,
    /// Events were lost (queue overflow): every target must be looked at.
    overflow: bool,
    /// The watch is gone (the directory was removed, moved or unmounted).
    lost: bool,
}

/// The target of a PID file name (`T.pid`); `None` for anything else (dms's temporary
/// files `.T.pid.N-M.tmp`, names that are no target ID).
fn target_of_name(name: &[u8]) -> Option<TargetId> {
    let stem = name.strip_suffix(b".pid")?;
    std::str::from_utf8(stem).ok()?.parse().ok()
}

impl DiskWatch {
    /// Watches `dir` (the store's PID directory). Set it up before the manager's
    /// startup recovery: the changes made after the watch began are queued until
    /// [`DiskWatch::spawn`], so none made after the recovery's scan is missed (those
    /// made before it are looked at again, harmlessly). Call inside a tokio runtime.
    pub fn new(dir: &Path) -> io::Result<DiskWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let wd = inotify::add_watch(&fd, dir, WATCHED).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot watch {} (inotify): {e}", dir.display()),
            )
        })?;
        // SAFETY: an `OwnedFd` is a valid open descriptor that it alone closes, and its
        // `as_raw_fd` always returns the same number while the `AsyncFd` owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(DiskWatch {
            fd,
            dir: dir.to_owned(),
            wd: Some(wd),
        })
    }

    /// Starts acting on the changes: every PID file that changed is synced with the
    /// manager's memory ([`Manager::sync_target`]), at most one sync per target waiting
    /// at a time (changes that come while one waits are seen by it). Ends when the
    /// manager's last other holder is gone, or the descriptor fails.
    pub fn spawn(self, manager: Arc<Manager>) -> JoinHandle<()> {
        tokio::spawn(self.run(manager))
    }

    async fn run(mut self, manager: Arc<Manager>) {
        let weak = Arc::downgrade(&manager);
        drop(manager);
        let pending: Arc<Mutex<HashSet<TargetId>>> = Arc::default();
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 16 * 1024];
        loop {
            let batch = match self.read(&mut buf).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, dir = %self.dir.display(), "cannot read the inotify watch of the PID directory; automatic sync stops (lookups still load helpers found on disk)");
                    return;
                }
            };
            let Some(manager) = weak.upgrade() else {
                return;
            };
            if batch.overflow {
                tracing::warn!(dir = %self.dir.display(), "inotify queue overflow: syncing every target");
                sync_all(manager.clone());
            }
            for target in batch.targets {
                schedule(&manager, &pending, target);
            }
            if batch.lost {
                self.wd = None;
                tracing::warn!(dir = %self.dir.display(), "the PID directory's watch is gone (removed or moved); trying again every {} s", REWATCH_EVERY.as_secs());
                drop(manager);
                self.rewatch(&weak).await;
            }
        }
    }

    /// Waits for the directory to be back, watches it again, and syncs every target.
    async fn rewatch(&mut self, weak: &std::sync::Weak<Manager>) {
        loop {
            tokio::time::sleep(REWATCH_EVERY).await;
            if weak.strong_count() == 0 {
                return;
            }
            if let Ok(wd) = inotify::add_watch(self.fd.get_ref(), &self.dir, WATCHED) {
                self.wd = Some(wd);
                tracing::info!(dir = %self.dir.display(), "watching the PID directory again");
                if let Some(m) = weak.upgrade() {
                    sync_all(m);
                }
                return;
            }
        }
    }

    /// Reads what is queued, waiting for something to be.
    async fn read(&self, buf: &mut [MaybeUninit<u8>]) -> io::Result<Batch> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| read_batch(fd.get_ref(), self.wd, buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Parses every event queued on `fd`; `WouldBlock` when there was none.
fn read_batch(fd: &OwnedFd, wd: Option<i32>, buf: &mut [MaybeUninit<u8>]) -> io::Result<Batch> {
    let mut reader = inotify::Reader::new(fd, buf);
    let mut batch = Batch::default();
    let mut any = false;
    loop {
        let event = match reader.next() {
            Ok(e) => e,
            Err(rustix::io::Errno::AGAIN) if any => return Ok(batch),
            Err(rustix::io::Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        any = true;
        let flags = event.events();
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            batch.overflow = true;
            continue;
        }
        if Some(event.wd()) != wd {
            // A watch removed earlier.
            continue;
        }
        if flags.intersects(
            ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF | ReadFlags::UNMOUNT,
        ) {
            batch.lost = true;
            continue;
        }
        if flags.contains(ReadFlags::ISDIR) {
            continue;
        }
        if let Some(target) = event.file_name().and_then(|n| target_of_name(n.to_bytes())) {
            if !batch.targets.contains(&target) {
                batch.targets.push(target);
            }
        }
    }
}

/// Syncs `target` in a task of its own (it waits for the target's lock, which a kill
/// may hold for its grace period), unless one is already waiting to.
fn schedule(manager: &Arc<Manager>, pending: &Arc<Mutex<HashSet<TargetId>>>, target: TargetId) {
    if !pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(target.clone())
    {
        return;
    }
    let (manager, pending) = (manager.clone(), pending.clone());
    tokio::spawn(async move {
        // Taken off before the sync reads anything: a change after this point starts
        // another sync.
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&target);
        if let Err(e) = manager.sync_target(&target).await {
            tracing::warn!(target = %target, error = %crate::render(&e), "cannot sync the target with its PID file");
        }
    });
}

/// [`Manager::sync_all`] in a task of its own.
fn sync_all(manager: Arc<Manager>) {
    tokio::spawn(async move {
        if let Err(e) = manager.sync_all().await {
            tracing::warn!(error = %crate::render(&e), "cannot sync memory with the PID directory");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pid_file_names_are_targets() {
        assert_eq!(target_of_name(b"t1.pid"), Some("t1".parse().unwrap()));
        assert_eq!(target_of_name(b".t1.pid.123-4.tmp"), None);
        assert_eq!(target_of_name(b"t1.pid.bak"), None);
        assert_eq!(target_of_name(b".pid"), None);
        assert_eq!(target_of_name(b"\xff.pid"), None);
    }

    #[tokio::test]
    async fn writes_renames_and_removals_are_reported_once_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DiskWatch::new(dir.path()).unwrap();
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 4096];
        // A write by hand (create, write, close), an atomic replace (temp + rename) and
        // a removal.
        std::fs::write(dir.path().join("a.pid"), "123").unwrap();
        std::fs::write(dir.path().join(".b.pid.1-1.tmp"), "456\n").unwrap();
        std::fs::rename(dir.path().join(".b.pid.1-1.tmp"), dir.path().join("b.pid")).unwrap();
        std::fs::remove_file(dir.path().join("a.pid")).unwrap();
        std::fs::create_dir(dir.path().join("c.pid")).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let batch = tokio::time::timeout(Duration::from_secs(10), watch.read(&mut buf))
                .await
                .expect("events within 10 s")
                .unwrap();
            assert!(!batch.overflow && !batch.lost, "{batch:?}");
            for t in batch.targets {
                if !seen.contains(&t) {
                    seen.push(t);
                }
            }
        }
        assert_eq!(
            seen,
            ["a".parse().unwrap(), "b".parse::<TargetId>().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_removed_directory_is_a_lost_watch() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("s3");
        std::fs::create_dir(&sub).unwrap();
        let watch = DiskWatch::new(&sub).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 4096];
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.read(&mut buf))
            .await
            .expect("events within 10 s")
            .unwrap();
        assert!(batch.lost, "{batch:?}");
    }
}
