//! Bounding the helpers' logs: the run dir is on tmpfs in production, that is, in RAM,
//! so a chatty helper must not fill it.
//!
//! When a log is written (see [`super::watch`]: within [`CHECK_EVERY`]) the daemon looks
//! at it: the log of each helper it tracks (the recorded `--log FILE`, else
//! `<run-dir>/logs/T.log`) and every `*.log` file in `<run-dir>/logs/` (the helpers of
//! other dms processes write there too). A log over the
//! bound has its tail (the last `max` bytes, from a line start) kept as `T.log.1`, the
//! one older generation, and is truncated in place: the helper's `O_APPEND` writes go on
//! at the new end. So a log stays under `max` plus what its helper writes between two
//! checks (at most 2 s), and its `.1` under `max`.
//!
//! What the helper writes between the last read of the tail and the truncation (a few
//! microseconds: nothing else is done in between) is lost, as with logrotate's
//! `copytruncate`: truncating a file that another process appends to cannot be made
//! atomic with a copy of it.

use super::{kind_of, older_generation};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the logs are checked (serve.md asks for a truncation within 2 s of a log
/// passing its bound).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What [`bound_log`] did to one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounded {
    /// Nothing is at the path.
    Missing,
    /// Not a regular file (a device such as `/dev/null`, a symbolic link, a FIFO): left
    /// alone.
    NotRegular(&'static str),
    /// Within the bound: left alone.
    Within(u64),
    /// Over the bound: `kept` bytes of its tail went to `.1`, the file was truncated.
    Truncated {
        /// The log's size before.
        size: u64,
        /// The bytes kept in `.1`.
        kept: u64,
    },
}

/// Keeps the log at `path` within `max` bytes: when it is larger, its last `max` bytes
/// (from the first line start among them, when there is one) become `path.1`, replacing
/// the older generation, and the file is truncated to 0 in place (its inode stays, so
/// the helper's descriptor goes on writing into it).
///
/// The tail is read, then the file truncated at once, then `.1` written (a temporary
/// file renamed over it): the truncation comes as soon after the read as it can. If `.1`
/// cannot be written, the log is truncated anyway (the bound protects the machine's
/// memory) and the error returned.
pub fn bound_log(path: &Path, max: u64) -> io::Result<Bounded> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Bounded::Missing),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_file() {
        return Ok(Bounded::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() <= max {
        return Ok(Bounded::Within(meta.len()));
    }
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Bounded::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Bounded::NotRegular("a symbolic link"))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(Bounded::NotRegular(kind_of(meta.file_type())));
    }
    let size = meta.len();
    if size <= max {
        return Ok(Bounded::Within(size));
    }
    // From one byte before the cut, to see whether the cut falls on a line start; then
    // to the end, wherever it is now (the helper goes on writing).
    let from = size - max - 1;
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity(max as usize + 1 + 64 * 1024);
    Read::by_ref(&mut file)
        .take(max + 1 + 64 * 1024 * 1024)
        .read_to_end(&mut tail)?;
    file.set_len(0)?;
    // Keep at most the last `max` bytes, from a line start when one is among them.
    let over = tail.len().saturating_sub(max as usize);
    let mut keep = &tail[over..];
    let at_line_start = over > 0 && tail[over - 1] == b'\n';
    if !at_line_start {
        if let Some(nl) = keep.iter().position(|&b| b == b'\n') {
            if nl + 1 < keep.len() {
                keep = &keep[nl + 1..];
            }
        }
    }
    write_older(path, keep, meta.mode() & 0o7777)?;
    Ok(Bounded::Truncated {
        size,
        kept: keep.len() as u64,
    })
}

/// Writes `bytes` as `path.1` (temporary file, rename), with the log's `mode`.
fn write_older(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let older = older_generation(path);
    let mut tmp_name = older.clone().into_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        drop(f);
        std::fs::rename(&tmp, &older)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// One pass: bounds ([`bound_log`]) every `*.log` regular file directly in `logs_dir`
/// that is over `max`, then each of `others` (the logs tracked helpers write elsewhere).
/// The files of the logs directory are sized through the directory (`fstatat`), so a
/// pass over 1,000 idle logs costs one system call each. Logs what it truncated and what
/// failed; returns how many it truncated.
pub fn bound_pass(logs_dir: &Path, others: &[PathBuf], max: u64) -> usize {
    let mut truncated = 0;
    if let Ok(dir) = std::fs::read_dir(logs_dir) {
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.as_encoded_bytes();
            if !name.ends_with(b".log") || name.starts_with(b".") {
                continue;
            }
            // From the directory entry: not followed, a symlink is not a file.
            let over = e.file_type().is_ok_and(|t| t.is_file())
                && e.metadata().is_ok_and(|m| m.len() > max);
            if over {
                truncated += usize::from(bound_one(&e.path(), max));
            }
        }
    }
    for p in others {
        truncated += usize::from(bound_one(p, max));
    }
    truncated
}

/// [`bound_log`] with what it did logged; true when it truncated.
pub(super) fn bound_one(path: &Path, max: u64) -> bool {
    match bound_log(path, max) {
        Ok(Bounded::Truncated { size, kept }) => {
            tracing::info!(
                log = %path.display(),
                size,
                kept,
                "log over --log-max-bytes: its tail kept as .1, the file truncated"
            );
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(
                log = %path.display(),
                error = %e,
                "cannot bound a helper's log"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// Opens `path` as a helper's log is opened (`O_APPEND`).
    fn open_append(path: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
    }

    #[test]
    fn a_log_over_the_bound_keeps_its_tail_and_is_truncated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        let mut w = open_append(&p).unwrap();
        for i in 0..1000 {
            writeln!(w, "line {i:04}").unwrap(); // 10 bytes a line
        }
        assert_eq!(bound_log(&p, 20_000).unwrap(), Bounded::Within(10_000));
        assert_eq!(
            bound_log(&p, 95).unwrap(),
            Bounded::Truncated {
                size: 10_000,
                kept: 90
            }
        );
        let older = std::fs::read_to_string(older_generation(&p)).unwrap();
        let want: String = (991..1000).map(|i| format!("line {i:04}\n")).collect();
        assert_eq!(older, want);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        // The writer's next line lands at the new end, in the same file.
        writeln!(w, "after").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "after\n");
        let lines = super::super::last_lines(&p, 3).unwrap();
        assert_eq!(lines, b"line 0998\nline 0999\nafter\n");
    }

    #[test]
    fn a_cut_on_a_line_start_keeps_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        std::fs::write(&p, "aaaa\nbbbb\ncccc\n").unwrap();
        bound_log(&p, 10).unwrap();
        assert_eq!(
            std::fs::read_to_string(older_generation(&p)).unwrap(),
            "bbbb\ncccc\n"
        );
    }

    #[test]
    fn devices_links_and_missing_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            bound_log(Path::new("/dev/null"), 1).unwrap(),
            Bounded::NotRegular("a character device")
        );
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "x".repeat(100)).unwrap();
        let link = dir.path().join("l.log");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert_eq!(
            bound_log(&link, 1).unwrap(),
            Bounded::NotRegular("a symbolic link")
        );
        assert_eq!(std::fs::metadata(&outside).unwrap().len(), 100);
        assert_eq!(
            bound_log(&dir.path().join("none.log"), 1).unwrap(),
            Bounded::Missing
        );
    }

    #[test]
    fn a_pass_bounds_the_logs_dir_and_the_other_logs() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let big = "x\n".repeat(100);
        for name in ["a.log", "a.log.1", "notes.txt", ".hidden.log"] {
            std::fs::write(logs.join(name), &big).unwrap();
        }
        std::fs::write(logs.join("small.log"), "x\n").unwrap();
        let outside = dir.path().join("own.log");
        std::fs::write(&outside, &big).unwrap();
        std::os::unix::fs::symlink(&outside, logs.join("link.log")).unwrap();
        assert_eq!(bound_pass(&logs, std::slice::from_ref(&outside), 10), 2);
        let len = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert_eq!(len(&logs.join("a.log")), 0);
        assert_eq!(len(&logs.join("a.log.1")), 10, "the new older generation");
        assert_eq!(len(&logs.join("notes.txt")), 200);
        assert_eq!(len(&logs.join(".hidden.log")), 200);
        assert_eq!(len(&logs.join("small.log")), 2);
        assert_eq!(len(&outside), 0, "bounded as a tracked helper's log");
        assert_eq!(len(&dir.path().join("own.log.1")), 10);
    }
}
