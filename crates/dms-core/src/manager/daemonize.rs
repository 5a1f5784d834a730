//! Helpers that daemonize are never lost (issue 17.2).
//!
//! s3fs, bindfs, sshfs and `rclone --daemon` fork into the background by default: the
//! process dms started (the *leader*) exits 0 and a child serves the mount. During a
//! helper's startup dms is the child subreaper of what it spawned
//! ([`Spawner::begin_startup`]), so that child becomes dms's child instead of being
//! lost; as systemd's `Type=forking` does, dms then records it as the helper (PID file
//! rewritten, identity recorded, exit watched):
//!
//! - with `--mount`: the process serving the mount, i.e. the one that holds `/dev/fuse`
//!   open, or the only one left;
//! - without: the only one left.
//!
//! When that cannot be decided (several candidates, none or several holding
//! `/dev/fuse`), or the leader exited with a failure while leaving processes behind,
//! spawn fails with [`Error::Daemonized`], which names the foreground flag, and the
//! processes the leader left are stopped. Nothing is left running untracked.
//!
//! When does a startup end? With `--mount`, when the mount is up and the leader first
//! waits for something: if it then has a child holding `/dev/fuse`, it is handing the
//! mount over to a daemon, and dms waits (within `--ready-timeout`) for it to exit.
//! Without `--mount`, when the leader first waits for something (sleeps) or exits
//! ([`Spawner::settle`], a few milliseconds for a program that stays in the
//! foreground): a program that forks into the background before it ever waits, as
//! `sh -c 'sleep 300 & exit 0'` does, is followed; one that waits first and goes into
//! the background later is not (run it in the foreground, or give it `--mount`).

use super::{record_for, Inner};
use crate::error::{Error, Result};
use crate::manager::mount_ops::{describe, log_tail, LOG_TAIL_LINES};
use crate::manager::mount_spawn::PreparedMount;
use dms_proc::{ExitStatus, Orphan, ProcIdentity, Settled, Spawner, StartupWindow};
use dms_store::{Metadata, TargetId};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How long a helper started without `--mount` may run without ever waiting before it
/// counts as started ([`Settled::Busy`]).
const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// What the leader left behind, and which of it serves the helper.
pub(super) enum Handover {
    /// The leader is the helper (it stays in the foreground).
    Leader,
    /// This orphan is the helper now.
    To(ProcIdentity),
}

/// The helper among what the leader left: the one holding `/dev/fuse` (with a mount),
/// else the only one.
fn choose(orphans: &[Orphan], mount: bool) -> Option<&Orphan> {
    if mount {
        let mut fuse = orphans.iter().filter(|o| o.holds_fuse);
        if let (Some(one), None) = (fuse.next(), fuse.next()) {
            return Some(one);
        }
    }
    match orphans {
        [one] => Some(one),
        _ => None,
    }
}

fn pids(orphans: &[Orphan]) -> String {
    orphans
        .iter()
        .map(|o| o.identity.pid.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Inner {
    /// Stops every process `leader` left behind that is provably its own (each with its
    /// group, through pidfds); the unattributed ones are logged and left alone.
    pub(super) async fn stop_orphans(&self, leader: &ProcIdentity, window: &StartupWindow) {
        let orphans = match self.spawner.orphans(leader, window).await {
            Ok(o) => o,
            Err(e) => {
                warn!(pid = leader.pid.get(), error = %crate::Report::new(&e), "cannot look for what the helper left running");
                return;
            }
        };
        for o in &orphans.ours {
            match self
                .spawner
                .terminate(
                    &o.identity,
                    self.opts.failed_start_grace,
                    dms_proc::DEFAULT_KILL_WAIT,
                )
                .await
            {
                Ok(out) if out.stopped || out.mismatch => {
                    info!(
                        pid = o.identity.pid.get(),
                        leader = leader.pid.get(),
                        "stopped a process the helper left running"
                    )
                }
                Ok(_) => warn!(
                    pid = o.identity.pid.get(),
                    "a process the helper left running outlived SIGKILL"
                ),
                Err(e) => {
                    warn!(pid = o.identity.pid.get(), error = %crate::Report::new(&e), "cannot stop a process the helper left running")
                }
            }
        }
        if !orphans.unattributed.is_empty() {
            warn!(pids = pids(&orphans.unattributed), "processes left by a helper whose start overlapped another's: not attributed, not stopped");
        }
    }

    /// After a start that failed while following the helper: stops the leader (if it
    /// still runs) and what it left, so nothing runs untracked once the record is gone.
    pub(super) async fn stop_startup(&self, leader: &ProcIdentity, window: &StartupWindow) {
        if let Err(e) = self
            .spawner
            .terminate(
                leader,
                self.opts.failed_start_grace,
                dms_proc::DEFAULT_KILL_WAIT,
            )
            .await
        {
            warn!(pid = leader.pid.get(), error = %crate::Report::new(&e), "cannot stop a helper whose start failed");
        }
        self.stop_orphans(leader, window).await;
    }

    /// Decides who the helper is once its leader exited with `status` during its
    /// startup: `Ok(None)` when it left nothing running (the leader was the helper);
    /// otherwise the orphan that is the helper now, or an error after stopping them all.
    ///
    /// `known`: processes seen as the leader's own children while it lived (so they are
    /// its, even when another helper's start overlapped).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn handover_after_exit(
        &self,
        target: &TargetId,
        leader: &ProcIdentity,
        status: ExitStatus,
        window: &StartupWindow,
        mount: bool,
        known: &[ProcIdentity],
        log: &Path,
    ) -> Result<Option<ProcIdentity>> {
        let mut orphans = self.spawner.orphans(leader, window).await?;
        let (seen, rest): (Vec<Orphan>, Vec<Orphan>) = std::mem::take(&mut orphans.unattributed)
            .into_iter()
            .partition(|o| known.contains(&o.identity));
        orphans.ours.extend(seen);
        orphans.unattributed = rest;
        if orphans.ours.is_empty() && orphans.unattributed.is_empty() {
            return Ok(None);
        }
        let why = if status != ExitStatus::Code(0) {
            format!(
                "its first process exited ({status:?}) leaving {} running (PIDs {})",
                orphans.ours.len() + orphans.unattributed.len(),
                pids(&orphans.ours)
            )
        } else if !orphans.unattributed.is_empty() {
            format!(
                "another helper started at the same time, so the processes it left (PIDs {}) \
                 cannot be told apart",
                pids(&orphans.unattributed)
            )
        } else {
            match choose(&orphans.ours, mount) {
                Some(helper) => return Ok(Some(helper.identity.clone())),
                None => format!(
                    "left {} processes running (PIDs {}){}, so dms cannot tell which one is the helper",
                    orphans.ours.len(),
                    pids(&orphans.ours),
                    if mount { " and not exactly one holds /dev/fuse" } else { "" }
                ),
            }
        };
        warn!(target = %target, pid = leader.pid.get(), why, "cannot follow a helper into the background");
        self.stop_orphans(leader, window).await;
        Err(Error::Daemonized {
            target: target.clone(),
            pid: leader.pid,
            why,
            log: log.to_owned(),
            log_tail: log_tail(log, LOG_TAIL_LINES),
        })
    }

    /// Without `--mount`: follows the released `leader` until it first waits or exits
    /// and returns who the helper is.
    pub(super) async fn follow_startup(
        &self,
        target: &TargetId,
        leader: &ProcIdentity,
        window: &StartupWindow,
        log: &Path,
    ) -> Result<Handover> {
        match self.spawner.settle(leader, SETTLE_LIMIT).await? {
            Settled::Waiting | Settled::Busy => Ok(Handover::Leader),
            Settled::Exited(status) => Ok(
                match self
                    .handover_after_exit(target, leader, status, window, false, &[], log)
                    .await?
                {
                    Some(helper) => Handover::To(helper),
                    None => Handover::Leader,
                },
            ),
        }
    }

    /// With `--mount`, once the mount is up while the leader lives: if the leader is
    /// handing the mount over to a child holding `/dev/fuse`, waits (up to `left`) for
    /// it to exit and returns the new helper.
    pub(super) async fn follow_after_mount(
        &self,
        target: &TargetId,
        leader: &ProcIdentity,
        window: &StartupWindow,
        left: Duration,
        log: &Path,
    ) -> Result<Handover> {
        let settled = self.spawner.settle(leader, left).await?;
        tracing::debug!(target = %target, pid = leader.pid.get(), ?settled, "mounted; the helper settled");
        let mut children = Vec::new();
        let status = match settled {
            Settled::Busy => return Ok(Handover::Leader),
            Settled::Exited(status) => status,
            Settled::Waiting => {
                children = self.spawner.fuse_children(leader).await?;
                tracing::debug!(target = %target, pid = leader.pid.get(), ?children, "children holding /dev/fuse");
                if children.is_empty() {
                    // It may have handed over and exited since it was seen waiting (its
                    // child is then ours already): a look at its state, not at its reaping.
                    match self.spawner.settle(leader, Duration::ZERO).await? {
                        Settled::Exited(status) => status,
                        Settled::Waiting | Settled::Busy => return Ok(Handover::Leader),
                    }
                } else {
                    info!(target = %target, pid = leader.pid.get(), "the helper hands its mount to a child; waiting for it to go into the background");
                    match self.spawner.wait_exit(leader, Some(left)).await? {
                        dms_proc::WaitOutcome::Exited(status) => status,
                        // It stays: a foreground server with a child that holds the device.
                        dms_proc::WaitOutcome::TimedOut => return Ok(Handover::Leader),
                    }
                }
            }
        };
        Ok(
            match self
                .handover_after_exit(target, leader, status, window, true, &children, log)
                .await?
            {
                Some(helper) => Handover::To(helper),
                None => Handover::Leader,
            },
        )
    }

    /// With `--mount`, when the leader exited with `status` before the mount was up: if
    /// it left processes running, waits (up to `left`) for them to mount, then decides
    /// who serves the mount. `Err(why)`: the start failed (nothing left that could
    /// mount, or the timeout passed); the caller stops everything and reports `why`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn await_daemon_mount(
        &self,
        target: &TargetId,
        leader: &ProcIdentity,
        status: ExitStatus,
        window: &StartupWindow,
        prepared: &PreparedMount,
        left: Duration,
        log: &Path,
    ) -> std::result::Result<Result<Handover>, String> {
        let exited = || format!("the helper {} before mounting", describe(&status));
        let orphans = match self.spawner.orphans(leader, window).await {
            Ok(o) => o,
            Err(e) => return Ok(Err(e.into())),
        };
        if status != ExitStatus::Code(0)
            || orphans.ours.is_empty()
            || !orphans.unattributed.is_empty()
        {
            if orphans.ours.is_empty() && orphans.unattributed.is_empty() {
                return Err(exited());
            }
            // Left processes behind but failed, or cannot be told apart: say so.
            return Ok(self
                .handover_after_exit(target, leader, status, window, true, &[], log)
                .await
                .map(|h| h.map_or(Handover::Leader, Handover::To)));
        }
        info!(target = %target, pid = leader.pid.get(), left = pids(&orphans.ours),
            "the helper went into the background before mounting; waiting for its mount");
        let all_exited = async {
            for o in &orphans.ours {
                let _ = self.spawner.wait_exit(&o.identity, None).await;
            }
        };
        let mounted = tokio::time::timeout(left, async {
            tokio::select! {
                biased;
                m = self.mounts().wait_for_mount(&prepared.path, prepared.before.clone()) => m.is_ok(),
                () = all_exited => false,
            }
        })
        .await;
        match mounted {
            Ok(true) => Ok(self
                .handover_after_exit(target, leader, status, window, true, &[], log)
                .await
                .map(|h| h.map_or(Handover::Leader, Handover::To))),
            Ok(false) => Err(format!(
                "the helper went into the background (its first process {}) and what it left \
                 exited before mounting",
                describe(&status)
            )),
            Err(_) => Err(format!(
                "the helper went into the background (its first process {}) and did not mount \
                 within {:.1} s (the ready timeout)",
                describe(&status),
                left.as_secs_f64()
            )),
        }
    }

    /// Records `helper` instead of `leader` as the helper of `target`: adopted as a
    /// child (reaped, status known), PID file rewritten with its identity, tracked and
    /// watched in memory. On failure it is stopped.
    pub(super) async fn hand_over(
        self: &Arc<Self>,
        target: &TargetId,
        leader: &ProcIdentity,
        helper: &ProcIdentity,
        meta: Metadata,
    ) -> Result<()> {
        let recorded = async {
            self.spawner.adopt_orphan(helper).await?;
            self.store
                .put(target, &record_for(helper, meta.clone()))
                .await?;
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = recorded {
            warn!(target = %target, pid = helper.pid.get(), error = %crate::Report::new(&e), "cannot record the helper's daemon; stopping it");
            let _ = self
                .spawner
                .terminate(
                    helper,
                    self.opts.failed_start_grace,
                    dms_proc::DEFAULT_KILL_WAIT,
                )
                .await;
            self.forget(target, Some(leader));
            let _ = self.store.remove(target).await;
            return Err(e);
        }
        self.forget(target, Some(leader));
        self.track(target, helper.clone(), meta);
        info!(target = %target, leader = leader.pid.get(), pid = helper.pid.get(),
            "the helper went into the background; its daemon is recorded as the helper");
        Ok(())
    }
}
