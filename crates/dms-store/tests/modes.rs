//! Modes are set explicitly, whatever the umask. Its own test binary, because the umask
//! is per process and would race with other tests creating files.

use dms_store::{Pid, PidFileStore, PidStore, Record, TargetId};
use nix::sys::stat::{umask, Mode};
use std::os::unix::fs::PermissionsExt;

#[test]
fn run_dir_pid_dir_and_pid_files_have_fixed_modes_under_a_strict_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("nested/run");
    let old = umask(Mode::from_bits_truncate(0o077));
    let store = PidFileStore::open(&run_dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t: TargetId = "m".parse().unwrap();
    rt.block_on(store.put(&t, &Record::bare(Pid::new(4321).unwrap())))
        .unwrap();
    umask(old);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&run_dir), 0o755);
    assert_eq!(mode(&run_dir.join("s3")), 0o755);
    assert_eq!(mode(&run_dir.join("s3/m.pid")), 0o644);
}
