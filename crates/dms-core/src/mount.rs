//! Mount awareness: the mount mechanics (is a helper's mount point mounted, answering,
//! stale; waiting for a mount to appear without fixed sleeps; unmounting, detaching and
//! aborting FUSE connections) and the record of each target's mount path that outlives
//! its PID file.
//!
//! The mechanics live in the [`dms_mount`] crate, behind its [`Mounts`] trait, and are
//! re-exported here: [`LinuxMounts`] is the real one (the manager's default,
//! [`crate::ManagerOptions::mounts`]), [`FakeMounts`] a scriptable mount table for
//! tests. The free functions are the Linux mechanics, for callers without a manager.
//! The record ([`MountRegistry`], `<run-dir>/mounts/`) is the manager's bookkeeping and
//! lives here.
//!
//! ```no_run
//! use dms_core::mount;
//! use std::path::Path;
//! use std::time::Duration;
//! # async fn f() -> std::io::Result<()> {
//! let dir = Path::new("/mnt/target-1");
//! let table = mount::read_mountinfo()?;
//! if let Some(m) = mount::mount_at(&table, dir) {
//!     println!("{} is a {} mount (connection {})", dir.display(), m.fs_type, m.minor);
//! }
//! println!("{:?}", mount::probe(dir, Duration::from_secs(2)).await);
//! # Ok(()) }
//! ```

mod registry;

pub use dms_mount::fake::{self, FakeMounts};
pub use dms_mount::{
    abort_connection, connection_exists, detach, detach_exact, fuse_mounts_under, mount_at,
    mount_ids_at, mount_ids_in, parse_mountinfo, probe, probe_all, prove, read_mountinfo, unmount,
    unmount_exact, wait_for_mount, ConnHandle, Exact, FuseConn, LinuxMounts, MountEntry,
    MountIdentity, MountState, Mounts, Proof, FUSE_CONNECTIONS, LATE_PROBE_TIMEOUT, MOUNTINFO,
    PROBE_CONCURRENCY, PROBE_TIMEOUT,
};
pub use registry::{MountRecord, MountRegistry, MAX_RECORD};
