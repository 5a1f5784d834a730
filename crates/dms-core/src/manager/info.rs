//! The info object of a target: from memory alone for a helper the manager holds and
//! watches (no read of the store, no probe: the exit watcher keeps the entry truthful,
//! the background sampler its usage), else from the store and a probe.

use super::memory::Sample;
use super::mount_ops::ListedMounts;
use super::verdict::{verify_probed, Verdict};
use super::Inner;
use crate::report::{ProcessInfo, ProcessState, Source};
use dms_proc::{ProcError, ProcIdentity, Usage};
use dms_store::{Stored, TargetId};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tracing::debug;

/// The oldest usage sample an info object shows (serve.md: at most 2 s old); an older
/// one (the sampler fell behind) is replaced by a read in line.
pub(super) const MAX_SAMPLE_AGE: Duration = Duration::from_secs(2);

/// An info object, with what its callers need to finish it.
pub(super) struct Described {
    /// The info object.
    pub(super) info: ProcessInfo,
    /// The identity of its helper when it is running and its usage is still to be
    /// sampled (the caller does it over its interval).
    pub(super) live: Option<ProcIdentity>,
    /// When the usage columns of `info` were read, when they are filled.
    pub(super) sampled_at: Option<SystemTime>,
}

impl Described {
    /// The info object, with when its usage columns were read.
    pub(super) fn finished(self) -> ProcessInfo {
        ProcessInfo {
            usage_sampled_at: self.sampled_at,
            ..self.info
        }
    }
}

/// A memory entry as an info object needs it.
struct MemoryView {
    identity: ProcIdentity,
    mount: Option<PathBuf>,
    /// The command line to show (the live one when observed and different).
    cmdline: Option<Vec<String>>,
    /// Set when the entry can be answered without a probe: watched by a working exit
    /// watcher, and its start time known.
    known: Option<(SystemTime, Option<Sample>)>,
}

/// The wall-clock time of a sample taken at `at`.
fn wall_time_of(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Inner {
    fn memory_view(&self, target: &TargetId) -> Option<MemoryView> {
        let watch_ok = self.watch_ok.load(Ordering::Acquire);
        let memory = self.read_memory();
        let t = memory.get(target)?;
        let known = t
            .observed()
            .filter(|_| t.watched && watch_ok)
            .map(|o| (o.started_at, o.sample));
        Some(MemoryView {
            identity: t.identity(),
            mount: t.mount(),
            cmdline: t.cmdline(),
            known,
        })
    }

    /// Keeps the start time and live command line of a tracked helper a probe proved
    /// alive, so that later lookups need no probe. The caller checks first, before its
    /// probe, that no change of the target was in progress ([`Inner::may_observe`]) or
    /// holds the target's lock itself.
    pub(super) fn observe(&self, target: &TargetId, p: &dms_proc::ProcInfo) {
        let mut memory = self.write_memory();
        if let Some(t) = memory.get_mut(target).filter(|t| t.is(&p.identity)) {
            t.observe(p.started_at, p.cmdline.as_deref());
        }
    }

    /// Whether a probe made now may be kept as what the target's helper is: not while
    /// a change of the target is in progress, since a helper being spawned is held at
    /// its start barrier, with dms's command line, until its program runs (under the
    /// lock). Checked before the probe: once the lock is free, its program ran.
    pub(super) fn may_observe(&self, target: &TargetId) -> bool {
        !self.locks.in_use(target)
    }

    /// A blank info object of `target`.
    fn blank_info(&self, target: &TargetId, in_memory: bool, pid_file_exists: bool) -> ProcessInfo {
        ProcessInfo {
            target: target.clone(),
            pid: None,
            state: ProcessState::Absent,
            running: false,
            pid_file: target.pid_file_in(self.store.pid_dir()),
            pid_file_exists,
            source: match (in_memory, pid_file_exists) {
                (true, true) => Some(Source::Both),
                (true, false) => Some(Source::Memory),
                (false, true) => Some(Source::Disk),
                (false, false) => None,
            },
            started_at: None,
            uptime_secs: None,
            cpu_percent: None,
            rss_bytes: None,
            threads: None,
            cmdline: None,
            mount: None,
            mounted: None,
            mount_state: None,
            detail: None,
            usage_sampled_at: None,
        }
    }

    /// The info object of a target the manager holds and watches, from memory alone
    /// (`None` when it is not such a target). Only the PID file's existence is looked up
    /// (one `lstat`) and the mount record read; the usage is the background sampler's
    /// when fresh, else read in line (`inline`) or left to the caller.
    pub(super) async fn info_from_memory(
        &self,
        target: &TargetId,
        pid_file_exists: Option<bool>,
        mounts: Option<&ListedMounts>,
        inline: bool,
    ) -> Option<Described> {
        self.demand.note();
        let view = self.memory_view(target)?;
        let (started_at, sample) = view.known?;
        let exists = pid_file_exists.unwrap_or_else(|| self.store.exists(target));
        let mut info = self.blank_info(target, true, exists);
        let id = view.identity;
        let (mut live, mut sampled_at) = (None, None);
        match sample.filter(|s| s.at.elapsed() <= MAX_SAMPLE_AGE) {
            Some(s) => {
                let _ = apply_usage(&mut info, &id, Ok(Some(s.usage())));
                sampled_at = Some(wall_time_of(s.at));
            }
            None if inline => match self.sample_in_line(target, &id).await {
                // Gone: the exit watcher is about to say so; the probe tells now.
                Ok(None) => return None,
                usage => {
                    if apply_usage(&mut info, &id, usage) {
                        sampled_at = Some(SystemTime::now());
                    }
                }
            },
            None => live = Some(id.clone()),
        }
        info.pid = Some(id.pid);
        info.mount = view.mount;
        self.fill_mount(target, &mut info, mounts).await;
        info.cmdline = view.cmdline;
        info.state = ProcessState::Running;
        info.running = true;
        info.started_at = Some(started_at);
        info.uptime_secs = Some(
            SystemTime::now()
                .duration_since(started_at)
                .unwrap_or_default()
                .as_secs_f64(),
        );
        Some(Described {
            info,
            live,
            sampled_at,
        })
    }

    /// Whether usage is read with each probe, without waiting
    /// ([`crate::UsageSampling::in_line`] is zero).
    pub(super) fn inline_usage(&self) -> bool {
        self.opts.usage.in_line() == Some(Duration::ZERO)
    }

    /// The info object of `d` with its usage sampled when it is still to be (over
    /// [`crate::UsageSampling::in_line`]), and when its usage was read.
    pub(super) async fn finish_usage(&self, mut d: Described) -> ProcessInfo {
        if let (Some(interval), Some(id)) = (self.opts.usage.in_line(), d.live.take()) {
            let sampled = self.spawner.usage(&id, interval).await;
            if apply_usage(&mut d.info, &id, sampled) {
                d.sampled_at = Some(SystemTime::now());
            }
        }
        d.finished()
    }

    /// The info object of `target` given what the store holds for it (`disk`), with the
    /// mount registry read once for a whole listing (`mounts`: target -> recorded mount),
    /// not once per target; the one builder of info objects of lookups and listings.
    /// Its usage, when still to be sampled over an interval, is left to the caller
    /// ([`Described::live`]).
    ///
    /// With `inline_usage`, the usage of a running helper is read with its probe (as
    /// [`dms_proc::Spawner::usage`] with a zero interval, see
    /// [`dms_proc::Spawner::probe`] with [`dms_proc::ProbeFields::LISTING`]) and is already in the info object; a
    /// helper held in memory shows its background sample when there is a fresh one.
    pub(super) async fn describe(
        &self,
        target: &TargetId,
        disk: Option<Stored>,
        mounts: Option<&ListedMounts>,
        inline_usage: bool,
    ) -> Described {
        let pid_file_exists = disk.is_some();
        if let Some(d) = self
            .info_from_memory(target, Some(pid_file_exists), mounts, inline_usage)
            .await
        {
            return d;
        }
        let mem = self.memory_view(target);
        let mut info = self.blank_info(target, mem.is_some(), pid_file_exists);
        let mut usage = None;
        // Held in memory, and its probe may be kept.
        let mut observable = false;
        let (verdict, mount, recorded_cmdline) = match (mem, disk) {
            (Some(view), _) => {
                observable = self.may_observe(target);
                let id = view.identity;
                info.pid = Some(id.pid);
                let verdict = if inline_usage {
                    let (probe, u) = self.probe_for_listing(id.pid).await;
                    usage = u;
                    verify_probed(&id, probe)
                } else {
                    self.verify(&id).await
                };
                (verdict, view.mount, view.cmdline)
            }
            (None, Some(Stored::Valid(r))) => {
                info.pid = Some(r.pid);
                let verdict = if inline_usage {
                    let (probe, u) = self.probe_for_listing(r.pid).await;
                    usage = u;
                    self.classify_probed(target, &r, probe)
                } else {
                    self.classify(target, &r).await
                };
                (verdict, r.meta.mount, r.meta.cmdline)
            }
            (None, Some(Stored::Corrupt(c))) => {
                info.state = ProcessState::Corrupt;
                info.detail = Some(c.reason);
                self.fill_mount(target, &mut info, mounts).await;
                return Described {
                    info,
                    live: None,
                    sampled_at: None,
                };
            }
            (None, None) => {
                // A stale mount can outlive its PID file.
                self.fill_mount(target, &mut info, mounts).await;
                return Described {
                    info,
                    live: None,
                    sampled_at: None,
                };
            }
        };
        info.mount = mount;
        self.fill_mount(target, &mut info, mounts).await;
        info.cmdline = recorded_cmdline;
        let (mut live, mut sampled_at) = (None, None);
        match verdict {
            Verdict::Own(p) => {
                if observable {
                    self.observe(target, &p);
                }
                info.state = ProcessState::Running;
                info.running = true;
                info.started_at = Some(p.started_at);
                info.uptime_secs = Some(
                    SystemTime::now()
                        .duration_since(p.started_at)
                        .unwrap_or_default()
                        .as_secs_f64(),
                );
                if p.cmdline.is_some() {
                    info.cmdline = p.cmdline.clone();
                }
                match usage {
                    Some(u) => {
                        let _ = apply_usage(&mut info, &p.identity, Ok(Some(u)));
                        sampled_at = Some(SystemTime::now());
                    }
                    None if !inline_usage => live = Some(p.identity),
                    None => {}
                }
            }
            Verdict::Stale => info.state = ProcessState::Stale,
            Verdict::Foreign(why) => {
                info.state = ProcessState::Foreign;
                info.detail = Some(why);
            }
            Verdict::Unverified(why) => {
                info.state = ProcessState::Unverified;
                info.detail = Some(why);
            }
        }
        Described {
            info,
            live,
            sampled_at,
        }
    }
}

/// Puts a usage sample of the running helper `id` into its info object; returns
/// whether there was one.
pub(super) fn apply_usage(
    info: &mut ProcessInfo,
    id: &ProcIdentity,
    usage: std::result::Result<Option<Usage>, ProcError>,
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
        Err(e) => {
            debug!(target = %info.target, pid = id.pid.get(), error = %crate::Report::new(&e), "no usage")
        }
    }
    read
}
