//! [`PidDir`]: the PID directory and the synchronous operations on it (write, read,
//! remove, scan), shared by both file-backed stores.

use super::read::*;
use super::*;
use crate::error::Access;
use crate::names::{check_stray_name, classify, Name, PID_SUFFIX};
use crate::{Entry, Error, Pid, Result, Stored, TargetId};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

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
    pub(crate) fn read(&self, target: &TargetId) -> Result<(Option<Stored>, Option<Stamp>)> {
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

    /// Every entry with the stamp of each valid PID file, sorted by [`Entry::name`].
    pub(crate) fn list_stamped(&self) -> Result<Vec<(Entry, Option<Stamp>)>> {
        let mut entries = Vec::new();
        self.scan(|entry, stamp| {
            entries.push((entry, stamp));
            true
        })?;
        entries.sort_by(|(a, _), (b, _)| a.name().cmp(b.name()));
        Ok(entries)
    }

    /// Every entry, in directory order, handed over in batches on `batches` as it is
    /// read; stops early when the receiver is gone.
    pub(crate) fn list(&self, batches: &tokio::sync::mpsc::Sender<Vec<Entry>>) -> Result<()> {
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
                    // Removed between readdir and open: it is gone, so not listed.
                    let Some(state) = lookup else { continue };
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

/// Whether `dir` is on tmpfs (`statfs`); `false` when that cannot be told.
pub(super) fn on_memory_fs(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}
