//! `is_running` from memory and from disk, and `process_info`, for one live helper (a
//! `sleep 3600` child of this benchmark) in a run directory on tmpfs.
//!
//! - `is_running/memory`: the helper was spawned by this manager, so it is in memory and
//!   its exit watcher keeps that entry truthful: no system call.
//! - `is_running/disk_<backend>`: the manager's memory is empty; the PID file (and, for
//!   SQLite, the row with the recorded identity) is read and the process probed.
//!   `pidfile` proves a bare file by the process's start time against the file's mtime.
//! - `process_info/<where>`: the info object of `dms status TARGET` with the command
//!   line's usage sampling ([`dms_benches::CLI_USAGE`]), and without sampling.
//!
//! Run: `cargo bench -p dms-benches --bench lookup`.

use criterion::{criterion_group, criterion_main, Criterion};
use dms_benches::cli_options;
use dms_benches::fixture::{self, Helpers};
use dms_core::{HelperSpec, Manager, ProcessState, UsageSampling};
use dms_proc::linux::LinuxSpawner;
use dms_proc::Spawner;
use dms_store::{PidFileStore, PidStore, SqliteStore, TargetId};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

fn open(
    rt: &Runtime,
    store: Arc<dyn PidStore>,
    spawner: &Arc<dyn Spawner>,
    run_dir: &Path,
    usage: bool,
) -> Manager {
    open_with(rt, store, spawner, cli_options(run_dir), usage)
}

/// [`open`] in one-shot mode (as the command line opens it): a lookup answers from
/// disk and loads nothing into memory (a long-lived manager loads a proven helper it
/// finds on disk, so its second lookup would be a memory one).
fn open_one_shot(
    rt: &Runtime,
    store: Arc<dyn PidStore>,
    spawner: &Arc<dyn Spawner>,
    run_dir: &Path,
    usage: bool,
) -> Manager {
    let mut opts = cli_options(run_dir);
    opts.one_shot = true;
    open_with(rt, store, spawner, opts, usage)
}

/// Opens a manager with `opts`, without usage sampling unless `usage`.
fn open_with(
    rt: &Runtime,
    store: Arc<dyn PidStore>,
    spawner: &Arc<dyn Spawner>,
    mut opts: dms_core::ManagerOptions,
    usage: bool,
) -> Manager {
    if !usage {
        opts.usage = UsageSampling::Off;
    }
    rt.block_on(Manager::open(store, spawner.clone(), opts))
        .expect("Manager::open")
        .0
}

fn lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spawner: Arc<dyn Spawner> = {
        let _entered = rt.enter();
        Arc::new(LinuxSpawner::new().expect("LinuxSpawner"))
    };
    let target: TargetId = "target-00000".parse().expect("target");
    let helpers = Helpers::spawn(1).expect("spawn helper");
    let plan = fixture::plan(1, &helpers).expect("plan");

    // In memory: spawned by this manager.
    let mem_dir = tempfile::tempdir_in(fixture::tmpfs()).expect("tmpfs dir");
    let mem_store: Arc<dyn PidStore> = Arc::new(PidFileStore::open(mem_dir.path()).expect("store"));
    let in_memory = open(&rt, mem_store.clone(), &spawner, mem_dir.path(), true);
    let spec = HelperSpec {
        program: "sleep".into(),
        args: vec!["3600".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..HelperSpec::default()
    };
    rt.block_on(in_memory.spawn(&target, spec)).expect("spawn");
    assert_eq!(in_memory.memory_snapshot().len(), 1);
    let no_usage = open(&rt, mem_store, &spawner, mem_dir.path(), false);
    // `open` recovered the helper into the second manager's memory too.
    assert_eq!(no_usage.memory_snapshot().len(), 1);

    // On disk only: one-shot managers opened on empty run directories, then the record
    // written.
    let mut on_disk = Vec::new();
    for backend in ["pidfile", "sqlite"] {
        let dir = tempfile::tempdir_in(fixture::tmpfs()).expect("tmpfs dir");
        let store: Arc<dyn PidStore> = match backend {
            "pidfile" => Arc::new(PidFileStore::open(dir.path()).expect("store")),
            _ => Arc::new(SqliteStore::open(dir.path()).expect("store")),
        };
        let with_usage = open_one_shot(&rt, store.clone(), &spawner, dir.path(), true);
        let without = open_one_shot(&rt, store.clone(), &spawner, dir.path(), false);
        rt.block_on(fixture::fill(&*store, &plan)).expect("fill");
        assert!(rt
            .block_on(with_usage.is_running(&target))
            .expect("is_running"));
        assert!(with_usage.memory_snapshot().is_empty(), "disk only");
        on_disk.push((backend, dir, with_usage, without));
    }

    let mut group = c.benchmark_group("is_running");
    group.sample_size(50);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("memory", |b| {
        b.to_async(&rt)
            .iter(|| async { assert!(in_memory.is_running(&target).await.unwrap()) })
    });
    for (backend, _, manager, _) in &on_disk {
        group.bench_function(format!("disk_{backend}"), |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(manager.is_running(&target).await.unwrap()) })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("process_info");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let mut cases = vec![
        ("memory".to_owned(), &in_memory, true),
        ("memory_no_usage".to_owned(), &no_usage, false),
    ];
    for (backend, _, with, without) in &on_disk {
        cases.push((format!("disk_{backend}"), with, true));
        cases.push((format!("disk_{backend}_no_usage"), without, false));
    }
    for (name, manager, usage) in cases {
        let info = rt.block_on(manager.process_info(&target)).expect("info");
        assert_eq!(info.state, ProcessState::Running, "{name}");
        assert_eq!(info.rss_bytes.is_some(), usage, "{name}");
        group.bench_function(&name, |b| {
            b.to_async(&rt)
                .iter(|| async { manager.process_info(&target).await.unwrap() })
        });
    }
    group.finish();

    rt.block_on(in_memory.kill(&target, Duration::from_secs(5)))
        .expect("kill");
    drop(helpers);
}

criterion_group!(benches, lookup);
criterion_main!(benches);
