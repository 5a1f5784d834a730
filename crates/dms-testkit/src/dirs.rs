//! Temp run dirs: each test gets its own, removed when the returned guard drops. A test
//! never uses the machine's own `/run/dms`.

use std::path::Path;
use tempfile::TempDir;

/// A fresh temp dir under the system temp dir, named `<prefix>XXXXXX`.
pub fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temp dir")
}

/// A fresh temp dir on tmpfs (`/dev/shm`) when there is one, like `/run` in production,
/// so fsyncs are cheap; else [`temp_dir`].
pub fn tmpfs_dir(prefix: &str) -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix(prefix).tempdir_in(shm) {
            return d;
        }
    }
    temp_dir(prefix)
}
