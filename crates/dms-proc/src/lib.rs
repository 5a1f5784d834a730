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
//! let grace = Duration::from_secs(10);
//! let stop = spawner.terminate(&helper, grace, dms_proc::DEFAULT_KILL_WAIT).await?;
//! assert!(stop.stopped);
//! # Ok::<(), dms_proc::ProcError>(())
//! # }).unwrap();
//! ```

pub use dms_store::Pid;

pub mod fake;
pub mod linux;

mod error;
mod spawner;
mod types;

pub use error::ProcError;
pub use spawner::{escalate, ExitSender, ExitWatch, Spawner, UsageReader};
pub use types::{
    ExitStatus, Orphan, Orphans, Pending, Probe, ProbeFields, ProcIdentity, ProcInfo, Settled,
    Signal, SignalOutcome, SpawnSpec, StartGate, StartupWindow, StopOutcome, Usage, WaitOutcome,
};

/// Exit code of a helper whose [`StartGate`] was dropped (or whose spawner died) before
/// release: it exits with this code without running its program.
pub const GATE_DROPPED_EXIT_CODE: i32 = 125;

/// How long [`Spawner::terminate`] waits for the exit after SIGKILL before it reports the
/// process still running (a process in uninterruptible sleep can outlive SIGKILL).
pub const DEFAULT_KILL_WAIT: Duration = Duration::from_secs(5);

use std::time::Duration;
