//! A zero usage interval does not wait: CPU percent is the average since the helper
//! started (as ps(1) shows %CPU). A busy loop shows well above half a core, `sleep`
//! almost nothing, and neither call waits.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::Spawner;
use std::time::{Duration, Instant};

#[tokio::test]
async fn zero_interval_gives_the_lifetime_average_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (busy, _g1) = start(&spawner, &sh(dir.path(), "while :; do :; done")).await;
    // As in usage_of_busy_and_idle_helpers: make the loop run on a loaded machine.
    let _ = std::fs::write(format!("/proc/{}/autogroup", busy.pid), "-20");
    // SAFETY: setpriority on the helper this test just started.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, busy.pid.get() as libc::id_t, -20) };
    let (idle, _g2) = start(&spawner, &spec(dir.path(), "sleep", &["60"])).await;

    // Let the loop accumulate CPU time (awaited on the helper's own counter, not slept).
    let stat = format!("/proc/{}/stat", busy.pid);
    let cpu_ticks = || -> u64 {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        let after = s.rsplit_once(')').map_or("", |(_, a)| a);
        let f: Vec<&str> = after.split_whitespace().collect();
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(20), || cpu_ticks() >= 50).await,
        "busy loop got no CPU time"
    );

    let t0 = Instant::now();
    let b = spawner.usage(&busy, Duration::ZERO).await.unwrap();
    let i = spawner.usage(&idle, Duration::ZERO).await.unwrap();
    let took = t0.elapsed();
    let b = b.expect("busy helper is alive");
    let i = i.expect("sleep helper is alive");
    eprintln!("busy loop: {b:?}\nsleep: {i:?}\nboth in {took:?}");
    assert!(
        took < Duration::from_millis(50),
        "a zero interval waits: {took:?}"
    );
    assert!(
        b.cpu_percent > 50.0 && b.cpu_percent <= 110.0,
        "busy loop: {b:?}"
    );
    assert!(i.cpu_percent < 5.0, "sleep: {i:?}");
    assert!(b.cpu_seconds >= 0.5, "{b:?}");
    assert!(b.rss_bytes > 0 && i.rss_bytes > 0);
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
