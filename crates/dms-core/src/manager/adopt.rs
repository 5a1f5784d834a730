//! `adopt`: a live process recorded as the helper of a target, refused when it is
//! already the helper of another target, also when that target is known only from disk
//! (a one-shot command line, another dms process).

use super::verdict::Verdict;
use super::{record_for, Inner, Manager};
use crate::error::{Error, Result};
use crate::report::{Event, ProcessInfo};
use dms_proc::{Pid, Probe, ProcError, ProcIdentity};
use dms_store::{Entry, Metadata, Stored, TargetId};
use std::sync::Arc;
use std::time::SystemTime;
use tracing::info;

impl Manager {
    /// Records the live process `pid` as the helper of `target`, with its current
    /// identity, and watches its exit. Refused if `pid` is dead or a zombie, is dms
    /// itself, is the helper of another target, or if `target` already has another live
    /// helper.
    pub async fn adopt(&self, target: &TargetId, pid: Pid) -> Result<ProcessInfo> {
        self.inner.adopt(target, pid).await?;
        self.process_info(target).await
    }
}

impl Inner {
    pub(super) async fn adopt(
        self: &Arc<Self>,
        target: &TargetId,
        pid: Pid,
    ) -> Result<ProcIdentity> {
        if u32::try_from(pid.get()).ok() == Some(std::process::id()) {
            return Err(ProcError::SelfPid(pid).into());
        }
        if let Some(why) = self.spawner.protected(pid) {
            return Err(ProcError::Protected { pid, why }.into());
        }
        let _guard = self.locks.lock(target).await?;
        let other = self
            .read_memory()
            .target_of_pid(pid)
            .filter(|t| *t != target)
            .cloned();
        if let Some(other) = other {
            return Err(Error::AlreadyTracked {
                target: target.clone(),
                pid,
                other,
            });
        }
        let info = match self
            .spawner
            .probe(pid, dms_proc::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p)?
        {
            Probe::Alive(info) => info,
            Probe::Gone | Probe::Zombie(_) => {
                return Err(Error::NotRunning {
                    target: target.clone(),
                    pid,
                })
            }
            Probe::Thread { tgid } => {
                return Err(Error::NotAProcess {
                    target: target.clone(),
                    pid,
                    tgid,
                })
            }
        };
        if let Some(other) = self.tracked_on_disk(target, &info.identity).await? {
            return Err(Error::AlreadyTracked {
                target: target.clone(),
                pid,
                other,
            });
        }
        if let Some(live) = self.live_helper(target).await? {
            if live != info.identity {
                return Err(Error::AlreadyRunning {
                    target: target.clone(),
                    pid: live.pid,
                });
            }
        }
        self.clear_corrupt(target).await?;
        let meta = Metadata {
            cmdline: info.cmdline.clone(),
            mount: None,
            spawned_at: Some(SystemTime::now()),
            log_path: None,
        };
        self.store
            .put(target, &record_for(&info.identity, meta.clone()))
            .await?;
        self.track(target, info.identity.clone(), meta);
        info!(target = %target, pid = pid.get(), "adopted process");
        self.emit(Event::Adopted {
            target: target.clone(),
            pid,
        });
        Ok(info.identity)
    }

    /// The other target whose PID file names `identity`'s process and is proven to be
    /// that very process (same identity), if any. Memory is checked by the caller; this
    /// reads every PID file, which an adopt (rare, and by hand) can afford.
    pub(super) async fn tracked_on_disk(
        &self,
        target: &TargetId,
        identity: &ProcIdentity,
    ) -> Result<Option<TargetId>> {
        for entry in dms_store::list_sorted(&self.store).await? {
            let Entry::Target {
                target: other,
                state: Stored::Valid(record),
            } = entry
            else {
                continue;
            };
            if other == *target || record.pid != identity.pid {
                continue;
            }
            if let Verdict::Own(info) = self.classify(&other, &record).await {
                if info.identity == *identity {
                    return Ok(Some(other));
                }
            }
        }
        Ok(None)
    }
}
