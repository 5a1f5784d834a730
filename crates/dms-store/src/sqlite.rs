//! [`SqliteStore`]: PID files plus identity and metadata in `<run-dir>/dms.sqlite3`.

use crate::pidfile::{blocking, PidDir, Stamp, WriteStep, Written};
#[cfg(doc)]
use crate::Error;
use crate::{Entry, PidStore, Record, Result, Stored, TargetId};
use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[cfg(test)]
mod crash_tests;
mod db;
#[cfg(test)]
mod model_tests;
mod read_only;
mod row;

use db::*;
pub use read_only::READ_BUSY_TIMEOUT;
use row::*;

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
    lookup: Option<&mut Stored>,
    stamp: Option<Stamp>,
    row: Option<&Row>,
) -> Fix {
    match (lookup, stamp, row) {
        (Some(Stored::Valid(rec)), Some(stamp), Some(row)) if row.matches(rec, stamp) => {
            let mut filled = rec.clone();
            if row.fill(&mut filled).is_some() {
                *rec = filled;
                Fix::None
            } else {
                tracing::warn!(target = %target, "metadata row cannot be decoded; identity unknown");
                Fix::Bare(i64::from(rec.pid.get()), stamp)
            }
        }
        (Some(Stored::Valid(rec)), Some(stamp), Some(row)) => {
            tracing::warn!(
                target = %target,
                file_pid = rec.pid.get(),
                row_pid = row.pid,
                "PID file changed outside this store's last write (or a write was interrupted); \
                 its recorded identity is discarded"
            );
            Fix::Bare(i64::from(rec.pid.get()), stamp)
        }
        (Some(Stored::Valid(rec)), Some(stamp), None) => {
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

    fn get(&self, target: &TargetId) -> Result<Option<Stored>> {
        let mut db = self.lock();
        let (mut lookup, stamp) = self.files.read(target)?;
        let row = self.read_or_warn(&mut db, |conn| select_one(conn, target.as_str()));
        let Some(row) = row else {
            return Ok(lookup); // no database: the PID file alone
        };
        if reconcile(target, lookup.as_mut(), stamp, row.as_ref()) != Fix::None && !db.read_only {
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
                let row = rows.remove(target.as_str());
                if reconcile(target, Some(state), stamp, row.as_ref()) != Fix::None {
                    to_fix.push(target.clone());
                }
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
                match reconcile(target, lookup.as_mut(), stamp, row.as_ref()) {
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
/// use dms_store::{Identity, Stored, Pid, PidStore, Record, SqliteStore, TargetId};
/// let run_dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(run_dir.path())?;
/// let t: TargetId = "target-123".parse()?;
/// let mut rec = Record::bare(Pid::new(12345)?);
/// rec.identity = Some(Identity { start_ticks: 4711, boot_id: "b00t".into() });
/// store.put(&t, &rec).await?;
/// assert_eq!(std::fs::read_to_string(run_dir.path().join("s3/target-123.pid"))?, "12345\n");
/// let Some(Stored::Valid(got)) = store.get(&t).await? else { panic!() };
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

    async fn get(&self, target: &TargetId) -> Result<Option<Stored>> {
        let (inner, target) = (self.inner.clone(), target.clone());
        blocking("get", move || inner.get(&target)).await
    }

    async fn remove(&self, target: &TargetId) -> Result<bool> {
        let (inner, target) = (self.inner.clone(), target.clone());
        blocking("remove", move || inner.remove(&target)).await
    }

    async fn list(&self, batches: tokio::sync::mpsc::Sender<Vec<Entry>>) -> Result<()> {
        let inner = self.inner.clone();
        let entries = blocking("list", move || inner.list()).await?;
        // A receiver gone is not an error of the store.
        let _ = batches.send(entries).await;
        Ok(())
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
