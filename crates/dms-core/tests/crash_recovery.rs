//! Model-based crash-recovery properties (after redb's `tests/crash_consistency.rs`).
//!
//! Each case drives a [`Manager`] over the fake process table and a real store backend
//! (PID files or SQLite in a temporary run dir, or the in-memory store) with a random
//! sequence of operations: spawn (also with `replace`, also of a program that cannot be
//! executed), kill (also of a helper that ignores SIGTERM), adopt, helper exits and
//! zombies, PID reuse, PID files deleted, corrupted or written by hand, reload, cleanup,
//! and a store that *crashes* at a chosen write (before or after the write lands: it
//! returns an error and refuses every later write), followed by a restart: the manager
//! is dropped and a new one is built from what is durable and the same process table.
//!
//! After every step and every restart the invariants of issue 4 are checked against
//! ground truth (the fake process table and the backend read directly):
//!
//! - **I1** every live helper that was spawned (its program started) or adopted is
//!   tracked: in memory under its target, with its exact identity;
//! - **I2** after reload and cleanup, every PID file is valid and names a live helper the
//!   manager tracks (none names a dead or foreign process);
//! - **I3** memory and disk agree: every memory entry's PID file names the same PID, and
//!   a PID file not in memory never names a live helper;
//! - **I4** no signal ever reached a foreign process (only processes the fake spawned,
//!   or that the test deliberately handed over: explicit `adopt`, or a PID file written by
//!   hand for a process that was already running);
//! - **I5** at most one live helper per target.
//!
//! Besides, the outcome of each operation is compared with a model computed from ground
//! truth before the step (refusal or success of spawn/adopt, `was_running` of kill,
//! `is_running` and the state of every target, what a reload reports after tampering).
//!
//! **One timeline.** With bare PID files, identity rests on time: a live process that
//! started after its PID file was written is foreign. The fake process clock (start
//! ticks, 10 ms each) and file mtimes must therefore be comparable. The fake advances
//! 1000 ticks (10 s) per created process, and every store write is stamped with the
//! start time of a throw-away process created at that moment: the file's mtime is set to
//! it (PID-file and SQLite backends; SQLite's row key, the file's inode and mtime, is
//! moved along, so recorded identities stay valid and the identity path is exercised) or
//! reported as `written_at` (memory backend). So a
//! process created before a write started at least 10 s before the stamp and one created
//! after started 10 s after it, well outside the manager's default 20 ms slack.
//!
//! **An environment failure that cannot be recovered.** If a live helper's PID file is
//! deleted or overwritten by hand and the manager crashes before it rewrites the file
//! from memory, nothing durable names the helper any more: it is orphaned by the
//! operator, not by the manager. The test plays the operator who then kills it by hand,
//! and excludes it from I1; every other helper must survive every crash.
//!
//! Cases: 256 per property by default; set `PROPTEST_CASES` to run more.

mod common;

use async_trait::async_trait;
use common::{fake, run_dir, t};
use dms_core::{
    Error, Event, HelperSpec, Manager, ManagerOptions, ProcessState, TargetPid, UsageSampling,
};
use dms_proc::fake::{FakeSpawner, FakeState, SpawnFailure};
use dms_proc::{Pid, Probe, ProcIdentity, Spawner};
use dms_store::{
    Entry, MemoryStore, PidFileStore, PidStore, Record, SqliteStore, Stored, TargetId,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc};

const TARGETS: [&str; 3] = ["t0", "t1", "t2"];
/// PIDs in the fake range: small, so PIDs are reused quickly.
const PID_SPAN: i32 = 32;
/// Operations that create processes are skipped beyond this many processes in the table.
const MAX_PROCS: usize = 24;

fn target(i: usize) -> TargetId {
    t(TARGETS[i % TARGETS.len()])
}

// ---------------------------------------------------------------------------------------
// The store under test, wrapped: stamps writes on the fake timeline, crashes on demand.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    PidFile,
    Sqlite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashMode {
    /// The write does not happen.
    Before,
    /// The write lands, but the caller never learns it did.
    After,
}

#[derive(Debug, Default)]
struct CrashState {
    /// Writes attempted in this manager's lifetime.
    writes: u32,
    /// Crash at this write (1-based count within the lifetime).
    crash_at: Option<(u32, CrashMode)>,
    crashed: bool,
}

/// The durable world: a real backend plus the fake process table it shares a clock with.
#[derive(Debug)]
struct TestStore {
    kind: Kind,
    backend: Arc<dyn PidStore>,
    memory: Option<Arc<MemoryStore>>,
    fake: FakeSpawner,
    crash: Mutex<CrashState>,
    /// Memory backend only: the stamp of each target's last write.
    stamps: Mutex<HashMap<TargetId, SystemTime>>,
}

fn crash_error(what: &str) -> dms_store::Error {
    dms_store::Error::Io {
        op: "write (simulated crash)",
        path: PathBuf::from(what),
        source: std::io::Error::other("the store crashed"),
        hint: None,
    }
}

impl TestStore {
    /// Opens the backend on `run_dir` (the memory backend is handed over: it is what
    /// "survives" for it).
    fn open(
        kind: Kind,
        run_dir: &Path,
        memory: Option<Arc<MemoryStore>>,
        fake: FakeSpawner,
        stamps: HashMap<TargetId, SystemTime>,
    ) -> TestStore {
        let (backend, memory): (Arc<dyn PidStore>, _) = match kind {
            Kind::Memory => {
                let m = memory.unwrap_or_else(|| Arc::new(MemoryStore::new(run_dir.join("s3"))));
                (m.clone(), Some(m))
            }
            Kind::PidFile => (Arc::new(PidFileStore::open(run_dir).unwrap()), None),
            Kind::Sqlite => (Arc::new(SqliteStore::open(run_dir).unwrap()), None),
        };
        TestStore {
            kind,
            backend,
            memory,
            fake,
            crash: Mutex::new(CrashState::default()),
            stamps: Mutex::new(stamps),
        }
    }

    /// What a restarted process opens: the same run dir, a fresh store instance.
    fn reopen(&self, run_dir: &Path) -> TestStore {
        TestStore::open(
            self.kind,
            run_dir,
            self.memory.clone(),
            self.fake.clone(),
            self.stamps.lock().unwrap().clone(),
        )
    }

    /// The fake clock's "now": the start time of a process created (and ended) now.
    async fn stamp(&self) -> SystemTime {
        let probe = self.fake.spawn_foreign();
        let started = match self
            .fake
            .probe(probe.pid, dms_proc::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p)
        {
            Ok(Probe::Alive(info)) => info.started_at,
            other => panic!("clock probe: {other:?}"),
        };
        self.fake.exit(probe.pid, 0);
        started
    }

    /// Records that `target`'s entry was written now, on the fake timeline.
    async fn stamp_write(&self, target: &TargetId) {
        let now = self.stamp().await;
        match self.kind {
            Kind::Memory => {
                self.stamps.lock().unwrap().insert(target.clone(), now);
            }
            Kind::PidFile | Kind::Sqlite => {
                let path = target.pid_file_in(self.backend.pid_dir());
                if let Ok(f) = std::fs::File::open(&path) {
                    f.set_modified(now).expect("set mtime");
                }
            }
        }
    }

    /// SQLite backend: after [`TestStore::stamp_write`] re-dated the PID file the store
    /// just wrote, moves the row's key (the file's inode and mtime) along, as if the
    /// store had written the file at that moment. Without it every row would look
    /// outdated and recovery would fall back to the bare-file rule: the identity path
    /// of the SQLite backend would never be exercised.
    fn rekey_sqlite_row(&self, target: &TargetId) {
        use std::os::unix::fs::MetadataExt;
        if self.kind != Kind::Sqlite {
            return;
        }
        let path = target.pid_file_in(self.backend.pid_dir());
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return;
        };
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let db = self.backend.pid_dir().parent().unwrap().join("dms.sqlite3");
        let conn = rusqlite::Connection::open(&db).expect("open the test's database");
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        let rows = conn
            .execute(
                "UPDATE records SET file_mtime_ns = ?1 WHERE target = ?2 AND file_ino = ?3",
                rusqlite::params![mtime_ns, target.as_str(), meta.ino() as i64],
            )
            .expect("re-key the row");
        assert_eq!(
            rows, 1,
            "no row of {target} for the file the store just wrote"
        );
    }

    fn fix_stamp(&self, record: &mut Record, target: &TargetId) {
        if self.kind == Kind::Memory {
            if let Some(s) = self.stamps.lock().unwrap().get(target) {
                record.written_at = Some(*s);
            }
        }
    }

    /// Counts a write; `Err` if the store has crashed or crashes at this write.
    fn before_write(&self) -> Result<Option<CrashMode>, dms_store::Error> {
        let mut st = self.crash.lock().unwrap();
        if st.crashed {
            return Err(crash_error("after crash"));
        }
        st.writes += 1;
        match st.crash_at {
            Some((n, mode)) if n == st.writes => {
                st.crashed = true;
                if mode == CrashMode::Before {
                    return Err(crash_error("crash before write"));
                }
                Ok(Some(mode))
            }
            _ => Ok(None),
        }
    }

    fn arm(&self, n: u32, mode: CrashMode) {
        let mut st = self.crash.lock().unwrap();
        st.crash_at = Some((st.writes + n, mode));
    }

    fn crashed(&self) -> bool {
        self.crash.lock().unwrap().crashed
    }

    // --- What the test does to the run dir behind the manager's back. -------------

    async fn hand_write(&self, target: &TargetId, pid: Pid, newline: bool) {
        match self.kind {
            Kind::Memory => {
                self.memory
                    .as_ref()
                    .unwrap()
                    .put(target, &Record::bare(pid))
                    .await
                    .unwrap();
            }
            Kind::PidFile | Kind::Sqlite => {
                let path = target.pid_file_in(self.backend.pid_dir());
                remove_any(&path);
                let content = if newline {
                    format!("{pid}\n")
                } else {
                    format!("{pid}")
                };
                std::fs::write(&path, content).unwrap();
            }
        }
        self.stamp_write(target).await;
    }

    /// Copies `from`'s entry over `to`'s, as `cp from.pid to.pid` would.
    async fn hand_copy(&self, from: &TargetId, to: &TargetId) -> bool {
        match self.kind {
            Kind::Memory => {
                let m = self.memory.as_ref().unwrap();
                let Some(Stored::Valid(r)) = m.get(from).await.unwrap() else {
                    return false;
                };
                m.put(to, &r).await.unwrap();
            }
            Kind::PidFile | Kind::Sqlite => {
                let dir = self.backend.pid_dir();
                let (src, dst) = (from.pid_file_in(dir), to.pid_file_in(dir));
                if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
                    return false;
                }
                remove_any(&dst);
                std::fs::copy(&src, &dst).unwrap();
            }
        }
        self.stamp_write(to).await;
        true
    }

    async fn hand_delete(&self, target: &TargetId) {
        match self.kind {
            Kind::Memory => {
                self.memory.as_ref().unwrap().remove(target).await.unwrap();
            }
            Kind::PidFile | Kind::Sqlite => remove_any(&target.pid_file_in(self.backend.pid_dir())),
        }
    }

    fn hand_corrupt(&self, target: &TargetId, how: u8) {
        match self.kind {
            Kind::Memory => self
                .memory
                .as_ref()
                .unwrap()
                .insert_corrupt(target, format!("corrupt #{how}")),
            Kind::PidFile | Kind::Sqlite => {
                let path = target.pid_file_in(self.backend.pid_dir());
                remove_any(&path);
                match how % 7 {
                    0 => std::fs::write(&path, "garbage\n").unwrap(),
                    1 => std::fs::write(&path, "").unwrap(),
                    2 => std::fs::write(&path, "0\n").unwrap(),
                    3 => std::fs::write(&path, "4294967295").unwrap(),
                    4 => std::fs::create_dir(&path).unwrap(),
                    5 => std::os::unix::fs::symlink("/etc/hostname", &path).unwrap(),
                    _ => {
                        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))
                            .unwrap()
                    }
                }
            }
        }
    }
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

#[async_trait]
#[warn(clippy::missing_trait_methods)]
impl PidStore for TestStore {
    async fn put(&self, target: &TargetId, record: &Record) -> dms_store::Result<()> {
        let crash = self.before_write()?;
        self.backend.put(target, record).await?;
        self.stamp_write(target).await;
        self.rekey_sqlite_row(target);
        match crash {
            Some(_) => Err(crash_error("crash after write")),
            None => Ok(()),
        }
    }

    async fn get(&self, target: &TargetId) -> dms_store::Result<Option<Stored>> {
        let mut l = self.backend.get(target).await?;
        if let Some(Stored::Valid(r)) = &mut l {
            self.fix_stamp(r, target);
        }
        Ok(l)
    }

    async fn remove(&self, target: &TargetId) -> dms_store::Result<bool> {
        let crash = self.before_write()?;
        let removed = self.backend.remove(target).await?;
        match crash {
            Some(_) => Err(crash_error("crash after remove")),
            None => Ok(removed),
        }
    }

    async fn list(&self, batches: mpsc::Sender<Vec<Entry>>) -> dms_store::Result<()> {
        // The backend's own streaming listing, each batch's stamps fixed on the way.
        let (tx, mut rx) = mpsc::channel::<Vec<Entry>>(8);
        let forward = async {
            while let Some(mut batch) = rx.recv().await {
                for e in &mut batch {
                    if let Entry::Target {
                        target,
                        state: Stored::Valid(r),
                    } = e
                    {
                        self.fix_stamp(r, target);
                    }
                }
                if batches.send(batch).await.is_err() {
                    break;
                }
            }
        };
        let (listed, ()) = tokio::join!(self.backend.list(tx), forward);
        listed
    }

    async fn remove_stray(&self, file_name: &str) -> dms_store::Result<bool> {
        let crash = self.before_write()?;
        let removed = self.backend.remove_stray(file_name).await?;
        match crash {
            Some(_) => Err(crash_error("crash after remove_stray")),
            None => Ok(removed),
        }
    }

    fn pid_dir(&self) -> &Path {
        self.backend.pid_dir()
    }

    fn exists(&self, target: &TargetId) -> bool {
        self.backend.exists(target)
    }

    fn backend_name(&self) -> &'static str {
        self.backend.backend_name()
    }
}

// ---------------------------------------------------------------------------------------
// Operations.

#[derive(Debug, Clone)]
enum Tamper {
    Delete,
    Corrupt(u8),
    /// A PID file naming a PID no process has.
    HandDead,
    /// A PID file naming a PID that a stranger gets *after* the file was written.
    HandForeignAfter,
    /// A PID file naming a stranger that was already running (the operator's "manager
    /// will pick it up").
    HandExistingBefore {
        newline: bool,
    },
    /// Another target's PID file copied over this one's (both name one process).
    CopyOf(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Spawn {
        t: usize,
        replace: bool,
    },
    SpawnUnstartable {
        t: usize,
    },
    Kill {
        t: usize,
        ignore_term: bool,
    },
    Exit {
        t: usize,
        code: i32,
    },
    Zombie {
        t: usize,
    },
    ReapZombies,
    Adopt {
        t: usize,
    },
    StrangerExits,
    Tamper {
        t: usize,
        how: Tamper,
    },
    Reload,
    Cleanup,
    ArmCrash {
        at: u32,
        after: bool,
    },
    /// Drop the manager; while none runs, the helpers of `exits` die and, with `reuse`,
    /// strangers take their PIDs; then start a new one.
    Restart {
        exits: Vec<usize>,
        reuse: bool,
    },
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::Delete),
        any::<u8>().prop_map(Tamper::Corrupt),
        Just(Tamper::HandDead),
        Just(Tamper::HandForeignAfter),
        any::<bool>().prop_map(|newline| Tamper::HandExistingBefore { newline }),
        (0..TARGETS.len()).prop_map(Tamper::CopyOf),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TARGETS.len();
    prop_oneof![
        6 => (t.clone(), prop::bool::weighted(0.3)).prop_map(|(t, replace)| Op::Spawn { t, replace }),
        1 => t.clone().prop_map(|t| Op::SpawnUnstartable { t }),
        3 => (t.clone(), prop::bool::weighted(0.3)).prop_map(|(t, ignore_term)| Op::Kill { t, ignore_term }),
        3 => (t.clone(), 0..3i32).prop_map(|(t, code)| Op::Exit { t, code }),
        1 => t.clone().prop_map(|t| Op::Zombie { t }),
        1 => Just(Op::ReapZombies),
        2 => t.clone().prop_map(|t| Op::Adopt { t }),
        1 => Just(Op::StrangerExits),
        4 => (t.clone(), tamper()).prop_map(|(t, how)| Op::Tamper { t, how }),
        1 => Just(Op::Reload),
        1 => Just(Op::Cleanup),
        4 => (1..6u32, any::<bool>()).prop_map(|(at, after)| Op::ArmCrash { at, after }),
        2 => (prop::collection::vec(t, 0..3), any::<bool>())
            .prop_map(|(exits, reuse)| Op::Restart { exits, reuse }),
    ]
}

// ---------------------------------------------------------------------------------------
// The harness: the system, ground truth, and the model's memory of what was handed over.

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

struct Harness {
    _dir: tempfile::TempDir,
    run_dir: PathBuf,
    fake: FakeSpawner,
    store: Arc<TestStore>,
    manager: Option<Manager>,
    events: Option<broadcast::Receiver<Event>>,
    /// Identities seen tracked, with their target: must stay tracked while alive.
    must_track: HashMap<ProcIdentity, TargetId>,
    /// Strangers the test handed over on purpose: signalling them is legitimate.
    handed_over: HashSet<ProcIdentity>,
    /// Live helpers whose PID file was tampered with and not yet rewritten.
    at_risk: HashSet<ProcIdentity>,
    /// Live helpers whose PID file was copied under another target's name: with bare
    /// PID files both claims are equally good after a restart, so the helper may come
    /// back under either target (but under one only).
    ambiguous: HashMap<ProcIdentity, HashSet<TargetId>>,
    /// Restarts done, for the failure message.
    restarts: usize,
}

fn options(run_dir: &Path) -> ManagerOptions {
    let mut o = ManagerOptions::new(run_dir);
    o.usage = UsageSampling::Off;
    o.failed_start_grace = Duration::from_millis(5);
    o
}

impl Harness {
    async fn new(kind: Kind) -> Harness {
        let dir = run_dir();
        let run_dir = dir.path().to_owned();
        let fake = fake(PID_SPAN);
        fake.set_ticks_per_spawn(1000);
        let store = Arc::new(TestStore::open(
            kind,
            &run_dir,
            None,
            fake.clone(),
            HashMap::new(),
        ));
        let mut h = Harness {
            _dir: dir,
            run_dir,
            fake,
            store,
            manager: None,
            events: None,
            must_track: HashMap::new(),
            handed_over: HashSet::new(),
            at_risk: HashSet::new(),
            ambiguous: HashMap::new(),
            restarts: 0,
        };
        h.open().await.expect("first open");
        h
    }

    fn m(&self) -> &Manager {
        self.manager.as_ref().expect("manager is running")
    }

    async fn open(&mut self) -> Result<dms_core::RecoveryReport, String> {
        let (m, report) = Manager::open(
            self.store.clone(),
            Arc::new(self.fake.clone()),
            options(&self.run_dir),
        )
        .await
        .map_err(|e| format!("open failed: {e}"))?;
        self.events = Some(m.subscribe());
        self.manager = Some(m);
        Ok(report)
    }

    // --- ground truth -------------------------------------------------------------

    fn procs(&self) -> Vec<dms_proc::fake::FakeProcess> {
        self.fake.processes()
    }

    fn alive(&self, id: &ProcIdentity) -> bool {
        self.procs()
            .iter()
            .any(|p| p.identity == *id && p.state == FakeState::Running)
    }

    /// The target a process spawned by the fake belongs to (from its log path).
    fn spawned_for(p: &dms_proc::fake::FakeProcess) -> Option<TargetId> {
        let spec = p.spec.as_ref()?;
        let stem = spec.log.file_stem()?.to_str()?;
        stem.parse().ok()
    }

    /// Live helpers per target: spawned ones whose program runs, and live processes
    /// the manager was seen tracking.
    fn helpers(&self) -> BTreeMap<TargetId, Vec<ProcIdentity>> {
        let mut out: BTreeMap<TargetId, Vec<ProcIdentity>> = BTreeMap::new();
        for p in self.procs() {
            if p.state != FakeState::Running {
                continue;
            }
            let owner = match self.must_track.get(&p.identity) {
                Some(t) => Some(t.clone()),
                None if p.ours => Self::spawned_for(&p),
                None => None,
            };
            if let Some(t) = owner {
                out.entry(t).or_default().push(p.identity.clone());
            }
        }
        out
    }

    fn helper_of(&self, t: &TargetId) -> Option<ProcIdentity> {
        self.helpers().get(t).and_then(|v| v.first().cloned())
    }

    async fn disk(&self) -> BTreeMap<TargetId, Stored> {
        let mut out = BTreeMap::new();
        for e in dms_store::list_sorted(&self.store).await.expect("list") {
            if let Entry::Target { target, state } = e {
                out.insert(target, state);
            }
        }
        out
    }

    fn free_pid(&self) -> Pid {
        let used: HashSet<i32> = self.procs().iter().map(|p| p.identity.pid.get()).collect();
        let cfg = self.fake.config();
        (cfg.first_pid..=cfg.max_pid)
            .rev()
            .find(|p| !used.contains(p))
            .map(|p| Pid::try_from(p).unwrap())
            .expect("a free PID")
    }

    fn room(&self) -> bool {
        self.procs().len() < MAX_PROCS
    }

    // --- invariants ----------------------------------------------------------------

    async fn check(&mut self, after_cleanup: bool) -> Check {
        let m = self.m().clone();
        let procs = self.procs();
        ensure!(
            procs.iter().all(|p| p.state != FakeState::Pending),
            "a helper is left held at the start barrier: {procs:?}"
        );
        let mem = m.memory_snapshot();
        // Whatever the manager tracks and is alive must stay tracked while it lives.
        for (t, id) in &mem {
            if self.alive(id) {
                if let Some(prev) = self.must_track.insert(id.clone(), t.clone()) {
                    let either = self
                        .ambiguous
                        .get(id)
                        .is_some_and(|ts| ts.contains(&prev) && ts.contains(t));
                    ensure!(
                        prev == *t || either,
                        "{id:?} moved from target {prev} to {t}"
                    );
                }
            }
        }
        self.must_track.retain(|id, _| {
            procs
                .iter()
                .any(|p| p.identity == *id && p.state == FakeState::Running)
        });
        let helpers = self.helpers();

        // I5: at most one live helper per target.
        for (t, ids) in &helpers {
            ensure!(
                ids.len() <= 1,
                "I5: target {t} has {} live helpers: {ids:?}",
                ids.len()
            );
        }
        // I1: every live helper is tracked, under its target, with its identity.
        for (t, ids) in &helpers {
            for id in ids {
                ensure!(
                    mem.iter().any(|(mt, mid)| mt == t && mid == id),
                    "I1: live helper {id:?} of {t} is not tracked; memory: {mem:?}"
                );
            }
        }
        // I3: memory and disk agree.
        let disk = self.disk().await;
        // An ambiguity ends once at most one PID file names the helper.
        self.ambiguous.retain(|id, _| {
            disk.values()
                .filter(|s| matches!(s, Stored::Valid(r) if r.pid == id.pid))
                .count()
                > 1
        });
        for (t, id) in &mem {
            match disk.get(t) {
                Some(Stored::Valid(r)) => {
                    ensure!(
                        r.pid == id.pid,
                        "I3: memory has {t} -> {id:?}, disk names PID {}",
                        r.pid
                    );
                    if let Some(rid) = &r.identity {
                        ensure!(
                            rid.start_ticks == id.start_ticks && rid.boot_id == id.boot_id,
                            "I3: identity on disk {rid:?} differs from memory {id:?} for {t}"
                        );
                    }
                }
                other => return Err(format!("I3: memory has {t} -> {id:?}, disk has {other:?}")),
            }
        }
        for (t, state) in &disk {
            if mem.iter().any(|(mt, _)| mt == t) {
                continue;
            }
            if let Stored::Valid(r) = state {
                ensure!(
                    !helpers
                        .get(t)
                        .is_some_and(|ids| ids.iter().any(|id| id.pid == r.pid)),
                    "I3: disk names live helper PID {} of {t} but memory does not track it",
                    r.pid
                );
            }
        }
        // I2: after reload and cleanup, every PID file names a live, tracked helper.
        if after_cleanup {
            for (t, state) in &disk {
                match state {
                    Stored::Valid(r) => ensure!(
                        mem.iter().any(|(mt, id)| mt == t && id.pid == r.pid && self.alive(id)),
                        "I2: after cleanup, PID file of {t} names {} which is not a live tracked helper",
                        r.pid
                    ),
                    Stored::Corrupt(c) => {
                        return Err(format!("I2: after cleanup, {t} is still corrupt: {c:?}"))
                    }
                }
            }
        }
        // I4: no signal ever reached a foreign process.
        for s in self.fake.signals() {
            ensure!(
                s.ours || self.handed_over.contains(&s.identity),
                "I4: {} reached foreign process {:?}",
                s.signal.name(),
                s.identity
            );
        }
        // The manager's view matches ground truth for every target.
        for i in 0..TARGETS.len() {
            let t = target(i);
            let expect = helpers.get(&t).is_some_and(|v| !v.is_empty());
            let got = m
                .is_running(&t)
                .await
                .map_err(|e| format!("is_running({t}): {e}"))?;
            ensure!(
                got == expect,
                "is_running({t}) = {got}, ground truth {expect}"
            );
            let info = m
                .process_info(&t)
                .await
                .map_err(|e| format!("process_info({t}): {e}"))?;
            ensure!(
                (info.state == ProcessState::Running) == expect && info.running == expect,
                "process_info({t}).state = {:?}, ground truth running = {expect}",
                info.state
            );
        }
        Ok(())
    }

    // --- restarts -------------------------------------------------------------------

    async fn restart(&mut self, exits: &[usize], reuse: bool) -> Check {
        self.restarts += 1;
        if let Some(m) = self.manager.take() {
            drop(m);
        }
        self.events = None;
        // Let the old manager's aborted watchers finish.
        tokio::task::yield_now().await;
        for &i in exits {
            if let Some(id) = self.helper_of(&target(i)) {
                self.fake.exit(id.pid, 0);
                if reuse && self.room() {
                    self.fake.spawn_foreign_at(id.pid);
                }
            }
        }
        // The operator kills helpers orphaned by tampering + crash (see module docs).
        // (Named by the PID file of its own target, that is: a copy under another
        // target's name would hand it to that target.)
        let disk = self.disk().await;
        let owners: HashMap<ProcIdentity, TargetId> = self
            .helpers()
            .into_iter()
            .flat_map(|(t, ids)| ids.into_iter().map(move |id| (id, t.clone())))
            .collect();
        for id in std::mem::take(&mut self.at_risk) {
            let named = owners
                .get(&id)
                .is_some_and(|t| matches!(disk.get(t), Some(Stored::Valid(r)) if r.pid == id.pid));
            if self.alive(&id) && !named {
                self.fake.exit(id.pid, 0);
            }
        }
        // The old instance stays crashed: a task of the dead manager cannot write.
        self.store = Arc::new(self.store.reopen(&self.run_dir));
        let report = self.open().await?;
        ensure!(
            self.fake
                .signals()
                .iter()
                .all(|s| s.ours || self.handed_over.contains(&s.identity)),
            "recovery signalled a foreign process"
        );
        for p in &report.adopted {
            let id = self
                .procs()
                .into_iter()
                .find(|q| q.identity.pid == p.pid)
                .map(|q| q.identity);
            ensure!(
                id.is_some_and(|id| id.pid == p.pid),
                "recovery adopted {p:?}, which is not a live process"
            );
        }
        self.check(false).await?;
        self.m()
            .cleanup_dead()
            .await
            .map_err(|e| format!("cleanup after restart: {e}"))?;
        self.check(true).await
    }

    async fn maybe_crashed(&mut self) -> Result<bool, String> {
        if self.store.crashed() {
            self.restart(&[], false).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn await_exit(&mut self, pid: Pid) -> Check {
        let rx = self.events.as_mut().expect("events");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(Event::Exited { pid: p, .. })) if p == pid => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("event channel: {e}")),
                Err(_) => return Err(format!("exit of {pid} not noticed within 5 s")),
            }
        }
    }

    /// Once the exit event is out, neither memory nor disk names the helper.
    async fn exit_cleared(&self, t: &TargetId, h: &ProcIdentity) -> Check {
        ensure!(
            !self.m().memory_snapshot().iter().any(|(_, id)| id == h),
            "exited helper {h:?} of {t} still in memory"
        );
        ensure!(
            !matches!(self.store.get(t).await.unwrap(), Some(Stored::Valid(r)) if r.pid == h.pid),
            "PID file of {t} still names exited helper {h:?}"
        );
        Ok(())
    }

    // --- one step ---------------------------------------------------------------------

    async fn step(&mut self, op: &Op) -> Check {
        let m = self.m().clone();
        match op {
            Op::Spawn { t: i, replace } => {
                let t = target(*i);
                if !self.room() {
                    return Ok(());
                }
                let before = self.helper_of(&t);
                let spec = HelperSpec {
                    program: "/usr/bin/s3vaultfuse.py".into(),
                    env: vec![("AWS_SECRET_ACCESS_KEY".into(), "x".into())],
                    replace: replace.then_some(Duration::from_millis(5)),
                    ..HelperSpec::default()
                };
                let res = m.spawn(&t, spec).await;
                if self.maybe_crashed().await? {
                    return Ok(());
                }
                match (&before, *replace, res) {
                    (Some(old), false, Err(Error::AlreadyRunning { pid, .. })) => {
                        ensure!(
                            pid == old.pid,
                            "AlreadyRunning names {pid}, helper is {old:?}"
                        )
                    }
                    (Some(_), false, other) => {
                        return Err(format!(
                            "spawn over a live helper: expected AlreadyRunning, got {other:?}"
                        ))
                    }
                    (_, _, Ok(info)) => {
                        ensure!(info.running, "spawned helper not running: {info:?}");
                        if let Some(old) = &before {
                            ensure!(
                                !self.alive(old),
                                "replace left the old helper {old:?} alive"
                            );
                        }
                    }
                    (_, _, Err(e)) => return Err(format!("spawn failed: {e}")),
                }
            }
            Op::SpawnUnstartable { t: i } => {
                let t = target(*i);
                if self.helper_of(&t).is_some() || !self.room() {
                    return Ok(());
                }
                self.fake.fail_next_spawn(SpawnFailure::NotFound);
                let spawns = self.fake.spawn_count();
                let res = m
                    .spawn(
                        &t,
                        HelperSpec {
                            program: "/nonexistent/helper".into(),
                            ..HelperSpec::default()
                        },
                    )
                    .await;
                if self.fake.spawn_count() == spawns {
                    // The store crashed before the spawner was asked: consume the
                    // scripted failure so it cannot hit a later spawn.
                    let spec = dms_proc::SpawnSpec {
                        program: "unused".into(),
                        args: vec![],
                        env: vec![],
                        log: self.run_dir.join("unused.log"),
                        cwd: None,
                    };
                    drop(self.fake.spawn(&spec).await);
                }
                if self.maybe_crashed().await? {
                    return Ok(());
                }
                ensure!(res.is_err(), "spawn of an unstartable program succeeded");
                ensure!(
                    !matches!(self.store.get(&t).await.unwrap(), Some(Stored::Valid(_))),
                    "a program that could not start left a PID file"
                );
            }
            Op::Kill { t: i, ignore_term } => {
                let t = target(*i);
                let before = self.helper_of(&t);
                if let (Some(h), true) = (&before, ignore_term) {
                    self.fake.ignore_term(h.pid);
                }
                let res = m.kill(&t, Duration::from_millis(5)).await;
                if self.maybe_crashed().await? {
                    return Ok(());
                }
                let report = res.map_err(|e| format!("kill({t}): {e}"))?;
                ensure!(
                    report.was_running == before.is_some(),
                    "kill({t}).was_running = {}, ground truth helper {before:?}",
                    report.was_running
                );
                if let Some(h) = &before {
                    ensure!(!self.alive(h), "kill({t}) left {h:?} alive");
                }
            }
            Op::Exit { t: i, code } => {
                let t = target(*i);
                if let Some(h) = self.helper_of(&t) {
                    self.fake.exit(h.pid, *code);
                    self.await_exit(h.pid).await?;
                    if self.maybe_crashed().await? {
                        return Ok(());
                    }
                    self.exit_cleared(&t, &h).await?;
                }
            }
            Op::Zombie { t: i } => {
                let t = target(*i);
                if let Some(h) = self.helper_of(&t) {
                    self.fake.make_zombie(h.pid, 0);
                    self.await_exit(h.pid).await?;
                    if self.maybe_crashed().await? {
                        return Ok(());
                    }
                    self.exit_cleared(&t, &h).await?;
                }
            }
            Op::ReapZombies => {
                for p in self.procs() {
                    if p.state == FakeState::Zombie {
                        self.fake.reap(p.identity.pid);
                    }
                }
            }
            Op::Adopt { t: i } => {
                let t = target(*i);
                if !self.room() {
                    return Ok(());
                }
                let before = self.helper_of(&t);
                let stranger = self.fake.spawn_foreign();
                self.handed_over.insert(stranger.clone());
                let res = m.adopt(&t, stranger.pid).await;
                if self.maybe_crashed().await? {
                    return Ok(());
                }
                match (&before, res) {
                    (None, Ok(info)) => ensure!(
                        info.running && info.pid == Some(stranger.pid),
                        "adopt: {info:?}"
                    ),
                    (Some(old), Err(Error::AlreadyRunning { pid, .. })) => {
                        ensure!(
                            pid == old.pid,
                            "adopt refused naming {pid}, helper is {old:?}"
                        )
                    }
                    (b, r) => return Err(format!("adopt with helper {b:?}: unexpected {r:?}")),
                }
            }
            Op::StrangerExits => {
                let helpers: HashSet<ProcIdentity> =
                    self.helpers().into_values().flatten().collect();
                if let Some(p) = self.procs().into_iter().find(|p| {
                    !p.ours && p.state == FakeState::Running && !helpers.contains(&p.identity)
                }) {
                    self.fake.exit(p.identity.pid, 0);
                }
            }
            Op::Tamper { t: i, how } => {
                let t = target(*i);
                if !self.room() {
                    return Ok(());
                }
                let live = self.helper_of(&t);
                if let Some(h) = &live {
                    self.at_risk.insert(h.clone());
                }
                let mut expect_adopted = None;
                let mut expect_foreign_copy = false;
                let expect_pid;
                match how {
                    Tamper::CopyOf(from) => {
                        let from = target(*from);
                        let source_live = self.helper_of(&from);
                        // A copy is a new file: it re-dates the claim. If it names a
                        // running stranger, the copy hands that process over exactly
                        // like a PID file written by hand (the bare-file rule cannot
                        // tell them apart).
                        let mut copied_pid = None;
                        if let Ok(Some(Stored::Valid(r))) = self.store.get(&from).await {
                            copied_pid = Some(r.pid);
                            let helpers: HashSet<ProcIdentity> =
                                self.helpers().into_values().flatten().collect();
                            if let Some(p) = self.procs().into_iter().find(|p| {
                                p.identity.pid == r.pid
                                    && p.state == FakeState::Running
                                    && !helpers.contains(&p.identity)
                            }) {
                                self.handed_over.insert(p.identity);
                            }
                        }
                        if from == t || !self.store.hand_copy(&from, &t).await {
                            // Nothing was changed.
                            self.at_risk.clear();
                            return Ok(());
                        }
                        // The copy names a live helper: the source's own, or (the source
                        // being a file that handed a stranger to another target) the
                        // helper of some other target. Two PID files then name one
                        // helper and, with bare files, nothing durable says which claim
                        // is the original once the owner's file is rewritten: after a
                        // restart either target may own it (still tracked, I1).
                        let named_helper = match &source_live {
                            Some(h) => Some((from.clone(), h.clone())),
                            None => self.helpers().into_iter().find_map(|(owner, ids)| {
                                ids.into_iter()
                                    .find(|h| Some(h.pid) == copied_pid)
                                    .map(|h| (owner, h))
                            }),
                        };
                        expect_foreign_copy = named_helper.is_some();
                        if let Some((owner, h)) = &named_helper {
                            self.ambiguous
                                .entry(h.clone())
                                .or_default()
                                .extend([owner.clone(), t.clone()]);
                        }
                        expect_pid = match &named_helper {
                            Some((_, h)) => Some(h.pid),
                            None => copied_pid,
                        };
                    }
                    Tamper::Delete => {
                        self.store.hand_delete(&t).await;
                        expect_pid = None;
                    }
                    Tamper::Corrupt(k) => {
                        self.store.hand_corrupt(&t, *k);
                        expect_pid = None;
                    }
                    Tamper::HandDead => {
                        let pid = self.free_pid();
                        self.store.hand_write(&t, pid, true).await;
                        expect_pid = Some(pid);
                    }
                    Tamper::HandForeignAfter => {
                        let pid = self.free_pid();
                        self.store.hand_write(&t, pid, false).await;
                        self.fake.spawn_foreign_at(pid).expect("free PID");
                        expect_pid = Some(pid);
                    }
                    Tamper::HandExistingBefore { newline } => {
                        let s = self.fake.spawn_foreign();
                        self.store.hand_write(&t, s.pid, *newline).await;
                        // The operator declares it the helper: if the manager restarts
                        // before rewriting the file from memory, it rightly adopts it.
                        self.handed_over.insert(s.clone());
                        if live.is_none() {
                            expect_adopted = Some(s.pid);
                        }
                        expect_pid = Some(s.pid);
                    }
                }
                let res = m.reload().await;
                if self.maybe_crashed().await? {
                    return Ok(());
                }
                let report = res.map_err(|e| format!("reload after tamper: {e}"))?;
                self.at_risk.clear();
                let has = |v: &[TargetPid]| v.iter().any(|p| p.target == t);
                if let Some(h) = &live {
                    // (A copy that names the helper it already names changes nothing.)
                    let unchanged = expect_pid == Some(h.pid);
                    ensure!(
                        unchanged || has(&report.repaired),
                        "tampered PID file of live helper of {t} not repaired: {report:?}"
                    );
                } else {
                    match how {
                        Tamper::Delete => {}
                        Tamper::Corrupt(_) => ensure!(
                            report.corrupt.iter().any(|c| c.target == t),
                            "corrupt {t} not reported: {report:?}"
                        ),
                        Tamper::HandDead => ensure!(
                            report
                                .cleared
                                .iter()
                                .any(|p| p.target == t && Some(p.pid) == expect_pid),
                            "stale hand-written {t} not cleared: {report:?}"
                        ),
                        Tamper::HandForeignAfter => ensure!(
                            report
                                .foreign
                                .iter()
                                .any(|p| p.target == t && Some(p.pid) == expect_pid),
                            "foreign hand-written {t} not reported: {report:?}"
                        ),
                        Tamper::CopyOf(_) => ensure!(
                            !expect_foreign_copy
                                || report
                                    .foreign
                                    .iter()
                                    .any(|p| p.target == t && Some(p.pid) == expect_pid),
                            "copy of a live helper's PID file to {t} not reported foreign: {report:?}"
                        ),
                        Tamper::HandExistingBefore { .. } => ensure!(
                            report
                                .adopted
                                .iter()
                                .any(|p| p.target == t && Some(p.pid) == expect_adopted),
                            "hand-written {t} naming a running process not adopted: {report:?}"
                        ),
                    }
                }
            }
            Op::Reload => {
                let res = m.reload().await;
                if self.maybe_crashed().await? {
                    return Ok(());
                }
                res.map_err(|e| format!("reload: {e}"))?;
            }
            Op::Cleanup => {
                let res = m.cleanup_dead().await;
                if self.maybe_crashed().await? {
                    return Ok(());
                }
                res.map_err(|e| format!("cleanup: {e}"))?;
                return self.check(true).await;
            }
            Op::ArmCrash { at, after } => {
                self.store.arm(
                    *at,
                    if *after {
                        CrashMode::After
                    } else {
                        CrashMode::Before
                    },
                );
                return Ok(());
            }
            Op::Restart { exits, reuse } => {
                return self.restart(exits, *reuse).await;
            }
        }
        self.check(false).await
    }
}

fn run(kind: Kind, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result: Check = rt.block_on(async {
        let mut h = Harness::new(kind).await;
        h.check(false).await.map_err(|e| format!("initial: {e}"))?;
        for (n, op) in ops.iter().enumerate() {
            h.step(op)
                .await
                .map_err(|e| format!("after step {n} {op:?} ({} restarts): {e}", h.restarts))?;
        }
        // A final restart: whatever was done, a new manager recovers all of it.
        h.restart(&[], false)
            .await
            .map_err(|e| format!("final restart: {e}"))
    });
    result.map_err(TestCaseError::fail)
}

fn config() -> ProptestConfig {
    // ProptestConfig::default() reads PROPTEST_CASES (default 256).
    ProptestConfig {
        max_shrink_iters: 2048,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn crash_recovery_memory_store(ops in prop::collection::vec(op(), 1..40)) {
        run(Kind::Memory, ops)?;
    }

    #[test]
    fn crash_recovery_pid_file_store(ops in prop::collection::vec(op(), 1..40)) {
        run(Kind::PidFile, ops)?;
    }

    #[test]
    fn crash_recovery_sqlite_store(ops in prop::collection::vec(op(), 1..40)) {
        run(Kind::Sqlite, ops)?;
    }
}
