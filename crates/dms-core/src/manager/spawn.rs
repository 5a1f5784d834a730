//! `spawn`: the helper created at the start barrier, recorded, then let run; with
//! `replace`, the old helper stopped first (checks that need no fork are in
//! [`super::preflight`], the mount side in [`super::mount_spawn`]).

use super::mount_ops::DEFAULT_READY_TIMEOUT;
use super::{daemonize, record_for, Inner, Manager};
use crate::error::{Error, Result};
use crate::options::HelperSpec;
use crate::report::{Event, ProcessInfo, RemovalReason};
use dms_proc::{Pid, ProcIdentity, SpawnSpec, WaitOutcome};
use dms_store::{Metadata, Stored, TargetId};
use std::sync::Arc;
use std::time::SystemTime;
use tracing::{debug, error, info, warn};

impl Manager {
    /// Starts `spec` as the helper of `target`.
    ///
    /// Under the target's lock: refuses if a live helper proven ours exists
    /// ([`Error::AlreadyRunning`]) unless `spec.replace` (then it is stopped first, with
    /// that grace); creates the helper held at the start barrier;
    /// records it (PID file, identity, metadata, never environment values) and in
    /// memory; only then lets it run its program, and starts watching its exit.
    ///
    /// If the record cannot be written the helper never runs its program. If the program
    /// cannot be executed, the record is removed and the error names the program.
    pub async fn spawn(&self, target: &TargetId, spec: HelperSpec) -> Result<ProcessInfo> {
        self.inner.spawn(target, spec).await?;
        self.process_info(target).await
    }
}

impl Inner {
    /// Removes `target`'s entry if it is not a valid PID file (a directory in the way
    /// would make the next `put` fail). Call with the target's lock.
    pub(super) async fn clear_corrupt(&self, target: &TargetId) -> Result<()> {
        if let Some(Stored::Corrupt(c)) = self.store.get(target).await? {
            info!(target = %target, reason = c.reason, "removing corrupt PID file before writing a new one");
            if self.store.remove(target).await? {
                self.emit(Event::Cleaned {
                    target: target.clone(),
                    pid: None,
                    reason: RemovalReason::Corrupt,
                });
            }
        }
        Ok(())
    }

    /// The spawn under the target's lock; `stopped` is set once an old helper was
    /// stopped for a replace (see [`preflight`]).
    pub(super) async fn spawn_replacing(
        self: &Arc<Self>,
        target: &TargetId,
        spec: HelperSpec,
        stopped: &mut Option<Pid>,
    ) -> Result<ProcIdentity> {
        let _guard = self.locks.lock(target).await?;
        if let Some(dir) = &spec.mount {
            self.check_mount_dir(target, dir).await?;
        }
        if let Some(old) = self.live_helper(target).await? {
            let Some(grace) = spec.replace else {
                return Err(Error::AlreadyRunning {
                    target: target.clone(),
                    pid: old.pid,
                });
            };
            // Whatever can fail without a fork is checked before the old helper stops.
            let new_log = spec
                .log
                .clone()
                .unwrap_or_else(|| target.log_file_in(&self.opts.logs_dir()));
            self.preflight(&spec, &new_log)
                .map_err(|e| Error::NotReplaced {
                    target: target.clone(),
                    pid: old.pid,
                    source: Box::new(e),
                })?;
            info!(target = %target, pid = old.pid.get(), "replacing running helper");
            // With a mount: unmount first, as `kill` does.
            let mut mount = self.kill_mount(target);
            let mut steps = Vec::new();
            let mut unmounted_exit = false;
            if let Some(m) = mount.as_mut() {
                let members = self.members_of(&old).await;
                if self.kill_unmount_first(m, &mut steps) {
                    unmounted_exit = matches!(
                        self.spawner.wait_exit(&old, Some(grace)).await?,
                        WaitOutcome::Exited(_)
                    );
                    if unmounted_exit {
                        let left = self.stop_members(&members, grace, &mut steps).await;
                        if let Some(member) = left.left {
                            return Err(Error::StillRunning {
                                target: target.clone(),
                                pid: member.pid,
                            });
                        }
                    }
                }
            }
            let out = if unmounted_exit {
                dms_proc::StopOutcome {
                    stopped: true,
                    ..Default::default()
                }
            } else {
                // As in `kill`: a helper stuck in its own mount is freed by an abort.
                self.terminate_mounted(&old, grace, mount.as_ref(), &mut steps)
                    .await?
            };
            if !out.stopped && !out.mismatch {
                return Err(Error::StillRunning {
                    target: target.clone(),
                    pid: old.pid,
                });
            }
            if let Some(m) = mount.as_mut() {
                self.kill_mount_after(target, m, &mut steps).await;
            }
            debug!(target = %target, ?steps, "old helper stopped");
            *stopped = Some(old.pid);
            self.forget(target, None);
            self.store.remove(target).await?;
            if !out.signals.is_empty() || unmounted_exit {
                self.emit(Event::Killed {
                    target: target.clone(),
                    pid: old.pid,
                });
            }
        }

        self.clear_corrupt(target).await?;
        let prepared = match &spec.mount {
            Some(dir) => Some(
                self.prepare_mount(target, dir, spec.ready_timeout.is_some())
                    .await?,
            ),
            None => None,
        };
        let log = spec
            .log
            .clone()
            .unwrap_or_else(|| target.log_file_in(&self.opts.logs_dir()));
        let cmdline: Vec<String> = std::iter::once(&spec.program)
            .chain(spec.args.iter())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let env_keys: Vec<String> = spec
            .env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        let proc_spec = SpawnSpec {
            program: spec.program,
            args: spec.args,
            env: spec.env,
            log: log.clone(),
            cwd: None,
        };
        let pending = self.spawner.spawn(&proc_spec).await?;
        let identity = pending.identity.clone();
        let pid = identity.pid.get();
        debug!(target = %target, pid, ?cmdline, ?env_keys, "helper created, held at the start barrier");
        let meta = Metadata {
            cmdline: Some(cmdline),
            mount: prepared.as_ref().map(|p| p.path.clone()),
            spawned_at: Some(SystemTime::now()),
            log_path: Some(log.clone()),
        };
        if let Err(e) = self
            .store
            .put(target, &record_for(&identity, meta.clone()))
            .await
        {
            // Dropping the gate makes the helper exit without running its program.
            drop(pending.gate);
            warn!(target = %target, pid, error = %crate::Report::new(&e), "cannot record helper; it was not started");
            if let Some(p) = &prepared {
                let _ = self.registry().remove(target.as_str());
                debug!(target = %target, mount = %p.path.display(), "mount record removed");
            }
            return Err(e.into());
        }
        self.track(target, identity.clone(), meta.clone());
        // From here until the helper is settled, what it leaves running in the
        // background becomes our child (see manager/daemonize.rs).
        let window = self.spawner.begin_startup();
        if let Err(e) = pending.gate.release().await {
            warn!(target = %target, pid, error = %crate::Report::new(&e), "helper program did not start");
            self.forget(target, Some(&identity));
            if let Err(re) = self.store.remove(target).await {
                error!(target = %target, pid, error = %re,
                    "cannot remove the record of a helper that did not start; cleanup will");
            }
            if prepared.is_some() {
                let _ = self.registry().remove(target.as_str());
            }
            return Err(e.into());
        }
        let waited_mount = prepared.clone().filter(|p| p.wait);
        let handover = if let Some(prepared) = prepared.filter(|p| p.wait) {
            let timeout = spec.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
            self.await_mount(target, &identity, prepared, timeout, &log, &window)
                .await?
        } else {
            match self.follow_startup(target, &identity, &window, &log).await {
                Ok(h) => h,
                Err(e) => {
                    self.stop_startup(&identity, &window).await;
                    self.forget(target, Some(&identity));
                    if let Err(re) = self.store.remove(target).await {
                        warn!(target = %target, pid, error = %re, "cannot remove the record of a helper that failed to start; cleanup will");
                    }
                    return Err(e);
                }
            }
        };
        let identity = match handover {
            daemonize::Handover::Leader => identity,
            daemonize::Handover::To(helper) => {
                if let Err(e) = self.hand_over(target, &identity, &helper, meta).await {
                    if let Some(p) = &waited_mount {
                        self.undo_mount(target, &identity, p).await;
                    }
                    return Err(e);
                }
                helper
            }
        };
        drop(window);
        info!(target = %target, pid = identity.pid.get(), "spawned helper");
        self.emit(Event::Spawned {
            target: target.clone(),
            pid: identity.pid,
        });
        Ok(identity)
    }
}
