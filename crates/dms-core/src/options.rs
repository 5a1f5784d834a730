//! How the manager is configured, and how a helper is described.

use crate::mount::{LinuxMounts, Mounts};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The default [`ManagerOptions::start_time_slack`]: 20 ms, one clock tick (10 ms) plus
/// one jiffy of the coarse file clock at the lowest `HZ` (10 ms). Measured on this
/// project's CI kind of machine (Linux 6.18, `USER_HZ=100`), twice over 1,000 helpers
/// spawned by `dms spawn` (PID files on a disk file system, then on tmpfs): the PID
/// file's mtime lay at most 2.4 ms *before* the helper's start (median 3.6 ms after),
/// and with no slack 172 of 1,000 helpers read foreign; 20 ms leaves an eightfold margin
/// over the worst case seen and is a fiftieth of the earlier 1 s window.
pub const DEFAULT_START_TIME_SLACK: Duration = Duration::from_millis(20);

/// Configuration of a [`crate::Manager`].
///
/// The run directory holds `s3/` (the store's PID files), `locks/<target>.lock` (one
/// `flock` per target, shared by every dms process on that run dir) and
/// `logs/<target>.log` (the default helper log).
///
/// ```
/// use dms_core::ManagerOptions;
/// use std::time::Duration;
/// let mut opts = ManagerOptions::new("/tmp/dms-example");
/// opts.failed_start_grace = Duration::from_secs(2);
/// assert_eq!(opts.locks_dir(), std::path::Path::new("/tmp/dms-example/locks"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ManagerOptions {
    /// The run directory (`/run/dms` in production).
    pub run_dir: PathBuf,
    /// How long a helper the manager stops on its own, because its start failed (it did
    /// not mount, went into the background in a way dms cannot follow, or its record
    /// could not be written), may take to stop after SIGTERM before it gets SIGKILL.
    /// Default 10 s. (The grace of a replaced helper is the spec's
    /// [`HelperSpec::replace`]; `kill` and `cleanup_all` take theirs as an argument.)
    pub failed_start_grace: Duration,
    /// How the resource usage (CPU percent, resident memory, threads) of a running
    /// helper is read for `process_info` and the listings. Default
    /// [`UsageSampling::Interval`] of 100 ms.
    pub usage: UsageSampling,
    /// Tolerance of the bare-PID-file identity rule: a live process named by a PID file
    /// without recorded identity counts as ours when it started no later than the file's
    /// mtime plus this slack. Both times are on one clock: the start ticks since boot
    /// are moved onto the wall clock through the boot instant (`CLOCK_REALTIME` minus
    /// `CLOCK_BOOTTIME`, read together), exact to one clock tick. A helper dms spawned
    /// was forked before its file was written, yet can appear to start a few
    /// milliseconds after it: the file time comes from the kernel's coarse clock (one
    /// jiffy, at most 10 ms at `HZ=100`, behind) and start ticks are whole clock ticks
    /// (10 ms at `USER_HZ=100`). The default, [`DEFAULT_START_TIME_SLACK`], covers both.
    /// A process that takes a reused PID later than this after the file's write is
    /// foreign; one that takes it within the slack cannot be told from the helper of a
    /// bare file (the `sqlite` backend records exact start ticks and has no such window).
    pub start_time_slack: Duration,
    /// Capacity of the event channel ([`crate::Manager::subscribe`]); a receiver that
    /// falls further behind loses the oldest events. Default 1024.
    pub event_capacity: usize,
    /// One-shot mode, for a process that does one thing and exits (the command line's
    /// `status`, `stats`, `spawn`, `kill` and `adopt`): [`crate::Manager::open`] runs no
    /// startup recovery (no scan of the PID files, nothing removed) and the manager
    /// watches no helper's exit, so a memory hit is re-checked with a probe. Every
    /// operation still takes the target's lock and checks identity before it acts; the
    /// state of a target is read from its own entry only. Default `false`: full startup
    /// recovery and exit watching, as a long-running manager needs.
    pub one_shot: bool,
    /// The mount mechanics the manager acts through (read the mount table, wait for a
    /// helper's mount, probe it, unmount or detach exactly the recorded mount, abort its
    /// FUSE connection). Default [`crate::mount::LinuxMounts`], the running system's; a
    /// test puts a [`crate::mount::FakeMounts`] here to drive the manager's mount logic
    /// without root or FUSE.
    pub mounts: Arc<dyn Mounts>,
}

impl ManagerOptions {
    /// The defaults, on `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>) -> ManagerOptions {
        ManagerOptions {
            run_dir: run_dir.into(),
            failed_start_grace: Duration::from_secs(10),
            usage: UsageSampling::Interval(Duration::from_millis(100)),
            start_time_slack: DEFAULT_START_TIME_SLACK,
            event_capacity: 1024,
            one_shot: false,
            mounts: Arc::new(LinuxMounts),
        }
    }

    /// `<run-dir>/locks`.
    pub fn locks_dir(&self) -> PathBuf {
        self.run_dir.join("locks")
    }

    /// `<run-dir>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.run_dir.join("logs")
    }
}

/// How a manager reads the resource usage of its running helpers ([`ManagerOptions::usage`]).
///
/// ```
/// use dms_core::UsageSampling;
/// use std::time::Duration;
/// // What `dms serve` uses: a background sample every second, read in line without
/// // waiting for a helper not sampled yet.
/// let serve = UsageSampling::Background { every: Duration::from_secs(1) };
/// assert_eq!(serve.in_line(), Some(Duration::ZERO));
/// assert_eq!(UsageSampling::Off.in_line(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageSampling {
    /// Never read: `cpu_percent`, `rss_bytes` and `threads` are `null`.
    Off,
    /// Read with each probe, without waiting, CPU percent averaged over the helper's
    /// lifetime (what `ps` shows as `%CPU`; see [`dms_proc::Usage::cpu_percent`]). What
    /// the one-shot command line uses.
    Lifetime,
    /// Sampled over this interval: `process_info` waits for it, and a listing samples
    /// every running helper concurrently over one shared interval, once all rows are
    /// made. A zero interval is [`UsageSampling::Lifetime`].
    Interval(Duration),
    /// Sampled in the background: every `every` (in slices spread over the period), the
    /// CPU time, resident memory and threads of every helper held in memory are read
    /// (one read of `/proc/PID/stat` each), and `process_info` and the listings show the
    /// last sample (CPU percent over the time since the one before, as `top` shows it)
    /// while it is at most 2 s old; else usage is read as [`UsageSampling::Lifetime`].
    /// Not in one-shot mode (there it is [`UsageSampling::Lifetime`]). What `dms serve`
    /// uses, every second. A zero period is [`UsageSampling::Lifetime`].
    Background {
        /// The sampling period.
        every: Duration,
    },
}

impl UsageSampling {
    /// The interval usage is sampled over in line, when it is: `Some(Duration::ZERO)`
    /// reads it with the probe, without waiting; `None` never reads it in line.
    pub fn in_line(self) -> Option<Duration> {
        match self {
            UsageSampling::Off => None,
            UsageSampling::Lifetime | UsageSampling::Background { .. } => Some(Duration::ZERO),
            UsageSampling::Interval(every) => Some(every),
        }
    }

    /// The period of the background sampler, when there is one.
    pub fn background(self) -> Option<Duration> {
        match self {
            UsageSampling::Background { every } if !every.is_zero() => Some(every),
            _ => None,
        }
    }
}

/// What to start for a target.
///
/// The `Debug` output shows environment keys only, never values.
///
/// ```
/// use dms_core::HelperSpec;
/// let spec = HelperSpec {
///     program: "/usr/bin/s3vaultfuse.py".into(),
///     env: vec![("AWS_SECRET_ACCESS_KEY".into(), "hunter2".into())],
///     ..HelperSpec::default()
/// };
/// assert!(!format!("{spec:?}").contains("hunter2"));
/// ```
#[derive(Clone, Default)]
pub struct HelperSpec {
    /// The program: a path, or a name looked up in the `PATH` of `env`.
    pub program: OsString,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<OsString>,
    /// Its complete environment. Values are never logged or stored.
    pub env: Vec<(OsString, OsString)>,
    /// Where stdout and stderr go; `<run-dir>/logs/<target>.log` when `None`.
    pub log: Option<PathBuf>,
    /// The mount point the helper serves, if any. Recorded (as metadata and in
    /// `<run-dir>/mounts/`), reported in the info object, unmounted by `kill`. Refused
    /// when it is `/`, inside or above the run directory, or the recorded mount of another
    /// target whose helper runs. With a [`HelperSpec::ready_timeout`] it is also created
    /// if missing, refused if it already is a mount point, and the helper counts as
    /// started only once it is one that answers `statfs` (its identity is then recorded).
    pub mount: Option<PathBuf>,
    /// With a `mount`: how long `spawn` waits for the helper to mount it (the command
    /// line always sets it, default [`crate::DEFAULT_READY_TIMEOUT`], 30 s). `None`: the
    /// mount is only recorded, as given, and the helper counts as started once its
    /// program runs (for helpers that mount later, and for fake spawners in tests).
    pub ready_timeout: Option<Duration>,
    /// `Some(grace)`: stop a running helper of the target first (SIGTERM, then SIGKILL
    /// after `grace`), instead of refusing with [`crate::Error::AlreadyRunning`]. What can
    /// fail without a fork is checked before the old helper stops.
    pub replace: Option<Duration>,
}

impl fmt::Debug for HelperSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.env.iter().map(|(k, _)| k).collect();
        f.debug_struct("HelperSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env_keys", &keys)
            .field("log", &self.log)
            .field("mount", &self.mount)
            .field("ready_timeout", &self.ready_timeout)
            .field("replace", &self.replace)
            .finish()
    }
}
