//! The [`Manager`]: memory + store, recovery, locking, exit watching.

use crate::error::{Error, Result};
use crate::lock::TargetLocks;
use crate::options::ManagerOptions;
use crate::report::{Event, RecoveryReport};
use dms_proc::{ExitWatch, ProcIdentity, Spawner};
use dms_store::{Identity, Metadata, PidStore, Record, TargetId};
use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

mod adopt;
mod daemonize;
mod exits;
mod info;
mod kill;
mod listing;
mod logs;
mod members;
mod memory;
mod mount_ops;
mod mount_spawn;
mod preflight;
mod recovery;
mod spawn;
mod sync;
mod usage;
mod verdict;
pub use listing::ListOrder;
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
    /// The background usage sampler ([`crate::UsageSampling::Background`]).
    sample_task: Mutex<Option<AbortHandle>>,
    /// When the sampler's readers last wanted a sample (it parks without them).
    demand: usage::Demand,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tracked = self.inner.read_memory().len();
        f.debug_struct("Manager")
            .field("run_dir", &self.inner.opts.run_dir)
            .field("store", &self.inner.store)
            .field("spawner", &self.inner.spawner)
            .field("mounts", &self.inner.opts.mounts)
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
            let task = tokio::spawn(exits::handle_exits(Arc::downgrade(&inner), exited_rx));
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
        if let Some(period) = inner.opts.usage.background() {
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

    /// The mount mechanics it acts through ([`ManagerOptions::mounts`]).
    pub fn mounts(&self) -> &Arc<dyn crate::mount::Mounts> {
        &self.inner.opts.mounts
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
                warn!(target = %target, pid = identity.pid.get(), error = %crate::Report::new(&e), "cannot watch helper exit; is_running will probe");
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
}
