//! Supervision (serve.md "Supervision", "Declared targets"): restart policies with the
//! delay rule, give-up, mount health and repair, specs kept on disk, declared targets and
//! reload.
//!
//! - [`policy`]: the policies, the delay rule and the give-up window (pure, unit tested);
//! - [`spec`]: the spec documents on disk (`<run-dir>/specs/<target>.json`);
//! - `run`: starting, exits, scheduled restarts, stops (the supervisor's reactions to the
//!   manager's events and to requests);
//! - `health`: the periodic mount check and the repair of a stale mount;
//! - [`declared`]: the TOML files of `--targets DIR` and reload.
//!
//! Each supervised target has a slot: an operation lock (one start, stop or exit
//! handling at a time; a request waits for a start in progress) and its state under a
//! short lock that readers (`GET`) take alone. A generation number cancels a scheduled
//! restart: every stop, spawn and restart bumps it.

pub mod declared;
mod health;
pub mod policy;
mod resume;
mod run;
pub mod spec;

pub use declared::{reload, FileError, ReloadReport};
pub use run::{cleanup_all_begin, forget, on_event, on_untracked, restart, spawn, stop};

use dms_store::{Pid, TargetId};
use policy::RestartPolicy;
use serde_json::{json, Value};
use spec::{Persisted, SpecStore, SupState};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The reason of a target that cannot restart after a restart of the daemon.
pub const ENV_LOST: &str =
    "its environment is not available after a restart of dms serve; spawn it again";

/// The default interval of the mount check.
pub const DEFAULT_MOUNT_CHECK: Duration = Duration::from_secs(10);

/// How long a mount check waits for `statfs`.
pub const MOUNT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Options of supervision.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// `--targets DIR`.
    pub targets_dir: Option<PathBuf>,
    /// The interval of the mount check ([`DEFAULT_MOUNT_CHECK`]).
    pub mount_check: Duration,
}

impl Default for SuperviseOptions {
    fn default() -> Self {
        SuperviseOptions {
            targets_dir: None,
            mount_check: DEFAULT_MOUNT_CHECK,
        }
    }
}

/// The supervision state of one daemon.
#[derive(Debug)]
pub struct Supervisor {
    slots: Mutex<BTreeMap<TargetId, Arc<Slot>>>,
    specs: SpecStore,
    opts: OnceLock<SuperviseOptions>,
    reload_lock: tokio::sync::Mutex<()>,
}

/// One target's slot.
#[derive(Debug)]
pub(crate) struct Slot {
    op: tokio::sync::Mutex<()>,
    st: Mutex<Entry>,
}

/// One target's state in memory.
pub(crate) struct Entry {
    /// What is kept on disk.
    pub doc: Persisted,
    /// The inline `KEY=VALUE` items; `None` when they were lost with a daemon restart.
    pub inline: Option<Vec<OsString>>,
    /// The helper's PID while it runs.
    pub pid: Option<Pid>,
    /// When it was started (or adopted).
    pub started: Option<Instant>,
    /// Bumped by every stop, spawn and restart: cancels a scheduled restart.
    pub generation: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the inline values.
        f.debug_struct("Entry")
            .field("doc", &self.doc)
            .field("pid", &self.pid)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub(crate) fn new(doc: Persisted, inline: Option<Vec<OsString>>) -> Entry {
        Entry {
            doc,
            inline,
            pid: None,
            started: None,
            generation: 0,
        }
    }

    /// Whether the inline environment is needed and lost.
    pub(crate) fn env_lost(&self) -> bool {
        self.inline.is_none() && !self.doc.spec.env_keys.is_empty()
    }
}

/// Unix time now, in seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn rfc3339_of_unix(t: f64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_millis(at).to_string()
}

impl Supervisor {
    /// The supervisor of the run dir `run_dir` (nothing loaded yet).
    pub fn new(run_dir: &std::path::Path) -> Supervisor {
        Supervisor {
            slots: Mutex::new(BTreeMap::new()),
            specs: SpecStore::new(run_dir),
            opts: OnceLock::new(),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn options(&self) -> SuperviseOptions {
        self.opts.get().cloned().unwrap_or_default()
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<TargetId, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn slot(&self, target: &TargetId) -> Option<Arc<Slot>> {
        self.slots().get(target).cloned()
    }

    pub(crate) fn all_slots(&self) -> Vec<(TargetId, Arc<Slot>)> {
        self.slots()
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect()
    }

    /// The slot of `target`, created (empty, stopped) when missing; and whether it was.
    pub(crate) fn slot_or_new(&self, target: &TargetId) -> (Arc<Slot>, bool) {
        let mut slots = self.slots();
        if let Some(s) = slots.get(target) {
            return (s.clone(), false);
        }
        let doc = Persisted {
            state: SupState::Stopped,
            ..Default::default()
        };
        let slot = Arc::new(Slot::new(Entry::new(doc, Some(Vec::new()))));
        slots.insert(target.clone(), slot.clone());
        (slot, true)
    }

    pub(crate) fn remove_slot(&self, target: &TargetId, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        if slots.get(target).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(target);
        }
    }

    /// Writes `entry`'s document (a failure is logged: supervision goes on in memory).
    pub(crate) fn persist(&self, target: &TargetId, entry: &Entry) {
        if let Err(e) = self.specs.put(target, &entry.doc) {
            tracing::warn!(target = %target, error = %e, "cannot write the spec document; supervision goes on in memory");
        }
    }

    pub(crate) fn unpersist(&self, target: &TargetId) {
        if let Err(e) = self.specs.remove(target) {
            tracing::warn!(target = %target, error = %e, "cannot remove the spec document");
        }
    }

    /// The info object's `supervision` of `target`: `null` when it is not supervised.
    pub fn doc(&self, target: &TargetId) -> Value {
        match self.slot(target) {
            Some(slot) => slot.entry().supervision_doc(),
            None => Value::Null,
        }
    }

    /// `supervised`, `backoff`, `failed` and `restarts_total` of `GET /v1/stats`.
    pub fn stats(&self) -> [(&'static str, u64); 4] {
        let (mut supervised, mut backoff, mut failed, mut restarts) = (0, 0, 0, 0);
        for (_, slot) in self.all_slots() {
            let e = slot.entry();
            if !e.doc.spec.restart.supervises() {
                continue;
            }
            supervised += 1;
            restarts += e.doc.restarts;
            match e.doc.state {
                SupState::Backoff => backoff += 1,
                SupState::Failed => failed += 1,
                _ => {}
            }
        }
        [
            ("supervised", supervised),
            ("backoff", backoff),
            ("failed", failed),
            ("restarts_total", restarts),
        ]
    }
}

impl Slot {
    pub(crate) fn new(entry: Entry) -> Slot {
        Slot {
            op: tokio::sync::Mutex::new(()),
            st: Mutex::new(entry),
        }
    }

    pub(crate) fn entry(&self) -> MutexGuard<'_, Entry> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    fn supervision_doc(&self) -> Value {
        let p = &self.doc.spec.restart;
        if p.policy == RestartPolicy::Never {
            return Value::Null;
        }
        let next = match self.doc.state {
            SupState::Backoff => self.doc.next_restart_at.map(rfc3339_of_unix),
            _ => None,
        };
        json!({
            "policy": p.policy.name(),
            "state": self.doc.state.name(),
            "restarts": self.doc.restarts,
            "failures": self.doc.series.failures.len(),
            "next_restart_at": next,
            "last_exit": self.doc.last_exit,
            "reason": self.doc.reason,
        })
    }
}

/// Starts supervision of daemon `d` (once, after [`Daemon::new`](crate::Daemon::new)):
/// the spec documents of a previous daemon resumed, the mount check started, and the
/// declared targets applied when `opts.targets_dir` is set (their report returned).
pub async fn start(d: &Arc<crate::Daemon>, opts: SuperviseOptions) -> Option<ReloadReport> {
    let every = opts.mount_check;
    let declared = opts.targets_dir.is_some();
    let _ = d.supervisor.opts.set(opts);
    resume::resume(d).await;
    health::start_loop(d, every);
    match declared {
        true => Some(reload(d).await),
        false => None,
    }
}
