//! Helper logs (serve.md "Helper logs"): reading the last lines of a log across its older
//! generation (`T.log.1`), for `GET /v1/targets/{t}/logs` and `dms logs`, and bounding
//! every log in the daemon ([`bound`]).
//!
//! A helper writes its output straight into its log file, opened `O_APPEND` (never a
//! pipe, so it outlives the daemon). When a log passes the bound, its tail is moved to
//! `T.log.1` and the file is truncated in place; the helper's next write lands at the new
//! end. So the latest lines are in `T.log`, the ones before them at the end of
//! `T.log.1`, and [`last_lines`] reads both.
//!
//! Nothing here follows a symbolic link or opens anything but a regular file (a FIFO
//! would block a reader, a device would never end).

pub mod bound;
pub(crate) mod endpoint;
pub mod watch;

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The default bound of one log file (16 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The default number of lines of `GET /v1/targets/{t}/logs` and `dms logs`.
pub const DEFAULT_LINES: usize = 100;

/// The most lines one request may ask for.
pub const MAX_LINES: usize = 1_000_000;

/// How much is read at a time, from the end backwards.
const CHUNK: u64 = 64 * 1024;

/// `T.log.1`: the older generation of the log at `path`.
pub fn older_generation(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".1");
    PathBuf::from(s)
}

/// Why a log cannot be read (the cause of [`LogError::Io`] is its `source()` only:
/// render it with [`crate::render`]).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Neither the log nor its older generation exists.
    #[error("no log at {path} (nor {path}.1): the target's helper has written nothing there")]
    Missing {
        /// The log's path.
        path: PathBuf,
    },
    /// Something other than a regular file is at the path.
    #[error("{path} is {what}, not a regular file: dms reads only regular log files")]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What is there ("a symbolic link", "a character device", ...).
        what: &'static str,
    },
    /// Reading failed.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What kind of file `ft` is, in words.
pub(crate) fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "a regular file"
    }
}

/// Opens `path` for reading if it is a regular file: `Ok(None)` when nothing is there.
/// Never follows a symbolic link, never blocks on a FIFO.
pub fn open_regular(path: &Path) -> Result<Option<File>, LogError> {
    let io_err = |source| LogError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(LogError::NotRegular {
                path: path.to_owned(),
                what: "a symbolic link",
            })
        }
        Err(e) => return Err(io_err(e)),
    };
    let ft = file.metadata().map_err(io_err)?.file_type();
    if !ft.is_file() {
        return Err(LogError::NotRegular {
            path: path.to_owned(),
            what: kind_of(ft),
        });
    }
    Ok(Some(file))
}

/// The last `n` lines of the first `size` bytes of `file` (a last line without a
/// newline counts), and how many lines that is (fewer than `n` when it holds fewer).
fn tail_of(file: &File, n: usize, size: u64) -> io::Result<(Vec<u8>, usize)> {
    if n == 0 || size == 0 {
        return Ok((Vec::new(), 0));
    }
    // Chunks from the end, newest first.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut end = size;
    let mut newlines = 0usize;
    let mut cut = None;
    while end > 0 && cut.is_none() {
        let start = end.saturating_sub(CHUNK);
        let mut buf = vec![0u8; (end - start) as usize];
        let got = read_full_at(file, &mut buf, start)?;
        buf.truncate(got);
        let mut scan = &buf[..];
        if chunks.is_empty() && scan.last() == Some(&b'\n') {
            // The newline ending the last line does not start another.
            scan = &scan[..scan.len() - 1];
        }
        for (i, &b) in scan.iter().enumerate().rev() {
            if b == b'\n' {
                newlines += 1;
                if newlines == n {
                    cut = Some(i + 1);
                    break;
                }
            }
        }
        chunks.push(buf);
        end = start;
    }
    let lines = if cut.is_some() { n } else { newlines + 1 };
    let mut out = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for (i, c) in chunks.iter().rev().enumerate() {
        let from = if i == 0 { cut.unwrap_or(0) } else { 0 };
        out.extend_from_slice(&c[from..]);
    }
    Ok((out, lines))
}

/// Reads `buf.len()` bytes at `offset`, or fewer at the end of the file (which a
/// truncation may move while we read).
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The last lines of a log ([`last_lines_from`]), and where the log ended when they
/// were read, for a reader that follows it.
#[derive(Debug)]
pub struct Tail {
    /// The lines, as written (not decoded).
    pub bytes: Vec<u8>,
    /// The log (`None` when only its older generation exists) and its size when read:
    /// what it holds after that offset came later.
    pub current: Option<(File, u64)>,
}

/// The last `n` lines of the log at `path`, read across its older generation
/// (`path.1`) when the log itself holds fewer, so a truncation never hides the latest
/// lines. The bytes are as written (not decoded); each line ends with `\n`, except the
/// last one when the helper has not finished it.
///
/// [`LogError::Missing`] when neither file exists; an empty log gives no bytes.
pub fn last_lines(path: &Path, n: usize) -> Result<Vec<u8>, LogError> {
    last_lines_from(path, n).map(|t| t.bytes)
}

/// [`last_lines`], keeping the open log and the offset where the lines end.
pub fn last_lines_from(path: &Path, n: usize) -> Result<Tail, LogError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| LogError::Io { path: p, source }
    };
    let current = match open_regular(path)? {
        Some(f) => {
            let size = f.metadata().map_err(io_err(path))?.len();
            Some((f, size))
        }
        None => None,
    };
    let (mut out, got) = match &current {
        Some((f, size)) => tail_of(f, n, *size).map_err(io_err(path))?,
        None => (Vec::new(), 0),
    };
    if got < n {
        let older_path = older_generation(path);
        match open_regular(&older_path)? {
            Some(f) => {
                let size = f.metadata().map_err(io_err(&older_path))?.len();
                let (mut older, _) = tail_of(&f, n - got, size).map_err(io_err(&older_path))?;
                if !older.is_empty() && older.last() != Some(&b'\n') && !out.is_empty() {
                    older.push(b'\n');
                }
                older.append(&mut out);
                out = older;
            }
            None if current.is_none() => {
                return Err(LogError::Missing {
                    path: path.to_owned(),
                })
            }
            None => {}
        }
    }
    Ok(Tail {
        bytes: out,
        current,
    })
}

/// Reads `buf.len()` bytes of `file` at `offset`, or fewer at its end.
pub fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    read_full_at(file, buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(text: &str, n: usize) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        std::fs::write(&p, text).unwrap();
        String::from_utf8(last_lines(&p, n).unwrap()).unwrap()
    }

    #[test]
    fn last_lines_of_one_file() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 0), "");
        assert_eq!(tail("", 3), "");
        assert_eq!(tail("\n\n", 1), "\n");
    }

    #[test]
    fn last_lines_across_chunks() {
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        let got = tail(&text, 20_000);
        let want: String = (30_000..50_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn last_lines_read_the_older_generation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        std::fs::write(older_generation(&p), "1\n2\n3\n").unwrap();
        std::fs::write(&p, "4\n5\n").unwrap();
        assert_eq!(last_lines(&p, 3).unwrap(), b"3\n4\n5\n");
        assert_eq!(last_lines(&p, 2).unwrap(), b"4\n5\n");
        // Just truncated: only the older generation holds lines.
        std::fs::write(&p, "").unwrap();
        assert_eq!(last_lines(&p, 2).unwrap(), b"2\n3\n");
        // A log gone, its older generation left.
        std::fs::remove_file(&p).unwrap();
        assert_eq!(last_lines(&p, 1).unwrap(), b"3\n");
        std::fs::remove_file(older_generation(&p)).unwrap();
        assert!(matches!(last_lines(&p, 1), Err(LogError::Missing { .. })));
    }

    #[test]
    fn refuses_links_and_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        std::fs::write(&target, "x\n").unwrap();
        let link = dir.path().join("l.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = last_lines(&link, 1).unwrap_err();
        assert!(e.to_string().contains("a symbolic link"), "{e}");
        let fifo = dir.path().join("f.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = last_lines(&fifo, 1).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
    }
}
