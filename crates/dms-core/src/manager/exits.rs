//! Exit handling: the shared exit watcher reports a helper's exit, and its memory entry
//! and PID file are removed if they still name it.

use super::Inner;
use crate::report::Event;
use dms_proc::{ExitStatus, ProcIdentity, WaitOutcome};
use dms_store::{Stored, TargetId};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{info, warn};

impl Inner {
    /// Called when the exit watcher reports `identity`.
    pub(super) async fn on_exit(
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
                Ok(Some(Stored::Valid(r)))
                    if r.pid == identity.pid
                        && r.identity.as_ref().is_none_or(|id| {
                            id.start_ticks == identity.start_ticks && id.boot_id == identity.boot_id
                        }) =>
                {
                    if let Err(e) = self.store.remove(target).await {
                        warn!(target = %target, pid, error = %crate::Report::new(&e), "cannot remove PID file of exited helper; cleanup will");
                    }
                    self.forget_mount_if_gone(target);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(target = %target, pid, error = %crate::Report::new(&e), "cannot read PID file of exited helper; cleanup will");
                }
            },
            Err(e) => {
                warn!(target = %target, pid, error = %crate::Report::new(&e), "cannot lock target; PID file of exited helper left for cleanup");
            }
        }
        info!(target = %target, pid, ?status, "helper exited");
        self.emit(Event::Exited {
            target: target.clone(),
            pid: identity.pid,
            status,
        });
    }
}

/// How long the handling of a reported exit waits for the exit status.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(1);

/// Handles the exits the shared exit watcher reports, each in a task of its own (it
/// waits for the target's lock, which a `kill` may hold for its whole grace period):
/// removes the helper from memory and disk if they still name it. When the watcher
/// stops, memory hits fall back to probing.
pub(super) async fn handle_exits(
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
