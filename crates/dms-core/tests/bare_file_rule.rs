//! The bare-PID-file identity rule against helpers dms spawned itself: a helper is forked
//! before its PID file is written, so its start is never after the file's mtime, and
//! with the default 20 ms slack not one of 1,000 fresh spawns may read foreign when a
//! manager with an empty memory recovers them from the PID files alone. Every process
//! signalled here was started by this test (as a helper of its manager).

mod common;

use common::{run_dir, t};
use dms_core::{
    HelperSpec, Manager, ManagerOptions, ProcessState, UsageSampling, DEFAULT_START_TIME_SLACK,
};
use dms_proc::linux::LinuxSpawner;
use dms_store::PidFileStore;
use std::sync::Arc;
use std::time::Duration;

const SPAWNS: usize = 1_000;

async fn manager(dir: &std::path::Path) -> Manager {
    let mut opts = ManagerOptions::new(dir);
    opts.failed_start_grace = Duration::from_secs(5);
    opts.usage = UsageSampling::Off;
    let store = Arc::new(PidFileStore::open(dir).unwrap());
    let spawner = Arc::new(LinuxSpawner::new().unwrap());
    Manager::open(store, spawner, opts).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fresh_spawns_all_read_as_ours_from_bare_pid_files() {
    assert_eq!(DEFAULT_START_TIME_SLACK, Duration::from_millis(20));
    let dir = run_dir();
    let spawning = manager(dir.path()).await;
    let mut pids = Vec::with_capacity(SPAWNS);
    for i in 0..SPAWNS {
        let spec = HelperSpec {
            program: "sleep".into(),
            args: vec![format!("{}", 200_000 + i).into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..HelperSpec::default()
        };
        let info = spawning.spawn(&t(&format!("h{i}")), spec).await.unwrap();
        pids.push(info.pid.unwrap());
    }
    // A second manager on the same run dir knows nothing but the bare PID files (the
    // PID-file backend records no start ticks): its recovery judges every helper by the
    // file's mtime alone.
    let recovering = manager(dir.path()).await;
    let infos = recovering.list().await.unwrap();
    let not_ours: Vec<String> = infos
        .iter()
        .filter(|i| i.state != ProcessState::Running)
        .map(|i| format!("{}: {:?} {:?}", i.target, i.state, i.detail))
        .collect();
    // Stop them all before asserting, so a failure leaves nothing behind.
    let report = spawning.cleanup_all(Duration::from_secs(5)).await.unwrap();
    assert_eq!(report.stopped.len(), SPAWNS, "every helper stopped");
    assert_eq!(infos.len(), SPAWNS);
    assert!(
        not_ours.is_empty(),
        "{} of {SPAWNS} fresh helpers did not read as ours: {:?}",
        not_ours.len(),
        &not_ours[..not_ours.len().min(10)]
    );
}
