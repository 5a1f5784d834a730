//! Usage sampled in the background ([`crate::ManagerOptions::usage_sampling`]): one
//! task reads the CPU time, resident memory and threads of every helper held in memory
//! once a period, in ten slices spread over it (so that no request waits behind a whole
//! round), and keeps each reading in the helper's memory entry. The CPU percent of a
//! sample is the use since the one before, as `top` shows it.
//!
//! Each helper is read through a [`UsageReader`] bound to it (on Linux its
//! `/proc/PID/stat` held open: one `pread` a sample), while the descriptors so held stay
//! within a quarter of the open-files limit; beyond that, or with a spawner that has no
//! reader, through [`dms_proc::Spawner::usage`].

use super::memory::Sample;
use super::Inner;
use dms_proc::{Probe, ProcIdentity, Usage, UsageReader};
use dms_store::TargetId;
use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::{Duration, Instant};
use tracing::debug;

/// Slices of a sampling period.
const SLICES: usize = 10;

/// Helpers sampled between two yields to the runtime.
const BATCH: usize = 16;

/// One helper to sample: its target, identity, and whether its start time is known yet
/// (if not, the first reading is a full probe, which also learns it).
type Due = (TargetId, ProcIdentity, bool);

/// The sampler's own state: the readers it holds, by target.
struct Readers {
    held: HashMap<TargetId, (ProcIdentity, Box<dyn UsageReader>)>,
    /// How many it may hold (a quarter of the open-files limit).
    budget: usize,
}

impl Readers {
    fn new() -> Readers {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        Readers {
            held: HashMap::new(),
            budget: usize::try_from(limit / 4).unwrap_or(usize::MAX),
        }
    }

    /// Drops the readers of helpers no longer due (gone from memory, or replaced).
    fn retain(&mut self, round: &[Due]) {
        let due: HashSet<(&TargetId, &ProcIdentity)> =
            round.iter().map(|(t, id, _)| (t, id)).collect();
        self.held.retain(|t, (id, _)| due.contains(&(t, &*id)));
    }
}

/// Samples every helper in memory once per `period`, until the manager is dropped.
pub(super) async fn sample_usage(inner: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval((period / SLICES as u32).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut readers = Readers::new();
    let mut round: Vec<Due> = Vec::new();
    let (mut next, mut slice) = (0, 0);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if next >= round.len() {
            round = inner.due_for_sampling();
            readers.retain(&round);
            next = 0;
            slice = round.len().div_ceil(SLICES);
        }
        let end = (next + slice).min(round.len());
        for (n, (target, id, observed)) in round[next..end].iter().enumerate() {
            inner.sample_one(&mut readers, target, id, *observed).await;
            if n % BATCH == BATCH - 1 {
                tokio::task::yield_now().await;
            }
        }
        next = end;
    }
}

impl Inner {
    /// Every helper held in memory and watched (an unwatched entry is probed at each
    /// lookup anyway).
    fn due_for_sampling(&self) -> Vec<Due> {
        self.read_memory()
            .iter()
            .filter(|(_, t)| t.watched)
            .map(|(target, t)| (target.clone(), t.identity(), t.observed().is_some()))
            .collect()
    }

    /// Reads the usage of the helper `id` of `target` and keeps it, if memory still
    /// holds that very helper.
    async fn sample_one(
        &self,
        readers: &mut Readers,
        target: &TargetId,
        id: &ProcIdentity,
        observed: bool,
    ) {
        if !observed {
            if !self.may_observe(target) {
                return;
            }
            match self.spawner.probe_with_usage(id.pid).await {
                Ok((Probe::Alive(p), usage)) if p.identity == *id => {
                    self.observe(target, &p);
                    if let Some(u) = usage {
                        self.keep_sample(target, id, Instant::now(), &u);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(target = %target, pid = id.pid.get(), error = %e, "cannot probe helper")
                }
            }
            return;
        }
        if let Some(u) = self.read_held(readers, target, id) {
            self.keep_sample(target, id, Instant::now(), &u);
            return;
        }
        match self.spawner.usage(id, Duration::ZERO).await {
            Ok(Some(u)) => self.keep_sample(target, id, Instant::now(), &u),
            // Gone, or another process now: the exit watcher says so.
            Ok(None) => {}
            Err(e) => {
                debug!(target = %target, pid = id.pid.get(), error = %e, "cannot read helper usage")
            }
        }
    }

    /// The usage of `id` through its held reader (opened now if there is room); `None`
    /// when there is no reader for it (the caller reads it otherwise).
    fn read_held(
        &self,
        readers: &mut Readers,
        target: &TargetId,
        id: &ProcIdentity,
    ) -> Option<Usage> {
        if readers.held.get(target).is_some_and(|(held, _)| held != id) {
            // The target's helper was replaced since the round began.
            readers.held.remove(target);
        }
        if !readers.held.contains_key(target) {
            if readers.held.len() >= readers.budget {
                return None;
            }
            match self.spawner.usage_reader(id) {
                Ok(Some(r)) => {
                    readers.held.insert(target.clone(), (id.clone(), r));
                }
                // Gone, or a spawner without readers.
                Ok(None) => return None,
                Err(e) => {
                    debug!(target = %target, pid = id.pid.get(), error = %e, "cannot open a usage reader");
                    return None;
                }
            }
        }
        let (_, reader) = readers.held.get_mut(target)?;
        match reader.read() {
            Ok(Some(u)) => Some(u),
            Ok(None) | Err(_) => {
                readers.held.remove(target);
                None
            }
        }
    }

    fn keep_sample(&self, target: &TargetId, id: &ProcIdentity, at: Instant, u: &Usage) {
        let mut memory = self.write_memory();
        if let Some(t) = memory.get_mut(target).filter(|t| t.is(id)) {
            let previous = t.observed().and_then(|o| o.sample);
            t.set_sample(Sample::after(previous.as_ref(), at, u));
        }
    }
}
