//! The manager's in-memory table, kept compact: it holds every tracked helper for the
//! manager's whole life (the goal is at most 512 bytes per helper at 100,000 helpers).
//!
//! A helper's identity is kept without its own copy of the boot ID (one shared
//! `Arc<str>` per boot), its metadata in boxed slices rather than growable vectors, and
//! its log path not at all when it is the default `<run-dir>/logs/<target>.log`.

use dms_proc::{Pid, ProcIdentity};
use dms_store::{Metadata, TargetId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The in-memory table: helpers by target, and the target of each helper's PID.
#[derive(Default)]
pub(super) struct Memory {
    by_target: HashMap<TargetId, Tracked>,
    by_pid: HashMap<Pid, TargetId>,
    /// The boot ID shared by the identities in the table (all of one boot, in practice).
    boot_id: Option<Arc<str>>,
    /// The command line last put in the table, shared by the next helper that has the
    /// same one (the helpers of a fleet usually run one program with the same
    /// arguments, their target passed in the environment).
    cmdline: Option<Arc<[Box<str>]>>,
}

impl Memory {
    pub(super) fn get(&self, target: &TargetId) -> Option<&Tracked> {
        self.by_target.get(target)
    }

    pub(super) fn get_mut(&mut self, target: &TargetId) -> Option<&mut Tracked> {
        self.by_target.get_mut(target)
    }

    /// Puts `identity` and `meta` in the table for `target`; returns the identity it
    /// replaces. `logs_dir` is where default log files go.
    pub(super) fn insert(
        &mut self,
        target: TargetId,
        identity: &ProcIdentity,
        meta: Metadata,
        watched: bool,
        logs_dir: &Path,
    ) -> Option<ProcIdentity> {
        let boot_id = match &self.boot_id {
            Some(b) if **b == *identity.boot_id => b.clone(),
            _ => {
                let b: Arc<str> = Arc::from(identity.boot_id.as_str());
                self.boot_id = Some(b.clone());
                b
            }
        };
        let tracked = Tracked {
            pid: identity.pid,
            start_ticks: identity.start_ticks,
            boot_id,
            meta: CompactMeta::new(meta, &target, logs_dir, &mut self.cmdline),
            watched,
            observed: None,
        };
        let old = self.by_target.insert(target.clone(), tracked);
        if let Some(old) = &old {
            if self.by_pid.get(&old.pid) == Some(&target) {
                self.by_pid.remove(&old.pid);
            }
        }
        self.by_pid.insert(identity.pid, target);
        old.map(|t| t.identity())
    }

    pub(super) fn remove(&mut self, target: &TargetId) -> Option<Tracked> {
        let old = self.by_target.remove(target)?;
        if self.by_pid.get(&old.pid) == Some(target) {
            self.by_pid.remove(&old.pid);
        }
        Some(old)
    }

    /// The target whose helper has this exact identity.
    pub(super) fn target_of(&self, id: &ProcIdentity) -> Option<&TargetId> {
        let target = self.by_pid.get(&id.pid)?;
        self.by_target.get(target)?.is(id).then_some(target)
    }

    /// The target whose helper has `pid`, whatever its identity.
    pub(super) fn target_of_pid(&self, pid: Pid) -> Option<&TargetId> {
        self.by_pid.get(&pid)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&TargetId, &Tracked)> {
        self.by_target.iter()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &TargetId> {
        self.by_target.keys()
    }

    pub(super) fn len(&self) -> usize {
        self.by_target.len()
    }
}

/// A helper in memory.
pub(super) struct Tracked {
    pid: Pid,
    start_ticks: u64,
    boot_id: Arc<str>,
    meta: CompactMeta,
    /// False when no exit watcher watches it (one-shot mode, or watching failed):
    /// memory hits then probe.
    pub(super) watched: bool,
    /// What a probe of the live process told, once one did (out of line: a helper that
    /// was never looked up or sampled costs one pointer).
    observed: Option<Box<Observed>>,
}

/// What the manager learnt of a tracked helper's live process: the facts of its info
/// object that cannot change while it is the same process (the exit watcher says when
/// it is not), and its last usage sample.
#[derive(Debug, Clone)]
pub(super) struct Observed {
    /// When it started, on the wall clock.
    pub(super) started_at: SystemTime,
    /// Its command line as the kernel shows it (`/proc/PID/cmdline`) when that differs
    /// from the recorded one (a script run by its interpreter); `None` when it is the
    /// recorded one, or could not be read.
    cmdline: Option<Box<[Box<str>]>>,
    /// The last usage sample, when the background sampler took one.
    pub(super) sample: Option<Sample>,
}

/// One usage sample of a tracked helper.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// When it was read.
    pub(super) at: Instant,
    /// Its CPU time then (user + system), in seconds.
    pub(super) cpu_seconds: f64,
    /// CPU use since the previous sample (the first: since the helper started), in
    /// percent of one core.
    pub(super) cpu_percent: f64,
    /// Resident memory, in bytes.
    pub(super) rss_bytes: u64,
    /// Threads.
    pub(super) threads: u64,
    /// Stopped (SIGSTOP).
    pub(super) stopped: bool,
}

impl Sample {
    /// The sample read at `at` as `usage`, after `previous` (of the same process).
    pub(super) fn after(previous: Option<&Sample>, at: Instant, usage: &dms_proc::Usage) -> Sample {
        let cpu_percent = match previous {
            Some(p) if at > p.at => {
                let wall = at.duration_since(p.at).as_secs_f64();
                ((usage.cpu_seconds - p.cpu_seconds).max(0.0) / wall) * 100.0
            }
            // The first sample: the lifetime average, which is the use over the only
            // interval there is (since the helper started).
            _ => usage.cpu_percent,
        };
        Sample {
            at,
            cpu_seconds: usage.cpu_seconds,
            cpu_percent,
            rss_bytes: usage.rss_bytes,
            threads: usage.threads,
            stopped: usage.stopped,
        }
    }

    /// The sample as the usage of an info object.
    pub(super) fn usage(&self) -> dms_proc::Usage {
        dms_proc::Usage {
            cpu_seconds: self.cpu_seconds,
            cpu_percent: self.cpu_percent,
            rss_bytes: self.rss_bytes,
            threads: self.threads,
            stopped: self.stopped,
        }
    }
}

impl Tracked {
    /// Its identity.
    pub(super) fn identity(&self) -> ProcIdentity {
        ProcIdentity {
            pid: self.pid,
            start_ticks: self.start_ticks,
            boot_id: self.boot_id.to_string(),
        }
    }

    /// Whether it is exactly the process `id`.
    pub(super) fn is(&self, id: &ProcIdentity) -> bool {
        self.pid == id.pid && self.start_ticks == id.start_ticks && *self.boot_id == *id.boot_id
    }

    /// Its metadata, as recorded (`target` and `logs_dir` give the default log path).
    pub(super) fn meta(&self, target: &TargetId, logs_dir: &Path) -> Metadata {
        self.meta.expand(target, logs_dir)
    }

    /// Its log file when one other than the default `<logs-dir>/<target>.log` is recorded.
    pub(super) fn other_log_path(&self) -> Option<&Path> {
        match &self.meta.log_path {
            LogPath::Other(p) => Some(p),
            LogPath::None | LogPath::Default => None,
        }
    }

    /// Its recorded mount point.
    pub(super) fn mount(&self) -> Option<PathBuf> {
        self.meta.mount.as_deref().map(Path::to_path_buf)
    }

    /// What a probe of its live process told, if one did.
    pub(super) fn observed(&self) -> Option<&Observed> {
        self.observed.as_deref()
    }

    /// Keeps what a probe of its live process told (the sample so far is kept).
    pub(super) fn observe(&mut self, started_at: SystemTime, cmdline: Option<&[String]>) {
        let sample = self.observed.as_ref().and_then(|o| o.sample);
        let recorded = self.meta.cmdline.as_deref();
        let differs = |live: &&[String]| {
            recorded.is_none_or(|r| !r.iter().map(|a| &**a).eq(live.iter().map(String::as_str)))
        };
        let cmdline = cmdline
            .filter(differs)
            .map(|c| c.iter().map(|a| a.as_str().into()).collect());
        self.observed = Some(Box::new(Observed {
            started_at,
            cmdline,
            sample,
        }));
    }

    /// Its command line: the live process's when it was observed and differs from the
    /// recorded one, else the recorded one.
    pub(super) fn cmdline(&self) -> Option<Vec<String>> {
        let live = self.observed.as_ref().and_then(|o| o.cmdline.as_deref());
        live.or(self.meta.cmdline.as_deref())
            .map(|c| c.iter().map(|a| a.to_string()).collect())
    }

    /// Keeps a usage sample (only once its start time is known: a sample is used with
    /// it). Returns whether it was kept.
    pub(super) fn set_sample(&mut self, sample: Sample) -> bool {
        match self.observed.as_mut() {
            Some(o) => {
                o.sample = Some(sample);
                true
            }
            None => false,
        }
    }

    /// Its log file, as recorded (`None` when none is: an adopted helper's output goes
    /// where its own starter sent it).
    pub(super) fn log_path(&self, target: &TargetId, logs_dir: &Path) -> Option<PathBuf> {
        match &self.meta.log_path {
            LogPath::None => None,
            LogPath::Default => Some(target.log_file_in(logs_dir)),
            LogPath::Other(p) => Some(p.to_path_buf()),
        }
    }
}

/// Where a helper's output goes, as kept in memory.
enum LogPath {
    None,
    /// `<logs-dir>/<target>.log`.
    Default,
    Other(Box<Path>),
}

/// [`Metadata`] in boxed slices (no spare capacity), with the default log path implied.
struct CompactMeta {
    cmdline: Option<Arc<[Box<str>]>>,
    mount: Option<Box<Path>>,
    spawned_at: Option<SystemTime>,
    log_path: LogPath,
}

impl CompactMeta {
    fn new(
        meta: Metadata,
        target: &TargetId,
        logs_dir: &Path,
        last_cmdline: &mut Option<Arc<[Box<str>]>>,
    ) -> CompactMeta {
        let log_path = match meta.log_path {
            None => LogPath::None,
            Some(p) if p == target.log_file_in(logs_dir) => LogPath::Default,
            Some(p) => LogPath::Other(p.into_boxed_path()),
        };
        let cmdline = meta.cmdline.map(|c| match last_cmdline {
            Some(last) if last.iter().map(|a| &**a).eq(c.iter().map(String::as_str)) => {
                last.clone()
            }
            _ => {
                let shared: Arc<[Box<str>]> = c.into_iter().map(String::into_boxed_str).collect();
                *last_cmdline = Some(shared.clone());
                shared
            }
        });
        CompactMeta {
            cmdline,
            mount: meta.mount.map(PathBuf::into_boxed_path),
            spawned_at: meta.spawned_at,
            log_path,
        }
    }

    fn expand(&self, target: &TargetId, logs_dir: &Path) -> Metadata {
        Metadata {
            cmdline: self
                .cmdline
                .as_ref()
                .map(|c| c.iter().map(|a| a.to_string()).collect()),
            mount: self.mount.as_deref().map(Path::to_path_buf),
            spawned_at: self.spawned_at,
            log_path: match &self.log_path {
                LogPath::None => None,
                LogPath::Default => Some(target.log_file_in(logs_dir)),
                LogPath::Other(p) => Some(p.to_path_buf()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(pid: i64, ticks: u64) -> ProcIdentity {
        ProcIdentity {
            pid: Pid::new(pid).unwrap(),
            start_ticks: ticks,
            boot_id: "boot-a".into(),
        }
    }

    #[test]
    fn metadata_comes_back_as_it_went_in() {
        let logs = Path::new("/run/dms/logs");
        let target: TargetId = "t1".parse().unwrap();
        let mut memory = Memory::default();
        for log_path in [
            None,
            Some(target.log_file_in(logs)),
            Some(PathBuf::from("/var/log/elsewhere.log")),
        ] {
            let meta = Metadata {
                cmdline: Some(vec!["/usr/bin/helper".into(), "--flag".into()]),
                mount: Some("/mnt/t1".into()),
                spawned_at: Some(SystemTime::UNIX_EPOCH),
                log_path,
            };
            memory.insert(target.clone(), &identity(10, 5), meta.clone(), true, logs);
            assert_eq!(memory.get(&target).unwrap().meta(&target, logs), meta);
        }
    }

    #[test]
    fn equal_command_lines_are_kept_once() {
        let logs = Path::new("/run/dms/logs");
        let mut memory = Memory::default();
        let meta = |arg: &str| Metadata {
            cmdline: Some(vec!["/usr/bin/helper".into(), arg.into()]),
            ..Metadata::default()
        };
        for (i, arg) in ["x", "x", "y"].into_iter().enumerate() {
            let target: TargetId = format!("t{i}").parse().unwrap();
            memory.insert(target, &identity(10 + i as i64, 5), meta(arg), true, logs);
        }
        let cmd = |t: &str| {
            let t: TargetId = t.parse().unwrap();
            memory.get(&t).unwrap().meta.cmdline.clone().unwrap()
        };
        assert!(Arc::ptr_eq(&cmd("t0"), &cmd("t1")));
        assert!(!Arc::ptr_eq(&cmd("t1"), &cmd("t2")));
        let t2: TargetId = "t2".parse().unwrap();
        assert_eq!(memory.get(&t2).unwrap().meta(&t2, logs), meta("y"));
    }

    #[test]
    fn identity_and_pid_index_follow_replacements() {
        let logs = Path::new("/run/dms/logs");
        let (a, b): (TargetId, TargetId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let mut memory = Memory::default();
        let first = identity(10, 5);
        assert!(memory
            .insert(a.clone(), &first, Metadata::default(), true, logs)
            .is_none());
        assert_eq!(memory.target_of(&first), Some(&a));
        assert_eq!(memory.get(&a).unwrap().identity(), first);
        // The PID reused by another process is not the tracked helper.
        assert_eq!(memory.target_of(&identity(10, 6)), None);
        let second = identity(11, 7);
        assert_eq!(
            memory.insert(a.clone(), &second, Metadata::default(), true, logs),
            Some(first.clone())
        );
        assert_eq!(memory.target_of_pid(first.pid), None);
        memory.insert(b.clone(), &first, Metadata::default(), false, logs);
        assert_eq!(memory.target_of(&first), Some(&b));
        assert!(memory.remove(&a).is_some());
        assert_eq!(memory.target_of(&second), None);
        assert_eq!(memory.len(), 1);
    }
}
