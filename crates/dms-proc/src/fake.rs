//! [`FakeSpawner`]: a deterministic, scriptable process table implementing [`Spawner`].
//!
//! It exists so the manager can be driven through thousands of crash and PID-reuse
//! scenarios without real processes:
//!
//! - **PIDs** are handed out from a configurable range and wrap around, skipping PIDs in
//!   use, so a small range forces reuse quickly ([`FakeConfig`]).
//! - **Start ticks** come from a fake clock that advances by one per created process (see
//!   [`FakeSpawner::set_ticks_per_spawn`] and [`FakeSpawner::advance_ticks`]), so a reused
//!   PID has a different [`ProcIdentity`].
//! - **Scripts**: [`exit`](FakeSpawner::exit), [`crash`](FakeSpawner::crash),
//!   [`make_zombie`](FakeSpawner::make_zombie), [`ignore_term`](FakeSpawner::ignore_term),
//!   [`fail_next_spawn`](FakeSpawner::fail_next_spawn),
//!   [`deny_probe`](FakeSpawner::deny_probe), [`deny_signal`](FakeSpawner::deny_signal),
//!   [`spawn_foreign`](FakeSpawner::spawn_foreign) (a process that is not ours, to play the
//!   unrelated program that inherits a recycled PID).
//! - **Audit**: every delivered signal is recorded with the identity it reached
//!   ([`FakeSpawner::signals`]), and [`FakeSpawner::is_ours`] says whether an identity was
//!   created by [`Spawner::spawn`], so a test can assert that no foreign process was ever
//!   signalled.
//! - **Time**: [`Spawner::wait_exit`] is event-driven (a `tokio::sync::watch` channel
//!   bumped on every change) and its timeout uses `tokio::time`, so under
//!   `#[tokio::test(start_paused = true)]` grace periods cost no real time.
//!
//! The start barrier behaves like the real one: [`Spawner::spawn`] creates a *pending*
//! process that has a PID but runs nothing; [`StartGate::release`] runs the program (or
//! fails with [`ProcError::Exec`] and removes the process, if a failure was scripted);
//! dropping the gate removes the process as if it exited with
//! [`GATE_DROPPED_EXIT_CODE`] before running anything.
//!
//! `FakeSpawner` is cheap to clone (an `Arc` inside): a test keeps one handle to script
//! and inspect, and gives another to the code under test.
//!
//! ```
//! use dms_proc::fake::{FakeConfig, FakeSpawner};
//! use dms_proc::{Probe, ProbeFields, SpawnSpec, Spawner};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let fake = FakeSpawner::new(FakeConfig { first_pid: 100, max_pid: 101, boot_id: "boot-a".into() });
//! let spec = SpawnSpec {
//!     program: "/usr/bin/helper".into(),
//!     args: vec![],
//!     env: vec![],
//!     log: "/tmp/helper.log".into(),
//!     cwd: None,
//! };
//! let pending = fake.spawn(&spec).await.unwrap();
//! let helper = pending.identity.clone();
//! pending.gate.release().await.unwrap();
//!
//! fake.ignore_term(helper.pid);
//! let grace = Duration::from_secs(10);
//! let stop = fake.terminate(&helper, grace, dms_proc::DEFAULT_KILL_WAIT).await.unwrap();
//! assert!(stop.stopped);
//! assert_eq!(stop.signals.len(), 2); // SIGTERM was ignored, SIGKILL was not
//!
//! // The PID range wraps: the next processes reuse PIDs, with new start ticks.
//! let foreign = fake.spawn_foreign();
//! let again = fake.spawn_foreign();
//! assert_eq!(again.pid, helper.pid);
//! assert_ne!(again, helper);
//! let (probe, _) = fake.probe(foreign.pid, ProbeFields::DETAIL).await.unwrap();
//! assert!(matches!(probe, Probe::Alive(_)));
//! assert!(fake.signals().iter().all(|s| fake.is_ours(&s.identity)));
//! # });
//! ```

use crate::{
    ExitSender, ExitStatus, ExitWatch, Pending, Pid, Probe, ProbeFields, ProcError, ProcIdentity,
    ProcInfo, Signal, SignalOutcome, SpawnSpec, Spawner, StartGate, StopOutcome, Usage,
    WaitOutcome, GATE_DROPPED_EXIT_CODE,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

mod exit_watch;
mod spawner;
#[cfg(test)]
mod tests;

/// Signal number of SIGTERM, as reported in [`ExitStatus::Signaled`].
const SIGTERM: i32 = 15;
/// Signal number of SIGKILL, as reported in [`ExitStatus::Signaled`].
const SIGKILL: i32 = 9;
/// Fake clock ticks per second, for [`ProcInfo::started_at`].
const TICKS_PER_SECOND: u64 = 100;
/// Start ticks of the first process.
const FIRST_TICKS: u64 = 1_000;

/// Configuration of a [`FakeSpawner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeConfig {
    /// The first PID handed out; at least 2.
    pub first_pid: i32,
    /// The last PID handed out before wrapping around to `first_pid`; below the
    /// kernel's `pid_max` (every fake PID must be a valid [`Pid`]).
    pub max_pid: i32,
    /// The boot ID of every process and of [`Spawner::boot_id`].
    pub boot_id: String,
}

impl Default for FakeConfig {
    /// PIDs 1000..=1999, boot ID `"fake-boot"`.
    fn default() -> Self {
        FakeConfig {
            first_pid: 1000,
            max_pid: 1999,
            boot_id: "fake-boot".to_owned(),
        }
    }
}

/// How the next [`Spawner::spawn`] fails (see [`FakeSpawner::fail_next_spawn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnFailure {
    /// The program does not exist: [`StartGate::release`] fails with
    /// [`ProcError::Exec`] (`ENOENT`) and the process is gone, like the real spawner.
    NotFound,
    /// The program may not be executed: [`StartGate::release`] fails with
    /// [`ProcError::Exec`] (`EACCES`) and the process is gone.
    PermissionDenied,
    /// The log file cannot be opened: [`Spawner::spawn`] itself fails with
    /// [`ProcError::Log`] (`EACCES`) and no process is created.
    Log,
    /// [`Spawner::spawn`] itself fails with [`ProcError::Injected`] carrying this text,
    /// and no process is created (like a failed fork).
    Injected(String),
}

/// A signal that reached a process (see [`FakeSpawner::signals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalRecord {
    /// The process that received it, as it really was (not as the caller believed).
    pub identity: ProcIdentity,
    /// The signal.
    pub signal: Signal,
    /// Whether that process was created by [`Spawner::spawn`] of this fake.
    pub ours: bool,
}

/// The state of a process in the fake table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    /// Created by [`Spawner::spawn`], held at the start barrier: runs nothing yet.
    Pending,
    /// Running its program.
    Running,
    /// Dead but not reaped (see [`FakeSpawner::make_zombie`]).
    Zombie,
}

/// A snapshot of one process of the fake table (see [`FakeSpawner::processes`]).
#[derive(Debug, Clone)]
pub struct FakeProcess {
    /// Its identity.
    pub identity: ProcIdentity,
    /// Its state.
    pub state: FakeState,
    /// Whether [`Spawner::spawn`] of this fake created it.
    pub ours: bool,
    /// How it was spawned (`None` for a foreign process).
    pub spec: Option<SpawnSpec>,
    /// Whether it ignores SIGTERM.
    pub ignores_term: bool,
}

#[derive(Debug)]
struct Proc {
    identity: ProcIdentity,
    state: FakeState,
    ours: bool,
    spec: Option<SpawnSpec>,
    ignores_term: bool,
    deny_probe: bool,
    deny_signal: bool,
    usage: Usage,
    /// Failure to report when the gate is released (scripted at spawn time).
    exec_failure: Option<io::ErrorKind>,
}

#[derive(Debug)]
struct State {
    next_pid: i32,
    ticks: u64,
    ticks_per_spawn: u64,
    self_pid: Option<Pid>,
    procs: BTreeMap<i32, Proc>,
    /// Exit statuses of our processes that have exited (kept forever: tests are short).
    exited: HashMap<ProcIdentity, ExitStatus>,
    ours: HashSet<ProcIdentity>,
    signals: Vec<SignalRecord>,
    spawn_failures: VecDeque<SpawnFailure>,
    spawns: u64,
}

#[derive(Debug)]
struct Inner {
    config: FakeConfig,
    state: Mutex<State>,
    /// Bumped on every change of the table; `wait_exit` waits on it.
    changed: watch::Sender<u64>,
    /// Wall-clock time of tick 0 of this fake "boot".
    boot_time: SystemTime,
}

/// A deterministic, scriptable process table implementing [`Spawner`]. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct FakeSpawner {
    inner: Arc<Inner>,
}

impl Default for FakeSpawner {
    fn default() -> Self {
        FakeSpawner::new(FakeConfig::default())
    }
}

impl FakeSpawner {
    /// A fake with an empty process table.
    ///
    /// # Panics
    ///
    /// If `first_pid < 2`, `max_pid < first_pid`, or `max_pid` is not a valid [`Pid`]
    /// (at or above the kernel's `pid_max`): a test misconfiguration.
    pub fn new(config: FakeConfig) -> FakeSpawner {
        assert!(
            config.first_pid >= 2 && config.max_pid >= config.first_pid,
            "FakeConfig: need 2 <= first_pid <= max_pid, got {}..={}",
            config.first_pid,
            config.max_pid
        );
        assert!(
            Pid::try_from(config.max_pid).is_ok(),
            "FakeConfig: max_pid {} is not a valid PID (pid_max is {})",
            config.max_pid,
            dms_store::pid_max()
        );
        let (changed, _) = watch::channel(0);
        FakeSpawner {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next_pid: config.first_pid,
                    ticks: FIRST_TICKS,
                    ticks_per_spawn: 1,
                    self_pid: None,
                    procs: BTreeMap::new(),
                    exited: HashMap::new(),
                    ours: HashSet::new(),
                    signals: Vec::new(),
                    spawn_failures: VecDeque::new(),
                    spawns: 0,
                }),
                config,
                changed,
                boot_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            }),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &FakeConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the table consistent enough for tests.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Allocates the next free PID (wrapping) and a fresh start tick.
    fn allocate(&self, st: &mut State) -> Option<ProcIdentity> {
        let (first, max) = (self.inner.config.first_pid, self.inner.config.max_pid);
        let span = (max - first + 1) as usize;
        let mut pid = st.next_pid;
        for _ in 0..span {
            let candidate = pid;
            pid = if pid >= max { first } else { pid + 1 };
            if !st.procs.contains_key(&candidate) {
                st.next_pid = pid;
                return Some(self.identity_at(st, candidate));
            }
        }
        None
    }

    fn identity_at(&self, st: &mut State, pid: i32) -> ProcIdentity {
        let start_ticks = st.ticks;
        st.ticks += st.ticks_per_spawn;
        ProcIdentity {
            pid: Pid::try_from(pid).expect("fake PIDs are validated in FakeSpawner::new"),
            start_ticks,
            boot_id: self.inner.config.boot_id.clone(),
        }
    }

    fn insert(&self, st: &mut State, identity: ProcIdentity, ours: bool, spec: Option<SpawnSpec>) {
        let state = if ours {
            FakeState::Pending
        } else {
            FakeState::Running
        };
        st.procs.insert(
            identity.pid.get(),
            Proc {
                identity,
                state,
                ours,
                spec,
                ignores_term: false,
                deny_probe: false,
                deny_signal: false,
                usage: Usage {
                    cpu_seconds: 0.0,
                    cpu_percent: 0.0,
                    rss_bytes: 4096 * 256,
                    threads: 1,
                    stopped: false,
                },
                exec_failure: None,
            },
        );
    }

    /// Creates a running process that is *not* ours, at the next free PID of the range
    /// (wrapping), with fresh start ticks: the unrelated program that inherits a
    /// recycled PID.
    ///
    /// # Panics
    ///
    /// If every PID of the range is in use.
    pub fn spawn_foreign(&self) -> ProcIdentity {
        let mut st = self.state();
        let identity = self
            .allocate(&mut st)
            .expect("FakeSpawner::spawn_foreign: every PID of the range is in use");
        self.insert(&mut st, identity.clone(), false, None);
        drop(st);
        self.bump();
        identity
    }

    /// Creates a running foreign process at exactly `pid`, with fresh start ticks;
    /// `None` if a process (live, pending or zombie) already has that PID. `pid` need not
    /// lie in the configured range.
    pub fn spawn_foreign_at(&self, pid: Pid) -> Option<ProcIdentity> {
        let mut st = self.state();
        if st.procs.contains_key(&pid.get()) {
            return None;
        }
        let identity = self.identity_at(&mut st, pid.get());
        self.insert(&mut st, identity.clone(), false, None);
        drop(st);
        self.bump();
        Some(identity)
    }

    /// Makes the process with `pid` exit with `code` (it is reaped at once, like a child
    /// of the real spawner); `false` if no live or pending process has that PID.
    pub fn exit(&self, pid: Pid, code: i32) -> bool {
        self.end(pid, ExitStatus::Code(code), false)
    }

    /// Makes the process with `pid` die of signal `signo` (a crash: 11 for SIGSEGV, 9
    /// for the OOM killer, ...); `false` if no live or pending process has that PID.
    pub fn crash(&self, pid: Pid, signo: i32) -> bool {
        self.end(pid, ExitStatus::Signaled(signo), false)
    }

    /// Makes the process with `pid` exit with `code` but stay in the table as a zombie
    /// (unreaped, as happens to orphans when PID 1 does not reap) until
    /// [`reap`](Self::reap); `false` if no live or pending process has that PID.
    pub fn make_zombie(&self, pid: Pid, code: i32) -> bool {
        self.end(pid, ExitStatus::Code(code), true)
    }

    /// Removes the zombie with `pid`; `false` if there is none.
    pub fn reap(&self, pid: Pid) -> bool {
        let mut st = self.state();
        let is_zombie = st
            .procs
            .get(&pid.get())
            .is_some_and(|p| p.state == FakeState::Zombie);
        if is_zombie {
            st.procs.remove(&pid.get());
            drop(st);
            self.bump();
        }
        is_zombie
    }

    fn end(&self, pid: Pid, status: ExitStatus, zombie: bool) -> bool {
        let mut st = self.state();
        let done = end_locked(&mut st, pid.get(), status, zombie);
        drop(st);
        if done {
            self.bump();
        }
        done
    }

    /// Makes the process with `pid` ignore SIGTERM once its program runs (SIGKILL still
    /// kills it); `false` if no process has that PID.
    pub fn ignore_term(&self, pid: Pid) -> bool {
        self.with_proc(pid, |p| p.ignores_term = true)
    }

    /// Makes [`Spawner::probe`] and [`Spawner::usage`] of `pid` fail with
    /// [`ProcError::PermissionDenied`] (a process of another user behind `hidepid`);
    /// `false` if no process has that PID.
    pub fn deny_probe(&self, pid: Pid) -> bool {
        self.with_proc(pid, |p| p.deny_probe = true)
    }

    /// Makes [`Spawner::signal`] of `pid` fail with [`ProcError::PermissionDenied`] (a
    /// process of another user); `false` if no process has that PID.
    pub fn deny_signal(&self, pid: Pid) -> bool {
        self.with_proc(pid, |p| p.deny_signal = true)
    }

    /// Sets what [`Spawner::usage`] reports for `pid`; `false` if no process has it.
    pub fn set_usage(&self, pid: Pid, usage: Usage) -> bool {
        self.with_proc(pid, |p| p.usage = usage)
    }

    fn with_proc(&self, pid: Pid, f: impl FnOnce(&mut Proc)) -> bool {
        let mut st = self.state();
        match st.procs.get_mut(&pid.get()) {
            Some(p) => {
                f(p);
                true
            }
            None => false,
        }
    }

    /// Queues a failure for the next [`Spawner::spawn`] (failures queue up in order; each
    /// spawn consumes one).
    pub fn fail_next_spawn(&self, failure: SpawnFailure) {
        self.state().spawn_failures.push_back(failure);
    }

    /// Advances the fake clock by `ticks`: processes created afterwards start later.
    pub fn advance_ticks(&self, ticks: u64) {
        self.state().ticks += ticks;
    }

    /// How far the fake clock advances per created process (default 1). With 0,
    /// processes created back to back share start ticks, so a reused PID can get the
    /// *same* identity: the pathological case identity checks cannot catch.
    pub fn set_ticks_per_spawn(&self, ticks: u64) {
        self.state().ticks_per_spawn = ticks;
    }

    /// Declares `pid` to be dms's own PID: [`Spawner::signal`] refuses it with
    /// [`ProcError::SelfPid`].
    pub fn set_self_pid(&self, pid: Pid) {
        self.state().self_pid = Some(pid);
    }

    /// Every signal delivered so far, in order, with the identity it reached. Refused
    /// signals (mismatch, gone, permission denied, self) are not in it.
    pub fn signals(&self) -> Vec<SignalRecord> {
        self.state().signals.clone()
    }

    /// Whether `identity` was created by [`Spawner::spawn`] of this fake (alive or not).
    pub fn is_ours(&self, identity: &ProcIdentity) -> bool {
        self.state().ours.contains(identity)
    }

    /// A snapshot of the process table (pending, running and zombie processes), by PID.
    pub fn processes(&self) -> Vec<FakeProcess> {
        self.state()
            .procs
            .values()
            .map(|p| FakeProcess {
                identity: p.identity.clone(),
                state: p.state,
                ours: p.ours,
                spec: p.spec.clone(),
                ignores_term: p.ignores_term,
            })
            .collect()
    }

    /// Identities of our processes that are running their program (not pending, not
    /// zombies), by PID.
    pub fn running_ours(&self) -> Vec<ProcIdentity> {
        self.state()
            .procs
            .values()
            .filter(|p| p.ours && p.state == FakeState::Running)
            .map(|p| p.identity.clone())
            .collect()
    }

    /// The exit status of one of our processes that has exited; `None` if it has not
    /// exited or is not ours.
    pub fn exit_status(&self, identity: &ProcIdentity) -> Option<ExitStatus> {
        self.state().exited.get(identity).copied()
    }

    /// How many times [`Spawner::spawn`] was called (failed calls included).
    pub fn spawn_count(&self) -> u64 {
        self.state().spawns
    }

    /// `Some(status)` once `who` is gone or a zombie; `None` while it lives.
    fn exited(&self, who: &ProcIdentity) -> Option<ExitStatus> {
        let st = self.state();
        let alive = st
            .procs
            .get(&who.pid.get())
            .is_some_and(|p| p.identity == *who && p.state != FakeState::Zombie);
        (!alive).then(|| st.exited.get(who).copied().unwrap_or(ExitStatus::Unknown))
    }

    fn started_at(&self, start_ticks: u64) -> SystemTime {
        self.inner.boot_time
            + Duration::from_millis(start_ticks.saturating_mul(1000) / TICKS_PER_SECOND)
    }
}

/// Ends the process at `pid` (if live or pending); records the status for our processes.
fn end_locked(st: &mut State, pid: i32, status: ExitStatus, zombie: bool) -> bool {
    let Some(p) = st.procs.get_mut(&pid) else {
        return false;
    };
    if p.state == FakeState::Zombie {
        return false;
    }
    let identity = p.identity.clone();
    if p.ours {
        st.exited.insert(identity, status);
    }
    if zombie {
        p.state = FakeState::Zombie;
    } else {
        st.procs.remove(&pid);
    }
    true
}

fn denied(pid: Pid, what: &str) -> ProcError {
    ProcError::PermissionDenied {
        pid,
        what: what.to_owned(),
    }
}
