//! The spawn → record → kill round trip through the manager with the real spawner:
//! `Manager::spawn` of `sleep 3600` (fork, start barrier, PID file and record written,
//! exec confirmed, exit watcher started, info read as `dms spawn` prints it), then
//! `Manager::kill` (identity checked, SIGTERM to the group through a pidfd, exit awaited,
//! PID file removed). Per backend, on tmpfs.
//!
//! Spawn latency alone, `LinuxSpawner` against `std::process::Command`, is
//! `crates/dms-proc/benches/spawn.rs`.
//!
//! Run: `cargo bench -p dms-benches --bench roundtrip`.

use criterion::{criterion_group, criterion_main, Criterion};
use dms_benches::{cli_options, fixture};
use dms_core::{HelperSpec, Manager};
use dms_proc::linux::LinuxSpawner;
use dms_proc::Spawner;
use dms_store::{PidFileStore, PidStore, SqliteStore, TargetId};
use std::sync::Arc;
use std::time::Duration;

fn roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let spawner: Arc<dyn Spawner> = {
        let _entered = rt.enter();
        Arc::new(LinuxSpawner::new().expect("LinuxSpawner"))
    };
    let target: TargetId = "target-00000".parse().expect("target");
    let spec = HelperSpec {
        program: "sleep".into(),
        args: vec!["3600".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..HelperSpec::default()
    };
    let mut group = c.benchmark_group("roundtrip");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for backend in ["pidfile", "sqlite"] {
        let dir = tempfile::tempdir_in(fixture::tmpfs()).expect("tmpfs dir");
        let store: Arc<dyn PidStore> = match backend {
            "pidfile" => Arc::new(PidFileStore::open(dir.path()).expect("store")),
            _ => Arc::new(SqliteStore::open(dir.path()).expect("store")),
        };
        let (manager, _) = rt
            .block_on(Manager::open(
                store,
                spawner.clone(),
                cli_options(dir.path()),
            ))
            .expect("Manager::open");
        let pid_file = target.pid_file_in(&dir.path().join(dms_store::PID_SUBDIR));
        group.bench_function(format!("spawn_kill_{backend}"), |b| {
            b.to_async(&rt).iter(|| async {
                let info = manager.spawn(&target, spec.clone()).await.expect("spawn");
                assert!(info.running && pid_file.exists());
                let report = manager
                    .kill(&target, Duration::from_secs(5))
                    .await
                    .expect("kill");
                assert!(report.stopped && !pid_file.exists());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
