//! The fields of `/proc/PID/stat` dms uses, read with one `openat`, one `read` and one
//! `close`, and parsed by hand.
//!
//! Why not `procfs` here (it is used elsewhere): `dms status` reads the stat of every live
//! helper, and `procfs`'s `stat()` reads the file with `read_to_end` (a `statx`, an
//! `lseek` and a second `read` for end of file per file, plus two `getpid`s per
//! process) and parses all 52 fields. Measured with the `exe` readlink the listing
//! dropped at the same time: `dms status` over 10,000 PID files with 500 live helpers,
//! release build, 60 interleaved runs against the floor (2026-11-26, load average 2.8):
//! 52.5 → 50.0 ms CPU, 53.3 → 50.6 ms wall (2.06x → 1.95x the floor); 1,500 fewer
//! system calls. Only nine fields are read here, from the line after the *last* `)` (the
//! command name in field 2 may hold spaces, `(` and `)`). The unit tests parse the very
//! same bytes of real processes with `procfs` and compare, so the two cannot drift.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::ffi::CStr;

/// The fields of `/proc/PID/stat` (proc(5) numbering in brackets) dms uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// (3) One of `R S D Z T t W X x K P I`.
    pub(crate) state: char,
    /// (4) Parent PID.
    pub(crate) ppid: i32,
    /// (5) Process group.
    pub(crate) pgrp: i32,
    /// (6) Session.
    pub(crate) session: i32,
    /// (14) User CPU time, clock ticks.
    pub(crate) utime: u64,
    /// (15) System CPU time, clock ticks.
    pub(crate) stime: u64,
    /// (20) Number of threads.
    pub(crate) num_threads: i64,
    /// (22) Start time, clock ticks since boot.
    pub(crate) starttime: u64,
    /// (24) Resident set size, pages.
    pub(crate) rss: u64,
}

/// Why a stat line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError(pub(crate) &'static str);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses the content of `/proc/PID/stat`.
pub(crate) fn parse(line: &[u8]) -> Result<ProcStat, ParseError> {
    // Field 2 is `(comm)`; comm is at most 15 bytes but may contain anything but NUL,
    // `)` included, so the fields after it start after the last `)`.
    let close = line
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(ParseError("no ')' after the command name"))?;
    let mut fields = line[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    // Field 3 onwards: `fields.nth(k)` skips k fields, so each step counts from the
    // field after the previous one.
    let state = match fields.next() {
        Some([s]) if s.is_ascii_alphabetic() => char::from(*s),
        _ => return Err(ParseError("bad state (field 3)")),
    };
    let ppid = num::<i32>(fields.next(), "ppid (field 4)")?;
    let pgrp = num::<i32>(fields.next(), "pgrp (field 5)")?;
    let session = num::<i32>(fields.next(), "session (field 6)")?;
    let utime = num::<u64>(fields.nth(7), "utime (field 14)")?;
    let stime = num::<u64>(fields.next(), "stime (field 15)")?;
    let num_threads = num::<i64>(fields.nth(4), "num_threads (field 20)")?;
    let starttime = num::<u64>(fields.nth(1), "starttime (field 22)")?;
    let rss = num::<u64>(fields.nth(1), "rss (field 24)")?;
    Ok(ProcStat {
        state,
        ppid,
        pgrp,
        session,
        utime,
        stime,
        num_threads,
        starttime,
        rss,
    })
}

fn num<T: std::str::FromStr>(field: Option<&[u8]>, what: &'static str) -> Result<T, ParseError> {
    field
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|s| s.parse().ok())
        .ok_or(ParseError(what))
}

/// Reads `name` in the directory `dir` (an open `/proc/PID`) into `buf` (cleared
/// first) and returns the bytes read. With `line`, a read that ends with a newline ends
/// it (a stat line, about 300 bytes, takes one `read`); otherwise up to end of file.
pub(crate) fn read_at<'b>(
    dir: impl AsFd,
    name: &CStr,
    line: bool,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8], Errno> {
    let fd: OwnedFd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    buf.clear();
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().max(512));
        }
        match rustix::io::read(&fd, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => return Ok(buf),
            Ok(_) if line && buf.ends_with(b"\n") => return Ok(buf),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::FromRead;
    use std::process::{Child, Command};

    /// Our fields of `bytes`, parsed by `procfs`.
    fn by_procfs(bytes: &[u8]) -> ProcStat {
        let s = procfs::process::Stat::from_read(bytes).expect("procfs parses it");
        ProcStat {
            state: s.state,
            ppid: s.ppid,
            pgrp: s.pgrp,
            session: s.session,
            utime: s.utime,
            stime: s.stime,
            num_threads: s.num_threads,
            starttime: s.starttime,
            rss: s.rss,
        }
    }

    /// Reads `/proc/PID/stat` of `pid` with [`read_at`] and checks both parsers agree on
    /// the same bytes; returns the line.
    fn check(pid: u32) -> String {
        let dir = rustix::fs::open(
            format!("/proc/{pid}"),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut buf = Vec::with_capacity(512);
        let bytes = read_at(&dir, c"stat", true, &mut buf).unwrap().to_vec();
        // The whole line in one go: it ends with the newline the kernel writes.
        assert!(bytes.ends_with(b"\n"), "{bytes:?}");
        let ours = parse(&bytes).unwrap();
        assert_eq!(ours, by_procfs(&bytes));
        assert_eq!(ours.state, by_procfs(&bytes).state);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn agrees_with_procfs_on_self() {
        let line = check(std::process::id());
        let ours = parse(line.as_bytes()).unwrap();
        assert_eq!(ours.ppid, std::os::unix::process::parent_id() as i32);
        assert!(ours.num_threads >= 1);
        assert!(ours.rss > 0);
    }

    #[test]
    fn agrees_with_procfs_on_a_spawned_sleep() {
        let child = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
        let line = check(child.0.id());
        let ours = parse(line.as_bytes()).unwrap();
        assert_eq!(ours.ppid, std::process::id() as i32);
        assert!(line.contains("(sleep)"), "{line}");
    }

    #[test]
    fn agrees_with_procfs_when_the_name_holds_parens_and_spaces() {
        // A program whose file name (and so comm, cut at 15 bytes) is `a) (b c) Z 1`:
        // a parser that split at the first `)` would read state `(`, or `Z`.
        let dir = tempfile::tempdir().unwrap();
        // (A symlink to sleep: the kernel takes comm from the name that was executed.)
        let exe = dir.path().join("a) (b c) Z 1");
        std::os::unix::fs::symlink("/bin/sleep", &exe).unwrap();
        let child = Reaped(Command::new(&exe).arg("60").spawn().unwrap());
        let line = check(child.0.id());
        assert!(line.contains("(a) (b c) Z 1)"), "{line}");
        let ours = parse(line.as_bytes()).unwrap();
        assert_ne!(ours.state, 'Z');
        assert_eq!(ours.ppid, std::process::id() as i32);
    }

    #[test]
    fn agrees_with_procfs_on_a_zombie() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it exits (awaited on its state, not slept).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let line = check(pid);
            if parse(line.as_bytes()).unwrap().state == 'Z' {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never a zombie: {line}"
            );
            std::thread::yield_now();
        }
        child.wait().unwrap();
    }

    #[test]
    fn rejects_what_is_not_a_stat_line() {
        assert!(parse(b"").is_err());
        assert!(parse(b"12 (x").is_err());
        assert!(parse(b"12 (x) S 1 2").is_err());
        assert!(parse(b"12 (x) SS 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21").is_err());
        // Exactly up to field 24 is enough.
        let ok = b"12 (x) S 1 2 3 0 -1 0 0 0 0 0 7 8 0 0 20 0 4 0 99 0 5\n";
        let s = parse(ok).unwrap();
        assert_eq!(
            (
                s.state,
                s.ppid,
                s.pgrp,
                s.session,
                s.utime,
                s.stime,
                s.num_threads,
                s.starttime,
                s.rss
            ),
            ('S', 1, 2, 3, 7, 8, 4, 99, 5)
        );
    }
}
