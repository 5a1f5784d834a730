//! `probe` told which fields to read: with `usage` (one read of `/proc/PID/stat` on
//! Linux, used by `dms status` for every live helper) it reports the same probe as
//! without, and the same usage fields as `usage` with a zero interval: RSS, threads, CPU
//! time and the lifetime CPU average; the `exe` link is read only when asked for.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{Probe, ProbeFields, ProcIdentity, Spawner};
use std::time::Duration;

/// Checks `probe` of `id` on `s` with usage (and the executable when `reads_exe`)
/// against a plain `probe` and `usage` read just before and just after it (CPU time only
/// grows, so it lies between the two).
async fn check(s: &dyn Spawner, id: &ProcIdentity, reads_exe: bool) {
    let fields = ProbeFields {
        exe: reads_exe,
        usage: true,
    };
    let before = s.usage(id, Duration::ZERO).await.unwrap().expect("alive");
    let (probe, usage) = s.probe(id.pid, fields).await.unwrap();
    let after = s.usage(id, Duration::ZERO).await.unwrap().expect("alive");
    let usage = usage.expect("a live process has usage");
    let Probe::Alive(info) = probe else {
        panic!("live helper probed as {probe:?}")
    };
    let (Probe::Alive(plain), None) = s.probe(id.pid, ProbeFields::DETAIL).await.unwrap() else {
        panic!("live helper not alive for probe")
    };
    assert_eq!(info.identity, *id);
    assert!(plain.exe.is_some(), "probe reads the executable");
    if !reads_exe {
        assert_eq!(
            info.exe, None,
            "a probe not asked for the executable reads no exe link"
        );
    }
    let exe = if reads_exe { &plain.exe } else { &None };
    assert_eq!(
        (
            &info.identity,
            info.pgid,
            info.sid,
            &info.exe,
            &info.cmdline
        ),
        (&plain.identity, plain.pgid, plain.sid, exe, &plain.cmdline)
    );
    let skew = match info.started_at.duration_since(plain.started_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        skew < Duration::from_millis(50),
        "start times differ by {skew:?}"
    );
    eprintln!("before {before:?}\nprobe  {usage:?}\nafter  {after:?}");
    assert!(
        before.cpu_seconds <= usage.cpu_seconds && usage.cpu_seconds <= after.cpu_seconds,
        "CPU time not between the reads around it"
    );
    let (lo, hi) = (
        before.cpu_percent.min(after.cpu_percent),
        before.cpu_percent.max(after.cpu_percent),
    );
    assert!(
        usage.cpu_percent >= lo - 1.0 && usage.cpu_percent <= hi + 1.0,
        "lifetime CPU percent {} outside [{lo}, {hi}] (± 1)",
        usage.cpu_percent
    );
    assert_eq!(usage.threads, before.threads);
    assert_eq!(usage.threads, after.threads);
    assert!(usage.rss_bytes > 0);
    let rss = before.rss_bytes.min(after.rss_bytes)..=before.rss_bytes.max(after.rss_bytes);
    assert!(
        rss.contains(&usage.rss_bytes),
        "RSS {} not within that of the reads around it, {rss:?}",
        usage.rss_bytes
    );
}

#[tokio::test]
async fn probe_with_usage_matches_a_plain_probe_and_zero_interval_usage() {
    let dir = tempfile::tempdir().unwrap();
    let linux = LinuxSpawner::new().unwrap();
    let (busy, _g1) = start(&linux, &sh(dir.path(), "while :; do :; done")).await;
    let (idle, _g2) = start(&linux, &spec(dir.path(), "sleep", &["60"])).await;
    // Let the loop accumulate CPU time (awaited on its own counter, not slept).
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = std::fs::read_to_string(format!("/proc/{}/stat", busy.pid)).unwrap_or_default();
            let f: Vec<&str> = s
                .rsplit_once(')')
                .map_or("", |(_, a)| a)
                .split_whitespace()
                .collect();
            f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) >= 5
        })
        .await,
        "busy loop got no CPU time"
    );
    for id in [&busy, &idle] {
        check(&linux, id, false).await;
        check(&linux, id, true).await;
    }
    for id in [&busy, &idle] {
        assert!(
            linux
                .terminate(id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
                .await
                .unwrap()
                .stopped
        );
        // Gone now (reaped by the spawner that started it): no usage.
        assert!(
            wait_until(Duration::from_secs(5), || !alive(
                id.pid.get(),
                id.start_ticks
            ))
            .await
        );
        let (probe, usage) = linux.probe(id.pid, ProbeFields::LISTING).await.unwrap();
        assert!(
            !matches!(probe, Probe::Alive(ref i) if i.identity == *id),
            "{probe:?}"
        );
        if !matches!(probe, Probe::Alive(_)) {
            assert_eq!(usage, None);
        }
    }
}
