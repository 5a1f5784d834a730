use super::dir::on_memory_fs;
use super::*;
use crate::conformance::{run_all, Capabilities};

/// On tmpfs the single-file operations run on the calling task; the whole contract
/// holds there too, on a current-thread runtime as on a multi-threaded one.
#[test]
fn in_line_operations_on_tmpfs_conform() {
    let shm = Path::new("/dev/shm");
    if !on_memory_fs(shm) {
        eprintln!("no tmpfs at /dev/shm; skipped");
        return;
    }
    for multi in [false, true] {
        let run_dir = tempfile::tempdir_in(shm).unwrap();
        let store = PidFileStore::open(run_dir.path()).unwrap();
        assert!(store.dir.in_memory());
        let pid_dir = store.pid_dir().to_owned();
        let d2 = pid_dir.clone();
        let corrupt = move |t: &TargetId| fs::write(t.pid_file_in(&pid_dir), b"abc").unwrap();
        let stray = move |name: &str| fs::write(d2.join(name), b"4242\n").unwrap();
        let caps = Capabilities {
            keeps_metadata: false,
            make_corrupt: &corrupt,
            make_stray: &stray,
        };
        let rt = if multi {
            tokio::runtime::Builder::new_multi_thread().build().unwrap()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        rt.block_on(run_all(&store, &caps));
    }
}
