//! Automatic sync of memory with disk (serve.md "Running it"): a PID file written from
//! outside whose process is proven ours is loaded into memory and watched; a PID file
//! removed from outside ends the tracking of its helper, which is not signalled.
//!
//! The manager does not watch the directory itself: a caller that does (the daemon's
//! inotify watch of `<run-dir>/s3/`) calls [`Manager::sync_target`] for each PID file
//! that changed. Each call takes the target's lock and reads the path again, so the
//! manager's own writes and removals (made under that lock, memory first) are never
//! mistaken for changes from outside: once the lock is free, memory and disk agree.

use super::verdict::Verdict;
use super::{same_record, Inner, Manager};
use crate::error::Result;
use crate::report::Event;
use dms_proc::ProcInfo;
use dms_store::{Entry, Record, Stored, TargetId};
use std::collections::BTreeSet;
use tracing::{debug, info, warn};

impl Manager {
    /// Syncs the memory entry of `target` with its PID file (outside one-shot mode;
    /// never signals anything, never removes a file):
    ///
    /// - a PID file whose live process is proven ours, with nothing in memory: loaded
    ///   into memory and watched ([`Event::Adopted`]);
    /// - no PID file any more (nothing at the path), a live helper in memory: its
    ///   tracking ends and the helper keeps running ([`Event::Untracked`]); a helper
    ///   that is gone is left to the exit watcher, which reports its exit;
    /// - anything else is left as it is (a stale, foreign or corrupt file is for
    ///   `cleanup`; a file naming another PID than a live tracked helper is rewritten
    ///   by the next [`Manager::reload`] or [`Manager::cleanup_dead`]).
    ///
    /// Returns the event it emitted, if any.
    pub async fn sync_target(&self, target: &TargetId) -> Result<Option<Event>> {
        if self.inner.opts.one_shot {
            return Ok(None);
        }
        let _guard = self.inner.locks.lock(target).await?;
        let disk = self.inner.store.get(target).await?;
        let tracked = self.inner.memory_identity(target);
        match (tracked, disk) {
            (None, Some(Stored::Valid(record))) => match self.inner.classify(target, &record).await
            {
                Verdict::Own(p) if self.inner.load_locked(target, &record, &p).await => {
                    Ok(Some(Event::Adopted {
                        target: target.clone(),
                        pid: record.pid,
                    }))
                }
                Verdict::Own(_) => Ok(None),
                verdict => {
                    let why = match verdict {
                        Verdict::Stale => "its process is gone".to_owned(),
                        Verdict::Foreign(why) | Verdict::Unverified(why) => why,
                        Verdict::Own(_) => unreachable!("handled above"),
                    };
                    debug!(target = %target, pid = record.pid.get(), why, "PID file not loaded");
                    Ok(None)
                }
            },
            (Some(id), None) => match self.inner.verify(&id).await {
                Verdict::Own(_) => {
                    self.inner.forget(target, Some(&id));
                    info!(target = %target, pid = id.pid.get(), "PID file removed from outside; the helper is no longer tracked (not signalled)");
                    let event = Event::Untracked {
                        target: target.clone(),
                        pid: id.pid,
                    };
                    self.inner.emit(event.clone());
                    Ok(Some(event))
                }
                // Gone: the exit watcher reports it (and a probe it cannot make is no
                // reason to let go of it).
                _ => Ok(None),
            },
            (Some(id), Some(Stored::Valid(r))) if r.pid == id.pid => Ok(None),
            (Some(id), Some(Stored::Valid(r))) => {
                warn!(target = %target, tracked = id.pid.get(), named = r.pid.get(),
                    "the PID file names another PID than the tracked helper; the tracked one is kept (reload or cleanup rewrites the file)");
                Ok(None)
            }
            (Some(id), Some(Stored::Corrupt(c))) => {
                warn!(target = %target, tracked = id.pid.get(), reason = c.reason,
                    "the PID file of a tracked helper is not a valid PID file; the helper is kept (reload or cleanup rewrites the file)");
                Ok(None)
            }
            (None, None | Some(Stored::Corrupt(_))) => Ok(None),
        }
    }

    /// [`Manager::sync_target`] for every target in memory or on disk (after events
    /// were lost: an inotify queue overflow, or a watch set up late). Returns the events
    /// emitted; a target whose sync fails is logged and skipped.
    pub async fn sync_all(&self) -> Result<Vec<Event>> {
        let mut targets: BTreeSet<TargetId> = self.inner.read_memory().keys().cloned().collect();
        for entry in dms_store::list_sorted(&self.inner.store).await? {
            if let Entry::Target { target, .. } = entry {
                targets.insert(target);
            }
        }
        let mut events = Vec::new();
        for target in targets {
            match self.sync_target(&target).await {
                Ok(Some(e)) => events.push(e),
                Ok(None) => {}
                Err(e) => {
                    warn!(target = %target, error = %crate::Report::new(&e), "cannot sync the target with its PID file")
                }
            }
        }
        Ok(events)
    }
}

impl Inner {
    /// Loads the live helper `p` of `record`, proven ours by a lookup, into memory and
    /// watches it (outside one-shot mode). Only when the target's lock is free right
    /// now (a lookup does not wait for a change in progress); returns whether it did.
    pub(super) async fn load_found(
        &self,
        target: &TargetId,
        record: &Record,
        p: &ProcInfo,
    ) -> bool {
        if self.opts.one_shot || self.exit_watch.is_none() {
            return false;
        }
        match self.locks.try_lock(target) {
            Ok(Some(_guard)) => self.load_locked(target, record, p).await,
            Ok(None) => false,
            Err(e) => {
                debug!(target = %target, error = %crate::Report::new(&e), "cannot lock the target to load its helper");
                false
            }
        }
    }

    /// [`Inner::load_found`] with the target's lock held: loads `p` when memory has no
    /// entry for `target`, the PID file still holds `record`, and `p` is no other
    /// target's helper; emits [`Event::Adopted`].
    pub(super) async fn load_locked(
        &self,
        target: &TargetId,
        record: &Record,
        p: &ProcInfo,
    ) -> bool {
        if self.memory_identity(target).is_some() {
            return false;
        }
        if self.read_memory().target_of(&p.identity).is_some() {
            return false;
        }
        let unchanged = matches!(self.store.get(target).await,
            Ok(Some(Stored::Valid(now))) if same_record(&now, record));
        if !unchanged {
            return false;
        }
        self.track(target, p.identity.clone(), record.meta.clone());
        self.observe(target, p);
        info!(target = %target, pid = record.pid.get(), "loaded running helper found on disk");
        self.emit(Event::Adopted {
            target: target.clone(),
            pid: record.pid,
        });
        true
    }
}
