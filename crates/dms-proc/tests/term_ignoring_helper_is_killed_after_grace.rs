//! A helper that ignores SIGTERM is SIGKILLed once the grace period has passed, and the
//! whole stop takes no more than grace + 100 ms.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Signal, Spawner};
use std::time::{Duration, Instant};

#[tokio::test]
async fn term_ignoring_helper_is_sigkilled_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    // `exec` keeps one process; the ignored disposition survives the exec.
    let (helper, _guard) = start(
        &spawner,
        &sh(dir.path(), r#"trap "" TERM; echo ready; exec sleep 60"#),
    )
    .await;
    let log = dir.path().join("helper.log");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("ready")))
        .await,
        "the helper never installed its trap"
    );

    let grace = Duration::from_millis(300);
    let t0 = Instant::now();
    let stop = spawner
        .terminate(&helper, grace, dms_proc::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    let took = t0.elapsed();

    assert_eq!(stop.signals, vec![Signal::Term, Signal::Kill], "{stop:?}");
    assert!(stop.stopped);
    assert!(!stop.mismatch);
    assert_eq!(stop.status, Some(ExitStatus::Signaled(libc::SIGKILL)));
    assert!(
        took >= grace,
        "SIGKILL came before the grace period ended: {took:?}"
    );
    assert!(
        took <= grace + Duration::from_millis(100),
        "stop took {took:?}, more than grace + 100 ms"
    );
    assert!(dead(&spawner, helper.pid).await);
}
