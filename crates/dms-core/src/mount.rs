//! Mount awareness: is a helper's mount point mounted, answering, stale; waiting for a
//! mount to appear without fixed sleeps; unmounting, detaching and aborting FUSE
//! connections; and the record of each target's mount path that outlives its PID file.
//!
//! - **Mount table**: `/proc/self/mountinfo`, parsed here (octal escapes such as `\040`
//!   in paths are decoded; non-UTF-8 paths are kept as bytes).
//! - **Readiness** ([`wait_for_mount`]): a thread reads the mount table, then sleeps in
//!   `poll(2)` on it for `POLLPRI`, which the kernel raises on every change to the mount
//!   namespace; it reads again on each change. No timer, no fixed sleep.
//! - **State** ([`probe`]): not in the mount table is [`MountState::Unmounted`]; else
//!   `statfs(2)` of the mount point, in a forked child process, decides: an answer is
//!   [`MountState::Mounted`], `ENOTCONN`/`ECONNABORTED` or no answer within the timeout
//!   is [`MountState::Stale`]. `statfs` always reaches the FUSE daemon (`stat` may be
//!   answered from the attribute cache). A probe that hangs is SIGKILLed and abandoned,
//!   never awaited: dms cannot hang on a dead mount, and at most one probe per path is
//!   in flight. (A child, not a thread: a thread stuck in an unanswered FUSE request
//!   sleeps uninterruptibly and would keep dms from exiting.)
//!
//! ```no_run
//! use dms_core::mount;
//! use std::path::Path;
//! use std::time::Duration;
//! # async fn f() -> std::io::Result<()> {
//! let dir = Path::new("/mnt/target-1");
//! let table = mount::read_mountinfo()?;
//! if let Some(m) = mount::mount_at(&table, dir) {
//!     println!("{} is a {} mount (connection {})", dir.display(), m.fs_type, m.minor);
//! }
//! println!("{:?}", mount::probe(dir, Duration::from_secs(2)).await);
//! # Ok(()) }
//! ```

mod own;
mod registry;

pub use own::{detach_exact, prove, unmount_exact, Exact, FuseConn, MountIdentity, Proof};
pub use registry::{MountRecord, MountRegistry, MAX_RECORD};

use crate::report::MountState;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// The mount table of dms's own mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where the kernel lists FUSE connections (the `fusectl` file system).
pub const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";
/// How long a mount may take to answer `statfs` before it counts as stale.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount ID (unique while mounted).
    pub mount_id: u64,
    /// Major number of the file system's device (`st_dev`).
    pub major: u32,
    /// Minor number of the file system's device: for FUSE, the connection number `N` of
    /// `/sys/fs/fuse/connections/N`.
    pub minor: u32,
    /// The mount point, decoded.
    pub mount_point: PathBuf,
    /// The file system type (`fuse`, `fuse.sshfs`, `fuseblk`, `ext4`, ...).
    pub fs_type: String,
    /// The mount source (e.g. the FUSE daemon's fsname).
    pub source: String,
}

impl MountEntry {
    /// Whether this is a FUSE mount.
    pub fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type == "fuseblk" || self.fs_type.starts_with("fuse.")
    }
}

/// Decodes the octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash) the kernel writes in mountinfo fields.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(oct[0] - b'0') * 64
                    + u32::from(oct[1] - b'0') * 8
                    + u32::from(oct[2] - b'0');
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Parses one mountinfo line; `None` if it is malformed.
fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let mount_id = std::str::from_utf8(fields.first()?).ok()?.parse().ok()?;
    let majmin = std::str::from_utf8(fields.get(2)?).ok()?;
    let (major, minor) = majmin.split_once(':')?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.get(4)?)));
    // Optional fields end with a lone "-"; then fstype and source.
    let sep = fields.iter().skip(6).position(|f| *f == b"-")? + 6;
    let fs_type = String::from_utf8_lossy(&unescape(fields.get(sep + 1)?)).into_owned();
    let source = String::from_utf8_lossy(&unescape(fields.get(sep + 2)?)).into_owned();
    Some(MountEntry {
        mount_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point,
        fs_type,
        source,
    })
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .collect()
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read(MOUNTINFO)?))
}

/// The topmost mount whose mount point is exactly `path`.
pub fn mount_at<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// The FUSE mounts at `path` or below it, deepest (and latest) first, so that
/// detaching them in this order never leaves a child behind its parent.
pub fn fuse_mounts_under<'a>(table: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    let mut v: Vec<&MountEntry> = table
        .iter()
        .filter(|m| m.is_fuse() && m.mount_point.starts_with(path))
        .collect();
    v.reverse();
    v.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    v
}

/// Paths with a probe still in flight (a hung mount keeps its prober; no second one).
fn in_flight() -> &'static Mutex<HashSet<PathBuf>> {
    static SET: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Exit codes of the prober child.
const PROBE_OK: i32 = 0;
const PROBE_NOTCONN: i32 = 1;
/// Other errors: this plus the errno.
const PROBE_ERRNO_BASE: i32 = 10;

/// What the prober child found.
enum Answer {
    Ok,
    NotConnected,
    Other(i32),
    Silent,
}

/// `statfs(path)` in a forked child process, waited for at most `timeout`.
///
/// Not a thread: a request the FUSE daemon has read but never answers blocks the caller
/// in an uninterruptible sleep, and a thread stuck there would keep the whole dms
/// process from exiting. A stuck child is SIGKILLed and left to a thread that reaps it
/// whenever the kernel lets it go; dms itself stays free to exit.
fn statfs_in_child(path: &Path, timeout: Duration) -> io::Result<Answer> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: the child runs only async-signal-safe system calls (close_range, statfs,
    // _exit) on memory prepared before the fork, then exits.
    let fork = unsafe { nix::unistd::fork() }?;
    let child = match fork {
        nix::unistd::ForkResult::Child => {
            // SAFETY: raw system calls only; see above.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, c"dms-mount-probe".as_ptr());
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                let mut buf: libc::statfs = std::mem::zeroed();
                let code = if libc::statfs(c_path.as_ptr(), &mut buf) == 0 {
                    PROBE_OK
                } else {
                    match *libc::__errno_location() {
                        libc::ENOTCONN | libc::ECONNABORTED => PROBE_NOTCONN,
                        e => PROBE_ERRNO_BASE + e.clamp(1, 200),
                    }
                };
                libc::_exit(code)
            }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    let reap = move || nix::sys::wait::waitpid(child, None);
    // Nobody else reaps this child (no waitpid(-1) in dms), so its PID stays ours.
    let pidfd = match rustix::process::Pid::from_raw(child.as_raw())
        .ok_or_else(|| io::Error::other("fork returned PID 0"))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(io::Error::from)
        }) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            std::thread::spawn(reap);
            return Err(e);
        }
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let exited = loop {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => break false,
            Ok(_) => break true,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                std::thread::spawn(reap);
                return Err(e.into());
            }
        }
    };
    if !exited {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        // The path stays "in flight" until the stuck prober is gone, so a hung mount
        // never collects more than one stuck prober.
        let p = path.to_owned();
        std::thread::Builder::new()
            .name("dms-probe-reaper".into())
            .spawn(move || {
                let _ = reap();
                in_flight()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&p);
            })?;
        return Ok(Answer::Silent);
    }
    Ok(match reap() {
        Ok(nix::sys::wait::WaitStatus::Exited(_, PROBE_OK)) => Answer::Ok,
        Ok(nix::sys::wait::WaitStatus::Exited(_, PROBE_NOTCONN)) => Answer::NotConnected,
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => Answer::Other(code - PROBE_ERRNO_BASE),
        _ => Answer::Silent,
    })
}

/// [`statfs_in_child`] off the async runtime, at most one per path at a time.
async fn statfs_with_timeout(path: &Path, timeout: Duration) -> io::Result<Answer> {
    {
        let mut set = in_flight().lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(path.to_owned()) {
            return Ok(Answer::Silent);
        }
    }
    let p = path.to_owned();
    let out = tokio::task::spawn_blocking(move || statfs_in_child(&p, timeout))
        .await
        .map_err(|e| io::Error::other(format!("probe task failed: {e}")))
        .and_then(|r| r);
    // A silent prober's reaper clears the path once the prober is gone.
    if !matches!(out, Ok(Answer::Silent)) {
        in_flight()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }
    out
}

/// The state of the mount point `path`: see the module docs. Never blocks longer than
/// `timeout` (plus reading the mount table).
pub async fn probe(path: &Path, timeout: Duration) -> MountState {
    match read_mountinfo() {
        Ok(table) if mount_at(&table, path).is_none() => return MountState::Unmounted,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %crate::Report::new(&e), "cannot read {MOUNTINFO}; probing the path")
        }
    }
    match statfs_with_timeout(path, timeout).await {
        Ok(Answer::Ok) => MountState::Mounted,
        Ok(Answer::NotConnected) => MountState::Stale,
        Ok(Answer::Other(errno)) => {
            // The file system answered, with an error: it is alive.
            tracing::debug!(path = %path.display(), errno, "statfs answered with an error");
            MountState::Mounted
        }
        Ok(Answer::Silent) => {
            tracing::warn!(path = %path.display(), ?timeout, "mount did not answer statfs in time; counted as stale");
            MountState::Stale
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %crate::Report::new(&e), "cannot start a prober; counted as stale");
            MountState::Stale
        }
    }
}

/// How many mount probes of one listing run at a time ([`probe_all`]).
pub const PROBE_CONCURRENCY: usize = 32;
/// The least time a probe started late in a [`probe_all`] gets: a mount that answers
/// at all answers `statfs` well within it.
pub const LATE_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// The states of the mount points `paths`, probed concurrently ([`PROBE_CONCURRENCY`]
/// at a time) under one deadline, `timeout` from now: however many of them hang, the
/// answer comes after about `timeout` (with more than [`PROBE_CONCURRENCY`] hung mounts,
/// a probe that starts after the deadline still gets [`LATE_PROBE_TIMEOUT`]). Each
/// distinct path is probed once.
pub async fn probe_all(
    paths: impl IntoIterator<Item = PathBuf>,
    timeout: Duration,
) -> HashMap<PathBuf, MountState> {
    let deadline = tokio::time::Instant::now() + timeout;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PROBE_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    let mut seen = HashSet::new();
    for path in paths {
        if !seen.insert(path.clone()) {
            continue;
        }
        let slots = slots.clone();
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let state = probe(&path, left.max(LATE_PROBE_TIMEOUT)).await;
            (path, state)
        });
    }
    let mut out = HashMap::with_capacity(seen.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((path, state)) => {
                out.insert(path, state);
            }
            Err(e) => tracing::warn!(error = %crate::Report::new(&e), "a mount probe task failed"),
        }
    }
    out
}

/// Waits until a mount whose ID is not in `before` appears at `path`, and returns it.
///
/// A thread reads `/proc/self/mountinfo` and then waits in `poll(2)` for the kernel's
/// change notification (`POLLPRI`) before reading again. Dropping the returned future
/// stops the thread (a pipe it also polls is closed). Put a timeout around it.
pub async fn wait_for_mount(path: &Path, before: HashSet<u64>) -> io::Result<MountEntry> {
    let (tx, rx) = oneshot::channel();
    let (cancel_rx, cancel_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("dms-mount-wait".into())
        .spawn(move || {
            let _ = tx.send(watch_mountinfo(&path, &before, &cancel_rx));
        })?;
    let out = rx.await.unwrap_or_else(|_| {
        Err(io::Error::other(
            "the mount-table watcher thread ended without an answer",
        ))
    });
    drop(cancel_tx);
    out
}

/// The body of the [`wait_for_mount`] thread. Returns an error `Interrupted` when
/// cancelled.
fn watch_mountinfo(
    path: &Path,
    before: &HashSet<u64>,
    cancel: &std::os::fd::OwnedFd,
) -> io::Result<MountEntry> {
    let mut file = File::open(MOUNTINFO)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut buf)?;
        let table = parse_mountinfo(&buf);
        if let Some(m) = mount_at(&table, path).filter(|m| !before.contains(&m.mount_id)) {
            return Ok(m.clone());
        }
        let mut fds = [
            PollFd::new(file.as_fd(), PollFlags::POLLPRI),
            PollFd::new(cancel.as_fd(), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
    }
}

/// The mount IDs at `path` now.
pub fn mount_ids_at(path: &Path) -> io::Result<HashSet<u64>> {
    Ok(read_mountinfo()?
        .into_iter()
        .filter(|m| m.mount_point == path)
        .map(|m| m.mount_id)
        .collect())
}

/// `umount2(path, 0)`: a clean unmount.
pub fn unmount(path: &Path) -> Result<(), Errno> {
    nix::mount::umount2(path, nix::mount::MntFlags::empty())
}

/// `umount2(path, MNT_DETACH)`: a lazy unmount, which succeeds on a stale or busy mount.
pub fn detach(path: &Path) -> Result<(), Errno> {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
}

/// Aborts FUSE connection `minor` by writing to `/sys/fs/fuse/connections/N/abort`: every
/// pending and future request fails, so nothing stays blocked on a hung daemon. Mounts
/// the `fusectl` file system there first if it is not mounted. `Ok(false)` when the
/// connection no longer exists.
pub fn abort_connection(minor: u32) -> io::Result<bool> {
    let conns = Path::new(FUSE_CONNECTIONS);
    let dir = conns.join(minor.to_string());
    if !dir.exists() {
        ensure_fusectl(conns)?;
        if !dir.exists() {
            return Ok(false);
        }
    }
    std::fs::write(dir.join("abort"), b"1")?;
    Ok(true)
}

/// Whether FUSE connection `minor` still exists (its super block is alive). Mounts
/// `fusectl` if needed; `None` if that is impossible.
pub fn connection_exists(minor: u32) -> Option<bool> {
    let conns = Path::new(FUSE_CONNECTIONS);
    match ensure_fusectl(conns) {
        Ok(true) => Some(conns.join(minor.to_string()).exists()),
        Ok(false) | Err(_) => None,
    }
}

/// Mounts the `fusectl` file system at `conns` unless it is mounted there already.
/// `Ok(false)` when it is not mounted and cannot be (`conns` is not a directory).
fn ensure_fusectl(conns: &Path) -> io::Result<bool> {
    if mount_at(&read_mountinfo()?, conns).is_some() {
        return Ok(true);
    }
    if !conns.is_dir() {
        return Ok(false);
    }
    nix::mount::mount(
        Some("fusectl"),
        conns,
        Some("fusectl"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
        42 22 0:39 / /tmp/a\\040b/m ro,nosuid,nodev,relatime - fuse dms-testfuse ro,user_id=0\n\
        43 42 0:40 / /tmp/a\\040b/m/inner rw - fuse.sshfs host:/x rw\n\
        garbage line\n\
        44 22 0:41 / /tmp/a\\040b/m rw master:3 - fuse other rw\n";

    #[test]
    fn parses_escapes_optional_fields_and_skips_garbage() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].mount_point, Path::new("/tmp/a b/m"));
        assert_eq!((t[1].major, t[1].minor), (0, 39));
        assert_eq!(t[1].fs_type, "fuse");
        assert_eq!(t[1].source, "dms-testfuse");
        assert!(t[2].is_fuse() && !t[0].is_fuse());
        // Topmost mount at a path wins.
        assert_eq!(mount_at(&t, Path::new("/tmp/a b/m")).unwrap().mount_id, 44);
        let under: Vec<u64> = fuse_mounts_under(&t, Path::new("/tmp/a b/m"))
            .iter()
            .map(|m| m.mount_id)
            .collect();
        assert_eq!(under, vec![43, 44, 42]);
        assert!(fuse_mounts_under(&t, Path::new("/tmp/a")).is_empty());
    }

    #[test]
    fn unescape_leaves_lone_backslashes() {
        assert_eq!(unescape(b"a\\134b\\0"), b"a\\b\\0");
        assert_eq!(unescape(b"\\012"), b"\n");
    }

    #[tokio::test]
    async fn a_plain_directory_is_unmounted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            probe(dir.path(), PROBE_TIMEOUT).await,
            MountState::Unmounted
        );
    }
}
