//! The log bounder's thread: it bounds ([`super::bound::bound_log`]) a log when inotify
//! says it was written, not on a timer, so 1,000 idle helpers cost an idle daemon
//! nothing (a pass over them every second was 1,000 `fstatat` calls a second).
//!
//! One inotify watch is on `<run-dir>/logs/` (every `*.log` there, written by any dms
//! process's helpers) and one on each log a tracked helper writes elsewhere (its
//! `--log FILE`), kept in step with the manager's memory every [`RESYNC_EVERY`] and after
//! each batch of events. A write is acted on within [`CHECK_EVERY`]: the thread looks at
//! the written files, then waits that long for the kernel to gather the next writes of
//! a chatty helper into one event. A full pass ([`super::bound::bound_pass`]) runs at
//! start and when the kernel's event queue overflowed. Where inotify cannot be set up
//! (no instance left, the directory missing), the thread falls back to a full pass every
//! [`CHECK_EVERY`], and says so.
//!
//! rustix's inotify, as in `crate::sync`: blocking reads with a `poll` time limit, on a
//! thread of its own.

use super::bound::{bound_one, bound_pass, CHECK_EVERY};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often, without any write, the watches of logs outside the logs directory are
/// brought in step with the manager's memory (and a dropped manager noticed).
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// What a write to a log looks like.
const WRITTEN: WatchFlags = WatchFlags::MODIFY
    .union(WatchFlags::CREATE)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DONT_FOLLOW);

/// The logs to look at after one wait.
#[derive(Debug, Default, PartialEq, Eq)]
struct Written {
    /// The logs that were written.
    paths: HashSet<PathBuf>,
    /// Events were lost: every log must be looked at.
    overflow: bool,
}

/// The inotify watches of the logs.
struct LogWatch {
    fd: OwnedFd,
    logs_dir: PathBuf,
    dir_wd: i32,
    /// The watches of logs outside the logs directory: descriptor -> path.
    others: HashMap<i32, PathBuf>,
}

impl LogWatch {
    fn new(logs_dir: &Path) -> io::Result<LogWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let dir_wd = inotify::add_watch(&fd, logs_dir, WRITTEN | WatchFlags::ONLYDIR)?;
        Ok(LogWatch {
            fd,
            logs_dir: logs_dir.to_owned(),
            dir_wd,
            others: HashMap::new(),
        })
    }

    /// Watches exactly `others` (the logs tracked helpers write outside the logs
    /// directory; a path inside it is already watched through it).
    fn sync_others(&mut self, others: &[PathBuf]) {
        let wanted: HashSet<&PathBuf> = others.iter().filter(|p| !self.covers(p)).collect();
        self.others.retain(|wd, path| {
            let keep = wanted.contains(path);
            if !keep {
                let _ = inotify::remove_watch(&self.fd, *wd);
            }
            keep
        });
        let have: HashSet<PathBuf> = self.others.values().cloned().collect();
        for path in wanted {
            if have.contains(path) {
                continue;
            }
            match inotify::add_watch(&self.fd, path, WatchFlags::MODIFY | WatchFlags::DONT_FOLLOW) {
                Ok(wd) => {
                    // One file may be the log of two targets: one watch.
                    self.others.insert(wd, path.clone());
                }
                // Not there (yet): looked at again at the next sync.
                Err(e) => {
                    tracing::debug!(log = %path.display(), error = %e, "cannot watch a helper's log")
                }
            }
        }
    }

    /// Whether the watch of the logs directory reports writes to `path` (a visible
    /// `*.log` directly in it; any other name there needs a watch of its own).
    fn covers(&self, path: &Path) -> bool {
        path.parent() == Some(self.logs_dir.as_path())
            && path.file_name().is_some_and(|n| is_log_name(n.as_bytes()))
    }

    /// Waits up to `limit` for writes; what was written (empty when none was).
    fn wait(&mut self, limit: Duration, buf: &mut [MaybeUninit<u8>]) -> io::Result<Written> {
        let timeout = rustix::time::Timespec::try_from(limit).unwrap_or(rustix::time::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Ok(Written::default()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Written::default()),
            Err(e) => return Err(e.into()),
        }
        let mut written = Written::default();
        let mut reader = inotify::Reader::new(&self.fd, buf);
        loop {
            let event = match reader.next() {
                Ok(e) => e,
                Err(rustix::io::Errno::AGAIN) => return Ok(written),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                written.overflow = true;
            } else if event.wd() == self.dir_wd {
                if flags.contains(ReadFlags::IGNORED) {
                    // The directory is gone: say so once; the full passes go on.
                    return Err(io::Error::other("the logs directory's watch is gone"));
                }
                let name = event.file_name().map(|n| n.to_bytes()).unwrap_or_default();
                if !flags.contains(ReadFlags::ISDIR) && is_log_name(name) {
                    written
                        .paths
                        .insert(self.logs_dir.join(OsStr::from_bytes(name)));
                }
            } else if flags.contains(ReadFlags::IGNORED) {
                self.others.remove(&event.wd());
            } else if let Some(path) = self.others.get(&event.wd()) {
                written.paths.insert(path.clone());
            }
        }
    }
}

/// A log in the logs directory: `*.log`, not hidden (the bounder's own temporary files
/// and `.1` generations are neither).
fn is_log_name(name: &[u8]) -> bool {
    name.ends_with(b".log") && !name.starts_with(b".")
}

/// Starts the thread that bounds the logs of `manager`'s helpers and of
/// `<run-dir>/logs/` to `max` bytes each, when they are written. A thread of its own,
/// not a task: a runtime busy with requests never delays it. It ends within
/// [`RESYNC_EVERY`] once the manager is dropped.
pub fn spawn_log_bounder(
    manager: &Arc<dms_core::Manager>,
    max: u64,
) -> io::Result<std::thread::JoinHandle<()>> {
    let weak = Arc::downgrade(manager);
    let logs_dir = manager.options().logs_dir();
    let watch = LogWatch::new(&logs_dir);
    std::thread::Builder::new()
        .name("dms-log-bound".into())
        .spawn(move || {
            let others = match weak.upgrade() {
                Some(m) => m.other_log_files(),
                None => return,
            };
            bound_pass(&logs_dir, &others, max);
            let watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(dir = %logs_dir.display(), error = %e, "cannot watch the logs directory (inotify); bounding every log every {} s instead", CHECK_EVERY.as_secs());
                    return poll_forever(&weak, &logs_dir, max);
                }
            };
            if let Err(e) = watched(watch, &weak, max) {
                tracing::warn!(dir = %logs_dir.display(), error = %e, "the logs' inotify watch failed; bounding every log every {} s instead", CHECK_EVERY.as_secs());
                poll_forever(&weak, &logs_dir, max);
            }
        })
}

/// Bounds the logs as they are written, until the manager is dropped.
fn watched(mut watch: LogWatch, weak: &Weak<dms_core::Manager>, max: u64) -> io::Result<()> {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 16 * 1024];
    loop {
        let Some(manager) = weak.upgrade() else {
            return Ok(());
        };
        let others = manager.other_log_files();
        drop(manager);
        watch.sync_others(&others);
        let written = watch.wait(RESYNC_EVERY, &mut buf)?;
        if written.overflow {
            tracing::warn!(dir = %watch.logs_dir.display(), "the logs' inotify queue overflowed: looking at every log");
            bound_pass(&watch.logs_dir, &others, max);
        } else {
            for path in &written.paths {
                bound_one(path, max);
            }
        }
        if written.overflow || !written.paths.is_empty() {
            // Let a chatty helper's next writes gather into one event.
            std::thread::sleep(CHECK_EVERY);
        }
    }
}

/// The fallback: a full pass every [`CHECK_EVERY`], until the manager is dropped.
fn poll_forever(weak: &Weak<dms_core::Manager>, logs_dir: &Path, max: u64) {
    loop {
        std::thread::sleep(CHECK_EVERY);
        let Some(manager) = weak.upgrade() else {
            return;
        };
        let others = manager.other_log_files();
        drop(manager);
        bound_pass(logs_dir, &others, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn buf() -> Vec<MaybeUninit<u8>> {
        vec![MaybeUninit::<u8>::uninit(); 16 * 1024]
    }

    #[test]
    fn a_write_to_a_log_of_the_directory_or_to_a_watched_other_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let other = elsewhere.path().join("mine.out");
        std::fs::write(&other, "").unwrap();
        let mut watch = LogWatch::new(dir.path()).unwrap();
        // A `--log` file in the logs directory without the `.log` name needs its own watch.
        let odd = dir.path().join("t2.out");
        std::fs::write(&odd, "").unwrap();
        watch.sync_others(&[other.clone(), odd.clone(), dir.path().join("t3.log")]);
        assert_eq!(
            watch.others.len(),
            2,
            "t3.log is covered by the directory's watch"
        );
        let mut b = buf();
        assert_eq!(
            watch.wait(Duration::ZERO, &mut b).unwrap(),
            Written::default(),
            "nothing written yet"
        );
        let log = dir.path().join("t1.log");
        std::fs::File::create(&log)
            .unwrap()
            .write_all(b"x\n")
            .unwrap();
        std::fs::write(dir.path().join("t1.log.1"), "older").unwrap();
        std::fs::write(dir.path().join(".t1.log.1.tmp-1"), "tmp").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&other)
            .unwrap()
            .write_all(b"y\n")
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&odd)
            .unwrap()
            .write_all(b"z\n")
            .unwrap();
        let mut seen = HashSet::new();
        // The events are queued by the writes above: read until both came (a bounded
        // number of reads, each waiting up to 5 s).
        for _ in 0..10 {
            seen.extend(watch.wait(Duration::from_secs(5), &mut b).unwrap().paths);
            if seen.len() >= 3 {
                break;
            }
        }
        assert_eq!(seen, HashSet::from([log, other, odd]));
        // No longer tracked: no longer watched.
        watch.sync_others(&[]);
        assert!(watch.others.is_empty());
    }

    #[test]
    fn only_visible_dot_log_names_are_logs() {
        assert!(is_log_name(b"t1.log"));
        assert!(!is_log_name(b"t1.log.1"));
        assert!(!is_log_name(b".t1.log.1.tmp-5"));
        assert!(!is_log_name(b"t1.pid"));
    }
}
