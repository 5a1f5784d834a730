//! Recovery: the startup scan ([`Manager::reload`]), which syncs memory with disk and
//! never signals anything, and `cleanup` of dead entries.

use super::verdict::Verdict;
use super::{record_for, same_record, Inner, Manager};
use crate::error::Result;
use crate::report::{
    CleanupReport, Event, RecoveryReport, RemovalReason, Removed, StrayNote, TargetNote, TargetPid,
};
use dms_proc::{Pid, ProcIdentity};
use dms_store::{Entry, Record, Stored, TargetId};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

impl Manager {
    /// Removes every stale, foreign and corrupt entry (and forgets memory entries whose
    /// process is gone). Never signals anything. Entries that cannot be verified are
    /// kept. A live helper in memory whose PID file is missing or wrong gets its file
    /// rewritten; a live helper proven ours found only on disk is loaded into memory.
    pub async fn cleanup_dead(&self) -> Result<CleanupReport> {
        self.inner.cleanup_dead().await
    }

    /// Stops every running helper after removing dead entries, all at once: every
    /// SIGTERM first, one shared `grace`, then SIGKILL for those still there, so the
    /// whole stop takes about one grace period (up to a few hundred helpers at a time,
    /// bounded by the open-file limit). Only ever runs when called: dropping a manager
    /// never stops anything.
    ///
    /// Every target is attempted; the first failure is returned after the others ran.
    pub async fn cleanup_all(&self, grace: Duration) -> Result<CleanupReport> {
        let mut report = self.inner.cleanup_dead().await?;
        let (targets, _) = self.inner.all_targets().await?;
        let (stopped, first_err) = self.inner.kill_all(targets, grace).await;
        report.stopped.extend(stopped);
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Re-syncs memory with disk (the startup scan): forgets memory entries whose
    /// process is gone, loads live helpers proven ours from disk, removes stale entries,
    /// reports foreign, corrupt and unverifiable ones (cleanup removes the first two),
    /// and rewrites the PID file of a live tracked helper when it is missing or wrong.
    /// Never signals anything.
    pub async fn reload(&self) -> Result<RecoveryReport> {
        self.inner.reload().await
    }
}

impl Inner {
    /// Rewrites the PID file of the live tracked helper of `target` from memory.
    /// Call with the target's lock.
    pub(super) async fn repair(&self, target: &TargetId) -> Result<Option<Pid>> {
        let Some((id, meta)) = self.memory_entry(target) else {
            return Ok(None);
        };
        if !matches!(self.verify(&id).await, Verdict::Own(_)) {
            return Ok(None);
        }
        match self.store.get(target).await? {
            Some(Stored::Valid(r)) if r.pid == id.pid => return Ok(None),
            Some(Stored::Corrupt(c)) => {
                // Whatever is in the way (a directory, a FIFO, ...) goes first.
                warn!(target = %target, pid = id.pid.get(), reason = c.reason, "corrupt PID file for a live helper; replacing it");
                self.store.remove(target).await?;
            }
            Some(Stored::Valid(r)) => {
                warn!(target = %target, pid = id.pid.get(), named = r.pid.get(), "PID file names another PID while a live helper is tracked; rewriting it");
            }
            None => {
                warn!(target = %target, pid = id.pid.get(), "PID file missing for a live helper; rewriting it");
            }
        }
        self.store.put(target, &record_for(&id, meta)).await?;
        Ok(Some(id.pid))
    }

    pub(super) async fn reload(self: &Arc<Self>) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        // Memory entries first: forget the dead.
        let snapshot: Vec<(TargetId, ProcIdentity)> = self
            .read_memory()
            .iter()
            .map(|(t, tr)| (t.clone(), tr.identity()))
            .collect();
        for (target, id) in snapshot {
            let pid = id.pid;
            match self.verify(&id).await {
                Verdict::Own(_) => report.kept.push(TargetPid { target, pid }),
                Verdict::Stale | Verdict::Foreign(_) => {
                    let _m = self.locks.lock_memory(&target).await;
                    if self.forget(&target, Some(&id)) {
                        info!(target = %target, pid = pid.get(), "forgot helper that is gone");
                        report.dropped.push(TargetPid { target, pid });
                    }
                }
                Verdict::Unverified(reason) => report.unverified.push(TargetNote {
                    target,
                    pid: Some(pid),
                    reason,
                }),
            }
        }

        let entries = dms_store::list_sorted(&self.store).await?;
        let mut on_disk = BTreeSet::new();
        let mut found: Vec<(TargetId, Record, Verdict)> = Vec::new();
        for entry in entries {
            let (target, state) = match entry {
                Entry::Stray { file_name, reason } => {
                    warn!(
                        file_name,
                        reason, "PID file with an invalid target name; ignored"
                    );
                    report.strays.push(StrayNote { file_name, reason });
                    continue;
                }
                Entry::Target { target, state } => (target, state),
            };
            on_disk.insert(target.clone());
            if let Some(id) = self.memory_identity(&target) {
                if matches!(&state, Stored::Valid(r) if r.pid == id.pid) {
                    continue;
                }
                let _guard = self.locks.lock(&target).await?;
                if let Some(pid) = self.repair(&target).await? {
                    report.repaired.push(TargetPid { target, pid });
                }
                continue;
            }
            let record = match state {
                Stored::Corrupt(c) => {
                    warn!(target = %target, reason = c.reason, "corrupt PID file; `cleanup` removes it");
                    report.corrupt.push(TargetNote {
                        target,
                        pid: None,
                        reason: c.reason,
                    });
                    continue;
                }
                Stored::Valid(r) => r,
            };
            let verdict = self.classify(&target, &record).await;
            found.push((target, record, verdict));
        }

        // A process is the helper of one target only. When several PID files name the
        // same live process (a copied file), the strongest claim wins: a recorded
        // identity over a bare PID file, then the file written first; the others are
        // foreign (cleanup removes them).
        let claim = |r: &Record| (r.identity.is_none(), r.written_at.is_none(), r.written_at);
        let mut winners: HashMap<ProcIdentity, usize> = HashMap::new();
        for (i, (_, record, verdict)) in found.iter().enumerate() {
            if let Verdict::Own(info) = verdict {
                let w = winners.entry(info.identity.clone()).or_insert(i);
                if claim(record) < claim(&found[*w].1) {
                    *w = i;
                }
            }
        }
        let losers: Vec<(usize, String)> = found
            .iter()
            .enumerate()
            .filter_map(|(i, (_, _, verdict))| match verdict {
                Verdict::Own(info) => {
                    let w = winners[&info.identity];
                    (w != i).then(|| {
                        let why = format!(
                            "PID {} is the helper of target {}, whose PID file makes the \
                             stronger claim",
                            info.identity.pid, found[w].0
                        );
                        (i, why)
                    })
                }
                _ => None,
            })
            .collect();
        for (i, why) in losers {
            found[i].2 = Verdict::Foreign(why);
        }

        for (target, record, verdict) in found {
            let pid = record.pid;
            match verdict {
                Verdict::Own(info) => {
                    let _guard = self.locks.lock(&target).await?;
                    let unchanged = matches!(self.store.get(&target).await?,
                        Some(Stored::Valid(now)) if same_record(&now, &record));
                    if unchanged && self.memory_identity(&target).is_none() {
                        self.track(&target, info.identity.clone(), record.meta.clone());
                        info!(target = %target, pid = pid.get(), "recovered running helper");
                        self.emit(Event::Adopted {
                            target: target.clone(),
                            pid,
                        });
                        report.adopted.push(TargetPid { target, pid });
                    }
                }
                Verdict::Stale => {
                    let _guard = self.locks.lock(&target).await?;
                    let unchanged = matches!(self.store.get(&target).await?,
                        Some(Stored::Valid(now)) if same_record(&now, &record));
                    if unchanged && self.memory_identity(&target).is_none() {
                        self.store.remove(&target).await?;
                        self.forget_mount_if_gone(&target);
                        info!(target = %target, pid = pid.get(), "removed stale PID file");
                        self.emit(Event::Cleaned {
                            target: target.clone(),
                            pid: Some(pid),
                            reason: RemovalReason::Stale,
                        });
                        report.cleared.push(TargetPid { target, pid });
                    }
                }
                Verdict::Foreign(why) => {
                    warn!(target = %target, pid = pid.get(), why, "PID file names a foreign process; `cleanup` removes it");
                    report.foreign.push(TargetPid { target, pid });
                }
                Verdict::Unverified(reason) => {
                    warn!(target = %target, pid = pid.get(), reason, "cannot verify helper; keeping its PID file");
                    report.unverified.push(TargetNote {
                        target,
                        pid: Some(pid),
                        reason,
                    });
                }
            }
        }

        // Live helpers in memory whose PID file is gone.
        let missing: Vec<TargetId> = self
            .read_memory()
            .keys()
            .filter(|t| !on_disk.contains(*t))
            .cloned()
            .collect();
        for target in missing {
            let _guard = self.locks.lock(&target).await?;
            if let Some(pid) = self.repair(&target).await? {
                report.repaired.push(TargetPid { target, pid });
            }
        }
        Ok(report)
    }

    pub(super) async fn cleanup_dead(self: &Arc<Self>) -> Result<CleanupReport> {
        let mut report = CleanupReport::default();
        let (targets, _) = self.all_targets().await?;
        for target in targets {
            let _guard = self.locks.lock(&target).await?;
            if let Some(id) = self.memory_identity(&target) {
                match self.verify(&id).await {
                    Verdict::Own(_) => {
                        self.repair(&target).await?;
                        continue;
                    }
                    Verdict::Unverified(_) => continue,
                    Verdict::Stale | Verdict::Foreign(_) => {
                        self.forget(&target, Some(&id));
                    }
                }
            }
            let (reason, pid) = match self.store.get(&target).await? {
                None => continue,
                Some(Stored::Corrupt(_)) => (RemovalReason::Corrupt, None),
                Some(Stored::Valid(r)) => match self.classify(&target, &r).await {
                    Verdict::Own(info) => {
                        self.track(&target, info.identity.clone(), r.meta);
                        info!(target = %target, pid = r.pid.get(), "loaded running helper found on disk");
                        self.emit(Event::Adopted {
                            target: target.clone(),
                            pid: r.pid,
                        });
                        continue;
                    }
                    Verdict::Unverified(reason) => {
                        warn!(target = %target, pid = r.pid.get(), reason, "cannot verify helper; keeping its PID file");
                        continue;
                    }
                    Verdict::Stale => (RemovalReason::Stale, Some(r.pid)),
                    Verdict::Foreign(_) => (RemovalReason::Foreign, Some(r.pid)),
                },
            };
            if self.store.remove(&target).await? {
                self.forget_mount_if_gone(&target);
                info!(target = %target, pid = pid.map(Pid::get), ?reason, "removed PID file");
                self.emit(Event::Cleaned {
                    target: target.clone(),
                    pid,
                    reason,
                });
                report.removed.push(Removed { target, reason });
            }
        }
        Ok(report)
    }
}
