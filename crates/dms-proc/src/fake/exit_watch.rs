//! The fake's shared exit watcher.

use super::*;

/// The fake's shared exit watcher: one task that re-checks the watched processes on
/// every change of the table (a fake table changes only when a test changes it).
#[derive(Debug)]
pub(super) struct FakeExitWatch {
    shared: Arc<WatchShared>,
    task: tokio::task::AbortHandle,
}

#[derive(Debug)]
struct WatchShared {
    fake: FakeSpawner,
    /// Start ticks of each watched process, by PID (the boot ID is the fake's).
    watched: Mutex<HashMap<Pid, u64>>,
    exited: ExitSender,
}

impl WatchShared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Pid, u64>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn identity(&self, pid: Pid, start_ticks: u64) -> ProcIdentity {
        ProcIdentity {
            pid,
            start_ticks,
            boot_id: self.fake.inner.config.boot_id.clone(),
        }
    }

    /// Reports (and stops watching) every watched process that has exited.
    fn sweep(&self) {
        let mut watched = self.lock();
        let gone: Vec<(Pid, u64)> = watched
            .iter()
            .filter(|(pid, ticks)| self.fake.exited(&self.identity(**pid, **ticks)).is_some())
            .map(|(pid, ticks)| (*pid, *ticks))
            .collect();
        for (pid, ticks) in gone {
            watched.remove(&pid);
            // A closed receiver means nobody listens any more: nothing to do.
            let _ = self.exited.send(self.identity(pid, ticks));
        }
    }
}

impl FakeExitWatch {
    pub(super) fn start(fake: FakeSpawner, exited: ExitSender) -> FakeExitWatch {
        let mut rx = fake.inner.changed.subscribe();
        let shared = Arc::new(WatchShared {
            fake,
            watched: Mutex::default(),
            exited,
        });
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                loop {
                    // Mark the version seen before looking, so no change is lost.
                    rx.borrow_and_update();
                    shared.sweep();
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        })
        .abort_handle();
        FakeExitWatch { shared, task }
    }
}

impl Drop for FakeExitWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExitWatch for FakeExitWatch {
    fn watch(&self, who: &ProcIdentity) -> Result<(), ProcError> {
        let mut watched = self.shared.lock();
        if who.boot_id == self.shared.fake.inner.config.boot_id
            && self.shared.fake.exited(who).is_none()
        {
            watched.insert(who.pid, who.start_ticks);
        } else {
            watched.remove(&who.pid);
            let _ = self.shared.exited.send(who.clone());
        }
        Ok(())
    }

    fn unwatch(&self, who: &ProcIdentity) {
        let mut watched = self.shared.lock();
        if watched.get(&who.pid) == Some(&who.start_ticks) {
            watched.remove(&who.pid);
        }
    }

    fn watched(&self) -> usize {
        self.shared.lock().len()
    }
}
