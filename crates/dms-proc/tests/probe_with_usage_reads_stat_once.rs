//! `probe_with_usage` (one read of `/proc/PID/stat` on Linux, used by `dms status` for
//! every live helper) reports the same probe as `probe` and the same usage fields as
//! `usage` with a zero interval: RSS, threads, CPU time and the lifetime CPU average.
//! The trait's default implementation (probe, then usage) agrees with the override,
//! except that the override does not read the `exe` link (a listing does not show it).

mod common;

use async_trait::async_trait;
use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{
    Pending, Pid, Probe, ProcError, ProcIdentity, Signal, SignalOutcome, SpawnSpec, Spawner, Usage,
    WaitOutcome,
};
use std::time::Duration;

/// The Linux spawner without its `probe_with_usage` override: the trait's default.
#[derive(Debug)]
struct DefaultOnly(LinuxSpawner);

#[async_trait]
impl Spawner for DefaultOnly {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        self.0.spawn(spec).await
    }
    async fn probe(&self, pid: Pid) -> Result<Probe, ProcError> {
        self.0.probe(pid).await
    }
    async fn signal(&self, who: &ProcIdentity, signal: Signal) -> Result<SignalOutcome, ProcError> {
        self.0.signal(who, signal).await
    }
    async fn wait_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError> {
        self.0.wait_exit(who, timeout).await
    }
    async fn usage(
        &self,
        who: &ProcIdentity,
        interval: Duration,
    ) -> Result<Option<Usage>, ProcError> {
        self.0.usage(who, interval).await
    }
    fn boot_id(&self) -> &str {
        self.0.boot_id()
    }
}

/// Checks `probe_with_usage` of `id` on `s` against `probe` and `usage` read just
/// before and just after it (CPU time only grows, so it lies between the two).
/// `reads_exe`: whether `probe_with_usage` fills in the executable.
async fn check(s: &dyn Spawner, id: &ProcIdentity, reads_exe: bool) {
    let before = s.usage(id, Duration::ZERO).await.unwrap().expect("alive");
    let (probe, usage) = s.probe_with_usage(id.pid).await.unwrap();
    let after = s.usage(id, Duration::ZERO).await.unwrap().expect("alive");
    let usage = usage.expect("a live process has usage");
    let Probe::Alive(info) = probe else {
        panic!("live helper probed as {probe:?}")
    };
    let Probe::Alive(plain) = s.probe(id.pid).await.unwrap() else {
        panic!("live helper not alive for probe")
    };
    assert_eq!(info.identity, *id);
    assert!(plain.exe.is_some(), "probe reads the executable");
    if !reads_exe {
        assert_eq!(info.exe, None, "the listing's probe reads no exe link");
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
async fn probe_with_usage_matches_probe_and_zero_interval_usage() {
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
    let plain = DefaultOnly(LinuxSpawner::new().unwrap());
    for id in [&busy, &idle] {
        check(&linux, id, false).await;
        check(&plain, id, true).await;
    }
    for id in [&busy, &idle] {
        assert!(
            linux
                .terminate(id, Duration::from_secs(5))
                .await
                .unwrap()
                .stopped
        );
        // Gone now (reaped by the spawner that started it): no usage, for both.
        assert!(
            wait_until(Duration::from_secs(5), || !alive(
                id.pid.get(),
                id.start_ticks
            ))
            .await
        );
        for s in [&linux as &dyn Spawner, &plain] {
            let (probe, usage) = s.probe_with_usage(id.pid).await.unwrap();
            assert!(
                !matches!(probe, Probe::Alive(ref i) if i.identity == *id),
                "{probe:?}"
            );
            if !matches!(probe, Probe::Alive(_)) {
                assert_eq!(usage, None);
            }
        }
    }
}
