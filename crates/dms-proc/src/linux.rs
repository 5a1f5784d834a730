//! [`LinuxSpawner`]: the real [`Spawner`], built on fork/execve, pidfds and `/proc`.
//!
//! # Spawning with a crash-atomic start barrier
//!
//! `std::process::Command::spawn` cannot be used: it blocks until the child has exec'd
//! (it reads an internal close-on-exec error pipe), so a `pre_exec` hook that waits for
//! the caller's confirmation would deadlock the caller. Instead [`Spawner::spawn`] forks
//! by hand:
//!
//! 1. **Before the fork**, in the parent, everything the child needs is prepared, so the
//!    child never allocates: the program path (a name without `/` is looked up in the
//!    `PATH` *of the given environment*, else `/usr/local/bin:/usr/bin:/bin`; not found is
//!    an [`ProcError::Exec`] at once and no process is created), `argv` (`argv[0]` is the
//!    program as given) and `envp` as C string arrays, the working directory, the log
//!    file (opened `O_APPEND|O_CREAT`, mode 0644) and `/dev/null`, a *gate* socket pair
//!    and an *error* pipe, all close-on-exec and all moved to descriptors >= 5.
//! 2. **In the child** (only async-signal-safe calls): reset the signal mask and every
//!    disposition to default; `setsid()` (own session and process group, so it survives
//!    dms and a terminal hang-up); `dup2` `/dev/null` to 0, the log to 1 and 2, the gate
//!    end to 3 and the error pipe to 4 (close-on-exec); close every other descriptor
//!    (`close_range(5, ~0)`, or a loop up to `RLIMIT_NOFILE`), so nothing of dms leaks into
//!    the helper and no other pending child holds a copy of *our* gate; `chdir`. Then it
//!    **blocks in `read()` on the gate**: one byte means "you are recorded, run"; end of
//!    file (the gate was dropped, or dms died and the kernel closed its end) means `_exit`
//!    with [`GATE_DROPPED_EXIT_CODE`] without running anything. After the byte it closes
//!    the gate and `execve`s with exactly the given environment. If `chdir` or `execve`
//!    fails it writes the stage and `errno` to the error pipe and `_exit(127)`s.
//! 3. **[`StartGate::release`]** sends the byte (`MSG_NOSIGNAL`: a dead child is an error,
//!    not a `SIGPIPE`), then reads the error pipe: end of file with no data means the
//!    `execve` succeeded (the close-on-exec end vanished); data means it failed: the child
//!    is reaped and the error names the program. A child that died before the byte was
//!    sent (killed while pending) is reported as an exec error as well.
//!
//! So a crash of dms at any moment either leaves a pending child, which sees end of file
//! on the gate and exits without running the program, or a helper that was released,
//! which the caller only does after recording it. One residual, documented gap: between
//! the fork and the `close_range` in another pending child (microseconds, no blocking),
//! or until another thread's `Command` child execs, a copy of a gate end can exist in a
//! second process; the gate still closes as soon as that copy does.
//!
//! # Reaping
//!
//! Each spawned child gets a tokio task that waits for its pidfd to become readable
//! (the child exited) and reaps it with `waitid(P_PIDFD, WEXITED)`, storing the status
//! for [`Spawner::wait_exit`]. So children never linger as zombies while the runtime
//! runs. (If the pidfd cannot be polled, the task falls back to a blocking `waitpid` on
//! the blocking pool.) Statuses are kept per PID and replaced when the PID is reused by
//! another child, so memory stays bounded by `pid_max`. Nothing in this crate calls
//! `waitpid(-1)`; a caller that does would steal these statuses.
//!
//! While a startup window is open ([`Spawner::begin_startup`]), this process is a child
//! subreaper, so grandchildren a helper leaves behind become our children too: one that
//! is adopted as the helper gets a reaper task like a spawned child; the others are
//! reaped, each by its PID (never "any child"), when they are found dead
//! (`linux/startup.rs`).
//!
//! # Probing
//!
//! [`Spawner::probe`] reads `/proc/PID/stat` relative to one `O_PATH` descriptor of
//! `/proc/PID` (so every file read describes the same process, even if its PID is
//! reused meanwhile), with one `read`, and parses only the fields it uses (a hand parser,
//! justified by a measurement and tested against `procfs`'s, see `linux/stat.rs`): the
//! state (a zombie is [`Probe::Zombie`], i.e. dead), the start time in clock ticks since
//! boot (field 22), the process group and session; the boot ID comes from
//! `/proc/sys/kernel/random/boot_id`, read once. `exe` and `cmdline` are best effort;
//! [`Spawner::probe`] reads `exe` only when asked ([`ProbeFields::exe`]; a listing does not).
//! `started_at` is derived from the start ticks and the current offset between
//! `CLOCK_REALTIME` and `CLOCK_BOOTTIME` (the clock the kernel uses for field 22), not
//! from the whole seconds of `btime`; it is informational, identities compare raw ticks.
//! `EACCES`/`EPERM` are errors ([`ProcError::PermissionDenied`]), never "dead".
//!
//! # Signalling
//!
//! [`Spawner::signal`] refuses dms's own PID ([`ProcError::SelfPid`]); [`Pid`] already
//! cannot hold 0, 1 or a negative number. Then:
//!
//! 1. open a pidfd for the PID (`ESRCH`: [`SignalOutcome::Gone`]);
//! 2. re-read `/proc/PID/stat` and compare start ticks and boot ID with the recorded
//!    identity ([`SignalOutcome::Mismatch`], nothing sent) and check it is not a zombie
//!    ([`SignalOutcome::Gone`]);
//! 3. signal through the pidfd.
//!
//! This order makes PID reuse harmless: if the process the pidfd refers to is not the
//! one verified in step 2, it must have died before the verified one got its PID, so the
//! signal fails with `ESRCH` instead of reaching anyone else.
//!
//! When the process leads its process group (pgid == pid, which holds for every helper
//! this spawner starts), the whole group is signalled with
//! `pidfd_send_signal(PIDFD_SIGNAL_PROCESS_GROUP)` (Linux >= 6.9): the group is named by
//! the pidfd's `struct pid`, not by a number, so it cannot be a recycled group, and each
//! member gets the signal once. On older kernels (`EINVAL`) it falls back to signalling
//! the leader through the pidfd and then `kill(-pgid)` while holding the verified pidfd.
//! Residual race of that fallback, stated honestly: if the leader and every member of its
//! group exit between the verification and the `kill`, and the PID is reused by a new
//! process that makes itself a group leader, all within those microseconds, the `kill`
//! reaches that group; the leader also receives the signal twice. A zombie leader is
//! treated as gone: members of its group that outlived it are not signalled.
//!
//! A SIGTERM is followed by a SIGCONT to the same process or group (as systemd does), so
//! a stopped (SIGSTOP) helper can act on it.
//!
//! [`Spawner::terminate`] escalates SIGTERM to SIGKILL after the grace period, for the
//! helper and every member of its process group, until all are gone: a member that
//! outlives its leader is found in `/proc`, proven a member, and signalled through its
//! own pidfd (`linux/group.rs` describes the proof).
//!
//! # Waiting and usage
//!
//! [`Spawner::wait_exit`] awaits the reaper for our children (so it knows the exit
//! status) and otherwise polls a verified pidfd for readability with
//! `tokio::io::unix::AsyncFd` under `tokio::time::timeout`: no sleep loops, and it works
//! for processes that are not our children (status [`ExitStatus::Unknown`]). A zombie is
//! exited. [`Spawner::usage`] reads `utime + stime`, `rss` (pages, times the page size)
//! and `num_threads` twice, `interval` apart, each time re-verifying the identity.
//!
//! # Logging
//!
//! Spawns are logged with `tracing` at info level with the program, the number of
//! arguments and the environment *keys*; environment values never reach a log.
//!
//! ```no_run
//! use dms_proc::linux::LinuxSpawner;
//! use dms_proc::{SpawnSpec, Spawner};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), dms_proc::ProcError> {
//! let spawner = LinuxSpawner::new()?;
//! let pending = spawner
//!     .spawn(&SpawnSpec {
//!         program: "sleep".into(),
//!         args: vec!["60".into()],
//!         env: vec![("PATH".into(), "/usr/bin:/bin".into())],
//!         log: "/tmp/helper.log".into(),
//!         cwd: None,
//!     })
//!     .await?;
//! let helper = pending.identity.clone();
//! // ... record `helper` durably here, then:
//! pending.gate.release().await?;
//! let grace = Duration::from_secs(10);
//! let stop = spawner.terminate(&helper, grace, dms_proc::DEFAULT_KILL_WAIT).await?;
//! assert!(stop.stopped);
//! # Ok(()) }
//! ```

use crate::{
    ExitStatus, Pending, Pid, Probe, ProbeFields, ProcError, ProcIdentity, Signal, SignalOutcome,
    SpawnSpec, Spawner, Usage, WaitOutcome,
};
#[cfg(doc)]
use crate::{StartGate, GATE_DROPPED_EXIT_CODE};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

mod exit_watch;
mod files;
mod gate;
mod group;
mod probe;
mod reap;
mod signal;
mod spawn;
mod startup;
mod stat;
mod usage;

use probe::{ancestors_with_start_ticks, pidfd_open, read_stat, since_boot, Verified};
use reap::{readable_fd, reap};
use signal::rustix_signal;
use spawn::resolve_program;

/// Where the boot ID is read from.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Exit status of one of our children: `None` until the reaper has reaped it.
type StatusRx = watch::Receiver<Option<ExitStatus>>;

/// How many reaped children's exit statuses a [`LinuxSpawner`] keeps at least (the most
/// recent ones). Older ones are dropped when the table has twice as many, so a
/// long-running manager that respawns helpers keeps a bounded table. A status is wanted
/// right after the exit ([`Spawner::wait_exit`] after a signal); for a child whose
/// status was dropped, [`LinuxSpawner::child_status`] says `None` and `wait_exit` says
/// [`ExitStatus::Unknown`], as for a process that was never our child.
pub const KEPT_EXIT_STATUSES: usize = 128;

#[derive(Debug)]
struct Child {
    start_ticks: u64,
    /// Spawn order, so the oldest reaped children go first.
    seq: u64,
    status: StatusRx,
}

/// Drops the exit statuses of all but the [`KEPT_EXIT_STATUSES`] most recently spawned
/// reaped children, once there are twice as many entries (amortised: one pass per
/// [`KEPT_EXIT_STATUSES`] spawns). Running children are always kept.
fn prune_reaped(children: &mut HashMap<i32, Child>) {
    if children.len() < 2 * KEPT_EXIT_STATUSES {
        return;
    }
    let mut reaped: Vec<u64> = children
        .values()
        .filter(|c| c.status.borrow().is_some())
        .map(|c| c.seq)
        .collect();
    if reaped.len() <= KEPT_EXIT_STATUSES {
        return;
    }
    let cut = reaped.len() - KEPT_EXIT_STATUSES;
    let (_, &mut oldest_kept, _) = reaped.select_nth_unstable(cut);
    children.retain(|_, c| c.seq >= oldest_kept || c.status.borrow().is_none());
}

/// The real [`Spawner`] for Linux >= 5.4 (pidfds, `waitid(P_PIDFD)`). See the
/// [module docs](self) for the design.
///
/// Its async methods must run inside a tokio runtime with I/O and time enabled
/// (`enable_all()`): pidfds and the exec-error pipe are polled by the reactor, and each
/// spawned child gets a reaper task. Cheap to clone; clones share the child table.
#[derive(Debug, Clone)]
pub struct LinuxSpawner {
    boot_id: Arc<str>,
    /// Our children, by PID (replaced when the PID is reused by a later child); reaped
    /// ones beyond [`KEPT_EXIT_STATUSES`] are pruned.
    children: Arc<Mutex<HashMap<i32, Child>>>,
    /// The next [`Child::seq`].
    next_seq: Arc<std::sync::atomic::AtomicU64>,
    /// dms's ancestors when the spawner was made, with their start ticks (see
    /// [`Spawner::protected`]). A process gains no ancestors later (an orphan is
    /// reparented to an ancestor subreaper, or to init), so only these can be one; each
    /// is re-checked by its start ticks, since it may have exited and its PID been reused.
    ancestors: Arc<[(i32, u64)]>,
    /// The open startup windows (see `linux/startup.rs`).
    windows: startup::SharedWindows,
}

impl LinuxSpawner {
    /// A spawner; reads the boot ID and dms's ancestors once.
    pub fn new() -> Result<LinuxSpawner, ProcError> {
        let boot_id =
            std::fs::read_to_string(BOOT_ID_PATH).map_err(|source| ProcError::ProcFs {
                path: PathBuf::from(BOOT_ID_PATH),
                source,
            })?;
        Ok(LinuxSpawner {
            boot_id: Arc::from(boot_id.trim()),
            children: Arc::default(),
            next_seq: Arc::default(),
            ancestors: ancestors_with_start_ticks().into(),
            windows: Arc::default(),
        })
    }

    /// The exit status of one of our children once it has been reaped; `None` while it
    /// runs, if `who` is not a child of this spawner, or if its status was dropped (only
    /// the [`KEPT_EXIT_STATUSES`] most recent reaped children are sure to be kept).
    pub fn child_status(&self, who: &ProcIdentity) -> Option<ExitStatus> {
        self.child(who).and_then(|rx| *rx.borrow())
    }

    fn child(&self, who: &ProcIdentity) -> Option<StatusRx> {
        if *who.boot_id != *self.boot_id {
            return None;
        }
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .get(&who.pid.get())
            .filter(|c| c.start_ticks == who.start_ticks)
            .map(|c| c.status.clone())
    }

    fn identity(&self, pid: Pid, start_ticks: u64) -> ProcIdentity {
        ProcIdentity {
            pid,
            start_ticks,
            boot_id: self.boot_id.to_string(),
        }
    }
}

#[async_trait]
impl Spawner for LinuxSpawner {
    fn preflight(&self, spec: &SpawnSpec) -> Result<(), ProcError> {
        files::preflight(spec)
    }

    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        self.spawn_child(spec).await
    }

    async fn probe(
        &self,
        pid: Pid,
        fields: ProbeFields,
    ) -> Result<(Probe, Option<Usage>), ProcError> {
        // The usage columns come from the same read of /proc/PID/stat as the identity.
        self.probe_stat(pid, fields)
    }

    async fn signal(&self, who: &ProcIdentity, signal: Signal) -> Result<SignalOutcome, ProcError> {
        self.send_signal(who, signal).await
    }

    async fn wait_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError> {
        self.wait_for_exit(who, timeout).await
    }

    async fn usage(
        &self,
        who: &ProcIdentity,
        interval: Duration,
    ) -> Result<Option<Usage>, ProcError> {
        self.sample_usage(who, interval).await
    }

    async fn group_members(&self, leader: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        Ok(self.proven_group_members(leader))
    }

    fn begin_startup(&self) -> crate::StartupWindow {
        self.open_startup_window()
    }

    async fn settle(
        &self,
        leader: &ProcIdentity,
        limit: Duration,
    ) -> Result<crate::Settled, ProcError> {
        self.settle_leader(leader, limit).await
    }

    async fn orphans(
        &self,
        leader: &ProcIdentity,
        window: &crate::StartupWindow,
    ) -> Result<crate::Orphans, ProcError> {
        self.find_orphans(leader, window)
    }

    async fn fuse_children(&self, parent: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        Ok(self.find_fuse_children(parent))
    }

    async fn adopt_orphan(&self, orphan: &ProcIdentity) -> Result<(), ProcError> {
        self.adopt_child(orphan)
    }

    /// SIGTERM (then SIGCONT), `grace`, SIGKILL, `kill_wait`, applied to the helper and
    /// every member of its process group until all are gone (see `linux/group.rs`).
    async fn terminate(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<crate::StopOutcome, ProcError> {
        self.terminate_group(who, grace, kill_wait).await
    }

    fn exit_watch(
        &self,
        exited: crate::ExitSender,
    ) -> Result<Option<Box<dyn crate::ExitWatch>>, ProcError> {
        Ok(Some(Box::new(exit_watch::LinuxExitWatch::start(
            self.clone(),
            exited,
        )?)))
    }

    fn protected(&self, pid: Pid) -> Option<String> {
        self.protected_why(pid)
    }

    fn usage_reader(
        &self,
        who: &ProcIdentity,
    ) -> Result<Option<Box<dyn crate::UsageReader>>, ProcError> {
        self.open_usage_reader(who)
    }

    fn boot_id(&self) -> &str {
        &self.boot_id
    }
}

/// The PIDs of dms's ancestors: its parent, the parent's parent, and so on up to (not
/// including) PID 1, read from `/proc/PID/stat` at the time of the call.
pub fn ancestors() -> Vec<i32> {
    ancestors_with_start_ticks()
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}
