//! The `dms` manager: one long-running helper process per backup target, tracked in
//! memory and on disk (`<run-dir>/s3/<target>.pid`), surviving the manager's own
//! restarts without losing or mis-killing a helper.
//!
//! The [`Manager`] composes a [`dms_store::PidStore`] (PID files, SQLite metadata, or
//! memory) and a [`dms_proc::Spawner`] (the real OS, or a fake), both as trait objects.
//! See [`Manager`] for the rules it keeps: identity before any signal, one lock per
//! target across processes, a start barrier so the PID file exists before the helper's
//! program runs, and exit watching without polling.
//!
//! With a mount point ([`HelperSpec::mount`] and [`HelperSpec::ready_timeout`]) a helper
//! counts as started once its directory is mounted and answers, the info object reports
//! the mount's state (`mounted`, `stale`, `unmounted`), `kill` unmounts before it
//! signals, and [`Manager::cleanup_mounts`] detaches orphaned and stale mounts. Each acts
//! only on the exact mount recorded for the target when it came up, never on whatever
//! else lies at or under its path. The mount mechanics are a third trait object,
//! [`mount::Mounts`] ([`ManagerOptions::mounts`]: the running system's by default, a
//! [`mount::FakeMounts`] in tests); [`mount`] re-exports them with the mount records.
//!
//! ```no_run
//! use dms_core::{HelperSpec, Manager, ManagerOptions};
//! use dms_store::{PidStore, TargetId};
//! use dms_proc::Spawner;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! # async fn example(store: Arc<dyn PidStore>, spawner: Arc<dyn Spawner>) -> dms_core::Result<()> {
//! let (manager, recovery) = Manager::open(store, spawner, ManagerOptions::new("/run/dms")).await?;
//! println!("recovered {} running helpers", recovery.adopted.len());
//!
//! let target: TargetId = "target-123".parse().unwrap();
//! let spec = HelperSpec { program: "/usr/bin/s3vaultfuse.py".into(), ..HelperSpec::default() };
//! let info = manager.spawn(&target, spec).await?;
//! assert!(manager.is_running(&target).await?);
//! println!("{}", info.pid.unwrap());
//!
//! let report = manager.kill(&target, Duration::from_secs(10)).await?;
//! assert!(report.stopped);
//! # Ok(()) }
//! ```

mod error;
mod lock;
mod manager;
pub mod mount;
mod options;
mod report;

pub use error::{Error, Report, Result};
pub use manager::{ListOrder, Manager, DEFAULT_READY_TIMEOUT};
pub use options::{HelperSpec, ManagerOptions, UsageSampling, DEFAULT_START_TIME_SLACK};
pub use report::{
    CleanupReport, Event, KeptMount, KillReport, KillStep, MountAction, MountOutcome, MountState,
    ProcessInfo, ProcessState, RecoveryReport, RemovalReason, Removed, Source, Stats, StrayNote,
    TargetNote, TargetPid,
};

/// The README's library example, compiled as a doctest so it stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
