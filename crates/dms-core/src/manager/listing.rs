//! Lookups and listings: whether a target runs, the info object of one target, the
//! info objects of all (one path: the entries are classified while the store is still
//! reading the rest), and the totals.

use super::info::{apply_usage, Described};
use super::verdict::Verdict;
use super::{Inner, Manager};
use crate::error::Result;
use crate::report::{ProcessInfo, ProcessState, Source, Stats};
use dms_store::{Entry, Stored, TargetId};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tracing::warn;

/// The order in which [`Manager::list_each`] hands over the info objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListOrder {
    /// Sorted by target, once all are made.
    ByTarget,
    /// Each as soon as it is made, while the store is still reading the rest, for a
    /// caller that orders them itself (the command line's status table makes its rows
    /// then, on one core while the store reads on the other, and sorts the rows). With
    /// a non-zero [`crate::UsageSampling::Interval`] they come once all are made
    /// and sampled, in no particular order.
    AsMade,
}

impl Manager {
    /// Whether `target` has a live helper proven ours.
    ///
    /// Memory first: a memory entry is kept truthful by its exit watcher, so a hit costs
    /// no system call. Otherwise the PID file is read and the process probed and its
    /// identity checked. Never changes anything. An entry whose process cannot be
    /// verified (permission denied) is an [`crate::Error::Unverified`].
    pub async fn is_running(&self, target: &TargetId) -> Result<bool> {
        let unwatched = {
            let memory = self.inner.read_memory();
            match memory.get(target) {
                Some(t) if t.watched && self.inner.watch_ok.load(Ordering::Acquire) => {
                    return Ok(true)
                }
                Some(t) => Some(t.identity()),
                None => None,
            }
        };
        if let Some(id) = unwatched {
            if self
                .inner
                .verify(&id)
                .await
                .proven(target, id.pid)?
                .is_some()
            {
                return Ok(true);
            }
        }
        match self.inner.store.get(target).await? {
            Some(Stored::Valid(r)) => {
                let verdict = self.inner.classify(target, &r).await;
                let Some(info) = verdict.proven(target, r.pid)? else {
                    return Ok(false);
                };
                self.inner.load_found(target, &r, &info).await;
                Ok(true)
            }
            None | Some(Stored::Corrupt(_)) => Ok(false),
        }
    }

    /// Everything known about `target` (the info object of the command line), with
    /// resource usage sampled over [`crate::UsageSampling::Interval`] when
    /// running, and when that usage was read ([`ProcessInfo::usage_sampled_at`]).
    ///
    /// A helper this manager holds and watches is answered from memory, without reading
    /// the store or probing the process (only the PID file's existence is looked up);
    /// its usage is the background sample when
    /// [`crate::UsageSampling::Background`] is on and the sample is at most 2 s old.
    /// Outside one-shot mode, a live helper proven ours found only on disk is loaded into
    /// memory and watched (event [`crate::Event::Adopted`]), as [`Manager::is_running`]
    /// does.
    pub async fn process_info(&self, target: &TargetId) -> Result<ProcessInfo> {
        let inline = self.inner.inline_usage();
        if let Some(d) = self
            .inner
            .info_from_memory(target, None, None, inline)
            .await
        {
            return Ok(self.inner.finish_usage(d).await);
        }
        let disk = self.inner.store.get(target).await?;
        let record = match &disk {
            Some(Stored::Valid(r)) => Some(r.clone()),
            _ => None,
        };
        let d = self.inner.describe(target, disk, None, inline).await;
        let mut info = self.inner.finish_usage(d).await;
        if let (Some(r), Some(Source::Disk), true) = (record, info.source, info.running) {
            if let Verdict::Own(p) = self.inner.classify(target, &r).await {
                if self.inner.load_found(target, &r, &p).await {
                    info.source = Some(Source::Both);
                }
            }
        }
        Ok(info)
    }

    /// The info of every target in memory or on disk, sorted by target:
    /// [`Manager::list_each`] in [`ListOrder::ByTarget`], collected.
    pub async fn list(&self) -> Result<Vec<ProcessInfo>> {
        let mut infos = Vec::new();
        self.list_each(ListOrder::ByTarget, |i| infos.push(i))
            .await?;
        Ok(infos)
    }

    /// The info of every target in memory or on disk, handed to `each` one at a time in
    /// `order`, so that the caller need not hold them all in another form (the command
    /// line's `status` writes each as it comes).
    ///
    /// One listing of the store serves every target (no second read per PID file), and
    /// the entries are classified while the store is still reading the rest
    /// ([`dms_store::PidStore::list`]). Helpers held in memory are answered as
    /// [`Manager::process_info`] answers them, from memory. With a zero
    /// [`crate::UsageSampling::Interval`] the usage of a running helper is read
    /// with its probe, without waiting; with a longer one the usage of every running
    /// helper is sampled concurrently, over one shared interval, once all are made.
    pub async fn list_each(
        &self,
        order: ListOrder,
        mut each: impl FnMut(ProcessInfo),
    ) -> Result<()> {
        let inline = self.inner.inline_usage();
        let interval = self.inner.opts.usage.in_line().filter(|i| !i.is_zero());
        // Handed over as made: only when nothing is left to do once all are made.
        let at_once = order == ListOrder::AsMade && interval.is_none();
        // The store reads its files (on another thread, for the PID-file backends) while
        // this task classifies the entries already read.
        let mounts = self.inner.listed_mounts().await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Entry>>(8);
        let store = self.inner.store.clone();
        // Handed over at once: the targets listed from disk, to add those only in memory
        // after (a list, not a hash set: searched only when memory holds any target).
        let mut seen = Vec::new();
        let classify = async {
            let mut made = Vec::new();
            while let Some(batch) = rx.recv().await {
                for entry in batch {
                    let Some((target, lookup)) = lookup_of(entry) else {
                        continue;
                    };
                    let d = self
                        .inner
                        .describe(&target, Some(lookup), Some(&mounts), inline)
                        .await;
                    if at_once {
                        seen.push(target);
                        each(d.finished());
                    } else {
                        made.push(d);
                    }
                }
            }
            made
        };
        let (listed, mut made) = tokio::join!(store.list(tx), classify);
        listed?;
        // Targets only in memory (their PID file is gone).
        let memory: Vec<TargetId> = self.inner.read_memory().keys().cloned().collect();
        if at_once {
            if !memory.is_empty() {
                seen.sort_unstable();
                for target in memory {
                    if seen.binary_search(&target).is_err() {
                        let d = self
                            .inner
                            .describe(&target, None, Some(&mounts), inline)
                            .await;
                        each(d.finished());
                    }
                }
            }
            return Ok(());
        }
        made.sort_by(|a, b| a.info.target.cmp(&b.info.target));
        // Searched while `made` is still sorted: pushing before every search is done
        // would search an unsorted vector, and list a target twice (the fuzzer's find).
        let missing: Vec<TargetId> = memory
            .into_iter()
            .filter(|t| made.binary_search_by(|d| d.info.target.cmp(t)).is_err())
            .collect();
        if !missing.is_empty() {
            for target in missing {
                let d = self
                    .inner
                    .describe(&target, None, Some(&mounts), inline)
                    .await;
                made.push(d);
            }
            made.sort_by(|a, b| a.info.target.cmp(&b.info.target));
        }
        if let Some(interval) = interval {
            self.inner.sample_all(&mut made, interval).await;
        }
        for d in made {
            each(d.finished());
        }
        Ok(())
    }

    /// Totals: tracked in memory, files on disk, and targets per state.
    pub async fn stats(&self) -> Result<Stats> {
        let (targets, entries) = self.inner.all_targets().await?;
        let mut stats = Stats {
            total_tracked: self.inner.read_memory().len(),
            pid_files_on_disk: entries.len(),
            running: 0,
            stale: 0,
            foreign: 0,
            corrupt: 0,
            unverified: 0,
            strays: entries
                .iter()
                .filter(|e| matches!(e, Entry::Stray { .. }))
                .count(),
            stale_mounts: None,
            backend: self.inner.store.backend_name().to_owned(),
            run_dir: self.inner.opts.run_dir.clone(),
        };
        let mut disk = disk_lookups(entries);
        let mounts = self.inner.listed_mounts().await;
        for target in targets {
            let lookup = disk.remove(&target);
            let info = self
                .inner
                .describe(&target, lookup, Some(&mounts), false)
                .await
                .info;
            match info.state {
                ProcessState::Running => stats.running += 1,
                ProcessState::Stale => stats.stale += 1,
                ProcessState::Foreign => stats.foreign += 1,
                ProcessState::Corrupt => stats.corrupt += 1,
                ProcessState::Unverified => stats.unverified += 1,
                ProcessState::Absent => {}
            }
        }
        stats.stale_mounts = Some(mounts.stale());
        if self.inner.opts.one_shot {
            // Nothing is loaded into memory: what a manager on this run directory
            // tracks is every live helper proven ours.
            stats.total_tracked = stats.running;
        }
        Ok(stats)
    }
}

impl Inner {
    /// Every target in memory or on disk (sorted), and the raw store listing.
    pub(super) async fn all_targets(&self) -> Result<(Vec<TargetId>, Vec<Entry>)> {
        let entries = dms_store::list_sorted(&self.store).await?;
        let mut targets: BTreeSet<TargetId> = self.read_memory().keys().cloned().collect();
        for e in &entries {
            if let Entry::Target { target, .. } = e {
                targets.insert(target.clone());
            }
        }
        Ok((targets.into_iter().collect(), entries))
    }

    /// Samples the usage of every running helper of `made` concurrently, over one shared
    /// `interval`.
    async fn sample_all(&self, made: &mut [Described], interval: Duration) {
        let mut set = tokio::task::JoinSet::new();
        for (i, d) in made.iter_mut().enumerate() {
            if let Some(id) = d.live.take() {
                let spawner = self.spawner.clone();
                set.spawn(async move {
                    let usage = spawner.usage(&id, interval).await;
                    (i, id, usage)
                });
            }
        }
        while let Some(joined) = set.join_next().await {
            // A usage task that panicked leaves its helper's usage unknown (`null`), as
            // a failed read does; the listing goes on.
            let (i, id, usage) = match joined {
                Ok(sampled) => sampled,
                Err(e) => {
                    warn!(error = %e, "a usage sampling task failed; that usage is unknown");
                    continue;
                }
            };
            if apply_usage(&mut made[i].info, &id, usage) {
                made[i].sampled_at = Some(SystemTime::now());
            }
        }
    }
}

/// The target and state of a store entry (`None` for a stray).
fn lookup_of(entry: Entry) -> Option<(TargetId, Stored)> {
    match entry {
        Entry::Target { target, state } => Some((target, state)),
        Entry::Stray { .. } => None,
    }
}

/// What the store listed, by target (strays left out).
fn disk_lookups(entries: Vec<Entry>) -> HashMap<TargetId, Stored> {
    let mut disk = HashMap::with_capacity(entries.len());
    for entry in entries {
        if let Some((target, lookup)) = lookup_of(entry) {
            disk.insert(target, lookup);
        }
    }
    disk
}
