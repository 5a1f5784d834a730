//! Usage from /proc: a busy-loop helper shows more than 50 % CPU, `sleep` less than 5 %.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ProcIdentity, Spawner};
use std::time::Duration;

#[tokio::test]
async fn busy_loop_shows_cpu_above_half_a_core_and_sleep_below_5_percent() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (busy, _g1) = start(&spawner, &sh(dir.path(), "while :; do :; done")).await;
    // The test is about measuring, not scheduling: on a loaded 2-core machine (parallel
    // builds) a default-priority loop may get well under half a core. The helper has its
    // own session, hence its own scheduler autogroup; raise that group's priority (as
    // root; best effort otherwise) so the loop really runs most of the time.
    let _ = std::fs::write(format!("/proc/{}/autogroup", busy.pid), "-20");
    // SAFETY: setpriority on the helper this test just started.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, busy.pid.get() as libc::id_t, -20) };
    let (idle, _g2) = start(&spawner, &spec(dir.path(), "sleep", &["60"])).await;

    let interval = Duration::from_secs(1);
    let (b, i) = tokio::join!(
        spawner.usage(&busy, interval),
        spawner.usage(&idle, interval)
    );
    let b = b.unwrap().expect("busy helper is alive");
    let i = i.unwrap().expect("sleep helper is alive");
    eprintln!("busy loop: {b:?}\nsleep: {i:?}");
    assert!(b.cpu_percent > 50.0, "busy loop: {b:?}");
    assert!(i.cpu_percent < 5.0, "sleep: {i:?}");
    assert!(b.cpu_seconds > 0.4, "{b:?}");
    assert_eq!(b.threads, 1);
    assert_eq!(i.threads, 1);
    assert!(b.rss_bytes > 0 && i.rss_bytes > 0);

    // Another incarnation (wrong start ticks) has no usage.
    let other = ProcIdentity {
        start_ticks: busy.start_ticks + 1,
        ..busy.clone()
    };
    assert_eq!(spawner.usage(&other, Duration::ZERO).await.unwrap(), None);
    for id in [&busy, &idle] {
        assert!(
            spawner
                .terminate(id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
                .await
                .unwrap()
                .stopped
        );
    }
}
