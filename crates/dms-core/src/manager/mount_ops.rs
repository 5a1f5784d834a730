//! The manager's mount awareness: readiness at spawn, mount state in the info object and
//! stats, unmount-first kill, and `cleanup --mounts`. The mechanics are behind
//! [`crate::mount::Mounts`] ([`crate::ManagerOptions::mounts`]); every call to them here
//! goes through [`Inner::mounts`].

use super::{Inner, Manager};
use crate::error::{Error, Result};
use crate::mount::{
    self, Exact, FuseConn, MountRecord, MountRegistry, Mounts, Proof, PROBE_TIMEOUT,
};
use crate::report::{KeptMount, KillStep, MountAction, MountOutcome, MountState, ProcessInfo};
use dms_proc::{ExitStatus, ProcIdentity, StopOutcome, WaitOutcome};
use dms_store::TargetId;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

/// How long `spawn` waits for the mount when [`crate::HelperSpec::ready_timeout`] is
/// `None`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of the helper's log a readiness failure quotes.
pub(super) const LOG_TAIL_LINES: usize = 10;

/// The mount of a target being killed.
pub(super) struct KillMount {
    record: MountRecord,
    /// Whether the recorded mount was in the mount table at the start of the kill.
    present: bool,
    /// Its FUSE connection, held while the mount was proven present.
    conn: Option<FuseConn>,
    /// Whether the clean unmount was attempted (successfully or not).
    tried_unmount: bool,
}

/// The recorded mounts of one listing, read and probed once for all its targets
/// ([`Inner::listed_mounts`]).
pub(super) struct ListedMounts {
    records: HashMap<String, MountRecord>,
    states: HashMap<String, MountState>,
}

impl ListedMounts {
    /// How many recorded mounts are stale.
    pub(super) fn stale(&self) -> usize {
        self.states
            .values()
            .filter(|s| **s == MountState::Stale)
            .count()
    }
}

/// What the record's identity alone says of its mount: `Some` state, or `None` when
/// only a probe of the path can tell (no identity, or the recorded mount is the one
/// there).
fn known_state(mounts: &dyn Mounts, record: &MountRecord) -> Option<MountState> {
    match mounts.prove(&record.path, record.identity.as_ref()?) {
        // The recorded mount is gone (whatever else may be mounted at the path now).
        Ok(Proof::Gone) => Some(MountState::Unmounted),
        // Covered by another mount: there, but a probe would reach the other one.
        Ok(Proof::Covered) => Some(MountState::Mounted),
        Ok(Proof::Ours(_)) | Err(_) => None,
    }
}

/// The state of a record's mount: from its identity when that tells, else probed.
async fn record_state(mounts: &dyn Mounts, record: &MountRecord) -> MountState {
    match known_state(mounts, record) {
        Some(s) => s,
        None => mounts.probe(&record.path, PROBE_TIMEOUT).await,
    }
}

/// How long a kill waits after SIGKILL when the helper serves a live FUSE mount, before
/// it aborts the connection ([`Manager::terminate_mounted`]). A FUSE daemon with a thread
/// stuck in a request to its own mount outlives SIGKILL until the connection is aborted,
/// so the full [`dms_proc::DEFAULT_KILL_WAIT`] would only add seconds; a helper that dies
/// normally is gone well within this.
const STUCK_MOUNT_KILL_WAIT: Duration = Duration::from_millis(500);

/// The last `n` lines of `log` (reads at most its last 8 KiB).
pub(super) fn log_tail(log: &Path, n: usize) -> String {
    // O_NONBLOCK and O_NOFOLLOW: a FIFO or a symlink put at the log path never blocks
    // or redirects the read (the spawn refused them, but the path may have changed since).
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(log);
    let Ok(mut f) = opened.and_then(|f| match f.metadata()?.is_file() {
        true => Ok(f),
        false => Err(std::io::Error::other("not a regular file")),
    }) else {
        return format!("(cannot read {})", log.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() {
        "(log is empty)".to_owned()
    } else {
        tail.join(" | ")
    }
}

pub(super) fn describe(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exited with code {c}"),
        ExitStatus::Signaled(s) => format!("was killed by signal {s}"),
        ExitStatus::Unknown => "exited (status unknown)".to_owned(),
    }
}

impl Inner {
    /// The mount mechanics ([`crate::ManagerOptions::mounts`]).
    pub(super) fn mounts(&self) -> &dyn Mounts {
        &*self.opts.mounts
    }

    /// Whether nothing at all is mounted at `path` now (false when the mount table
    /// cannot be read): what a record without a mount identity can be forgotten on.
    pub(super) fn nothing_mounted_at(&self, path: &Path) -> bool {
        self.mounts()
            .mount_ids_at(path)
            .is_ok_and(|ids| ids.is_empty())
    }

    pub(super) fn registry(&self) -> MountRegistry {
        MountRegistry::new(&self.opts.run_dir)
    }

    /// Fills `mount` (from the registry when the store keeps no metadata), `mounted` and
    /// `mount_state` of an info object. The state is that of the recorded mount: a
    /// record with an identity whose mount is gone reads `unmounted`, whatever else is
    /// mounted at its path now.
    pub(super) async fn fill_mount(
        &self,
        target: &TargetId,
        info: &mut ProcessInfo,
        mounts: Option<&ListedMounts>,
    ) {
        let record = match mounts {
            Some(m) => m.records.get(target.as_str()).cloned(),
            None => self.registry().get(target.as_str()),
        };
        if info.mount.is_none() {
            info.mount = record.as_ref().map(|r| r.path.clone());
        }
        let Some(path) = &info.mount else {
            return;
        };
        let state = match record.filter(|r| r.path == *path) {
            Some(r) => match mounts.and_then(|m| m.states.get(target.as_str())) {
                Some(s) => *s,
                None => record_state(self.mounts(), &r).await,
            },
            None => self.mounts().probe(path, PROBE_TIMEOUT).await,
        };
        info.mount_state = Some(state);
        info.mounted = Some(state != MountState::Unmounted);
    }

    /// Every recorded mount, by target, with its state: one read of the registry for a
    /// whole listing, and the mounts that need a probe probed concurrently under one
    /// deadline ([`crate::mount::probe_all`]), so a listing answers within about one probe
    /// limit however many mounts hang. Nothing is probed when nothing is recorded.
    pub(super) async fn listed_mounts(&self) -> ListedMounts {
        let records: HashMap<String, MountRecord> = self.registry().list().into_iter().collect();
        let mut states = HashMap::with_capacity(records.len());
        if records.is_empty() {
            return ListedMounts { records, states };
        }
        let mut to_probe = Vec::new();
        for (target, record) in &records {
            match known_state(self.mounts(), record) {
                Some(s) => {
                    states.insert(target.clone(), s);
                }
                None => to_probe.push((target.clone(), record.path.clone())),
            }
        }
        let probed = crate::mount::probe_all(
            self.opts.mounts.clone(),
            to_probe.iter().map(|(_, p)| p.clone()),
            PROBE_TIMEOUT,
        )
        .await;
        for (target, path) in to_probe {
            if let Some(s) = probed.get(&path) {
                states.insert(target, *s);
            }
        }
        ListedMounts { records, states }
    }

    /// The recorded mount of a target being killed; its connection is held when the
    /// recorded mount is present.
    pub(super) fn kill_mount(&self, target: &TargetId) -> Option<KillMount> {
        let record = self.registry().get(target.as_str())?;
        let present = record
            .identity
            .is_some_and(|id| matches!(self.mounts().prove(&record.path, &id), Ok(Proof::Ours(_))));
        let conn = match (&record.identity, present) {
            (Some(id), true) => self.mounts().fuse_conn(&record.path, id).unwrap_or_else(|e| {
                warn!(target = %target, error = %crate::Report::new(&e), "cannot open the FUSE connection of the mount");
                None
            }),
            _ => None,
        };
        Some(KillMount {
            record,
            present,
            conn,
            tried_unmount: false,
        })
    }

    /// Kill step 1: a clean unmount of the recorded mount, when it is mounted. Returns
    /// whether it succeeded (the helper should then exit by itself).
    pub(super) fn kill_unmount_first(&self, m: &mut KillMount, steps: &mut Vec<KillStep>) -> bool {
        let Some(id) = m.record.identity.filter(|_| m.present && !m.tried_unmount) else {
            return false;
        };
        m.tried_unmount = true;
        match self.mounts().unmount_exact(&m.record.path, &id) {
            Ok(Exact::Done) => {
                steps.push(KillStep::Unmount);
                true
            }
            Ok(Exact::Gone) => false,
            Ok(Exact::Covered) => {
                warn!(mount = %m.record.path.display(), "the recorded mount is covered by another mount; not unmounted");
                steps.push(KillStep::MountCovered);
                false
            }
            Err(e) => {
                warn!(mount = %m.record.path.display(), error = %crate::Report::new(&e), "clean unmount failed; stopping the helper");
                steps.push(KillStep::UnmountFailed);
                false
            }
        }
    }

    /// SIGTERM, `grace`, SIGKILL for a helper that may serve a FUSE mount (`kill` and
    /// `spawn --replace`), with the signals sent appended to `steps`. With a live mount
    /// the SIGKILL wait is short, and a helper still there after it (a thread stuck in a
    /// request to its own mount) has its FUSE connection aborted (step `abort`) and is
    /// waited for once more.
    pub(super) async fn terminate_mounted(
        &self,
        victim: &ProcIdentity,
        grace: Duration,
        mount: Option<&KillMount>,
        steps: &mut Vec<KillStep>,
    ) -> Result<StopOutcome> {
        let conn = mount.and_then(|m| m.conn.as_ref());
        let kill_wait = match conn {
            Some(_) => STUCK_MOUNT_KILL_WAIT,
            None => dms_proc::DEFAULT_KILL_WAIT,
        };
        let mut out = self.spawner.terminate(victim, grace, kill_wait).await?;
        steps.extend(out.signals.iter().map(|&s| KillStep::from(s)));
        let Some(conn) = conn.filter(|_| !out.stopped && !out.mismatch) else {
            return Ok(out);
        };
        match conn.abort() {
            Ok(true) => steps.push(KillStep::Abort),
            Ok(false) => return Ok(out),
            Err(e) => {
                warn!(connection = conn.name(), error = %crate::Report::new(&e), "cannot abort FUSE connection");
                return Ok(out);
            }
        }
        out.stopped = matches!(
            self.spawner
                .wait_exit(victim, Some(dms_proc::DEFAULT_KILL_WAIT))
                .await,
            Ok(WaitOutcome::Exited(_))
        );
        Ok(out)
    }

    /// Kill steps after the helper is gone: detach the recorded mount if it is still
    /// there, abort its FUSE connection if it lingers, and forget the record once that
    /// mount is gone. Nothing else at or under the path is touched; a record without an
    /// identity (an older dms wrote it) acts on nothing (step `mount_unproven` when
    /// something is mounted at its path; the record is then kept for the operator).
    pub(super) async fn kill_mount_after(
        &self,
        target: &TargetId,
        m: &mut KillMount,
        steps: &mut Vec<KillStep>,
    ) {
        let path = m.record.path.clone();
        let Some(id) = m.record.identity else {
            if self.nothing_mounted_at(&path) {
                self.forget_mount_record(target);
            } else {
                warn!(target = %target, mount = %path.display(),
                    "the mount record holds no mount identity (written by an older dms): the mount there is not touched; unmount it by hand if it is this target's");
                steps.push(KillStep::MountUnproven);
            }
            return;
        };
        let mut detached = false;
        match self.mounts().detach_exact(&path, &id) {
            Ok(Exact::Done) => {
                detached = true;
                steps.push(KillStep::Detach);
            }
            Ok(Exact::Gone) => {}
            Ok(Exact::Covered) => steps.push(KillStep::MountCovered),
            Err(err) => {
                warn!(mount = %path.display(), %err, "cannot detach mount");
                steps.push(KillStep::DetachFailed);
            }
        }
        // Still there: the connection outlives its mount (a process holds a file on the
        // detached mount).
        if let Some(conn) = m.conn.as_ref().filter(|c| detached && c.exists()) {
            match conn.abort() {
                Ok(true) => steps.push(KillStep::Abort),
                Ok(false) => {}
                Err(e) => {
                    warn!(connection = conn.name(), error = %crate::Report::new(&e), "cannot abort FUSE connection")
                }
            }
        }
        if matches!(self.mounts().prove(&path, &id), Ok(Proof::Gone)) {
            self.forget_mount_record(target);
        }
    }

    /// Removes the mount record of `target`.
    fn forget_mount_record(&self, target: &TargetId) {
        if let Err(e) = self.registry().remove(target.as_str()) {
            warn!(target = %target, error = %crate::Report::new(&e), "cannot remove mount record");
        }
    }

    /// When the helper of `target` is cleaned (its dead entry removed): forgets its
    /// mount record unless its mount is still there (then `cleanup --mounts` detaches
    /// it). A record without an identity is forgotten once nothing is mounted at its
    /// path. Call with the target's lock.
    pub(super) fn forget_mount_if_gone(&self, target: &TargetId) {
        let Some(record) = self.registry().get(target.as_str()) else {
            return;
        };
        let gone = match &record.identity {
            Some(id) => matches!(self.mounts().prove(&record.path, id), Ok(Proof::Gone)),
            None => self.nothing_mounted_at(&record.path),
        };
        if gone {
            self.forget_mount_record(target);
        }
    }
}

impl Manager {
    /// Detaches the recorded mounts (`<run-dir>/mounts/`) that are orphaned or stale:
    /// the recorded mount of a target with no live helper proven ours, and a stale one
    /// (dead daemon, or no answer to `statfs` within 2 s) whatever its helper. Only the
    /// exact mount a record identifies is detached, never anything else at or under its
    /// path; its FUSE connection is aborted when its helper is not live. Records whose
    /// mount is gone and whose helper is not live are forgotten. A record without an
    /// identity (written by an older dms) acts on nothing: its mount is reported with the
    /// action `kept: ...` and the record stays until nothing is mounted at its path.
    /// Helpers are never signalled.
    pub async fn cleanup_mounts(&self) -> Result<Vec<MountAction>> {
        let inner = &self.inner;
        let mut actions = Vec::new();
        for (name, _) in inner.registry().list() {
            let Ok(target) = name.parse::<TargetId>() else {
                continue;
            };
            let _guard = inner.locks.lock(&target).await?;
            // Read again under the lock.
            let Some(record) = inner.registry().get(&name) else {
                continue;
            };
            let live = match inner.live_helper(&target).await {
                Ok(live) => live.is_some(),
                // Cannot verify: treat as live, touch only a stale mount.
                Err(_) => true,
            };
            let table = inner.mounts().read_table().map_err(|source| Error::Mount {
                path: mount::MOUNTINFO.into(),
                op: "read",
                source,
            })?;
            let path = record.path.clone();
            let Some(id) = record.identity else {
                if mount::mount_at(&table, &path).is_none() {
                    if !live {
                        inner.forget_mount_record(&target);
                    }
                    continue;
                }
                let state = inner.mounts().probe(&path, PROBE_TIMEOUT).await;
                if live && state != MountState::Stale {
                    continue;
                }
                actions.push(MountAction {
                    target: target.clone(),
                    path,
                    state,
                    action: MountOutcome::Kept(KeptMount::NoIdentity),
                });
                continue;
            };
            let state = match inner.mounts().prove(&path, &id) {
                Ok(Proof::Gone) => {
                    if !live {
                        inner.forget_mount_record(&target);
                    }
                    continue;
                }
                Ok(Proof::Covered) => MountState::Mounted,
                Ok(Proof::Ours(pin)) => {
                    drop(pin);
                    inner.mounts().probe(&path, PROBE_TIMEOUT).await
                }
                Err(e) => {
                    warn!(target = %target, mount = %path.display(), error = %crate::Report::new(&e), "cannot check the recorded mount; left alone");
                    continue;
                }
            };
            if live && state != MountState::Stale {
                continue;
            }
            let conn = if live {
                None
            } else {
                inner.mounts().fuse_conn(&path, &id).unwrap_or_else(|e| {
                    warn!(target = %target, error = %crate::Report::new(&e), "cannot open the FUSE connection of the mount");
                    None
                })
            };
            let mut action = match inner.mounts().detach_exact(&path, &id) {
                Ok(Exact::Done) => MountOutcome::Detached { aborted: false },
                Ok(Exact::Gone) => MountOutcome::Gone,
                Ok(Exact::Covered) => MountOutcome::Kept(KeptMount::Covered),
                Err(e) => MountOutcome::DetachFailed(e.to_string()),
            };
            if let Some(conn) =
                conn.filter(|c| action == MountOutcome::Detached { aborted: false } && c.exists())
            {
                match conn.abort() {
                    Ok(true) => action = MountOutcome::Detached { aborted: true },
                    Ok(false) => {}
                    Err(e) => {
                        warn!(connection = conn.name(), error = %crate::Report::new(&e), "cannot abort FUSE connection")
                    }
                }
            }
            info!(target = %target, mount = %path.display(), ?state, %action, "cleaned mount");
            let gone = matches!(inner.mounts().prove(&path, &id), Ok(Proof::Gone));
            actions.push(MountAction {
                target: target.clone(),
                path,
                state,
                action,
            });
            if !live && gone {
                inner.forget_mount_record(&target);
            }
        }
        Ok(actions)
    }
}
