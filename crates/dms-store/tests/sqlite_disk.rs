//! The SQLite write-through backend against real run directories and real database
//! files: the PID files stay authoritative, and a bad database is rebuilt, never refused.

use dms_store::{
    Entry, Identity, Metadata, Pid, PidStore, Record, SqliteStore, Stored, TargetId, DB_FILE_NAME,
    SCHEMA_VERSION,
};
use rusqlite::Connection;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

fn t(s: &str) -> TargetId {
    s.parse().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

fn full(pid: i32) -> Record {
    Record {
        pid: Pid::new(pid.into()).unwrap(),
        identity: Some(Identity {
            start_ticks: 987_654,
            boot_id: "0a1b2c3d-boot".into(),
        }),
        meta: Metadata {
            cmdline: Some(vec!["sleep".into(), "1000".into()]),
            mount: Some("/mnt/x".into()),
            spawned_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            log_path: Some("/run/dms/logs/x.log".into()),
        },
        written_at: None,
    }
}

fn present(l: Option<Stored>) -> Record {
    match l {
        Some(Stored::Valid(r)) => r,
        other => panic!("expected present, got {other:?}"),
    }
}

fn db_rows(run: &Path) -> Vec<(String, i64, Option<i64>)> {
    let conn = Connection::open(run.join(DB_FILE_NAME)).unwrap();
    let mut stmt = conn
        .prepare("SELECT target, pid, start_ticks FROM records ORDER BY target")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Collects what is logged on this thread while `f` runs.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, logs)
}

/// Moved-aside copies of the database in `run`.
fn moved_aside(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{DB_FILE_NAME}.corrupt-"))
                && !n.ends_with("-wal")
                && !n.ends_with("-shm")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn writes_the_pid_file_and_a_row_with_identity_and_metadata() {
    let run = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(run.path()).unwrap();
    let rt = rt();
    rt.block_on(store.put(&t("a"), &full(4242))).unwrap();
    assert_eq!(
        fs::read_to_string(run.path().join("s3/a.pid")).unwrap(),
        "4242\n"
    );
    assert_eq!(db_rows(run.path()), vec![("a".into(), 4242, Some(987_654))]);
    let got = present(rt.block_on(store.get(&t("a"))).unwrap());
    assert_eq!(
        (got.identity, got.meta),
        (full(4242).identity, full(4242).meta)
    );
    let mtime = fs::metadata(run.path().join("s3/a.pid"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(got.written_at, Some(mtime));
}

#[test]
fn a_record_the_database_cannot_hold_is_refused_before_anything_is_written() {
    let run = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(run.path()).unwrap();
    let rt = rt();
    rt.block_on(store.put(&t("a"), &full(4242))).unwrap();
    // Start ticks above i64::MAX do not fit SQLite's INTEGER column.
    let mut bad = full(5151);
    bad.identity.as_mut().unwrap().start_ticks = u64::MAX;
    let err = rt.block_on(store.put(&t("a"), &bad)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, dms_store::Error::Invalid(_)), "{err:?}");
    assert!(
        msg.contains("target a") && msg.contains(&u64::MAX.to_string()),
        "the error names the target and the value: {msg}"
    );
    assert!(msg.contains("nothing was written"), "{msg}");
    // The previous record is untouched: file, row, identity.
    assert_eq!(
        fs::read_to_string(run.path().join("s3/a.pid")).unwrap(),
        "4242\n"
    );
    assert_eq!(db_rows(run.path()), vec![("a".into(), 4242, Some(987_654))]);
    let got = present(rt.block_on(store.get(&t("a"))).unwrap());
    assert_eq!(got.identity, full(4242).identity);
    // A new target is not created either.
    assert!(rt.block_on(store.put(&t("b"), &bad)).is_err());
    assert!(!run.path().join("s3/b.pid").exists());
    assert_eq!(db_rows(run.path()).len(), 1);
}

#[test]
fn database_settings_and_schema() {
    let run = tempfile::tempdir().unwrap();
    let _store = SqliteStore::open(run.path()).unwrap();
    let conn = Connection::open(run.path().join(DB_FILE_NAME)).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info('records') ORDER BY cid")
        .unwrap();
    let cols: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // No column can hold environment values: keep it that way.
    assert_eq!(
        cols,
        [
            "target",
            "pid",
            "start_ticks",
            "boot_id",
            "cmdline",
            "mount",
            "spawned_at_ns",
            "log_path",
            "file_ino",
            "file_mtime_ns"
        ]
    );
}

#[test]
fn an_old_schema_is_migrated_forward() {
    let run = tempfile::tempdir().unwrap();
    // Version 0: an empty database, as an older dms or `sqlite3 dms.sqlite3 ''` leaves it.
    let conn = Connection::open(run.path().join(DB_FILE_NAME)).unwrap();
    conn.execute_batch("CREATE TABLE unrelated (x INTEGER); INSERT INTO unrelated VALUES (7);")
        .unwrap();
    drop(conn);
    let store = SqliteStore::open(run.path()).unwrap();
    assert!(store.has_database());
    rt().block_on(store.put(&t("m"), &full(555))).unwrap();
    let conn = Connection::open(run.path().join(DB_FILE_NAME)).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let kept: i64 = conn
        .query_row("SELECT x FROM unrelated", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 7, "migration keeps existing data");
    assert!(moved_aside(run.path()).is_empty());
}

#[test]
fn pid_files_added_or_removed_by_hand_are_picked_up() {
    let run = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(run.path()).unwrap();
    let rt = rt();
    rt.block_on(store.put(&t("kept"), &full(300))).unwrap();
    rt.block_on(store.put(&t("deleted-by-hand"), &full(301)))
        .unwrap();
    fs::remove_file(run.path().join("s3/deleted-by-hand.pid")).unwrap();
    fs::write(run.path().join("s3/added-by-hand.pid"), b"12345").unwrap();

    let list = rt.block_on(dms_store::list_sorted(&store)).unwrap();
    let summary: Vec<(String, i32, bool)> = list
        .iter()
        .map(|e| match e {
            Entry::Target {
                target,
                state: Stored::Valid(r),
            } => (target.to_string(), r.pid.get(), r.identity.is_some()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("added-by-hand".into(), 12345, false),
            ("kept".into(), 300, true)
        ]
    );
    assert_eq!(
        db_rows(run.path()),
        vec![
            ("added-by-hand".into(), 12345, None),
            ("kept".into(), 300, Some(987_654))
        ],
        "the row of the deleted file is dropped, the added file gets a bare row"
    );
    // get alone also sees a hand-deleted file.
    fs::remove_file(run.path().join("s3/kept.pid")).unwrap();
    assert_eq!(rt.block_on(store.get(&t("kept"))).unwrap(), None);
    assert_eq!(
        db_rows(run.path()),
        vec![("added-by-hand".into(), 12345, None)]
    );
}

#[test]
fn a_row_for_another_pid_or_an_older_file_is_discarded_and_repaired() {
    let run = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(run.path()).unwrap();
    let rt = rt();
    let pid_file = run.path().join("s3/x.pid");

    // Another PID written by hand: identity unknown, row repaired on this read.
    rt.block_on(store.put(&t("x"), &full(100))).unwrap();
    fs::write(&pid_file, b"200\n").unwrap();
    let got = present(rt.block_on(store.get(&t("x"))).unwrap());
    assert_eq!(
        (got.pid.get(), got.identity, got.meta),
        (200, None, Metadata::default())
    );
    assert_eq!(db_rows(run.path()), vec![("x".into(), 200, None)]);

    // The same PID, but a new file put in place by another tool (new inode): the row
    // described the previous file, so its identity is not trusted either.
    rt.block_on(store.put(&t("x"), &full(100))).unwrap();
    let tmp = run.path().join("s3/other-tool.tmp");
    fs::write(&tmp, b"100").unwrap();
    fs::rename(&tmp, &pid_file).unwrap();
    let got = present(rt.block_on(store.get(&t("x"))).unwrap());
    assert_eq!((got.pid.get(), got.identity), (100, None));

    // A file turned corrupt drops its row.
    rt.block_on(store.put(&t("x"), &full(100))).unwrap();
    fs::write(&pid_file, b"garbage").unwrap();
    assert!(matches!(
        rt.block_on(store.get(&t("x"))).unwrap(),
        Some(Stored::Corrupt(_))
    ));
    assert!(db_rows(run.path()).is_empty());
}

fn corrupt_db_is_rebuilt(content: &[u8]) {
    let run = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(run.path()).unwrap();
        rt().block_on(store.put(&t("survivor"), &full(777)))
            .unwrap();
    }
    let db = run.path().join(DB_FILE_NAME);
    let _ = fs::remove_file(run.path().join(format!("{DB_FILE_NAME}-wal")));
    let _ = fs::remove_file(run.path().join(format!("{DB_FILE_NAME}-shm")));
    fs::write(&db, content).unwrap();

    let (store, logs) = capture_logs(|| SqliteStore::open(run.path()).unwrap());
    assert!(store.has_database());
    assert!(
        logs.contains("WARN") && logs.contains("rebuilt it from the PID files"),
        "{logs}"
    );
    let aside = moved_aside(run.path());
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        fs::read(&aside[0]).unwrap() == content,
        "the bad file is kept as it was, not deleted"
    );
    // Rebuilt from the PID files: the survivor is there, identity unknown.
    assert_eq!(db_rows(run.path()), vec![("survivor".into(), 777, None)]);
    let got = present(rt().block_on(store.get(&t("survivor"))).unwrap());
    assert_eq!((got.pid.get(), got.identity), (777, None));
    // And it works as before.
    rt().block_on(store.put(&t("new"), &full(778))).unwrap();
    assert!(present(rt().block_on(store.get(&t("new"))).unwrap())
        .identity
        .is_some());
}

#[test]
fn a_database_of_garbage_bytes_is_moved_aside_and_rebuilt() {
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    corrupt_db_is_rebuilt(&garbage);
}

#[test]
fn an_empty_or_truncated_header_database_is_rebuilt() {
    corrupt_db_is_rebuilt(b"SQLite format 3\0 but nothing after the header");
}

#[test]
fn a_database_with_a_damaged_page_is_rebuilt() {
    // A real database, with a page in the middle overwritten: the header is intact, the
    // integrity check at open catches it.
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size=4096; CREATE TABLE records (target TEXT PRIMARY KEY, pad BLOB);",
    )
    .unwrap();
    for i in 0..200 {
        conn.execute(
            "INSERT INTO records VALUES (?1, zeroblob(500))",
            [format!("t{i}")],
        )
        .unwrap();
    }
    drop(conn);
    let mut bytes = fs::read(&path).unwrap();
    assert!(bytes.len() > 8 * 4096);
    for b in &mut bytes[4 * 4096..5 * 4096] {
        *b = 0xA5;
    }
    corrupt_db_is_rebuilt(&bytes);
}

#[test]
fn a_missing_database_is_created_from_the_pid_files() {
    let run = tempfile::tempdir().unwrap();
    fs::create_dir_all(run.path().join("s3")).unwrap();
    fs::write(run.path().join("s3/pre.pid"), b"4321").unwrap();
    fs::write(run.path().join("s3/bad.pid"), b"-1").unwrap();
    let store = SqliteStore::open(run.path()).unwrap();
    assert!(store.has_database());
    assert_eq!(db_rows(run.path()), vec![("pre".into(), 4321, None)]);
    // Deleted while in use is not a refusal either: the next open creates it again.
    drop(store);
    fs::remove_file(run.path().join(DB_FILE_NAME)).unwrap();
    let _ = fs::remove_file(run.path().join(format!("{DB_FILE_NAME}-wal")));
    let _ = fs::remove_file(run.path().join(format!("{DB_FILE_NAME}-shm")));
    let store = SqliteStore::open(run.path()).unwrap();
    assert_eq!(
        rt().block_on(dms_store::list_sorted(&store)).unwrap().len(),
        2
    );
}

#[test]
fn an_unopenable_database_path_is_moved_aside_symlinks_are_not_followed() {
    // A directory where the database belongs.
    let run = tempfile::tempdir().unwrap();
    fs::create_dir_all(run.path().join(DB_FILE_NAME).join("inner")).unwrap();
    let (store, logs) = capture_logs(|| SqliteStore::open(run.path()).unwrap());
    assert!(store.has_database(), "{logs}");
    let aside = moved_aside(run.path());
    assert_eq!(aside.len(), 1);
    assert!(aside[0].join("inner").is_dir(), "moved, not deleted");

    // A symlink to a database elsewhere: not followed, not written through.
    let run = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let victim = elsewhere.path().join("victim.sqlite3");
    fs::write(&victim, b"not yours").unwrap();
    symlink(&victim, run.path().join(DB_FILE_NAME)).unwrap();
    let store = SqliteStore::open(run.path()).unwrap();
    assert!(store.has_database());
    rt().block_on(store.put(&t("s"), &full(999))).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"not yours");
    assert!(fs::symlink_metadata(run.path().join(DB_FILE_NAME))
        .unwrap()
        .is_file());
}

#[test]
fn a_database_from_a_newer_dms_is_left_alone() {
    let run = tempfile::tempdir().unwrap();
    let conn = Connection::open(run.path().join(DB_FILE_NAME)).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let (store, logs) = capture_logs(|| SqliteStore::open(run.path()).unwrap());
    assert!(!store.has_database());
    assert!(logs.contains("newer than this dms supports"), "{logs}");
    let rt = rt();
    rt.block_on(store.put(&t("p"), &full(4040))).unwrap();
    let got = present(rt.block_on(store.get(&t("p"))).unwrap());
    assert_eq!((got.pid.get(), got.identity), (4040, None));
    let conn = Connection::open(run.path().join(DB_FILE_NAME)).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION + 1, "untouched");
    assert!(moved_aside(run.path()).is_empty());
}

#[test]
fn two_stores_on_one_run_dir_see_each_others_writes() {
    // Two dms processes share the run directory; WAL and the busy timeout let them.
    let run = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(run.path()).unwrap();
    let b = SqliteStore::open(run.path()).unwrap();
    let rt = rt();
    rt.block_on(async {
        let (a2, b2) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move {
            for i in 0..30 {
                a2.put(&t(&format!("a{i}")), &full(1000 + i)).await.unwrap();
            }
        });
        let tb = tokio::spawn(async move {
            for i in 0..30 {
                b2.put(&t(&format!("b{i}")), &full(2000 + i)).await.unwrap();
                dms_store::list_sorted(&b2).await.unwrap();
            }
        });
        ta.await.unwrap();
        tb.await.unwrap();
    });
    let list = rt.block_on(dms_store::list_sorted(&a)).unwrap();
    assert_eq!(list.len(), 60);
    assert!(list.iter().all(
        |e| matches!(e, Entry::Target { state: Stored::Valid(r), .. } if r.identity.is_some())
    ));
}

/// A reader ([`SqliteStore::open_for_reading`], `dms status`) changes nothing: a hand
/// edit is seen but not repaired, a missing database is not created, a corrupt one is
/// neither moved aside nor rewritten; the PID files answer, with identity where a good
/// row matches.
#[test]
fn a_reader_writes_nothing() {
    let rt = rt();
    let names = |run: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Missing: not created.
    let run = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_for_reading(run.path()).unwrap();
    assert!(!store.has_database());
    fs::write(run.path().join("s3/a.pid"), b"12345").unwrap();
    assert_eq!(
        present(rt.block_on(store.get(&t("a"))).unwrap()).pid.get(),
        12345
    );
    assert!(
        !run.path().join(DB_FILE_NAME).exists(),
        "a reader created the database"
    );

    // Good database, edited by hand: read, not repaired.
    let writer = SqliteStore::open(run.path()).unwrap();
    rt.block_on(writer.put(&t("kept"), &full(300))).unwrap();
    rt.block_on(writer.put(&t("gone"), &full(301))).unwrap();
    drop(writer);
    fs::remove_file(run.path().join("s3/gone.pid")).unwrap();
    fs::write(run.path().join("s3/new.pid"), b"4242").unwrap();
    let rows = db_rows(run.path());
    let before = names(run.path());
    let store = SqliteStore::open_for_reading(run.path()).unwrap();
    assert!(store.has_database());
    let list = rt.block_on(dms_store::list_sorted(&store)).unwrap();
    assert_eq!(list.len(), 3, "{list:?}"); // a (no row), kept, new
    assert!(present(rt.block_on(store.get(&t("kept"))).unwrap())
        .identity
        .is_some());
    assert!(present(rt.block_on(store.get(&t("new"))).unwrap())
        .identity
        .is_none());
    drop(store);
    assert_eq!(db_rows(run.path()), rows, "a reader changed rows");
    assert_eq!(names(run.path()), before, "a reader left files behind");

    // Corrupt: left exactly as it is.
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 1) as u8).collect();
    fs::write(run.path().join(DB_FILE_NAME), &garbage).unwrap();
    for f in ["-wal", "-shm"] {
        let _ = fs::remove_file(run.path().join(format!("{DB_FILE_NAME}{f}")));
    }
    let before = names(run.path());
    let store = SqliteStore::open_for_reading(run.path()).unwrap();
    assert!(!store.has_database());
    assert_eq!(
        rt.block_on(dms_store::list_sorted(&store)).unwrap().len(),
        3
    );
    drop(store);
    assert_eq!(fs::read(run.path().join(DB_FILE_NAME)).unwrap(), garbage);
    assert_eq!(names(run.path()), before);
    assert!(moved_aside(run.path()).is_empty());
}
