//! A signal is only sent to the recorded incarnation: a wrong start tick or boot ID is
//! refused and the process lives; dms's own PID is refused outright.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{Pid, ProcError, ProcIdentity, Signal, SignalOutcome, Spawner, WaitOutcome};
use std::time::Duration;

#[tokio::test]
async fn identity_mismatch_refuses_the_signal_and_the_process_lives() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (helper, _guard) = start(&spawner, &spec(dir.path(), "sleep", &["60"])).await;

    let wrong_ticks = ProcIdentity {
        start_ticks: helper.start_ticks + 1,
        ..helper.clone()
    };
    let wrong_boot = ProcIdentity {
        boot_id: "00000000-0000-0000-0000-000000000000".into(),
        ..helper.clone()
    };
    for wrong in [&wrong_ticks, &wrong_boot] {
        for signal in [Signal::Term, Signal::Kill] {
            assert_eq!(
                spawner.signal(wrong, signal).await.unwrap(),
                SignalOutcome::Mismatch
            );
        }
        let stop = spawner
            .terminate(
                wrong,
                Duration::from_millis(50),
                dms_proc::DEFAULT_KILL_WAIT,
            )
            .await
            .unwrap();
        assert!(
            stop.mismatch && !stop.stopped && stop.signals.is_empty(),
            "{stop:?}"
        );
    }
    // Still the same process, still running, a while later.
    assert!(alive(helper.pid.get(), helper.start_ticks));
    assert_eq!(
        spawner
            .wait_exit(&helper, Some(Duration::from_millis(200)))
            .await
            .unwrap(),
        WaitOutcome::TimedOut
    );
    assert!(
        spawner.child_status(&helper).is_none(),
        "not reaped: it never exited"
    );

    let stop = spawner
        .terminate(&helper, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    assert!(stop.stopped);
}

#[tokio::test]
async fn own_pid_is_refused() {
    let spawner = LinuxSpawner::new().unwrap();
    let me = std::process::id() as i32;
    let me = ProcIdentity {
        pid: Pid::try_from(me).unwrap(),
        start_ticks: stat(me).unwrap().1,
        boot_id: spawner.boot_id().to_owned(),
    };
    match spawner.signal(&me, Signal::Term).await {
        Err(ProcError::SelfPid(pid)) => assert_eq!(pid, me.pid),
        other => panic!("expected SelfPid, got {other:?}"),
    }
}
