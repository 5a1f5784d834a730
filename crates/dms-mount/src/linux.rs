//! [`LinuxMounts`]: the mount mechanics on Linux, and the free functions it is made of.
//!
//! - **Mount table**: `/proc/self/mountinfo`, parsed by [`crate::parse_mountinfo`].
//! - **Readiness** ([`wait_for_mount`]): a thread reads the mount table, then sleeps in
//!   `poll(2)` on it for `POLLPRI`, which the kernel raises on every change to the mount
//!   namespace; it reads again on each change. No timer, no fixed sleep.
//! - **State** ([`probe`]): not in the mount table is [`MountState::Unmounted`]; else
//!   `statfs(2)` of the mount point, in a forked child process, decides: an answer is
//!   [`MountState::Mounted`], `ENOTCONN`/`ECONNABORTED` or no answer within the timeout
//!   is [`MountState::Stale`]. `statfs` always reaches the FUSE daemon (`stat` may be
//!   answered from the attribute cache). A probe that hangs is SIGKILLed and abandoned,
//!   never awaited: dms cannot hang on a dead mount, and at most one probe per path is
//!   in flight. (A child, not a thread: a thread stuck in an unanswered FUSE request
//!   sleeps uninterruptibly and would keep dms from exiting.)
//! - **One mount exactly** ([`prove`], [`detach_exact`], [`unmount_exact`],
//!   [`FuseConn::open`]): see the `own` module's docs, summed up on [`crate::Mounts`].

mod own;
mod probe;

pub use own::{detach_exact, prove, unmount_exact};

use crate::{
    mount_at, mount_ids_in, parse_mountinfo, Exact, FuseConn, MountEntry, MountIdentity,
    MountState, Mounts, Proof,
};
use async_trait::async_trait;
use probe::{statfs_with_timeout, Answer};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::mount::UnmountFlags;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;

/// The mount table of dms's own mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where the kernel lists FUSE connections (the `fusectl` file system).
pub const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// The mount mechanics of the running Linux system: each method is the free function
/// of the same name in this module (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxMounts;

#[async_trait]
impl Mounts for LinuxMounts {
    fn read_table(&self) -> io::Result<Vec<MountEntry>> {
        read_mountinfo()
    }

    fn mount_ids_at(&self, path: &Path) -> io::Result<HashSet<u64>> {
        mount_ids_at(path)
    }

    fn identify(&self, entry: &MountEntry, path: &Path) -> MountIdentity {
        MountIdentity::of(entry, path)
    }

    async fn probe(&self, path: &Path, timeout: Duration) -> MountState {
        probe(path, timeout).await
    }

    async fn wait_for_mount(&self, path: &Path, before: HashSet<u64>) -> io::Result<MountEntry> {
        wait_for_mount(path, before).await
    }

    fn prove(&self, path: &Path, id: &MountIdentity) -> io::Result<Proof> {
        prove(path, id)
    }

    fn detach_exact(&self, path: &Path, id: &MountIdentity) -> io::Result<Exact> {
        detach_exact(path, id)
    }

    fn unmount_exact(&self, path: &Path, id: &MountIdentity) -> io::Result<Exact> {
        unmount_exact(path, id)
    }

    fn fuse_conn(&self, path: &Path, id: &MountIdentity) -> io::Result<Option<FuseConn>> {
        FuseConn::open(path, id)
    }
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read(MOUNTINFO)?))
}

/// The state of the mount point `path`: see the module docs. Never blocks longer than
/// `timeout` (plus reading the mount table).
pub async fn probe(path: &Path, timeout: Duration) -> MountState {
    match read_mountinfo() {
        Ok(table) if mount_at(&table, path).is_none() => return MountState::Unmounted,
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read {MOUNTINFO}; probing the path"),
    }
    match statfs_with_timeout(path, timeout).await {
        Ok(Answer::Ok) => MountState::Mounted,
        Ok(Answer::NotConnected) => MountState::Stale,
        Ok(Answer::Other(errno)) => {
            // The file system answered, with an error: it is alive.
            tracing::debug!(path = %path.display(), errno, "statfs answered with an error");
            MountState::Mounted
        }
        Ok(Answer::Silent) => {
            tracing::warn!(path = %path.display(), ?timeout, "mount did not answer statfs in time; counted as stale");
            MountState::Stale
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot start a prober; counted as stale");
            MountState::Stale
        }
    }
}

/// Waits until a mount whose ID is not in `before` appears at `path`, and returns it.
///
/// A thread reads `/proc/self/mountinfo` and then waits in `poll(2)` for the kernel's
/// change notification (`POLLPRI`) before reading again. Dropping the returned future
/// stops the thread (a pipe it also polls is closed). Put a timeout around it.
pub async fn wait_for_mount(path: &Path, before: HashSet<u64>) -> io::Result<MountEntry> {
    let (tx, rx) = oneshot::channel();
    let (cancel_rx, cancel_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("dms-mount-wait".into())
        .spawn(move || {
            let _ = tx.send(watch_mountinfo(&path, &before, &cancel_rx));
        })?;
    let out = rx.await.unwrap_or_else(|_| {
        Err(io::Error::other(
            "the mount-table watcher thread ended without an answer",
        ))
    });
    drop(cancel_tx);
    out
}

/// The body of the [`wait_for_mount`] thread. Returns an error `Interrupted` when
/// cancelled.
fn watch_mountinfo(path: &Path, before: &HashSet<u64>, cancel: &OwnedFd) -> io::Result<MountEntry> {
    let mut file = File::open(MOUNTINFO)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut buf)?;
        let table = parse_mountinfo(&buf);
        if let Some(m) = mount_at(&table, path).filter(|m| !before.contains(&m.mount_id)) {
            return Ok(m.clone());
        }
        let mut fds = [
            PollFd::new(&file, PollFlags::PRI),
            PollFd::new(cancel, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[1].revents().is_empty() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
    }
}

/// The mount IDs at `path` now.
pub fn mount_ids_at(path: &Path) -> io::Result<HashSet<u64>> {
    Ok(mount_ids_in(&read_mountinfo()?, path))
}

/// `umount2(path, 0)`: a clean unmount.
pub fn unmount(path: &Path) -> Result<(), Errno> {
    rustix::mount::unmount(path, UnmountFlags::empty())
}

/// `umount2(path, MNT_DETACH)`: a lazy unmount, which succeeds on a stale or busy mount.
pub fn detach(path: &Path) -> Result<(), Errno> {
    rustix::mount::unmount(path, UnmountFlags::DETACH)
}

/// Aborts FUSE connection `minor` by writing to `/sys/fs/fuse/connections/N/abort`: every
/// pending and future request fails, so nothing stays blocked on a hung daemon. Mounts
/// the `fusectl` file system there first if it is not mounted. `Ok(false)` when the
/// connection no longer exists.
pub fn abort_connection(minor: u32) -> io::Result<bool> {
    let conns = Path::new(FUSE_CONNECTIONS);
    let dir = conns.join(minor.to_string());
    if !dir.exists() {
        ensure_fusectl(conns)?;
        if !dir.exists() {
            return Ok(false);
        }
    }
    std::fs::write(dir.join("abort"), b"1")?;
    Ok(true)
}

/// Whether FUSE connection `minor` still exists (its super block is alive). Mounts
/// `fusectl` if needed; `None` if that is impossible.
pub fn connection_exists(minor: u32) -> Option<bool> {
    let conns = Path::new(FUSE_CONNECTIONS);
    match ensure_fusectl(conns) {
        Ok(true) => Some(conns.join(minor.to_string()).exists()),
        Ok(false) | Err(_) => None,
    }
}

/// Mounts the `fusectl` file system at `conns` unless it is mounted there already.
/// `Ok(false)` when it is not mounted and cannot be (`conns` is not a directory).
fn ensure_fusectl(conns: &Path) -> io::Result<bool> {
    if mount_at(&read_mountinfo()?, conns).is_some() {
        return Ok(true);
    }
    if !conns.is_dir() {
        return Ok(false);
    }
    rustix::mount::mount(
        "fusectl",
        conns,
        "fusectl",
        rustix::mount::MountFlags::empty(),
        None,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROBE_TIMEOUT;

    #[tokio::test]
    async fn a_plain_directory_is_unmounted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            probe(dir.path(), PROBE_TIMEOUT).await,
            MountState::Unmounted
        );
    }
}
