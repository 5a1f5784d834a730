//! [`FakeMounts`]: a mount table in memory, for tests of the layers above without root or
//! `/dev/fuse`.
//!
//! It keeps the [`Mounts`] contract the way the kernel does: a mount is identified by
//! its ID, device and unique ID; [`Mounts::prove`] says [`Proof::Gone`] for a recorded
//! mount that was replaced (even by one that reuses its ID and device, as the kernel
//! commonly does) and [`Proof::Covered`] for one with another on top; exact unmounts and
//! detaches remove that one mount only. Tests script it:
//!
//! - a mount that comes up: now ([`FakeMounts::mount`]), or some time after the manager
//!   starts waiting for it ([`FakeMounts::mount_when_awaited`]); a mount that never
//!   comes up is simply never scripted;
//! - its health ([`Health`]): answering, stale (`ENOTCONN`), or hanging in `statfs`
//!   (a probe then takes its whole timeout and reads stale);
//! - a foreign mount at a recorded path ([`FakeMounts::vanish`] then
//!   [`FakeMounts::mount`] or [`FakeMounts::mount_reusing_ids`]);
//! - failures: a detach or clean unmount that fails with an errno, once
//!   ([`FakeMounts::fail_detach`], [`FakeMounts::fail_unmount`]); a mount held open
//!   ([`FakeMounts::hold_open`]: a clean unmount is `EBUSY` and its FUSE connection
//!   outlives a detach, as when a process holds a file on it);
//! - what happens when a mount is removed ([`FakeMounts::on_removed`]: a FUSE helper
//!   exits once its mount is unmounted).
//!
//! Every call made through [`Mounts`] (and on the connections it hands out) is
//! recorded ([`FakeMounts::calls`]). Waits and hangs use tokio time, so they work with
//! paused time.

use crate::{
    mount_at, mount_ids_in, ConnHandle, Exact, FuseConn, MountEntry, MountIdentity, MountState,
    Mounts, Proof,
};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How a fake mount answers a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `statfs` answers: [`MountState::Mounted`].
    Answers,
    /// Its daemon is gone (`ENOTCONN`): [`MountState::Stale`] at once.
    Stale,
    /// `statfs` never answers: the probe takes its whole timeout, then reads
    /// [`MountState::Stale`].
    Hangs,
}

/// One call made to a [`FakeMounts`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    /// [`Mounts::read_table`] (also through [`Mounts::mount_ids_at`]).
    ReadTable,
    /// [`Mounts::identify`] of the mount with this ID.
    Identify(PathBuf, u64),
    /// [`Mounts::probe`] of this path (also through [`crate::probe_all`]).
    Probe(PathBuf),
    /// [`Mounts::wait_for_mount`] at this path.
    WaitForMount(PathBuf),
    /// [`Mounts::prove`] of the mount with this ID.
    Prove(PathBuf, u64),
    /// [`Mounts::detach_exact`] of the mount with this ID.
    DetachExact(PathBuf, u64),
    /// [`Mounts::unmount_exact`] of the mount with this ID.
    UnmountExact(PathBuf, u64),
    /// [`Mounts::fuse_conn`] of the mount with this ID.
    FuseConn(PathBuf, u64),
    /// [`FuseConn::exists`] of the connection with this number.
    ConnExists(u32),
    /// [`FuseConn::abort`] of the connection with this number.
    ConnAbort(u32),
}

/// The state of one fake FUSE connection ([`FakeMounts::connection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnState {
    /// Its number (the mount's minor device number).
    pub minor: u32,
    /// Whether it still exists (its mount is there, or held open).
    pub alive: bool,
    /// Whether it was aborted.
    pub aborted: bool,
}

/// What runs when a mount is removed by an exact unmount or detach.
type Hook = Arc<dyn Fn(&MountEntry) + Send + Sync>;

struct FakeMount {
    entry: MountEntry,
    unique: u64,
    health: Health,
    held: bool,
}

#[derive(Default)]
struct State {
    table: Vec<FakeMount>,
    next_id: u64,
    next_minor: u32,
    next_unique: u64,
    on_wait: HashMap<PathBuf, (Duration, Health)>,
    detach_errors: HashMap<PathBuf, VecDeque<i32>>,
    unmount_errors: HashMap<PathBuf, VecDeque<i32>>,
    /// By unique mount ID.
    conns: Vec<(u64, ConnState)>,
    calls: Vec<MountCall>,
    hooks: Vec<Hook>,
}

impl State {
    fn topmost(&mut self, path: &Path) -> Option<&mut FakeMount> {
        self.table
            .iter_mut()
            .rev()
            .find(|m| m.entry.mount_point == path)
    }

    fn add(&mut self, path: &Path, fs_type: &str, reuse: Option<(u64, u32)>) -> MountEntry {
        self.next_unique += 1;
        let (mount_id, minor) = reuse.unwrap_or_else(|| {
            self.next_id += 1;
            self.next_minor += 1;
            (1000 + self.next_id, 100 + self.next_minor)
        });
        let entry = MountEntry {
            mount_id,
            major: 0,
            minor,
            mount_point: path.to_owned(),
            fs_type: fs_type.to_owned(),
            source: "fake".to_owned(),
        };
        if entry.is_fuse() {
            self.conns.push((
                self.next_unique,
                ConnState {
                    minor,
                    alive: true,
                    aborted: false,
                },
            ));
        }
        self.table.push(FakeMount {
            entry: entry.clone(),
            unique: self.next_unique,
            health: Health::Answers,
            held: false,
        });
        entry
    }

    /// Where the mount `id` is in the table, by the rules of [`Mounts::prove`].
    fn prove(&self, path: &Path, id: &MountIdentity) -> Result<usize, Exact> {
        let Some(at) = self
            .table
            .iter()
            .position(|m| id.matches(&m.entry) && m.entry.mount_point == path)
        else {
            return Err(Exact::Gone);
        };
        let top = self.table.iter().rposition(|m| m.entry.mount_point == path);
        if top != Some(at) {
            return Err(Exact::Covered);
        }
        if id.unique.is_some_and(|u| u != self.table[at].unique) {
            return Err(Exact::Gone);
        }
        Ok(at)
    }

    fn conn(&mut self, unique: u64) -> Option<&mut ConnState> {
        self.conns
            .iter_mut()
            .find(|(u, _)| *u == unique)
            .map(|(_, c)| c)
    }

    /// Removes mount `at`; its connection ends unless the mount is held open.
    fn remove(&mut self, at: usize) -> MountEntry {
        let m = self.table.remove(at);
        if !m.held {
            if let Some(c) = self.conn(m.unique) {
                c.alive = false;
            }
        }
        m.entry
    }
}

/// A scriptable mount table in memory; see the module docs. Clones share one table.
#[derive(Clone)]
pub struct FakeMounts {
    state: Arc<Mutex<State>>,
    changes: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for FakeMounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("FakeMounts")
            .field("mounts", &st.table.len())
            .field("calls", &st.calls.len())
            .finish_non_exhaustive()
    }
}

impl Default for FakeMounts {
    fn default() -> FakeMounts {
        FakeMounts::new()
    }
}

impl FakeMounts {
    /// An empty mount table.
    pub fn new() -> FakeMounts {
        FakeMounts {
            state: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn record(&self, call: MountCall) {
        self.lock().calls.push(call);
    }

    /// A FUSE mount (`fuse.fake`, answering, with a live connection) comes up at `path`
    /// now, on top of whatever is there, with a new mount ID and connection number.
    pub fn mount(&self, path: impl AsRef<Path>) -> MountEntry {
        self.mount_fs(path, "fuse.fake")
    }

    /// A mount of file system type `fs_type` comes up at `path` now (a FUSE type gets a
    /// connection).
    pub fn mount_fs(&self, path: impl AsRef<Path>, fs_type: &str) -> MountEntry {
        let e = self.lock().add(path.as_ref(), fs_type, None);
        self.changed();
        e
    }

    /// A FUSE mount comes up at `path` with the mount ID and device of `old` (gone by
    /// now, or it would be covered), as the kernel commonly hands them out again; only
    /// its unique ID tells it apart.
    pub fn mount_reusing_ids(&self, path: impl AsRef<Path>, old: &MountEntry) -> MountEntry {
        let e = self
            .lock()
            .add(path.as_ref(), "fuse.fake", Some((old.mount_id, old.minor)));
        self.changed();
        e
    }

    /// The next [`Mounts::wait_for_mount`] at `path` makes a FUSE mount with `health`
    /// come up there `after` it started (as a helper mounts some time after its spawn).
    pub fn mount_when_awaited(&self, path: impl AsRef<Path>, after: Duration, health: Health) {
        self.lock()
            .on_wait
            .insert(path.as_ref().to_owned(), (after, health));
    }

    /// Sets the health of the topmost mount at `path`; false if nothing is mounted there.
    pub fn set_health(&self, path: impl AsRef<Path>, health: Health) -> bool {
        let mut st = self.lock();
        st.topmost(path.as_ref())
            .map(|m| m.health = health)
            .is_some()
    }

    /// Holds the topmost mount at `path` open (a process has a file on it): a clean
    /// unmount fails with `EBUSY`, and its connection outlives a detach until aborted.
    /// False if nothing is mounted there.
    pub fn hold_open(&self, path: impl AsRef<Path>) -> bool {
        let mut st = self.lock();
        st.topmost(path.as_ref()).map(|m| m.held = true).is_some()
    }

    /// The topmost mount at `path` goes away by itself (someone else unmounted it); no
    /// hook runs. Its connection ends unless it is held open.
    pub fn vanish(&self, path: impl AsRef<Path>) -> Option<MountEntry> {
        let path = path.as_ref();
        let gone = {
            let mut st = self.lock();
            let at = st.table.iter().rposition(|m| m.entry.mount_point == path)?;
            st.remove(at)
        };
        self.changed();
        Some(gone)
    }

    /// The next exact detach at `path` of a proven mount fails with `errno`.
    pub fn fail_detach(&self, path: impl AsRef<Path>, errno: i32) {
        let mut st = self.lock();
        st.detach_errors
            .entry(path.as_ref().to_owned())
            .or_default()
            .push_back(errno);
    }

    /// The next clean exact unmount at `path` of a proven mount fails with `errno`.
    pub fn fail_unmount(&self, path: impl AsRef<Path>, errno: i32) {
        let mut st = self.lock();
        st.unmount_errors
            .entry(path.as_ref().to_owned())
            .or_default()
            .push_back(errno);
    }

    /// Runs `hook` with each mount an exact unmount or detach removes, after it is gone
    /// (a FUSE helper exits once its mount is unmounted: let the hook make it exit).
    pub fn on_removed(&self, hook: impl Fn(&MountEntry) + Send + Sync + 'static) {
        self.lock().hooks.push(Arc::new(hook));
    }

    /// The mount table now.
    pub fn table(&self) -> Vec<MountEntry> {
        self.lock().table.iter().map(|m| m.entry.clone()).collect()
    }

    /// Whether the mount `entry` (this very one, by its unique ID) is still mounted.
    pub fn is_mounted(&self, entry: &MountEntry) -> bool {
        self.lock().table.iter().any(|m| m.entry == *entry)
    }

    /// The latest FUSE connection with number `minor`.
    pub fn connection(&self, minor: u32) -> Option<ConnState> {
        self.lock()
            .conns
            .iter()
            .rev()
            .find(|(_, c)| c.minor == minor)
            .map(|(_, c)| *c)
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<MountCall> {
        self.lock().calls.clone()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Exact unmount or detach of `path` / `id`, by `errors`.
    fn remove_exact(&self, path: &Path, id: &MountIdentity, detach: bool) -> io::Result<Exact> {
        let (removed, hooks) = {
            let mut st = self.lock();
            let at = match st.prove(path, id) {
                Ok(at) => at,
                Err(e) => return Ok(e),
            };
            let errors = match detach {
                true => &mut st.detach_errors,
                false => &mut st.unmount_errors,
            };
            if let Some(errno) = errors.get_mut(path).and_then(VecDeque::pop_front) {
                return Err(io::Error::from_raw_os_error(errno));
            }
            if !detach && st.table[at].held {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            (st.remove(at), st.hooks.clone())
        };
        self.changed();
        for hook in hooks {
            hook(&removed);
        }
        Ok(Exact::Done)
    }
}

/// A connection handed out by [`FakeMounts`].
#[derive(Debug)]
struct FakeConn {
    unique: u64,
    minor: u32,
    mounts: FakeMounts,
}

impl ConnHandle for FakeConn {
    fn exists(&self) -> bool {
        self.mounts.record(MountCall::ConnExists(self.minor));
        self.mounts
            .lock()
            .conn(self.unique)
            .is_some_and(|c| c.alive)
    }

    fn abort(&self) -> io::Result<bool> {
        self.mounts.record(MountCall::ConnAbort(self.minor));
        let mut st = self.mounts.lock();
        let mounted = st.table.iter().any(|m| m.unique == self.unique);
        let Some(c) = st.conn(self.unique).filter(|c| c.alive) else {
            return Ok(false);
        };
        c.aborted = true;
        // Requests now fail (the mount, if still there, is stale); a detached mount's
        // connection ends.
        c.alive = mounted;
        for m in st.table.iter_mut().filter(|m| m.unique == self.unique) {
            m.health = Health::Stale;
        }
        Ok(true)
    }
}

#[async_trait]
impl Mounts for FakeMounts {
    fn read_table(&self) -> io::Result<Vec<MountEntry>> {
        self.record(MountCall::ReadTable);
        Ok(self.table())
    }

    fn mount_ids_at(&self, path: &Path) -> io::Result<HashSet<u64>> {
        Ok(mount_ids_in(&self.read_table()?, path))
    }

    fn identify(&self, entry: &MountEntry, path: &Path) -> MountIdentity {
        self.record(MountCall::Identify(path.to_owned(), entry.mount_id));
        let st = self.lock();
        let unique = st
            .table
            .iter()
            .rev()
            .find(|m| m.entry == *entry && m.entry.mount_point == path)
            .map(|m| m.unique);
        MountIdentity {
            mount_id: entry.mount_id,
            major: entry.major,
            minor: entry.minor,
            unique,
        }
    }

    async fn probe(&self, path: &Path, timeout: Duration) -> MountState {
        self.record(MountCall::Probe(path.to_owned()));
        let health = {
            let mut st = self.lock();
            match st.topmost(path) {
                None => return MountState::Unmounted,
                Some(m) => m.health,
            }
        };
        match health {
            Health::Answers => MountState::Mounted,
            Health::Stale => MountState::Stale,
            Health::Hangs => {
                tokio::time::sleep(timeout).await;
                MountState::Stale
            }
        }
    }

    async fn wait_for_mount(&self, path: &Path, before: HashSet<u64>) -> io::Result<MountEntry> {
        self.record(MountCall::WaitForMount(path.to_owned()));
        let mut changes = self.changes.subscribe();
        let scripted = self.lock().on_wait.remove(path);
        if let Some((after, health)) = scripted {
            let (me, path) = (self.clone(), path.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut st = me.lock();
                st.add(&path, "fuse.fake", None);
                if let Some(m) = st.topmost(&path) {
                    m.health = health;
                }
                drop(st);
                me.changed();
            });
        }
        loop {
            if let Some(m) = mount_at(&self.table(), path).filter(|m| !before.contains(&m.mount_id))
            {
                return Ok(m.clone());
            }
            if changes.changed().await.is_err() {
                return Err(io::Error::other("the fake mount table is gone"));
            }
        }
    }

    fn prove(&self, path: &Path, id: &MountIdentity) -> io::Result<Proof> {
        self.record(MountCall::Prove(path.to_owned(), id.mount_id));
        match self.lock().prove(path, id) {
            // A descriptor to hand out: the fake pins nothing.
            Ok(_) => Ok(Proof::Ours(rustix::fs::open(
                "/",
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?)),
            Err(Exact::Covered) => Ok(Proof::Covered),
            Err(_) => Ok(Proof::Gone),
        }
    }

    fn detach_exact(&self, path: &Path, id: &MountIdentity) -> io::Result<Exact> {
        self.record(MountCall::DetachExact(path.to_owned(), id.mount_id));
        self.remove_exact(path, id, true)
    }

    fn unmount_exact(&self, path: &Path, id: &MountIdentity) -> io::Result<Exact> {
        self.record(MountCall::UnmountExact(path.to_owned(), id.mount_id));
        self.remove_exact(path, id, false)
    }

    fn fuse_conn(&self, path: &Path, id: &MountIdentity) -> io::Result<Option<FuseConn>> {
        self.record(MountCall::FuseConn(path.to_owned(), id.mount_id));
        let mut st = self.lock();
        let Ok(at) = st.prove(path, id) else {
            return Ok(None);
        };
        if !st.table[at].entry.is_fuse() {
            return Ok(None);
        }
        let unique = st.table[at].unique;
        if !st.conn(unique).is_some_and(|c| c.alive) {
            return Ok(None);
        }
        drop(st);
        Ok(Some(FuseConn::new(
            id.connection_name(),
            Box::new(FakeConn {
                unique,
                minor: id.minor,
                mounts: self.clone(),
            }),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROBE_TIMEOUT;

    #[tokio::test(start_paused = true)]
    async fn a_replaced_mount_is_gone_even_with_its_ids_reused_and_a_covered_one_is_kept() {
        let f = FakeMounts::new();
        let p = Path::new("/mnt/a");
        let first = f.mount(p);
        let id = f.identify(&first, p);
        f.vanish(p).unwrap();
        let reused = f.mount_reusing_ids(p, &first);
        assert_eq!(
            (reused.mount_id, reused.minor),
            (first.mount_id, first.minor)
        );
        assert!(matches!(f.prove(p, &id).unwrap(), Proof::Gone));
        assert_eq!(f.detach_exact(p, &id).unwrap(), Exact::Gone);
        assert!(f.is_mounted(&reused), "the foreign mount stays");

        let mine = f.identify(&reused, p);
        let top = f.mount(p);
        assert!(matches!(f.prove(p, &mine).unwrap(), Proof::Covered));
        assert_eq!(f.unmount_exact(p, &mine).unwrap(), Exact::Covered);
        assert!(f.is_mounted(&top) && f.is_mounted(&reused));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_hangs_failures_and_connections() {
        let f = FakeMounts::new();
        let p = Path::new("/mnt/b");
        f.mount_when_awaited(p, Duration::from_millis(300), Health::Answers);
        let started = tokio::time::Instant::now();
        let m = f.wait_for_mount(p, HashSet::new()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let id = f.identify(&m, p);

        assert!(f.set_health(p, Health::Hangs));
        let started = tokio::time::Instant::now();
        assert_eq!(f.probe(p, PROBE_TIMEOUT).await, MountState::Stale);
        assert_eq!(started.elapsed(), PROBE_TIMEOUT);

        let conn = f.fuse_conn(p, &id).unwrap().unwrap();
        assert!(f.hold_open(p));
        assert_eq!(
            f.unmount_exact(p, &id).unwrap_err().raw_os_error(),
            Some(libc::EBUSY)
        );
        f.fail_detach(p, libc::EBUSY);
        assert_eq!(
            f.detach_exact(p, &id).unwrap_err().raw_os_error(),
            Some(libc::EBUSY)
        );
        assert_eq!(f.detach_exact(p, &id).unwrap(), Exact::Done);
        assert!(
            conn.exists(),
            "held open: the connection outlives the detach"
        );
        assert!(conn.abort().unwrap());
        assert!(!conn.exists());
        assert_eq!(
            f.connection(m.minor),
            Some(ConnState {
                minor: m.minor,
                alive: false,
                aborted: true
            })
        );
        assert_eq!(f.probe(p, PROBE_TIMEOUT).await, MountState::Unmounted);
        assert!(f.calls().contains(&MountCall::ConnAbort(m.minor)));
    }
}
