//! Opening the database: migrations, the classification of SQLite errors, and moving
//! an unusable database aside to rebuild it from the PID files.

use super::row::*;
use super::{BUSY_TIMEOUT, DB_FILE_NAME, MIGRATIONS, SCHEMA_VERSION};
use crate::error::effective_user;
use crate::pidfile::PidDir;
use crate::{Entry, Error, Result, Stored};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Whether an SQLite error means the file is not a usable database (as opposed to a
/// transient condition such as another process holding a lock).
pub(super) fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Whether an SQLite error comes from the file system around the database (full, read
/// only, permission denied, an I/O error) rather than from its content: the database may
/// be perfectly good, so it must not be moved aside. A full tmpfs, for one, fails to
/// create the `-shm` file with an I/O error.
pub(super) fn is_environmental(e: &rusqlite::Error) -> Option<&'static str> {
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
pub(super) enum OpenFailure {
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
pub(super) struct Db {
    pub(super) path: PathBuf,
    pub(super) conn: Option<Connection>,
    /// Opened for a reader ([`SqliteStore::open_for_reading`]): nothing is written,
    /// moved or repaired.
    pub(super) read_only: bool,
    /// The first time another process's lock made the store go without the database
    /// ([`SqliteStore::busy_notice`]).
    pub(super) notice: Option<String>,
}

impl Db {
    /// Opens the database, moving an unusable one aside and creating a fresh one, which
    /// is then filled from the PID files. Never fails: without a database the store keeps
    /// working on PID files alone.
    pub(super) fn open(path: &Path, files: &PidDir) -> Db {
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
    pub(super) fn rebuild(&mut self, files: &PidDir, why: &str) {
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
    pub(super) fn fill_from_files(&mut self, files: &PidDir) {
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
                        state: Stored::Valid(r),
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
    pub(super) fn with<T>(
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
pub(super) fn open_conn(path: &Path) -> Result<(Connection, bool), OpenFailure> {
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
pub(super) enum MigrateError {
    Sql(rusqlite::Error),
    Newer(i64),
}

/// Applies the forward migrations the database lacks, in one transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
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
