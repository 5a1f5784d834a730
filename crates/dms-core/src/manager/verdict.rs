//! The identity verdict: whether a recorded PID is still the recorded helper (proven
//! ours), dead, someone else's, or not verifiable. Nothing is ever signalled before a
//! verdict says [`Verdict::Own`].

use super::Inner;
use crate::error::{Error, Result};
use dms_proc::{Pid, Probe, ProcError, ProcIdentity, ProcInfo};
use dms_store::{Record, Stored, TargetId};

/// What a probe says about a recorded PID.
pub(super) enum Verdict {
    /// Alive and proven ours.
    Own(Box<ProcInfo>),
    /// Dead or a zombie.
    Stale,
    /// Alive, not ours.
    Foreign(String),
    /// The probe failed (permission denied, ...): alive or not, it is not known.
    Unverified(String),
}

impl Verdict {
    /// The proven helper ([`Verdict::Own`]), or `None` when `pid` is dead or someone
    /// else's; a PID that cannot be verified is [`Error::Unverified`] (its entry is
    /// neither signalled nor forgotten). The one answer of every "is it running" check.
    pub(super) fn proven(self, target: &TargetId, pid: Pid) -> Result<Option<Box<ProcInfo>>> {
        match self {
            Verdict::Own(info) => Ok(Some(info)),
            Verdict::Stale | Verdict::Foreign(_) => Ok(None),
            Verdict::Unverified(reason) => Err(Error::Unverified {
                target: target.clone(),
                pid,
                reason,
            }),
        }
    }
}

impl Inner {
    /// Probes `record.pid` and decides whether it is the recorded helper of `target`.
    pub(super) async fn classify(&self, target: &TargetId, record: &Record) -> Verdict {
        let probe = self
            .spawner
            .probe(record.pid, dms_proc::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p);
        self.classify_probed(target, record, probe)
    }

    /// [`Inner::classify`] given the probe of `record.pid`.
    pub(super) fn classify_probed(
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
            Err(e) => return Verdict::Unverified(crate::error::detail(&e)),
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
    pub(super) async fn verify(&self, id: &ProcIdentity) -> Verdict {
        verify_probed(
            id,
            self.spawner
                .probe(id.pid, dms_proc::ProbeFields::DETAIL)
                .await
                .map(|(p, _)| p),
        )
    }

    /// Probes `pid` for a listing ([`dms_proc::ProbeFields::LISTING`]): when it is alive,
    /// its usage (zero interval) is read in the same pass.
    pub(super) async fn probe_for_listing(
        &self,
        pid: Pid,
    ) -> (
        std::result::Result<Probe, ProcError>,
        Option<dms_proc::Usage>,
    ) {
        match self
            .spawner
            .probe(pid, dms_proc::ProbeFields::LISTING)
            .await
        {
            Ok((probe, usage)) => (Ok(probe), usage),
            Err(e) => (Err(e), None),
        }
    }

    /// The live helper of `target` proven ours, from memory or disk. Call with the lock.
    pub(super) async fn live_helper(&self, target: &TargetId) -> Result<Option<ProcIdentity>> {
        if let Some(id) = self.memory_identity(target) {
            if self.verify(&id).await.proven(target, id.pid)?.is_some() {
                return Ok(Some(id));
            }
        }
        match self.store.get(target).await? {
            Some(Stored::Valid(r)) => Ok(self
                .classify(target, &r)
                .await
                .proven(target, r.pid)?
                .map(|info| info.identity)),
            None | Some(Stored::Corrupt(_)) => Ok(None),
        }
    }
}

/// [`Inner::verify`] given the probe of `id.pid`.
pub(super) fn verify_probed(
    id: &ProcIdentity,
    probe: std::result::Result<Probe, ProcError>,
) -> Verdict {
    match probe {
        Ok(Probe::Alive(info)) if info.identity == *id => Verdict::Own(Box::new(info)),
        Ok(Probe::Alive(_)) => Verdict::Foreign(format!("PID {} was reused", id.pid)),
        Ok(Probe::Gone | Probe::Zombie(_)) => Verdict::Stale,
        // The recorded process is gone: its PID is now a thread of another one.
        Ok(Probe::Thread { tgid }) => Verdict::Foreign(crate::error::thread_detail(id.pid, tgid)),
        Err(e) => Verdict::Unverified(crate::error::detail(&e)),
    }
}
