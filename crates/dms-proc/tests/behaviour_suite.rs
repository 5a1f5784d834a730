//! One behaviour suite, run against both implementations where they overlap: the fake
//! under tokio's paused clock, `LinuxSpawner` with real `sleep`/`sh` helpers.
//!
//! Differences are in the harness only: how a helper is made to ignore SIGTERM or exit
//! with a code (a script for the fake, a shell command for Linux), how a missing
//! program is produced, and what "our own PID" is.

mod common;

use async_trait::async_trait;
use dms_proc::fake::{FakeConfig, FakeSpawner, SpawnFailure};
use dms_proc::linux::LinuxSpawner;
use dms_proc::{
    ExitStatus, Pending, Pid, Probe, ProcError, ProcIdentity, Signal, SignalOutcome, SpawnSpec,
    Spawner, WaitOutcome, GATE_DROPPED_EXIT_CODE,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tempfile::TempDir;
use tokio::time::Instant;

/// How a helper behaves once released.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Runs until signalled.
    Sleeper,
    /// Ignores SIGTERM (ready to be signalled when `start` returns).
    IgnoresTerm,
    /// Exits by itself with this code.
    ExitsWith(i32),
}

#[async_trait]
trait Harness: Send + Sync {
    type S: Spawner;
    fn spawner(&self) -> &Self::S;
    /// Spawns a helper of `kind`, held at the start barrier.
    async fn spawn(&self, kind: Kind) -> Pending;
    /// Makes a released helper behave as `kind` and waits until it does.
    async fn settle(&self, id: &ProcIdentity, kind: Kind);
    /// Spawns a helper whose program does not exist (held at the barrier).
    async fn spawn_missing(&self) -> Result<Pending, ProcError>;
    /// The identity of "dms itself".
    async fn own_identity(&self) -> ProcIdentity;
}

async fn start<H: Harness>(h: &H, kind: Kind) -> ProcIdentity {
    let pending = h.spawn(kind).await;
    let id = pending.identity.clone();
    pending.gate.release().await.expect("release");
    h.settle(&id, kind).await;
    id
}

// ---- the fake --------------------------------------------------------------------------

struct FakeHarness(FakeSpawner);

impl FakeHarness {
    fn new() -> Self {
        FakeHarness(FakeSpawner::new(FakeConfig {
            first_pid: 300,
            max_pid: 309,
            boot_id: "suite-boot".into(),
        }))
    }
}

impl Drop for FakeHarness {
    fn drop(&mut self) {
        // The audit the fake exists for: no signal ever reached a foreign process.
        if !std::thread::panicking() {
            assert!(self
                .0
                .signals()
                .iter()
                .all(|r| r.ours && self.0.is_ours(&r.identity)));
        }
    }
}

fn fake_spec() -> SpawnSpec {
    SpawnSpec {
        program: "/usr/bin/helper".into(),
        args: vec![],
        env: common::env(),
        log: "/nonexistent/fake.log".into(),
        cwd: None,
    }
}

#[async_trait]
impl Harness for FakeHarness {
    type S = FakeSpawner;
    fn spawner(&self) -> &FakeSpawner {
        &self.0
    }
    async fn spawn(&self, _kind: Kind) -> Pending {
        self.0.spawn(&fake_spec()).await.unwrap()
    }
    async fn settle(&self, id: &ProcIdentity, kind: Kind) {
        match kind {
            Kind::Sleeper => {}
            Kind::IgnoresTerm => assert!(self.0.ignore_term(id.pid)),
            Kind::ExitsWith(code) => assert!(self.0.exit(id.pid, code)),
        }
    }
    async fn spawn_missing(&self) -> Result<Pending, ProcError> {
        self.0.fail_next_spawn(SpawnFailure::NotFound);
        self.0.spawn(&fake_spec()).await
    }
    async fn own_identity(&self) -> ProcIdentity {
        let me = self.0.spawn_foreign();
        self.0.set_self_pid(me.pid);
        me
    }
}

// ---- Linux -----------------------------------------------------------------------------

struct LinuxHarness {
    spawner: LinuxSpawner,
    dir: TempDir,
    n: AtomicU32,
}

impl LinuxHarness {
    fn new() -> Self {
        LinuxHarness {
            spawner: LinuxSpawner::new().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            n: AtomicU32::new(0),
        }
    }
    fn marker(&self, id: &ProcIdentity) -> std::path::PathBuf {
        self.dir.path().join(format!("ready-{}", id.pid))
    }
}

#[async_trait]
impl Harness for LinuxHarness {
    type S = LinuxSpawner;
    fn spawner(&self) -> &LinuxSpawner {
        &self.spawner
    }
    async fn spawn(&self, kind: Kind) -> Pending {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let mut spec = match kind {
            Kind::Sleeper => common::spec(self.dir.path(), "sleep", &["60"]),
            // `$$` is the helper's PID: the marker tells `settle` the trap is in place.
            Kind::IgnoresTerm => common::sh(
                self.dir.path(),
                r#"trap "" TERM; touch "ready-$$"; exec sleep 60"#,
            ),
            Kind::ExitsWith(code) => common::sh(self.dir.path(), &format!("exit {code}")),
        };
        spec.log = self.dir.path().join(format!("helper-{n}.log"));
        self.spawner.spawn(&spec).await.unwrap()
    }
    async fn settle(&self, id: &ProcIdentity, kind: Kind) {
        if let Kind::IgnoresTerm = kind {
            let marker = self.marker(id);
            assert!(
                common::wait_until(Duration::from_secs(5), || marker.exists()).await,
                "the helper never installed its trap"
            );
        }
    }
    async fn spawn_missing(&self) -> Result<Pending, ProcError> {
        let missing = self.dir.path().join("no-such-program");
        self.spawner
            .spawn(&common::spec(
                self.dir.path(),
                missing.to_str().unwrap(),
                &[],
            ))
            .await
    }
    async fn own_identity(&self) -> ProcIdentity {
        let pid = std::process::id() as i32;
        ProcIdentity {
            pid: Pid::try_from(pid).unwrap(),
            start_ticks: common::stat(pid).unwrap().1,
            boot_id: self.spawner.boot_id().to_owned(),
        }
    }
}

// ---- the cases ---------------------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn released_helper_is_alive_with_its_identity<H: Harness>(h: &H) {
        let s = h.spawner();
        let id = start(h, Kind::Sleeper).await;
        let _guard = common::KillOnDrop(id.clone());
        assert_eq!(id.boot_id, s.boot_id());
        match common::probe_now(s, id.pid).await {
            Probe::Alive(info) => {
                assert_eq!(info.identity, id);
                assert_eq!((info.pgid, info.sid), (id.pid.get(), id.pid.get()));
            }
            other => panic!("expected alive, got {other:?}"),
        }
        assert!(
            s.terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
                .await
                .unwrap()
                .stopped
        );
    }

    pub async fn dropped_gate_runs_nothing_and_the_process_goes<H: Harness>(h: &H) {
        let s = h.spawner();
        let pending = h.spawn(Kind::Sleeper).await;
        let id = pending.identity.clone();
        assert!(matches!(
            common::probe_now(s, id.pid).await,
            Probe::Alive(_)
        ));
        drop(pending);
        assert_eq!(
            s.wait_exit(&id, Some(Duration::from_secs(5)))
                .await
                .unwrap(),
            WaitOutcome::Exited(ExitStatus::Code(GATE_DROPPED_EXIT_CODE))
        );
        assert_eq!(common::probe_now(s, id.pid).await, Probe::Gone);
    }

    pub async fn mismatch_is_refused_and_the_process_lives<H: Harness>(h: &H) {
        let s = h.spawner();
        let id = start(h, Kind::Sleeper).await;
        let _guard = common::KillOnDrop(id.clone());
        let wrong = ProcIdentity {
            start_ticks: id.start_ticks + 1,
            ..id.clone()
        };
        assert_eq!(
            s.signal(&wrong, Signal::Kill).await.unwrap(),
            SignalOutcome::Mismatch
        );
        let stop = s
            .terminate(&wrong, Duration::from_secs(1), dms_proc::DEFAULT_KILL_WAIT)
            .await
            .unwrap();
        assert!(stop.mismatch && !stop.stopped && stop.signals.is_empty());
        assert_eq!(
            s.wait_exit(&id, Some(Duration::from_millis(100)))
                .await
                .unwrap(),
            WaitOutcome::TimedOut
        );
        assert!(
            s.terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
                .await
                .unwrap()
                .stopped
        );
    }

    pub async fn cooperative_helper_stops_on_term<H: Harness>(h: &H) {
        let s = h.spawner();
        let id = start(h, Kind::Sleeper).await;
        let _guard = common::KillOnDrop(id.clone());
        let stop = s
            .terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
            .await
            .unwrap();
        assert_eq!(stop.signals, vec![Signal::Term]);
        assert_eq!(stop.status, Some(ExitStatus::Signaled(libc::SIGTERM)));
        assert!(matches!(common::probe_now(s, id.pid).await, Probe::Gone));
        assert_ne!(
            s.signal(&id, Signal::Kill).await.unwrap(),
            SignalOutcome::Delivered,
            "a stopped helper cannot be signalled again"
        );
    }

    pub async fn term_ignoring_helper_is_killed_after_grace<H: Harness>(h: &H) {
        let s = h.spawner();
        let id = start(h, Kind::IgnoresTerm).await;
        let _guard = common::KillOnDrop(id.clone());
        let grace = Duration::from_millis(300);
        let t0 = Instant::now();
        let stop = s
            .terminate(&id, grace, dms_proc::DEFAULT_KILL_WAIT)
            .await
            .unwrap();
        let took = t0.elapsed();
        assert_eq!(stop.signals, vec![Signal::Term, Signal::Kill]);
        assert_eq!(stop.status, Some(ExitStatus::Signaled(libc::SIGKILL)));
        assert!(
            took >= grace && took <= grace + Duration::from_millis(100),
            "{took:?}"
        );
    }

    pub async fn exit_status_of_a_helper_is_reported<H: Harness>(h: &H) {
        let s = h.spawner();
        let id = start(h, Kind::ExitsWith(3)).await;
        assert_eq!(
            s.wait_exit(&id, Some(Duration::from_secs(5)))
                .await
                .unwrap(),
            WaitOutcome::Exited(ExitStatus::Code(3))
        );
        assert_eq!(common::probe_now(s, id.pid).await, Probe::Gone);
        assert_eq!(s.usage(&id, Duration::from_millis(10)).await.unwrap(), None);
    }

    pub async fn missing_program_errors_and_leaves_nothing<H: Harness>(h: &H) {
        let s = h.spawner();
        let pending = h
            .spawn_missing()
            .await
            .expect("the barrier process is created");
        let id = pending.identity.clone();
        match pending.gate.release().await {
            Err(ProcError::Exec { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            other => panic!("expected an exec error, got {other:?}"),
        }
        assert_eq!(common::probe_now(s, id.pid).await, Probe::Gone);
    }

    pub async fn own_pid_is_refused<H: Harness>(h: &H) {
        let me = h.own_identity().await;
        assert!(matches!(
            h.spawner().signal(&me, Signal::Kill).await,
            Err(ProcError::SelfPid(pid)) if pid == me.pid
        ));
    }
}

macro_rules! suite {
    ($name:ident, $harness:expr, #[$test:meta]) => {
        mod $name {
            use super::*;
            #[$test]
            async fn released_helper_is_alive_with_its_identity() {
                cases::released_helper_is_alive_with_its_identity(&$harness).await
            }
            #[$test]
            async fn dropped_gate_runs_nothing_and_the_process_goes() {
                cases::dropped_gate_runs_nothing_and_the_process_goes(&$harness).await
            }
            #[$test]
            async fn mismatch_is_refused_and_the_process_lives() {
                cases::mismatch_is_refused_and_the_process_lives(&$harness).await
            }
            #[$test]
            async fn cooperative_helper_stops_on_term() {
                cases::cooperative_helper_stops_on_term(&$harness).await
            }
            #[$test]
            async fn term_ignoring_helper_is_killed_after_grace() {
                cases::term_ignoring_helper_is_killed_after_grace(&$harness).await
            }
            #[$test]
            async fn exit_status_of_a_helper_is_reported() {
                cases::exit_status_of_a_helper_is_reported(&$harness).await
            }
            #[$test]
            async fn missing_program_errors_and_leaves_nothing() {
                cases::missing_program_errors_and_leaves_nothing(&$harness).await
            }
            #[$test]
            async fn own_pid_is_refused() {
                cases::own_pid_is_refused(&$harness).await
            }
        }
    };
}

suite!(fake, FakeHarness::new(), #[tokio::test(start_paused = true)]);
suite!(linux, LinuxHarness::new(), #[tokio::test]);
