//! `mem_per_helper [N]`: memory per helper tracked by the [`Manager`], with N targets
//! (default 100,000) over [`FakeSpawner`] and [`MemoryStore`].
//!
//! First the N helpers exist (fake processes, running) and are recorded in the store
//! (identity and metadata as `dms spawn` writes them); the resident set size is read.
//! Then [`Manager::open`] recovers all N into memory (each with its exit watcher task
//! and its per-target lock entry), and the resident set size is read again. The
//! difference divided by N is the manager's memory per tracked helper; the fake process
//! table and the store are not part of it. Both readings are taken after `malloc_trim`,
//! so memory freed by the recovery scan (its listing, its report) is not counted; the
//! figures without the trim are printed too.
//!
//! Needs `pid_max` above N + 1,000 (the fake's PIDs are validated like real ones): run
//! it in a new PID namespace, where `pid_max` is 4,194,304:
//! `unshare --pid --fork --mount-proc target/release/mem_per_helper 100000`.

use dms_core::{Manager, ManagerOptions, UsageSampling};
use dms_proc::fake::{FakeConfig, FakeSpawner};
use dms_proc::{SpawnSpec, Spawner};
use dms_store::{Identity, MemoryStore, Metadata, PidStore, Record};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

/// Bytes of the heap in use (glibc's `mallinfo2`: allocated chunks, headers included).
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

fn trimmed_rss() -> std::io::Result<u64> {
    // SAFETY: malloc_trim only returns free memory of glibc's heaps to the kernel.
    unsafe { libc::malloc_trim(0) };
    dms_benches::rss_bytes()
}

async fn run(n: usize) -> Result<(), String> {
    let first_pid = 1_000;
    let max_pid = first_pid + i32::try_from(n).map_err(|e| e.to_string())? + 10;
    if i64::from(max_pid) >= i64::from(dms_store::pid_max()) {
        return Err(format!(
            "{n} fake PIDs need pid_max above {max_pid}, this namespace has {}; run it in a \
             new PID namespace: unshare --pid --fork --mount-proc {}",
            dms_store::pid_max(),
            std::env::args().next().unwrap_or_default()
        ));
    }
    let spawner = Arc::new(FakeSpawner::new(FakeConfig {
        first_pid,
        max_pid,
        boot_id: "6f1c2a8e-0d4b-4f7e-9a51-2b1d3c4e5f60".into(),
    }));
    let run_dir = tempfile::tempdir_in(dms_benches::fixture::tmpfs()).map_err(|e| e.to_string())?;
    let store = Arc::new(MemoryStore::new(run_dir.path().join("s3")));
    for i in 0..n {
        let target = dms_benches::fixture::target(i);
        let log = target.log_file_in(&run_dir.path().join("logs"));
        let spec = SpawnSpec {
            program: "/usr/bin/s3vaultfuse.py".into(),
            args: vec![],
            env: vec![("vault_s3_bucket".into(), "backups".into())],
            log: log.clone(),
            cwd: None,
        };
        let pending = spawner.spawn(&spec).await.map_err(|e| e.to_string())?;
        let id = pending.identity.clone();
        pending.gate.release().await.map_err(|e| e.to_string())?;
        let record = Record {
            pid: id.pid,
            identity: Some(Identity {
                start_ticks: id.start_ticks,
                boot_id: id.boot_id.clone(),
            }),
            meta: Metadata {
                cmdline: Some(vec!["/usr/bin/s3vaultfuse.py".into()]),
                mount: None,
                spawned_at: Some(SystemTime::now()),
                log_path: Some(log),
            },
            written_at: None,
        };
        store
            .put(&target, &record)
            .await
            .map_err(|e| e.to_string())?;
    }
    let heap_before = heap_in_use();
    let before_raw = dms_benches::rss_bytes().map_err(|e| e.to_string())?;
    let before = trimmed_rss().map_err(|e| e.to_string())?;
    let mut opts = ManagerOptions::new(run_dir.path());
    opts.usage = UsageSampling::Off;
    let (manager, report) = Manager::open(store, spawner.clone(), opts)
        .await
        .map_err(|e| e.to_string())?;
    if report.adopted.len() != n || manager.memory_snapshot().len() != n {
        return Err(format!(
            "expected {n} helpers recovered into memory, got {}",
            report.adopted.len()
        ));
    }
    drop(report);
    // Let every exit watcher run until it waits.
    tokio::task::yield_now().await;
    let heap_after = heap_in_use();
    let after_raw = dms_benches::rss_bytes().map_err(|e| e.to_string())?;
    let after = trimmed_rss().map_err(|e| e.to_string())?;
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64;
    println!(
        "tracked {n} helpers: RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per tracked helper \
         (without malloc_trim: {:.0} bytes; heap in use: {:.0} bytes)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per(after, before),
        per(after_raw, before_raw),
        per(heap_after, heap_before)
    );
    drop(manager);
    Ok(())
}

fn main() -> ExitCode {
    let n = match std::env::args().nth(1).map(|s| s.parse::<usize>()) {
        None => 100_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: mem_per_helper [N > 0]");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mem_per_helper: error: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(n)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mem_per_helper: error: {e}");
            ExitCode::from(1)
        }
    }
}
