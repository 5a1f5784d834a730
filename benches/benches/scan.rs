//! Status and reload over 1,000, 10,000 and 30,000 PID files, 5 % of them naming a live
//! helper (a `sleep 3600` child of this benchmark), per backend, next to the floor.
//!
//! - `floor/N`: [`floor_scan`] over the same PID files: readdir; open, read, close each
//!   file; `kill(pid, 0)`; `/proc/PID/stat` of the live ones. Nothing else.
//! - `status_<backend>/N`: [`Manager::list`] on an open manager whose memory is empty,
//!   over those files: the read-only scan (every entry read, classified, the live ones
//!   proven ours and their usage read as `dms status` does). Never changes anything.
//! - `floor_clear/N`: [`floor_scan_and_clear`] over a fresh copy of the set: the floor
//!   plus what clearing each dead entry cannot avoid (lock, re-read, unlink).
//! - `reload_<backend>/N`: opening the store and [`Manager::open`] over a fresh copy of
//!   the set, i.e. what a long-running manager (and `dms cleanup`) does first: the startup scan, which loads
//!   the live helpers (proven ours) into memory and removes the 95 % stale PID files.
//!   The copy is made outside the measured time (hard links, so SQLite rows still match).
//!
//! The run directories are on tmpfs (`/dev/shm`), like production's `/run/dms`. At the
//! end every figure of this run is printed as a ratio to its floor (from criterion's
//! `estimates.json`). With `DMS_BENCH_CPU=1` the group is `scan_cpu` and measures this
//! process's CPU time (all threads) instead of wall time: on a loaded machine wall
//! times include other processes' turns, CPU times do not.
//!
//! Run: `cargo bench -p dms-benches --bench scan` (a few minutes; needs `ulimit -u` above
//! 1,600 for the 1,500 helpers of the 30,000 case). In test mode (`cargo test --bench
//! scan`) only the 1,000 case runs, once.

use criterion::measurement::Measurement;
use criterion::{BatchSize, BenchmarkId, Criterion};
use dms_benches::fixture::{self, Helpers, Planned};
use dms_benches::floor::{floor_scan, floor_scan_and_clear};
use dms_benches::{cli_options, test_mode, ProcessCpuTime};
use dms_core::{Manager, ProcessState};
use dms_proc::linux::LinuxSpawner;
use dms_proc::Spawner;
use dms_store::{PidFileStore, PidStore, SqliteStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

const SIZES: [usize; 3] = [1_000, 10_000, 30_000];
const BACKENDS: [&str; 2] = ["pidfile", "sqlite"];

fn runtime() -> Runtime {
    // The command line runs on a current-thread runtime; so do these benches.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn open_store(backend: &str, run_dir: &Path) -> Arc<dyn PidStore> {
    match backend {
        "pidfile" => Arc::new(PidFileStore::open(run_dir).expect("open PidFileStore")),
        "sqlite" => Arc::new(SqliteStore::open(run_dir).expect("open SqliteStore")),
        other => unreachable!("backend {other}"),
    }
}

/// A manager opened on an empty run directory, then given the whole set through its
/// store: nothing in memory, every entry on disk.
fn status_fixture(
    rt: &Runtime,
    backend: &str,
    plan: &[Planned],
    spawner: &Arc<dyn Spawner>,
) -> (tempfile::TempDir, Manager) {
    let dir = tempfile::tempdir_in(fixture::tmpfs()).expect("tmpfs dir");
    let store = open_store(backend, dir.path());
    let (manager, _) = rt
        .block_on(Manager::open(
            store.clone(),
            spawner.clone(),
            cli_options(dir.path()),
        ))
        .expect("Manager::open");
    rt.block_on(fixture::fill(&*store, plan)).expect("fill");
    (dir, manager)
}

/// A run directory holding the whole set, written through the backend's store, which is
/// then closed: the template every reload starts from.
fn template(rt: &Runtime, backend: &str, plan: &[Planned]) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(fixture::tmpfs()).expect("tmpfs dir");
    let store = open_store(backend, dir.path());
    rt.block_on(fixture::fill(&*store, plan)).expect("fill");
    drop(store);
    dir
}

fn scan<M: Measurement + 'static>(c: &mut Criterion<M>, group_name: &str) {
    let rt = runtime();
    let spawner: Arc<dyn Spawner> = {
        let _entered = rt.enter();
        Arc::new(LinuxSpawner::new().expect("LinuxSpawner"))
    };
    let sizes: &[usize] = if test_mode() { &SIZES[..1] } else { &SIZES };
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    for &n in sizes {
        group.measurement_time(Duration::from_secs(2 + n as u64 / 5_000));
        let helpers = Helpers::spawn(n.div_ceil(fixture::ALIVE_EVERY)).expect("spawn helpers");
        let plan = fixture::plan(n, &helpers).expect("plan");
        let alive = helpers.len();

        // The read-only scans, over directories that stay as they are.
        let mut status = Vec::new();
        for backend in BACKENDS {
            let (dir, manager) = status_fixture(&rt, backend, &plan, &spawner);
            let infos = rt.block_on(manager.list()).expect("list");
            let running = infos
                .iter()
                .filter(|i| i.state == ProcessState::Running)
                .count();
            assert_eq!(infos.len(), n, "{backend}: every entry listed");
            // Every helper of this bench is proven ours. A "dead" PID that another
            // process took meanwhile (pid_max is 32768 on a busy host) can add one.
            assert!(
                running >= alive,
                "{backend}: {running} of {alive} helpers proven ours"
            );
            status.push((backend, dir, manager));
        }
        let pid_dir = status[0].1.path().join(dms_store::PID_SUBDIR);
        let counts = floor_scan(&pid_dir).expect("floor scan");
        assert_eq!(counts.files, n, "floor sees the set");
        assert!(counts.alive >= alive, "floor sees every helper alive");
        if counts.alive > alive {
            eprintln!(
                "note: {} of the {} dead PIDs were taken by other processes since the set \
                 was written; every scan of this size sees them alike",
                counts.alive - alive,
                n - alive
            );
        }
        group.bench_function(BenchmarkId::new("floor", n), |b| {
            b.iter(|| floor_scan(&pid_dir).expect("floor scan"))
        });
        for (backend, _dir, manager) in &status {
            group.bench_function(BenchmarkId::new(format!("status_{backend}"), n), |b| {
                b.to_async(&rt)
                    .iter(|| async { manager.list().await.expect("list") })
            });
        }
        drop(status);

        // The startup scan, each time over a fresh copy of the set.
        let work = tempfile::tempdir_in(fixture::tmpfs()).expect("tmpfs dir");
        let pidfile_template = template(&rt, "pidfile", &plan);
        std::fs::create_dir_all(work.path().join("locks")).expect("locks dir");
        group.bench_function(BenchmarkId::new("floor_clear", n), |b| {
            b.iter_batched(
                || fixture::restore_run_dir(pidfile_template.path(), work.path()).expect("restore"),
                |()| {
                    let c = floor_scan_and_clear(
                        &work.path().join(dms_store::PID_SUBDIR),
                        &work.path().join("locks"),
                    )
                    .expect("floor scan and clear");
                    assert!(c.alive >= alive && c.files == n);
                    c
                },
                BatchSize::PerIteration,
            )
        });
        for backend in BACKENDS {
            let tpl = if backend == "pidfile" {
                None
            } else {
                Some(template(&rt, backend, &plan))
            };
            let from: PathBuf = tpl
                .as_ref()
                .map_or(pidfile_template.path(), |t| t.path())
                .to_owned();
            let reload = || async {
                let store = open_store(backend, work.path());
                Manager::open(store, spawner.clone(), cli_options(work.path()))
                    .await
                    .expect("Manager::open")
            };
            fixture::restore_run_dir(&from, work.path()).expect("restore");
            let (_, report) = rt.block_on(reload());
            assert!(
                report.adopted.len() >= alive,
                "{backend}: every live helper loaded"
            );
            assert_eq!(
                report.adopted.len() + report.cleared.len() + report.foreign.len(),
                n,
                "{backend}: every entry loaded, cleared, or foreign (a PID taken since)"
            );
            group.bench_function(BenchmarkId::new(format!("reload_{backend}"), n), |b| {
                b.to_async(&rt).iter_batched(
                    || fixture::restore_run_dir(&from, work.path()).expect("restore"),
                    |()| reload(),
                    BatchSize::PerIteration,
                )
            });
        }
        drop(helpers);
    }
    group.finish();
}

/// Prints every figure of this run as a ratio to the floor of the same size.
fn ratios(group_name: &str) {
    if test_mode() {
        return;
    }
    let Some(dir) = criterion_dir() else {
        eprintln!("ratios: cannot find criterion's output directory");
        return;
    };
    let median = |name: &str, n: usize| -> Option<f64> {
        let path = dir.join(format!("{group_name}/{name}/{n}/new/estimates.json"));
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        json["median"]["point_estimate"].as_f64()
    };
    println!("\n{group_name} figures of this run (median), as ratios to the floor:");
    for n in SIZES {
        let (Some(floor), Some(floor_clear)) = (median("floor", n), median("floor_clear", n))
        else {
            continue;
        };
        println!(
            "  {n:>6} files: floor {:.2} ms, floor_clear {:.2} ms",
            floor / 1e6,
            floor_clear / 1e6
        );
        for backend in BACKENDS {
            if let Some(s) = median(&format!("status_{backend}"), n) {
                println!(
                    "    status_{backend:<8} {:>9.2} ms = {:>5.2}x floor",
                    s / 1e6,
                    s / floor
                );
            }
            if let Some(r) = median(&format!("reload_{backend}"), n) {
                println!(
                    "    reload_{backend:<8} {:>9.2} ms = {:>5.2}x floor_clear ({:.2}x floor)",
                    r / 1e6,
                    r / floor_clear,
                    r / floor
                );
            }
        }
    }
}

fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // <target>/release/deps/scan-HASH
    let exe = std::env::current_exe().ok()?;
    Some(exe.ancestors().nth(3)?.join("criterion"))
}

fn main() {
    if std::env::var_os("DMS_BENCH_CPU").is_some_and(|v| v != "0") {
        let mut c = Criterion::default()
            .with_measurement(ProcessCpuTime)
            .configure_from_args();
        scan(&mut c, "scan_cpu");
        ratios("scan_cpu");
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        scan(&mut c, "scan");
        ratios("scan");
        c.final_summary();
    }
}
