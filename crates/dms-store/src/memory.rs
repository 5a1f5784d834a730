//! [`MemoryStore`]: an in-memory [`PidStore`] for tests of the layers above.

use crate::names::{check_stray_name, sort_key, PID_SUFFIX};
use crate::{Corrupt, Entry, Error, PidStore, Record, Result, Stored, TargetId};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// One [`PidStore`] operation, for [`MemoryStore::fail_next`] and [`MemoryStore::calls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// [`PidStore::put`].
    Put,
    /// [`PidStore::get`].
    Get,
    /// [`PidStore::remove`].
    Remove,
    /// [`PidStore::list`].
    List,
    /// [`PidStore::remove_stray`].
    RemoveStray,
}

impl StoreOp {
    fn name(self) -> &'static str {
        match self {
            StoreOp::Put => "put",
            StoreOp::Get => "get",
            StoreOp::Remove => "remove",
            StoreOp::List => "list",
            StoreOp::RemoveStray => "remove stray",
        }
    }
}

#[derive(Debug, Clone)]
enum Slot {
    Valid(Record),
    Corrupt(String),
    Stray(String),
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by file name (`<target>.pid` or the stray's name).
    entries: HashMap<String, Slot>,
    /// Injected one-shot failures still pending, per operation.
    failures: HashMap<StoreOp, usize>,
    /// Calls made, per operation (failed ones included).
    calls: HashMap<StoreOp, usize>,
}

/// A [`PidStore`] that keeps everything in memory: no disk I/O at all.
///
/// It behaves like the SQLite backend as seen through the trait (it keeps identity and
/// metadata, sets `written_at` on `put`), and it lets a test arrange what a real run
/// directory can hold but the trait cannot write: a corrupt entry
/// ([`insert_corrupt`](Self::insert_corrupt)), a stray file
/// ([`insert_stray`](Self::insert_stray)), or an I/O failure of the next call
/// ([`fail_next`](Self::fail_next)). Paths reported (in [`Corrupt::path`] and errors) are
/// those the PID-file backend would use under `pid_dir`, which is never touched.
///
/// Nothing survives the value being dropped. To simulate a restart of the layer above,
/// keep the store in an `Arc` and hand a clone of it to the new instance.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use dms_store::{Stored, MemoryStore, Pid, PidStore, Record, TargetId};
/// let store = MemoryStore::new("/run/dms/s3".into());
/// let t: TargetId = "target-123".parse().unwrap();
/// store.put(&t, &Record::bare(Pid::new(12345).unwrap())).await.unwrap();
/// assert!(matches!(store.get(&t).await.unwrap(), Some(Stored::Valid(r)) if r.pid.get() == 12345));
/// store.insert_corrupt(&t, "is a FIFO");
/// assert!(matches!(store.get(&t).await.unwrap(), Some(Stored::Corrupt(c)) if c.reason == "is a FIFO"));
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    pid_dir: PathBuf,
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store that reports paths under `pid_dir` (normally `<run-dir>/s3`).
    /// Nothing is created there.
    pub fn new(pid_dir: PathBuf) -> MemoryStore {
        MemoryStore {
            pid_dir,
            state: Mutex::new(State::default()),
        }
    }

    /// Makes `target`'s entry corrupt, as if its PID file held garbage or were a symlink,
    /// FIFO or directory; `reason` is reported in [`Corrupt::reason`]. Replaces any record.
    pub fn insert_corrupt(&self, target: &TargetId, reason: impl Into<String>) {
        self.lock()
            .entries
            .insert(file_name(target), Slot::Corrupt(reason.into()));
    }

    /// Adds a stray entry: a `*.pid` file whose name is not a valid target ID, reported by
    /// `list` as [`Entry::Stray`] with `reason`.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `file_name` is not a single component ending in `.pid`, or
    /// is a valid target's file name (use [`insert_corrupt`](Self::insert_corrupt)).
    pub fn insert_stray(&self, file_name: &str, reason: impl Into<String>) -> Result<()> {
        check_stray_name(file_name)?;
        self.lock()
            .entries
            .insert(file_name.to_owned(), Slot::Stray(reason.into()));
        Ok(())
    }

    /// Makes the next call of `op` fail with an I/O error (one-shot; calling this `n`
    /// times fails the next `n` calls). The failed call changes nothing.
    pub fn fail_next(&self, op: StoreOp) {
        *self.lock().failures.entry(op).or_default() += 1;
    }

    /// How many times `op` was called, failed calls included.
    pub fn calls(&self, op: StoreOp) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// The number of entries (targets, corrupt ones and strays).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether there is no entry at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // mutation is a single insert/remove), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call and takes an injected failure, if one is pending.
    fn begin(&self, op: StoreOp, path: &Path) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        *st.calls.entry(op).or_default() += 1;
        if let Some(n) = st.failures.get_mut(&op).filter(|n| **n > 0) {
            *n -= 1;
            return Err(Error::Io {
                op: op.name(),
                path: path.to_owned(),
                source: std::io::Error::other("failure injected by MemoryStore::fail_next"),
                hint: Some("this is a test of the in-memory store; nothing was changed".into()),
            });
        }
        Ok(st)
    }
}

impl MemoryStore {
    /// Every entry (the one batch of [`PidStore::list`]).
    fn entries(&self) -> Result<Vec<Entry>> {
        let st = self.begin(StoreOp::List, &self.pid_dir)?;
        let sorted: BTreeMap<&str, (&String, &Slot)> = st
            .entries
            .iter()
            .map(|(name, slot)| (sort_key(name), (name, slot)))
            .collect();
        Ok(sorted
            .into_values()
            .map(|(name, slot)| {
                let target = || {
                    TargetId::new(sort_key(name)).expect("only valid targets are stored as such")
                };
                match slot {
                    Slot::Valid(r) => Entry::Target {
                        target: target(),
                        state: Stored::Valid(r.clone()),
                    },
                    Slot::Corrupt(reason) => Entry::Target {
                        target: target(),
                        state: Stored::Corrupt(Corrupt {
                            path: self.pid_dir.join(name),
                            reason: reason.clone(),
                        }),
                    },
                    Slot::Stray(reason) => Entry::Stray {
                        file_name: name.clone(),
                        reason: reason.clone(),
                    },
                }
            })
            .collect())
    }
}

fn file_name(target: &TargetId) -> String {
    format!("{}{PID_SUFFIX}", target.as_str())
}

#[async_trait]
impl PidStore for MemoryStore {
    async fn put(&self, target: &TargetId, record: &Record) -> Result<()> {
        let path = target.pid_file_in(&self.pid_dir);
        let mut st = self.begin(StoreOp::Put, &path)?;
        let mut record = record.clone();
        record.written_at = Some(SystemTime::now());
        st.entries.insert(file_name(target), Slot::Valid(record));
        Ok(())
    }

    async fn get(&self, target: &TargetId) -> Result<Option<Stored>> {
        let path = target.pid_file_in(&self.pid_dir);
        let st = self.begin(StoreOp::Get, &path)?;
        Ok(match st.entries.get(&file_name(target)) {
            None | Some(Slot::Stray(_)) => None,
            Some(Slot::Valid(r)) => Some(Stored::Valid(r.clone())),
            Some(Slot::Corrupt(reason)) => Some(Stored::Corrupt(Corrupt {
                path,
                reason: reason.clone(),
            })),
        })
    }

    async fn remove(&self, target: &TargetId) -> Result<bool> {
        let path = target.pid_file_in(&self.pid_dir);
        let mut st = self.begin(StoreOp::Remove, &path)?;
        Ok(st.entries.remove(&file_name(target)).is_some())
    }

    async fn list(&self, batches: tokio::sync::mpsc::Sender<Vec<Entry>>) -> Result<()> {
        let entries = self.entries()?;
        // A receiver gone is not an error of the store.
        let _ = batches.send(entries).await;
        Ok(())
    }

    async fn remove_stray(&self, file_name: &str) -> Result<bool> {
        check_stray_name(file_name)?;
        let path = self.pid_dir.join(file_name);
        let mut st = self.begin(StoreOp::RemoveStray, &path)?;
        Ok(st.entries.remove(file_name).is_some())
    }

    fn pid_dir(&self) -> &Path {
        &self.pid_dir
    }

    fn exists(&self, target: &TargetId) -> bool {
        self.lock().entries.contains_key(&file_name(target))
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pid;

    fn t(s: &str) -> TargetId {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn keeps_identity_and_metadata() {
        let store = MemoryStore::new("/nonexistent/s3".into());
        let mut rec = Record::bare(Pid::new(4242).unwrap());
        rec.identity = Some(crate::Identity {
            start_ticks: 99,
            boot_id: "b".into(),
        });
        rec.meta.cmdline = Some(vec!["sleep".into(), "60".into()]);
        store.put(&t("a"), &rec).await.unwrap();
        let Some(Stored::Valid(got)) = store.get(&t("a")).await.unwrap() else {
            panic!("absent")
        };
        assert!(got.written_at.is_some());
        assert_eq!(got.identity, rec.identity);
        assert_eq!(got.meta, rec.meta);
        assert!(!Path::new("/nonexistent").exists(), "no disk I/O");
    }

    #[tokio::test]
    async fn injected_corrupt_and_stray_entries_are_listed() {
        let store = MemoryStore::new("/run/x/s3".into());
        store.insert_corrupt(&t("bad"), "is a FIFO");
        store.insert_stray("a b.pid", "bad name").unwrap();
        assert!(store.insert_stray("good.pid", "x").is_err());
        assert!(store.insert_stray("../x.pid", "x").is_err());
        let list = crate::list_sorted(&store).await.unwrap();
        assert_eq!(list.len(), 2);
        assert!(matches!(&list[0], Entry::Stray { file_name, .. } if file_name == "a b.pid"));
        assert!(matches!(
            &list[1],
            Entry::Target { target, state: Stored::Corrupt(c) }
                if target.as_str() == "bad" && c.reason == "is a FIFO"
                    && c.path == Path::new("/run/x/s3/bad.pid")
        ));
        assert!(store.remove_stray("a b.pid").await.unwrap());
        assert!(store.remove(&t("bad")).await.unwrap());
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn injected_failures_are_one_shot_and_change_nothing() {
        let store = MemoryStore::new("/run/x/s3".into());
        store.fail_next(StoreOp::Put);
        let rec = Record::bare(Pid::new(77).unwrap());
        let err = store.put(&t("a"), &rec).await.unwrap_err();
        assert!(err.to_string().contains("/run/x/s3/a.pid"), "{err}");
        assert_eq!(store.get(&t("a")).await.unwrap(), None);
        store.put(&t("a"), &rec).await.unwrap();
        assert_eq!(store.calls(StoreOp::Put), 2);
        assert_eq!(store.calls(StoreOp::Get), 1);
    }
}
