//! The floor: the system calls a reuse-safe status scan needs, and nothing else.
//!
//! Per scan: open the PID directory and read it (`getdents64`). Per `*.pid` entry:
//! `openat` relative to the directory (`O_NOFOLLOW | O_NONBLOCK`, so a symlink or FIFO
//! can neither redirect nor block the scan), one `read`, `close`, parse the PID, then
//! `kill(pid, 0)`. Per live PID: open, read and close `/proc/PID/stat`, whose state
//! (a zombie counts as dead) and start time (field 22) are what an identity check
//! compares. No allocation per entry beyond what the kernel does.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Dir, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::CStr;
use std::io;
use std::path::Path;

/// What a floor scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloorCounts {
    /// `*.pid` entries read.
    pub files: usize,
    /// Entries whose PID is alive and not a zombie.
    pub alive: usize,
    /// Entries whose PID is dead or a zombie.
    pub dead: usize,
    /// Entries that are not a readable file holding one PID.
    pub corrupt: usize,
    /// Dead entries removed ([`floor_scan_and_clear`] only).
    pub cleared: usize,
}

/// What the scan found for one entry.
enum Seen {
    Alive,
    Dead,
    Corrupt,
}

/// Reads `pid_dir` the way a reuse-safe status scan must, and counts what it finds.
pub fn floor_scan(pid_dir: &Path) -> io::Result<FloorCounts> {
    scan(pid_dir, None)
}

/// [`floor_scan`], plus what clearing each dead entry (the startup rule) cannot avoid:
/// `openat(O_CREAT)` and `flock` of `<locks_dir>/<target>.lock`, a re-read of the PID
/// file under the lock (it may have been rewritten meanwhile), `unlinkat`, `close`; and
/// one `fsync` of the PID directory at the end, which makes the removals durable.
pub fn floor_scan_and_clear(pid_dir: &Path, locks_dir: &Path) -> io::Result<FloorCounts> {
    let locks = rustix::fs::open(
        locks_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    scan(pid_dir, Some(&locks))
}

fn scan(pid_dir: &Path, locks: Option<&OwnedFd>) -> io::Result<FloorCounts> {
    let dir_fd = rustix::fs::open(
        pid_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dir_for_files = dir_fd.try_clone()?;
    let mut dir = Dir::new(dir_fd)?;
    let mut counts = FloorCounts::default();
    let mut lock_name = [0u8; 256];
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if !bytes.ends_with(b".pid") || bytes.starts_with(b".") {
            continue;
        }
        counts.files += 1;
        let (seen, pid) = look(&dir_for_files, name)?;
        match seen {
            Seen::Alive => counts.alive += 1,
            Seen::Corrupt => counts.corrupt += 1,
            Seen::Dead => {
                counts.dead += 1;
                if let Some(locks) = locks {
                    let stem = &bytes[..bytes.len() - ".pid".len()];
                    if clear(&dir_for_files, name, locks, stem, pid, &mut lock_name)? {
                        counts.cleared += 1;
                    }
                }
            }
        }
    }
    if counts.cleared > 0 {
        rustix::fs::fsync(&dir_for_files)?;
    }
    Ok(counts)
}

/// Reads one PID file and probes its PID.
fn look(dir: &OwnedFd, name: &CStr) -> io::Result<(Seen, i32)> {
    let mut buf = [0u8; 65];
    let fd = match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok((Seen::Dead, 0)),
        Err(Errno::LOOP | Errno::NXIO | Errno::ACCESS | Errno::PERM) => {
            return Ok((Seen::Corrupt, 0))
        }
        Err(e) => return Err(e.into()),
    };
    let n = match rustix::io::read(&fd, &mut buf) {
        Ok(n) => n,
        Err(Errno::ISDIR) => return Ok((Seen::Corrupt, 0)),
        Err(e) => return Err(e.into()),
    };
    drop(fd);
    let Some(pid) = parse_pid(&buf[..n]) else {
        return Ok((Seen::Corrupt, 0));
    };
    let raw = rustix::process::Pid::from_raw(pid).expect("parse_pid returns > 1");
    match rustix::process::test_kill_process(raw) {
        Ok(()) | Err(Errno::PERM) => {}
        Err(_) => return Ok((Seen::Dead, pid)),
    }
    Ok((
        if proc_stat_alive(pid)? {
            Seen::Alive
        } else {
            Seen::Dead
        },
        pid,
    ))
}

/// Clears one dead entry under its lock, if the file still names `pid`.
fn clear(
    dir: &OwnedFd,
    name: &CStr,
    locks: &OwnedFd,
    stem: &[u8],
    pid: i32,
    buf: &mut [u8; 256],
) -> io::Result<bool> {
    const SUFFIX: &[u8] = b".lock\0";
    if stem.len() + SUFFIX.len() > buf.len() {
        return Ok(false);
    }
    buf[..stem.len()].copy_from_slice(stem);
    buf[stem.len()..stem.len() + SUFFIX.len()].copy_from_slice(SUFFIX);
    let lock_name = CStr::from_bytes_with_nul(&buf[..stem.len() + SUFFIX.len()])
        .map_err(|_| io::Error::other("lock file name with a NUL byte"))?;
    let lock = rustix::fs::openat(
        locks,
        lock_name,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive)?;
    let (seen, again) = look(dir, name)?;
    if !matches!(seen, Seen::Dead) || again != pid || pid == 0 {
        return Ok(false);
    }
    match rustix::fs::unlinkat(dir.as_fd(), name, rustix::fs::AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Parses PID-file content: optional ASCII whitespace around decimal digits, > 1.
pub fn parse_pid(content: &[u8]) -> Option<i32> {
    let t = content.trim_ascii();
    if t.is_empty() || t.len() > 10 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = t.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    i32::try_from(v).ok().filter(|&p| p > 1)
}

/// Whether `/proc/PID/stat` shows a live process (not a zombie or dead task). The
/// start time is parsed too, as an identity check needs it.
fn proc_stat_alive(pid: i32) -> io::Result<bool> {
    let mut path = [0u8; 32];
    let path = proc_stat_path(pid, &mut path);
    let fd = match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut buf = [0u8; 1024];
    let n = match rustix::io::read(&fd, &mut buf) {
        Ok(n) => n,
        Err(Errno::SRCH) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    drop(fd);
    let stat = &buf[..n];
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return Ok(false);
    };
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let state = fields.next().and_then(|f| f.first().copied());
    // Field 22 (starttime) is the 20th after the command name.
    let start_ticks = fields
        .nth(18)
        .and_then(|f| std::str::from_utf8(f).ok()?.parse::<u64>().ok());
    std::hint::black_box(start_ticks);
    Ok(!matches!(state, Some(b'Z' | b'X' | b'x') | None))
}

fn proc_stat_path(pid: i32, buf: &mut [u8; 32]) -> &CStr {
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = 0;
    for &b in b"/proc/" {
        buf[at] = b;
        at += 1;
    }
    for i in (0..len).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    for &b in b"/stat\0" {
        buf[at] = b;
        at += 1;
    }
    CStr::from_bytes_with_nul(&buf[..at]).expect("one NUL at the end")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pids_like_dms() {
        assert_eq!(parse_pid(b"12345\n"), Some(12345));
        assert_eq!(parse_pid(b" 7 "), Some(7));
        for bad in [&b""[..], b"1", b"0", b"-3", b"abc", b"99999999999", b"1 2"] {
            assert_eq!(parse_pid(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn builds_proc_paths() {
        let mut b = [0u8; 32];
        assert_eq!(
            proc_stat_path(4194303, &mut b).to_bytes(),
            b"/proc/4194303/stat"
        );
        assert_eq!(proc_stat_path(2, &mut b).to_bytes(), b"/proc/2/stat");
    }
}
