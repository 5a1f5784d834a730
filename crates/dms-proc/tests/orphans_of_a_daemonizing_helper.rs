//! A helper whose first process exits and leaves others running (it daemonized): during
//! a startup window the spawner is the child subreaper, so what the helper left becomes
//! our child; `orphans` finds it, `adopt_orphan` makes its exit status known, and an
//! orphan nobody adopted is reaped when it dies instead of lingering as our zombie.
//! After the window the spawner is no longer a subreaper.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Pid, ProcIdentity, Spawner, WaitOutcome};
use std::path::Path;
use std::time::Duration;

fn pid_in(dir: &Path, name: &str) -> i32 {
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    text.trim().parse().unwrap()
}

fn is_subreaper() -> bool {
    rustix::process::child_subreaper().unwrap().is_some()
}

#[tokio::test]
async fn orphans_are_found_adopted_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    assert!(!is_subreaper());
    let pending = spawner
        .spawn(&sh(
            dir.path(),
            "sleep 300 & echo $! > keep.pid; sleep 0.3 & echo $! > brief.pid; exit 0",
        ))
        .await
        .unwrap();
    let leader = pending.identity.clone();
    let window = spawner.begin_startup();
    assert!(
        is_subreaper(),
        "a startup window makes us the child subreaper"
    );
    pending.gate.release().await.unwrap();
    assert_eq!(
        spawner
            .wait_exit(&leader, Some(Duration::from_secs(10)))
            .await
            .unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(0))
    );
    let keep = pid_in(dir.path(), "keep.pid");
    let brief = pid_in(dir.path(), "brief.pid");
    let keep_ticks = stat(keep).expect("the kept sleep runs").1;
    let keep_id = ProcIdentity {
        pid: Pid::try_from(keep).unwrap(),
        start_ticks: keep_ticks,
        boot_id: leader.boot_id.clone(),
    };
    let _guard = KillOnDrop(keep_id.clone());

    let orphans = spawner.orphans(&leader, &window).await.unwrap();
    let mut found: Vec<i32> = orphans.ours.iter().map(|o| o.identity.pid.get()).collect();
    found.sort_unstable();
    let mut want = vec![keep, brief];
    want.sort_unstable();
    assert_eq!(found, want, "{orphans:?}");
    assert!(orphans.unattributed.is_empty(), "{orphans:?}");
    assert!(orphans.ours.iter().all(|o| !o.holds_fuse));

    spawner.adopt_orphan(&keep_id).await.unwrap();
    // The brief one dies while still ours (unadopted): a zombie child of this process.
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            stat(brief),
            Some(('Z', _))
        ))
        .await,
        "the brief orphan did not become our zombie"
    );
    drop(window);
    assert!(
        !is_subreaper(),
        "the last window closed: no longer a subreaper"
    );
    assert!(
        stat(brief).is_none(),
        "an orphan nobody adopted is reaped when the window closes"
    );

    // The adopted one is reaped by its own reaper, with its status known.
    let stop = spawner
        .terminate(
            &keep_id,
            Duration::from_secs(5),
            dms_proc::DEFAULT_KILL_WAIT,
        )
        .await
        .unwrap();
    assert!(stop.stopped, "{stop:?}");
    assert_eq!(stop.status, Some(ExitStatus::Signaled(libc::SIGTERM)));
    assert_eq!(
        spawner.child_status(&keep_id),
        Some(ExitStatus::Signaled(libc::SIGTERM))
    );
    assert!(
        wait_until(Duration::from_secs(5), || stat(keep).is_none()).await,
        "the adopted orphan was not reaped"
    );
}
