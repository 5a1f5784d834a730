//! Benchmarks of the manager with real processes and PID files on tmpfs (like `/run`):
//!
//! - `is_running/memory_hit`: a helper this manager spawned (memory entry, watched);
//! - `is_running/disk_only`: a live process named by a PID file the manager has not
//!   loaded (read the file, probe `/proc`, check identity against the file's mtime);
//! - `reload/10000_files_500_alive`: startup recovery (`Manager::open`) over 10,000 PID
//!   files, 500 naming live `sleep` processes of this bench (adopted) and 9,500 naming
//!   PIDs no process has (stale, removed). Files are rewritten before each iteration
//!   (not measured).
//!
//! Every process started here is killed and reaped at the end, also on panic.
//! `cargo bench -p dms-core --bench manager -- --test` runs each once.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dms_core::{HelperSpec, Manager, ManagerOptions};
use dms_proc::linux::LinuxSpawner;
use dms_store::{PidFileStore, PidStore, TargetId};
use std::collections::HashSet;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tmp_run_dir() -> tempfile::TempDir {
    let b = {
        let mut b = tempfile::Builder::new();
        b.prefix("dms-core-bench-");
        b
    };
    if Path::new("/dev/shm").is_dir() {
        if let Ok(d) = b.tempdir_in("/dev/shm") {
            return d;
        }
    }
    b.tempdir().expect("temp dir")
}

fn options(run_dir: &Path) -> ManagerOptions {
    let mut o = ManagerOptions::new(run_dir);
    o.usage_interval = None;
    o
}

async fn open(run_dir: &Path) -> Manager {
    let store: Arc<dyn PidStore> = Arc::new(PidFileStore::open(run_dir).expect("store"));
    let spawner = Arc::new(LinuxSpawner::new().expect("spawner"));
    Manager::open(store, spawner, options(run_dir))
        .await
        .expect("open")
        .0
}

/// `sleep` children of this bench; killed and reaped on drop.
struct Sleepers(Vec<Child>);

impl Sleepers {
    fn start(n: usize) -> Sleepers {
        Sleepers(
            (0..n)
                .map(|_| {
                    Command::new("sleep")
                        .arg("3600")
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("spawn sleep")
                })
                .collect(),
        )
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn is_running(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tmp_run_dir();
    let m = rt.block_on(open(dir.path()));
    let target: TargetId = "bench-mem".parse().unwrap();
    rt.block_on(m.spawn(
        &target,
        HelperSpec {
            program: "sleep".into(),
            args: vec!["3600".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..HelperSpec::default()
        },
    ))
    .expect("spawn helper");

    // A live process named by a PID file written after it started, unknown to memory.
    let outsider = Sleepers::start(1);
    let disk_target: TargetId = "bench-disk".parse().unwrap();
    std::fs::write(
        disk_target.pid_file_in(&dir.path().join("s3")),
        format!("{}\n", outsider.0[0].id()),
    )
    .unwrap();

    let mut g = c.benchmark_group("is_running");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("memory_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    assert!(black_box(m.is_running(black_box(&target)).await.unwrap()));
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("disk_only", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    assert!(black_box(
                        m.is_running(black_box(&disk_target)).await.unwrap()
                    ));
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    assert!(m.memory_snapshot().iter().all(|(t, _)| *t == target));
    rt.block_on(m.kill(&target, Duration::from_secs(5)))
        .expect("kill helper");
    drop(outsider);
}

/// PIDs that no process has right now (and are valid PIDs).
fn dead_pids(n: usize, avoid: &HashSet<u32>) -> Vec<u32> {
    let max = dms_store::pid_max();
    let mut out = Vec::with_capacity(n);
    let mut p = max - 1;
    while out.len() < n && p > 300 {
        if !avoid.contains(&p) && !Path::new(&format!("/proc/{p}")).exists() {
            out.push(p);
        }
        p -= 1;
    }
    assert_eq!(out.len(), n, "not enough free PIDs below pid_max {max}");
    out
}

/// Writes the PID files: the live ones now (after their processes started), the stale
/// ones dated an hour back, as stale files are: a process that has since been given
/// such a PID started after the file was written, so it is foreign, not adopted.
fn write_files(pid_dir: &Path, live: &[u32], dead: &[u32]) {
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (i, pid) in live.iter().chain(dead).enumerate() {
        let path = pid_dir.join(format!("target-{i:05}.pid"));
        std::fs::write(&path, format!("{pid}\n")).unwrap();
        if i >= live.len() {
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        }
    }
}

fn reload(c: &mut Criterion) {
    const FILES: usize = 10_000;
    const ALIVE: usize = 500;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sleepers = Sleepers::start(ALIVE);
    let live: Vec<u32> = sleepers.0.iter().map(Child::id).collect();
    let dead = dead_pids(FILES - ALIVE, &live.iter().copied().collect());
    let dir = tmp_run_dir();
    let run_dir: PathBuf = dir.path().to_owned();
    let pid_dir = run_dir.join("s3");
    std::fs::create_dir_all(&pid_dir).unwrap();

    let mut g = c.benchmark_group("reload");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("10000_files_500_alive", |b| {
        b.iter_batched(
            || write_files(&pid_dir, &live, &dead),
            |()| {
                let report = rt.block_on(async {
                    let store: Arc<dyn PidStore> =
                        Arc::new(PidFileStore::open(&run_dir).expect("store"));
                    let spawner = Arc::new(LinuxSpawner::new().expect("spawner"));
                    let (m, report) = Manager::open(store, spawner, options(&run_dir))
                        .await
                        .expect("open");
                    drop(m);
                    report
                });
                assert_eq!(report.adopted.len(), ALIVE);
                assert!(report.cleared.len() + report.foreign.len() == FILES - ALIVE);
                report
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(sleepers);
}

criterion_group!(benches, is_running, reload);
criterion_main!(benches);
