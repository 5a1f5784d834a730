//! A scratch directory for one fuzzing process, removed when the process exits.
//!
//! libFuzzer ends a run with `exit()`, which runs `atexit` handlers but never drops
//! Rust statics, so a `tempfile::TempDir` kept in a static would be left behind after
//! every run. The directory is on tmpfs (`/dev/shm`) when there is one, so fsyncs are
//! cheap, else in `/tmp`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_scratch_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The process's scratch directory, `<tmpfs or /tmp>/<prefix>XXXXXX`, created on
/// first use and removed at exit. Only one prefix per process.
pub fn dir(prefix: &str) -> &'static Path {
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() { shm } else { Path::new("/tmp") };
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(base)
            .expect("create scratch dir")
            .keep();
        // SAFETY: registers a plain `extern "C" fn` with no captured state.
        let registered = unsafe { libc::atexit(remove_scratch_dir) };
        assert_eq!(registered, 0, "atexit failed");
        dir
    })
}
