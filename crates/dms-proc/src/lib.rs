//! The process layer of `dms`: the [`Spawner`] seam between the manager and the OS.
//!
//! A PID is never trusted on its own: PIDs are reused (pid_max is often 32768). Every
//! operation that acts on a process takes a [`ProcIdentity`] (PID, start ticks, boot ID),
//! and the Linux implementation opens a pidfd, re-verifies that identity through it, and
//! only then signals through the pidfd. [`Pid`] cannot hold 0, 1 or a negative number, and
//! the spawner refuses to act on its own PID.
//!
//! - [`linux::LinuxSpawner`]: the real implementation (fork + start barrier + execve,
//!   pidfds, `/proc`); its module docs describe the design.
//! - [`fake::FakeSpawner`]: a deterministic, scriptable process table for tests of the
//!   layers above (PID reuse, crashes, zombies, permission errors, paused tokio time).
//!
//! The start barrier: [`Spawner::spawn`] returns a [`Pending`] helper that has a PID but
//! runs nothing until [`StartGate::release`]; record it durably in between.
//!
//! ```
//! use dms_proc::fake::FakeSpawner;
//! use dms_proc::{SignalOutcome, Signal, SpawnSpec, Spawner};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let spawner = FakeSpawner::default(); // or dms_proc::linux::LinuxSpawner::new()?
//! let spec = SpawnSpec {
//!     program: "/usr/bin/s3vaultfuse.py".into(),
//!     args: vec![],
//!     env: vec![("vault_s3_bucket".into(), "backups".into())],
//!     log: "/var/log/dms/target-a.log".into(),
//!     cwd: None,
//! };
//! let pending = spawner.spawn(&spec).await?;
//! let helper = pending.identity.clone(); // PID, start ticks, boot ID
//! // ... write the PID file for `helper` here ...
//! pending.gate.release().await?;
//!
//! // Later, possibly after a restart: an identity that no longer matches is refused.
//! let stale = dms_proc::ProcIdentity { start_ticks: helper.start_ticks + 1, ..helper.clone() };
//! assert_eq!(spawner.signal(&stale, Signal::Term).await?, SignalOutcome::Mismatch);
//! let stop = spawner.terminate(&helper, Duration::from_secs(10)).await?;
//! assert!(stop.stopped);
//! # Ok::<(), dms_proc::ProcError>(())
//! # }).unwrap();
//! ```

pub use dms_store::Pid;

pub mod fake;
pub mod linux;

/// Exit code of a helper whose [`StartGate`] was dropped (or whose spawner died) before
/// release: it exits with this code without running its program.
pub const GATE_DROPPED_EXIT_CODE: i32 = 125;

/// How long [`Spawner::terminate`] waits for the exit after SIGKILL before it reports the
/// process still running (a process in uninterruptible sleep can outlive SIGKILL).
pub const DEFAULT_KILL_WAIT: Duration = Duration::from_secs(5);

use async_trait::async_trait;
use std::ffi::OsString;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One incarnation of a process: equal only for the same process, never for a later
/// process that was given the same PID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcIdentity {
    /// The PID.
    pub pid: Pid,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_ticks: u64,
    /// The boot ID (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
}

/// What a probe of a PID found.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// No process has this PID.
    Gone,
    /// A zombie: dead, waiting to be reaped. Counts as dead.
    Zombie(ProcIdentity),
    /// A live process.
    Alive(ProcInfo),
    /// A thread of a process, not a process: the ID is a thread ID that is not its
    /// thread group's leader (`kill(tid, 0)` and `/proc/TID/stat` both answer for one).
    /// A thread is never a helper and is never signalled.
    Thread {
        /// The thread's process (its thread-group ID), when it could be read.
        tgid: Option<i32>,
    },
}

/// What is known of a live process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    /// Its identity.
    pub identity: ProcIdentity,
    /// When it started, on the wall clock, derived from its start ticks and the boot time.
    pub started_at: SystemTime,
    /// Its process group.
    pub pgid: i32,
    /// Its session.
    pub sid: i32,
    /// The executable, when readable.
    pub exe: Option<PathBuf>,
    /// The command line, when readable.
    pub cmdline: Option<Vec<String>>,
}

/// Resource usage of a live process.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// CPU use over the sampling interval, in percent of one core (can exceed 100).
    /// With a zero interval: the average over the process's lifetime (CPU time divided
    /// by the time since it started), as `ps(1)` shows `%CPU`.
    pub cpu_percent: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
    /// Number of threads.
    pub threads: u64,
    /// Whether it is stopped (state `T`: SIGSTOP, SIGTSTP; not a traced stop), as the
    /// same read says. A stopped helper cannot act on SIGTERM until it is continued.
    pub stopped: bool,
}

/// The two signals dms sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGTERM: please stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
}

impl Signal {
    /// The conventional name: `"SIGTERM"` or `"SIGKILL"`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
        }
    }
}

/// What became of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOutcome {
    /// Delivered to the process (and to its group, when it leads one).
    Delivered,
    /// The process had already exited (or is a zombie): nothing was sent.
    Gone,
    /// A process has this PID but it is not the recorded one: nothing was sent.
    Mismatch,
}

/// How a process ended, when it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signaled(i32),
    /// It is gone, but it was not our child, so the status is unknown.
    Unknown,
}

/// The result of waiting for a process to exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// It exited (or was already gone).
    Exited(ExitStatus),
    /// It was still running when the timeout passed.
    TimedOut,
}

/// The result of [`Spawner::terminate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Signals sent, in order.
    pub signals: Vec<Signal>,
    /// Whether the process is now gone.
    pub stopped: bool,
    /// Its exit status, when known.
    pub status: Option<ExitStatus>,
    /// Set when the PID belonged to another process: nothing was sent.
    pub mismatch: bool,
}

/// How a helper's leader fared in the first moments after its program started
/// ([`Spawner::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// It waits for something (sleeping, or stopped): a program that stays in the
    /// foreground has started.
    Waiting,
    /// It exited, with this status: it may have left a daemon behind
    /// ([`Spawner::orphans`]).
    Exited(ExitStatus),
    /// It kept running without ever waiting until the limit passed.
    Busy,
}

/// A process a helper's leader left running when it exited, now a child of this process
/// (see [`Spawner::begin_startup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// Its identity.
    pub identity: ProcIdentity,
    /// Whether it holds `/dev/fuse` open: the mark of the process serving a FUSE mount.
    pub holds_fuse: bool,
}

/// What [`Spawner::orphans`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orphans {
    /// The orphans of the leader, proven to descend from it.
    pub ours: Vec<Orphan>,
    /// Orphans that may descend from it or from another helper whose start overlapped
    /// (they left their session): never stopped, never recorded.
    pub unattributed: Vec<Orphan>,
}

/// A helper's startup window ([`Spawner::begin_startup`]): while one is open, this
/// process is the child subreaper of what it spawned. Dropping it closes the window.
pub struct StartupWindow {
    id: u64,
    on_close: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl StartupWindow {
    /// A window with number `id` (unique per spawner) that calls `on_close` when dropped.
    pub fn new(id: u64, on_close: Box<dyn FnOnce() + Send + Sync>) -> StartupWindow {
        StartupWindow {
            id,
            on_close: Some(on_close),
        }
    }

    /// A window that does nothing (a spawner without subreaping).
    pub fn none() -> StartupWindow {
        StartupWindow {
            id: 0,
            on_close: None,
        }
    }

    /// Its number.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Debug for StartupWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupWindow")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for StartupWindow {
    fn drop(&mut self) {
        if let Some(close) = self.on_close.take() {
            close();
        }
    }
}

/// How to start a helper.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The program: a path, or a name looked up in `PATH` of `env`.
    pub program: OsString,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<OsString>,
    /// The environment, exactly: nothing else is inherited. Values are never logged.
    pub env: Vec<(OsString, OsString)>,
    /// The log file; stdout and stderr are appended to it. Created (0644) if missing.
    pub log: PathBuf,
    /// The working directory; `/` when `None`.
    pub cwd: Option<PathBuf>,
}

/// A helper that has been created but has not yet run its program.
///
/// This is the start barrier: the process exists and has a PID (so it can be recorded),
/// but it does not exec the program until [`StartGate::release`] is called. If the gate
/// is dropped instead, or dms dies first, the process exits without running the program.
/// So no crash at any moment leaves a running helper that no record names.
pub struct Pending {
    /// The new process.
    pub identity: ProcIdentity,
    /// Lets the program run.
    pub gate: Box<dyn StartGate>,
}

impl Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The barrier that holds a freshly spawned helper before it runs its program.
#[async_trait]
pub trait StartGate: Send + Sync {
    /// Lets the helper exec its program, and waits until it has. An exec failure (ENOENT,
    /// EACCES, ...) is an error naming the program, and the process is gone when it
    /// returns. Dropping the gate instead makes the helper exit without running anything.
    async fn release(self: Box<Self>) -> Result<(), ProcError>;
}

/// A process-layer failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// The program could not be started.
    #[error("cannot start {program:?}: {source}")]
    Exec {
        /// The program.
        program: OsString,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The log file could not be opened.
    #[error("cannot open log file {}: {source}", path.display())]
    Log {
        /// The log path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The caller may not signal or inspect this process.
    #[error("permission denied on PID {pid}: {what}; run dms as the helper's user or as root")]
    PermissionDenied {
        /// The PID.
        pid: Pid,
        /// What was attempted.
        what: String,
    },
    /// Refused: the PID is dms's own.
    #[error("refusing to act on PID {0}: it is dms itself")]
    SelfPid(Pid),
    /// Refused: the PID belongs to a process dms must never signal (an ancestor of dms,
    /// such as the shell or service that runs it). See [`Spawner::protected`].
    #[error("refusing to act on PID {pid}: {why}")]
    Protected {
        /// The PID.
        pid: Pid,
        /// Why it is protected.
        why: String,
    },
    /// Any other OS error.
    #[error("{op} PID {pid}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The PID.
        pid: Pid,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file under `/proc` could not be read.
    #[error("cannot read {}: {source}; is /proc mounted?", path.display())]
    ProcFs {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shared exit watcher ([`Spawner::exit_watch`]) could not be set up.
    #[error("cannot {op} of the shared exit watcher: {source}; check the limit on open files (ulimit -n)")]
    ExitWatch {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A scripted failure of the fake spawner.
    #[error("injected failure: {0}")]
    Injected(String),
}

/// Where a shared exit watcher ([`Spawner::exit_watch`]) reports each watched process
/// that exited.
pub type ExitSender = tokio::sync::mpsc::UnboundedSender<ProcIdentity>;

/// One watcher for the exits of many processes (see [`Spawner::exit_watch`]): a process
/// watched costs a small table entry (on Linux, plus a pidfd in one epoll set), not a
/// task and a timer of its own.
///
/// Each watched process is reported once, with the identity it was watched with, on the
/// [`ExitSender`] given at creation: when it exits, becomes a zombie, or at once when it
/// was already gone (or is another process now) at [`ExitWatch::watch`]. Reports carry
/// no exit status: [`Spawner::wait_exit`] of a reported process returns at once with it.
/// Dropping the watcher stops its task; nothing more is reported. A watcher that can
/// no longer watch (its epoll set fails) closes the channel, so the receiver knows to
/// stop trusting it.
pub trait ExitWatch: Debug + Send + Sync {
    /// Starts watching `who`. Watching a PID again replaces the earlier watch of it.
    fn watch(&self, who: &ProcIdentity) -> Result<(), ProcError>;

    /// Stops watching `who` without a report; nothing if it is not watched.
    fn unwatch(&self, who: &ProcIdentity);

    /// How many processes are watched now.
    fn watched(&self) -> usize;
}

/// A reader of one process's usage that stays bound to that very process (see
/// [`Spawner::usage_reader`]).
pub trait UsageReader: Debug + Send + Sync {
    /// The usage now, CPU percent the average since the process started (as
    /// [`Spawner::usage`] with a zero interval); `None` once the process is gone (it is
    /// never another process's).
    fn read(&mut self) -> Result<Option<Usage>, ProcError>;
}

/// The OS seam of the manager: spawn, probe, signal, wait, measure.
///
/// Implementations: [`linux::LinuxSpawner`] (the real one) and [`fake::FakeSpawner`] (a
/// deterministic process table for tests).
#[async_trait]
pub trait Spawner: Debug + Send + Sync {
    /// Creates a detached helper (own session and process group, stdin `/dev/null`,
    /// output appended to the log) held at the start barrier. See [`Pending`].
    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError>;

    /// Checks what [`Spawner::spawn`] of `spec` would fail on, without starting anything:
    /// on Linux, that the program is found and executable and that the log opens (it is
    /// created when missing). `spawn --replace` calls it before it stops the old helper.
    /// The default checks nothing.
    fn preflight(&self, spec: &SpawnSpec) -> Result<(), ProcError> {
        let _ = spec;
        Ok(())
    }

    /// Looks at whatever process has `pid` now.
    async fn probe(&self, pid: Pid) -> Result<Probe, ProcError>;

    /// Sends `signal` to `who` (and its process group, when it leads one), only after
    /// proving that the process with that PID is still that incarnation. The Linux
    /// spawner follows a delivered SIGTERM with SIGCONT to the same processes, so a
    /// stopped process can act on it.
    async fn signal(&self, who: &ProcIdentity, signal: Signal) -> Result<SignalOutcome, ProcError>;

    /// Waits until `who` exits, or `timeout` passes (`None`: no limit). Works for
    /// processes that are not our children. Returns at once if it is already gone.
    async fn wait_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError>;

    /// CPU, memory and thread usage of `who`, with CPU percent sampled over `interval`
    /// (a zero interval does not wait: CPU percent is then the average since the
    /// process started, see [`Usage::cpu_percent`]); `None` if it is gone or is another
    /// process now.
    async fn usage(
        &self,
        who: &ProcIdentity,
        interval: Duration,
    ) -> Result<Option<Usage>, ProcError>;

    /// [`Spawner::probe`] of `pid` and, when it is alive, its [`Spawner::usage`] with a
    /// zero interval (CPU percent the average since the process started), as one call:
    /// a spawner that reads both from the same source (on Linux, one read of
    /// `/proc/PID/stat`) reads it once. A listing uses it for every live helper. The
    /// usage is `None` when the process is not alive, or when it could not be read
    /// (logged at debug level). A listing does not show [`ProcInfo::exe`], so an
    /// implementation may leave it `None` here (the Linux spawner does: it saves a
    /// `readlink` per live helper). The default calls the two methods.
    async fn probe_with_usage(&self, pid: Pid) -> Result<(Probe, Option<Usage>), ProcError> {
        let probe = self.probe(pid).await?;
        let usage = match &probe {
            Probe::Alive(info) => match self.usage(&info.identity, Duration::ZERO).await {
                Ok(usage) => usage,
                Err(e) => {
                    tracing::debug!(pid = pid.get(), error = %e, "no usage");
                    None
                }
            },
            Probe::Gone | Probe::Zombie(_) | Probe::Thread { .. } => None,
        };
        Ok((probe, usage))
    }

    /// A reader of `who`'s usage that stays bound to that very process, for a caller
    /// that samples the same processes again and again (the daemon's background
    /// sampler): on Linux its `/proc/PID/stat` held open and read again with `pread`,
    /// one system call a sample where [`Spawner::usage`] opens and closes files each
    /// time; it holds a file descriptor. `None` when `who` is gone or its PID is another
    /// process's now, or when this spawner has no such reader (the caller then uses
    /// [`Spawner::usage`]). The default has none.
    fn usage_reader(&self, who: &ProcIdentity) -> Result<Option<Box<dyn UsageReader>>, ProcError> {
        let _ = who;
        Ok(None)
    }

    /// The current boot ID.
    fn boot_id(&self) -> &str;

    /// Why `pid` must never be signalled or adopted, if it must not: dms itself, or one of
    /// its ancestors (the shell, service or supervisor that runs it). A PID file written
    /// by hand can name such a process, and a bare PID file older than the process would
    /// otherwise pass the identity rule. The default protects nothing beyond what
    /// [`Spawner::signal`] refuses itself.
    fn protected(&self, pid: Pid) -> Option<String> {
        let _ = pid;
        None
    }

    /// A shared watcher of process exits, reporting on `exited` (see [`ExitWatch`]);
    /// `None` if this spawner has none (the caller then waits for each process with
    /// [`Spawner::wait_exit`]). Call inside a tokio runtime: the watcher runs as one task
    /// of it. The default has none.
    fn exit_watch(&self, exited: ExitSender) -> Result<Option<Box<dyn ExitWatch>>, ProcError> {
        let _ = exited;
        Ok(None)
    }

    /// The other live members of `leader`'s process group while `leader` is alive and
    /// leads it, each proven a member (on Linux as `linux/group.rs` describes); empty
    /// otherwise. For a caller that lets the leader end by other means (a FUSE helper
    /// exits once its mount is unmounted): it stops these afterwards, each with
    /// [`Spawner::terminate`] of its own identity. The default finds none.
    async fn group_members(&self, leader: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        let _ = leader;
        Ok(Vec::new())
    }

    /// Opens a startup window (issue 17.2): until it is dropped, processes that the
    /// helpers spawned meanwhile leave behind (a daemon whose leader exits, as s3fs,
    /// bindfs, sshfs and `rclone --daemon` do by default) become children of this
    /// process instead of being lost, so [`Spawner::orphans`] can find them. Open it
    /// before [`StartGate::release`]. The default does nothing.
    fn begin_startup(&self) -> StartupWindow {
        StartupWindow::none()
    }

    /// Waits until `leader`, just released, first waits for something (its program
    /// stays in the foreground), exits (it may have daemonized), or `limit` passes. The
    /// default says [`Settled::Waiting`] unless it has already exited.
    async fn settle(&self, leader: &ProcIdentity, limit: Duration) -> Result<Settled, ProcError> {
        let _ = limit;
        Ok(match self.wait_exit(leader, Some(Duration::ZERO)).await? {
            WaitOutcome::Exited(status) => Settled::Exited(status),
            WaitOutcome::TimedOut => Settled::Waiting,
        })
    }

    /// The live processes `leader` left behind when it exited during `window`, now
    /// children of this process. The default finds none.
    async fn orphans(
        &self,
        leader: &ProcIdentity,
        window: &StartupWindow,
    ) -> Result<Orphans, ProcError> {
        let _ = (leader, window);
        Ok(Orphans::default())
    }

    /// The live children of `parent` that hold `/dev/fuse` open (a FUSE helper forking
    /// its daemon). The default finds none.
    async fn fuse_children(&self, parent: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        let _ = parent;
        Ok(Vec::new())
    }

    /// Takes an orphan (see [`Spawner::orphans`]) on as a child of this spawner: it is
    /// reaped when it exits, and [`Spawner::wait_exit`] knows its status. The default does
    /// nothing.
    async fn adopt_orphan(&self, orphan: &ProcIdentity) -> Result<(), ProcError> {
        let _ = orphan;
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait up to [`DEFAULT_KILL_WAIT`]
    /// for the exit ([`Spawner::terminate_with`]).
    async fn terminate(
        &self,
        who: &ProcIdentity,
        grace: Duration,
    ) -> Result<StopOutcome, ProcError> {
        self.terminate_with(who, grace, DEFAULT_KILL_WAIT).await
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait up to `kill_wait` for the exit.
    /// The Linux spawner applies both, and both waits, to `who` and every member of its
    /// process group (when it leads one) until all are gone; [`StopOutcome::signals`]
    /// then lists SIGKILL when a member needed it, even if the leader died of SIGTERM.
    /// A caller that has a further remedy for a process SIGKILL cannot end at once (a
    /// FUSE daemon with a thread stuck in a request to its own mount, freed only by
    /// aborting the connection) passes a short `kill_wait`.
    async fn terminate_with(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<StopOutcome, ProcError> {
        let mut out = StopOutcome {
            signals: Vec::new(),
            stopped: false,
            status: None,
            mismatch: false,
        };
        for (signal, wait) in [(Signal::Term, grace), (Signal::Kill, kill_wait)] {
            match self.signal(who, signal).await? {
                SignalOutcome::Delivered => out.signals.push(signal),
                SignalOutcome::Gone => {}
                SignalOutcome::Mismatch => {
                    out.mismatch = true;
                    return Ok(out);
                }
            }
            if let WaitOutcome::Exited(status) = self.wait_exit(who, Some(wait)).await? {
                out.stopped = true;
                out.status = Some(status);
                return Ok(out);
            }
        }
        Ok(out)
    }
}

/// Forwards to the shared spawner, so a test can keep a handle on its fake.
#[async_trait]
impl<T: Spawner + ?Sized> Spawner for std::sync::Arc<T> {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        (**self).spawn(spec).await
    }
    async fn probe(&self, pid: Pid) -> Result<Probe, ProcError> {
        (**self).probe(pid).await
    }
    async fn signal(&self, who: &ProcIdentity, signal: Signal) -> Result<SignalOutcome, ProcError> {
        (**self).signal(who, signal).await
    }
    async fn wait_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError> {
        (**self).wait_exit(who, timeout).await
    }
    async fn usage(
        &self,
        who: &ProcIdentity,
        interval: Duration,
    ) -> Result<Option<Usage>, ProcError> {
        (**self).usage(who, interval).await
    }
    async fn probe_with_usage(&self, pid: Pid) -> Result<(Probe, Option<Usage>), ProcError> {
        (**self).probe_with_usage(pid).await
    }
    fn usage_reader(&self, who: &ProcIdentity) -> Result<Option<Box<dyn UsageReader>>, ProcError> {
        (**self).usage_reader(who)
    }
    fn boot_id(&self) -> &str {
        (**self).boot_id()
    }
    fn protected(&self, pid: Pid) -> Option<String> {
        (**self).protected(pid)
    }
    fn exit_watch(&self, exited: ExitSender) -> Result<Option<Box<dyn ExitWatch>>, ProcError> {
        (**self).exit_watch(exited)
    }
    async fn group_members(&self, leader: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        (**self).group_members(leader).await
    }
    fn begin_startup(&self) -> StartupWindow {
        (**self).begin_startup()
    }
    async fn settle(&self, leader: &ProcIdentity, limit: Duration) -> Result<Settled, ProcError> {
        (**self).settle(leader, limit).await
    }
    async fn orphans(
        &self,
        leader: &ProcIdentity,
        window: &StartupWindow,
    ) -> Result<Orphans, ProcError> {
        (**self).orphans(leader, window).await
    }
    async fn fuse_children(&self, parent: &ProcIdentity) -> Result<Vec<ProcIdentity>, ProcError> {
        (**self).fuse_children(parent).await
    }
    async fn adopt_orphan(&self, orphan: &ProcIdentity) -> Result<(), ProcError> {
        (**self).adopt_orphan(orphan).await
    }
    async fn terminate(
        &self,
        who: &ProcIdentity,
        grace: Duration,
    ) -> Result<StopOutcome, ProcError> {
        (**self).terminate(who, grace).await
    }
    async fn terminate_with(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<StopOutcome, ProcError> {
        (**self).terminate_with(who, grace, kill_wait).await
    }
}
