//! Shared helpers of the dms-core integration tests.
#![allow(dead_code)]

use dms_proc::fake::{FakeConfig, FakeSpawner};
use dms_store::{PidFileStore, PidStore, SqliteStore, TargetId};
use std::path::Path;
use std::sync::Arc;

/// The two durable store backends a scenario runs against (one test each, from
/// [`dms_testkit::per_backend!`]).
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// PID files.
    PidFile,
    /// SQLite.
    Sqlite,
}

/// The store of `backend` in `run_dir`.
pub fn store(backend: Backend, run_dir: &Path) -> Arc<dyn PidStore> {
    match backend {
        Backend::PidFile => Arc::new(PidFileStore::open(run_dir).unwrap()),
        Backend::Sqlite => Arc::new(SqliteStore::open(run_dir).unwrap()),
    }
}

/// A target ID from a literal.
pub fn t(s: &str) -> TargetId {
    s.parse().expect("valid target ID in test")
}

/// A fake process table whose PID range never contains this test process's own PID
/// (the manager refuses to treat its own PID as a helper).
pub fn fake(span: i32) -> FakeSpawner {
    let me = std::process::id() as i32;
    let mut first = 300;
    if (first..first + span).contains(&me) {
        first += span + 1;
    }
    FakeSpawner::new(FakeConfig {
        first_pid: first,
        max_pid: first + span - 1,
        boot_id: "fake-boot".into(),
    })
}

/// A temporary run directory on tmpfs when there is one (like `/run` in production),
/// so fsyncs are cheap.
pub fn run_dir() -> tempfile::TempDir {
    dms_testkit::tmpfs_dir("dms-core-test-")
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
