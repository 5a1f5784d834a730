//! Stopping a helper that leads its process group stops its descendants too: a
//! grandchild that would otherwise be orphaned dies with the group.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Signal, Spawner};
use std::time::Duration;

#[tokio::test]
async fn grandchild_dies_with_its_group() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (helper, _guard) = start(
        &spawner,
        &sh(dir.path(), "sleep 60 & echo $! > grandchild.pid; wait"),
    )
    .await;
    let pid_file = dir.path().join("grandchild.pid");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            &pid_file
        )
        .is_ok_and(|s| s.ends_with('\n')))
        .await,
        "the helper never wrote its grandchild's PID"
    );
    let grandchild: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (state, gc_ticks) = stat(grandchild).expect("grandchild runs");
    assert_ne!(state, 'Z');
    let gc = procfs::process::Process::new(grandchild)
        .unwrap()
        .stat()
        .unwrap();
    assert_eq!(
        gc.pgrp,
        helper.pid.get(),
        "the grandchild is in the helper's group"
    );

    let stop = spawner
        .terminate(&helper, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    assert!(stop.stopped, "{stop:?}");
    assert_eq!(stop.signals, vec![Signal::Term]);
    assert_eq!(stop.status, Some(ExitStatus::Signaled(libc::SIGTERM)));

    // The grandchild got the group's SIGTERM: it is dead (a zombie of whoever inherited
    // it, possibly us as subreaper, or already reaped by the shell).
    assert!(
        wait_until(Duration::from_secs(5), || !alive(grandchild, gc_ticks)).await,
        "the grandchild survived its group"
    );
    if let Some(status) = reap(grandchild, Duration::from_millis(500)) {
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
    }
}
