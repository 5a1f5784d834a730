//! The specs of supervised targets, kept on disk so that a restarted daemon goes on
//! supervising: `<run-dir>/specs/<target>.json`, one document per target, written
//! atomically (temp file, fsync, rename, fsync of the directory), for every backend.
//! A document holds the argv, the keys (never the values) of the inline environment,
//! the env file paths, the mount, the log, the policy and the supervision state (failure
//! count included).

use super::policy::{Policy, Series};
use dms_store::TargetId;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What is needed to start a target's helper again, without any environment value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredSpec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The keys of the inline environment (the values live in the daemon's memory only).
    pub env_keys: Vec<String>,
    /// Env files, read at every start.
    pub env_files: Vec<PathBuf>,
    /// The mount point.
    pub mount: Option<PathBuf>,
    /// The time to mount it.
    pub ready_timeout_secs: Option<f64>,
    /// The log file.
    pub log: Option<PathBuf>,
    /// The restart policy.
    pub restart: Policy,
    /// Declared by a file of `--targets DIR` (its name), rather than by a spawn request.
    pub declared: Option<String>,
}

/// The supervision state of a target (the `state` of the info object's `supervision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SupState {
    /// The helper runs (or is being started).
    #[default]
    Running,
    /// Waiting for a restart.
    Backoff,
    /// Given up: no restart until `spawn` or `restart`.
    Failed,
    /// Stopped (exited and not restarted, or stopped by `kill`).
    Stopped,
}

impl SupState {
    /// Its name in documents.
    pub fn name(self) -> &'static str {
        match self {
            SupState::Running => "running",
            SupState::Backoff => "backoff",
            SupState::Failed => "failed",
            SupState::Stopped => "stopped",
        }
    }
}

/// How a helper last ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastExit {
    /// Its exit code, when known.
    pub code: Option<i32>,
    /// The signal that ended it (`SIGSEGV`), when one did.
    pub signal: Option<String>,
}

/// The document of one target on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// The spec.
    pub spec: StoredSpec,
    /// The supervision state.
    pub state: SupState,
    /// Restarts done.
    pub restarts: u64,
    /// The counted exits.
    pub series: Series,
    /// When the next restart is due (Unix seconds), in `backoff`.
    pub next_restart_at: Option<f64>,
    /// How the helper last ended.
    pub last_exit: Option<LastExit>,
    /// Why it is `failed` or `stopped`.
    pub reason: Option<String>,
}

/// What [`SpecStore::load`] found: the documents, and the unreadable files with why.
pub type Loaded = (Vec<(TargetId, Persisted)>, Vec<(PathBuf, String)>);

/// The directory of spec documents.
#[derive(Debug, Clone)]
pub struct SpecStore {
    dir: PathBuf,
}

impl SpecStore {
    /// The store of `run_dir` (`<run-dir>/specs`, created at the first write).
    pub fn new(run_dir: &Path) -> SpecStore {
        SpecStore {
            dir: run_dir.join("specs"),
        }
    }

    fn path(&self, target: &TargetId) -> PathBuf {
        self.dir.join(format!("{}.json", target.as_str()))
    }

    /// Writes `doc` for `target` atomically.
    pub fn put(&self, target: &TargetId, doc: &Persisted) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_vec_pretty(doc).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(
            ".{}.json.tmp-{}",
            target.as_str(),
            std::process::id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path(target))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Removes `target`'s document (nothing when there is none).
    pub fn remove(&self, target: &TargetId) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(target)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable document; unreadable ones are reported (path, reason) and skipped.
    pub fn load(&self) -> Loaded {
        let mut docs = Vec::new();
        let mut bad = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return (docs, bad);
        };
        for e in dir.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            if stem.starts_with('.') {
                let _ = std::fs::remove_file(&path); // a temp file of a crashed write
                continue;
            }
            let Ok(target) = stem.parse::<TargetId>() else {
                bad.push((path, "not a target ID".to_owned()));
                continue;
            };
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Persisted>(&b).map_err(|e| e.to_string()))
            {
                Ok(doc) => docs.push((target, doc)),
                Err(why) => bad.push((path, why)),
            }
        }
        docs.sort_by(|a, b| a.0.cmp(&b.0));
        (docs, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SpecStore::new(tmp.path());
        let t: TargetId = "t1".parse().unwrap();
        let mut doc = Persisted::default();
        doc.spec.argv = vec!["sleep".into(), "9".into()];
        doc.spec.env_keys = vec!["TOKEN".into()];
        doc.restarts = 3;
        doc.series.attempt = 2;
        doc.series.failures.push_back(1.5);
        store.put(&t, &doc).unwrap();
        std::fs::write(tmp.path().join("specs/bad.json"), "{").unwrap();
        let (docs, bad) = store.load();
        assert_eq!(docs, vec![(t.clone(), doc)]);
        assert_eq!(bad.len(), 1);
        store.remove(&t).unwrap();
        store.remove(&t).unwrap();
        assert!(store.load().0.is_empty());
    }
}
