//! Reading one PID file safely: no symlink followed, no FIFO blocked on, any odd file
//! a corrupt entry with a reason.

use super::*;
use crate::error::{effective_user, Access};
use crate::{Corrupt, Error, Pid, Record, Result, Stored};
use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Reads one PID file without following a symlink or blocking on a FIFO.
///
/// Open errors: `ENOENT` is absent; `ELOOP` (a symlink), `ENXIO`/`EOPNOTSUPP` (a socket)
/// and `EACCES`/`EPERM` (unreadable) are corrupt entries; anything else (EIO, EMFILE, ...)
/// is an error, because it says nothing about the entry.
pub(crate) fn read_pid_file(path: &Path, dir: &Path) -> Result<(Option<Stored>, Option<Stamp>)> {
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
) -> Result<(Option<Stored>, Option<Stamp>)> {
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
pub(super) fn read_opened_pid_file<'p>(
    file: std::io::Result<fs::File>,
    path: &dyn Fn() -> Cow<'p, Path>,
    dir: &Path,
) -> Result<(Option<Stored>, Option<Stamp>)> {
    let corrupt = |reason: String| {
        Ok((
            Some(Stored::Corrupt(Corrupt {
                path: path().into_owned(),
                reason,
            })),
            None,
        ))
    };
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok((None, None)),
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
            Some(Stored::Valid(Record {
                written_at: Some(mtime_of_stat(&meta)),
                ..Record::bare(pid)
            })),
            Some(Stamp::of_stat(&meta)),
        )),
        Err(e) => corrupt(e.to_string()),
    }
}

/// The mtime in an fstat(2) result.
pub(super) fn mtime_of_stat(st: &rustix::fs::Stat) -> SystemTime {
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

pub(super) fn describe(ft: &fs::FileType) -> &'static str {
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
