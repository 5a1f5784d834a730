//! The mount layer of `dms`: the [`Mounts`] seam between the manager and the kernel's
//! mounts, for helpers that serve a FUSE mount.
//!
//! The contract every implementation keeps:
//!
//! - **Exactly one mount.** A mount is named by its [`MountIdentity`] (mount ID, device,
//!   and where the kernel has one the unique mount ID), taken when the helper's mount came
//!   up. [`Mounts::prove`], [`Mounts::detach_exact`], [`Mounts::unmount_exact`] and
//!   [`Mounts::fuse_conn`] act on that mount only, never on whatever else lies at or
//!   under its path: a mount made at the path since (a *foreign* mount) is never touched.
//! - **Never hang.** [`Mounts::probe`] answers within its timeout however dead the mount
//!   (a mount that does not answer in time is [`MountState::Stale`]); the synchronous
//!   methods send no request to a FUSE daemon.
//! - **No fixed sleep.** [`Mounts::wait_for_mount`] returns when the mount appears.
//!
//! Implementations:
//!
//! - [`LinuxMounts`]: `/proc/self/mountinfo`, `statfs(2)` in a forked child, `poll(2)`
//!   on the mount table, `umount2(2)` through a descriptor, `/sys/fs/fuse/connections`
//!   (the [`linux`] module's docs tell how).
//! - [`fake::FakeMounts`]: a mount table in memory that tests script (a mount that comes
//!   up after a delay, or never; one that is stale or hangs in probe; a foreign mount at
//!   the same path; a detach that fails with `EBUSY`; FUSE connections) and that records
//!   every call made.
//!
//! ```
//! use dms_mount::fake::FakeMounts;
//! use dms_mount::{Exact, Mounts, MountState, PROBE_TIMEOUT};
//! use std::path::Path;
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mounts = FakeMounts::new(); // or dms_mount::LinuxMounts
//! let dir = Path::new("/mnt/target-1");
//! let entry = mounts.mount(dir); // the fake's helper mounted it
//! let id = mounts.identify(&entry, dir);
//! assert_eq!(mounts.probe(dir, PROBE_TIMEOUT).await, MountState::Mounted);
//! assert_eq!(mounts.detach_exact(dir, &id)?, Exact::Done);
//! assert_eq!(mounts.probe(dir, PROBE_TIMEOUT).await, MountState::Unmounted);
//! # Ok::<(), std::io::Error>(())
//! # }).unwrap();
//! ```

mod conn;
pub mod fake;
pub mod linux;
mod table;

pub use conn::{ConnHandle, FuseConn};
pub use linux::{
    abort_connection, connection_exists, detach, detach_exact, mount_ids_at, probe, prove,
    read_mountinfo, unmount, unmount_exact, wait_for_mount, LinuxMounts, FUSE_CONNECTIONS,
    MOUNTINFO,
};
pub use table::{
    fuse_mounts_under, mount_at, mount_ids_in, parse_mountinfo, Exact, MountEntry, MountIdentity,
    MountState, Proof,
};

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a mount may take to answer `statfs` before it counts as stale.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many mount probes of one listing run at a time ([`probe_all`]).
pub const PROBE_CONCURRENCY: usize = 32;
/// The least time a probe started late in a [`probe_all`] gets: a mount that
/// answers at all answers `statfs` well within it.
pub const LATE_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// The mount mechanics the manager uses: read the mount table, wait for a mount, probe
/// it, prove a recorded mount is the one at its path, unmount or detach exactly that
/// mount, and hold its FUSE connection. See the crate docs for the contract.
///
/// The methods that send no request to a file system are synchronous (as the process
/// layer's `Spawner` does for its cheap calls); the ones that wait are `async`.
#[async_trait]
pub trait Mounts: fmt::Debug + Send + Sync {
    /// The mount table of dms's mount namespace, in the kernel's order: a later entry
    /// at a path lies on top of an earlier one ([`mount_at`] finds the topmost).
    fn read_table(&self) -> io::Result<Vec<MountEntry>>;

    /// The mount IDs at `path` now (empty: nothing is mounted there).
    fn mount_ids_at(&self, path: &Path) -> io::Result<HashSet<u64>>;

    /// The identity of `entry`, the topmost mount at `path`, to record: its ID and
    /// device, and its unique ID where there is one (read through `path`, without a
    /// request to the file system).
    fn identify(&self, entry: &MountEntry, path: &Path) -> MountIdentity;

    /// The state of the mount point `path`: [`MountState::Unmounted`] when nothing is
    /// mounted there; else [`MountState::Mounted`] when the file system answers (even
    /// with an error), [`MountState::Stale`] when its daemon is gone (`ENOTCONN`) or
    /// gives no answer within `timeout`. Never takes much longer than `timeout`; a hung
    /// mount gets at most one probe in flight at a time.
    async fn probe(&self, path: &Path, timeout: Duration) -> MountState;

    /// Waits until a mount whose ID is not in `before` is the topmost at `path`, and
    /// returns it. No timer: it wakes on each change to the mount table. Never returns
    /// by itself otherwise: put a timeout around it (dropping the future stops the wait).
    async fn wait_for_mount(&self, path: &Path, before: HashSet<u64>) -> io::Result<MountEntry>;

    /// Whether the topmost mount at `path` is the mount `id`: [`Proof::Ours`] with a
    /// descriptor that pins it, [`Proof::Gone`] when that mount is no longer there
    /// (whatever is mounted at the path now is another), [`Proof::Covered`] when another
    /// mount lies on top of it. Sends no request to the file system.
    fn prove(&self, path: &Path, id: &MountIdentity) -> io::Result<Proof>;

    /// Detaches (`MNT_DETACH`, a lazy unmount that succeeds on a stale mount) the mount
    /// `id` at `path`, once proven, and nothing else: [`Exact::Gone`] and
    /// [`Exact::Covered`] touch nothing. An error (`EBUSY`, `EPERM`, ...) leaves it in
    /// place.
    fn detach_exact(&self, path: &Path, id: &MountIdentity) -> io::Result<Exact>;

    /// A clean unmount (`umount2(path, 0)`) of the mount `id`, when it is the topmost at
    /// `path`; as [`Mounts::detach_exact`] otherwise. A FUSE daemon exits by itself once
    /// its mount is cleanly unmounted; a busy mount fails with `EBUSY`.
    fn unmount_exact(&self, path: &Path, id: &MountIdentity) -> io::Result<Exact>;

    /// The FUSE connection of the mount `id` at `path`, taken while that mount is proven
    /// there, so that acting on it later ([`FuseConn::exists`], [`FuseConn::abort`])
    /// reaches only that mount's connection. `Ok(None)` when the mount is gone or
    /// covered, is not FUSE, or its connection cannot be reached.
    fn fuse_conn(&self, path: &Path, id: &MountIdentity) -> io::Result<Option<FuseConn>>;
}

/// The states of the mount points `paths` through `mounts`, probed concurrently
/// ([`PROBE_CONCURRENCY`] at a time) under one deadline, `timeout` from now: however many
/// of them hang, the answer comes after about `timeout` (with more than
/// [`PROBE_CONCURRENCY`] hung mounts, a probe that starts after the deadline still gets
/// [`LATE_PROBE_TIMEOUT`]). Each distinct path is probed once. A policy over
/// [`Mounts::probe`], the same for every implementation.
pub async fn probe_all(
    mounts: Arc<dyn Mounts>,
    paths: impl IntoIterator<Item = PathBuf>,
    timeout: Duration,
) -> HashMap<PathBuf, MountState> {
    let deadline = tokio::time::Instant::now() + timeout;
    let slots = Arc::new(tokio::sync::Semaphore::new(PROBE_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    let mut seen = HashSet::new();
    for path in paths {
        if !seen.insert(path.clone()) {
            continue;
        }
        let (slots, mounts) = (slots.clone(), mounts.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let state = mounts.probe(&path, left.max(LATE_PROBE_TIMEOUT)).await;
            (path, state)
        });
    }
    let mut out = HashMap::with_capacity(seen.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((path, state)) => {
                out.insert(path, state);
            }
            Err(e) => tracing::warn!(error = %e, "a mount probe task failed"),
        }
    }
    out
}
