//! Opening the helper's log file safely, and the checks a spawn can make before it
//! forks ([`preflight`]).
//!
//! The log is opened `O_NONBLOCK` (a FIFO with no reader fails at once with `ENXIO`
//! instead of blocking dms while it holds the target's lock), `O_NOFOLLOW` (a symlink
//! planted at `logs/T.log` by a member of a group-writable run directory cannot aim a
//! root helper's output at another file), and its type is checked on the open
//! descriptor: a regular file or a character device (such as `/dev/null`), nothing
//! else. `O_NONBLOCK` is then cleared, so the helper's writes behave as usual.

use crate::{ProcError, SpawnSpec};
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What a path is, in words, for an error message (`lstat`, so a symlink is named).
fn kind_of(path: &Path) -> Option<&'static str> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some(kind_name(FileType::from_raw_mode(
        std::os::unix::fs::MetadataExt::mode(&m),
    )))
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

fn log_error(path: &Path, kind: io::ErrorKind, msg: String) -> ProcError {
    ProcError::Log {
        path: path.to_owned(),
        source: io::Error::new(kind, msg),
    }
}

/// Opens (creating, 0644) the log file at `path` for appending, refusing anything but a
/// regular file or a character device, and never following a symlink at `path` or
/// blocking on a FIFO.
pub(crate) fn open_log(path: &Path) -> Result<File, ProcError> {
    let opened = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            let errno = e.raw_os_error();
            // ELOOP: a symlink (O_NOFOLLOW); ENXIO: a FIFO without a reader or a socket;
            // EISDIR: a directory. Say what the path is and what to pass instead.
            if matches!(
                errno,
                Some(libc::ELOOP) | Some(libc::ENXIO) | Some(libc::EISDIR)
            ) {
                if let Some(kind) = kind_of(path) {
                    return Err(log_error(
                        path,
                        e.kind(),
                        format!(
                            "it is {kind}, not a regular file (symbolic links are not \
                             followed, FIFOs and sockets are refused); remove it or pass \
                             a regular file as the log"
                        ),
                    ));
                }
            }
            return Err(ProcError::Log {
                path: path.to_owned(),
                source: e,
            });
        }
    };
    let stat = rustix::fs::fstat(&file).map_err(|e| ProcError::Log {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let t = FileType::from_raw_mode(stat.st_mode);
    if !matches!(t, FileType::RegularFile | FileType::CharacterDevice) {
        return Err(log_error(
            path,
            io::ErrorKind::InvalidInput,
            format!(
                "it is {}, not a regular file or a character device; remove it or pass \
                 a regular file as the log",
                kind_name(t)
            ),
        ));
    }
    // Back to blocking writes for the helper (a terminal, say, would otherwise see EAGAIN).
    let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| ProcError::Log {
        path: path.to_owned(),
        source: e.into(),
    })?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK).map_err(|e| ProcError::Log {
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(file)
}

/// The checks a spawn of `spec` would fail on, made without forking: the program is
/// found (a bare name in the `PATH` of its environment) and is an executable regular
/// file, and the log opens as [`open_log`] opens it (creating it when missing).
pub(crate) fn preflight(spec: &SpawnSpec) -> Result<(), ProcError> {
    let path = super::resolve_program(spec)?;
    let exec_err = |kind: io::ErrorKind, msg: String| ProcError::Exec {
        program: spec.program.clone(),
        source: io::Error::new(kind, msg),
    };
    match std::fs::metadata(&path) {
        Ok(m) if !m.is_file() => {
            return Err(exec_err(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ))
        }
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            return Err(exec_err(
                io::ErrorKind::PermissionDenied,
                format!("{} is not executable (no x bit)", path.display()),
            ))
        }
        Ok(_) => {}
        Err(e) => {
            return Err(ProcError::Exec {
                program: spec.program.clone(),
                source: e,
            })
        }
    }
    match rustix::fs::access(&path, rustix::fs::Access::EXEC_OK) {
        Ok(()) => {}
        Err(Errno::ACCESS) => {
            return Err(exec_err(
                io::ErrorKind::PermissionDenied,
                format!("{} is not executable by this user", path.display()),
            ))
        }
        Err(_) => {} // left to execve to report
    }
    open_log(&spec.log).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the refusal says, which is the log error's cause (its `source`).
    fn cause(e: ProcError) -> String {
        std::error::Error::source(&e)
            .expect("a log error has a cause")
            .to_string()
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        let err = cause(open_log(&fifo).unwrap_err());
        assert!(err.contains("a FIFO"), "{err}");
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = cause(open_log(&link).unwrap_err());
        assert!(err.contains("a symbolic link"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn regular_files_and_dev_null_open_blocking() {
        let dir = tempfile::tempdir().unwrap();
        for p in [dir.path().join("log"), "/dev/null".into()] {
            let f = open_log(&p).unwrap();
            let flags = rustix::fs::fcntl_getfl(&f).unwrap();
            assert!(!flags.contains(OFlags::NONBLOCK), "{}", p.display());
        }
        let err = cause(open_log(dir.path()).unwrap_err());
        assert!(err.contains("a directory"), "{err}");
    }
}
