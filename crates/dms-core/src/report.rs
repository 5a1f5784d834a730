//! What the manager reports: the info object, kill/cleanup/recovery reports, statistics
//! and events. The `Serialize` forms are the JSON shapes of the `dms` command line; the
//! `Deserialize` forms read them back (the command line renders what `dms serve` sends
//! with the renderers of its own reports).

use dms_proc::{ExitStatus, Signal};
use dms_store::{Pid, TargetId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;
use std::time::SystemTime;

/// The state of a target, as in the info object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// Alive and proven ours.
    Running,
    /// The recorded PID is dead (or a zombie).
    Stale,
    /// The recorded PID is alive but belongs to another process (the PID was reused).
    Foreign,
    /// The PID file is not a valid PID file.
    Corrupt,
    /// No PID file and nothing in memory.
    Absent,
    /// The recorded PID is alive but the probe was denied, so whether it is ours cannot
    /// be proven. The entry is kept and never signalled. (An addition to the five
    /// states of the command-line contract; only seen when dms lacks permission.)
    Unverified,
}

/// Where the manager found a target's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Only in this manager's memory (the PID file is missing).
    Memory,
    /// Only on disk (not loaded into memory).
    Disk,
    /// In memory and on disk.
    Both,
}

pub use dms_mount::MountState;

/// Everything known about one target: the info object of the command-line contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// The target.
    pub target: TargetId,
    /// The recorded PID, if any.
    pub pid: Option<Pid>,
    /// See [`ProcessState`].
    pub state: ProcessState,
    /// Alive and proven ours.
    pub running: bool,
    /// `<run-dir>/s3/<target>.pid`.
    pub pid_file: PathBuf,
    /// Whether something is at `pid_file`.
    pub pid_file_exists: bool,
    /// Where the record was found; `None` when nowhere.
    pub source: Option<Source>,
    /// When the process started (UTC, whole seconds in JSON), when running.
    #[serde(serialize_with = "ser_rfc3339", deserialize_with = "de_rfc3339")]
    pub started_at: Option<SystemTime>,
    /// Seconds since it started, when running.
    pub uptime_secs: Option<f64>,
    /// CPU use over the sampling interval, percent of one core, when running and sampled.
    pub cpu_percent: Option<f64>,
    /// Resident memory, when running and sampled.
    pub rss_bytes: Option<u64>,
    /// Thread count, when running and sampled.
    pub threads: Option<u64>,
    /// The command line: the live process's, else the recorded one.
    pub cmdline: Option<Vec<String>>,
    /// The recorded mount point.
    pub mount: Option<PathBuf>,
    /// Whether the mount point is in the mount table (true for a stale mount too: a dead
    /// mount is still a mount); `None` when no mount is recorded.
    pub mounted: Option<bool>,
    /// The mount point's state (see [`MountState`]); `None` when no mount is recorded.
    pub mount_state: Option<MountState>,
    /// Why the state is what it is, in words (corrupt reason, foreign evidence, ...). Not
    /// part of the JSON shape; for human output and logs.
    #[serde(skip)]
    pub detail: Option<String>,
    /// When the usage columns (`cpu_percent`, `rss_bytes`, `threads`) were read; `None`
    /// when they are empty. Not part of the command line's JSON shape (the daemon's info
    /// object shows it as `usage_sampled_at`).
    #[serde(skip)]
    pub usage_sampled_at: Option<SystemTime>,
}

fn ser_rfc3339<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
        None => s.serialize_none(),
    }
}

fn de_rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
        Some(t) => humantime::parse_rfc3339(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

fn ser_signal<S: Serializer>(sig: &Option<Signal>, s: S) -> Result<S::Ok, S::Error> {
    match sig {
        Some(sig) => s.serialize_str(sig.name()),
        None => s.serialize_none(),
    }
}

fn de_signal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Signal>, D::Error> {
    match Option::<std::borrow::Cow<'de, str>>::deserialize(d)?.as_deref() {
        None => Ok(None),
        Some(name) => [Signal::Term, Signal::Kill]
            .into_iter()
            .find(|s| s.name() == name)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown signal {name:?}"))),
    }
}

/// What [`crate::Manager::kill`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillReport {
    /// The target.
    pub target: TargetId,
    /// The PID that was recorded (memory first, else disk), if any.
    pub pid: Option<Pid>,
    /// Whether a live helper, proven ours, was found and signalled.
    pub was_running: bool,
    /// The last signal sent.
    #[serde(serialize_with = "ser_signal", deserialize_with = "de_signal")]
    pub signal: Option<Signal>,
    /// Whether a running helper was stopped by this call.
    pub stopped: bool,
    /// What was done, in order.
    pub steps: Vec<KillStep>,
}

/// One step of [`KillReport::steps`], serialized as its [`KillStep::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KillStep {
    /// The helper's FUSE mount unmounted before any signal (`"unmount"`).
    #[serde(rename = "unmount")]
    Unmount,
    /// That unmount failed (`"unmount_failed"`): the kill went on with signals.
    #[serde(rename = "unmount_failed")]
    UnmountFailed,
    /// Another mount lies on top of the recorded one, which was left alone
    /// (`"mount_covered"`).
    #[serde(rename = "mount_covered")]
    MountCovered,
    /// The mount at the recorded path could not be proven the helper's, and was left
    /// alone (`"mount_unproven"`).
    #[serde(rename = "mount_unproven")]
    MountUnproven,
    /// SIGTERM delivered (`"SIGTERM"`).
    #[serde(rename = "SIGTERM")]
    Sigterm,
    /// SIGKILL delivered (`"SIGKILL"`).
    #[serde(rename = "SIGKILL")]
    Sigkill,
    /// The FUSE connection aborted, for a helper SIGKILL could not end (`"abort"`).
    #[serde(rename = "abort")]
    Abort,
    /// A mount left behind by the dead helper lazily unmounted (`"detach"`).
    #[serde(rename = "detach")]
    Detach,
    /// That lazy unmount failed (`"detach_failed"`).
    #[serde(rename = "detach_failed")]
    DetachFailed,
    /// The helper dropped from memory (`"forget_memory"`).
    #[serde(rename = "forget_memory")]
    ForgetMemory,
    /// Its PID file removed (`"remove_pid_file"`).
    #[serde(rename = "remove_pid_file")]
    RemovePidFile,
    /// A PID file of a dead helper removed (`"clear_stale"`).
    #[serde(rename = "clear_stale")]
    ClearStale,
    /// A PID file naming another process removed, that process left alone
    /// (`"clear_foreign"`).
    #[serde(rename = "clear_foreign")]
    ClearForeign,
    /// A corrupt PID file removed (`"clear_corrupt"`).
    #[serde(rename = "clear_corrupt")]
    ClearCorrupt,
}

impl KillStep {
    /// The step's name, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            KillStep::Unmount => "unmount",
            KillStep::UnmountFailed => "unmount_failed",
            KillStep::MountCovered => "mount_covered",
            KillStep::MountUnproven => "mount_unproven",
            KillStep::Sigterm => "SIGTERM",
            KillStep::Sigkill => "SIGKILL",
            KillStep::Abort => "abort",
            KillStep::Detach => "detach",
            KillStep::DetachFailed => "detach_failed",
            KillStep::ForgetMemory => "forget_memory",
            KillStep::RemovePidFile => "remove_pid_file",
            KillStep::ClearStale => "clear_stale",
            KillStep::ClearForeign => "clear_foreign",
            KillStep::ClearCorrupt => "clear_corrupt",
        }
    }
}

impl From<Signal> for KillStep {
    /// The step of a delivered signal.
    fn from(signal: Signal) -> KillStep {
        match signal {
            Signal::Term => KillStep::Sigterm,
            Signal::Kill => KillStep::Sigkill,
        }
    }
}

impl std::fmt::Display for KillStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Totals over every tracked target: the `stats` JSON shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Targets in this manager's memory; in one-shot mode
    /// ([`crate::ManagerOptions::one_shot`]), which loads nothing into memory, the
    /// helpers running (every live helper proven ours, as a manager on the run
    /// directory would track them).
    pub total_tracked: usize,
    /// `*.pid` entries in the PID directory (including unreadable ones and files whose
    /// name is not a valid target ID).
    pub pid_files_on_disk: usize,
    /// Targets whose helper is alive and proven ours.
    pub running: usize,
    /// Targets whose recorded PID is dead.
    pub stale: usize,
    /// Targets whose recorded PID belongs to another process.
    pub foreign: usize,
    /// Targets whose PID file is unreadable.
    pub corrupt: usize,
    /// Targets whose helper's identity could not be verified (permission denied).
    pub unverified: usize,
    /// `*.pid` files whose name is not a valid target ID (never acted on).
    pub strays: usize,
    /// Recorded mounts (`<run-dir>/mounts/`) that are stale.
    pub stale_mounts: Option<usize>,
    /// The store backend: `pidfile`, `sqlite` or `memory`.
    pub backend: String,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// Why cleanup removed an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalReason {
    /// The PID was dead.
    Stale,
    /// The PID belonged to another process.
    Foreign,
    /// The file was not a valid PID file.
    Corrupt,
}

/// One entry removed by cleanup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The target.
    pub target: TargetId,
    /// Why.
    pub reason: RemovalReason,
}

/// What [`crate::Manager::cleanup_dead`] / [`crate::Manager::cleanup_all`] did: the
/// `cleanup` JSON shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// Entries removed, with the reason.
    pub removed: Vec<Removed>,
    /// Targets whose running helper was stopped (only `cleanup_all`).
    pub stopped: Vec<TargetId>,
    /// Mounts detached (only with [`crate::Manager::cleanup_mounts`], `cleanup --mounts`).
    pub mounts: Vec<MountAction>,
}

/// One mount handled by [`crate::Manager::cleanup_mounts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountAction {
    /// The target whose recorded mount path holds it.
    pub target: TargetId,
    /// The mount point.
    pub path: PathBuf,
    /// Its state before the action.
    pub state: MountState,
    /// What was done.
    pub action: MountOutcome,
}

/// What [`crate::Manager::cleanup_mounts`] did to one mount ([`MountAction::action`]),
/// serialized as one string, its `Display`: `detach`, `detach+abort`,
/// `detach_failed: <error>`, `gone` or `kept: <why>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOutcome {
    /// The recorded mount lazily unmounted (`detach`), and its FUSE connection aborted
    /// when `aborted` (`detach+abort`).
    Detached {
        /// Whether the FUSE connection was aborted too.
        aborted: bool,
    },
    /// The lazy unmount failed (`detach_failed: <error>`).
    DetachFailed(String),
    /// The mount went meanwhile (`gone`).
    Gone,
    /// Nothing done (`kept: <why>`).
    Kept(KeptMount),
}

/// Why [`MountOutcome::Kept`] left a mount alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptMount {
    /// The record holds no mount identity (written by an older dms), so nothing proves
    /// the mount at its path is the target's.
    NoIdentity,
    /// Another mount lies on top of the recorded one.
    Covered,
}

impl std::fmt::Display for MountOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountOutcome::Detached { aborted: false } => f.write_str("detach"),
            MountOutcome::Detached { aborted: true } => f.write_str("detach+abort"),
            MountOutcome::DetachFailed(e) => write!(f, "detach_failed: {e}"),
            MountOutcome::Gone => f.write_str("gone"),
            MountOutcome::Kept(KeptMount::NoIdentity) => f.write_str(
                "kept: the record holds no mount identity (written by an older dms), so \
                 nothing proves the mount there is this target's; unmount it by hand if it is",
            ),
            MountOutcome::Kept(KeptMount::Covered) => {
                f.write_str("kept: another mount lies on top of it; unmount that one first")
            }
        }
    }
}

impl Serialize for MountOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The inverse of its `Display`.
impl std::str::FromStr for MountOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<MountOutcome, String> {
        let known = [
            MountOutcome::Detached { aborted: false },
            MountOutcome::Detached { aborted: true },
            MountOutcome::Gone,
            MountOutcome::Kept(KeptMount::NoIdentity),
            MountOutcome::Kept(KeptMount::Covered),
        ];
        if let Some(e) = s.strip_prefix("detach_failed: ") {
            return Ok(MountOutcome::DetachFailed(e.to_owned()));
        }
        known
            .into_iter()
            .find(|o| o.to_string() == s)
            .ok_or_else(|| format!("unknown mount action {s:?}"))
    }
}

impl<'de> Deserialize<'de> for MountOutcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MountOutcome, D::Error> {
        std::borrow::Cow::<'de, str>::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A target and the PID involved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetPid {
    /// The target.
    pub target: TargetId,
    /// The PID.
    pub pid: Pid,
}

/// A target and a reason, for entries kept but not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetNote {
    /// The target.
    pub target: TargetId,
    /// The PID, when one is recorded.
    pub pid: Option<Pid>,
    /// Why.
    pub reason: String,
}

/// A `*.pid` file whose name is not a valid target ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StrayNote {
    /// The file name.
    pub file_name: String,
    /// Why the name is refused.
    pub reason: String,
}

/// What [`crate::Manager::reload`] (startup recovery) found and did. Recovery never
/// signals anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Live helpers proven ours, loaded from disk into memory.
    pub adopted: Vec<TargetPid>,
    /// Memory entries verified alive (a later `reload`).
    pub kept: Vec<TargetPid>,
    /// Stale entries (dead PID) removed.
    pub cleared: Vec<TargetPid>,
    /// Entries naming a live process that is not ours: kept, reported; cleanup removes them.
    pub foreign: Vec<TargetPid>,
    /// Unreadable entries: kept, reported; cleanup removes them.
    pub corrupt: Vec<TargetNote>,
    /// Entries whose process is alive but could not be verified: kept, never signalled.
    pub unverified: Vec<TargetNote>,
    /// Files whose name is not a valid target ID: never acted on.
    pub strays: Vec<StrayNote>,
    /// PID files rewritten from memory because they were missing, unreadable or named
    /// another PID while this manager tracks a live helper.
    pub repaired: Vec<TargetPid>,
    /// Memory entries whose process turned out to be gone, forgotten.
    pub dropped: Vec<TargetPid>,
}

/// Something that happened to a helper, for library consumers
/// ([`crate::Manager::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A helper was started and recorded.
    Spawned {
        /// The target.
        target: TargetId,
        /// Its PID.
        pid: Pid,
    },
    /// A tracked helper exited on its own (or was stopped by someone else).
    Exited {
        /// The target.
        target: TargetId,
        /// Its PID.
        pid: Pid,
        /// How it ended, when known.
        status: ExitStatus,
    },
    /// A helper was stopped by [`crate::Manager::kill`] (or replaced, or `cleanup_all`).
    Killed {
        /// The target.
        target: TargetId,
        /// Its PID.
        pid: Pid,
    },
    /// A live process was recorded as a target's helper (explicit adopt, or recovery).
    Adopted {
        /// The target.
        target: TargetId,
        /// Its PID.
        pid: Pid,
    },
    /// A helper's tracking in memory ended because its PID file was removed from
    /// outside (a stop from outside the manager): the helper was not signalled, and
    /// nothing restarts it. See [`crate::Manager::sync_target`].
    Untracked {
        /// The target.
        target: TargetId,
        /// The PID of the helper, which still runs.
        pid: Pid,
    },
    /// A stale, foreign or corrupt entry was removed.
    Cleaned {
        /// The target.
        target: TargetId,
        /// The PID it named, if it was readable.
        pid: Option<Pid>,
        /// Why it was removed.
        reason: RemovalReason,
    },
}

impl Event {
    /// The target the event is about.
    pub fn target(&self) -> &TargetId {
        match self {
            Event::Spawned { target, .. }
            | Event::Exited { target, .. }
            | Event::Killed { target, .. }
            | Event::Adopted { target, .. }
            | Event::Untracked { target, .. }
            | Event::Cleaned { target, .. } => target,
        }
    }

    /// The PID the event is about, if any.
    pub fn pid(&self) -> Option<Pid> {
        match self {
            Event::Spawned { pid, .. }
            | Event::Exited { pid, .. }
            | Event::Killed { pid, .. }
            | Event::Adopted { pid, .. }
            | Event::Untracked { pid, .. } => Some(*pid),
            Event::Cleaned { pid, .. } => *pid,
        }
    }
}
