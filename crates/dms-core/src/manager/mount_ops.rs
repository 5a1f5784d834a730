//! The manager's mount awareness: readiness at spawn, mount state in the info object and
//! stats, unmount-first kill, and `cleanup --mounts`. The mechanics are in
//! [`crate::mount`].

use super::{Inner, Manager};
use crate::error::{Error, Result};
use crate::mount::{self, MountRegistry, PROBE_TIMEOUT};
use crate::report::{MountAction, MountState, ProcessInfo};
use dms_proc::{ExitStatus, ProcIdentity, StopOutcome, WaitOutcome};
use dms_store::TargetId;
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How long `spawn` waits for the mount when [`crate::HelperSpec::ready_timeout`] is
/// `None`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of the helper's log a readiness failure quotes.
const LOG_TAIL_LINES: usize = 10;

/// A mount point prepared for a spawn.
pub(super) struct PreparedMount {
    /// The canonical mount directory.
    pub(super) path: PathBuf,
    /// Mount IDs already at the path (none: a mounted path is refused).
    pub(super) before: HashSet<u64>,
    /// Whether spawn waits for the mount (else it is only recorded).
    pub(super) wait: bool,
}

/// The mount of a target being killed.
pub(super) struct KillMount {
    path: PathBuf,
    /// The FUSE connection number, when it was mounted at the start of the kill.
    minor: Option<u32>,
    /// Whether the clean unmount was attempted (successfully or not).
    tried_unmount: bool,
}

/// How long a kill waits after SIGKILL when the helper serves a live FUSE mount, before
/// it aborts the connection ([`Manager::terminate_mounted`]). A FUSE daemon with a thread
/// stuck in a request to its own mount outlives SIGKILL until the connection is aborted,
/// so the full [`dms_proc::DEFAULT_KILL_WAIT`] would only add seconds; a helper that dies
/// normally is gone well within this.
const STUCK_MOUNT_KILL_WAIT: Duration = Duration::from_millis(500);

/// The last `n` lines of `log` (reads at most its last 8 KiB).
fn log_tail(log: &Path, n: usize) -> String {
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

fn describe(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exited with code {c}"),
        ExitStatus::Signaled(s) => format!("was killed by signal {s}"),
        ExitStatus::Unknown => "exited (status unknown)".to_owned(),
    }
}

impl Inner {
    pub(super) fn registry(&self) -> MountRegistry {
        MountRegistry::new(&self.opts.run_dir)
    }

    /// Creates the mount directory, refuses one that is already a mount point, and
    /// records it for `target`. Call with the target's lock, before the helper exists.
    /// Without `wait`, the path is only recorded, as given.
    pub(super) fn prepare_mount(
        &self,
        target: &TargetId,
        dir: &Path,
        wait: bool,
    ) -> Result<PreparedMount> {
        if !wait {
            if let Err(e) = self.registry().put(target.as_str(), dir) {
                warn!(target = %target, %e, "cannot record mount path");
            }
            return Ok(PreparedMount {
                path: dir.to_owned(),
                before: HashSet::new(),
                wait,
            });
        }
        let mount_err = |path: &Path, op: &'static str, source: std::io::Error| Error::Mount {
            path: path.to_owned(),
            op,
            source,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| mount_err(dir, "create mount directory", e))?;
        }
        let path = dir
            .canonicalize()
            .map_err(|e| mount_err(dir, "resolve mount directory", e))?;
        let before = mount::mount_ids_at(&path)
            .map_err(|e| mount_err(Path::new(mount::MOUNTINFO), "read", e))?;
        if !before.is_empty() {
            return Err(Error::AlreadyMounted {
                target: target.clone(),
                path,
            });
        }
        self.registry()
            .put(target.as_str(), &path)
            .map_err(|e| mount_err(self.registry().dir(), "record mount path in", e))?;
        Ok(PreparedMount { path, before, wait })
    }

    /// Waits until the helper's mount appears, the helper exits, or `timeout` passes.
    /// On failure the helper is stopped, anything it mounted is detached, and its
    /// record is removed. Call with the target's lock, after the helper was released.
    pub(super) async fn await_mount(
        self: &Arc<Self>,
        target: &TargetId,
        identity: &ProcIdentity,
        prepared: PreparedMount,
        timeout: Duration,
        log: &Path,
    ) -> Result<()> {
        let path = &prepared.path;
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(timeout, async {
            tokio::select! {
                biased;
                m = mount::wait_for_mount(path, prepared.before.clone()) => Ok(m),
                exit = self.spawner.wait_exit(identity, None) => Err(exit),
            }
        })
        .await;
        let why = match outcome {
            Ok(Ok(Ok(m))) => {
                info!(target = %target, pid = identity.pid.get(), mount = %path.display(),
                    connection = m.minor, waited_ms = started.elapsed().as_millis() as u64, "helper mounted");
                return Ok(());
            }
            Ok(Ok(Err(e))) => format!("cannot watch {}: {e}", mount::MOUNTINFO),
            Ok(Err(exit)) => {
                // A mount that raced the exit still counts.
                if let Ok(table) = mount::read_mountinfo() {
                    if mount::mount_at(&table, path)
                        .is_some_and(|m| !prepared.before.contains(&m.mount_id))
                        && !matches!(exit, Ok(WaitOutcome::Exited(_)))
                    {
                        return Ok(());
                    }
                }
                match exit {
                    Ok(WaitOutcome::Exited(status)) => {
                        format!("the helper {} before mounting", describe(&status))
                    }
                    Ok(WaitOutcome::TimedOut) => "the helper could not be watched".to_owned(),
                    Err(e) => format!("the helper could not be watched: {e}"),
                }
            }
            Err(_) => format!(
                "not mounted within {:.1} s (--ready-timeout)",
                timeout.as_secs_f64()
            ),
        };
        warn!(target = %target, pid = identity.pid.get(), mount = %path.display(), why, "helper did not mount");
        // Leave nothing behind: no helper, no mount, no record.
        let stop = self.spawner.terminate(identity, self.opts.kill_grace).await;
        if let Err(e) = &stop {
            warn!(target = %target, pid = identity.pid.get(), error = %e, "cannot stop helper that did not mount");
        }
        if let Ok(table) = mount::read_mountinfo() {
            for m in mount::fuse_mounts_under(&table, path) {
                if !prepared.before.contains(&m.mount_id) {
                    if let Err(e) = mount::detach(&m.mount_point) {
                        warn!(mount = %m.mount_point.display(), %e, "cannot detach mount of failed helper");
                    }
                }
            }
        }
        self.forget(target, Some(identity));
        if let Err(e) = self.store.remove(target).await {
            warn!(target = %target, error = %e, "cannot remove the record of a helper that did not mount; cleanup will");
        }
        if mount::mount_ids_at(path).is_ok_and(|ids| ids.is_empty()) {
            let _ = self.registry().remove(target.as_str());
        }
        if let Ok(out) = stop {
            if !out.stopped && !out.mismatch {
                return Err(Error::StillRunning {
                    target: target.clone(),
                    pid: identity.pid,
                });
            }
        }
        Err(Error::NotMounted {
            target: target.clone(),
            pid: identity.pid,
            path: path.clone(),
            why,
            log: log.to_owned(),
            log_tail: log_tail(log, LOG_TAIL_LINES),
        })
    }

    /// Fills `mount` (from the registry when the store keeps no metadata), `mounted` and
    /// `mount_state` of an info object.
    pub(super) async fn fill_mount(
        &self,
        target: &TargetId,
        info: &mut ProcessInfo,
        mounts: Option<&super::Mounts>,
    ) {
        if info.mount.is_none() {
            info.mount = match mounts {
                Some(m) => m.get(target.as_str()).cloned(),
                None => self.registry().get(target.as_str()),
            };
        }
        if let Some(path) = &info.mount {
            let state = mount::probe(path, PROBE_TIMEOUT).await;
            info.mount_state = Some(state);
            info.mounted = Some(state != MountState::Unmounted);
        }
    }

    /// Every recorded mount, by target: one read of the registry for a whole listing.
    pub(super) fn mounts(&self) -> super::Mounts {
        self.registry().list().into_iter().collect()
    }

    /// How many recorded mounts are stale; `known` holds states already probed.
    pub(super) async fn count_stale_mounts(
        &self,
        known: &std::collections::HashMap<PathBuf, MountState>,
    ) -> usize {
        let mut n = 0;
        for (_, path) in self.registry().list() {
            let state = match known.get(&path) {
                Some(s) => *s,
                None => mount::probe(&path, PROBE_TIMEOUT).await,
            };
            if state == MountState::Stale {
                n += 1;
            }
        }
        n
    }

    /// The recorded mount of a target being killed, with its connection number.
    pub(super) fn kill_mount(&self, target: &TargetId) -> Option<KillMount> {
        let path = self.registry().get(target.as_str())?;
        let minor = mount::read_mountinfo()
            .ok()
            .and_then(|t| mount::mount_at(&t, &path).map(|m| m.minor));
        Some(KillMount {
            path,
            minor,
            tried_unmount: false,
        })
    }

    /// Kill step 1: a clean unmount of a mounted mount point. Returns whether it
    /// succeeded (the helper should then exit by itself).
    pub(super) fn kill_unmount_first(&self, m: &mut KillMount, steps: &mut Vec<String>) -> bool {
        if m.tried_unmount || m.minor.is_none() {
            return false;
        }
        m.tried_unmount = true;
        match mount::unmount(&m.path) {
            Ok(()) => {
                steps.push("unmount".to_owned());
                true
            }
            Err(e) => {
                warn!(mount = %m.path.display(), %e, "clean unmount failed; stopping the helper");
                steps.push("unmount_failed".to_owned());
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
        steps: &mut Vec<String>,
    ) -> Result<StopOutcome> {
        let minor = mount.and_then(|m| m.minor);
        let kill_wait = match minor {
            Some(_) => STUCK_MOUNT_KILL_WAIT,
            None => dms_proc::DEFAULT_KILL_WAIT,
        };
        let mut out = self
            .spawner
            .terminate_with(victim, grace, kill_wait)
            .await?;
        steps.extend(out.signals.iter().map(|s| s.name().to_owned()));
        let Some(minor) = minor.filter(|_| !out.stopped && !out.mismatch) else {
            return Ok(out);
        };
        match mount::abort_connection(minor) {
            Ok(true) => steps.push("abort".to_owned()),
            Ok(false) => return Ok(out),
            Err(e) => {
                warn!(connection = minor, %e, "cannot abort FUSE connection");
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

    /// Kill steps after the helper is gone: unmount or lazily detach whatever is left at
    /// the mount point, abort the FUSE connection if it lingers, and forget the record.
    pub(super) async fn kill_mount_after(
        &self,
        target: &TargetId,
        m: &mut KillMount,
        steps: &mut Vec<String>,
    ) {
        let table = mount::read_mountinfo().unwrap_or_default();
        let left: Vec<_> = mount::fuse_mounts_under(&table, &m.path)
            .into_iter()
            .cloned()
            .collect();
        for e in &left {
            m.minor.get_or_insert(e.minor);
            match mount::detach(&e.mount_point) {
                Ok(()) => steps.push("detach".to_owned()),
                Err(err) => {
                    warn!(mount = %e.mount_point.display(), %err, "cannot detach mount");
                    steps.push("detach_failed".to_owned());
                }
            }
        }
        // Still stuck: the connection outlives its mounts (a process holds /dev/fuse or
        // a file on the detached mount).
        if let Some(minor) = m.minor {
            if !left.is_empty() && mount::connection_exists(minor) == Some(true) {
                match mount::abort_connection(minor) {
                    Ok(true) => steps.push("abort".to_owned()),
                    Ok(false) => {}
                    Err(e) => warn!(connection = minor, %e, "cannot abort FUSE connection"),
                }
            }
        }
        if mount::mount_ids_at(&m.path).is_ok_and(|ids| ids.is_empty()) {
            if let Err(e) = self.registry().remove(target.as_str()) {
                warn!(target = %target, %e, "cannot remove mount record");
            }
        }
    }
}

impl Manager {
    /// Detaches orphaned and stale FUSE mounts under the recorded mount paths
    /// (`<run-dir>/mounts/`): every FUSE mount there whose target has no live helper
    /// proven ours, and every stale one (dead daemon, or no answer to `statfs` within
    /// 2 s). A connection that outlives its detached mounts is aborted. Records whose
    /// path has no mount left and no helper are forgotten. Helpers are never signalled.
    pub async fn cleanup_mounts(&self) -> Result<Vec<MountAction>> {
        let inner = &self.inner;
        let registry = inner.registry();
        let mut actions = Vec::new();
        for (name, path) in registry.list() {
            let Ok(target) = name.parse::<TargetId>() else {
                continue;
            };
            let _guard = inner.locks.lock(&target).await?;
            let live = match inner.live_helper(&target).await {
                Ok(live) => live.is_some(),
                // Cannot verify: treat as live, touch only stale mounts.
                Err(_) => true,
            };
            let table = mount::read_mountinfo().map_err(|source| Error::Mount {
                path: mount::MOUNTINFO.into(),
                op: "read",
                source,
            })?;
            for m in mount::fuse_mounts_under(&table, &path) {
                let state = mount::probe(&m.mount_point, PROBE_TIMEOUT).await;
                if live && state != MountState::Stale {
                    continue;
                }
                let mut action = match mount::detach(&m.mount_point) {
                    Ok(()) => "detach".to_owned(),
                    Err(e) => format!("detach_failed: {e}"),
                };
                if !live && mount::connection_exists(m.minor) == Some(true) {
                    match mount::abort_connection(m.minor) {
                        Ok(true) => action.push_str("+abort"),
                        Ok(false) => {}
                        Err(e) => warn!(connection = m.minor, %e, "cannot abort FUSE connection"),
                    }
                }
                info!(target = %target, mount = %m.mount_point.display(), ?state, action, "cleaned mount");
                actions.push(MountAction {
                    target: target.clone(),
                    path: m.mount_point.clone(),
                    state,
                    action,
                });
            }
            if !live && mount::mount_ids_at(&path).is_ok_and(|ids| ids.is_empty()) {
                if let Err(e) = registry.remove(&name) {
                    warn!(target = %target, %e, "cannot remove mount record");
                }
            }
        }
        Ok(actions)
    }
}
