//! [`SqliteStore`]: PID files plus identity and metadata in `<run-dir>/dms.sqlite3`.

use crate::error::effective_user;
use crate::pidfile::{blocking, PidDir, Stamp, WriteStep, Written};
use crate::{
    Entry, EntryState, Error, Identity, Lookup, Metadata, PidStore, Record, Result, TargetId,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

mod read_only;
pub use read_only::READ_BUSY_TIMEOUT;

/// File name of the database inside the run directory.
pub const DB_FILE_NAME: &str = "dms.sqlite3";

/// How long a statement waits for another process's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one forward migration per version: `MIGRATIONS[i]` takes the database from
/// `user_version` `i` to `i + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 1: one row per target. Paths are stored as raw bytes (they need not be UTF-8),
    // times as nanoseconds since the Unix epoch, the command line as a JSON array.
    // (file_ino, file_mtime_ns) is the stamp of the PID file the row belongs to.
    // There is no column for environment values, on purpose.
    "CREATE TABLE records (
        target        TEXT PRIMARY KEY NOT NULL,
        pid           INTEGER NOT NULL,
        start_ticks   INTEGER,
        boot_id       TEXT,
        cmdline       TEXT,
        mount         BLOB,
        spawned_at_ns INTEGER,
        log_path      BLOB,
        file_ino      INTEGER NOT NULL,
        file_mtime_ns INTEGER NOT NULL
    ) STRICT;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// One row of `records`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    pid: i64,
    start_ticks: Option<i64>,
    boot_id: Option<String>,
    cmdline: Option<String>,
    mount: Option<Vec<u8>>,
    spawned_at_ns: Option<i64>,
    log_path: Option<Vec<u8>>,
    stamp: Stamp,
}

/// A row's columns, encoded from a record before the PID file is written (so a record
/// the database cannot hold is refused before anything changes), waiting for the stamp
/// of the file it will belong to.
struct Unstamped(Row);

impl Unstamped {
    /// The row naming the PID file written with `stamp`.
    fn stamped(self, stamp: Stamp) -> Row {
        Row { stamp, ..self.0 }
    }
}

impl Row {
    fn encode(target: &TargetId, record: &Record) -> Result<Unstamped> {
        let start_ticks = match &record.identity {
            Some(id) => Some(i64::try_from(id.start_ticks).map_err(|_| {
                Error::Invalid(format!(
                    "cannot record target {target}: start ticks {} do not fit the \
                     database (at most {}); nothing was written. Start ticks come from \
                     field 22 of /proc/PID/stat; pass the identity the spawner probed",
                    id.start_ticks,
                    i64::MAX
                ))
            })?),
            None => None,
        };
        let cmdline = match &record.meta.cmdline {
            Some(c) => Some(serde_json::to_string(c).map_err(|e| {
                Error::Invalid(format!(
                    "cannot record target {target}: its command line cannot be encoded \
                     as JSON ({e}); nothing was written"
                ))
            })?),
            None => None,
        };
        Ok(Unstamped(Row {
            pid: i64::from(record.pid.get()),
            start_ticks,
            boot_id: record.identity.as_ref().map(|i| i.boot_id.clone()),
            cmdline,
            mount: record
                .meta
                .mount
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec()),
            spawned_at_ns: record.meta.spawned_at.map(to_ns),
            log_path: record
                .meta
                .log_path
                .as_ref()
                .map(|p| p.as_os_str().as_bytes().to_vec()),
            // Replaced by `stamped` before the row is used.
            stamp: Stamp {
                ino: 0,
                mtime_ns: 0,
            },
        }))
    }

    fn bare(pid: i64, stamp: Stamp) -> Row {
        Row {
            pid,
            start_ticks: None,
            boot_id: None,
            cmdline: None,
            mount: None,
            spawned_at_ns: None,
            log_path: None,
            stamp,
        }
    }

    /// Whether this row describes the PID file read as (`record`, `stamp`).
    fn matches(&self, record: &Record, stamp: Stamp) -> bool {
        self.pid == i64::from(record.pid.get()) && self.stamp == stamp
    }

    /// Fills `record` (read from the PID file) with this row's identity and metadata.
    /// `None` when the row cannot be decoded (then it is treated as a mismatch).
    fn fill(&self, record: &mut Record) -> Option<()> {
        record.identity = match (self.start_ticks, &self.boot_id) {
            (Some(t), Some(b)) => Some(Identity {
                start_ticks: u64::try_from(t).ok()?,
                boot_id: b.clone(),
            }),
            (None, None) => None,
            _ => return None,
        };
        let path = |b: &Vec<u8>| PathBuf::from(std::ffi::OsString::from_vec(b.clone()));
        record.meta = Metadata {
            cmdline: match &self.cmdline {
                Some(j) => Some(serde_json::from_str(j).ok()?),
                None => None,
            },
            mount: self.mount.as_ref().map(path),
            spawned_at: self.spawned_at_ns.map(from_ns),
            log_path: self.log_path.as_ref().map(path),
        };
        Some(())
    }
}

fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn from_ns(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}

/// Whether an SQLite error means the file is not a usable database (as opposed to a
/// transient condition such as another process holding a lock).
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Whether an SQLite error comes from the file system around the database (full, read
/// only, permission denied, an I/O error) rather than from its content: the database may
/// be perfectly good, so it must not be moved aside. A full tmpfs, for one, fails to
/// create the `-shm` file with an I/O error.
fn is_environmental(e: &rusqlite::Error) -> Option<&'static str> {
    match e.sqlite_error_code()? {
        ErrorCode::DiskFull => Some("free some space in the run directory's file system"),
        ErrorCode::SystemIoFailure => Some(
            "check that the run directory's file system is writable and not full \
             (creating the -wal/-shm files failed, or the disk reported an error)",
        ),
        ErrorCode::ReadOnly => Some("make the run directory writable"),
        ErrorCode::PermissionDenied => {
            Some("give the user running dms read and write access to the database")
        }
        _ => None,
    }
}

/// Why opening the database failed.
#[derive(Debug)]
enum OpenFailure {
    /// The file is not a usable database: move it aside and start afresh.
    Unusable(String),
    /// It is from a newer dms, or its file system refuses: leave it alone and run
    /// without metadata.
    LeaveAlone(String),
    /// Another process holds it beyond the busy timeout: as `LeaveAlone`.
    Busy(String),
}

/// The database connection, or none when it could not be opened (metadata is then not
/// kept until the store is opened again).
#[derive(Debug)]
struct Db {
    path: PathBuf,
    conn: Option<Connection>,
    /// Opened for a reader ([`SqliteStore::open_for_reading`]): nothing is written,
    /// moved or repaired.
    read_only: bool,
    /// The first time another process's lock made the store go without the database
    /// ([`SqliteStore::busy_notice`]).
    notice: Option<String>,
}

impl Db {
    /// Opens the database, moving an unusable one aside and creating a fresh one, which
    /// is then filled from the PID files. Never fails: without a database the store keeps
    /// working on PID files alone.
    fn open(path: &Path, files: &PidDir) -> Db {
        let mut db = Db {
            path: path.to_owned(),
            conn: None,
            read_only: false,
            notice: None,
        };
        match open_conn(path) {
            Ok((conn, fresh)) => {
                db.conn = Some(conn);
                if fresh {
                    db.fill_from_files(files);
                }
            }
            Err(OpenFailure::LeaveAlone(why)) => {
                tracing::warn!(path = %path.display(), "{why}; running without metadata (identity, command line) until dms is restarted");
            }
            Err(OpenFailure::Busy(why)) => {
                tracing::warn!(path = %path.display(), "{why}; running without metadata (identity, command line) until dms is restarted");
                db.notice = Some(format!(
                    "{}: {why}; worked from the PID files alone (identity and metadata unknown)",
                    path.display()
                ));
            }
            Err(OpenFailure::Unusable(why)) => db.rebuild(files, &why),
        }
        db
    }

    /// Moves the unusable database (and its `-wal`/`-shm`/`-journal` files) aside as
    /// `dms.sqlite3.corrupt-<time>` and creates a fresh one from the PID files.
    fn rebuild(&mut self, files: &PidDir, why: &str) {
        self.conn = None; // closes it
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let mut aside = self
            .path
            .with_file_name(format!("{DB_FILE_NAME}.corrupt-{stamp}"));
        for n in 1.. {
            if fs::symlink_metadata(&aside).is_err() {
                break;
            }
            aside = self
                .path
                .with_file_name(format!("{DB_FILE_NAME}.corrupt-{stamp}-{n}"));
        }
        match fs::rename(&self.path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "SQLite database is unusable ({why}) and cannot be moved aside ({e}; {} needs write access to {}); \
                     running without metadata until dms is restarted",
                    effective_user(),
                    self.path.parent().unwrap_or(&self.path).display()
                );
                return;
            }
        }
        for suffix in ["-wal", "-shm", "-journal"] {
            let side = PathBuf::from(format!("{}{suffix}", self.path.display()));
            if side.exists() {
                let _ = fs::rename(&side, format!("{}{suffix}", aside.display()));
            }
        }
        match open_conn(&self.path) {
            Ok((conn, _)) => {
                tracing::warn!(
                    path = %self.path.display(),
                    moved_to = %aside.display(),
                    "SQLite database was unusable ({why}); moved it aside and rebuilt it from the PID files; \
                     the identity of helpers recorded before is unknown"
                );
                self.conn = Some(conn);
                self.fill_from_files(files);
            }
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                "SQLite database was unusable ({why}) and a fresh one cannot be created ({e:?}); \
                 running without metadata until dms is restarted"
            ),
        }
    }

    /// Records every valid PID file as a bare row (identity unknown).
    fn fill_from_files(&mut self, files: &PidDir) {
        let Ok(entries) = files.list_stamped() else {
            return; // the next list reports the error and repairs the rows
        };
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (entry, stamp) in &entries {
                if let (
                    Entry::Target {
                        target,
                        state: EntryState::Valid(r),
                    },
                    Some(stamp),
                ) = (entry, stamp)
                {
                    upsert(&tx, target, &Row::bare(i64::from(r.pid.get()), *stamp))?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), "cannot record the PID files in the rebuilt database: {e}");
        }
    }

    /// Runs `f` on the connection. A corruption error rebuilds the database and retries
    /// once; `Ok(None)` means there is no usable database (the caller goes on without it).
    fn with<T>(
        &mut self,
        files: &PidDir,
        mut f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        for attempt in 0..2 {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            match f(conn) {
                Ok(v) => return Ok(Some(v)),
                Err(e) if is_corruption(&e) && self.read_only => {
                    // A reader moves nothing aside: the next writer rebuilds it.
                    tracing::warn!(path = %self.path.display(), "SQLite database is unusable ({e}); answering from the PID files alone");
                    self.conn = None;
                    return Ok(None);
                }
                Err(e) if is_corruption(&e) && attempt == 0 => {
                    self.rebuild(files, &e.to_string());
                }
                Err(e) => {
                    if is_busy(&e) && self.notice.is_none() {
                        self.notice = Some(format!(
                            "{}: SQLite database is busy: {e}; worked from the PID files alone \
                             (identity and metadata unknown)",
                            self.path.display()
                        ));
                    }
                    return Err(Error::Sqlite {
                        path: self.path.clone(),
                        source: e,
                    });
                }
            }
        }
        Ok(None)
    }
}

/// Opens (creating when missing) and migrates the database; `true` when it was created.
fn open_conn(path: &Path) -> Result<(Connection, bool), OpenFailure> {
    let fresh = fs::symlink_metadata(path).is_err();
    let unusable = |e: rusqlite::Error| {
        if is_busy(&e) {
            OpenFailure::Busy(format!("SQLite database is busy: {e}"))
        } else if let Some(fix) = is_environmental(&e) {
            OpenFailure::LeaveAlone(format!(
                "SQLite database cannot be opened: {e}; it is left as it is ({fix})"
            ))
        } else {
            OpenFailure::Unusable(e.to_string())
        }
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut conn = Connection::open_with_flags(path, flags).map_err(unusable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unusable)?;
    // Check before anything writes to the file, so a bad file is moved aside as found.
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(unusable)?;
    if check != "ok" {
        return Err(OpenFailure::Unusable(format!(
            "integrity check failed: {check}"
        )));
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(unusable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenFailure::Unusable(format!(
            "cannot switch to WAL journal mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(unusable)?;
    migrate(&mut conn).map_err(|e| match e {
        MigrateError::Sql(e) => unusable(e),
        MigrateError::Newer(v) => OpenFailure::LeaveAlone(format!(
            "SQLite database has schema version {v}, newer than this dms supports ({SCHEMA_VERSION}); \
             upgrade dms to use it"
        )),
    })?;
    if fresh {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(crate::PID_FILE_MODE));
    }
    Ok((conn, fresh))
}

#[derive(Debug)]
enum MigrateError {
    Sql(rusqlite::Error),
    Newer(i64),
}

/// Applies the forward migrations the database lacks, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(MigrateError::Sql)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(MigrateError::Sql)?;
    if version > SCHEMA_VERSION {
        return Err(MigrateError::Newer(version));
    }
    if version < 0 {
        return Err(MigrateError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("negative schema version {version}")),
        )));
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(MigrateError::Sql)?;
        tx.pragma_update(None, "user_version", v as i64 + 1)
            .map_err(MigrateError::Sql)?;
    }
    tx.commit().map_err(MigrateError::Sql)
}

const SELECT_ROW: &str = "SELECT pid, start_ticks, boot_id, cmdline, mount, spawned_at_ns, \
                          log_path, file_ino, file_mtime_ns FROM records";

fn row_from(r: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<Row> {
    Ok(Row {
        pid: r.get(offset)?,
        start_ticks: r.get(offset + 1)?,
        boot_id: r.get(offset + 2)?,
        cmdline: r.get(offset + 3)?,
        mount: r.get(offset + 4)?,
        spawned_at_ns: r.get(offset + 5)?,
        log_path: r.get(offset + 6)?,
        stamp: Stamp {
            ino: r.get::<_, i64>(offset + 7)? as u64,
            mtime_ns: r.get(offset + 8)?,
        },
    })
}

fn select_one(conn: &Connection, target: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(&format!("{SELECT_ROW} WHERE target = ?1"))?
        .query_row([target], |r| row_from(r, 0))
        .optional()
}

fn select_all(conn: &Connection) -> rusqlite::Result<HashMap<String, Row>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT target, {} FROM records",
        &SELECT_ROW["SELECT ".len()..SELECT_ROW.len() - " FROM records".len()]
    ))?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, row_from(r, 1)?)))?;
    rows.collect()
}

fn upsert(conn: &Connection, target: &TargetId, row: &Row) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO records (target, pid, start_ticks, boot_id, cmdline, mount, \
         spawned_at_ns, log_path, file_ino, file_mtime_ns) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        target.as_str(),
        row.pid,
        row.start_ticks,
        row.boot_id,
        row.cmdline,
        row.mount,
        row.spawned_at_ns,
        row.log_path,
        row.stamp.ino as i64,
        row.stamp.mtime_ns,
    ])?;
    Ok(())
}

fn delete(conn: &Connection, target: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM records WHERE target = ?1")?
        .execute([target])?;
    Ok(())
}

/// What the row of a target should become, given its PID file.
#[derive(Debug, PartialEq)]
enum Fix {
    /// The row matches the file (or both are absent).
    None,
    /// The file is valid but the row is missing or describes another file: record the
    /// file's PID with unknown identity.
    Bare(i64, Stamp),
    /// There is no valid PID file: drop the row.
    Delete,
}

/// Decides how a row must change to agree with the PID file read as `lookup`; fills the
/// record from a matching row.
fn reconcile(
    target: &TargetId,
    lookup: &mut Lookup,
    stamp: Option<Stamp>,
    row: Option<&Row>,
) -> Fix {
    match (lookup, stamp, row) {
        (Lookup::Present(rec), Some(stamp), Some(row)) if row.matches(rec, stamp) => {
            let mut filled = rec.clone();
            if row.fill(&mut filled).is_some() {
                *rec = filled;
                Fix::None
            } else {
                tracing::warn!(target = %target, "metadata row cannot be decoded; identity unknown");
                Fix::Bare(i64::from(rec.pid.get()), stamp)
            }
        }
        (Lookup::Present(rec), Some(stamp), Some(row)) => {
            tracing::warn!(
                target = %target,
                file_pid = rec.pid.get(),
                row_pid = row.pid,
                "PID file changed outside this store's last write (or a write was interrupted); \
                 its recorded identity is discarded"
            );
            Fix::Bare(i64::from(rec.pid.get()), stamp)
        }
        (Lookup::Present(rec), Some(stamp), None) => {
            tracing::debug!(target = %target, pid = rec.pid.get(), "PID file without metadata picked up");
            Fix::Bare(i64::from(rec.pid.get()), stamp)
        }
        (_, _, Some(_)) => {
            tracing::info!(target = %target, "PID file gone or corrupt; dropping its metadata row");
            Fix::Delete
        }
        (_, _, None) => Fix::None,
    }
}

/// Where a simulated crash stops a put: after one of the PID-file steps (the row is not
/// written), or never.
pub(crate) type CrashAfter = Option<WriteStep>;

#[derive(Debug)]
struct Inner {
    files: PidDir,
    db: Mutex<Db>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Db> {
        // Every change to `Db` is a whole-field assignment; a panic cannot leave it torn.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, target: &TargetId, record: &Record, crash_after: CrashAfter) -> Result<()> {
        // 0. Encode the row first: a record the database cannot hold is refused with
        // nothing written, rather than leaving a PID file behind a failed put.
        let unstamped = Row::encode(target, record)?;
        let mut db = self.lock();
        // 1. The PID file: authoritative for existence, so it goes first.
        let stamp = match self.files.write_steps(target, record.pid, crash_after)? {
            Written::Done(stamp) => stamp,
            Written::Stopped => return Ok(()),
        };
        // 2. The row, naming the file it belongs to by its stamp. The PID file is written
        // and durable: if the row cannot be (the database is busy beyond the timeout,
        // full, read-only), the entry is there with identity unknown, exactly as after a
        // crash between the two writes, and the next read records a bare row. Failing the
        // put would make the caller give up a helper that is recorded.
        let row = unstamped.stamped(stamp);
        if let Err(e) = db.with(&self.files, |conn| upsert(conn, target, &row)) {
            tracing::warn!(
                target = %target,
                pid = record.pid.get(),
                "the PID file was written but its metadata row was not ({e}); identity \
                 (start ticks, boot ID) and metadata of this helper are unknown until it is \
                 spawned again"
            );
        }
        Ok(())
    }

    fn get(&self, target: &TargetId) -> Result<Lookup> {
        let mut db = self.lock();
        let (mut lookup, stamp) = self.files.read(target)?;
        let row = self.read_or_warn(&mut db, |conn| select_one(conn, target.as_str()));
        let Some(row) = row else {
            return Ok(lookup); // no database: the PID file alone
        };
        if reconcile(target, &mut lookup, stamp, row.as_ref()) != Fix::None && !db.read_only {
            self.repair(&mut db, std::slice::from_ref(target));
        }
        Ok(lookup)
    }

    fn remove(&self, target: &TargetId) -> Result<bool> {
        let mut db = self.lock();
        // 1. The PID file; 2. the row. A crash between leaves a row without a file, which
        // the next read drops.
        let existed = self.files.remove(target)?;
        if let Err(e) = db.with(&self.files, |conn| delete(conn, target.as_str())) {
            tracing::warn!("{e}; the stale row is dropped on the next read");
        }
        Ok(existed)
    }

    fn list(&self) -> Result<Vec<Entry>> {
        let mut db = self.lock();
        let files = self.files.list_stamped()?;
        let Some(mut rows) = self.read_or_warn(&mut db, |c| select_all(c)) else {
            return Ok(files.into_iter().map(|(e, _)| e).collect());
        };
        let mut to_fix = Vec::new();
        let mut entries = Vec::with_capacity(files.len());
        for (mut entry, stamp) in files {
            if let Entry::Target { target, state } = &mut entry {
                let mut lookup = match std::mem::replace(state, EntryState::Corrupt(placeholder()))
                {
                    EntryState::Valid(r) => Lookup::Present(r),
                    EntryState::Corrupt(c) => Lookup::Corrupt(c),
                };
                let row = rows.remove(target.as_str());
                if reconcile(target, &mut lookup, stamp, row.as_ref()) != Fix::None {
                    to_fix.push(target.clone());
                }
                *state = match lookup {
                    Lookup::Present(r) => EntryState::Valid(r),
                    Lookup::Corrupt(c) => EntryState::Corrupt(c),
                    Lookup::Absent => unreachable!("list never yields absent entries"),
                };
            }
            entries.push(entry);
        }
        if db.read_only {
            // A reader repairs nothing: the PID files answered; the next writer repairs.
            return Ok(entries);
        }
        // Rows left over have no PID file at all.
        for name in rows.into_keys() {
            match TargetId::new(&name) {
                Ok(t) => {
                    tracing::info!(target = %t, "PID file gone; dropping its metadata row");
                    to_fix.push(t);
                }
                Err(_) => {
                    let _ = db.with(&self.files, |conn| delete(conn, &name));
                }
            }
        }
        if !to_fix.is_empty() {
            self.repair(&mut db, &to_fix);
        }
        Ok(entries)
    }

    /// A read of the database; on failure other than corruption (which rebuilds), warns
    /// and returns `None` so that the caller answers from the PID files alone.
    fn read_or_warn<T>(
        &self,
        db: &mut Db,
        f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
        match db.with(&self.files, f) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("{e}; answering from the PID files alone");
                None
            }
        }
    }

    /// Makes the rows of `targets` agree with their PID files. Runs in one IMMEDIATE
    /// transaction and re-reads each file inside it, so a concurrent writer in another
    /// process (which writes its file first, then its row) is never overwritten with
    /// older information: its row write waits for this transaction and lands after it.
    fn repair(&self, db: &mut Db, targets: &[TargetId]) {
        let files = &self.files;
        let result = db.with(files, |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for target in targets {
                let Ok((mut lookup, stamp)) = files.read(target) else {
                    continue;
                };
                let row = select_one(&tx, target.as_str())?;
                match reconcile(target, &mut lookup, stamp, row.as_ref()) {
                    Fix::None => {}
                    Fix::Bare(pid, stamp) => upsert(&tx, target, &Row::bare(pid, stamp))?,
                    Fix::Delete => delete(&tx, target.as_str())?,
                }
            }
            tx.commit()
        });
        if let Err(e) = result {
            tracing::warn!("cannot repair metadata rows: {e}; will retry on the next read");
        }
    }
}

fn placeholder() -> crate::Corrupt {
    crate::Corrupt {
        path: PathBuf::new(),
        reason: String::new(),
    }
}

/// A [`PidStore`] that writes PID files exactly as [`crate::PidFileStore`] does (through
/// the same code) and, through to SQLite, a row per target in `<run-dir>/dms.sqlite3`
/// holding what a PID file cannot: identity (start ticks, boot ID) and metadata (command
/// line, mount path, spawned-at, log path). Environment values are never stored; there is
/// no column for them.
///
/// # Order of writes, and what a crash leaves
///
/// - **put**: (1) the PID file, atomically (temp file, fsync, rename, fsync dir), then
///   (2) the row, which names the file it belongs to by its inode number and mtime.
///   A crash before the rename leaves the old entry (old file, old row) and perhaps a
///   temporary file, which is never listed. A crash after the rename and before the row
///   leaves the new PID with the old row (or none): the stamp differs, so the next read
///   reports the new PID with identity unknown (`None`), never the old identity, and
///   repairs the row. The new PID is never lost, so a freshly spawned helper is never
///   orphaned by a crash. For the same reason a row that cannot be written (the
///   database busy beyond [`BUSY_TIMEOUT`], full or read-only) does not fail the put:
///   it succeeds with a warning, and the entry reads as identity unknown.
/// - **remove**: (1) the PID file, then (2) the row. A crash between leaves a row
///   without a file, which the next read drops.
///
/// # The PID file is authoritative
///
/// Reads take existence and the PID from the file and only add what a matching row
/// holds. A file added by hand is listed (identity unknown) and gets a bare row; a row
/// whose file is gone or corrupt is dropped; a row for a different PID or an older file
/// is discarded and replaced by a bare row. Repairs happen on the read that sees them.
///
/// # A database that cannot be used is rebuilt, never a refusal
///
/// A missing database is created. A corrupt one (garbage, failed integrity check, or a
/// corruption error later on) is moved aside as `dms.sqlite3.corrupt-<time>` (with its
/// `-wal`/`-shm` files), never deleted, and a fresh one is built from the PID files (one
/// bare row per valid file), with a `tracing` warning. A database that is busy beyond
/// [`BUSY_TIMEOUT`], from a newer dms (schema version above [`SCHEMA_VERSION`]), or that
/// cannot be opened because of its file system (full, read-only, permission denied, an
/// I/O error) is left alone, and so is one that cannot be moved aside: the store then
/// works from the PID files alone, with a warning, until it is opened again.
///
/// # Reading
///
/// A store opened with [`SqliteStore::open_for_reading`] (`dms status`, `dms stats`)
/// writes nothing: the database is opened read-only, waits at most
/// [`READ_BUSY_TIMEOUT`] for a lock, and is never created, migrated, moved aside or
/// repaired; when it is missing, corrupt, of another schema version or locked, the answer
/// comes from the PID files alone, with a warning.
///
/// The database uses WAL, `synchronous=FULL`, a [`BUSY_TIMEOUT`], and `user_version` as
/// its schema version with forward migrations. One connection, behind a mutex, is used
/// from tokio's blocking pool; operations of one store are serialised.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use dms_store::{Identity, Lookup, Pid, PidStore, Record, SqliteStore, TargetId};
/// let run_dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(run_dir.path())?;
/// let t: TargetId = "target-123".parse()?;
/// let mut rec = Record::bare(Pid::new(12345)?);
/// rec.identity = Some(Identity { start_ticks: 4711, boot_id: "b00t".into() });
/// store.put(&t, &rec).await?;
/// assert_eq!(std::fs::read_to_string(run_dir.path().join("s3/target-123.pid"))?, "12345\n");
/// let Lookup::Present(got) = store.get(&t).await? else { panic!() };
/// assert_eq!(got.identity, rec.identity);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl SqliteStore {
    /// Opens the store in `run_dir`: creates `run_dir` and `run_dir/s3` (mode 0755) when
    /// missing, removes stale temporary files, and opens (creating, migrating or
    /// rebuilding) `run_dir/dms.sqlite3`.
    ///
    /// This does blocking I/O: call it at startup or from `spawn_blocking`.
    ///
    /// # Errors
    /// Only when the PID directory cannot be created or read ([`Error::Io`]), or the run
    /// directory is unsafe to trust ([`Error::Unsafe`], as for
    /// [`PidFileStore::open`](crate::PidFileStore::open)); a database problem is never an
    /// error here (see the type's documentation).
    pub fn open(run_dir: &Path) -> Result<SqliteStore> {
        SqliteStore::open_with(PidDir::open(run_dir)?, run_dir)
    }

    /// [`SqliteStore::open`] for a reader (`dms status`): stale temporary files of
    /// interrupted writes in `s3/` are left for the next [`SqliteStore::open`] to remove
    /// (a listing never shows them).
    ///
    /// The database is opened read-only and nothing in it is changed: see
    /// "Reading" in the type's documentation.
    pub fn open_for_reading(run_dir: &Path) -> Result<SqliteStore> {
        let files = PidDir::open_unswept(run_dir)?;
        let db = Db::open_read_only(&run_dir.join(DB_FILE_NAME));
        Ok(SqliteStore::with_db(files, db))
    }

    fn open_with(files: PidDir, run_dir: &Path) -> Result<SqliteStore> {
        let db = Db::open(&run_dir.join(DB_FILE_NAME), &files);
        Ok(SqliteStore::with_db(files, db))
    }

    fn with_db(files: PidDir, db: Db) -> SqliteStore {
        SqliteStore {
            inner: Arc::new(Inner {
                files,
                db: Mutex::new(db),
            }),
        }
    }

    /// Why this store went without its database because another process held it locked
    /// beyond the busy timeout, the first time that happened; `None` when it never did.
    /// A command line says it at its default verbosity: the wait is what the operator
    /// notices.
    pub fn busy_notice(&self) -> Option<String> {
        self.inner.lock().notice.clone()
    }

    /// The run directory this store was opened in.
    pub fn run_dir(&self) -> &Path {
        self.inner.files.run_dir()
    }

    /// The database file (`<run-dir>/dms.sqlite3`).
    pub fn db_path(&self) -> PathBuf {
        self.inner.lock().path.clone()
    }

    /// Whether a database is in use; `false` when the store works from the PID files
    /// alone (see the type's documentation).
    pub fn has_database(&self) -> bool {
        self.inner.lock().conn.is_some()
    }

    /// A put that stops after `crash_after`, leaving what a crash there would leave.
    #[cfg(test)]
    pub(crate) async fn put_crashing(
        &self,
        target: &TargetId,
        record: &Record,
        crash_after: CrashAfter,
    ) -> Result<()> {
        let (inner, target, record) = (self.inner.clone(), target.clone(), record.clone());
        blocking("put", move || inner.put(&target, &record, crash_after)).await
    }
}

#[async_trait]
impl PidStore for SqliteStore {
    async fn put(&self, target: &TargetId, record: &Record) -> Result<()> {
        let (inner, target, record) = (self.inner.clone(), target.clone(), record.clone());
        blocking("put", move || inner.put(&target, &record, None)).await
    }

    async fn get(&self, target: &TargetId) -> Result<Lookup> {
        let (inner, target) = (self.inner.clone(), target.clone());
        blocking("get", move || inner.get(&target)).await
    }

    async fn remove(&self, target: &TargetId) -> Result<bool> {
        let (inner, target) = (self.inner.clone(), target.clone());
        blocking("remove", move || inner.remove(&target)).await
    }

    async fn list(&self) -> Result<Vec<Entry>> {
        let inner = self.inner.clone();
        blocking("list", move || inner.list()).await
    }

    async fn remove_stray(&self, file_name: &str) -> Result<bool> {
        let (inner, name) = (self.inner.clone(), file_name.to_owned());
        // Strays have no rows: they are not targets.
        blocking("remove stray", move || inner.files.remove_stray(&name)).await
    }

    fn pid_dir(&self) -> &Path {
        self.inner.files.pid_dir()
    }

    fn exists(&self, target: &TargetId) -> bool {
        // The PID file is authoritative for existence.
        self.inner.files.exists(target)
    }

    fn backend_name(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod crash_tests {
    use super::*;
    use crate::conformance::full_record;
    use crate::Pid;

    fn t(s: &str) -> TargetId {
        s.parse().unwrap()
    }

    fn rows(run_dir: &Path) -> Vec<(String, i64, Option<i64>)> {
        let conn = Connection::open(run_dir.join(DB_FILE_NAME)).unwrap();
        let mut stmt = conn
            .prepare("SELECT target, pid, start_ticks FROM records ORDER BY target")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn with_identity(pid: i32, ticks: u64) -> Record {
        let mut r = full_record(pid);
        r.identity.as_mut().unwrap().start_ticks = ticks;
        r
    }

    /// Every crash point of a put (after each PID-file step, before the row), over every
    /// prior state, including a replacement with the same PID but a new process (same PID
    /// reused: only the file stamp tells the rows apart). After the "crash" the store is
    /// dropped and reopened from what is on disk, and `list` must report:
    /// before the rename, exactly the old entry (with its identity); from the rename on,
    /// the new PID with identity unknown, never the old identity; when not crashed, the
    /// new record. The repaired rows must then agree with the files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_at_every_step_of_put_is_reported_correctly() {
        let target = t("crashy");
        let priors: [Option<Record>; 2] = [None, Some(with_identity(100, 1111))];
        let news = [with_identity(200, 2222), with_identity(100, 3333)];
        let points = [
            Some(WriteStep::TempCreated),
            Some(WriteStep::TempSynced),
            Some(WriteStep::Renamed),
            Some(WriteStep::DirSynced),
            None,
        ];
        for prior in &priors {
            for new in &news {
                for crash in points {
                    let case = format!("prior {prior:?}, new {new:?}, crash after {crash:?}");
                    let run = tempfile::tempdir().unwrap();
                    {
                        let store = SqliteStore::open(run.path()).unwrap();
                        if let Some(p) = prior {
                            store.put(&target, p).await.unwrap();
                        }
                        store.put_crashing(&target, new, crash).await.unwrap();
                    } // the crash: everything in memory is gone

                    let store = SqliteStore::open(run.path()).unwrap();
                    let list = store.list().await.unwrap();
                    let expected: Option<Record> = match crash {
                        Some(WriteStep::TempCreated | WriteStep::TempSynced) => prior.clone(),
                        Some(WriteStep::Renamed | WriteStep::DirSynced) => {
                            Some(Record::bare(new.pid))
                        }
                        None => Some(new.clone()),
                    };
                    match (&expected, &list[..]) {
                        (None, []) => {}
                        (
                            Some(exp),
                            [Entry::Target {
                                target: lt,
                                state: EntryState::Valid(got),
                            }],
                        ) if lt == &target => {
                            assert_eq!(got.pid, exp.pid, "{case}");
                            assert_eq!(got.identity, exp.identity, "{case}");
                            assert_eq!(got.meta, exp.meta, "{case}");
                        }
                        _ => panic!("{case}: expected {expected:?}, listed {list:?}"),
                    }
                    // get agrees with list, and the rows now agree with the files.
                    let again = store.get(&target).await.unwrap();
                    let exp_lookup_pid = expected.as_ref().map(|r| r.pid);
                    match &again {
                        Lookup::Present(r) => assert_eq!(Some(r.pid), exp_lookup_pid, "{case}"),
                        Lookup::Absent => assert_eq!(exp_lookup_pid, None, "{case}"),
                        other => panic!("{case}: {other:?}"),
                    }
                    let expected_rows: Vec<(String, i64, Option<i64>)> = expected
                        .iter()
                        .map(|r| {
                            (
                                target.to_string(),
                                i64::from(r.pid.get()),
                                r.identity.as_ref().map(|i| i.start_ticks as i64),
                            )
                        })
                        .collect();
                    assert_eq!(rows(run.path()), expected_rows, "{case}");
                }
            }
        }
    }

    /// A crash between the two steps of a remove (the file unlinked, the row not yet
    /// deleted) is repaired on the next read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_between_the_steps_of_remove_is_repaired() {
        let run = tempfile::tempdir().unwrap();
        let target = t("half-removed");
        {
            let store = SqliteStore::open(run.path()).unwrap();
            store.put(&target, &full_record(321)).await.unwrap();
            // Step 1 of remove, done by hand; step 2 (the row) never happens.
            fs::remove_file(target.pid_file_in(store.pid_dir())).unwrap();
        }
        assert_eq!(rows(run.path()).len(), 1);
        let store = SqliteStore::open(run.path()).unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert!(rows(run.path()).is_empty(), "the orphan row is dropped");
        // A later put of the same target starts afresh.
        store
            .put(&target, &Record::bare(Pid::new(322).unwrap()))
            .await
            .unwrap();
        let Lookup::Present(r) = store.get(&target).await.unwrap() else {
            panic!()
        };
        assert_eq!((r.pid.get(), r.identity), (322, None));
    }
}

#[cfg(test)]
mod model_tests {
    //! A model-based test in the style of redb's crash tests: random sequences of puts,
    //! removes, interrupted puts, restarts and changes made by hand to the PID files, each
    //! applied both to a real `SqliteStore` and to a plain model of what must be listed.

    use super::*;
    use crate::Pid;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TARGETS: [&str; 3] = ["alpha", "beta", "gamma"];

    #[derive(Debug, Clone)]
    enum Op {
        Put(usize, i32, u64),
        Remove(usize),
        CrashPut(usize, i32, u64, usize),
        HandWriteInPlace(usize, i32),
        HandReplace(usize, i32),
        HandDelete(usize),
        HandCorrupt(usize),
        Restart,
    }

    /// What `list` must say about one target: its PID and start ticks (None = identity
    /// unknown), or corrupt.
    #[derive(Debug, Clone, PartialEq)]
    enum Model {
        Valid(i32, Option<u64>),
        Corrupt,
    }

    fn op() -> impl Strategy<Value = Op> {
        let t = 0..TARGETS.len();
        let pid = 2..40i32;
        prop_oneof![
            3 => (t.clone(), pid.clone(), any::<u32>()).prop_map(|(t, p, k)| Op::Put(t, p, k.into())),
            1 => t.clone().prop_map(Op::Remove),
            2 => (t.clone(), pid.clone(), any::<u32>(), 0..4usize)
                .prop_map(|(t, p, k, s)| Op::CrashPut(t, p, k.into(), s)),
            1 => (t.clone(), pid.clone()).prop_map(|(t, p)| Op::HandWriteInPlace(t, p)),
            1 => (t.clone(), pid.clone()).prop_map(|(t, p)| Op::HandReplace(t, p)),
            1 => t.clone().prop_map(Op::HandDelete),
            1 => t.prop_map(Op::HandCorrupt),
            1 => Just(Op::Restart),
        ]
    }

    const STEPS: [WriteStep; 4] = [
        WriteStep::TempCreated,
        WriteStep::TempSynced,
        WriteStep::Renamed,
        WriteStep::DirSynced,
    ];

    fn record(pid: i32, ticks: u64) -> Record {
        Record {
            identity: Some(Identity {
                start_ticks: ticks,
                boot_id: "boot".into(),
            }),
            ..Record::bare(Pid::try_from(pid).unwrap())
        }
    }

    fn listed(store: &SqliteStore, rt: &tokio::runtime::Runtime) -> BTreeMap<String, Model> {
        rt.block_on(store.list())
            .unwrap()
            .into_iter()
            .map(|e| match e {
                Entry::Target {
                    target,
                    state: EntryState::Valid(r),
                } => (
                    target.to_string(),
                    Model::Valid(r.pid.get(), r.identity.map(|i| i.start_ticks)),
                ),
                Entry::Target { target, .. } => (target.to_string(), Model::Corrupt),
                Entry::Stray { file_name, .. } => panic!("unexpected stray {file_name}"),
            })
            .collect()
    }

    fn run(ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
        let base = Path::new("/dev/shm");
        let run_dir = if base.is_dir() {
            tempfile::tempdir_in(base).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut store = SqliteStore::open(run_dir.path()).unwrap();
        let mut model: BTreeMap<String, Model> = BTreeMap::new();
        let tid = |i: usize| TargetId::new(TARGETS[i]).unwrap();
        for (n, op) in ops.iter().enumerate() {
            let path = |i: usize| tid(i).pid_file_in(store.pid_dir());
            let name = |i: usize| TARGETS[i].to_string();
            match *op {
                Op::Put(t, p, k) => {
                    rt.block_on(store.put(&tid(t), &record(p, k))).unwrap();
                    model.insert(name(t), Model::Valid(p, Some(k)));
                }
                Op::Remove(t) => {
                    let had = rt.block_on(store.remove(&tid(t))).unwrap();
                    prop_assert_eq!(had, model.remove(&name(t)).is_some());
                }
                Op::CrashPut(t, p, k, s) => {
                    rt.block_on(store.put_crashing(&tid(t), &record(p, k), Some(STEPS[s])))
                        .unwrap();
                    if STEPS[s] >= WriteStep::Renamed {
                        model.insert(name(t), Model::Valid(p, None));
                    }
                    // A crash ends the process: what follows runs in a new one.
                    store = SqliteStore::open(run_dir.path()).unwrap();
                }
                Op::HandWriteInPlace(t, p) => {
                    // Like `echo PID > file`: same inode. A tool rewriting the same PID in
                    // place within one clock tick is indistinguishable, so pick another PID.
                    let p = match model.get(&name(t)) {
                        Some(Model::Valid(cur, _)) if *cur == p => p + 1,
                        _ => p,
                    };
                    fs::write(path(t), format!("{p}")).unwrap();
                    model.insert(name(t), Model::Valid(p, None));
                }
                Op::HandReplace(t, p) => {
                    let tmp = store.pid_dir().join("by-hand.tmp");
                    fs::write(&tmp, format!("{p}\n")).unwrap();
                    fs::rename(&tmp, path(t)).unwrap();
                    model.insert(name(t), Model::Valid(p, None));
                }
                Op::HandDelete(t) => {
                    let _ = fs::remove_file(path(t));
                    model.remove(&name(t));
                }
                Op::HandCorrupt(t) => {
                    fs::write(path(t), b"\x00garbage\xff").unwrap();
                    model.insert(name(t), Model::Corrupt);
                }
                Op::Restart => store = SqliteStore::open(run_dir.path()).unwrap(),
            }
            prop_assert_eq!(
                &listed(&store, &rt),
                &model,
                "after op {} {:?} of {:?}",
                n,
                op,
                ops
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn list_matches_the_model_through_crashes_restarts_and_hand_edits(
            ops in proptest::collection::vec(op(), 1..24)
        ) {
            run(ops)?;
        }
    }

    /// A corruption error while the store is in use (not at open) moves the database
    /// aside, rebuilds it from the PID files and retries the operation once. The error is
    /// injected: a real file corrupted under an open connection is not reliably noticed.
    #[test]
    fn a_corruption_error_during_use_rebuilds_and_retries() {
        let run_dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(run_dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.put(&TargetId::new("keep").unwrap(), &record(77, 5)))
            .unwrap();
        let mut calls = 0;
        let count = {
            let mut db = store.inner.lock();
            db.with(&store.inner.files, |conn| {
                calls += 1;
                if calls == 1 {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                        Some("injected".into()),
                    ));
                }
                conn.query_row(
                    "SELECT count(*) FROM records WHERE start_ticks IS NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap()
        };
        assert_eq!(calls, 2);
        assert_eq!(count, Some(1), "rebuilt from the PID file: one bare row");
        let aside: Vec<_> = fs::read_dir(run_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with("dms.sqlite3.corrupt-")
                    && !n.ends_with("-wal")
                    && !n.ends_with("-shm")
            })
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        let Lookup::Present(r) = rt
            .block_on(store.get(&TargetId::new("keep").unwrap()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!((r.pid.get(), r.identity), (77, None));
    }
}
