//! Spawn latency: `LinuxSpawner` (fork + start barrier + release, i.e. until the exec is
//! confirmed) against a bare `std::process::Command::spawn` of the same program (which
//! also returns once the exec has succeeded). Both start `sleep 60`; stopping and
//! reaping the helper happens outside the measured time.
//!
//! Run: `cargo bench -p dms-proc --bench spawn`.

use criterion::{criterion_group, criterion_main, Criterion};
use dms_proc::linux::LinuxSpawner;
use dms_proc::{SpawnSpec, Spawner};
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bench.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let spec = SpawnSpec {
        program: "/bin/sleep".into(),
        args: vec!["60".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        log: log.clone(),
        cwd: None,
    };

    let mut group = c.benchmark_group("spawn");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));

    group.bench_function("LinuxSpawner spawn+release /bin/sleep", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let spawner = spawner.clone();
            let spec = spec.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let pending = spawner.spawn(&spec).await.unwrap();
                    let id = pending.identity.clone();
                    pending.gate.release().await.unwrap();
                    total += t0.elapsed();
                    let stop = spawner
                        .terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
                        .await
                        .unwrap();
                    assert!(black_box(stop).stopped);
                }
                total
            }
        })
    });

    group.bench_function("std Command::spawn /bin/sleep", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Opening the log is part of LinuxSpawner::spawn too.
                let t0 = Instant::now();
                let log_file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&log)
                    .unwrap();
                let mut child = Command::new("/bin/sleep")
                    .arg("60")
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().unwrap())
                    .stderr(log_file)
                    .spawn()
                    .unwrap();
                total += t0.elapsed();
                child.kill().unwrap();
                child.wait().unwrap();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, spawn);
criterion_main!(benches);
