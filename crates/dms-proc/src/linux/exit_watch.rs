//! The shared exit watcher of [`LinuxSpawner`]: one epoll set holding a pidfd per
//! watched process, polled by one tokio task through the reactor. A pidfd becomes
//! readable when its process exits (a zombie included), so nothing is polled on a timer.

use super::{pidfd_open, LinuxSpawner, Verified};
use crate::{ExitSender, ExitWatch, Pid, ProcError, ProcIdentity};
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::io::Errno;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;

/// Events taken from the epoll set per `epoll_wait`.
const BATCH: usize = 64;

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct LinuxExitWatch {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

#[derive(Debug)]
struct Shared {
    spawner: LinuxSpawner,
    epoll: AsyncFd<OwnedFd>,
    /// The watched processes by PID. An event carries the PID and the token of its
    /// watch, so an event of an earlier watch of a PID is never taken for a later one.
    watched: Mutex<HashMap<Pid, Watched>>,
    next_token: AtomicU32,
    /// Dropped when the task stops on an error, so that the receiver sees the channel
    /// close and stops trusting the watcher.
    exited: Mutex<Option<ExitSender>>,
}

#[derive(Debug)]
struct Watched {
    pidfd: OwnedFd,
    start_ticks: u64,
    token: u32,
}

fn os_error(op: &'static str, pid: Pid, e: Errno) -> ProcError {
    ProcError::Os {
        op,
        pid,
        source: std::io::Error::from_raw_os_error(e.raw_os_error()),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Pid, Watched>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self, pid: Pid, start_ticks: u64) {
        self.send(self.spawner.identity(pid, start_ticks));
    }

    fn send(&self, who: ProcIdentity) {
        let exited = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = exited.as_ref() {
            // A closed receiver means nobody listens any more: nothing to do.
            let _ = tx.send(who);
        }
    }

    /// The task stops: close the channel.
    fn stop(&self) {
        self.exited.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Takes the ready events and reports their processes. `Ok(true)`: the batch was
    /// full, more may be ready.
    fn drain(&self) -> Result<bool, Errno> {
        let mut events = [Event {
            flags: EventFlags::empty(),
            data: EventData::new_u64(0),
        }; BATCH];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let n = loop {
            match epoll::wait(self.epoll.get_ref(), &mut events[..], Some(&zero)) {
                Ok(n) => break n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        };
        for event in &events[..n] {
            let data = event.data.u64();
            let (raw_pid, token) = (data as u32 as i32, (data >> 32) as u32);
            let Ok(pid) = Pid::new(raw_pid.into()) else {
                continue;
            };
            let gone = {
                let mut watched = self.lock();
                match watched.get(&pid) {
                    Some(w) if w.token == token => watched.remove(&pid),
                    _ => None,
                }
            };
            if let Some(w) = gone {
                let _ = epoll::delete(self.epoll.get_ref(), &w.pidfd);
                self.report(pid, w.start_ticks);
            }
        }
        Ok(n == BATCH)
    }
}

impl LinuxExitWatch {
    /// Creates the epoll set and starts its task in the current tokio runtime.
    pub(super) fn start(spawner: LinuxSpawner, exited: ExitSender) -> Result<Self, ProcError> {
        let epoll = epoll::create(CreateFlags::CLOEXEC).map_err(|e| ProcError::ExitWatch {
            op: "create the epoll set",
            source: std::io::Error::from_raw_os_error(e.raw_os_error()),
        })?;
        let epoll = super::readable_fd(epoll).map_err(|e| ProcError::ExitWatch {
            op: "register with the tokio reactor the epoll set",
            source: e.into_parts().1,
        })?;
        let shared = Arc::new(Shared {
            spawner,
            epoll,
            watched: Mutex::default(),
            next_token: AtomicU32::new(0),
            exited: Mutex::new(Some(exited)),
        });
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                loop {
                    let mut ready = match shared.epoll.readable().await {
                        Ok(ready) => ready,
                        Err(e) => {
                            tracing::error!(error = %e, "exit watcher: cannot poll its epoll set; it stops (memory hits will probe)");
                            shared.stop();
                            return;
                        }
                    };
                    match shared.drain() {
                        Ok(true) => {}
                        Ok(false) => ready.clear_ready(),
                        Err(e) => {
                            tracing::error!(error = %e, "exit watcher: epoll_wait failed; it stops (memory hits will probe)");
                            shared.stop();
                            return;
                        }
                    }
                }
            }
        })
        .abort_handle();
        Ok(LinuxExitWatch { shared, task })
    }
}

impl Drop for LinuxExitWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ExitWatch for LinuxExitWatch {
    fn watch(&self, who: &ProcIdentity) -> Result<(), ProcError> {
        let shared = &self.shared;
        // Open first, then check the identity: the pidfd then refers to the verified
        // process, whatever happens to the PID afterwards.
        let pidfd = match pidfd_open(who.pid)? {
            Some(fd) => fd,
            None => {
                self.unwatch(who);
                shared.send(who.clone());
                return Ok(());
            }
        };
        match shared.spawner.verify(who)? {
            Verified::Alive(_) => {}
            Verified::Gone | Verified::Mismatch => {
                self.unwatch(who);
                shared.send(who.clone());
                return Ok(());
            }
        }
        let token = shared.next_token.fetch_add(1, Ordering::Relaxed);
        let data = EventData::new_u64(u64::from(who.pid.get() as u32) | (u64::from(token) << 32));
        let mut watched = shared.lock();
        epoll::add(shared.epoll.get_ref(), &pidfd, data, EventFlags::IN).map_err(|e| {
            os_error(
                "add to the exit watcher's epoll set the pidfd of",
                who.pid,
                e,
            )
        })?;
        let old = watched.insert(
            who.pid,
            Watched {
                pidfd,
                start_ticks: who.start_ticks,
                token,
            },
        );
        drop(watched);
        if let Some(old) = old {
            let _ = epoll::delete(shared.epoll.get_ref(), &old.pidfd);
        }
        Ok(())
    }

    fn unwatch(&self, who: &ProcIdentity) {
        let removed = {
            let mut watched = self.shared.lock();
            match watched.get(&who.pid) {
                Some(w) if w.start_ticks == who.start_ticks => watched.remove(&who.pid),
                _ => None,
            }
        };
        if let Some(w) = removed {
            let _ = epoll::delete(self.shared.epoll.get_ref(), &w.pidfd);
        }
    }

    fn watched(&self) -> usize {
        self.shared.lock().len()
    }
}
