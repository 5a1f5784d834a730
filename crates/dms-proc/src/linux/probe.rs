//! Probing: `/proc/PID` read through one descriptor, the identity verdict used before
//! every signal, and the clocks that turn start ticks into times (see the [module
//! docs](super) of `linux`).

use super::stat::{self, ProcStat};
use super::LinuxSpawner;
use crate::{Pid, Probe, ProbeFields, ProcError, ProcIdentity, ProcInfo, Usage};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::PidfdFlags;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

impl LinuxSpawner {
    /// [`Spawner::probe`] of `pid`, with the usage of a live process read from the same
    /// `/proc/PID/stat` (as [`Spawner::usage`] with a zero interval) when `fields.usage`;
    /// the `exe` link only when `fields.exe` (a listing does not show it).
    pub(super) fn probe_stat(
        &self,
        pid: Pid,
        fields: ProbeFields,
    ) -> Result<(Probe, Option<Usage>), ProcError> {
        // `kill(pid, 0)` settles a free PID in one cheap call (most entries of a scan
        // over stale PID files); a live PID, or one we may not signal, is read from
        // /proc. (A zombie passes this test and is told apart by its stat.)
        let raw = rustix::process::Pid::from_raw(pid.get()).expect("a Pid is positive");
        if rustix::process::test_kill_process(raw) == Err(Errno::SRCH) {
            return Ok((Probe::Gone, None));
        }
        // Every file is read relative to one descriptor of /proc/PID, which stays bound
        // to this process: if it exits and its PID is reused meanwhile, the reads fail
        // instead of describing the newcomer.
        let Some(dir) = open_proc_dir(pid)? else {
            return Ok((Probe::Gone, None));
        };
        let mut buf = Vec::with_capacity(STAT_BUF);
        let Some(stat) = stat_at(pid, &dir, &mut buf)? else {
            return Ok((Probe::Gone, None));
        };
        let identity = self.identity(pid, stat.starttime);
        Ok(match stat.state {
            'Z' => (Probe::Zombie(identity), None),
            'X' | 'x' => (Probe::Gone, None),
            _ => {
                if let Some(tgid) = thread_of(pid, &dir, &mut buf)? {
                    return Ok((Probe::Thread { tgid: Some(tgid) }, None));
                }
                let exe = fields
                    .exe
                    .then(|| rustix::fs::readlinkat(&dir, c"exe", Vec::new()).ok())
                    .flatten()
                    .map(|link| PathBuf::from(OsString::from_vec(link.into_bytes())));
                // Best effort, as `procfs`'s `cmdline()`: the NUL-separated arguments
                // when they are UTF-8, without empty ones.
                let cmdline = stat::read_at(&dir, c"cmdline", false, &mut buf)
                    .ok()
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .map(|text| {
                        text.split('\0')
                            .filter(|a| !a.is_empty())
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .filter(|c| !c.is_empty());
                (
                    Probe::Alive(ProcInfo {
                        identity,
                        started_at: started_at(stat.starttime),
                        pgid: stat.pgrp,
                        sid: stat.session,
                        exe,
                        cmdline,
                    }),
                    fields.usage.then(|| lifetime_usage(&stat)),
                )
            }
        })
    }

    /// Re-reads `/proc/PID/stat` and classifies it against `who`.
    pub(super) fn verify(&self, who: &ProcIdentity) -> Result<Verified, ProcError> {
        if *who.boot_id != *self.boot_id {
            return Ok(Verified::Mismatch);
        }
        Ok(match read_stat(who.pid)? {
            None => Verified::Gone,
            Some(stat) if matches!(stat.state, 'Z' | 'X' | 'x') => Verified::Gone,
            Some(stat) if stat.starttime != who.start_ticks => Verified::Mismatch,
            Some(stat) => Verified::Alive(stat),
        })
    }
}

pub(super) enum Verified {
    Gone,
    Mismatch,
    Alive(ProcStat),
}

/// Room for a stat line (about 300 bytes) or a short command line.
pub(super) const STAT_BUF: usize = 512;

/// Opens `/proc/PID` (`O_PATH`); `Ok(None)` when no process has the PID.
pub(super) fn open_proc_dir(pid: Pid) -> Result<Option<OwnedFd>, ProcError> {
    match rustix::fs::open(
        format!("/proc/{pid}").as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => stat_error(pid, e),
    }
}

/// Maps an error opening or reading `/proc/PID/...`: gone, or an error naming the PID.
pub(super) fn stat_error<T>(pid: Pid, e: Errno) -> Result<Option<T>, ProcError> {
    match e {
        Errno::NOENT | Errno::SRCH => Ok(None),
        Errno::ACCESS | Errno::PERM => Err(ProcError::PermissionDenied {
            pid,
            what: "read /proc/PID/stat".to_owned(),
        }),
        e => Err(ProcError::Os {
            op: "read /proc/PID/stat of",
            pid,
            source: e.into(),
        }),
    }
}

/// Reads and parses `stat` in the open `/proc/PID` directory `dir`; `Ok(None)` when the
/// process is gone.
pub(super) fn stat_at(
    pid: Pid,
    dir: &OwnedFd,
    buf: &mut Vec<u8>,
) -> Result<Option<ProcStat>, ProcError> {
    let bytes = match stat::read_at(dir, c"stat", true, buf) {
        Ok(bytes) => bytes,
        Err(e) => return stat_error(pid, e),
    };
    stat::parse(bytes).map(Some).map_err(|e| ProcError::Os {
        op: "parse /proc/PID/stat of",
        pid,
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    })
}

/// Reads `/proc/PID/stat`; `Ok(None)` when no process has the PID.
pub(super) fn read_stat(pid: Pid) -> Result<Option<ProcStat>, ProcError> {
    let Some(dir) = open_proc_dir(pid)? else {
        return Ok(None);
    };
    stat_at(pid, &dir, &mut Vec::with_capacity(STAT_BUF))
}

/// A pidfd of the process `pid`; `None` when no process has that PID: none at all
/// (`ESRCH`), or only a thread that is not its group's leader (`EINVAL`, or `ENOENT` on
/// Linux 6.15 and later: a thread ID is never the PID of a process, so a recorded
/// process with that PID is gone).
pub(super) fn pidfd_open(pid: Pid) -> Result<Option<OwnedFd>, ProcError> {
    let raw = rustix::process::Pid::from_raw(pid.get()).expect("a Pid is positive");
    match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::SRCH | Errno::INVAL | Errno::NOENT) => Ok(None),
        Err(e) => Err(ProcError::Os {
            op: "pidfd_open",
            pid,
            source: e.into(),
        }),
    }
}

/// The process (thread-group ID) of which `pid` is a thread, when `pid` is a thread ID
/// and not a process (not its thread group's leader); `None` for a process.
///
/// `pidfd_open` refuses a non-leader thread (`EINVAL` up to Linux 6.14, `ENOENT` after):
/// one system call and a close for a process, where the `Tgid` line of
/// `/proc/PID/status` would cost a read of a file the kernel composes from many parts,
/// for every live entry of a listing. Only on a refusal is `status` (through `dir`, the
/// thread's own `/proc` directory) read, to tell a thread from a process that exited
/// meanwhile (whose `Tgid` is its own PID).
pub(super) fn thread_of(
    pid: Pid,
    dir: &OwnedFd,
    buf: &mut Vec<u8>,
) -> Result<Option<i32>, ProcError> {
    let raw = rustix::process::Pid::from_raw(pid.get()).expect("a Pid is positive");
    match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(_) | Err(Errno::SRCH) => Ok(None),
        Err(Errno::INVAL | Errno::NOENT) => {
            let Ok(status) = stat::read_at(dir, c"status", false, buf) else {
                return Ok(None);
            };
            let tgid = status
                .split(|&b| b == b'\n')
                .find_map(|line| line.strip_prefix(b"Tgid:"))
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<i32>().ok());
            Ok(tgid.filter(|&t| t != pid.get()))
        }
        Err(e) => Err(ProcError::Os {
            op: "pidfd_open",
            pid,
            source: e.into(),
        }),
    }
}

/// The current time of `clock`.
pub(super) fn clock_now(clock: rustix::time::ClockId) -> Duration {
    let ts = rustix::time::clock_gettime(clock);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0).min(999_999_999),
    )
}

/// Time since boot, suspend included: the clock of `/proc/PID/stat`'s start time.
pub(super) fn since_boot() -> Duration {
    clock_now(rustix::time::ClockId::Boottime)
}

/// The usage of a process from one read of its `/proc/PID/stat`, CPU percent the
/// average since it started, as ps(1) shows %CPU (both times count from boot).
pub(super) fn lifetime_usage(stat: &ProcStat) -> Usage {
    let tps = rustix::param::clock_ticks_per_second().max(1) as f64;
    let cpu_seconds = (stat.utime + stat.stime) as f64 / tps;
    let alive = since_boot().as_secs_f64() - stat.starttime as f64 / tps;
    let cpu_percent = if alive > 0.0 {
        (cpu_seconds / alive).max(0.0) * 100.0
    } else {
        0.0
    };
    Usage {
        cpu_seconds,
        cpu_percent,
        rss_bytes: stat.rss.saturating_mul(rustix::param::page_size() as u64),
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        stopped: stat.state == 'T',
    }
}

/// The instant of boot on the wall clock: `CLOCK_REALTIME` minus `CLOCK_BOOTTIME`, read
/// together (the boot clock read on both sides of the wall clock, and the midpoint
/// taken), so it is exact to well under a microsecond; `btime` of `/proc/stat` would
/// round it to whole seconds. It moves only when the wall clock is stepped (NTP slews
/// both clocks alike).
pub(super) fn boot_instant() -> SystemTime {
    let before = since_boot();
    let wall = clock_now(rustix::time::ClockId::Realtime);
    let after = since_boot();
    let boot = before + (after.saturating_sub(before)) / 2;
    SystemTime::UNIX_EPOCH + wall.saturating_sub(boot)
}

/// Wall-clock time of the moment `start_ticks` after boot, through [`boot_instant`]: a
/// process start, exact to one clock tick (start ticks are rounded down to one).
pub(super) fn started_at(start_ticks: u64) -> SystemTime {
    let tps = rustix::param::clock_ticks_per_second().max(1);
    boot_instant()
        + Duration::from_secs(start_ticks / tps)
        + Duration::from_nanos((start_ticks % tps) * 1_000_000_000 / tps)
}

/// [`ancestors`], each with its start ticks (an ancestor whose stat cannot be read ends
/// the chain, listed with `u64::MAX`: start ticks unknown).
pub(super) fn ancestors_with_start_ticks() -> Vec<(i32, u64)> {
    let mut out: Vec<(i32, u64)> = Vec::new();
    let mut pid = std::os::unix::process::parent_id() as i32;
    // A PID chain is short; the bound only guards against a cycle seen through races.
    while pid > 1 && out.len() < 4096 && !out.iter().any(|(p, _)| *p == pid) {
        match Pid::try_from(pid).ok().map(read_stat) {
            Some(Ok(Some(stat))) => {
                out.push((pid, stat.starttime));
                pid = stat.ppid;
            }
            _ => {
                out.push((pid, u64::MAX));
                break;
            }
        }
    }
    out
}
