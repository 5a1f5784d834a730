//! `list` of 10,000 PID files, per backend.
//!
//! The run directory is on tmpfs (`/dev/shm`) like production's `/run/dms`, populated
//! with `put` of full records; the `*_ext4_*` variants use a directory on the build disk
//! (`CARGO_TARGET_TMPDIR`, page cache warm), populated by writing the files directly (SQLite rows are then the
//! bare rows the store builds from the files). Run: `cargo bench -p dms-store --bench list`.

use criterion::{criterion_group, criterion_main, Criterion};
use dms_store::{
    Identity, MemoryStore, Metadata, Pid, PidFileStore, PidStore, Record, SqliteStore, TargetId,
};
use std::path::Path;
use std::time::{Duration, SystemTime};

const N: usize = 10_000;

fn target(i: usize) -> TargetId {
    format!("target-{i:05}").parse().unwrap()
}

fn record(i: usize) -> Record {
    Record {
        pid: Pid::new(1000 + i as i64).unwrap(),
        identity: Some(Identity {
            start_ticks: 1_000_000 + i as u64,
            boot_id: "6f1c2a8e-0d4b-4f7e-9a51-2b1d3c4e5f60".into(),
        }),
        meta: Metadata {
            cmdline: Some(vec!["/usr/bin/s3vaultfuse.py".into()]),
            mount: Some(format!("/var/lib/dms/mnt/target-{i:05}").into()),
            spawned_at: Some(SystemTime::now()),
            log_path: Some(format!("/run/dms/logs/target-{i:05}.log").into()),
        },
        written_at: None,
    }
}

async fn fill(store: &dyn PidStore) {
    for i in 0..N {
        store.put(&target(i), &record(i)).await.unwrap();
    }
}

fn write_files(run_dir: &Path) {
    let dir = run_dir.join("s3");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..N {
        std::fs::write(target(i).pid_file_in(&dir), format!("{}\n", 1000 + i)).unwrap();
    }
}

fn bench_list(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let tmpfs = Path::new("/dev/shm");
    let tmpfs = if tmpfs.is_dir() {
        tmpfs
    } else {
        Path::new("/tmp")
    };

    let memory = MemoryStore::new("/run/dms/s3".into());
    rt.block_on(fill(&memory));

    let pf_dir = tempfile::tempdir_in(tmpfs).unwrap();
    let pidfile = PidFileStore::open(pf_dir.path()).unwrap();
    rt.block_on(fill(&pidfile));

    let sq_dir = tempfile::tempdir_in(tmpfs).unwrap();
    let sqlite = SqliteStore::open(sq_dir.path()).unwrap();
    rt.block_on(fill(&sqlite));

    let pf_ext4_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    write_files(pf_ext4_dir.path());
    let pidfile_ext4 = PidFileStore::open(pf_ext4_dir.path()).unwrap();

    let sq_ext4_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    write_files(sq_ext4_dir.path());
    let sqlite_ext4 = SqliteStore::open(sq_ext4_dir.path()).unwrap();

    let stores: [(&str, &dyn PidStore); 5] = [
        ("memory", &memory),
        ("pidfile_tmpfs", &pidfile),
        ("sqlite_tmpfs", &sqlite),
        ("pidfile_ext4_warm", &pidfile_ext4),
        ("sqlite_ext4_warm", &sqlite_ext4),
    ];
    let mut group = c.benchmark_group("list_10000");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));
    for (name, store) in stores {
        assert_eq!(
            rt.block_on(dms_store::list_sorted(store)).unwrap().len(),
            N,
            "{name}"
        );
        group.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { dms_store::list_sorted(store).await.unwrap() })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_list);
criterion_main!(benches);
