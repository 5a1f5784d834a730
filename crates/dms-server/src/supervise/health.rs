//! Mount health: every supervised mount is checked at an interval (`statfs` in a forked
//! prober, [`MOUNT_PROBE_TIMEOUT`]: the manager's non-blocking
//! [`dms_core::mount::Mounts::probe`], through [`dms_core::Manager::mounts`]);
//! a stale one (its FUSE daemon gone, or no answer) is repaired as `kill` does it (lazy
//! unmount, FUSE connection abort, stop of a helper still there) and the helper restarted
//! per its policy. Events `mount_stale` and `mount_repaired` (with the kill's `steps`).

use super::run::decide;
use super::spec::SupState;
use super::MOUNT_PROBE_TIMEOUT;
use crate::handlers::DEFAULT_GRACE;
use crate::Daemon;
use dms_core::MountState;
use dms_store::TargetId;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Probes `mount`; when it is stale, repairs it (stopping whatever helper `target` still
/// has) and says so with events. Returns whether it was stale.
pub(crate) async fn repair_if_stale(d: &Daemon, target: &TargetId, mount: &Path) -> bool {
    if d.manager.mounts().probe(mount, MOUNT_PROBE_TIMEOUT).await != MountState::Stale {
        return false;
    }
    tracing::warn!(target = %target, mount = %mount.display(), "stale mount: repairing");
    let mut f = Map::new();
    f.insert("mount".into(), json!(mount));
    d.events
        .push("mount_stale", json!(target), Value::Null, f.clone());
    match d.manager.kill(target, DEFAULT_GRACE).await {
        Ok(report) => {
            f.insert("steps".into(), json!(report.steps));
            d.events
                .push("mount_repaired", json!(target), Value::Null, f);
        }
        Err(e) => {
            tracing::warn!(target = %target, error = %crate::render(&e), "cannot repair the stale mount");
        }
    }
    true
}

/// Checks one supervised target's mount; on a stale one, repairs and decides as after a
/// failed exit.
async fn check(d: Arc<Daemon>, target: TargetId) {
    let d = &d;
    let Some(slot) = d.supervisor.slot(&target) else {
        return;
    };
    let Some(mount) = running_mount(&slot.entry()) else {
        return;
    };
    // A cheap first probe without the lock; a stale answer is checked again under it.
    if d.manager.mounts().probe(&mount, MOUNT_PROBE_TIMEOUT).await != MountState::Stale {
        return;
    }
    let _op = slot.op.lock().await;
    let ran_for = {
        let mut e = slot.entry();
        if running_mount(&e).is_none() {
            return;
        }
        // A stop of ours: the Killed event names a PID no longer recorded.
        e.pid = None;
        e.doc.last_exit = None;
        e.doc.reason = Some("its mount went stale".to_owned());
        e.started.map(|s| s.elapsed())
    };
    if repair_if_stale(d, &target, &mount).await {
        decide(d, &target, &slot, true, ran_for);
    } else {
        // Answering again: keep it running (the PID comes back from the manager).
        let pid = d
            .manager
            .memory_snapshot()
            .into_iter()
            .find(|(t, _)| *t == target);
        slot.entry().pid = pid.map(|(_, id)| id.pid);
    }
}

fn running_mount(e: &super::Entry) -> Option<std::path::PathBuf> {
    let supervised = e.doc.spec.restart.supervises() && e.doc.state == SupState::Running;
    e.doc
        .spec
        .mount
        .clone()
        .filter(|_| supervised && e.pid.is_some())
}

/// The periodic check of every supervised mount, every `every`, until shutdown.
pub(crate) fn start_loop(d: &Arc<Daemon>, every: Duration) {
    let weak = Arc::downgrade(d);
    let mut shutdown = d.shutdown_signal();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Some(d) = weak.upgrade() else { return };
            let checks: Vec<_> = d
                .supervisor
                .all_slots()
                .into_iter()
                .filter(|(_, s)| running_mount(&s.entry()).is_some())
                .map(|(t, _)| tokio::spawn(check(d.clone(), t)))
                .collect();
            for c in checks {
                let _ = c.await;
            }
        }
    });
}
