//! Write-through throughput: `put` of one record per call (an atomic, durable PID-file
//! write, plus for SQLite the row in its own transaction), reported in puts per second.
//! Targets cycle over 1,000 names, so each put replaces an earlier one.
//!
//! On tmpfs (production's `/run/dms`: fsync costs nothing) and on the build disk
//! (`CARGO_TARGET_TMPDIR`: every put waits for its fsyncs).
//!
//! Run: `cargo bench -p dms-benches --bench write_through`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dms_benches::fixture::{self, Helpers};
use dms_store::{PidFileStore, PidStore, SqliteStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn write_through(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // Records as `dms spawn` writes them; one target in 20 names a live helper.
    let helpers = Helpers::spawn(50).expect("helpers");
    let plan = fixture::plan(1_000, &helpers).expect("plan");
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for (place, base) in [
        ("tmpfs", fixture::tmpfs()),
        ("disk", Path::new(env!("CARGO_TARGET_TMPDIR")).to_owned()),
    ] {
        for backend in ["pidfile", "sqlite"] {
            let dir = tempfile::tempdir_in(&base).expect("dir");
            let store: Arc<dyn PidStore> = match backend {
                "pidfile" => Arc::new(PidFileStore::open(dir.path()).expect("store")),
                _ => Arc::new(SqliteStore::open(dir.path()).expect("store")),
            };
            let records: Vec<_> = plan
                .iter()
                .map(|p| (p.target.clone(), p.record()))
                .collect();
            let mut next = 0usize;
            group.bench_function(format!("{backend}_{place}"), |b| {
                b.to_async(&rt).iter(|| {
                    let (target, record) = &records[next % records.len()];
                    next += 1;
                    let store = &store;
                    async move { store.put(target, record).await.expect("put") }
                })
            });
        }
    }
    group.finish();
    drop(helpers);
}

criterion_group!(benches, write_through);
criterion_main!(benches);
