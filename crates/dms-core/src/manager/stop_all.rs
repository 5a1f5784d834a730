//! `cleanup --all`: every helper is stopped at the same time, so the whole stop takes
//! about one grace period, not one per helper (issue 17.6): every SIGTERM goes out
//! first, the graces run together, then each helper still there gets its SIGKILL.

use super::Inner;
use crate::error::Error;
use dms_store::TargetId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::error;

/// How many stops run at once: bounded by the open-file limit (a stop holds the
/// target's lock file and a few pidfds), between 16 and 4096. With the usual soft limit
/// of 1024 that is 240 helpers per grace period.
fn concurrency() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    usize::try_from(soft.saturating_sub(64) / 4)
        .unwrap_or(4096)
        .clamp(16, 4096)
}

impl Inner {
    /// Stops the helpers of `targets` concurrently (each as `kill` does, with `grace`).
    /// Returns the targets whose helper was stopped, in the order given, and the first
    /// error in that order (every target is attempted).
    pub(super) async fn kill_all(
        self: &Arc<Self>,
        targets: Vec<TargetId>,
        grace: Duration,
    ) -> (Vec<TargetId>, Option<Error>) {
        let permits = Arc::new(Semaphore::new(concurrency()));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, target) in targets.iter().cloned().enumerate() {
            let inner = self.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (i, inner.kill(&target, grace).await)
            });
        }
        let mut results: Vec<Option<crate::error::Result<bool>>> =
            (0..targets.len()).map(|_| None).collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, r)) => results[i] = Some(r.map(|k| k.stopped)),
                Err(e) => error!(error = %e, "a stop task failed"),
            }
        }
        let mut stopped = Vec::new();
        let mut first_err = None;
        for (target, result) in targets.into_iter().zip(results) {
            match result {
                Some(Ok(true)) => stopped.push(target),
                Some(Ok(false)) | None => {}
                Some(Err(e)) => {
                    error!(target = %target, error = %e, "cannot stop helper");
                    first_err.get_or_insert(e);
                }
            }
        }
        (stopped, first_err)
    }
}
