//! The PID-file backend against a real run directory: what other tools may leave at a
//! PID-file path, and how the store reads, lists and removes it.

use dms_store::{Entry, Error, Pid, PidFileStore, PidStore, Record, Stored, TargetId};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

fn t(s: &str) -> TargetId {
    s.parse().unwrap()
}

/// The error as a front end shows it: what, where, each cause, then the fix.
fn shown(e: &Error) -> String {
    let hint = e.hint().map(|h| format!("; {h}")).unwrap_or_default();
    format!("{}{hint}", dms_testkit::chain(e))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// Runs `f` on its own thread and fails the test if it does not finish in 20 s: proves
/// that nothing blocks (a plain `open` of a FIFO would hang forever).
fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the store blocked (or panicked) instead of reporting the entry")
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn bare_number_without_newline_reads_as_that_pid() {
    let run = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    fs::write(run.path().join("s3/target-123.pid"), b"12345").unwrap();
    let got = rt().block_on(store.get(&t("target-123"))).unwrap();
    let Some(Stored::Valid(r)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(r.pid, Pid::new(12345).unwrap());
    let mtime = fs::metadata(run.path().join("s3/target-123.pid"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(r.written_at, Some(mtime), "written_at is the file's mtime");
}

/// Every case of the issue, plus a socket, in one run directory: each is listed as
/// corrupt with a reason, `get` agrees, nothing is followed, nothing blocks, and
/// `remove` removes the entry itself.
#[test]
fn every_kind_of_bad_entry_is_corrupt_with_a_reason() {
    let run = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let dir = store.pid_dir().to_owned();

    let mut garbage: Vec<u8> = (0..=255u8).collect();
    garbage.extend_from_slice(b"\x00\xff\xfe12\x00");
    let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("zero", Some(b"0".to_vec()), "reserved"),
        ("one", Some(b"1\n".to_vec()), "reserved"),
        ("minus-one", Some(b"-1".to_vec()), "negative"),
        ("plus-five", Some(b"+5".to_vec()), "not a decimal PID"),
        (
            "u32-max",
            Some(b"4294967295".to_vec()),
            "above the kernel's pid_max",
        ),
        (
            "eleven-nines",
            Some(b"99999999999".to_vec()),
            "above the kernel's pid_max",
        ),
        ("empty", Some(Vec::new()), "empty"),
        ("abc", Some(b"abc".to_vec()), "not a decimal PID"),
        ("two-numbers", Some(b"12 34".to_vec()), "not a decimal PID"),
        ("mebibyte", Some(vec![b'7'; 1 << 20]), "1048576 bytes long"),
        ("garbage-long", Some(garbage.clone()), "bytes long"),
        (
            "garbage-short",
            Some(b"\x00\xff\x7f\x01".to_vec()),
            "not a decimal PID",
        ),
        ("symlink", None, "symbolic link"),
        ("fifo", None, "FIFO"),
        ("x", None, "directory"),
        ("socket", None, "socket"),
    ];
    let secret = outside.path().join("victim");
    fs::write(&secret, b"4242\n").unwrap();
    for (name, content, _) in &cases {
        let path = dir.join(format!("{name}.pid"));
        match (*name, content) {
            (_, Some(c)) => fs::write(&path, c).unwrap(),
            ("symlink", None) => symlink(&secret, &path).unwrap(),
            ("fifo", None) => mkfifo(&path),
            ("x", None) => fs::create_dir(&path).unwrap(),
            ("socket", None) => drop(std::os::unix::net::UnixListener::bind(&path).unwrap()),
            _ => unreachable!(),
        }
    }
    fs::write(dir.join("good.pid"), b"12345").unwrap();

    let s = store.clone();
    let list = within_deadline(move || rt().block_on(dms_store::list_sorted(&s))).unwrap();
    let by_name: BTreeMap<String, Stored> = list
        .into_iter()
        .map(|e| match e {
            Entry::Target { target, state } => (target.to_string(), state),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(by_name.len(), cases.len() + 1);
    assert!(
        matches!(&by_name["good"], Stored::Valid(r) if r.pid.get() == 12345),
        "{:?}",
        by_name["good"]
    );
    for (name, _, expected) in &cases {
        match &by_name[*name] {
            Stored::Corrupt(c) => {
                assert_eq!(c.path, dir.join(format!("{name}.pid")));
                assert!(
                    c.reason.contains(expected),
                    "{name}: reason {:?} lacks {expected:?}",
                    c.reason
                );
            }
            other => panic!("{name} is not corrupt: {other:?}"),
        }
        let (s, target) = (store.clone(), t(name));
        let got = within_deadline(move || rt().block_on(s.get(&target))).unwrap();
        assert!(
            matches!(got, Some(Stored::Corrupt(ref c)) if c.reason.contains(expected)),
            "{name}: {got:?}"
        );
    }

    // Removing each removes the entry itself; the symlink's target is untouched.
    for (name, _, _) in &cases {
        let (s, target) = (store.clone(), t(name));
        assert!(
            within_deadline(move || rt().block_on(s.remove(&target))).unwrap(),
            "{name}"
        );
        assert!(
            fs::symlink_metadata(dir.join(format!("{name}.pid"))).is_err(),
            "{name} still there"
        );
    }
    assert_eq!(fs::read(&secret).unwrap(), b"4242\n");
    assert!(fs::metadata(outside.path()).unwrap().is_dir());
    let left = rt().block_on(dms_store::list_sorted(&store)).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn put_over_a_symlink_replaces_the_link_not_its_target() {
    let run = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"do not touch").unwrap();
    let path = store.pid_dir().join("a.pid");
    symlink(&victim, &path).unwrap();
    rt().block_on(store.put(&t("a"), &Record::bare(Pid::new(777).unwrap())))
        .unwrap();
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    assert_eq!(fs::read(&path).unwrap(), b"777\n");
    assert_eq!(fs::read(&victim).unwrap(), b"do not touch");
}

#[test]
fn a_directory_in_the_way_is_reported_not_deleted() {
    let run = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let path = store.pid_dir().join("d.pid");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("keep"), b"data").unwrap();
    let rt = rt();
    let err = rt
        .block_on(store.put(&t("d"), &Record::bare(Pid::new(99).unwrap())))
        .unwrap_err();
    let msg = shown(&err);
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("directory is in the way"),
        "{msg}"
    );
    let err = rt.block_on(store.remove(&t("d"))).unwrap_err();
    let msg = shown(&err);
    assert!(
        msg.contains("non-empty directory") && msg.contains(&path.display().to_string()),
        "{msg}"
    );
    assert_eq!(fs::read(path.join("keep")).unwrap(), b"data");
    // No temporary file is left behind by the failed put.
    let names: Vec<_> = fs::read_dir(store.pid_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("d.pid")]);
}

#[test]
fn other_files_are_ignored_and_bad_names_are_strays() {
    let run = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let dir = store.pid_dir();
    for (name, content) in [
        ("notes.txt", "1234"),
        ("t.lock", "1234"),
        ("t.pid.bak", "1234"),
        ("a b.pid", "1234"),
        (".hidden.pid", "1234"),
        (".pid", "1234"),
        ("ok.pid", "1234\n"),
    ] {
        fs::write(dir.join(name), content).unwrap();
    }
    use std::os::unix::ffi::OsStrExt;
    fs::write(dir.join(std::ffi::OsStr::from_bytes(b"bad\xff.pid")), "1").unwrap();
    let rt = rt();
    let list = rt.block_on(dms_store::list_sorted(&store)).unwrap();
    let strays: Vec<&str> = list
        .iter()
        .filter_map(|e| match e {
            Entry::Stray { file_name, reason } => {
                assert!(reason.contains("not a valid target ID"), "{reason}");
                Some(file_name.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        strays,
        ["", ".hidden", "a b", "bad\u{fffd}"]
            .iter()
            .map(|s| format!("{s}.pid"))
            .collect::<Vec<_>>()
    );
    assert_eq!(list.len(), 5);
    for name in ["a b.pid", ".hidden.pid", ".pid", "bad\u{fffd}.pid"] {
        assert!(rt.block_on(store.remove_stray(name)).unwrap(), "{name}");
    }
    assert_eq!(
        rt.block_on(dms_store::list_sorted(&store)).unwrap().len(),
        1
    );
    assert!(dir.join("notes.txt").exists() && dir.join("t.lock").exists());
}

#[test]
fn temp_files_are_never_entries_and_stale_ones_are_removed_at_open() {
    let run = tempfile::tempdir().unwrap();
    let dir = run.path().join("s3");
    fs::create_dir_all(&dir).unwrap();
    let stale = dir.join(".a.pid.999-0.tmp");
    let fresh = dir.join(".b.pid.999-1.tmp");
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::write(&stale, b"123\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    fs::write(&fresh, b"456\n").unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    assert!(!stale.exists(), "a stale temporary file is removed at open");
    assert!(
        fresh.exists(),
        "a fresh one may be a write in progress elsewhere"
    );
    assert!(rt()
        .block_on(dms_store::list_sorted(&store))
        .unwrap()
        .is_empty());
}

#[test]
fn written_file_is_pid_newline_and_no_temp_remains() {
    let run = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let rt = rt();
    for pid in [2, 31337, 4_000_000.min(dms_store::pid_max() as i32 - 1)] {
        rt.block_on(store.put(&t("w"), &Record::bare(Pid::new(pid.into()).unwrap())))
            .unwrap();
        assert_eq!(
            fs::read_to_string(store.pid_dir().join("w.pid")).unwrap(),
            format!("{pid}\n")
        );
    }
    let names: Vec<_> = fs::read_dir(store.pid_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("w.pid")]);
}

#[test]
fn concurrent_puts_never_expose_a_partial_file() {
    let run = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let path = store.pid_dir().join("race.pid");
    let rt = rt();
    rt.block_on(store.put(&t("race"), &Record::bare(Pid::new(1000).unwrap())))
        .unwrap();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let mut reads = 0;
        while stop_rx.try_recv().is_err() {
            let content = fs::read_to_string(&reader_path).unwrap();
            let n: i32 = content.trim_end().parse().unwrap();
            assert!(
                (1000..1100).contains(&n) && content.ends_with('\n'),
                "{content:?}"
            );
            reads += 1;
        }
        reads
    });
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..100 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.put(&t("race"), &Record::bare(Pid::new(1000 + i).unwrap()))
                    .await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    });
    stop_tx.send(()).unwrap();
    assert!(reader.join().unwrap() > 0);
    assert_eq!(
        rt.block_on(dms_store::list_sorted(&store)).unwrap().len(),
        1
    );
}

#[test]
fn run_dir_in_the_way_is_an_error_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = PidFileStore::open(&file).unwrap_err();
    let msg = shown(&err);
    assert!(matches!(err, Error::Io { .. }));
    assert!(
        msg.contains(&file.display().to_string()) && msg.contains("not a directory"),
        "{msg}"
    );
}

const CHILD_ENV: &str = "DMS_STORE_TEST_EACCES_RUN_DIR";

/// Runs as the unprivileged user `nobody` (root bypasses permission checks, so the test
/// re-executes itself with another uid): opening a store in a run directory owned by root
/// with mode 0755 fails, and the error names the directory and the user who needs
/// write access.
#[test]
fn permission_denied_names_the_user_who_needs_write_access() {
    if let Ok(run_dir) = std::env::var(CHILD_ENV) {
        // The child: report the error on stdout for the parent to check.
        match PidFileStore::open(Path::new(&run_dir)) {
            Ok(_) => println!("CHILD-RESULT: opened"),
            Err(e) => println!("CHILD-RESULT: {}", shown(&e)),
        }
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a child as another user");
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").unwrap() else {
        eprintln!("skipped: no user nobody");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run_dir: PathBuf = tmp.path().join("run");
    fs::create_dir(&run_dir).unwrap();
    fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o755)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "permission_denied_names_the_user_who_needs_write_access",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &run_dir)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-RESULT: ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "child said nothing: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        line.contains(&run_dir.join("s3").display().to_string()),
        "{line}"
    );
    assert!(line.contains("Permission denied"), "{line}");
    assert!(
        line.contains(&format!(
            "user nobody (uid {}) needs write access to {}",
            nobody.uid,
            run_dir.display()
        )),
        "{line}"
    );
    assert!(!run_dir.join("s3").exists());
}

#[test]
fn fifo_stays_a_fifo_and_is_not_opened_for_writing() {
    // Reading a FIFO entry must not consume or block: after get, it is still a FIFO.
    let run = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let path = store.pid_dir().join("f.pid");
    mkfifo(&path);
    let s = store.clone();
    let got = within_deadline(move || rt().block_on(s.get(&t("f")))).unwrap();
    assert!(
        matches!(got, Some(Stored::Corrupt(ref c)) if c.reason.contains("FIFO")),
        "{got:?}"
    );
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_fifo());
}

/// `list` hands over exactly the entries `list` returns (valid, corrupt and
/// stray), over several batches, each once; it stops quietly when the receiver is gone.
#[test]
fn batched_listing_holds_what_list_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(dir.path()).unwrap();
    let s3 = dir.path().join("s3");
    for i in 0..1000 {
        fs::write(s3.join(format!("t{i:04}.pid")), format!("{}", 100 + i)).unwrap();
    }
    fs::write(s3.join("garbage.pid"), "not a pid").unwrap();
    fs::write(s3.join("a b.pid"), "5").unwrap();
    fs::write(s3.join("not-an-entry.lock"), "").unwrap();
    let rt = rt();
    let listed = rt.block_on(dms_store::list_sorted(&store)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let (done, batches) = rt.block_on(async {
        let collect = async {
            let mut batches = Vec::new();
            while let Some(b) = rx.recv().await {
                batches.push(b);
            }
            batches
        };
        tokio::join!(store.list(tx), collect)
    });
    done.unwrap();
    assert!(batches.len() > 1, "one batch for {} entries", listed.len());
    let key = |e: &Entry| format!("{e:?}");
    let mut batched: Vec<Entry> = batches.into_iter().flatten().collect();
    batched.sort_by_key(key);
    let mut want = listed.clone();
    want.sort_by_key(key);
    assert_eq!(batched, want);
    assert_eq!(want.len(), 1002);
    assert!(want.iter().any(|e| matches!(e, Entry::Stray { .. })));
    assert!(want.iter().any(|e| matches!(
        e,
        Entry::Target {
            state: Stored::Corrupt(_),
            ..
        }
    )));

    // The receiver is gone after the first batch: the listing stops without an error.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let done = rt.block_on(async {
        let first = async {
            let b = rx.recv().await;
            drop(rx);
            b
        };
        tokio::join!(store.list(tx), first)
    });
    done.0.unwrap();
    assert!(done.1.is_some());
}

/// `written_at` is the file's mtime to the nanosecond (read with fstat from the open
/// file), for `get` and `list` alike, also for an mtime before 1970 set by hand.
#[test]
fn written_at_is_the_exact_mtime_from_get_and_list() {
    use std::time::{Duration, SystemTime};
    let run = tempfile::tempdir().unwrap();
    let store = PidFileStore::open(run.path()).unwrap();
    let cases = [
        (
            "recent",
            SystemTime::UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789),
        ),
        (
            "before-1970",
            SystemTime::UNIX_EPOCH - Duration::new(86_400, 0) + Duration::from_nanos(5),
        ),
    ];
    for (name, mtime) in cases {
        let path = run.path().join(format!("s3/{name}.pid"));
        fs::write(&path, b"4242\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        let got = rt().block_on(store.get(&t(name))).unwrap();
        let Some(Stored::Valid(r)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(r.written_at, Some(mtime), "{name}: get");
    }
    let listed = rt().block_on(dms_store::list_sorted(&store)).unwrap();
    let mut seen = 0;
    for entry in listed {
        if let dms_store::Entry::Target {
            target,
            state: dms_store::Stored::Valid(r),
        } = entry
        {
            let (_, mtime) = cases.iter().find(|(n, _)| *n == target.as_str()).unwrap();
            assert_eq!(r.written_at, Some(*mtime), "{target}: list");
            seen += 1;
        }
    }
    assert_eq!(seen, 2);
}
