//! The values the process layer passes around: identities, probes, usage, signals and
//! their outcomes, the spawn spec and the pending helper.

#[cfg(doc)]
use crate::Spawner;
use crate::{Pid, ProcError};
use async_trait::async_trait;
use std::ffi::OsString;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::SystemTime;

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

/// The result of [`Spawner::terminate`]; the default is "nothing sent, not stopped".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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

/// What [`crate::Spawner::probe`] reads of a live process besides its identity and
/// command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeFields {
    /// [`ProcInfo::exe`], the executable's path (a `readlink` on Linux).
    pub exe: bool,
    /// Its [`Usage`], CPU percent the average since the process started.
    pub usage: bool,
}

impl ProbeFields {
    /// A look at one PID: the executable, no usage (what a verdict on the PID needs).
    pub const DETAIL: ProbeFields = ProbeFields {
        exe: true,
        usage: false,
    };
    /// A row of a listing: the usage, no executable (a listing does not show it).
    pub const LISTING: ProbeFields = ProbeFields {
        exe: false,
        usage: true,
    };
}
