//! Fuzz target `sqlite_row`: decoding of SQLite metadata rows, through a real database.
//!
//! `dms_store` has no public row decoder; this target drives the decoding the way it
//! happens in production, through [`SqliteStore`] over a real `dms.sqlite3` in a fresh
//! temporary run directory (on tmpfs when there is one). Each input builds:
//!
//! - a PID file for target `t` (absent, a valid PID, or arbitrary bytes);
//! - a database: none (the store creates it), a hand-made `records` table with
//!   *untyped* columns (so any column can hold any SQLite type: NULL, integer, real,
//!   text, invalid-UTF-8 text, blob), an arbitrary `user_version`, maybe a missing
//!   column; or arbitrary bytes as the database file;
//! - optionally a [`PidStore::put`] of an arbitrary record (identity, command line,
//!   mount and log paths as arbitrary bytes, spawn time anywhere in ±584 years);
//! - arbitrary rows inserted by hand, for `t` or for other (valid or invalid) names, with
//!   the PID file's real inode/mtime stamp or arbitrary ones.
//!
//! Then it reads with `get`, `list` and `get` again. Properties:
//!
//! - nothing panics; `open` succeeds; a read either succeeds or fails with an error
//!   that names a path in the run directory;
//! - the PID always comes from the PID file: `Present` exactly when the file holds a
//!   valid PID (at most 64 bytes), with that PID; `Corrupt` when it does not; `Absent`
//!   when there is no file;
//! - identity is never invented or taken from another PID or an earlier file: when a
//!   read reports identity, the table held (just before the reads) a row for `t` with
//!   the file's PID and stamp whose start ticks, boot ID and metadata decode to exactly
//!   what was reported;
//! - a successful `put` round-trips: with no hand-written row for `t` and a table of
//!   the store's own schema, the next read returns the put's identity and metadata
//!   unchanged (a put whose row cannot be written still succeeds, by contract, and then
//!   reads back with identity unknown: the identity check above still applies);
//! - reads are stable: the second `get` returns what the first returned (the first
//!   one's repairs change no answer); `list` agrees with the file.
#![no_main]

use arbitrary::Arbitrary;
use dms_store::{
    Entry, Identity, Metadata, Pid, PidStore, Record, SqliteStore, Stored, TargetId, DB_FILE_NAME,
    MAX_PID_FILE_LEN, PID_SUBDIR,
};
use libfuzzer_sys::fuzz_target;
use rusqlite::types::Value;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Columns of `records`, in the order the store selects them.
const COLUMNS: [&str; 10] = [
    "target",
    "pid",
    "start_ticks",
    "boot_id",
    "cmdline",
    "mount",
    "spawned_at_ns",
    "log_path",
    "file_ino",
    "file_mtime_ns",
];

#[derive(Arbitrary, Debug)]
enum FileContent {
    None,
    Pid(u16),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Database {
    /// None: the store creates it (and fills it from the PID files).
    Fresh,
    /// A hand-made table with untyped columns.
    Loose {
        user_version: i8,
        primary_key: bool,
        /// Index into `COLUMNS` of a column to leave out, if below 10.
        drop_column: u8,
    },
    /// Arbitrary bytes as the database file.
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// Text that need not be valid UTF-8 (inserted as `CAST(blob AS TEXT)`).
    TextBytes(Vec<u8>),
    Blob(Vec<u8>),
    /// The PID in the PID file (when it holds one), as an integer.
    FilePid,
    /// The file's inode number, as an integer.
    FileIno,
    /// The file's mtime in nanoseconds, as an integer.
    FileMtime,
    /// A JSON array of these strings, as text.
    JsonArgs(Vec<String>),
}

#[derive(Arbitrary, Debug)]
enum RowTarget {
    T,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct HandRow {
    target: RowTarget,
    values: [Val; 9],
}

#[derive(Arbitrary, Debug)]
struct PutRecord {
    pid: u16,
    identity: Option<(u64, String)>,
    cmdline: Option<Vec<String>>,
    mount: Option<Vec<u8>>,
    spawned_at: Option<(bool, u64)>,
    log_path: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    file: FileContent,
    db: Database,
    put: Option<PutRecord>,
    rows: Vec<HandRow>,
}

mod scratch;

struct Env {
    rt: tokio::runtime::Runtime,
    base: &'static Path,
    target: TargetId,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| Env {
        rt: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime"),
        base: scratch::dir("dms-fuzz-sqlite-"),
        target: TargetId::new("t").expect("valid target"),
    })
}

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

fn time_of(neg: bool, ns: u64) -> SystemTime {
    let d = Duration::from_nanos(ns);
    if neg {
        SystemTime::UNIX_EPOCH - d
    } else {
        SystemTime::UNIX_EPOCH + d
    }
}

/// The PID file's PID (if valid) and stamp (inode, mtime ns), read independently.
struct FileState {
    content: Option<Vec<u8>>,
    pid: Option<Pid>,
    ino: i64,
    mtime_ns: i64,
    mtime: Option<SystemTime>,
}

fn file_state(path: &Path) -> FileState {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let content = std::fs::read(path).expect("read PID file");
            let pid = (content.len() as u64 <= MAX_PID_FILE_LEN)
                .then(|| Pid::parse(&content).ok())
                .flatten();
            FileState {
                pid,
                content: Some(content),
                ino: m.ino() as i64,
                mtime_ns: m
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(m.mtime_nsec()),
                mtime: m.modified().ok(),
            }
        }
        Err(_) => FileState {
            content: None,
            pid: None,
            ino: 0,
            mtime_ns: 0,
            mtime: None,
        },
    }
}

/// A value to bind, and whether it must be cast to TEXT.
fn bind(v: &Val, f: &FileState) -> (Value, bool) {
    match v {
        Val::Null => (Value::Null, false),
        Val::Int(i) => (Value::Integer(*i), false),
        Val::Real(x) => (Value::Real(*x), false),
        Val::Text(s) => (Value::Text(s.clone()), false),
        Val::TextBytes(b) => (Value::Blob(b.clone()), true),
        Val::Blob(b) => (Value::Blob(b.clone()), false),
        Val::FilePid => match f.pid {
            Some(p) => (Value::Integer(i64::from(p.get())), false),
            None => (Value::Integer(12345), false),
        },
        Val::FileIno => (Value::Integer(f.ino), false),
        Val::FileMtime => (Value::Integer(f.mtime_ns), false),
        Val::JsonArgs(a) => (
            Value::Text(serde_json::to_string(a).expect("strings encode")),
            false,
        ),
    }
}

fn prepare_db(db_path: &Path, db: &Database) {
    match db {
        Database::Fresh => {}
        Database::Garbage(bytes) => std::fs::write(db_path, bytes).expect("write garbage db"),
        Database::Loose {
            user_version,
            primary_key,
            drop_column,
        } => {
            let conn = rusqlite::Connection::open(db_path).expect("create loose db");
            let cols: Vec<String> = COLUMNS
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != usize::from(*drop_column))
                .map(|(i, c)| {
                    if i == 0 && *primary_key {
                        format!("{c} PRIMARY KEY")
                    } else {
                        (*c).to_owned()
                    }
                })
                .collect();
            conn.execute_batch(&format!(
                "PRAGMA user_version = {user_version}; CREATE TABLE records ({});",
                cols.join(", ")
            ))
            .expect("create loose table");
        }
    }
}

/// One row of `records` as stored, with every column's raw value.
type StoredRow = Vec<Value>;

/// Every row of `records` as stored (empty if there is no usable table).
fn stored_rows(db_path: &Path) -> Vec<StoredRow> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare(&format!("SELECT {} FROM records", COLUMNS.join(", "))) else {
        return Vec::new();
    };
    let Ok(rows) = stmt.query_map([], |r| (0..10).map(|i| r.get::<_, Value>(i)).collect()) else {
        return Vec::new();
    };
    rows.filter_map(Result::ok).collect()
}

/// What a stored row for `t` may legitimately contribute to a read of the file `f`: its
/// identity (or none) and metadata, decoded here independently, if it matches the file.
type Candidate = (Option<Identity>, Metadata);

fn candidate(row: &StoredRow, f: &FileState) -> Option<Candidate> {
    let int = |v: &Value| match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    };
    let opt_blob_path = |v: &Value| match v {
        Value::Null => Some(None),
        Value::Blob(b) => Some(Some(path_of(b))),
        _ => None,
    };
    if row[0] != Value::Text("t".into()) {
        return None;
    }
    let pid = f.pid?;
    if int(&row[1])? != i64::from(pid.get())
        || int(&row[8])? != f.ino
        || int(&row[9])? != f.mtime_ns
    {
        return None;
    }
    let identity = match (&row[2], &row[3]) {
        (Value::Null, Value::Null) => None,
        (Value::Integer(t), Value::Text(b)) => Some(Identity {
            start_ticks: u64::try_from(*t).ok()?,
            boot_id: b.clone(),
        }),
        _ => return None,
    };
    let cmdline = match &row[4] {
        Value::Null => None,
        Value::Text(j) => Some(serde_json::from_str::<Vec<String>>(j).ok()?),
        _ => return None,
    };
    let spawned_at = match &row[6] {
        Value::Null => None,
        Value::Integer(ns) => Some(if *ns >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
        }),
        _ => return None,
    };
    Some((
        identity,
        Metadata {
            cmdline,
            mount: opt_blob_path(&row[5])?,
            spawned_at,
            log_path: opt_blob_path(&row[7])?,
        },
    ))
}

/// Checks one read of `t` against the file and the candidate rows.
fn check_record(what: &str, state: Option<&Stored>, f: &FileState, candidates: &[Candidate]) {
    match (state, &f.content) {
        (None, None) => {}
        (Some(Stored::Valid(r)), Some(_)) => {
            assert_eq!(Some(r.pid), f.pid, "{what}: PID not the file's");
            assert_eq!(
                r.written_at, f.mtime,
                "{what}: written_at not the file's mtime"
            );
            // The file alone (no identity, no metadata) is always a safe answer; anything
            // more must come from a row for this very file.
            if r.identity.is_some() || r.meta != Metadata::default() {
                assert!(
                    candidates
                        .iter()
                        .any(|(id, meta)| *id == r.identity && *meta == r.meta),
                    "{what}: identity {:?} / {:?} comes from no row matching the file: {candidates:?}",
                    r.identity,
                    r.meta
                );
            }
        }
        (Some(Stored::Corrupt(c)), Some(_)) => {
            assert_eq!(
                f.pid, None,
                "{what}: valid PID file reported corrupt: {c:?}"
            );
            assert!(!c.reason.is_empty());
        }
        (got, content) => panic!("{what}: read {got:?} but the file holds {content:?}"),
    }
}

fn check_error(what: &str, e: &dms_store::Error, run: &Path) {
    let msg = e.to_string();
    assert!(
        msg.contains(&*run.to_string_lossy()),
        "{what}: error does not say where: {msg}"
    );
}

fn put_record(p: &PutRecord) -> Option<Record> {
    let pid = Pid::new(i64::from(p.pid)).ok()?;
    Some(Record {
        pid,
        identity: p.identity.as_ref().map(|(t, b)| Identity {
            start_ticks: *t,
            boot_id: b.clone(),
        }),
        meta: Metadata {
            cmdline: p.cmdline.clone(),
            mount: p.mount.as_deref().map(path_of),
            spawned_at: p.spawned_at.map(|(neg, ns)| time_of(neg, ns)),
            log_path: p.log_path.as_deref().map(path_of),
        },
        written_at: None,
    })
}

/// Whether a spawn time survives the store's nanosecond encoding exactly (within
/// ±i64::MAX ns of the epoch; beyond that it saturates by design).
fn representable(t: Option<SystemTime>) -> bool {
    t.is_none_or(|t| {
        let ns = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos(),
            Err(e) => e.duration().as_nanos(),
        };
        ns <= i64::MAX as u128
    })
}

fuzz_target!(|input: Input| {
    if input.rows.len() > 8 {
        return;
    }
    let env = env();
    let run_dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(env.base)
        .expect("create run dir");
    let run = run_dir.path();
    let pid_dir = run.join(PID_SUBDIR);
    std::fs::create_dir(&pid_dir).expect("create s3/");
    let pid_path = env.target.pid_file_in(&pid_dir);
    match &input.file {
        FileContent::None => {}
        FileContent::Pid(p) => std::fs::write(&pid_path, format!("{p}\n")).expect("write"),
        FileContent::Bytes(b) => std::fs::write(&pid_path, b).expect("write"),
    }
    let db_path = run.join(DB_FILE_NAME);
    prepare_db(&db_path, &input.db);

    let store = SqliteStore::open(run).expect("open never fails on a usable run dir");

    // An arbitrary put through the store.
    let mut put_ok = None;
    if let Some(rec) = input.put.as_ref().and_then(put_record) {
        let before = file_state(&pid_path).content;
        let res = env.rt.block_on(store.put(&env.target, &rec));
        match &res {
            Ok(()) => put_ok = Some(rec.clone()),
            // The only refusal: start ticks above i64::MAX do not fit the column. It
            // comes before anything is written, so the PID file is as it was.
            Err(dms_store::Error::Invalid(msg)) => {
                assert!(
                    rec.identity
                        .as_ref()
                        .is_some_and(|i| i.start_ticks > i64::MAX as u64),
                    "put refused {rec:?}: {msg}"
                );
                assert_eq!(
                    file_state(&pid_path).content,
                    before,
                    "a refused put changed the PID file"
                );
            }
            Err(e) => check_error("put", e, run),
        }
        if !matches!(res, Err(dms_store::Error::Invalid(_))) {
            // Whatever the row did, the PID file now holds the new PID.
            let f = file_state(&pid_path);
            assert_eq!(f.pid, Some(rec.pid), "put did not write the PID file");
        }
    }

    // Rows written by hand, against the file as it is now.
    let f = file_state(&pid_path);
    let mut hand_t = false;
    if let Ok(conn) = rusqlite::Connection::open(&db_path) {
        let _ = conn.busy_timeout(Duration::from_secs(5));
        for row in &input.rows {
            let target = match &row.target {
                RowTarget::T => Value::Text("t".into()),
                RowTarget::Other(s) => Value::Text(s.clone()),
            };
            let mut params = vec![target];
            let mut exprs = vec!["?1".to_owned()];
            for (i, v) in row.values.iter().enumerate() {
                let (value, cast) = bind(v, &f);
                params.push(value);
                exprs.push(if cast {
                    format!("CAST(?{} AS TEXT)", i + 2)
                } else {
                    format!("?{}", i + 2)
                });
            }
            let sql = format!(
                "INSERT OR REPLACE INTO records ({}) VALUES ({})",
                COLUMNS.join(", "),
                exprs.join(", ")
            );
            if conn
                .execute(&sql, rusqlite::params_from_iter(params))
                .is_ok()
                && matches!(row.target, RowTarget::T)
            {
                hand_t = true;
            }
        }
    }
    let candidates: Vec<Candidate> = stored_rows(&db_path)
        .iter()
        .filter_map(|r| candidate(r, &f))
        .collect();

    let first = env.rt.block_on(store.get(&env.target));
    let listed = env.rt.block_on(dms_store::list_sorted(&store));
    let second = env.rt.block_on(store.get(&env.target));

    let first = match first {
        Ok(l) => {
            check_record("get", l.as_ref(), &f, &candidates);
            Some(l)
        }
        Err(e) => {
            check_error("get", &e, run);
            None
        }
    };
    match listed {
        Ok(entries) => match (&entries[..], &f.content) {
            ([], None) => {}
            ([Entry::Target { target, state }], Some(_)) if *target == env.target => {
                check_record("list", Some(state), &f, &candidates);
            }
            (other, content) => panic!("list gave {other:?} for a file holding {content:?}"),
        },
        Err(e) => check_error("list", &e, run),
    }
    match second {
        Ok(l) => {
            check_record("second get", l.as_ref(), &f, &candidates);
            if let Some(first) = &first {
                assert_eq!(&l, first, "a second get answered differently");
            }
        }
        Err(e) => check_error("second get", &e, run),
    }

    // Round trip of a successful put, when nothing else wrote the row of `t` and the
    // store kept a database with the schema it writes (its own, or one it rebuilt). A
    // put into a table it cannot write (a hand-made table lacking a column) succeeds by
    // contract with identity unknown, like a crash between the file and the row.
    let schema_ok = match &input.db {
        Database::Fresh | Database::Garbage(_) => true,
        Database::Loose {
            user_version,
            drop_column,
            ..
        } => *user_version <= 0 || (*user_version == 1 && usize::from(*drop_column) >= 10),
    };
    if let (Some(rec), false, true, true, Some(Some(Stored::Valid(got)))) =
        (&put_ok, hand_t, schema_ok, store.has_database(), &first)
    {
        assert_eq!(got.pid, rec.pid);
        assert_eq!(got.identity, rec.identity, "identity did not round-trip");
        assert_eq!(got.meta.cmdline, rec.meta.cmdline);
        assert_eq!(
            got.meta.mount.as_ref().map(|p| p.as_os_str().as_bytes()),
            rec.meta.mount.as_ref().map(|p| p.as_os_str().as_bytes())
        );
        assert_eq!(
            got.meta.log_path.as_ref().map(|p| p.as_os_str().as_bytes()),
            rec.meta.log_path.as_ref().map(|p| p.as_os_str().as_bytes())
        );
        if representable(rec.meta.spawned_at) {
            assert_eq!(got.meta.spawned_at, rec.meta.spawned_at);
        }
    }
});
