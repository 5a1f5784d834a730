//! A restarted daemon goes on supervising: the spec documents are read back, helpers
//! that run (adopted by the startup recovery) are supervised again, restarts that were
//! due are done, and a target whose inline environment was lost with the old daemon is
//! kept running but never started without it.

use super::run::{decide, schedule};
use super::spec::SupState;
use super::{unix_now, Entry, Slot, ENV_LOST};
use crate::Daemon;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loads the spec documents and resumes supervision of each (call once, at start).
pub(crate) async fn resume(d: &Arc<Daemon>) {
    let (docs, bad) = d.supervisor.specs.load();
    for (path, why) in bad {
        tracing::warn!(path = %path.display(), why, "unreadable spec document skipped");
    }
    let running: std::collections::HashMap<_, _> = d
        .manager
        .memory_snapshot()
        .into_iter()
        .map(|(t, id)| (t, id.pid))
        .collect();
    let mut to_check = Vec::new();
    for (target, doc) in docs {
        let inline = doc.spec.env_keys.is_empty().then(Vec::new);
        let mut entry = Entry::new(doc, inline);
        if let Some(pid) = running.get(&target) {
            entry.pid = Some(*pid);
            entry.started = Some(Instant::now());
            if entry.doc.state != SupState::Running {
                entry.doc.state = SupState::Running;
                entry.doc.next_restart_at = None;
            }
        }
        let slot = Arc::new(Slot::new(entry));
        d.supervisor.slots().insert(target.clone(), slot.clone());
        to_check.push((target, slot));
    }
    for (target, slot) in to_check {
        let _op = slot.op.lock().await;
        let (state, pid, supervises, next) = {
            let e = slot.entry();
            (
                e.doc.state,
                e.pid,
                e.doc.spec.restart.supervises(),
                e.doc.next_restart_at,
            )
        };
        if let Some(pid) = pid {
            // It may have exited between the snapshot and now, unseen by the supervisor.
            if d.manager.is_running(&target).await.unwrap_or(true) {
                tracing::info!(target = %target, pid = pid.get(), "supervising an adopted helper");
                continue;
            }
        }
        if !supervises {
            let mut e = slot.entry();
            e.pid = None;
            if e.doc.state != SupState::Failed {
                e.doc.state = SupState::Stopped;
            }
            d.supervisor.persist(&target, &e);
            continue;
        }
        match state {
            SupState::Backoff if slot.entry().env_lost() => fail_env(d, &target, &slot),
            SupState::Backoff => {
                // Due now or later: the remaining delay, no new count.
                let delay = next.map_or(0.0, |t| (t - unix_now()).max(0.0));
                let gen = {
                    let mut e = slot.entry();
                    e.generation += 1;
                    e.generation
                };
                tracing::info!(target = %target, delay, "resuming a scheduled restart");
                schedule(d, &target, &slot, gen, Duration::from_secs_f64(delay));
            }
            // It ran when the old daemon stopped and is gone now: an exit, status unknown.
            SupState::Running => decide(d, &target, &slot, true, None),
            SupState::Failed | SupState::Stopped => {}
        }
    }
}

fn fail_env(d: &Daemon, target: &dms_store::TargetId, slot: &Slot) {
    let mut e = slot.entry();
    e.doc.state = SupState::Failed;
    e.doc.next_restart_at = None;
    e.doc.reason = Some(ENV_LOST.to_owned());
    d.supervisor.persist(target, &e);
}
