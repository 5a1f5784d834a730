//! The supervisor's reactions: a spawn request recorded and started, exits decided by
//! the policy, restarts scheduled and done, stops (kill, DELETE, cleanup --all, a PID
//! file removed from outside) that never restart, and the explicit restart.

use super::policy::{jitter, Decision};
use super::spec::{LastExit, SupState};
use super::{health, unix_now, Entry, Slot, ENV_LOST};
use crate::error::ApiError;
use crate::events::signal_name;
use crate::handlers::DEFAULT_READY_TIMEOUT;
use crate::Daemon;
use dms_core::{Event, HelperSpec, ProcessInfo};
use dms_proc::ExitStatus;
use dms_store::{Pid, TargetId};
use serde_json::{json, Map, Value};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The helper spec of `entry` (its environment built now: env files read again, the
/// inline items added), or why it cannot be built.
fn helper_spec(d: &Daemon, entry: &Entry) -> Result<HelperSpec, String> {
    if entry.env_lost() {
        return Err(ENV_LOST.to_owned());
    }
    let spec = &entry.doc.spec;
    let inline = entry.inline.clone().unwrap_or_default();
    let env = d.build_env(&spec.env_files, &inline)?;
    let mut argv = spec.argv.iter().map(OsString::from);
    let ready = spec
        .ready_timeout_secs
        .map_or(DEFAULT_READY_TIMEOUT, Duration::from_secs_f64);
    Ok(HelperSpec {
        program: argv.next().unwrap_or_default(),
        args: argv.collect(),
        env,
        log: spec.log.clone(),
        ready_timeout: spec.mount.as_ref().map(|_| ready),
        mount: spec.mount.clone(),
        replace: None,
    })
}

fn push(d: &Daemon, kind: &str, target: &TargetId, pid: Option<Pid>, fields: Map<String, Value>) {
    d.events.push(
        kind,
        json!(target),
        pid.map_or(Value::Null, |p| json!(p.get())),
        fields,
    );
}

/// A spawn request: records `doc` (the spec, policy included) with its inline items,
/// starts the helper with `helper`, and supervises it from now. A failed start keeps
/// nothing new (the previous record, if any, stays as it was).
pub async fn spawn(
    d: &Arc<Daemon>,
    target: &TargetId,
    spec: super::spec::StoredSpec,
    inline: Vec<OsString>,
    helper: HelperSpec,
) -> Result<ProcessInfo, ApiError> {
    let (slot, created) = d.supervisor.slot_or_new(target);
    let _op = slot.op.lock().await;
    slot.entry().generation += 1;
    match d.manager.spawn(target, helper).await {
        Ok(info) => {
            let mut e = slot.entry();
            e.doc = super::spec::Persisted {
                spec,
                ..Default::default()
            };
            e.inline = Some(inline);
            e.pid = info.pid;
            e.started = Some(Instant::now());
            e.generation += 1;
            d.supervisor.persist(target, &e);
            Ok(info)
        }
        Err(err) => {
            if created {
                d.supervisor.remove_slot(target, &slot);
            }
            Err(err.into())
        }
    }
}

/// Starts `target` from its record (under its operation lock): the state is `running`
/// on success (one more restart counted when `restart`); the error otherwise.
async fn start(
    d: &Arc<Daemon>,
    target: &TargetId,
    slot: &Slot,
    restart: bool,
) -> Result<ProcessInfo, String> {
    let (helper, mount) = {
        let e = slot.entry();
        (helper_spec(d, &e)?, e.doc.spec.mount.clone())
    };
    if let Some(m) = &mount {
        health::repair_if_stale(d, target, m).await;
    }
    let info = d
        .manager
        .spawn(target, helper)
        .await
        .map_err(|e| crate::render(&e))?;
    let mut e = slot.entry();
    e.pid = info.pid;
    e.started = Some(Instant::now());
    e.doc.state = SupState::Running;
    e.doc.next_restart_at = None;
    e.doc.reason = None;
    e.doc.restarts += u64::from(restart);
    d.supervisor.persist(target, &e);
    Ok(info)
}

/// Decides after a counted or uncounted exit (under the operation lock): stays stopped,
/// gives up, or schedules the next restart.
pub(crate) fn decide(
    d: &Arc<Daemon>,
    target: &TargetId,
    slot: &Arc<Slot>,
    failed: bool,
    ran_for: Option<Duration>,
) {
    let mut e = slot.entry();
    e.pid = None;
    e.started = None;
    let policy = e.doc.spec.restart.clone();
    let decision = e
        .doc
        .series
        .on_exit(&policy, failed, ran_for, unix_now(), jitter());
    match decision {
        Decision::Stay => {
            e.doc.state = SupState::Stopped;
            e.doc.next_restart_at = None;
        }
        Decision::GiveUp { failures } => {
            e.doc.state = SupState::Failed;
            e.doc.next_restart_at = None;
            e.doc.reason = Some(format!(
                "gave up after {failures} failures within {} s; spawn or restart it again",
                policy.window_secs
            ));
            let mut f = Map::new();
            f.insert("failures".into(), json!(failures));
            push(d, "gave_up", target, None, f);
        }
        Decision::Restart { .. } if e.env_lost() => {
            e.doc.state = SupState::Failed;
            e.doc.next_restart_at = None;
            e.doc.reason = Some(ENV_LOST.to_owned());
            let mut f = Map::new();
            f.insert("failures".into(), json!(e.doc.series.failures.len()));
            f.insert("reason".into(), json!(ENV_LOST));
            push(d, "gave_up", target, None, f);
        }
        Decision::Restart { delay, attempt } => {
            e.generation += 1;
            e.doc.state = SupState::Backoff;
            e.doc.next_restart_at = Some(unix_now() + delay.as_secs_f64());
            let mut f = Map::new();
            f.insert("delay_secs".into(), json!(delay.as_secs_f64()));
            f.insert("attempt".into(), json!(attempt));
            push(d, "restart_scheduled", target, None, f);
            schedule(d, target, slot, e.generation, delay);
        }
    }
    d.supervisor.persist(target, &e);
}

/// Restarts `target` after `delay` unless its generation moved on.
pub(crate) fn schedule(
    d: &Arc<Daemon>,
    target: &TargetId,
    slot: &Arc<Slot>,
    gen: u64,
    delay: Duration,
) {
    let (d, target, slot) = (d.clone(), target.clone(), slot.clone());
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _op = slot.op.lock().await;
        {
            let e = slot.entry();
            if e.generation != gen || e.doc.state != SupState::Backoff || d.is_shutting_down() {
                return;
            }
        }
        match start(&d, &target, &slot, true).await {
            Ok(_) => {}
            Err(why) => {
                tracing::warn!(target = %target, error = %why, "restart failed");
                slot.entry().doc.reason = Some(format!("restart failed: {why}"));
                decide(&d, &target, &slot, true, None);
            }
        }
    });
}

/// The supervisor's part of a manager event (runs the reaction in its own task).
pub fn on_event(d: &Arc<Daemon>, event: &Event) {
    let d = d.clone();
    match event {
        Event::Exited {
            target,
            pid,
            status,
        } => {
            let (target, pid, status) = (target.clone(), *pid, *status);
            tokio::spawn(async move { on_exit(&d, &target, pid, status).await });
        }
        Event::Killed { target, pid } => {
            let Some(slot) = d.supervisor.slot(target) else {
                return;
            };
            let mut e = slot.entry();
            if e.pid == Some(*pid) {
                stopped(&mut e, "stopped by kill");
                d.supervisor.persist(target, &e);
            }
        }
        Event::Untracked { target, .. } => on_untracked(&d, target),
        _ => {}
    }
}

fn stopped(e: &mut Entry, why: &str) {
    e.pid = None;
    e.started = None;
    e.generation += 1;
    e.doc.state = SupState::Stopped;
    e.doc.next_restart_at = None;
    e.doc.reason = Some(why.to_owned());
}

async fn on_exit(d: &Arc<Daemon>, target: &TargetId, pid: Pid, status: ExitStatus) {
    let Some(slot) = d.supervisor.slot(target) else {
        return;
    };
    let _op = slot.op.lock().await;
    let (ran_for, mount, supervises) = {
        let mut e = slot.entry();
        if e.pid != Some(pid) {
            return;
        }
        e.doc.last_exit = Some(match status {
            ExitStatus::Code(c) => LastExit {
                code: Some(c),
                signal: None,
            },
            ExitStatus::Signaled(s) => LastExit {
                code: None,
                signal: Some(signal_name(s)),
            },
            ExitStatus::Unknown => LastExit {
                code: None,
                signal: None,
            },
        });
        (
            e.started.map(|s| s.elapsed()),
            e.doc.spec.mount.clone(),
            e.doc.spec.restart.supervises(),
        )
    };
    if supervises {
        if let Some(m) = &mount {
            health::repair_if_stale(d, target, m).await;
        }
    }
    let failed = !matches!(status, ExitStatus::Code(0));
    decide(d, target, &slot, failed, ran_for);
}

/// Before a stop by `kill` (or `cleanup --all`): the target is never restarted for it.
pub fn stop(d: &Daemon, target: &TargetId, why: &str) {
    if let Some(slot) = d.supervisor.slot(target) {
        let mut e = slot.entry();
        stopped(&mut e, why);
        d.supervisor.persist(target, &e);
    }
}

/// Before `cleanup --all`: every target is stopped, none restarted.
pub fn cleanup_all_begin(d: &Daemon) {
    for (target, _) in d.supervisor.all_slots() {
        stop(d, &target, "stopped by cleanup --all");
    }
}

/// Forgets `target`'s spec (DELETE): never restarted, nothing kept.
pub fn forget(d: &Daemon, target: &TargetId) {
    if let Some(slot) = d.supervisor.slot(target) {
        stopped(&mut slot.entry(), "forgotten");
        d.supervisor.remove_slot(target, &slot);
    }
    d.supervisor.unpersist(target);
}

/// A PID file removed from outside the daemon (the manager's `untracked` event): the
/// helper is a stop from outside, never restarted, and its spec is forgotten.
pub fn on_untracked(d: &Daemon, target: &TargetId) {
    tracing::info!(target = %target, "PID file removed from outside: supervision ends");
    forget(d, target);
}

/// `POST /v1/targets/{t}/restart`: stops the helper (as `kill`, with `grace`) and starts
/// it again from the recorded spec; the failure count starts afresh.
pub async fn restart(
    d: &Arc<Daemon>,
    target: &TargetId,
    grace: Duration,
) -> Result<ProcessInfo, ApiError> {
    let Some(slot) = d.supervisor.slot(target) else {
        return Err(ApiError::conflict(format!(
            "nothing is recorded for {target} to restart; spawn it first (POST \
             /v1/targets/{target}/spawn)"
        )));
    };
    let _op = slot.op.lock().await;
    {
        let mut e = slot.entry();
        if e.env_lost() {
            return Err(ApiError::conflict(format!(
                "cannot restart {target}: {ENV_LOST}"
            )));
        }
        // A stop of ours: the Killed event it sends names a PID no longer recorded.
        e.pid = None;
        e.generation += 1;
    }
    d.manager.kill(target, grace).await?;
    slot.entry().doc.series.reset();
    match start(d, target, &slot, true).await {
        Ok(info) => Ok(info),
        Err(why) => {
            let mut e = slot.entry();
            stopped(&mut e, &format!("restart failed: {why}"));
            d.supervisor.persist(target, &e);
            Err(ApiError::failed(format!(
                "cannot start {target} again: {why}"
            )))
        }
    }
}

/// Starts a recorded target (declared targets), under its operation lock (held by the
/// caller); a failed start counts as a failure of the policy.
pub(crate) async fn start_locked(
    d: &Arc<Daemon>,
    target: &TargetId,
    slot: &Arc<Slot>,
) -> Result<(), String> {
    slot.entry().generation += 1;
    match start(d, target, slot, false).await {
        Ok(_) => Ok(()),
        Err(why) => {
            slot.entry().doc.reason = Some(format!("start failed: {why}"));
            if slot.entry().doc.spec.restart.supervises() {
                decide(d, target, slot, true, None);
            } else {
                let mut e = slot.entry();
                stopped(&mut e, &format!("start failed: {why}"));
                d.supervisor.persist(target, &e);
            }
            Err(why)
        }
    }
}
