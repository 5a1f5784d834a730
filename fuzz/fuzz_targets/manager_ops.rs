//! Fuzz target `manager_ops`: arbitrary operation sequences against `dms_core::Manager`
//! over the fake process table (`dms_proc::fake::FakeSpawner`) and the in-memory store
//! (`dms_store::MemoryStore`), checking invariants I1–I5 of the manager issue after every
//! step and every restart.
//!
//! # The world
//!
//! Each input starts a fresh world: a fake process table with only six PIDs (so PIDs are
//! reused all the time), an empty `MemoryStore`, and a `Manager` over them with no grace
//! period and no clock slack. Operations (see [`Op`]): spawn (plain, replacing, twice
//! at once, with scripted spawn or exec failures), kill, adopt, helper exit / crash /
//! zombie / reap, SIGTERM-ignoring and signal-denying helpers, foreign processes taking
//! free or just-freed PIDs, PID-file entries deleted, corrupted or written by hand (bare
//! PID, as another tool writes them), stray files, one-shot store failures, queries,
//! reload, cleanup, cleanup of everything, a restart (a new `Manager` over the same
//! store and process table), and a crash in the middle of an operation (its future is
//! dropped after a chosen number of polls, then the manager is dropped and restarted).
//!
//! # Time
//!
//! The manager's identity rule for bare PID files compares a process's start time with
//! the file's write time. `MemoryStore` stamps writes with the wall clock while the fake
//! table has its own tick clock, so the store is wrapped ([`ModelStore`]) to stamp every
//! write with the fake clock instead: a write is dated just after the last process
//! created and just before the next one. So, as on a real machine, a process created
//! before a PID file was written started before it, and one created after (a recycled
//! PID) started after it. Nothing else about the store is changed.
//!
//! # What "ours" means here
//!
//! - *spawned*: created by `Spawner::spawn` (`FakeSpawner::is_ours`);
//! - *adopted*: a process `Manager::adopt` accepted, or that the manager tracked in
//!   memory at some point (recovery adopts live helpers named by PID files);
//! - *hand-claimed*: a live process named by a bare PID file written by hand. By the
//!   design's rule such a file makes that process the target's helper, so the manager
//!   may signal it; a process that later takes the same PID is not claimed.
//!
//! A target is *tampered* from the moment one of its entries is deleted, corrupted or
//! written by hand until the manager next rewrites it (a successful spawn, kill or adopt
//! of it, or a successful reload or cleanup, which repair entries from memory). A
//! spawned or adopted helper whose entry is tampered when the manager restarts cannot be
//! recovered by any manager; it becomes *lost* and is excused from I1 and I5.
//!
//! # Invariants, checked after every step (once exit watchers have caught up)
//!
//! - **I1**: every live spawned or adopted helper that is not lost is in the manager's
//!   memory. At a restart, each of them must be recoverable from disk unless its target
//!   was tampered. A helper belongs to the target memory tracks it under (a process is
//!   the helper of one target only: a second PID file naming it is foreign).
//! - **I2**: after a successful cleanup, no entry names a dead or foreign process (or
//!   the helper of another target) and no corrupt entry is left: every entry names its
//!   target's helper in memory.
//! - **I3**: for every untampered target, memory and disk agree: a memory entry has a PID
//!   file with the same PID (and the same identity, or none); a PID file that proves a
//!   live process (not another target's helper) has it in memory for that target.
//!   Memory never keeps a dead process (exit watching is prompt: the check waits at
//!   most 5 s for the watchers). While the manager is down (`Down`), only I4 and I5
//!   are checked; I1 is checked when it comes back up.
//! - **I4**: every signal ever delivered reached a spawned, adopted or hand-claimed
//!   process; recovery, reload and cleanup deliver none; no helper is left held at the
//!   start barrier.
//! - **I5**: at most one live spawned or adopted helper (not lost) per target.
//!
//! Queries are checked too: `is_running` answers exactly "memory holds a live helper or
//! the PID file proves one", `process_info` reports a state and source consistent with
//! memory, disk and the process table, and `list`/`stats` cover every target.
#![no_main]

use arbitrary::Arbitrary;
use async_trait::async_trait;
use dms_core::{HelperSpec, Manager, ManagerOptions, ProcessState, Source, UsageSampling};
use dms_proc::fake::{FakeConfig, FakeSpawner, FakeState, SpawnFailure};
use dms_proc::{
    Pending, Pid, Probe, ProbeFields, ProcError, ProcIdentity, SignalOutcome, SpawnSpec, Spawner,
    StopOutcome, Usage, WaitOutcome,
};
use dms_store::{Entry, MemoryStore, PidStore, Record, Stored, TargetId};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// The targets operations choose from.
const TARGETS: [&str; 3] = ["alpha", "beta", "gamma"];
/// PIDs in the fake table: few, so they are reused constantly.
const SPAN: i32 = 6;
/// Operations per input, at most.
const MAX_OPS: usize = 48;
/// Fake clock: ticks per second (as in `dms_proc::fake`).
const TICK: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------
// Operations

/// A process, chosen by the fuzzer.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    /// The n-th process ever created in this world (modulo their number).
    Known(u8),
    /// A PID of the fake range.
    Pid(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SpawnFail {
    NotFound,
    PermissionDenied,
    Log,
    Fork,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FailOp {
    Put,
    Get,
    Remove,
    List,
}

/// An operation that may be interrupted by a crash.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum CrashOp {
    Spawn { t: u8, replace: bool },
    Kill { t: u8 },
    Adopt { t: u8, who: Who },
    Reload,
    Cleanup,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Spawn {
        t: u8,
        replace: bool,
    },
    SpawnFailing {
        t: u8,
        how: SpawnFail,
    },
    SpawnTwice {
        t: u8,
    },
    Kill {
        t: u8,
    },
    Adopt {
        t: u8,
        who: Who,
    },
    Exit {
        who: Who,
        code: u8,
    },
    Crash {
        who: Who,
        signo: u8,
    },
    Zombie {
        who: Who,
    },
    Reap {
        who: Who,
    },
    IgnoreTerm {
        who: Who,
    },
    DenySignal {
        who: Who,
    },
    Foreign,
    ForeignAt {
        who: Who,
    },
    DeleteEntry {
        t: u8,
    },
    CorruptEntry {
        t: u8,
    },
    HandWrite {
        t: u8,
        who: Who,
    },
    Stray,
    FailNext {
        op: FailOp,
    },
    Query {
        t: u8,
    },
    Reload,
    Cleanup,
    CleanupAll,
    Restart,
    CrashDuring {
        what: CrashOp,
        polls: u8,
    },
    /// The manager stops (crashes) and stays down until an operation needs it; what
    /// happens meanwhile (exits, PID reuse, tampering) is found by its recovery.
    Down,
}

// ---------------------------------------------------------------------------------------
// Process-wide state: the runtime, the run directory, the fake's boot time.

mod scratch;

struct Global {
    rt: tokio::runtime::Runtime,
    run_dir: &'static Path,
    first_pid: i32,
    /// Wall-clock time of tick 0 of the fake table.
    boot: SystemTime,
}

fn global() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| {
        let run_dir = scratch::dir("dms-fuzz-manager-");
        // The manager refuses its own PID; keep the fuzzer's PID out of the range.
        let me = std::process::id() as i32;
        let mut first_pid = 300;
        if (first_pid..first_pid + SPAN).contains(&me) {
            first_pid += SPAN;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime");
        // Tick 0 of the fake clock, from one probe.
        let probe_fake = FakeSpawner::new(FakeConfig {
            first_pid,
            max_pid: first_pid,
            boot_id: "probe".into(),
        });
        let id = probe_fake.spawn_foreign();
        let info = match rt.block_on(probe_fake.probe(id.pid, ProbeFields::DETAIL)) {
            Ok((Probe::Alive(info), _)) => info,
            other => panic!("probe of a fresh fake process: {other:?}"),
        };
        let boot = info.started_at - TICK * u32::try_from(id.start_ticks).expect("small ticks");
        Global {
            rt,
            run_dir,
            first_pid,
            boot,
        }
    })
}

fn started_at(id: &ProcIdentity) -> SystemTime {
    global().boot + TICK * u32::try_from(id.start_ticks).expect("ticks fit in u32")
}

// ---------------------------------------------------------------------------------------
// The fake clock, shared by the spawner wrapper and the store wrapper.

#[derive(Debug, Default)]
struct Clock {
    /// Highest start tick of any process created so far.
    last_tick: AtomicU64,
    /// Every process created, in order.
    created: Mutex<Vec<ProcIdentity>>,
}

impl Clock {
    fn saw(&self, id: &ProcIdentity) {
        self.last_tick.fetch_max(id.start_ticks, Ordering::SeqCst);
        self.created.lock().unwrap().push(id.clone());
    }

    /// The time a write made now is dated: after every process created so far, before
    /// any process created later.
    fn write_time(&self) -> SystemTime {
        let next = self.last_tick.load(Ordering::SeqCst) + 1;
        global().boot + TICK * u32::try_from(next).expect("ticks fit in u32")
            - Duration::from_nanos(1)
    }
}

/// `FakeSpawner`, with every created process reported to the clock.
#[derive(Debug)]
struct TickSpawner {
    fake: FakeSpawner,
    clock: Arc<Clock>,
}

#[async_trait]
#[warn(clippy::missing_trait_methods)]
impl Spawner for TickSpawner {
    fn preflight(&self, spec: &SpawnSpec) -> Result<(), ProcError> {
        self.fake.preflight(spec)
    }
    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        let pending = self.fake.spawn(spec).await?;
        self.clock.saw(&pending.identity);
        Ok(pending)
    }
    async fn probe(
        &self,
        pid: Pid,
        fields: ProbeFields,
    ) -> Result<(Probe, Option<Usage>), ProcError> {
        self.fake.probe(pid, fields).await
    }
    async fn signal(
        &self,
        who: &ProcIdentity,
        signal: dms_proc::Signal,
    ) -> Result<SignalOutcome, ProcError> {
        self.fake.signal(who, signal).await
    }
    async fn wait_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError> {
        self.fake.wait_exit(who, timeout).await
    }
    async fn usage(
        &self,
        who: &ProcIdentity,
        interval: Duration,
    ) -> Result<Option<Usage>, ProcError> {
        self.fake.usage(who, interval).await
    }
    fn usage_reader(
        &self,
        who: &ProcIdentity,
    ) -> Result<Option<Box<dyn dms_proc::UsageReader>>, ProcError> {
        self.fake.usage_reader(who)
    }
    fn boot_id(&self) -> &str {
        self.fake.boot_id()
    }
    fn protected(&self, pid: Pid) -> Option<String> {
        self.fake.protected(pid)
    }
    fn exit_watch(
        &self,
        exited: dms_proc::ExitSender,
    ) -> Result<Option<Box<dyn dms_proc::ExitWatch>>, ProcError> {
        self.fake.exit_watch(exited)
    }
    async fn group_members(&self, leader: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        self.fake.group_members(leader).await
    }
    fn begin_startup(&self) -> dms_proc::StartupWindow {
        self.fake.begin_startup()
    }
    async fn settle(
        &self,
        leader: &ProcIdentity,
        limit: Duration,
    ) -> Result<dms_proc::Settled, ProcError> {
        self.fake.settle(leader, limit).await
    }
    async fn orphans(
        &self,
        leader: &ProcIdentity,
        window: &dms_proc::StartupWindow,
    ) -> Result<dms_proc::Orphans, ProcError> {
        self.fake.orphans(leader, window).await
    }
    async fn fuse_children(&self, parent: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        self.fake.fuse_children(parent).await
    }
    async fn adopt_orphan(&self, orphan: &ProcIdentity) -> Result<(), ProcError> {
        self.fake.adopt_orphan(orphan).await
    }
    async fn terminate(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<StopOutcome, ProcError> {
        self.fake.terminate(who, grace, kill_wait).await
    }
}

/// `MemoryStore`, with writes dated by the fake clock and one-shot failures that the
/// oracle's own reads (which go to the inner store) never consume.
#[derive(Debug)]
struct ModelStore {
    inner: Arc<MemoryStore>,
    clock: Arc<Clock>,
    times: Mutex<HashMap<TargetId, SystemTime>>,
    failures: Mutex<HashMap<FailOp, u32>>,
}

impl ModelStore {
    fn fail(&self, op: FailOp, path: &Path) -> dms_store::Result<()> {
        let mut f = self.failures.lock().unwrap();
        match f.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(dms_store::Error::Io {
                    op: "fuzz",
                    path: path.to_owned(),
                    source: std::io::Error::other("failure injected by the fuzzer"),
                    hint: None,
                })
            }
            _ => Ok(()),
        }
    }

    fn dated(&self, target: &TargetId, mut r: Record) -> Record {
        if let Some(t) = self.times.lock().unwrap().get(target) {
            r.written_at = Some(*t);
        }
        r
    }

    /// A write by hand (another tool): dated, never failing.
    fn put_by_hand(&self, target: &TargetId, record: &Record) {
        self.times
            .lock()
            .unwrap()
            .insert(target.clone(), self.clock.write_time());
        poll_once(self.inner.put(target, record))
            .expect("MemoryStore::put is immediate")
            .expect("put");
    }

    /// The entries as the manager would see them (dated), without injected failures.
    fn snapshot(&self) -> Vec<Entry> {
        let list = poll_once(dms_store::list_sorted(&*self.inner))
            .expect("MemoryStore::list is immediate")
            .expect("list");
        list.into_iter()
            .map(|e| match e {
                Entry::Target {
                    target,
                    state: Stored::Valid(r),
                } => {
                    let r = self.dated(&target, r);
                    Entry::Target {
                        target,
                        state: Stored::Valid(r),
                    }
                }
                other => other,
            })
            .collect()
    }

    fn delete_by_hand(&self, target: &TargetId) {
        self.times.lock().unwrap().remove(target);
        poll_once(self.inner.remove(target))
            .expect("MemoryStore::remove is immediate")
            .expect("remove");
    }
}

/// Polls a future that is known to complete without waiting; `None` if it would wait.
fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    match fut.as_mut().poll(&mut Context::from_waker(waker)) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[async_trait]
#[warn(clippy::missing_trait_methods)]
impl PidStore for ModelStore {
    async fn put(&self, target: &TargetId, record: &Record) -> dms_store::Result<()> {
        self.fail(FailOp::Put, &target.pid_file_in(self.inner.pid_dir()))?;
        self.times
            .lock()
            .unwrap()
            .insert(target.clone(), self.clock.write_time());
        self.inner.put(target, record).await
    }
    async fn get(&self, target: &TargetId) -> dms_store::Result<Option<Stored>> {
        self.fail(FailOp::Get, &target.pid_file_in(self.inner.pid_dir()))?;
        Ok(match self.inner.get(target).await? {
            Some(Stored::Valid(r)) => Some(Stored::Valid(self.dated(target, r))),
            other => other,
        })
    }
    async fn remove(&self, target: &TargetId) -> dms_store::Result<bool> {
        self.fail(FailOp::Remove, &target.pid_file_in(self.inner.pid_dir()))?;
        let removed = self.inner.remove(target).await?;
        self.times.lock().unwrap().remove(target);
        Ok(removed)
    }
    async fn list(&self, batches: mpsc::Sender<Vec<Entry>>) -> dms_store::Result<()> {
        self.fail(FailOp::List, self.inner.pid_dir())?;
        // The inner store's own injected failures first (one-shot: the snapshot then reads).
        dms_store::list_sorted(&*self.inner).await?;
        // A receiver gone is not an error of the store.
        let _ = batches.send(self.snapshot()).await;
        Ok(())
    }
    async fn remove_stray(&self, file_name: &str) -> dms_store::Result<bool> {
        self.inner.remove_stray(file_name).await
    }
    fn pid_dir(&self) -> &Path {
        self.inner.pid_dir()
    }
    fn exists(&self, target: &TargetId) -> bool {
        self.inner.exists(target)
    }
    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

/// Polls `fut` at most `polls` times; `None` if it had not finished by then (the caller
/// then drops it: a crash at that await point).
struct Budget<F> {
    fut: Pin<Box<F>>,
    polls: u32,
}

impl<F: Future> Future for Budget<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(None);
        }
        self.polls -= 1;
        match self.fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The world and its oracle.

struct World {
    fake: FakeSpawner,
    clock: Arc<Clock>,
    store: Arc<ModelStore>,
    spawner: Arc<TickSpawner>,
    manager: Option<Manager>,
    targets: Vec<TargetId>,
    /// Processes adopted through `Manager::adopt`, with the target.
    adopted: HashMap<ProcIdentity, usize>,
    /// Processes named by a bare PID file written by hand while alive.
    hand_claimed: HashSet<ProcIdentity>,
    /// Per target: an entry was changed behind the manager's back.
    tampered: Vec<bool>,
    /// Spawned or adopted helpers that no manager could recover (see module docs).
    lost: HashSet<ProcIdentity>,
    /// The target each process was last tracked under in the manager's memory. A
    /// process the manager ever tracked is one of its helpers from then on (I1, I5).
    tracked_as: HashMap<ProcIdentity, usize>,
    /// Set after a successful cleanup: I2 is checked.
    cleaned: bool,
    step: usize,
    trace: Vec<String>,
}

fn opts() -> ManagerOptions {
    let mut o = ManagerOptions::new(global().run_dir);
    o.failed_start_grace = Duration::ZERO;
    o.usage = UsageSampling::Off;
    o.start_time_slack = Duration::ZERO;
    o
}

fn helper(target: &TargetId, replace: bool) -> HelperSpec {
    // No mount point: the fake helpers never mount anything, and mount readiness is
    // not part of these invariants.
    HelperSpec {
        program: "/usr/bin/s3vaultfuse.py".into(),
        args: vec!["--target".into(), target.as_str().into()],
        env: vec![("AWS_SECRET_ACCESS_KEY".into(), "fuzz-secret".into())],
        log: Some(PathBuf::from("/nonexistent/fuzz.log")),
        replace: replace.then_some(Duration::ZERO),
        ..HelperSpec::default()
    }
}

/// The target a spawned process was started for (from its arguments).
fn spawned_for(spec: &Option<SpawnSpec>) -> Option<String> {
    let spec = spec.as_ref()?;
    match &spec.args[..] {
        [flag, t] if flag == "--target" => Some(t.to_string_lossy().into_owned()),
        _ => None,
    }
}

impl World {
    fn new() -> World {
        let g = global();
        let fake = FakeSpawner::new(FakeConfig {
            first_pid: g.first_pid,
            max_pid: g.first_pid + SPAN - 1,
            boot_id: "fuzz-boot".into(),
        });
        let clock = Arc::new(Clock::default());
        let store = Arc::new(ModelStore {
            inner: Arc::new(MemoryStore::new(g.run_dir.join("s3"))),
            clock: clock.clone(),
            times: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        });
        let spawner = Arc::new(TickSpawner {
            fake: fake.clone(),
            clock: clock.clone(),
        });
        let mut w = World {
            fake,
            clock,
            store,
            spawner,
            manager: None,
            targets: TARGETS.iter().map(|t| TargetId::new(t).unwrap()).collect(),
            adopted: HashMap::new(),
            hand_claimed: HashSet::new(),
            tampered: vec![false; TARGETS.len()],
            lost: HashSet::new(),
            tracked_as: HashMap::new(),
            cleaned: false,
            step: 0,
            trace: Vec::new(),
        };
        w.open();
        w
    }

    fn m(&self) -> &Manager {
        self.manager.as_ref().expect("a manager is running")
    }

    fn t(&self, t: u8) -> (usize, TargetId) {
        let i = usize::from(t) % self.targets.len();
        (i, self.targets[i].clone())
    }

    fn pid(&self, who: Who) -> Pid {
        let first = global().first_pid;
        let raw = match who {
            Who::Known(n) => {
                let created = self.clock.created.lock().unwrap();
                if created.is_empty() {
                    first
                } else {
                    created[usize::from(n) % created.len()].pid.get()
                }
            }
            Who::Pid(n) => first + i32::from(n) % SPAN,
        };
        Pid::try_from(raw).expect("fake PIDs are valid")
    }

    fn fail(&self, msg: String) -> ! {
        panic!(
            "step {}: {msg}\ntrace:\n  {}",
            self.step,
            self.trace.join("\n  ")
        );
    }

    /// Starts a manager over the store and the process table (startup recovery),
    /// retrying while injected store failures make it fail. Recovery signals nothing.
    fn open(&mut self) {
        let before = self.fake.signals().len();
        let g = global();
        // Each failed attempt consumes at least one injected failure.
        let pending: u32 = self.store.failures.lock().unwrap().values().sum();
        for _ in 0..=pending {
            let res = g.rt.block_on(Manager::open(
                self.store.clone(),
                self.spawner.clone(),
                opts(),
            ));
            if let Ok((m, _report)) = res {
                self.manager = Some(m);
                break;
            }
        }
        if self.manager.is_none() {
            self.fail("Manager::open keeps failing".into());
        }
        if self.fake.signals().len() != before {
            self.fail("I4: startup recovery sent a signal".into());
        }
        self.tampered.iter_mut().for_each(|t| *t = false);
    }

    /// Live (running) processes by identity.
    fn live(&self) -> HashMap<ProcIdentity, dms_proc::fake::FakeProcess> {
        self.fake
            .processes()
            .into_iter()
            .filter(|p| p.state == FakeState::Running)
            .map(|p| (p.identity.clone(), p))
            .collect()
    }

    /// The live process a record proves, by the design's identity rule.
    fn proves(
        &self,
        r: &Record,
        live: &HashMap<ProcIdentity, dms_proc::fake::FakeProcess>,
    ) -> Option<ProcIdentity> {
        let p = live.keys().find(|id| id.pid == r.pid)?;
        let ok = match (&r.identity, r.written_at) {
            (Some(i), _) => i.start_ticks == p.start_ticks && i.boot_id == p.boot_id,
            (None, Some(w)) => started_at(p) <= w,
            (None, None) => false,
        };
        ok.then(|| p.clone())
    }

    /// The live process `target`'s record proves: by the identity rule, and provided
    /// that process is not the helper of another target in memory (a process is the
    /// helper of one target only; another PID file naming it is foreign).
    fn proves_for(
        &self,
        target: &TargetId,
        r: &Record,
        live: &HashMap<ProcIdentity, dms_proc::fake::FakeProcess>,
        memory: &[(TargetId, ProcIdentity)],
    ) -> Option<ProcIdentity> {
        let p = self.proves(r, live)?;
        let elsewhere = memory.iter().any(|(t, id)| *id == p && t != target);
        (!elsewhere).then_some(p)
    }

    /// The target a helper belongs to now: where memory tracks it, else where it was
    /// last tracked, else where it was adopted, else what it was spawned for.
    fn owner(
        &self,
        id: &ProcIdentity,
        p: &dms_proc::fake::FakeProcess,
        memory: &[(TargetId, ProcIdentity)],
    ) -> Option<usize> {
        if let Some((t, _)) = memory.iter().find(|(_, m)| m == id) {
            return self.targets.iter().position(|x| x == t);
        }
        if let Some(t) = self.tracked_as.get(id).or_else(|| self.adopted.get(id)) {
            return Some(*t);
        }
        let name = spawned_for(&p.spec)?;
        TARGETS.iter().position(|t| *t == name)
    }

    fn memory(&self) -> Vec<(TargetId, ProcIdentity)> {
        self.manager
            .as_ref()
            .map(Manager::memory_snapshot)
            .unwrap_or_default()
    }

    /// Live helpers (spawned, adopted, or ever tracked) that are not lost, with their
    /// target.
    fn helpers(&self) -> Vec<(ProcIdentity, usize)> {
        let live = self.live();
        let memory = self.memory();
        live.iter()
            .filter(|(id, p)| {
                (p.ours || self.adopted.contains_key(*id) || self.tracked_as.contains_key(*id))
                    && !self.lost.contains(*id)
            })
            .filter_map(|(id, p)| self.owner(id, p, &memory).map(|t| (id.clone(), t)))
            .collect()
    }

    /// Drops the manager (a crash: nothing is cleaned up) and starts a new one.
    fn restart(&mut self) {
        self.manager = None;
        self.up();
    }

    /// Starts a manager if none is running. First, every helper that the new manager
    /// could not recover becomes lost, which is only acceptable if its target was
    /// tampered with.
    fn up(&mut self) {
        if self.manager.is_some() {
            return;
        }
        let live = self.live();
        let entries = self.store.snapshot();
        for (id, t) in self.helpers() {
            // With no memory, any entry proving it recovers it (the strongest claim
            // wins when several do; where it lands is followed through `tracked_as`).
            let recoverable = entries.iter().any(|e| {
                matches!(e, Entry::Target { state: Stored::Valid(r), .. }
                    if self.proves(r, &live).as_ref() == Some(&id))
            });
            if !recoverable {
                if self.tampered[t] {
                    self.lost.insert(id);
                } else {
                    self.fail(format!(
                        "I1: helper {id:?} of {} cannot be recovered after a restart, \
                         though nobody touched its entry: {entries:?}",
                        TARGETS[t]
                    ));
                }
            }
        }
        self.open();
    }

    /// Runs the runtime until every memory entry names a live process (the exit
    /// watchers have caught up), at most 5 s.
    fn settle(&self) {
        let g = global();
        let Some(m) = self.manager.clone() else {
            return;
        };
        let fake = self.fake.clone();
        let caught_up = move || {
            let live: HashSet<ProcIdentity> = fake
                .processes()
                .into_iter()
                .filter(|p| p.state == FakeState::Running)
                .map(|p| p.identity)
                .collect();
            m.memory_snapshot().iter().all(|(_, id)| live.contains(id))
        };
        let ok = g.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut spins = 0u32;
            while !caught_up() {
                if tokio::time::Instant::now() > deadline {
                    return false;
                }
                spins += 1;
                if spins < 1000 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            true
        });
        if !ok {
            self.fail(format!(
                "I3: memory still names a dead helper 5 s after it exited: {:?}",
                self.m().memory_snapshot()
            ));
        }
    }

    /// Records where memory tracks each helper now.
    fn follow(&mut self) {
        for (t, id) in self.memory() {
            if let Some(i) = self.targets.iter().position(|x| *x == t) {
                self.tracked_as.insert(id, i);
            }
        }
    }

    fn check(&self, signals_before: usize, silent: bool) {
        let live = self.live();
        let up = self.manager.is_some();
        let memory = self.memory();
        let entries = self.store.snapshot();
        let mem_ids: HashSet<&ProcIdentity> = memory.iter().map(|(_, id)| id).collect();

        // No helper is left at the start barrier.
        if let Some(p) = self
            .fake
            .processes()
            .iter()
            .find(|p| p.state == FakeState::Pending)
        {
            self.fail(format!(
                "I4: process {:?} left at the start barrier",
                p.identity
            ));
        }

        // I4: every signal reached one of ours.
        let signals = self.fake.signals();
        for s in &signals {
            let ok = s.ours
                || self.adopted.contains_key(&s.identity)
                || self.hand_claimed.contains(&s.identity);
            if !ok {
                self.fail(format!(
                    "I4: {:?} reached foreign process {:?}",
                    s.signal, s.identity
                ));
            }
        }
        if silent && signals.len() != signals_before {
            self.fail("I4: an operation that must not signal sent a signal".into());
        }

        // I1: every live spawned or adopted helper is tracked in memory.
        let helpers = self.helpers();
        for (id, t) in &helpers {
            if up && !mem_ids.contains(id) {
                self.fail(format!(
                    "I1: live helper {id:?} of {} is not tracked; memory {memory:?}",
                    TARGETS[*t]
                ));
            }
        }

        // I5: at most one live helper per target.
        for (i, name) in TARGETS.iter().enumerate() {
            let n: Vec<_> = helpers.iter().filter(|(_, t)| *t == i).collect();
            if n.len() > 1 {
                self.fail(format!("I5: {name} has {} live helpers: {n:?}", n.len()));
            }
        }

        // I3: memory and disk agree on untampered targets; memory keeps no dead process.
        let disk: HashMap<&TargetId, &Stored> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Target { target, state } => Some((target, state)),
                Entry::Stray { .. } => None,
            })
            .collect();
        for (target, id) in &memory {
            if !live.contains_key(id) {
                self.fail(format!("I3: memory keeps dead {id:?} for {target}"));
            }
        }
        for (i, target) in self.targets.iter().enumerate() {
            if self.tampered[i] || !up {
                continue;
            }
            let mem = memory.iter().find(|(t, _)| t == target).map(|(_, id)| id);
            let on_disk = disk.get(target).copied();
            if let Some(id) = mem {
                let agrees = matches!(on_disk, Some(Stored::Valid(r))
                    if r.pid == id.pid && r.identity.as_ref().is_none_or(|i|
                        i.start_ticks == id.start_ticks && i.boot_id == id.boot_id));
                if !agrees {
                    self.fail(format!(
                        "I3: memory has {id:?} for {target}, disk has {on_disk:?}"
                    ));
                }
            }
            if let Some(Stored::Valid(r)) = on_disk {
                if let Some(p) = self.proves_for(target, r, &live, &memory) {
                    if mem != Some(&p) {
                        self.fail(format!(
                            "I3: disk proves live {p:?} for {target}, memory has {mem:?}"
                        ));
                    }
                }
            }
        }

        // I2: after a cleanup, no entry names a dead or foreign process (nor the helper
        // of another target), none is corrupt: every entry is its target's helper.
        if self.cleaned {
            for (target, state) in &disk {
                let mem = memory.iter().find(|(t, _)| t == *target).map(|(_, id)| id);
                match state {
                    Stored::Valid(r)
                        if self
                            .proves_for(target, r, &live, &memory)
                            .is_some_and(|p| mem == Some(&p)) => {}
                    other => self.fail(format!(
                        "I2: after cleanup, {target} still has {other:?} (memory {mem:?})"
                    )),
                }
            }
        }
    }

    /// Checks the query answers for `t` against memory, disk and the process table.
    fn query(&self, target: &TargetId) {
        let g = global();
        let m = self.m();
        let live = self.live();
        let mem = m
            .memory_snapshot()
            .into_iter()
            .find(|(t, _)| t == target)
            .map(|(_, id)| id);
        let disk = self.store.snapshot().into_iter().find_map(|e| match e {
            Entry::Target { target: t, state } if t == *target => Some(state),
            _ => None,
        });
        let memory = m.memory_snapshot();
        let proven_on_disk = match &disk {
            Some(Stored::Valid(r)) => self.proves_for(target, r, &live, &memory),
            _ => None,
        };
        let expect_running =
            mem.as_ref().is_some_and(|id| live.contains_key(id)) || proven_on_disk.is_some();
        if let Ok(running) = g.rt.block_on(m.is_running(target)) {
            if running != expect_running {
                self.fail(format!(
                    "is_running({target}) = {running}, memory {mem:?}, disk {disk:?}"
                ));
            }
        }
        // A lookup that finds a proven helper on disk loads it into memory
        // ("Automatically loaded!"): memory as it is now.
        let mem = m
            .memory_snapshot()
            .into_iter()
            .find(|(t, _)| t == target)
            .map(|(_, id)| id);
        if let Ok(info) = g.rt.block_on(m.process_info(target)) {
            let mem = match (&mem, info.source) {
                (None, Some(Source::Both)) => m
                    .memory_snapshot()
                    .into_iter()
                    .find(|(t, _)| t == target)
                    .map(|(_, id)| id),
                _ => mem,
            };
            let source = match (mem.is_some(), disk.is_some()) {
                (true, true) => Some(Source::Both),
                (true, false) => Some(Source::Memory),
                (false, true) => Some(Source::Disk),
                (false, false) => None,
            };
            if info.source != source || info.pid_file_exists != disk.is_some() {
                self.fail(format!(
                    "process_info({target}) source {info:?}, memory {mem:?}, disk {disk:?}"
                ));
            }
            let consistent = match info.state {
                ProcessState::Running => {
                    info.running
                        && expect_running
                        && info.pid.is_some_and(|p| live.keys().any(|id| id.pid == p))
                }
                ProcessState::Absent => mem.is_none() && disk.is_none(),
                ProcessState::Corrupt => mem.is_none() && matches!(disk, Some(Stored::Corrupt(_))),
                ProcessState::Stale => {
                    !expect_running && info.pid.is_some_and(|p| !live.keys().any(|id| id.pid == p))
                }
                ProcessState::Foreign => {
                    !expect_running && info.pid.is_some_and(|p| live.keys().any(|id| id.pid == p))
                }
                ProcessState::Unverified => false,
            };
            if !consistent {
                self.fail(format!(
                    "process_info({target}) = {info:?}; memory {mem:?}, disk {disk:?}"
                ));
            }
        }
        if let Ok(list) = g.rt.block_on(m.list()) {
            let mut want: BTreeSet<TargetId> =
                m.memory_snapshot().into_iter().map(|(t, _)| t).collect();
            for e in self.store.snapshot() {
                if let Entry::Target { target, .. } = e {
                    want.insert(target);
                }
            }
            let got: Vec<TargetId> = list.iter().map(|p| p.target.clone()).collect();
            if got != want.into_iter().collect::<Vec<_>>() {
                self.fail(format!("list() covers {got:?}"));
            }
        }
        if let Ok(stats) = g.rt.block_on(m.stats()) {
            if stats.total_tracked != m.memory_snapshot().len()
                || stats.pid_files_on_disk != self.store.snapshot().len()
            {
                self.fail(format!("stats() = {stats:?}"));
            }
        }
    }

    fn adopt_done(&mut self, t: usize, res: &dms_core::Result<dms_core::ProcessInfo>) {
        if let Ok(info) = res {
            let pid = info.pid.expect("adopted PID");
            let id = self
                .live()
                .into_keys()
                .find(|id| id.pid == pid)
                .unwrap_or_else(|| self.fail(format!("adopted PID {pid} is not alive")));
            self.lost.remove(&id);
            self.adopted.insert(id, t);
            self.tampered[t] = false;
        }
    }

    fn run(&mut self, op: Op) {
        let g = global();
        let signals_before = self.fake.signals().len();
        let mut silent = false;
        self.cleaned = false;
        let needs_manager = matches!(
            op,
            Op::Spawn { .. }
                | Op::SpawnFailing { .. }
                | Op::SpawnTwice { .. }
                | Op::Kill { .. }
                | Op::Adopt { .. }
                | Op::Query { .. }
                | Op::Reload
                | Op::Cleanup
                | Op::CleanupAll
                | Op::CrashDuring { .. }
        );
        if needs_manager {
            self.up();
        }
        match op {
            Op::Spawn { t, replace } => {
                let (i, target) = self.t(t);
                let res =
                    g.rt.block_on(self.m().spawn(&target, helper(&target, replace)));
                if let Ok(info) = &res {
                    if info.state != ProcessState::Running {
                        self.fail(format!("spawn returned {info:?}"));
                    }
                    self.tampered[i] = false;
                }
            }
            Op::SpawnFailing { t, how } => {
                let (i, target) = self.t(t);
                self.fake.fail_next_spawn(match how {
                    SpawnFail::NotFound => SpawnFailure::NotFound,
                    SpawnFail::PermissionDenied => SpawnFailure::PermissionDenied,
                    SpawnFail::Log => SpawnFailure::Log,
                    SpawnFail::Fork => SpawnFailure::Injected("fork: EAGAIN".into()),
                });
                let res =
                    g.rt.block_on(self.m().spawn(&target, helper(&target, false)));
                if res.is_ok() {
                    self.tampered[i] = false;
                }
            }
            Op::SpawnTwice { t } => {
                let (i, target) = self.t(t);
                let m = self.m();
                let (a, b) = g.rt.block_on(async {
                    tokio::join!(
                        m.spawn(&target, helper(&target, false)),
                        m.spawn(&target, helper(&target, false))
                    )
                });
                if a.is_ok() && b.is_ok() {
                    self.fail(format!("two concurrent spawns of {target} both succeeded"));
                }
                if a.is_ok() || b.is_ok() {
                    self.tampered[i] = false;
                }
            }
            Op::Kill { t } => {
                let (i, target) = self.t(t);
                if g.rt
                    .block_on(self.m().kill(&target, Duration::ZERO))
                    .is_ok()
                {
                    self.tampered[i] = false;
                    let mem = self.m().memory_snapshot();
                    let disk = self.store.snapshot();
                    let on_disk = disk
                        .iter()
                        .any(|e| matches!(e, Entry::Target { target: d, .. } if *d == target));
                    if mem.iter().any(|(m, _)| *m == target) || on_disk {
                        self.fail(format!(
                            "kill({target}) left memory {mem:?} / disk {disk:?}"
                        ));
                    }
                }
            }
            Op::Adopt { t, who } => {
                let (i, target) = self.t(t);
                let pid = self.pid(who);
                let res = g.rt.block_on(self.m().adopt(&target, pid));
                self.adopt_done(i, &res);
            }
            Op::Exit { who, code } => {
                self.fake.exit(self.pid(who), i32::from(code));
            }
            Op::Crash { who, signo } => {
                self.fake.crash(self.pid(who), i32::from(signo % 32));
            }
            Op::Zombie { who } => {
                self.fake.make_zombie(self.pid(who), 0);
            }
            Op::Reap { who } => {
                self.fake.reap(self.pid(who));
            }
            Op::IgnoreTerm { who } => {
                self.fake.ignore_term(self.pid(who));
            }
            Op::DenySignal { who } => {
                self.fake.deny_signal(self.pid(who));
            }
            Op::Foreign => {
                if self.fake.processes().len() < SPAN as usize {
                    let id = self.fake.spawn_foreign();
                    self.clock.saw(&id);
                }
            }
            Op::ForeignAt { who } => {
                if let Some(id) = self.fake.spawn_foreign_at(self.pid(who)) {
                    self.clock.saw(&id);
                }
            }
            Op::DeleteEntry { t } => {
                let (i, target) = self.t(t);
                self.store.delete_by_hand(&target);
                self.tampered[i] = true;
            }
            Op::CorruptEntry { t } => {
                let (i, target) = self.t(t);
                self.store.times.lock().unwrap().remove(&target);
                self.store
                    .inner
                    .insert_corrupt(&target, "not a decimal PID: \"garbage\"");
                self.tampered[i] = true;
            }
            Op::HandWrite { t, who } => {
                let (i, target) = self.t(t);
                let pid = self.pid(who);
                // The live process at that PID becomes the target's helper by the
                // design's rule (it started before the file was written), so the
                // manager may signal it. (A lost helper stays lost: tracking it again
                // is allowed, not owed.)
                if let Some(id) = self.live().into_keys().find(|id| id.pid == pid) {
                    self.hand_claimed.insert(id);
                }
                self.store.put_by_hand(&target, &Record::bare(pid));
                self.tampered[i] = true;
            }
            Op::Stray => {
                let _ = self
                    .store
                    .inner
                    .insert_stray("not a target.pid", "invalid name");
            }
            Op::FailNext { op } => {
                *self.store.failures.lock().unwrap().entry(op).or_default() += 1;
            }
            Op::Query { t } => {
                let (_, target) = self.t(t);
                silent = true;
                self.query(&target);
            }
            Op::Reload => {
                silent = true;
                if g.rt.block_on(self.m().reload()).is_ok() {
                    self.tampered.iter_mut().for_each(|t| *t = false);
                }
            }
            Op::Cleanup => {
                silent = true;
                if g.rt.block_on(self.m().cleanup_dead()).is_ok() {
                    self.tampered.iter_mut().for_each(|t| *t = false);
                    self.cleaned = true;
                }
            }
            Op::CleanupAll => {
                if g.rt.block_on(self.m().cleanup_all(Duration::ZERO)).is_ok() {
                    self.tampered.iter_mut().for_each(|t| *t = false);
                    self.cleaned = true;
                }
            }
            Op::Restart => {
                self.restart();
                silent = true;
            }
            Op::Down => {
                self.manager = None;
                silent = true;
            }
            Op::CrashDuring { what, polls } => {
                let polls = u32::from(polls % 8) + 1;
                self.crash_during(what, polls);
            }
        }
        self.settle();
        self.check(signals_before, silent);
        self.follow();
    }

    /// Runs `what` for at most `polls` polls; if it has not finished, drops it and the
    /// manager (a crash at that await point) and restarts.
    fn crash_during(&mut self, what: CrashOp, polls: u32) {
        let g = global();
        let m = self.m().clone();
        let finished = match what {
            CrashOp::Spawn { t, replace } => {
                let (i, target) = self.t(t);
                let fut = async { m.spawn(&target, helper(&target, replace)).await.is_ok() };
                let r = g.rt.block_on(Budget {
                    fut: Box::pin(fut),
                    polls,
                });
                if r == Some(true) {
                    self.tampered[i] = false;
                }
                r.is_some()
            }
            CrashOp::Kill { t } => {
                let (i, target) = self.t(t);
                let fut = async { m.kill(&target, Duration::ZERO).await.is_ok() };
                let r = g.rt.block_on(Budget {
                    fut: Box::pin(fut),
                    polls,
                });
                if r == Some(true) {
                    self.tampered[i] = false;
                }
                r.is_some()
            }
            CrashOp::Adopt { t, who } => {
                let (i, target) = self.t(t);
                let pid = self.pid(who);
                let fut = async { m.adopt(&target, pid).await };
                match g.rt.block_on(Budget {
                    fut: Box::pin(fut),
                    polls,
                }) {
                    Some(res) => {
                        self.adopt_done(i, &res);
                        true
                    }
                    None => {
                        // Interrupted: adopted exactly if its record was written.
                        let live = self.live();
                        let written = self.store.snapshot().into_iter().find_map(|e| match e {
                            Entry::Target {
                                target: d,
                                state: Stored::Valid(r),
                            } if d == target && r.pid == pid && r.identity.is_some() => {
                                self.proves(&r, &live)
                            }
                            _ => None,
                        });
                        if let Some(id) = written {
                            if !self.fake.is_ours(&id) {
                                self.lost.remove(&id);
                                self.adopted.insert(id, i);
                            }
                        }
                        false
                    }
                }
            }
            CrashOp::Reload => {
                let fut = async { m.reload().await.is_ok() };
                let r = g.rt.block_on(Budget {
                    fut: Box::pin(fut),
                    polls,
                });
                if r == Some(true) {
                    self.tampered.iter_mut().for_each(|t| *t = false);
                }
                r.is_some()
            }
            CrashOp::Cleanup => {
                let fut = async { m.cleanup_dead().await.is_ok() };
                let r = g.rt.block_on(Budget {
                    fut: Box::pin(fut),
                    polls,
                });
                if r == Some(true) {
                    self.tampered.iter_mut().for_each(|t| *t = false);
                }
                r.is_some()
            }
        };
        drop(m);
        if !finished {
            self.restart();
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() > MAX_OPS {
        return;
    }
    let mut w = World::new();
    w.settle();
    w.check(0, true);
    w.follow();
    for op in ops {
        w.step += 1;
        w.trace.push(format!("{op:?}"));
        w.run(op);
    }
    // End of input: the manager is dropped (never stops a helper).
    let before = w.fake.running_ours().len();
    w.manager = None;
    if w.fake.running_ours().len() != before {
        w.fail("dropping the manager stopped a helper".into());
    }
});
