//! Where the helpers' output goes: for the daemon's log bounding, `dms logs` and
//! `GET /v1/targets/{t}/logs`.

use super::Manager;
use dms_store::{Lookup, TargetId};
use std::path::PathBuf;

impl Manager {
    /// The log file of every helper in memory, sorted by target: the recorded one, else
    /// the default `<run-dir>/logs/<target>.log` (a helper adopted without metadata).
    pub fn log_files(&self) -> Vec<(TargetId, PathBuf)> {
        let logs_dir = self.inner.opts.logs_dir();
        let mut v: Vec<_> = self
            .inner
            .read_memory()
            .iter()
            .map(|(t, tr)| {
                let path = tr
                    .log_path(t, &logs_dir)
                    .unwrap_or_else(|| t.log_file_in(&logs_dir));
                (t.clone(), path)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The log file of `target`: the one recorded for its helper in memory, else in the
    /// store (a backend that keeps metadata), else the default
    /// `<run-dir>/logs/<target>.log` (where `dms spawn` sends output without `--log`, and
    /// where the last helper of a target no longer tracked wrote). A store that cannot be
    /// read gives the default too.
    pub async fn log_file(&self, target: &TargetId) -> PathBuf {
        let logs_dir = self.inner.opts.logs_dir();
        let in_memory = self
            .inner
            .read_memory()
            .get(target)
            .and_then(|tr| tr.log_path(target, &logs_dir));
        if let Some(p) = in_memory {
            return p;
        }
        match self.inner.store.get(target).await {
            Ok(Lookup::Present(r)) => r.meta.log_path,
            _ => None,
        }
        .unwrap_or_else(|| target.log_file_in(&logs_dir))
    }
}
