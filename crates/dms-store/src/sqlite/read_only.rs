//! The read-only open of the database, for readers (`dms status`, `dms stats`).
//!
//! A reader changes nothing: the database is opened without `SQLITE_OPEN_CREATE`, with
//! `PRAGMA query_only` (or `SQLITE_OPEN_READONLY` where it cannot be opened for
//! writing), and is never created, migrated, switched to WAL, moved aside or repaired; rows that disagree with
//! their PID files are ignored for the answer (the PID file is authoritative) and left for
//! the next writer to repair. A missing database, a corrupt one, one of another schema
//! version, or one that is locked, is left as it is, and the answer comes from the PID
//! files alone, with a warning (a missing one only at info level: with `--backend
//! sqlite` it simply has not been created yet). A reader waits
//! [`READ_BUSY_TIMEOUT`] for a lock, not the writers' [`super::BUSY_TIMEOUT`].

use super::{is_busy, is_corruption, Db, DB_FILE_NAME, SCHEMA_VERSION};
use rusqlite::{Connection, OpenFlags};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// How long a reader waits for another process's lock before answering from the PID
/// files alone.
pub const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

impl Db {
    /// Opens the database read-only (see the module documentation). Never fails and
    /// never writes: without a usable database the store answers from the PID files.
    pub(super) fn open_read_only(path: &Path) -> Db {
        let mut db = Db {
            path: path.to_owned(),
            conn: None,
            read_only: true,
            notice: None,
        };
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no {DB_FILE_NAME} yet; answering from the PID files alone");
                return db;
            }
            _ => {}
        }
        match open_conn_read_only(path) {
            Ok(conn) => db.conn = Some(conn),
            Err((why, busy)) => {
                tracing::warn!(path = %path.display(), "{why}; left as it is, answering from the PID files alone (identity unknown)");
                if busy {
                    db.notice = Some(format!(
                        "{} {why}; answered from the PID files alone (identity unknown)",
                        path.display()
                    ));
                }
            }
        }
        db
    }
}

/// Opens `path` read-only and checks it; the error says why not, and whether it was
/// because of another process's lock.
fn open_conn_read_only(path: &Path) -> Result<Connection, (String, bool)> {
    let fail = |e: rusqlite::Error| {
        let busy = is_busy(&e);
        let why = if busy {
            format!("SQLite database is busy or locked by another process: {e}")
        } else if is_corruption(&e) {
            format!("SQLite database is unusable ({e}); the next spawn, kill or cleanup moves it aside and rebuilds it")
        } else {
            format!("SQLite database cannot be read: {e}")
        };
        (why, busy)
    };
    // Read-write without create, every statement refused a write (`query_only`): a
    // read-only connection to a WAL database would leave `-wal` and `-shm` files behind
    // (only a writable last connection removes them on close). Where the file cannot be
    // opened for writing (a read-only file system, permissions), a read-only one.
    let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_READ_WRITE)
        .or_else(|_| Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_READ_ONLY))
        .map_err(fail)?;
    conn.pragma_update(None, "query_only", true).map_err(fail)?;
    conn.busy_timeout(READ_BUSY_TIMEOUT).map_err(fail)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(fail)?;
    if check != "ok" {
        return Err((
            format!(
                "SQLite database failed its integrity check ({check}); the next spawn, kill or \
                 cleanup moves it aside and rebuilds it"
            ),
            false,
        ));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(fail)?;
    if version != SCHEMA_VERSION {
        return Err((
            format!(
                "SQLite database has schema version {version}, this dms reads version \
                 {SCHEMA_VERSION}"
            ),
            false,
        ));
    }
    Ok(conn)
}
