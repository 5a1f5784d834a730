//! A zombie is dead: probe says so, signals are not sent, waiting returns at once. And
//! the spawner's own children never linger as zombies.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Pid, Probe, Signal, SignalOutcome, Spawner, WaitOutcome};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_zombie_reads_as_dead() {
    let spawner = LinuxSpawner::new().unwrap();
    // A child of the test that exits and is not waited for: a zombie.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            stat(pid),
            Some(('Z', _))
        ))
        .await,
        "the child never became a zombie"
    );
    let ticks = stat(pid).unwrap().1;
    let id = match spawner
        .probe(Pid::try_from(pid).unwrap(), dms_proc::ProbeFields::DETAIL)
        .await
        .map(|(p, _)| p)
        .unwrap()
    {
        Probe::Zombie(id) => id,
        other => panic!("expected a zombie, got {other:?}"),
    };
    assert_eq!(id.start_ticks, ticks);
    assert_eq!(
        spawner.signal(&id, Signal::Term).await.unwrap(),
        SignalOutcome::Gone
    );
    assert_eq!(
        spawner.signal(&id, Signal::Kill).await.unwrap(),
        SignalOutcome::Gone
    );
    let t0 = Instant::now();
    assert_eq!(
        spawner
            .wait_exit(&id, Some(Duration::from_secs(5)))
            .await
            .unwrap(),
        WaitOutcome::Exited(ExitStatus::Unknown)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "waiting for a zombie must not block"
    );
    assert_eq!(
        spawner.usage(&id, Duration::from_millis(10)).await.unwrap(),
        None
    );
    let stop = spawner
        .terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    assert!(stop.stopped && stop.signals.is_empty(), "{stop:?}");
    child.wait().unwrap();
}

#[tokio::test]
async fn spawned_children_are_reaped_not_left_as_zombies() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (id, _guard) = start(&spawner, &sh(dir.path(), "exit 7")).await;
    assert_eq!(
        spawner
            .wait_exit(&id, Some(Duration::from_secs(5)))
            .await
            .unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(7))
    );
    assert_eq!(spawner.child_status(&id), Some(ExitStatus::Code(7)));
    assert_eq!(
        probe_now(&spawner, id.pid).await,
        Probe::Gone,
        "reaped, not a zombie"
    );

    // A pending helper whose gate is dropped is reaped too.
    let pending = spawner
        .spawn(&spec(dir.path(), "sleep", &["60"]))
        .await
        .unwrap();
    let held = pending.identity.clone();
    drop(pending);
    assert_eq!(
        spawner
            .wait_exit(&held, Some(Duration::from_secs(5)))
            .await
            .unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(dms_proc::GATE_DROPPED_EXIT_CODE))
    );
    assert_eq!(probe_now(&spawner, held.pid).await, Probe::Gone);
}
