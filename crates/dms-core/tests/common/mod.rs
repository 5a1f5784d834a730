//! Shared helpers of the dms-core integration tests.
#![allow(dead_code)]

use dms_proc::fake::{FakeConfig, FakeSpawner};
use dms_store::TargetId;
use std::path::Path;

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
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("dms-core-test-");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return d;
        }
    }
    builder.tempdir().expect("create temp dir")
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
