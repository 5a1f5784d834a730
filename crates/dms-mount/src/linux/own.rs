//! Acting on exactly one mount: the one a record identifies, never whatever lies at or
//! under a path.
//!
//! - [`MountIdentity`]: a mount's ID and device, from `/proc/self/mountinfo`, and its
//!   64-bit unique mount ID (`statx` `STATX_MNT_ID_UNIQUE`, Linux 6.8 and later), taken
//!   when the helper's mount came up ([`MountIdentity::of`]). The mountinfo ID and the
//!   FUSE device number are both reused as soon as a mount is gone (a new FUSE mount at
//!   the same path commonly gets the very same pair); the unique ID is never reused
//!   before a reboot. Where the kernel has no unique ID, ID and device are all there
//!   is, and a mount made right after the recorded one vanished could be taken for it.
//! - [`prove`]: opens the mount point (`O_PATH`: no request reaches the file system),
//!   checks in `/proc/self/fdinfo` that the descriptor is on the recorded mount ID, and
//!   with `statx` (no attribute asked of the file system, so no request to a hung FUSE
//!   daemon) that its unique ID is the recorded one. The descriptor then pins that mount.
//! - [`detach_exact`]: detaches the proven mount through that descriptor
//!   (`/proc/self/fd/N`), so another mount that appears at the path meanwhile is never
//!   the one detached.
//! - [`unmount_exact`]: a clean unmount of the path when the topmost mount there is the
//!   recorded one (a descriptor held open would make it fail as busy, so this one checks
//!   the table right before `umount2`).
//! - [`FuseConn::open`]: the recorded mount's FUSE connection, held as a descriptor of
//!   its `/sys/fs/fuse/connections/N` directory while the mount is proven present. The
//!   directory of a connection that ended is removed, and a later connection that gets
//!   the same number gets a new directory, so aborting through the descriptor can only
//!   ever reach the recorded mount's connection.

use super::{ensure_fusectl, read_mountinfo, FUSE_CONNECTIONS};
use crate::{ConnHandle, Exact, FuseConn, MountEntry, MountIdentity, Proof};
use rustix::fs::{Mode, OFlags};
use rustix::mount::UnmountFlags;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

impl MountIdentity {
    /// The identity of `entry`, the topmost mount at `path` (its unique ID read through
    /// the path; `None` if the path is not on that mount or the kernel has none).
    pub fn of(entry: &MountEntry, path: &Path) -> MountIdentity {
        let unique = open_path(path)
            .ok()
            .filter(|fd| mount_id_of(fd).ok() == Some(entry.mount_id))
            .and_then(|fd| unique_id_of(&fd));
        MountIdentity {
            mount_id: entry.mount_id,
            major: entry.major,
            minor: entry.minor,
            unique,
        }
    }
}

/// The `mnt_id` of an open descriptor, from `/proc/self/fdinfo`.
fn mount_id_of(fd: &OwnedFd) -> io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no mnt_id in /proc/self/fdinfo"))
}

/// `path` opened `O_PATH` (no request reaches its file system), not following a final
/// symbolic link.
fn open_path(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The unique mount ID of the mount `fd` is on, where the kernel has them. Asks the file
/// system for no attribute (`AT_STATX_DONT_SYNC`, and only `STATX_MNT_ID_UNIQUE`, which
/// the VFS fills), so a hung FUSE daemon is never asked.
fn unique_id_of(fd: &OwnedFd) -> Option<u64> {
    // Through libc: rustix's `StatxFlags` has no `STATX_MNT_ID_UNIQUE` (Linux 6.8).
    // SAFETY: statx writes into the zeroed buffer we own; the path is a C string literal.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
            libc::STATX_MNT_ID_UNIQUE,
            &mut buf,
        )
    };
    (rc == 0 && buf.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0).then_some(buf.stx_mnt_id)
}

/// Proves that the topmost mount at `path` is the mount `id`; see the module docs.
pub fn prove(path: &Path, id: &MountIdentity) -> io::Result<Proof> {
    if id.find_at(&read_mountinfo()?, path).is_none() {
        return Ok(Proof::Gone);
    }
    let fd = match open_path(path) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            return Ok(Proof::Covered)
        }
        Err(e) => return Err(e.into()),
    };
    if mount_id_of(&fd)? != id.mount_id {
        return Ok(Proof::Covered);
    }
    // The descriptor holds the mount now: its ID cannot pass to another meanwhile.
    if let (Some(recorded), Some(now)) = (id.unique, unique_id_of(&fd)) {
        if recorded != now {
            return Ok(Proof::Gone);
        }
    }
    Ok(Proof::Ours(fd))
}

/// Detaches (`MNT_DETACH`) the mount `id` at `path` and nothing else; see the module
/// docs.
pub fn detach_exact(path: &Path, id: &MountIdentity) -> io::Result<Exact> {
    let fd = match prove(path, id)? {
        Proof::Ours(fd) => fd,
        Proof::Gone => return Ok(Exact::Gone),
        Proof::Covered => return Ok(Exact::Covered),
    };
    rustix::mount::unmount(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        UnmountFlags::DETACH,
    )?;
    Ok(Exact::Done)
}

/// A clean unmount (`umount2(path, 0)`) of the mount `id`, when it is the topmost mount
/// at `path`.
pub fn unmount_exact(path: &Path, id: &MountIdentity) -> io::Result<Exact> {
    match prove(path, id)? {
        // Closed before the unmount: a descriptor on the mount would make it busy.
        Proof::Ours(fd) => drop(fd),
        Proof::Gone => return Ok(Exact::Gone),
        Proof::Covered => return Ok(Exact::Covered),
    }
    rustix::mount::unmount(path, UnmountFlags::empty())?;
    Ok(Exact::Done)
}

/// A connection's `/sys/fs/fuse/connections/N` directory, held open.
#[derive(Debug)]
struct ConnDir(OwnedFd);

impl ConnHandle for ConnDir {
    fn exists(&self) -> bool {
        rustix::fs::openat(
            &self.0,
            "waiting",
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .is_ok()
    }

    fn abort(&self) -> io::Result<bool> {
        let fd = match rustix::fs::openat(
            &self.0,
            "abort",
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        std::fs::File::from(fd).write_all(b"1")?;
        Ok(true)
    }
}

impl FuseConn {
    /// The connection of the mount `id` at `path`, once that mount is proven there
    /// ([`prove`]), on Linux (what [`crate::LinuxMounts`] hands out). `Ok(None)` when it
    /// is gone or covered, is not FUSE, or `fusectl` cannot be mounted.
    pub fn open(path: &Path, id: &MountIdentity) -> io::Result<Option<FuseConn>> {
        if !id
            .find_at(&read_mountinfo()?, path)
            .is_some_and(MountEntry::is_fuse)
        {
            return Ok(None);
        }
        // Held while the directory is opened: the mount, so its super block and its
        // device number, stay the recorded mount's.
        let Proof::Ours(_pin) = prove(path, id)? else {
            return Ok(None);
        };
        let conns = Path::new(FUSE_CONNECTIONS);
        if !ensure_fusectl(conns)? {
            return Ok(None);
        }
        let name = id.connection_name();
        let dir = match rustix::fs::open(
            conns.join(&name),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(FuseConn::new(name, Box::new(ConnDir(dir)))))
    }
}
