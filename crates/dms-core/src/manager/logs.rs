//! Where the helpers' output goes: for the daemon's log bounding, `dms logs` and
//! `GET /v1/targets/{t}/logs`.

use super::Manager;
use dms_store::{Stored, TargetId};
use std::path::{Path, PathBuf};

impl Manager {
    /// The log files of the helpers in memory that are not the default
    /// `<run-dir>/logs/<target>.log` (a `--log FILE`), sorted, each once: with the
    /// `*.log` files of the logs directory, every log a tracked helper writes. Cheap for
    /// the helpers with the default log (nothing is allocated for them).
    pub fn other_log_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .inner
            .read_memory()
            .iter()
            .filter_map(|(_, tr)| tr.other_log_path().map(Path::to_path_buf))
            .collect();
        v.sort();
        v.dedup();
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
            Ok(Some(Stored::Valid(r))) => r.meta.log_path,
            _ => None,
        }
        .unwrap_or_else(|| target.log_file_in(&logs_dir))
    }
}
