//! Usage sampled in the background ([`crate::UsageSampling::Background`]): one
//! task reads the CPU time, resident memory and threads of every helper held in memory
//! once a period, in ten slices spread over it (so that no request waits behind a whole
//! round), and keeps each reading in the helper's memory entry. The CPU percent of a
//! sample is the use since the one before, as `top` shows it.
//!
//! The sampler runs on demand: once no info object has been asked for in [`IDLE_AFTER`],
//! it parks at the end of its round and costs nothing (an idle daemon with 1,000
//! helpers would otherwise read 1,000 stat files a second for no reader: 1.4 % of a
//! core, measured with `benches/daemon.sh`). The next request wakes it; that request's
//! stale samples are read in line, each CPU percent then covering the time since the
//! helper's previous sample (psutil's `cpu_percent()` without an interval does the
//! same).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::debug;

/// How long the sampler goes on without a reader before it parks: a reader that asks
/// at least this often (`watch dms status`, a dashboard) finds every sample at most one
/// period old without waiting; a slower one (a Prometheus scrape every 15 s) has its
/// stale samples read in line (1,000 helpers: 1,000 `pread`s of about 5 µs). Measured with
/// `benches/peers.sh` (1,000 helpers, 60 s after the last request): 30 s cost 370-390 ms
/// of CPU in that minute, all of it the sampler (0 ms once parked).
pub(super) const IDLE_AFTER: Duration = Duration::from_secs(5);

/// The demand for usage samples: when an info object last wanted one, and the wake-up
/// of a parked sampler.
#[derive(Debug)]
pub(super) struct Demand {
    epoch: Instant,
    /// [`IDLE_AFTER`], but for tests.
    idle_after: Duration,
    /// Milliseconds since `epoch` of the last demand.
    last_ms: AtomicU64,
    /// Set while the sampler is parked (or about to park).
    parked: AtomicBool,
    wake: Arc<Notify>,
}

impl Demand {
    pub(super) fn new(idle_after: Duration) -> Demand {
        Demand {
            epoch: Instant::now(),
            idle_after,
            last_ms: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes that a reader wants samples now, waking a parked sampler.
    pub(super) fn note(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
        if self.parked.swap(false, Ordering::AcqRel) {
            // A permit is stored if the sampler is not waiting yet: no lost wake-up.
            self.wake.notify_one();
        }
    }

    /// Whether no reader has wanted a sample in [`IDLE_AFTER`].
    fn idle(&self) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.last_ms.load(Ordering::Relaxed));
        u128::from(since) >= self.idle_after.as_millis()
    }

    /// Marks the sampler parked and waits for the next [`Demand::note`] (at once if one
    /// came since the last [`Demand::idle`] check); `None` when a demand came in
    /// between, so there is nothing to wait for.
    fn park(&self) -> Option<Arc<Notify>> {
        self.parked.store(true, Ordering::Release);
        // A demand noted between the caller's check and the flag found no flag set.
        if !self.idle() {
            self.parked.store(false, Ordering::Release);
            return None;
        }
        Some(self.wake.clone())
    }
}

/// Parks the sampler of `inner`, found idle, until a reader wants samples; `false` once
/// the manager is gone.
async fn park_while_idle(inner: Arc<Inner>) -> bool {
    let Some(wake) = inner.demand.park() else {
        return true;
    };
    let weak = Arc::downgrade(&inner);
    // Not holding the manager while parked: dropping it aborts this task.
    drop(inner);
    debug!("usage sampler parked: no reader");
    wake.notified().await;
    weak.strong_count() > 0
}

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

/// Samples every helper in memory once per `period`, while there are readers (see
/// [`IDLE_AFTER`]), until the manager is dropped.
pub(super) async fn sample_usage(weak: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval((period / SLICES as u32).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut readers = Readers::new();
    let mut round: Vec<Due> = Vec::new();
    let (mut next, mut slice) = (0, 0);
    loop {
        tick.tick().await;
        let Some(mut inner) = weak.upgrade() else {
            return;
        };
        if next >= round.len() {
            if inner.demand.idle() {
                if !park_while_idle(inner).await {
                    return;
                }
                let Some(again) = weak.upgrade() else { return };
                inner = again;
                tick.reset();
            }
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
            match self
                .spawner
                .probe(id.pid, dms_proc::ProbeFields::LISTING)
                .await
            {
                Ok((Probe::Alive(p), usage)) if p.identity == *id => {
                    self.observe(target, &p);
                    if let Some(u) = usage {
                        self.keep_sample(target, id, Instant::now(), &u);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(target = %target, pid = id.pid.get(), error = %crate::Report::new(&e), "cannot probe helper")
                }
            }
            return;
        }
        if let Some(u) = self.read_held(readers, target, id) {
            self.keep_sample(target, id, Instant::now(), &u);
            return;
        }
        match self.spawner.usage(id, Duration::ZERO).await {
            Ok(Some(u)) => {
                self.keep_sample(target, id, Instant::now(), &u);
            }
            // Gone, or another process now: the exit watcher says so.
            Ok(None) => {}
            Err(e) => {
                debug!(target = %target, pid = id.pid.get(), error = %crate::Report::new(&e), "cannot read helper usage")
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
                    debug!(target = %target, pid = id.pid.get(), error = %crate::Report::new(&e), "cannot open a usage reader");
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

    /// Keeps `u`, read at `at`, as the sample of `id` if memory still holds that very
    /// helper; the sample kept (its CPU percent over the time since the one before).
    fn keep_sample(
        &self,
        target: &TargetId,
        id: &ProcIdentity,
        at: Instant,
        u: &Usage,
    ) -> Option<Sample> {
        let mut memory = self.write_memory();
        let t = memory.get_mut(target).filter(|t| t.is(id))?;
        let previous = t.observed().and_then(|o| o.sample);
        let sample = Sample::after(previous.as_ref(), at, u);
        t.set_sample(sample).then_some(sample)
    }

    /// Reads the usage of `id` of `target` now, in line (its kept sample was missing or
    /// too old: the sampler is parked or behind), and keeps it as its sample. `Ok(None)`:
    /// the process is gone or another one.
    pub(super) async fn sample_in_line(
        &self,
        target: &TargetId,
        id: &ProcIdentity,
    ) -> Result<Option<Usage>, dms_proc::ProcError> {
        let Some(u) = self.spawner.usage(id, Duration::ZERO).await? else {
            return Ok(None);
        };
        Ok(Some(
            match self.keep_sample(target, id, Instant::now(), &u) {
                Some(s) => s.usage(),
                None => u,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `cond` every millisecond for up to 5 s.
    async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn demand_goes_idle_without_readers_and_a_reader_wakes_the_parked_sampler() {
        let demand = Arc::new(Demand::new(Duration::from_millis(20)));
        demand.note();
        assert!(!demand.idle(), "just noted");
        assert!(
            eventually(|| demand.idle()).await,
            "idle once no reader came"
        );
        let wake = demand.park().expect("idle: it parks");
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn(async move {
            wake.notified().await;
            let _ = done_tx.send(());
        });
        tokio::task::yield_now().await;
        assert!(done_rx.try_recv().is_err(), "parked until a reader comes");
        demand.note();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the reader's note wakes the sampler")
            .unwrap();
        assert!(!demand.parked.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_note_before_the_wait_is_not_lost() {
        let demand = Demand::new(Duration::ZERO);
        let wake = demand.park().expect("a zero idle period is always idle");
        demand.note(); // before anyone waits: the permit is stored
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("the stored permit ends the wait at once");
    }

    #[test]
    fn a_demand_between_the_check_and_the_flag_cancels_the_park() {
        let demand = Demand::new(Duration::from_secs(3600));
        // Never noted: last is the epoch, so not idle for an hour.
        assert!(!demand.idle());
        assert!(demand.park().is_none());
        assert!(!demand.parked.load(Ordering::Acquire));
    }
}
