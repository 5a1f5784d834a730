//! The [`Manager`]: memory + store, recovery, locking, exit watching.

use crate::error::{Error, Result};
use crate::lock::TargetLocks;
use crate::options::{HelperSpec, ManagerOptions};
use crate::report::{
    CleanupReport, Event, KillReport, ProcessInfo, ProcessState, RecoveryReport, RemovalReason,
    Removed, Source, Stats, StrayNote, TargetNote, TargetPid,
};
use dms_proc::{
    ExitStatus, ExitWatch, Pid, Probe, ProcError, ProcIdentity, ProcInfo, SpawnSpec, Spawner,
    WaitOutcome,
};
use dms_store::{Entry, EntryState, Identity, Lookup, Metadata, PidStore, Record, TargetId};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tracing::{debug, error, info, warn};

mod adopt_check;
mod daemonize;
mod info;
mod logs;
mod members;
mod memory;
mod mount_ops;
mod mount_spawn;
mod preflight;
mod stop_all;
mod sync;
mod usage;
use memory::Memory;
pub use mount_ops::DEFAULT_READY_TIMEOUT;

/// Tracks one helper process per target, in memory and in a [`PidStore`], and starts,
/// stops and watches helpers through a [`Spawner`].
///
/// - **Memory** holds every helper this manager spawned, adopted or recovered, compactly
///   (a few hundred bytes each), all watched by one shared exit watcher
///   ([`Spawner::exit_watch`]; on Linux an epoll set of pidfds polled by one task): when a
///   helper exits, its memory entry and its PID file are removed promptly, so a memory
///   hit needs no system call. In one-shot mode ([`ManagerOptions::one_shot`]) nothing
///   is watched and a memory hit is probed.
/// - **Disk** (the store) is what survives a restart. [`Manager::open`] runs
///   [`Manager::reload`], which loads live helpers proven ours back into memory.
/// - **Identity**: a PID is acted on only after proving it is still the recorded
///   process: exact start ticks and boot ID where the store recorded them; for a bare
///   PID file, a live process that started no later than the file's mtime
///   (plus [`ManagerOptions::start_time_slack`], 20 ms), both on the boot clock. A thread
///   ID that is not a process, dms itself and its ancestors are never helpers. Anything
///   else is *foreign* and is never signalled.
/// - **Locking**: every change to a target holds an in-process mutex and a `flock` on
///   `<run-dir>/locks/<target>.lock`, so two spawns of one target, from one process or
///   two, start exactly one helper. No other lock is held while waiting on a process.
///
/// `Manager` is cheap to clone (an `Arc` inside) and `Send + Sync`. Dropping the last
/// clone stops the exit watcher but never touches a helper.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn PidStore>,
    spawner: Arc<dyn Spawner>,
    opts: ManagerOptions,
    memory: RwLock<Memory>,
    locks: TargetLocks,
    events: broadcast::Sender<Event>,
    /// The shared watcher of the tracked helpers' exits; `None` in one-shot mode or when
    /// the spawner has none (memory hits then probe).
    exit_watch: Option<Box<dyn ExitWatch>>,
    /// False once the exit watcher stopped reporting: memory hits then probe.
    watch_ok: AtomicBool,
    /// The task that handles the exits the watcher reports.
    exit_task: Mutex<Option<AbortHandle>>,
    /// The background usage sampler ([`ManagerOptions::usage_sampling`]).
    sample_task: Mutex<Option<AbortHandle>>,
    /// When the sampler's readers last wanted a sample (it parks without them).
    demand: usage::Demand,
}

/// What a probe says about a recorded PID.
enum Verdict {
    /// Alive and proven ours.
    Own(Box<ProcInfo>),
    /// Dead or a zombie.
    Stale,
    /// Alive, not ours.
    Foreign(String),
    /// The probe failed (permission denied, ...): alive or not, it is not known.
    Unverified(String),
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tracked = self.inner.read_memory().len();
        f.debug_struct("Manager")
            .field("run_dir", &self.inner.opts.run_dir)
            .field("store", &self.inner.store)
            .field("spawner", &self.inner.spawner)
            .field("tracked", &tracked)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in [&mut self.exit_task, &mut self.sample_task] {
            let task = task.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = task.take() {
                h.abort();
            }
        }
    }
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| Error::RunDir {
            path: path.to_owned(),
            source,
        })
}

fn record_for(identity: &ProcIdentity, meta: Metadata) -> Record {
    Record {
        pid: identity.pid,
        identity: Some(Identity {
            start_ticks: identity.start_ticks,
            boot_id: identity.boot_id.clone(),
        }),
        meta,
        written_at: None,
    }
}

fn same_record(a: &Record, b: &Record) -> bool {
    a.pid == b.pid && a.identity == b.identity && a.written_at == b.written_at
}

impl Manager {
    /// Builds a manager over `store` and `spawner`, creates the run-dir layout
    /// (`locks/`, `logs/`) and runs startup recovery ([`Manager::reload`]), which never
    /// signals anything.
    ///
    /// In one-shot mode ([`ManagerOptions::one_shot`]) it runs no recovery (the report
    /// is empty) and watches no exits.
    ///
    /// Must be called inside a tokio runtime (the exit watcher is a tokio task).
    pub async fn open(
        store: Arc<dyn PidStore>,
        spawner: Arc<dyn Spawner>,
        opts: ManagerOptions,
    ) -> Result<(Manager, RecoveryReport)> {
        create_dir(&opts.run_dir)?;
        create_dir(&opts.locks_dir())?;
        create_dir(&opts.logs_dir())?;
        let (events, _) = broadcast::channel(opts.event_capacity.max(1));
        let (exited_tx, exited_rx) = tokio::sync::mpsc::unbounded_channel();
        let exit_watch = if opts.one_shot {
            None
        } else {
            spawner.exit_watch(exited_tx)?
        };
        let inner = Arc::new(Inner {
            locks: TargetLocks::new(opts.locks_dir()),
            store,
            spawner,
            opts,
            memory: RwLock::new(Memory::default()),
            events,
            watch_ok: AtomicBool::new(exit_watch.is_some()),
            exit_watch,
            exit_task: Mutex::new(None),
            sample_task: Mutex::new(None),
            demand: usage::Demand::new(usage::IDLE_AFTER),
        });
        if inner.exit_watch.is_some() {
            let task = tokio::spawn(handle_exits(Arc::downgrade(&inner), exited_rx));
            *inner.exit_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        }
        if inner.opts.one_shot {
            info!(
                run_dir = %inner.opts.run_dir.display(),
                backend = inner.store.backend_name(),
                one_shot = true,
                "manager started"
            );
            return Ok((Manager { inner }, RecoveryReport::default()));
        }
        let report = inner.reload().await?;
        if let Some(period) = inner.opts.usage_sampling.filter(|p| !p.is_zero()) {
            let task = tokio::spawn(usage::sample_usage(Arc::downgrade(&inner), period));
            *inner.sample_task.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(task.abort_handle());
        }
        info!(
            run_dir = %inner.opts.run_dir.display(),
            backend = inner.store.backend_name(),
            adopted = report.adopted.len(),
            cleared = report.cleared.len(),
            foreign = report.foreign.len(),
            corrupt = report.corrupt.len(),
            "manager started"
        );
        Ok((Manager { inner }, report))
    }

    /// The options it was opened with.
    pub fn options(&self) -> &ManagerOptions {
        &self.inner.opts
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn PidStore> {
        &self.inner.store
    }

    /// The spawner.
    pub fn spawner(&self) -> &Arc<dyn Spawner> {
        &self.inner.spawner
    }

    /// Events from now on: spawned, exited (with status), killed, adopted, cleaned.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The in-memory table: each tracked target and the exact process recorded for it,
    /// sorted by target. (For tests and diagnostics; `list` is the full view.)
    pub fn memory_snapshot(&self) -> Vec<(TargetId, ProcIdentity)> {
        let mut v: Vec<_> = self
            .inner
            .read_memory()
            .iter()
            .map(|(t, tr)| (t.clone(), tr.identity()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Starts `spec` as the helper of `target`.
    ///
    /// Under the target's lock: refuses if a live helper proven ours exists
    /// ([`Error::AlreadyRunning`]) unless `spec.replace` (then it is stopped first, with
    /// [`ManagerOptions::kill_grace`]); creates the helper held at the start barrier;
    /// records it (PID file, identity, metadata, never environment values) and in
    /// memory; only then lets it run its program, and starts watching its exit.
    ///
    /// If the record cannot be written the helper never runs its program. If the program
    /// cannot be executed, the record is removed and the error names the program.
    pub async fn spawn(&self, target: &TargetId, spec: HelperSpec) -> Result<ProcessInfo> {
        self.inner.spawn(target, spec).await?;
        self.process_info(target).await
    }

    /// Stops the helper of `target`: SIGTERM to its process group, up to `grace`, then
    /// SIGKILL; then forgets it in memory and removes its PID file.
    ///
    /// The PID comes from memory, else from disk, and is signalled only once proven to
    /// be the recorded process; stale and foreign entries are removed without any
    /// signal. Not running is not an error: see [`KillReport::was_running`].
    pub async fn kill(&self, target: &TargetId, grace: Duration) -> Result<KillReport> {
        self.inner.kill(target, grace).await
    }

    /// Records the live process `pid` as the helper of `target`, with its current
    /// identity, and watches its exit. Refused if `pid` is dead or a zombie, is dms
    /// itself, is the helper of another target, or if `target` already has another live
    /// helper.
    pub async fn adopt(&self, target: &TargetId, pid: Pid) -> Result<ProcessInfo> {
        self.inner.adopt(target, pid).await?;
        self.process_info(target).await
    }

    /// Whether `target` has a live helper proven ours.
    ///
    /// Memory first: a memory entry is kept truthful by its exit watcher, so a hit costs
    /// no system call. Otherwise the PID file is read and the process probed and its
    /// identity checked. Never changes anything. An entry whose process cannot be
    /// verified (permission denied) is an [`Error::Unverified`].
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
            match self.inner.verify(&id).await {
                Verdict::Own(_) => return Ok(true),
                Verdict::Unverified(reason) => {
                    return Err(Error::Unverified {
                        target: target.clone(),
                        pid: id.pid,
                        reason,
                    })
                }
                Verdict::Stale | Verdict::Foreign(_) => {}
            }
        }
        match self.inner.store.get(target).await? {
            Lookup::Present(r) => match self.inner.classify(target, &r).await {
                Verdict::Own(info) => {
                    self.inner.load_found(target, &r, &info).await;
                    Ok(true)
                }
                Verdict::Unverified(reason) => Err(Error::Unverified {
                    target: target.clone(),
                    pid: r.pid,
                    reason,
                }),
                Verdict::Stale | Verdict::Foreign(_) => Ok(false),
            },
            Lookup::Absent | Lookup::Corrupt(_) => Ok(false),
        }
    }

    /// Everything known about `target` (the info object of the command line), with
    /// resource usage sampled over [`ManagerOptions::usage_interval`] when running.
    ///
    /// A helper this manager holds and watches is answered from memory, without reading
    /// the store or probing the process (only the PID file's existence is looked up);
    /// its usage is the background sample when [`ManagerOptions::usage_sampling`] is on
    /// and the sample is at most 2 s old. Outside one-shot mode, a live helper proven
    /// ours found only on disk is loaded into memory and watched (event
    /// [`Event::Adopted`]), as [`Manager::is_running`] does.
    pub async fn process_info(&self, target: &TargetId) -> Result<ProcessInfo> {
        Ok(self.process_info_sampled(target).await?.0)
    }

    /// [`Manager::process_info`], and when its usage columns were read (`None` when
    /// they are empty).
    pub async fn process_info_sampled(
        &self,
        target: &TargetId,
    ) -> Result<(ProcessInfo, Option<SystemTime>)> {
        let inline = self.inner.opts.usage_interval == Some(Duration::ZERO);
        if let Some(d) = self
            .inner
            .info_from_memory(target, None, None, inline)
            .await
        {
            return Ok(self.inner.finish_usage(d).await);
        }
        let disk = self.inner.store.get(target).await?;
        let record = match &disk {
            Lookup::Present(r) => Some(r.clone()),
            _ => None,
        };
        let mut d = self
            .inner
            .info(target, disk, self.inner.opts.usage_interval)
            .await;
        if let (Some(r), Some(Source::Disk), true) = (record, d.info.source, d.info.running) {
            if let Verdict::Own(p) = self.inner.classify(target, &r).await {
                if self.inner.load_found(target, &r, &p).await {
                    d.info.source = Some(Source::Both);
                }
            }
        }
        Ok((d.info, d.sampled_at))
    }

    /// The info of every target in memory or on disk, sorted by target.
    ///
    /// One listing of the store serves every target (no second read per PID file). The
    /// usage of running helpers is sampled concurrently, over one shared interval; with a
    /// zero [`ManagerOptions::usage_interval`] it is read in line, without waiting.
    pub async fn list(&self) -> Result<Vec<ProcessInfo>> {
        Ok(self
            .list_sampled()
            .await?
            .into_iter()
            .map(|(i, _)| i)
            .collect())
    }

    /// [`Manager::list`], with when the usage columns of each info object were read
    /// (`None` when they are empty). Helpers held in memory are answered as
    /// [`Manager::process_info`] answers them, from memory.
    pub async fn list_sampled(&self) -> Result<Vec<(ProcessInfo, Option<SystemTime>)>> {
        let (targets, entries) = self.inner.all_targets().await?;
        let mut disk = disk_lookups(entries);
        let mounts = self.inner.mounts().await;
        let mut infos = Vec::with_capacity(targets.len());
        let mut running = Vec::new();
        let inline = self.inner.opts.usage_interval == Some(Duration::ZERO);
        for target in targets {
            let lookup = disk.remove(&target).unwrap_or(Lookup::Absent);
            let d = self
                .inner
                .info_listed(&target, lookup, Some(&mounts), inline)
                .await;
            if let Some(id) = d.live {
                running.push((infos.len(), id));
            }
            infos.push((d.info, d.sampled_at));
        }
        match self.inner.opts.usage_interval {
            // A zero interval: read with each probe, already in the info objects.
            None => {}
            Some(interval) if interval.is_zero() => {}
            Some(interval) => {
                let mut set = tokio::task::JoinSet::new();
                for (i, id) in running {
                    let spawner = self.inner.spawner.clone();
                    set.spawn(async move {
                        let usage = spawner.usage(&id, interval).await;
                        (i, id, usage)
                    });
                }
                while let Some(joined) = set.join_next().await {
                    let (i, id, usage) = joined.map_err(|e| {
                        Error::Proc(ProcError::Injected(format!("usage task failed: {e}")))
                    })?;
                    if apply_usage(&mut infos[i].0, &id, usage) {
                        infos[i].1 = Some(SystemTime::now());
                    }
                }
            }
        }
        Ok(infos)
    }

    /// The info of every target in memory or on disk, sorted by target, handed to
    /// `each` one at a time, so that the caller need not hold them all in another form
    /// (the command line's `status` writes each as it comes).
    ///
    /// The entries are classified while the store is still reading the rest
    /// ([`PidStore::list_batches`]), then sorted. With a zero (or no)
    /// [`ManagerOptions::usage_interval`] each info object is complete when handed over;
    /// with a longer interval the usage of every running helper is sampled concurrently
    /// first, as [`Manager::list`] does.
    pub async fn list_with(&self, each: impl FnMut(ProcessInfo)) -> Result<()> {
        self.list_each(true, each).await
    }

    /// [`Manager::list_with`] in no particular order: each info object is handed to
    /// `each` as soon as it is made, while the store is still reading the rest, for a
    /// caller that orders them itself (the command line's status table makes its rows
    /// then, on one core while the store reads on the other, and sorts the rows).
    pub async fn list_unordered_with(&self, each: impl FnMut(ProcessInfo)) -> Result<()> {
        self.list_each(false, each).await
    }

    /// [`Manager::list_with`] (`sorted`) or [`Manager::list_unordered_with`].
    async fn list_each(&self, sorted: bool, mut each: impl FnMut(ProcessInfo)) -> Result<()> {
        if self.inner.opts.usage_interval.is_some_and(|i| !i.is_zero()) {
            self.list().await?.into_iter().for_each(each);
            return Ok(());
        }
        // The store reads its files (on another thread, for the PID-file backends) while
        // this task classifies the entries already read; sorted, the info objects are
        // sorted once all are in, else handed over at once.
        let mounts = self.inner.mounts().await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Entry>>(8);
        let store = self.inner.store.clone();
        // Unsorted: the targets listed from disk, to add those only in memory after
        // (a list, not a hash set: searched only when memory holds any target).
        let mut seen = Vec::new();
        let classify = async {
            let mut infos = Vec::new();
            while let Some(batch) = rx.recv().await {
                for entry in batch {
                    let (target, lookup) = match entry {
                        Entry::Target { target, state } => match state {
                            EntryState::Valid(r) => (target, Lookup::Present(r)),
                            EntryState::Corrupt(c) => (target, Lookup::Corrupt(c)),
                        },
                        Entry::Stray { .. } => continue,
                    };
                    let info = self.listed_info(&target, lookup, &mounts).await;
                    if sorted {
                        infos.push(info);
                    } else {
                        seen.push(target);
                        each(info);
                    }
                }
            }
            infos
        };
        let (listed, mut infos) = tokio::join!(store.list_batches(tx), classify);
        listed?;
        // Targets only in memory (their PID file is gone).
        let memory: Vec<TargetId> = self.inner.read_memory().keys().cloned().collect();
        if !sorted {
            if !memory.is_empty() {
                seen.sort_unstable();
                for target in memory {
                    if seen.binary_search(&target).is_err() {
                        each(self.listed_info(&target, Lookup::Absent, &mounts).await);
                    }
                }
            }
            return Ok(());
        }
        infos.sort_by(|a, b| a.target.cmp(&b.target));
        let mut added = false;
        for target in memory {
            if infos.binary_search_by(|i| i.target.cmp(&target)).is_err() {
                let info = self.listed_info(&target, Lookup::Absent, &mounts).await;
                infos.push(info);
                added = true;
            }
        }
        if added {
            infos.sort_by(|a, b| a.target.cmp(&b.target));
        }
        infos.into_iter().for_each(each);
        Ok(())
    }

    /// The info object of one target of a listing, with its usage read in line (with a
    /// zero interval, from the probe's own read).
    async fn listed_info(&self, target: &TargetId, lookup: Lookup, mounts: &Mounts) -> ProcessInfo {
        let interval = self.inner.opts.usage_interval;
        let inline = interval == Some(Duration::ZERO);
        let d = self
            .inner
            .info_listed(target, lookup, Some(mounts), inline)
            .await;
        let mut info = d.info;
        if let (Some(interval), Some(id), false) = (interval, d.live, inline) {
            let usage = self.inner.spawner.usage(&id, interval).await;
            let _ = apply_usage(&mut info, &id, usage);
        }
        info
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
        let mounts = self.inner.mounts().await;
        for target in targets {
            let lookup = disk.remove(&target).unwrap_or(Lookup::Absent);
            let info = self
                .inner
                .info_listed(&target, lookup, Some(&mounts), false)
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
        Ok(stats)
    }

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
    fn read_memory(&self) -> std::sync::RwLockReadGuard<'_, Memory> {
        self.memory.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_memory(&self) -> std::sync::RwLockWriteGuard<'_, Memory> {
        self.memory.write().unwrap_or_else(|p| p.into_inner())
    }

    fn memory_identity(&self, target: &TargetId) -> Option<ProcIdentity> {
        self.read_memory().get(target).map(|t| t.identity())
    }

    fn memory_entry(&self, target: &TargetId) -> Option<(ProcIdentity, Metadata)> {
        // (The logs directory, a path built on each call, only for a target in memory:
        // a listing asks once per entry, most of them not in memory.)
        self.read_memory()
            .get(target)
            .map(|t| (t.identity(), t.meta(target, &self.opts.logs_dir())))
    }

    fn emit(&self, event: Event) {
        debug!(event = ?event, "event");
        // No receiver is not an error.
        let _ = self.events.send(event);
    }

    /// Puts `identity` in memory for `target` and watches its exit. Call with the
    /// target's lock (or its memory mutex) held.
    fn track(&self, target: &TargetId, identity: ProcIdentity, meta: Metadata) {
        let watched = self.exit_watch.is_some();
        let old = self.write_memory().insert(
            target.clone(),
            &identity,
            meta,
            watched,
            &self.opts.logs_dir(),
        );
        if let Some(watch) = &self.exit_watch {
            if let Some(old) = old.filter(|old| *old != identity) {
                watch.unwatch(&old);
            }
            // In memory first: an exit reported at once finds its target.
            if let Err(e) = watch.watch(&identity) {
                warn!(target = %target, pid = identity.pid.get(), error = %e, "cannot watch helper exit; is_running will probe");
                let mut memory = self.write_memory();
                if let Some(t) = memory.get_mut(target).filter(|t| t.is(&identity)) {
                    t.watched = false;
                }
            }
        }
    }

    /// Removes the memory entry of `target` (only if it names `identity`, when given)
    /// and stops watching its exit.
    fn forget(&self, target: &TargetId, identity: Option<&ProcIdentity>) -> bool {
        let removed = {
            let mut memory = self.write_memory();
            match memory.get(target) {
                Some(t) if identity.is_none_or(|id| t.is(id)) => memory.remove(target),
                _ => None,
            }
        };
        match removed {
            Some(t) => {
                if let Some(watch) = &self.exit_watch {
                    watch.unwatch(&t.identity());
                }
                true
            }
            None => false,
        }
    }

    /// Probes `record.pid` and decides whether it is the recorded helper of `target`.
    async fn classify(&self, target: &TargetId, record: &Record) -> Verdict {
        let probe = self.spawner.probe(record.pid).await;
        self.classify_probed(target, record, probe)
    }

    /// [`Inner::classify`] given the probe of `record.pid`.
    fn classify_probed(
        &self,
        target: &TargetId,
        record: &Record,
        probe: std::result::Result<Probe, ProcError>,
    ) -> Verdict {
        // Probed first: a free PID (most entries of a scan over stale files) is neither
        // dms nor one of its ancestors, and needs no further check.
        if matches!(probe, Ok(Probe::Gone)) {
            return Verdict::Stale;
        }
        if u32::try_from(record.pid.get()).ok() == Some(std::process::id()) {
            return Verdict::Foreign(format!("PID {} is dms itself", record.pid));
        }
        if let Some(why) = self.spawner.protected(record.pid) {
            return Verdict::Foreign(format!("PID {} {why}", record.pid));
        }
        let info = match probe {
            Ok(Probe::Alive(info)) => info,
            Ok(Probe::Gone | Probe::Zombie(_)) => return Verdict::Stale,
            Ok(Probe::Thread { tgid }) => {
                return Verdict::Foreign(crate::error::thread_detail(record.pid, tgid))
            }
            Err(e) => return Verdict::Unverified(e.to_string()),
        };
        // A process is the helper of one target only: a second PID file naming the
        // helper of another target (a copied file) must never let one target's kill
        // stop the other's helper.
        let other = self
            .read_memory()
            .target_of(&info.identity)
            .filter(|t| *t != target)
            .cloned();
        if let Some(other) = other {
            return Verdict::Foreign(format!(
                "PID {} is the helper of target {other}",
                record.pid
            ));
        }
        match (&record.identity, record.written_at) {
            (Some(id), _) => {
                if id.start_ticks == info.identity.start_ticks
                    && id.boot_id == info.identity.boot_id
                {
                    Verdict::Own(Box::new(info))
                } else {
                    Verdict::Foreign(format!(
                        "PID {} belongs to another process now (started at tick {} of boot {}; \
                         the helper started at tick {} of boot {})",
                        record.pid,
                        info.identity.start_ticks,
                        info.identity.boot_id,
                        id.start_ticks,
                        id.boot_id
                    ))
                }
            }
            (None, Some(written)) => {
                if info.started_at <= written + self.opts.start_time_slack {
                    Verdict::Own(Box::new(info))
                } else {
                    let after_ms = info
                        .started_at
                        .duration_since(written)
                        .unwrap_or_default()
                        .as_secs_f64()
                        * 1e3;
                    Verdict::Foreign(format!(
                        "PID {} belongs to a process that started at {}, {after_ms:.1} ms \
                         after its PID file was written at {}",
                        record.pid,
                        humantime::format_rfc3339_millis(info.started_at),
                        humantime::format_rfc3339_millis(written)
                    ))
                }
            }
            (None, None) => Verdict::Foreign(format!(
                "PID {} is alive but nothing proves it is the helper (no recorded identity, \
                 no file time)",
                record.pid
            )),
        }
    }

    /// Whether the exact process `id` is still alive.
    async fn verify(&self, id: &ProcIdentity) -> Verdict {
        verify_probed(id, self.spawner.probe(id.pid).await)
    }

    /// Probes `pid` and, when it is alive, reads its usage (zero interval) with it.
    async fn probe_with_usage(
        &self,
        pid: Pid,
    ) -> (
        std::result::Result<Probe, ProcError>,
        Option<dms_proc::Usage>,
    ) {
        match self.spawner.probe_with_usage(pid).await {
            Ok((probe, usage)) => (Ok(probe), usage),
            Err(e) => (Err(e), None),
        }
    }

    /// The live helper of `target` proven ours, from memory or disk. Call with the lock.
    async fn live_helper(&self, target: &TargetId) -> Result<Option<ProcIdentity>> {
        if let Some(id) = self.memory_identity(target) {
            match self.verify(&id).await {
                Verdict::Own(_) => return Ok(Some(id)),
                Verdict::Unverified(reason) => {
                    return Err(Error::Unverified {
                        target: target.clone(),
                        pid: id.pid,
                        reason,
                    })
                }
                Verdict::Stale | Verdict::Foreign(_) => {}
            }
        }
        match self.store.get(target).await? {
            Lookup::Present(r) => match self.classify(target, &r).await {
                Verdict::Own(info) => Ok(Some(info.identity)),
                Verdict::Unverified(reason) => Err(Error::Unverified {
                    target: target.clone(),
                    pid: r.pid,
                    reason,
                }),
                Verdict::Stale | Verdict::Foreign(_) => Ok(None),
            },
            Lookup::Absent | Lookup::Corrupt(_) => Ok(None),
        }
    }

    /// Removes `target`'s entry if it is not a valid PID file (a directory in the way
    /// would make the next `put` fail). Call with the target's lock.
    async fn clear_corrupt(&self, target: &TargetId) -> Result<()> {
        if let Lookup::Corrupt(c) = self.store.get(target).await? {
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
    async fn spawn_replacing(
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
            if !spec.replace {
                return Err(Error::AlreadyRunning {
                    target: target.clone(),
                    pid: old.pid,
                });
            }
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
            let grace = spec.replace_grace.unwrap_or(self.opts.kill_grace);
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
                    signals: Vec::new(),
                    stopped: true,
                    status: None,
                    mismatch: false,
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
            warn!(target = %target, pid, error = %e, "cannot record helper; it was not started");
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
            warn!(target = %target, pid, error = %e, "helper program did not start");
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

    async fn kill(self: &Arc<Self>, target: &TargetId, grace: Duration) -> Result<KillReport> {
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
            Lookup::Present(r) if mem.as_ref().is_some_and(|id| id.pid == r.pid) => {}
            Lookup::Present(r) => {
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
            Lookup::Corrupt(_) => disk_reason = Some(RemovalReason::Corrupt),
            Lookup::Absent => {}
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
            report.steps.push("forget_memory".to_owned());
        }
        if !matches!(disk, Lookup::Absent) && self.store.remove(target).await? {
            report.steps.push(
                match disk_reason {
                    Some(RemovalReason::Stale) => "clear_stale",
                    Some(RemovalReason::Foreign) => "clear_foreign",
                    Some(RemovalReason::Corrupt) => "clear_corrupt",
                    None => "remove_pid_file",
                }
                .to_owned(),
            );
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

    async fn adopt(self: &Arc<Self>, target: &TargetId, pid: Pid) -> Result<ProcIdentity> {
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
        let info = match self.spawner.probe(pid).await? {
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

    /// Called when the exit watcher reports `identity`.
    async fn on_exit(
        self: &Arc<Self>,
        target: &TargetId,
        identity: &ProcIdentity,
        status: ExitStatus,
    ) {
        let pid = identity.pid.get();
        let guard = self.locks.lock(target).await;
        // The watcher no longer watches it: `forget` would only unwatch.
        let taken = {
            let mut memory = self.write_memory();
            match memory.get(target) {
                Some(t) if t.is(identity) => memory.remove(target).is_some(),
                _ => false,
            }
        };
        if !taken {
            return;
        }
        match guard {
            Ok(_guard) => match self.store.get(target).await {
                Ok(Lookup::Present(r))
                    if r.pid == identity.pid
                        && r.identity.as_ref().is_none_or(|id| {
                            id.start_ticks == identity.start_ticks && id.boot_id == identity.boot_id
                        }) =>
                {
                    if let Err(e) = self.store.remove(target).await {
                        warn!(target = %target, pid, error = %e, "cannot remove PID file of exited helper; cleanup will");
                    }
                    self.forget_mount_if_gone(target);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(target = %target, pid, error = %e, "cannot read PID file of exited helper; cleanup will");
                }
            },
            Err(e) => {
                warn!(target = %target, pid, error = %e, "cannot lock target; PID file of exited helper left for cleanup");
            }
        }
        info!(target = %target, pid, ?status, "helper exited");
        self.emit(Event::Exited {
            target: target.clone(),
            pid: identity.pid,
            status,
        });
    }

    /// Every target in memory or on disk (sorted), and the raw store listing.
    async fn all_targets(&self) -> Result<(Vec<TargetId>, Vec<Entry>)> {
        let entries = self.store.list().await?;
        let mut targets: BTreeSet<TargetId> = self.read_memory().keys().cloned().collect();
        for e in &entries {
            if let Entry::Target { target, .. } = e {
                targets.insert(target.clone());
            }
        }
        Ok((targets.into_iter().collect(), entries))
    }

    /// Rewrites the PID file of the live tracked helper of `target` from memory.
    /// Call with the target's lock.
    async fn repair(&self, target: &TargetId) -> Result<Option<Pid>> {
        let Some((id, meta)) = self.memory_entry(target) else {
            return Ok(None);
        };
        if !matches!(self.verify(&id).await, Verdict::Own(_)) {
            return Ok(None);
        }
        match self.store.get(target).await? {
            Lookup::Present(r) if r.pid == id.pid => return Ok(None),
            Lookup::Corrupt(c) => {
                // Whatever is in the way (a directory, a FIFO, ...) goes first.
                warn!(target = %target, pid = id.pid.get(), reason = c.reason, "corrupt PID file for a live helper; replacing it");
                self.store.remove(target).await?;
            }
            Lookup::Present(r) => {
                warn!(target = %target, pid = id.pid.get(), named = r.pid.get(), "PID file names another PID while a live helper is tracked; rewriting it");
            }
            Lookup::Absent => {
                warn!(target = %target, pid = id.pid.get(), "PID file missing for a live helper; rewriting it");
            }
        }
        self.store.put(target, &record_for(&id, meta)).await?;
        Ok(Some(id.pid))
    }

    async fn reload(self: &Arc<Self>) -> Result<RecoveryReport> {
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

        let entries = self.store.list().await?;
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
                if matches!(&state, EntryState::Valid(r) if r.pid == id.pid) {
                    continue;
                }
                let _guard = self.locks.lock(&target).await?;
                if let Some(pid) = self.repair(&target).await? {
                    report.repaired.push(TargetPid { target, pid });
                }
                continue;
            }
            let record = match state {
                EntryState::Corrupt(c) => {
                    warn!(target = %target, reason = c.reason, "corrupt PID file; `cleanup` removes it");
                    report.corrupt.push(TargetNote {
                        target,
                        pid: None,
                        reason: c.reason,
                    });
                    continue;
                }
                EntryState::Valid(r) => r,
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
                        Lookup::Present(now) if same_record(&now, &record));
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
                        Lookup::Present(now) if same_record(&now, &record));
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

    async fn cleanup_dead(self: &Arc<Self>) -> Result<CleanupReport> {
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
                Lookup::Absent => continue,
                Lookup::Corrupt(_) => (RemovalReason::Corrupt, None),
                Lookup::Present(r) => match self.classify(&target, &r).await {
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

use mount_ops::Mounts;

/// What the store listed, by target (strays left out).
fn disk_lookups(entries: Vec<Entry>) -> HashMap<TargetId, Lookup> {
    let mut disk = HashMap::with_capacity(entries.len());
    for entry in entries {
        if let Entry::Target { target, state } = entry {
            let lookup = match state {
                EntryState::Valid(r) => Lookup::Present(r),
                EntryState::Corrupt(c) => Lookup::Corrupt(c),
            };
            disk.insert(target, lookup);
        }
    }
    disk
}

/// [`Inner::verify`] given the probe of `id.pid`.
fn verify_probed(id: &ProcIdentity, probe: std::result::Result<Probe, ProcError>) -> Verdict {
    match probe {
        Ok(Probe::Alive(info)) if info.identity == *id => Verdict::Own(Box::new(info)),
        Ok(Probe::Alive(_)) => Verdict::Foreign(format!("PID {} was reused", id.pid)),
        Ok(Probe::Gone | Probe::Zombie(_)) => Verdict::Stale,
        // The recorded process is gone: its PID is now a thread of another one.
        Ok(Probe::Thread { tgid }) => Verdict::Foreign(crate::error::thread_detail(id.pid, tgid)),
        Err(e) => Verdict::Unverified(e.to_string()),
    }
}

/// Puts a usage sample of the running helper `id` into its info object; returns
/// whether there was one.
fn apply_usage(
    info: &mut ProcessInfo,
    id: &ProcIdentity,
    usage: std::result::Result<Option<dms_proc::Usage>, ProcError>,
) -> bool {
    let read = matches!(usage, Ok(Some(_)));
    match usage {
        Ok(Some(u)) => {
            info.cpu_percent = Some(u.cpu_percent);
            info.rss_bytes = Some(u.rss_bytes);
            info.threads = Some(u.threads);
            if u.stopped {
                info.detail.get_or_insert_with(|| {
                    "stopped (SIGSTOP); kill sends SIGCONT after SIGTERM".to_owned()
                });
            }
        }
        Ok(None) => {}
        Err(e) => debug!(target = %info.target, pid = id.pid.get(), error = %e, "no usage"),
    }
    read
}

/// How long the handling of a reported exit waits for the exit status.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);

/// Handles the exits the shared exit watcher reports, each in a task of its own (it
/// waits for the target's lock, which a `kill` may hold for its whole grace period):
/// removes the helper from memory and disk if they still name it. When the watcher
/// stops, memory hits fall back to probing.
async fn handle_exits(
    inner: Weak<Inner>,
    mut exited: tokio::sync::mpsc::UnboundedReceiver<ProcIdentity>,
) {
    while let Some(identity) = exited.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(target) = inner.read_memory().target_of(&identity).cloned() else {
            continue;
        };
        tokio::spawn(async move {
            // The process has exited: this returns as soon as a child of ours is reaped
            // (with its status), at once for any other process.
            let status = match inner
                .spawner
                .wait_exit(&identity, Some(EXIT_STATUS_WAIT))
                .await
            {
                Ok(WaitOutcome::Exited(status)) => status,
                Ok(WaitOutcome::TimedOut) | Err(_) => ExitStatus::Unknown,
            };
            inner.on_exit(&target, &identity, status).await;
        });
    }
    if let Some(inner) = inner.upgrade() {
        inner.watch_ok.store(false, Ordering::Release);
        warn!("the exit watcher stopped; is_running will probe");
    }
}
