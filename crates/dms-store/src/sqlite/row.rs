//! One row of `records`: its columns, their encoding from a [`Record`] and back, and
//! the statements that read and write it.

use crate::pidfile::Stamp;
use crate::{Error, Identity, Metadata, Record, Result, TargetId};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One row of `records`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) pid: i64,
    pub(super) start_ticks: Option<i64>,
    pub(super) boot_id: Option<String>,
    pub(super) cmdline: Option<String>,
    pub(super) mount: Option<Vec<u8>>,
    pub(super) spawned_at_ns: Option<i64>,
    pub(super) log_path: Option<Vec<u8>>,
    pub(super) stamp: Stamp,
}

/// A row's columns, encoded from a record before the PID file is written (so a record
/// the database cannot hold is refused before anything changes), waiting for the stamp
/// of the file it will belong to.
pub(super) struct Unstamped(Row);

impl Unstamped {
    /// The row naming the PID file written with `stamp`.
    pub(super) fn stamped(self, stamp: Stamp) -> Row {
        Row { stamp, ..self.0 }
    }
}

impl Row {
    pub(super) fn encode(target: &TargetId, record: &Record) -> Result<Unstamped> {
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

    pub(super) fn bare(pid: i64, stamp: Stamp) -> Row {
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
    pub(super) fn matches(&self, record: &Record, stamp: Stamp) -> bool {
        self.pid == i64::from(record.pid.get()) && self.stamp == stamp
    }

    /// Fills `record` (read from the PID file) with this row's identity and metadata.
    /// `None` when the row cannot be decoded (then it is treated as a mismatch).
    pub(super) fn fill(&self, record: &mut Record) -> Option<()> {
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

pub(super) fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

pub(super) fn from_ns(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}

pub(super) const SELECT_ROW: &str =
    "SELECT pid, start_ticks, boot_id, cmdline, mount, spawned_at_ns, \
                          log_path, file_ino, file_mtime_ns FROM records";

pub(super) fn row_from(r: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<Row> {
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

pub(super) fn select_one(conn: &Connection, target: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(&format!("{SELECT_ROW} WHERE target = ?1"))?
        .query_row([target], |r| row_from(r, 0))
        .optional()
}

pub(super) fn select_all(conn: &Connection) -> rusqlite::Result<HashMap<String, Row>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT target, {} FROM records",
        &SELECT_ROW["SELECT ".len()..SELECT_ROW.len() - " FROM records".len()]
    ))?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, row_from(r, 1)?)))?;
    rows.collect()
}

pub(super) fn upsert(conn: &Connection, target: &TargetId, row: &Row) -> rusqlite::Result<()> {
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

pub(super) fn delete(conn: &Connection, target: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM records WHERE target = ?1")?
        .execute([target])?;
    Ok(())
}
