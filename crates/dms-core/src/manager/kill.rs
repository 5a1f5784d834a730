//! `kill`: identity first, unmount first (a FUSE helper then exits by itself), then
//! SIGTERM, the grace, SIGKILL; and `cleanup --all`: every helper is stopped at the same
//! time, so the whole stop takes about one grace period, not one per helper (issue
//! 17.6): every SIGTERM goes out first, the graces run together, then each helper still
//! there gets its SIGKILL.

use super::verdict::Verdict;
use super::{Inner, Manager};
use crate::error::{Error, Result};
use crate::report::{Event, KillReport, KillStep, RemovalReason};
use dms_proc::WaitOutcome;
use dms_store::{Stored, TargetId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{error, info};

impl Manager {
    /// Stops the helper of `target`: SIGTERM to its process group, up to `grace`, then
    /// SIGKILL; then forgets it in memory and removes its PID file.
    ///
    /// The PID comes from memory, else from disk, and is signalled only once proven to
    /// be the recorded process; stale and foreign entries are removed without any
    /// signal. Not running is not an error: see [`KillReport::was_running`].
    pub async fn kill(&self, target: &TargetId, grace: Duration) -> Result<KillReport> {
        self.inner.kill(target, grace).await
    }
}

/// How many stops run at once: bounded by the open-file limit (a stop holds the
/// target's lock file and a few pidfds), between 16 and 4096. With the usual soft limit
/// of 1024 that is 240 helpers per grace period.
fn concurrency() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    usize::try_from(soft.saturating_sub(64) / 4)
        .unwrap_or(4096)
        .clamp(16, 4096)
}

impl Inner {
    pub(super) async fn kill(
        self: &Arc<Self>,
        target: &TargetId,
        grace: Duration,
    ) -> Result<KillReport> {
        let _guard = self.locks.lock(target).await?;
        let mut report = KillReport {
            target: target.clone(),
            pid: None,
            was_running: false,
            signal: None,
            stopped: false,
            steps: Vec::new(),
        };
        let mem = self.memory_identity(target);
        let disk = self.store.get(target).await?;
        let mut victims = Vec::new();
        let mut disk_reason = None;
        if let Some(id) = &mem {
            report.pid = Some(id.pid);
            victims.push(id.clone());
        }
        match &disk {
            Some(Stored::Valid(r)) if mem.as_ref().is_some_and(|id| id.pid == r.pid) => {}
            Some(Stored::Valid(r)) => {
                report.pid.get_or_insert(r.pid);
                match self.classify(target, r).await {
                    Verdict::Own(info) => victims.push(info.identity),
                    Verdict::Stale => disk_reason = Some(RemovalReason::Stale),
                    Verdict::Foreign(why) => {
                        info!(target = %target, pid = r.pid.get(), why, "PID file names a foreign process; not signalled");
                        disk_reason = Some(RemovalReason::Foreign);
                    }
                    Verdict::Unverified(reason) => {
                        return Err(Error::Unverified {
                            target: target.clone(),
                            pid: r.pid,
                            reason,
                        })
                    }
                }
            }
            Some(Stored::Corrupt(_)) => disk_reason = Some(RemovalReason::Corrupt),
            None => {}
        }
        let mut mount = self.kill_mount(target);
        for victim in &victims {
            // With a mount: unmount first; a FUSE helper then exits by itself.
            if let Some(m) = mount.as_mut() {
                let own = matches!(self.verify(victim).await, Verdict::Own(_));
                let members = match own {
                    true => self.members_of(victim).await,
                    false => Vec::new(),
                };
                if own && self.kill_unmount_first(m, &mut report.steps) {
                    if let WaitOutcome::Exited(_) =
                        self.spawner.wait_exit(victim, Some(grace)).await?
                    {
                        // The members of its group that outlived it (issue 17.3).
                        let left = self.stop_members(&members, grace, &mut report.steps).await;
                        if let Some(last) = left.last {
                            report.signal = Some(last);
                        }
                        if let Some(member) = left.left {
                            return Err(Error::StillRunning {
                                target: target.clone(),
                                pid: member.pid,
                            });
                        }
                        report.was_running = true;
                        report.stopped = true;
                        info!(target = %target, pid = victim.pid.get(), "helper exited after its mount was unmounted");
                        self.emit(Event::Killed {
                            target: target.clone(),
                            pid: victim.pid,
                        });
                        continue;
                    }
                }
            }
            let out = self
                .terminate_mounted(victim, grace, mount.as_ref(), &mut report.steps)
                .await?;
            if let Some(last) = out.signals.last() {
                report.signal = Some(*last);
            }
            if out.mismatch {
                info!(target = %target, pid = victim.pid.get(), "PID was reused; not signalled");
                continue;
            }
            if !out.stopped {
                return Err(Error::StillRunning {
                    target: target.clone(),
                    pid: victim.pid,
                });
            }
            if !out.signals.is_empty() {
                report.was_running = true;
                report.stopped = true;
                info!(target = %target, pid = victim.pid.get(), signals = ?out.signals, "stopped helper");
                self.emit(Event::Killed {
                    target: target.clone(),
                    pid: victim.pid,
                });
            }
        }
        if let Some(m) = mount.as_mut() {
            self.kill_mount_after(target, m, &mut report.steps).await;
        }
        if self.forget(target, None) {
            report.steps.push(KillStep::ForgetMemory);
        }
        if disk.is_some() && self.store.remove(target).await? {
            report.steps.push(match disk_reason {
                Some(RemovalReason::Stale) => KillStep::ClearStale,
                Some(RemovalReason::Foreign) => KillStep::ClearForeign,
                Some(RemovalReason::Corrupt) => KillStep::ClearCorrupt,
                None => KillStep::RemovePidFile,
            });
            if let Some(reason) = disk_reason {
                self.emit(Event::Cleaned {
                    target: target.clone(),
                    pid: report.pid,
                    reason,
                });
            }
        }
        Ok(report)
    }

    /// Stops the helpers of `targets` concurrently (each as `kill` does, with `grace`).
    /// Returns the targets whose helper was stopped, in the order given, and the first
    /// error in that order (every target is attempted).
    pub(super) async fn kill_all(
        self: &Arc<Self>,
        targets: Vec<TargetId>,
        grace: Duration,
    ) -> (Vec<TargetId>, Option<Error>) {
        let permits = Arc::new(Semaphore::new(concurrency()));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, target) in targets.iter().cloned().enumerate() {
            let inner = self.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (i, inner.kill(&target, grace).await)
            });
        }
        let mut results: Vec<Option<Result<bool>>> = (0..targets.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, r)) => results[i] = Some(r.map(|k| k.stopped)),
                Err(e) => error!(error = %crate::Report::new(&e), "a stop task failed"),
            }
        }
        let mut stopped = Vec::new();
        let mut first_err = None;
        for (target, result) in targets.into_iter().zip(results) {
            match result {
                Some(Ok(true)) => stopped.push(target),
                Some(Ok(false)) | None => {}
                Some(Err(e)) => {
                    error!(target = %target, error = %crate::Report::new(&e), "cannot stop helper");
                    first_err.get_or_insert(e);
                }
            }
        }
        (stopped, first_err)
    }
}
