//! [`PidFileStore`]: PID files only, at `<run-dir>/s3/<target>.pid`.
//!
//! The synchronous core ([`PidDir`]) is shared with the SQLite backend, which writes the
//! very same files through it.

use crate::error::{effective_user, Access};
use crate::names::{check_stray_name, classify, sort_key, Name, PID_SUFFIX};
use crate::{Corrupt, Entry, EntryState, Error, Lookup, Pid, PidStore, Record, Result, TargetId};
use async_trait::async_trait;
use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The largest PID file accepted, in bytes. A PID has at most 7 digits; the slack allows
/// whitespace written by other tools.
pub const MAX_PID_FILE_LEN: u64 = 64;

/// Mode of the PID files dms writes (set explicitly, whatever the umask).
pub const PID_FILE_MODE: u32 = 0o644;

/// Mode of the directories dms creates (set explicitly, whatever the umask).
pub const DIR_MODE: u32 = 0o755;

/// Name of the PID directory inside the run directory.
pub const PID_SUBDIR: &str = "s3";

/// Temporary files older than this are left over from a crashed write and are removed
/// when a store is opened. Younger ones may belong to a write in progress in another
/// process, so they are left alone (they are never listed as entries either way).
pub(crate) const STALE_TEMP_AGE: Duration = Duration::from_secs(300);

/// Suffix of the temporary files of an atomic write (`.<target>.pid.<pid>-<n>.tmp`).
const TEMP_SUFFIX: &str = ".tmp";

/// The steps of an atomic PID-file write, in order; a test can stop after any of them to
/// simulate a crash there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum WriteStep {
    /// The temporary file exists, still empty.
    TempCreated,
    /// The temporary file holds the PID and is fsynced.
    TempSynced,
    /// The temporary file has been renamed over `<target>.pid`.
    Renamed,
    /// The directory has been fsynced: the write is durable.
    DirSynced,
}

/// Which file a PID file is: its inode number and mtime. A put creates a new inode while
/// the previous file still exists, so the new file's stamp always differs from the old
/// one's, even when both hold the same PID within one clock tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Inode number.
    pub(crate) ino: u64,
    /// mtime in nanoseconds since the Unix epoch.
    pub(crate) mtime_ns: i64,
}

impl Stamp {
    /// The stamp in an fstat(2) result (the same fields as [`Stamp::of`]).
    // (`st_mtime` is an i64 on 64-bit Linux, narrower on some 32-bit targets.)
    #[allow(clippy::useless_conversion)]
    fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            ino: st.st_ino,
            mtime_ns: i64::try_from(st.st_mtime)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000_000)
                .saturating_add(i64::try_from(st.st_mtime_nsec).unwrap_or(0)),
        }
    }

    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }
}

/// What a write did: completed, or stopped early on purpose (crash simulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Done; the stamp of the new PID file.
    Done(Stamp),
    /// Stopped after the given step, as a crash would.
    Stopped,
}

/// The PID directory and the synchronous operations on it. Every method does blocking
/// I/O; the async stores call them from `spawn_blocking`.
#[derive(Debug)]
pub(crate) struct PidDir {
    run_dir: PathBuf,
    pid_dir: PathBuf,
    /// The PID directory is on a memory file system (tmpfs): see
    /// [`PidDir::in_memory`].
    in_memory: bool,
}

impl PidDir {
    /// Creates `<run-dir>` (mode 0755) when missing, checks that it and its `s3/`,
    /// `locks/` and `logs/` are safe to trust (see [`crate::safety`]), creates `s3/` when
    /// missing and removes stale temporary files.
    pub(crate) fn open(run_dir: &Path) -> Result<PidDir> {
        let dir = PidDir::open_unswept(run_dir)?;
        dir.remove_stale_temps(STALE_TEMP_AGE)?;
        Ok(dir)
    }

    /// [`PidDir::open`] without removing stale temporary files (for a reader that must
    /// not write: it lists no temporary file anyway).
    pub(crate) fn open_unswept(run_dir: &Path) -> Result<PidDir> {
        let pid_dir = run_dir.join(PID_SUBDIR);
        create_dir(run_dir)?;
        crate::safety::check_run_dir(run_dir)?;
        create_dir(&pid_dir)?;
        let in_memory = on_memory_fs(&pid_dir);
        let dir = PidDir {
            run_dir: run_dir.to_owned(),
            pid_dir,
            in_memory,
        };
        Ok(dir)
    }

    /// Whether the PID directory is on a memory file system (tmpfs, as production's
    /// `/run` is). There no operation on one PID file waits for a device
    /// (`fsync` returns at once), so it costs a few microseconds: less than a trip
    /// through tokio's blocking pool.
    pub(crate) fn in_memory(&self) -> bool {
        self.in_memory
    }

    pub(crate) fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub(crate) fn pid_dir(&self) -> &Path {
        &self.pid_dir
    }

    /// Removes temporary files of atomic writes that are older than `min_age`.
    pub(crate) fn remove_stale_temps(&self, min_age: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for dent in self.read_dir()? {
            let dent = dent.map_err(|e| self.dir_error("read directory", e, Access::Read))?;
            let name = dent.file_name();
            if !is_temp_name(&name) {
                continue;
            }
            let path = dent.path();
            // lstat: a symlink or directory with a temp-like name is not ours; leave it.
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= min_age);
            if meta.file_type().is_file() && old {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a temporary file left by an interrupted write");
                        removed += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::io(
                            "remove stale temporary file",
                            &path,
                            e,
                            &self.pid_dir,
                            Access::Write,
                        ))
                    }
                }
            }
        }
        Ok(removed)
    }

    fn read_dir(&self) -> Result<fs::ReadDir> {
        fs::read_dir(&self.pid_dir).map_err(|e| self.dir_error("read directory", e, Access::Read))
    }

    fn dir_error(&self, op: &'static str, e: std::io::Error, access: Access) -> Error {
        Error::io(op, &self.pid_dir, e, &self.pid_dir, access)
    }

    /// Whether something is at `target`'s PID-file path (one `lstat`; an error other than
    /// its absence counts as something).
    pub(crate) fn exists(&self, target: &TargetId) -> bool {
        match std::fs::symlink_metadata(target.pid_file_in(&self.pid_dir)) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// Reads the entry of `target`, with the file's stamp when it is valid.
    pub(crate) fn read(&self, target: &TargetId) -> Result<(Lookup, Option<Stamp>)> {
        let path = target.pid_file_in(&self.pid_dir);
        read_pid_file(&path, &self.pid_dir)
    }

    /// Writes `pid` to `target`'s PID file atomically and durably; returns its stamp.
    pub(crate) fn write(&self, target: &TargetId, pid: Pid) -> Result<Stamp> {
        match self.write_steps(target, pid, None)? {
            Written::Done(stamp) => Ok(stamp),
            Written::Stopped => unreachable!("no stop requested"),
        }
    }

    /// The atomic write, step by step: temporary file `.<target>.pid.<pid>-<n>.tmp` in the
    /// same directory (mode 0644, created exclusively), write `PID\n`, fsync, rename over
    /// `<target>.pid`, fsync the directory. With `stop_after`, returns after that step
    /// without cleaning up, as a crash there would.
    pub(crate) fn write_steps(
        &self,
        target: &TargetId,
        pid: Pid,
        stop_after: Option<WriteStep>,
    ) -> Result<Written> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = target.pid_file_in(&self.pid_dir);
        let temp = self.pid_dir.join(format!(
            ".{}{PID_SUFFIX}.{}-{}{TEMP_SUFFIX}",
            target.as_str(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let stop = |step: WriteStep| stop_after == Some(step);
        let write_err =
            |op: &'static str, p: &Path, e| Error::io(op, p, e, &self.pid_dir, Access::Write);

        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PID_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| write_err("create temporary PID file", &temp, e))?;
        if stop(WriteStep::TempCreated) {
            return Ok(Written::Stopped);
        }
        let in_memory = self.in_memory;
        let mut fill = || -> std::io::Result<Stamp> {
            // Explicitly, so the umask cannot make the file unreadable to other tools.
            file.set_permissions(fs::Permissions::from_mode(PID_FILE_MODE))?;
            file.write_all(pid.to_file_content().as_bytes())?;
            if !in_memory {
                // (tmpfs has no device: its fsync does nothing, so it is not called.)
                file.sync_all()?;
            }
            Ok(Stamp::of(&file.metadata()?))
        };
        let stamp = match fill() {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(write_err("write temporary PID file", &temp, e));
            }
        };
        drop(file);
        if stop(WriteStep::TempSynced) {
            return Ok(Written::Stopped);
        }
        if let Err(e) = fs::rename(&temp, &path) {
            let _ = fs::remove_file(&temp);
            let mut err = write_err("rename temporary PID file into", &path, e);
            if let Error::Io { source, hint, .. } = &mut err {
                if matches!(
                    source.kind(),
                    ErrorKind::IsADirectory | ErrorKind::DirectoryNotEmpty
                ) {
                    *hint = Some(format!(
                        "a directory is in the way at {}; it is listed as a corrupt entry: \
                         remove it (dms cleanup) and retry",
                        path.display()
                    ));
                }
            }
            return Err(err);
        }
        if stop(WriteStep::Renamed) {
            return Ok(Written::Stopped);
        }
        self.sync_dir()?;
        if stop(WriteStep::DirSynced) {
            return Ok(Written::Stopped);
        }
        Ok(Written::Done(stamp))
    }

    /// fsyncs the PID directory, making renames and unlinks in it durable. Not on tmpfs:
    /// there is no device behind it, and its fsync does nothing.
    fn sync_dir(&self) -> Result<()> {
        if self.in_memory {
            return Ok(());
        }
        File::open(&self.pid_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.dir_error("fsync directory", e, Access::Read))
    }

    /// Removes `target`'s entry itself; see [`remove_path`].
    pub(crate) fn remove(&self, target: &TargetId) -> Result<bool> {
        self.remove_path(&target.pid_file_in(&self.pid_dir))
    }

    /// Removes a stray entry by file name. A name that is not valid UTF-8 is listed with
    /// U+FFFD in place of the bad bytes; such a lossy name is matched against the
    /// directory and removed when exactly one entry has it.
    pub(crate) fn remove_stray(&self, file_name: &str) -> Result<bool> {
        check_stray_name(file_name)?;
        let path = self.pid_dir.join(file_name);
        if fs::symlink_metadata(&path).is_ok() || !file_name.contains('\u{fffd}') {
            return self.remove_path(&path);
        }
        let mut matches = Vec::new();
        for dent in self.read_dir()? {
            let dent = dent.map_err(|e| self.dir_error("read directory", e, Access::Read))?;
            let name = dent.file_name();
            if String::from_utf8_lossy(name.as_bytes()) == file_name
                && matches!(classify(&name), Name::Stray { .. })
            {
                matches.push(dent.path());
            }
        }
        match matches.as_slice() {
            [] => Ok(false),
            [one] => self.remove_path(one),
            _ => Err(Error::Invalid(format!(
                "{} entries in {} are listed as {file_name:?} (their names are not UTF-8); \
                 remove the right one by hand",
                matches.len(),
                self.pid_dir.display()
            ))),
        }
    }

    /// Removes the entry at `path` itself, never what it points to: `unlink` for a file,
    /// symlink, FIFO or socket; `rmdir` for a directory, which must be empty (dms never
    /// deletes a directory tree it did not create). Then fsyncs the directory.
    fn remove_path(&self, path: &Path) -> Result<bool> {
        // `unlink` removes anything but a directory (a symlink itself, never its target);
        // a directory answers EISDIR and gets `rmdir`.
        let result = match fs::remove_file(path) {
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => fs::remove_dir(path),
            other => other,
        };
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {
                return Err(Error::Io {
                    op: "remove directory",
                    path: path.to_owned(),
                    source: e,
                    hint: Some(
                        "a non-empty directory stands where a PID file belongs; dms does \
                         not delete directory trees: inspect it and remove it by hand"
                            .into(),
                    ),
                })
            }
            Err(e) => return Err(Error::io("remove", path, e, &self.pid_dir, Access::Write)),
        }
        self.sync_dir()?;
        Ok(true)
    }

    /// Every entry, sorted by file name without `.pid`.
    pub(crate) fn list(&self) -> Result<Vec<Entry>> {
        Ok(self.list_stamped()?.into_iter().map(|(e, _)| e).collect())
    }

    /// Every entry with the stamp of each valid PID file, sorted like [`Self::list`].
    pub(crate) fn list_stamped(&self) -> Result<Vec<(Entry, Option<Stamp>)>> {
        let mut entries = Vec::new();
        self.scan(|entry, stamp| {
            entries.push((entry, stamp));
            true
        })?;
        entries.sort_by(|(a, _), (b, _)| entry_key(a).cmp(entry_key(b)));
        Ok(entries)
    }

    /// Every entry, in directory order, handed over in batches on `batches` as it is
    /// read; stops early when the receiver is gone.
    pub(crate) fn list_batches(
        &self,
        batches: &tokio::sync::mpsc::Sender<Vec<Entry>>,
    ) -> Result<()> {
        let mut batch = Vec::with_capacity(LIST_BATCH);
        let mut open = true;
        self.scan(|entry, _| {
            batch.push(entry);
            if batch.len() == LIST_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                open = batches.blocking_send(full).is_ok();
            }
            open
        })?;
        if open && !batch.is_empty() {
            // A receiver gone is not an error of the store.
            let _ = batches.blocking_send(batch);
        }
        Ok(())
    }

    /// Reads every entry in directory order and hands it to `each` (with the stamp of a
    /// valid PID file) until `each` returns false.
    fn scan(&self, mut each: impl FnMut(Entry, Option<Stamp>) -> bool) -> Result<()> {
        // One descriptor of the directory, read with getdents64 into one buffer (no
        // allocation per name), and each file opened relative to it (as the floor scan
        // does): the path is not walked again for every file, and a file's full path is
        // only made for a corrupt entry or an error.
        let dirfd = rustix::fs::open(
            &self.pid_dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| self.dir_error("open directory", e.into(), Access::Read))?;
        // Room for over a hundred of the longest names (a dirent is at most 280 bytes).
        let mut buf = Vec::with_capacity(DIRENT_BUF);
        let mut dir = rustix::fs::RawDir::new(&dirfd, buf.spare_capacity_mut());
        while let Some(dent) = dir.next() {
            let dent =
                dent.map_err(|e| self.dir_error("read directory", e.into(), Access::Read))?;
            let name = OsStr::from_bytes(dent.file_name().to_bytes());
            let go_on = match classify(name) {
                Name::Ignored => true,
                Name::Stray { file_name, reason } => each(Entry::Stray { file_name, reason }, None),
                Name::Target(target) => {
                    let (lookup, stamp) = read_pid_file_at(&dirfd, name, &self.pid_dir)?;
                    let state = match lookup {
                        Lookup::Present(r) => EntryState::Valid(r),
                        Lookup::Corrupt(c) => EntryState::Corrupt(c),
                        // Removed between readdir and open: it is gone, so not listed.
                        Lookup::Absent => continue,
                    };
                    each(Entry::Target { target, state }, stamp)
                }
            };
            if !go_on {
                break;
            }
        }
        Ok(())
    }
}

/// Bytes of the buffer [`PidDir::scan`] reads directory entries into.
const DIRENT_BUF: usize = 32 * 1024;

/// Entries per batch of [`PidDir::list_batches`].
const LIST_BATCH: usize = 256;

/// The sort key of an entry: its name without `.pid`.
pub(crate) fn entry_key(e: &Entry) -> &str {
    match e {
        Entry::Target { target, .. } => target.as_str(),
        Entry::Stray { file_name, .. } => sort_key(file_name),
    }
}

fn is_temp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".")
        && b.ends_with(TEMP_SUFFIX.as_bytes())
        && b.windows(PID_SUFFIX.len() + 1).any(|w| w == b".pid.")
}

/// Creates `dir` (and missing parents) with mode 0755, set explicitly; an existing
/// directory is left as it is.
fn create_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        // A symlink to a directory is the administrator's choice: follow it.
        Ok(m) if m.file_type().is_symlink() && dir.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::Io {
                op: "use as a directory",
                path: dir.to_owned(),
                source: std::io::Error::from(ErrorKind::NotADirectory),
                hint: Some("something that is not a directory is in the way; move it aside or choose another --run-dir".into()),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            let parent = dir.parent().unwrap_or(dir);
            return Err(Error::io("inspect", dir, e, parent, Access::Read));
        }
    }
    let parent = dir.parent().unwrap_or(dir);
    let created = fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)));
    created.map_err(|e| Error::io("create directory", dir, e, parent, Access::Write))
}

/// Reads one PID file without following a symlink or blocking on a FIFO.
///
/// Open errors: `ENOENT` is absent; `ELOOP` (a symlink), `ENXIO`/`EOPNOTSUPP` (a socket)
/// and `EACCES`/`EPERM` (unreadable) are corrupt entries; anything else (EIO, EMFILE, ...)
/// is an error, because it says nothing about the entry.
pub(crate) fn read_pid_file(path: &Path, dir: &Path) -> Result<(Lookup, Option<Stamp>)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    read_opened_pid_file(file, &|| Cow::Borrowed(path), dir)
}

/// [`read_pid_file`] of the entry `name` of the open directory `dirfd` (the directory
/// `dir`): opened relative to the directory, so a listing does not walk the whole path
/// again for every file; the file's path is only made for a corrupt entry or an error.
pub(crate) fn read_pid_file_at(
    dirfd: &std::os::fd::OwnedFd,
    name: &OsStr,
    dir: &Path,
) -> Result<(Lookup, Option<Stamp>)> {
    use rustix::fs::{Mode, OFlags};
    let file = rustix::fs::openat(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(fs::File::from)
    .map_err(std::io::Error::from);
    read_opened_pid_file(file, &|| Cow::Owned(dir.join(name)), dir)
}

/// The rest of [`read_pid_file`], given the result of opening the file.
fn read_opened_pid_file<'p>(
    file: std::io::Result<fs::File>,
    path: &dyn Fn() -> Cow<'p, Path>,
    dir: &Path,
) -> Result<(Lookup, Option<Stamp>)> {
    let corrupt = |reason: String| {
        Ok((
            Lookup::Corrupt(Corrupt {
                path: path().into_owned(),
                reason,
            }),
            None,
        ))
    };
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok((Lookup::Absent, None)),
                Some(libc::ELOOP) => {
                    let to = fs::read_link(path())
                        .map(|t| format!(" to {}", t.display()))
                        .unwrap_or_default();
                    corrupt(format!("is a symbolic link{to} (never followed)"))
                }
                Some(libc::ENXIO | libc::EOPNOTSUPP) => {
                    let kind = fs::symlink_metadata(path())
                        .map(|m| describe(&m.file_type()))
                        .unwrap_or("a special file");
                    corrupt(format!("is {kind}, not a regular file"))
                }
                Some(libc::EACCES | libc::EPERM) => corrupt(format!(
                    "cannot be read: permission denied for {}",
                    effective_user()
                )),
                _ => Err(Error::io("read PID file", &path(), e, dir, Access::Read)),
            };
        }
    };
    // fstat(2) of the open file (type, size, inode, mtime): on 64-bit Linux one plain
    // `fstat`, lighter than the `statx` behind `File::metadata`.
    let meta = rustix::fs::fstat(&file).map_err(|e| {
        Error::io(
            "fstat PID file",
            &path(),
            std::io::Error::from(e),
            dir,
            Access::Read,
        )
    })?;
    if rustix::fs::FileType::from_raw_mode(meta.st_mode) != rustix::fs::FileType::RegularFile {
        let kind = file
            .metadata()
            .map(|m| describe(&m.file_type()))
            .unwrap_or("a special file");
        return corrupt(format!("is {kind}, not a regular file"));
    }
    let size = u64::try_from(meta.st_size).unwrap_or(0);
    if size > MAX_PID_FILE_LEN {
        return corrupt(format!(
            "is {size} bytes long; a PID file holds at most {MAX_PID_FILE_LEN}"
        ));
    }
    // Up to one byte more than a PID file may hold. A read that returns all the bytes
    // fstat reported ends it (one read instead of a second one to see end of file); a
    // file that grew meanwhile shows as more bytes, up to the one too many.
    let mut buf = [0u8; MAX_PID_FILE_LEN as usize + 1];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read PID file", &path(), e, dir, Access::Read)),
        }
        if len as u64 == size {
            break;
        }
    }
    let buf = &buf[..len];
    if buf.len() as u64 > MAX_PID_FILE_LEN {
        return corrupt(format!(
            "grew past {MAX_PID_FILE_LEN} bytes while being read; a PID file holds at most that"
        ));
    }
    match Pid::parse(buf) {
        Ok(pid) => Ok((
            Lookup::Present(Record {
                written_at: Some(mtime_of_stat(&meta)),
                ..Record::bare(pid)
            }),
            Some(Stamp::of_stat(&meta)),
        )),
        Err(e) => corrupt(e.to_string()),
    }
}

/// The mtime in an fstat(2) result.
fn mtime_of_stat(st: &rustix::fs::Stat) -> SystemTime {
    let nanos = u32::try_from(st.st_mtime_nsec).map_or(0, |n| n.min(999_999_999));
    match u64::try_from(st.st_mtime) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
        // Before 1970 (a file touched by hand): seconds down, nanoseconds up.
        Err(_) => {
            SystemTime::UNIX_EPOCH - Duration::from_secs(st.st_mtime.unsigned_abs())
                + Duration::from_nanos(nanos.into())
        }
    }
}

fn describe(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Whether `dir` is on tmpfs (`statfs`); `false` when that cannot be told.
fn on_memory_fs(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

/// Runs blocking `f` on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(op: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Cancelled { op }),
    }
}

/// A [`PidStore`] that keeps only PID files: `<run-dir>/s3/<target>.pid`, each holding
/// `PID\n`, the format other tools and the existing deployment read and write.
///
/// - **put** is atomic and durable: a temporary file `.<target>.pid.<pid>-<n>.tmp` in the
///   same directory, created exclusively with mode 0644 (set explicitly, whatever the
///   umask), gets `PID\n` and an fsync, is renamed over `<target>.pid`, then the
///   directory is fsynced. A crash leaves either the old file or the new one, and at worst
///   a temporary file, which is never listed and is removed by a later
///   [`open`](Self::open) once it is older than 5 minutes (younger ones may be a write in
///   progress in another process). `put` over a symlink replaces the link, never its
///   target; `put` over a directory fails and says to remove it.
/// - **get/list** open with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY` and `fstat`:
///   a symlink, FIFO, socket, device, directory, a file over 64 bytes, an unreadable file
///   or content that is not one valid PID are corrupt entries with a reason. They are
///   never followed and never block. Identity and metadata are not kept (`None`/empty);
///   `written_at` is the file's mtime.
/// - **remove** removes the entry itself: `unlink` for a file, symlink (never its
///   target), FIFO or socket; `rmdir` for a directory named `<target>.pid`, which must be
///   empty (a non-empty one is refused with an error: dms never deletes a tree it did not
///   create). Then the directory is fsynced.
/// - Names: files not ending in `.pid` are ignored; a `*.pid` file whose name is not a
///   valid target ID is an [`Entry::Stray`].
/// - Threads: `list` and `remove_stray` run on tokio's blocking pool. So do `put`, `get`
///   and `remove`, except on a memory file system (tmpfs, like production's `/run`): there they touch one small file and never wait for a device (`fsync`
///   returns at once), so they run on the calling task, which is cheaper than the trip
///   through the pool (that trip dominated startup over thousands of PID files).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use dms_store::{Lookup, Pid, PidFileStore, PidStore, Record, TargetId};
/// let run_dir = tempfile::tempdir()?;
/// let store = PidFileStore::open(run_dir.path())?;
/// let t: TargetId = "target-123".parse()?;
/// store.put(&t, &Record::bare(Pid::new(12345)?)).await?;
/// assert_eq!(std::fs::read_to_string(run_dir.path().join("s3/target-123.pid"))?, "12345\n");
/// assert!(matches!(store.get(&t).await?, Lookup::Present(r) if r.pid.get() == 12345));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct PidFileStore {
    dir: Arc<PidDir>,
}

impl PidFileStore {
    /// Opens the store in `run_dir`, creating `run_dir` and `run_dir/s3` (mode 0755) when
    /// missing, and removing temporary files left by interrupted writes.
    ///
    /// This does blocking I/O: call it at startup or from `spawn_blocking`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when a directory cannot be created or read, with
    /// the user who needs access when permission is denied. [`Error::Unsafe`] when the
    /// run directory or its `s3/`, `locks/` or `logs/` is writable by every user, owned
    /// by another unprivileged user, or (for the subdirectories) a symbolic link; the
    /// message says how to fix it (e.g. `chmod o-w /run/dms`).
    pub fn open(run_dir: &Path) -> Result<PidFileStore> {
        Ok(PidFileStore {
            dir: Arc::new(PidDir::open(run_dir)?),
        })
    }

    /// [`PidFileStore::open`] for a reader that changes nothing in `s3/` (`dms status`):
    /// the same checks, but stale temporary files of interrupted writes are left for the
    /// next [`PidFileStore::open`] to remove (a listing never shows them).
    pub fn open_for_reading(run_dir: &Path) -> Result<PidFileStore> {
        Ok(PidFileStore {
            dir: Arc::new(PidDir::open_unswept(run_dir)?),
        })
    }

    /// The run directory this store was opened in.
    pub fn run_dir(&self) -> &Path {
        self.dir.run_dir()
    }
}

#[async_trait]
impl PidStore for PidFileStore {
    async fn put(&self, target: &TargetId, record: &Record) -> Result<()> {
        if self.dir.in_memory() {
            return self.dir.write(target, record.pid).map(drop);
        }
        let (dir, target, pid) = (self.dir.clone(), target.clone(), record.pid);
        blocking("put", move || dir.write(&target, pid).map(drop)).await
    }

    async fn get(&self, target: &TargetId) -> Result<Lookup> {
        if self.dir.in_memory() {
            return self.dir.read(target).map(|(l, _)| l);
        }
        let (dir, target) = (self.dir.clone(), target.clone());
        blocking("get", move || dir.read(&target).map(|(l, _)| l)).await
    }

    async fn remove(&self, target: &TargetId) -> Result<bool> {
        if self.dir.in_memory() {
            return self.dir.remove(target);
        }
        let (dir, target) = (self.dir.clone(), target.clone());
        blocking("remove", move || dir.remove(&target)).await
    }

    async fn list(&self) -> Result<Vec<Entry>> {
        let dir = self.dir.clone();
        blocking("list", move || dir.list()).await
    }

    async fn list_batches(&self, batches: tokio::sync::mpsc::Sender<Vec<Entry>>) -> Result<()> {
        let dir = self.dir.clone();
        blocking("list", move || dir.list_batches(&batches)).await
    }

    async fn remove_stray(&self, file_name: &str) -> Result<bool> {
        let (dir, name) = (self.dir.clone(), file_name.to_owned());
        blocking("remove stray", move || dir.remove_stray(&name)).await
    }

    fn pid_dir(&self) -> &Path {
        self.dir.pid_dir()
    }

    fn exists(&self, target: &TargetId) -> bool {
        self.dir.exists(target)
    }

    fn backend_name(&self) -> &'static str {
        "pidfile"
    }
}

#[cfg(test)]
mod tests {
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
}
