//! A long-running manager respawns helpers for months: the spawner's table of exit
//! statuses must stay bounded, while the statuses a caller still wants (the most recent
//! children's) stay exact.

mod common;

use common::*;
use dms_proc::linux::{LinuxSpawner, KEPT_EXIT_STATUSES};
use dms_proc::{ExitStatus, Probe, ProcIdentity, Signal, SignalOutcome, Spawner, WaitOutcome};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_most_recent_reaped_statuses_are_kept_and_running_children_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    // A child that runs through the whole test: it must never be pruned.
    let (runner, _guard) = start(&spawner, &spec(dir.path(), "sleep", &["600"])).await;

    // Enough short-lived children, each with its own exit code, to prune twice.
    let n = 2 * KEPT_EXIT_STATUSES + KEPT_EXIT_STATUSES / 2;
    let mut done: Vec<(ProcIdentity, i32)> = Vec::with_capacity(n);
    for i in 0..n {
        let code = (i % 200) as i32 + 1;
        let (id, _g) = start(&spawner, &sh(dir.path(), &format!("exit {code}"))).await;
        assert_eq!(
            spawner
                .wait_exit(&id, Some(Duration::from_secs(10)))
                .await
                .unwrap(),
            WaitOutcome::Exited(ExitStatus::Code(code)),
            "child {i}"
        );
        done.push((id, code));
    }
    // One more spawn triggers the prune over all of them.
    let (_last, _g) = start(&spawner, &sh(dir.path(), "exit 0")).await;

    let kept: Vec<bool> = done
        .iter()
        .map(|(id, code)| match spawner.child_status(id) {
            Some(s) => {
                assert_eq!(s, ExitStatus::Code(*code), "a kept status is exact");
                true
            }
            None => false,
        })
        .collect();
    let kept_count = kept.iter().filter(|k| **k).count();
    assert!(
        (KEPT_EXIT_STATUSES..2 * KEPT_EXIT_STATUSES).contains(&kept_count),
        "kept {kept_count} of {n} reaped statuses"
    );
    // The newest ones are the ones kept: every kept status is younger than every dropped one.
    let first_kept = kept.iter().position(|k| *k).unwrap();
    assert!(kept[first_kept..].iter().all(|k| *k), "kept: {kept:?}");
    assert!(
        first_kept > 0,
        "the oldest statuses were dropped: the table is bounded"
    );
    // A dropped child reads as any process that is gone and was never ours.
    let (old, _) = &done[0];
    assert_eq!(
        spawner
            .probe(old.pid, dms_proc::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p)
            .unwrap_or(Probe::Gone),
        Probe::Gone
    );
    assert_eq!(
        spawner
            .wait_exit(old, Some(Duration::from_secs(5)))
            .await
            .unwrap(),
        WaitOutcome::Exited(ExitStatus::Unknown)
    );
    // The long-running child was never dropped: its exit status, when it comes, is
    // exact (a dropped entry would read Unknown, as for a stranger).
    assert!(matches!(
        probe_now(&spawner, runner.pid).await,
        Probe::Alive(ref info) if info.identity == runner
    ));
    assert_eq!(
        spawner.signal(&runner, Signal::Kill).await.unwrap(),
        SignalOutcome::Delivered
    );
    assert_eq!(
        spawner
            .wait_exit(&runner, Some(Duration::from_secs(10)))
            .await
            .unwrap(),
        WaitOutcome::Exited(ExitStatus::Signaled(9))
    );
}
