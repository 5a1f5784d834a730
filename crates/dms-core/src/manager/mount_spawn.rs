//! The mount side of `spawn`: which mount directories are refused, the directory
//! prepared and recorded, and the wait for the helper's mount, which must come up *and
//! answer* for the spawn to succeed. The mechanics are behind [`crate::mount::Mounts`]
//! ([`Inner::mounts`]).

use super::daemonize::Handover;
use super::mount_ops::{describe, log_tail, LOG_TAIL_LINES};
use super::verdict::Verdict;
use super::Inner;
use crate::error::{Error, Result};
use crate::mount::{self, Exact, MountIdentity, MountRecord, PROBE_TIMEOUT};
use crate::report::MountState;
use dms_proc::{ProcIdentity, StartupWindow, WaitOutcome};
use dms_store::TargetId;
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// A mount point prepared for a spawn.
#[derive(Clone)]
pub(super) struct PreparedMount {
    /// The canonical mount directory.
    pub(super) path: PathBuf,
    /// Mount IDs already at the path (none: a mounted path is refused).
    pub(super) before: HashSet<u64>,
    /// Whether spawn waits for the mount (else it is only recorded).
    pub(super) wait: bool,
}

/// `dir` with every symbolic link in it resolved and `.`/`..` applied as the kernel
/// would: where a mount there would really be, even before the directory exists. Only
/// symbolic links are looked at (`readlink`), never the attributes of a directory: a
/// mount point whose FUSE daemon hangs (the old helper of a `--replace`) would hang a
/// `stat`.
pub(super) fn resolve(dir: &Path) -> PathBuf {
    let mut out = if dir.is_relative() {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    } else {
        PathBuf::from("/")
    };
    for c in dir.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                // `out` holds no symbolic link: every one was resolved when pushed.
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if std::fs::read_link(&out).is_ok() {
                    if let Ok(p) = out.canonicalize() {
                        out = p;
                    }
                }
            }
        }
    }
    out
}

impl Inner {
    /// Refuses a mount directory that would make a mount record act on what is not the
    /// helper's: `/`, a directory inside the run directory or holding it, or the recorded
    /// mount of another target whose helper is running. Call before anything is stopped
    /// or started (also before `--replace` stops the old helper).
    pub(super) async fn check_mount_dir(&self, target: &TargetId, dir: &Path) -> Result<()> {
        let path = resolve(dir);
        let refuse = |why: String, bad_input: bool| Error::MountRefused {
            target: target.clone(),
            path: path.clone(),
            why,
            bad_input,
        };
        if path.parent().is_none() {
            return Err(refuse(
                "it is the root directory; a helper's mount there would cover the whole \
                 system. Give the target a directory of its own, such as /mnt/<target>"
                    .into(),
                true,
            ));
        }
        let run = resolve(&self.opts.run_dir);
        if path.starts_with(&run) {
            return Err(refuse(
                format!(
                    "it lies inside the run directory {}; a mount there would hide dms's \
                     own records. Choose a directory outside it",
                    run.display()
                ),
                true,
            ));
        }
        if run.starts_with(&path) {
            return Err(refuse(
                format!(
                    "it holds the run directory {}; a mount there would hide dms's own \
                     records. Choose a directory that does not contain it",
                    run.display()
                ),
                true,
            ));
        }
        if let Some(why) = self.mount_taken(target, &path, false).await {
            return Err(refuse(why, false));
        }
        Ok(())
    }

    /// Why `path` is another target's, if it is: the recorded mount of a target whose
    /// helper runs (or cannot be verified), or, with `in_progress`, of a target being
    /// spawned right now (its record has no identity yet and its lock is held). Read-only
    /// (no lock of the other target is taken): a refusal needs no more.
    async fn mount_taken(
        &self,
        target: &TargetId,
        path: &Path,
        in_progress: bool,
    ) -> Option<String> {
        for (other, record) in self.registry().list() {
            if other == target.as_str() || record.path != path {
                continue;
            }
            let Ok(other) = other.parse::<TargetId>() else {
                continue;
            };
            if in_progress && record.identity.is_none() && self.locks.is_held(&other) {
                return Some(format!(
                    "target {other} is being spawned with this mount directory right now \
                     (its record has no mount yet and its lock is held); give each target \
                     its own mount directory"
                ));
            }
            let live = match self.memory_identity(&other) {
                Some(id) => matches!(self.verify(&id).await, Verdict::Own(_)),
                None => false,
            } || match self.store.get(&other).await {
                Ok(Some(dms_store::Stored::Valid(r))) => {
                    matches!(
                        self.classify(&other, &r).await,
                        Verdict::Own(_) | Verdict::Unverified(_)
                    )
                }
                _ => false,
            };
            if live {
                return Some(format!(
                    "it is the recorded mount of target {other}, whose helper is running; \
                     give each target its own mount directory (or stop it first: `dms kill \
                     {other}`)"
                ));
            }
        }
        None
    }

    /// Creates the mount directory, refuses one that is already a mount point, and
    /// records it for `target`. Call with the target's lock, before the helper exists.
    /// Without `wait`, the path is only recorded, as given.
    pub(super) async fn prepare_mount(
        &self,
        target: &TargetId,
        dir: &Path,
        wait: bool,
    ) -> Result<PreparedMount> {
        if !wait {
            if let Err(e) = self.registry().put(target.as_str(), dir) {
                warn!(target = %target, error = %crate::Report::new(&e), "cannot record mount path");
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
        let before = self
            .mounts()
            .mount_ids_at(&path)
            .map_err(|e| mount_err(Path::new(mount::MOUNTINFO), "read", e))?;
        if !before.is_empty() {
            return Err(Error::AlreadyMounted {
                target: target.clone(),
                path,
            });
        }
        // Checked again, and recorded, under the mount-record lock: another target's
        // spawn may have taken the directory since the first check.
        let _records = self.locks.lock_mounts().await?;
        if let Some(why) = self.mount_taken(target, &path, true).await {
            return Err(Error::MountRefused {
                target: target.clone(),
                path,
                why,
                bad_input: false,
            });
        }
        self.registry()
            .put(target.as_str(), &path)
            .map_err(|e| mount_err(self.registry().dir(), "record mount path in", e))?;
        Ok(PreparedMount { path, before, wait })
    }

    /// Waits until the helper's mount appears, the helper exits, or `timeout` passes;
    /// then records the mount's identity and probes it: a mount that does not answer
    /// (stale) fails the spawn too. A helper that goes into the background is followed
    /// (`manager/daemonize.rs`): the result says who serves the mount. On failure the
    /// helper's mount is detached (and its FUSE connection aborted), the helper and what
    /// it left running stopped, and its records removed. Call with the target's lock,
    /// after the helper was released.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn await_mount(
        self: &Arc<Self>,
        target: &TargetId,
        identity: &ProcIdentity,
        prepared: PreparedMount,
        timeout: Duration,
        log: &Path,
        window: &StartupWindow,
    ) -> Result<Handover> {
        let path = &prepared.path;
        let started = std::time::Instant::now();
        let left = || timeout.saturating_sub(started.elapsed());
        let outcome = tokio::time::timeout(timeout, async {
            tokio::select! {
                biased;
                m = self.mounts().wait_for_mount(path, prepared.before.clone()) => Ok(m),
                exit = self.spawner.wait_exit(identity, None) => Err(exit),
            }
        })
        .await;
        let mut came_up = None;
        let timed_out = outcome.is_err();
        let why = match outcome {
            Ok(Ok(Ok(m))) => {
                let id = self.mounts().identify(&m, path);
                came_up = Some(id);
                match self.served(target, identity, path, id).await {
                    None => {
                        info!(target = %target, pid = identity.pid.get(), mount = %path.display(),
                            mount_id = id.mount_id, connection = m.minor,
                            waited_ms = started.elapsed().as_millis() as u64, "helper mounted");
                        // The leader may now hand its mount over to a daemon child.
                        let followed = self
                            .follow_after_mount(target, identity, window, left(), log)
                            .await;
                        if followed.is_err() {
                            self.stop_startup(identity, window).await;
                            self.undo_mount(target, identity, &prepared).await;
                        }
                        return followed;
                    }
                    Some(why) => why,
                }
            }
            Ok(Ok(Err(e))) => format!("cannot watch {}: {e}", mount::MOUNTINFO),
            Ok(Err(exit)) => {
                // A mount that raced the exit.
                let raced = self.new_mount(&prepared);
                match exit {
                    Ok(WaitOutcome::Exited(status)) => {
                        // It may have gone into the background: follow what it left.
                        match self
                            .await_daemon_mount(
                                target,
                                identity,
                                status,
                                window,
                                &prepared,
                                left(),
                                log,
                            )
                            .await
                        {
                            Ok(Ok(handover)) => match raced.or_else(|| self.new_mount(&prepared)) {
                                Some(id) => {
                                    came_up = Some(id);
                                    let server = match &handover {
                                        Handover::To(helper) => helper,
                                        Handover::Leader => identity,
                                    };
                                    match self.served(target, server, path, id).await {
                                        None => return Ok(handover),
                                        Some(why) => why,
                                    }
                                }
                                None => "the helper went into the background and its mount \
                                         was gone again at once"
                                    .to_owned(),
                            },
                            Ok(Err(e)) => {
                                self.stop_startup(identity, window).await;
                                self.undo_mount(target, identity, &prepared).await;
                                return Err(e);
                            }
                            Err(why) => match raced {
                                // Mounted, then gone at once, leaving nothing (s3fs with
                                // a missing bucket): the dead mount is the helper's and
                                // goes too.
                                Some(id) => {
                                    came_up = Some(id);
                                    format!(
                                        "the helper {} right after its mount came up; the \
                                         mount does not answer (stale)",
                                        describe(&status)
                                    )
                                }
                                None => why,
                            },
                        }
                    }
                    Ok(WaitOutcome::TimedOut) => "the helper could not be watched".to_owned(),
                    Err(e) => format!(
                        "the helper could not be watched: {}",
                        crate::error::detail(&e)
                    ),
                }
            }
            Err(_) => format!(
                "not mounted within {:.1} s (the ready timeout)",
                timeout.as_secs_f64()
            ),
        };
        warn!(target = %target, pid = identity.pid.get(), mount = %path.display(), why, "helper did not mount");
        // Leave nothing behind: no mount, no helper (nor what it left running), no
        // record. A mount that came up is detached (and its connection aborted) first,
        // so a helper hung in it can exit.
        if let Some(id) = came_up {
            self.drop_failed_mount(path, &id);
        }
        let stop = self
            .spawner
            .terminate(
                identity,
                self.opts.failed_start_grace,
                dms_proc::DEFAULT_KILL_WAIT,
            )
            .await;
        if let Err(e) = &stop {
            warn!(target = %target, pid = identity.pid.get(), error = %crate::Report::new(e), "cannot stop helper that did not mount");
        }
        self.stop_orphans(identity, window).await;
        self.undo_mount(target, identity, &prepared).await;
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
            timed_out,
        })
    }

    /// The identity of the mount at the prepared path that is new since the spawn (the
    /// path was not a mount point then, and the record is ours), if there is one.
    fn new_mount(&self, prepared: &PreparedMount) -> Option<MountIdentity> {
        let table = self.mounts().read_table().ok()?;
        mount::mount_at(&table, &prepared.path)
            .filter(|m| !prepared.before.contains(&m.mount_id))
            .map(|m| self.mounts().identify(m, &prepared.path))
    }

    /// After a failed start with a mount (the helper and what it left are stopped):
    /// detaches the mount that is new at the path since the spawn (exactly that one, its
    /// FUSE connection aborted), forgets the helper, removes its PID file, and removes
    /// the mount record once nothing is mounted at the path any more.
    pub(super) async fn undo_mount(
        &self,
        target: &TargetId,
        identity: &ProcIdentity,
        prepared: &PreparedMount,
    ) {
        if let Some(id) = self.new_mount(prepared) {
            self.drop_failed_mount(&prepared.path, &id);
        }
        self.forget(target, Some(identity));
        if let Err(e) = self.store.remove(target).await {
            warn!(target = %target, error = %crate::Report::new(&e), "cannot remove the record of a helper that did not mount; cleanup will");
        }
        if self.nothing_mounted_at(&prepared.path) {
            let _ = self.registry().remove(target.as_str());
        }
    }

    /// Records the identity of the helper's new mount `id` at `path` and probes it.
    /// `None` when it answers; else why the spawn fails.
    async fn served(
        &self,
        target: &TargetId,
        identity: &ProcIdentity,
        path: &Path,
        id: MountIdentity,
    ) -> Option<String> {
        let record = MountRecord {
            path: path.to_owned(),
            identity: Some(id),
        };
        if let Err(e) = self.registry().put_record(target.as_str(), &record) {
            return Some(format!(
                "its mount came up, but its identity cannot be recorded in {}: {e}",
                self.registry().dir().display()
            ));
        }
        match self.mounts().probe(path, PROBE_TIMEOUT).await {
            MountState::Mounted => None,
            state => {
                let exited = matches!(
                    self.spawner.wait_exit(identity, Some(Duration::ZERO)).await,
                    Ok(WaitOutcome::Exited(_))
                );
                Some(format!(
                    "its mount came up but does not answer (mount state {}: {}){}",
                    match state {
                        MountState::Stale => "stale",
                        _ => "unmounted",
                    },
                    match state {
                        MountState::Stale => format!(
                            "statfs failed with ENOTCONN or got no answer within {:.0} s",
                            PROBE_TIMEOUT.as_secs_f64()
                        ),
                        _ => "it was unmounted at once".to_owned(),
                    },
                    if exited { "; the helper exited" } else { "" }
                ))
            }
        }
    }

    /// Detaches the failed helper's mount `id` and aborts its FUSE connection, so that
    /// nothing (the helper, a prober) stays blocked on it.
    fn drop_failed_mount(&self, path: &Path, id: &MountIdentity) {
        let conn = self.mounts().fuse_conn(path, id).ok().flatten();
        match self.mounts().detach_exact(path, id) {
            Ok(Exact::Done | Exact::Gone) => {}
            Ok(Exact::Covered) => {
                warn!(mount = %path.display(), "the failed helper's mount is covered by another mount; left in place")
            }
            Err(e) => {
                warn!(mount = %path.display(), error = %crate::Report::new(&e), "cannot detach mount of failed helper")
            }
        }
        if let Some(conn) = conn {
            if let Err(e) = conn.abort() {
                warn!(connection = conn.name(), error = %crate::Report::new(&e), "cannot abort FUSE connection of failed helper");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;
    use std::path::Path;

    #[test]
    fn resolve_follows_links_of_the_existing_part_and_applies_dot_dot() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("run")).unwrap();
        std::os::unix::fs::symlink(real.join("run"), real.join("link")).unwrap();
        // Not yet existing below a symlink: where the mount would really be.
        assert_eq!(resolve(&real.join("link/new/m")), real.join("run/new/m"));
        assert_eq!(resolve(&real.join("link/new/../m")), real.join("run/m"));
        assert_eq!(resolve(&real.join("link")), real.join("run"));
        assert_eq!(resolve(Path::new("/")), Path::new("/"));
        assert_eq!(resolve(Path::new("/no-such-dir/..")), Path::new("/"));
    }
}
