//! Tests of the fake spawner.

use super::*;

fn spec() -> SpawnSpec {
    SpawnSpec {
        program: "/usr/bin/helper".into(),
        args: vec!["--flag".into()],
        env: vec![("SECRET".into(), "value".into())],
        log: "/tmp/fake.log".into(),
        cwd: None,
    }
}

fn small() -> FakeSpawner {
    FakeSpawner::new(FakeConfig {
        first_pid: 100,
        max_pid: 102,
        boot_id: "boot-a".into(),
    })
}

async fn start(fake: &FakeSpawner) -> ProcIdentity {
    let pending = fake.spawn(&spec()).await.unwrap();
    let id = pending.identity.clone();
    pending.gate.release().await.unwrap();
    id
}

#[tokio::test(start_paused = true)]
async fn pids_wrap_around_and_reuse_gets_new_identity() {
    let fake = small();
    let a = start(&fake).await;
    let b = start(&fake).await;
    let c = start(&fake).await;
    assert_eq!(
        [a.pid.get(), b.pid.get(), c.pid.get()],
        [100, 101, 102],
        "allocated in order"
    );
    // Table full: spawning fails, nothing is created.
    assert!(matches!(
        fake.spawn(&spec()).await,
        Err(ProcError::Injected(_))
    ));
    assert!(fake.exit(b.pid, 0));
    // The next allocation wraps and lands on the only free PID, with new ticks.
    let foreign = fake.spawn_foreign();
    assert_eq!(foreign.pid, b.pid);
    assert_ne!(foreign, b);
    assert!(foreign.start_ticks > b.start_ticks);
    assert!(!fake.is_ours(&foreign));
    assert!(fake.is_ours(&b));
    // Signalling the old identity is refused and nothing is recorded.
    assert_eq!(
        fake.signal(&b, Signal::Kill).await.unwrap(),
        SignalOutcome::Mismatch
    );
    assert!(fake.signals().is_empty());
    assert!(
        matches!(fake.probe(b.pid, crate::ProbeFields::DETAIL).await.map(|(p, _)| p).unwrap(), Probe::Alive(i) if i.identity == foreign)
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_gate_means_the_program_never_ran() {
    let fake = small();
    let pending = fake.spawn(&spec()).await.unwrap();
    let id = pending.identity.clone();
    assert!(
        matches!(fake.probe(id.pid, crate::ProbeFields::DETAIL).await.map(|(p, _)| p).unwrap(), Probe::Alive(ref i) if i.exe.is_none())
    );
    drop(pending);
    assert_eq!(
        fake.probe(id.pid, crate::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p)
            .unwrap(),
        Probe::Gone
    );
    assert!(fake.running_ours().is_empty());
    assert_eq!(
        fake.wait_exit(&id, Some(Duration::ZERO)).await.unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(GATE_DROPPED_EXIT_CODE))
    );
}

#[tokio::test(start_paused = true)]
async fn scripted_exec_failures_surface_at_release_and_leave_nothing() {
    let fake = small();
    for (failure, kind) in [
        (SpawnFailure::NotFound, io::ErrorKind::NotFound),
        (
            SpawnFailure::PermissionDenied,
            io::ErrorKind::PermissionDenied,
        ),
    ] {
        fake.fail_next_spawn(failure);
        let pending = fake.spawn(&spec()).await.unwrap();
        let id = pending.identity.clone();
        match pending.gate.release().await {
            Err(ProcError::Exec { program, source }) => {
                assert_eq!(program, OsString::from("/usr/bin/helper"));
                assert_eq!(source.kind(), kind);
            }
            other => panic!("expected an exec error, got {other:?}"),
        }
        assert_eq!(
            fake.probe(id.pid, crate::ProbeFields::DETAIL)
                .await
                .map(|(p, _)| p)
                .unwrap(),
            Probe::Gone
        );
    }
    fake.fail_next_spawn(SpawnFailure::Injected("fork".into()));
    assert!(matches!(
        fake.spawn(&spec()).await,
        Err(ProcError::Injected(_))
    ));
    fake.fail_next_spawn(SpawnFailure::Log);
    assert!(matches!(
        fake.spawn(&spec()).await,
        Err(ProcError::Log { .. })
    ));
    assert!(fake.processes().is_empty());
    assert_eq!(fake.spawn_count(), 4);
}

#[tokio::test(start_paused = true)]
async fn term_ignoring_helper_is_killed_after_grace_in_paused_time() {
    let fake = small();
    let id = start(&fake).await;
    fake.ignore_term(id.pid);
    let t0 = tokio::time::Instant::now();
    let out = fake
        .terminate(&id, Duration::from_secs(30), crate::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    assert_eq!(out.signals, vec![Signal::Term, Signal::Kill]);
    assert!(out.stopped);
    assert_eq!(out.status, Some(ExitStatus::Signaled(SIGKILL)));
    // The grace period passed on the (paused, auto-advancing) tokio clock.
    assert!(t0.elapsed() >= Duration::from_secs(30));
    let recs = fake.signals();
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.ours && r.identity == id));
}

#[tokio::test(start_paused = true)]
async fn wait_exit_wakes_on_exit_without_polling() {
    let fake = small();
    let id = start(&fake).await;
    let waiter = {
        let fake = fake.clone();
        let id = id.clone();
        tokio::spawn(async move { fake.wait_exit(&id, None).await.unwrap() })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    fake.exit(id.pid, 3);
    assert_eq!(
        waiter.await.unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(3))
    );
    let other = start(&fake).await;
    assert_eq!(
        fake.wait_exit(&other, Some(Duration::from_secs(5)))
            .await
            .unwrap(),
        WaitOutcome::TimedOut
    );
}

#[tokio::test(start_paused = true)]
async fn zombies_count_as_dead_and_permission_errors_are_not_death() {
    let fake = small();
    let id = start(&fake).await;
    fake.make_zombie(id.pid, 0);
    assert_eq!(
        fake.probe(id.pid, crate::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p)
            .unwrap(),
        Probe::Zombie(id.clone())
    );
    assert_eq!(
        fake.signal(&id, Signal::Term).await.unwrap(),
        SignalOutcome::Gone
    );
    assert_eq!(
        fake.wait_exit(&id, Some(Duration::ZERO)).await.unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(0))
    );
    assert!(fake
        .usage(&id, Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());
    // The zombie holds its PID until reaped.
    assert!(fake.spawn_foreign_at(id.pid).is_none());
    assert!(fake.reap(id.pid));
    assert!(fake.spawn_foreign_at(id.pid).is_some());

    let other = start(&fake).await;
    fake.deny_probe(other.pid);
    fake.deny_signal(other.pid);
    assert!(matches!(
        fake.probe(other.pid, crate::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p),
        Err(ProcError::PermissionDenied { .. })
    ));
    assert!(matches!(
        fake.signal(&other, Signal::Term).await,
        Err(ProcError::PermissionDenied { .. })
    ));
    fake.set_self_pid(other.pid);
    assert!(matches!(
        fake.signal(&other, Signal::Term).await,
        Err(ProcError::SelfPid(_))
    ));
    assert!(fake.signals().is_empty());
}

#[tokio::test(start_paused = true)]
async fn usage_samples_over_the_interval() {
    let fake = small();
    let id = start(&fake).await;
    let want = Usage {
        cpu_seconds: 2.5,
        cpu_percent: 75.0,
        rss_bytes: 1 << 20,
        threads: 4,
        stopped: false,
    };
    fake.set_usage(id.pid, want.clone());
    let t0 = tokio::time::Instant::now();
    assert_eq!(
        fake.usage(&id, Duration::from_secs(1)).await.unwrap(),
        Some(want)
    );
    assert!(t0.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn same_ticks_config_models_the_pathological_case() {
    let fake = FakeSpawner::new(FakeConfig {
        first_pid: 100,
        max_pid: 100,
        boot_id: "b".into(),
    });
    fake.set_ticks_per_spawn(0);
    let a = fake.spawn_foreign();
    fake.exit(a.pid, 0);
    let b = fake.spawn_foreign();
    assert_eq!(a, b, "same PID, same ticks, same boot: indistinguishable");
    fake.advance_ticks(5);
    fake.exit(b.pid, 0);
    let c = fake.spawn_foreign();
    assert_eq!(c.start_ticks, b.start_ticks + 5);
}
