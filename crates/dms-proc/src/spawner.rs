//! The [`Spawner`] trait, the OS seam of the manager, with its exit watcher and usage
//! reader.

use crate::types::*;
#[cfg(doc)]
use crate::DEFAULT_KILL_WAIT;
#[cfg(doc)]
use crate::{fake, linux};
use crate::{Pid, ProcError};
use async_trait::async_trait;
use std::fmt::Debug;
use std::time::Duration;

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

    /// Looks at whatever process has `pid` now, reading of a live one what `fields`
    /// asks besides its identity and command line: [`ProcInfo::exe`] only with
    /// [`ProbeFields::exe`] (left `None` otherwise), and its [`Spawner::usage`] with a
    /// zero interval (CPU percent the average since the process started) only with
    /// [`ProbeFields::usage`]; a spawner that reads both from the same source (on
    /// Linux, one read of `/proc/PID/stat`) reads it once. The usage is `None` when not
    /// asked for, when the process is not alive, or when it could not be read (logged at
    /// debug level).
    async fn probe(
        &self,
        pid: Pid,
        fields: ProbeFields,
    ) -> Result<(Probe, Option<Usage>), ProcError>;

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

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait up to `kill_wait` for the exit
    /// ([`DEFAULT_KILL_WAIT`] unless the caller has a reason). The Linux spawner applies
    /// both, and both waits, to `who` and every member of its process group (when it
    /// leads one) until all are gone; [`StopOutcome::signals`] then lists SIGKILL when a
    /// member needed it, even if the leader died of SIGTERM. A caller that has a further
    /// remedy for a process SIGKILL cannot end at once (a FUSE daemon with a thread stuck
    /// in a request to its own mount, freed only by aborting the connection) passes a
    /// short `kill_wait`. [`escalate`] is the escalation for one process, over
    /// [`Spawner::signal`] and [`Spawner::wait_exit`].
    async fn terminate(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<StopOutcome, ProcError>;
}

/// SIGTERM to `who`, wait up to `grace`, then SIGKILL and wait up to `kill_wait`, through
/// `spawner`'s [`Spawner::signal`] (which proves the identity before each signal) and
/// [`Spawner::wait_exit`]: the escalation of [`Spawner::terminate`] for a single process.
/// Stops at the first exit, or at a mismatch ([`StopOutcome::mismatch`]: the PID is
/// another process's now, and nothing more is sent).
pub async fn escalate<S: Spawner + ?Sized>(
    spawner: &S,
    who: &ProcIdentity,
    grace: Duration,
    kill_wait: Duration,
) -> Result<StopOutcome, ProcError> {
    let mut out = StopOutcome::default();
    for (signal, wait) in [(Signal::Term, grace), (Signal::Kill, kill_wait)] {
        match spawner.signal(who, signal).await? {
            SignalOutcome::Delivered => out.signals.push(signal),
            SignalOutcome::Gone => {}
            SignalOutcome::Mismatch => {
                out.mismatch = true;
                return Ok(out);
            }
        }
        if let WaitOutcome::Exited(status) = spawner.wait_exit(who, Some(wait)).await? {
            out.stopped = true;
            out.status = Some(status);
            return Ok(out);
        }
    }
    Ok(out)
}

/// Forwards to the shared spawner, so a test can keep a handle on its fake.
#[async_trait]
#[warn(clippy::missing_trait_methods)]
impl<T: Spawner + ?Sized> Spawner for std::sync::Arc<T> {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<Pending, ProcError> {
        (**self).spawn(spec).await
    }
    async fn probe(
        &self,
        pid: Pid,
        fields: ProbeFields,
    ) -> Result<(Probe, Option<Usage>), ProcError> {
        (**self).probe(pid, fields).await
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
    fn preflight(&self, spec: &SpawnSpec) -> Result<(), ProcError> {
        (**self).preflight(spec)
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
        kill_wait: Duration,
    ) -> Result<StopOutcome, ProcError> {
        (**self).terminate(who, grace, kill_wait).await
    }
}
