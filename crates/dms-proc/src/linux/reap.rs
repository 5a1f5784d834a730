//! Reaping our children and waiting for any verified process to exit (see the [module
//! docs](super) of `linux`).

use super::probe::{pidfd_open, Verified};
use super::LinuxSpawner;
use crate::{ExitStatus, ProcError, ProcIdentity, WaitOutcome};
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::{WaitId, WaitIdOptions};
use std::io;
use std::time::Duration;
use tokio::io::unix::{AsyncFd, AsyncFdRegisterError};
use tokio::io::Interest;

impl LinuxSpawner {
    pub(super) async fn wait_for_exit(
        &self,
        who: &ProcIdentity,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, ProcError> {
        let wait = async {
            if let Some(mut rx) = self.child(who) {
                // Our child: the reaper knows its status.
                let reaped = rx.wait_for(Option::is_some).await.map(|s| *s);
                return match reaped {
                    Ok(status) => Ok(WaitOutcome::Exited(status.unwrap_or(ExitStatus::Unknown))),
                    // The reaper task is gone (runtime shutting down): poll the pidfd.
                    Err(_) => self.wait_foreign(who).await,
                };
            }
            self.wait_foreign(who).await
        };
        match timeout {
            None => wait.await,
            Some(limit) => tokio::time::timeout(limit, wait)
                .await
                .unwrap_or(Ok(WaitOutcome::TimedOut)),
        }
    }

    /// Waits for a process that is not (or no longer) tracked as our child, by polling a
    /// verified pidfd.
    async fn wait_foreign(&self, who: &ProcIdentity) -> Result<WaitOutcome, ProcError> {
        let gone = Ok(WaitOutcome::Exited(ExitStatus::Unknown));
        let Some(pidfd) = pidfd_open(who.pid)? else {
            return gone;
        };
        match self.verify(who)? {
            Verified::Gone | Verified::Mismatch => return gone,
            Verified::Alive(_) => {}
        }
        match readable_fd(pidfd) {
            Ok(afd) => {
                // Readable means exited; the guard is dropped with the descriptor.
                let _exited = afd.readable().await.map_err(|source| ProcError::Os {
                    op: "poll the pidfd of",
                    pid: who.pid,
                    source,
                })?;
                gone
            }
            Err(e) => {
                // The reactor refused this fd: poll it on the blocking pool instead. (On a
                // timeout that thread keeps waiting until the process exits.)
                let (fd, _) = e.into_parts();
                let pid = who.pid;
                tokio::task::spawn_blocking(move || loop {
                    let mut fds = [rustix::event::PollFd::new(
                        &fd,
                        rustix::event::PollFlags::IN,
                    )];
                    match rustix::event::poll(&mut fds, None) {
                        Ok(_) => return Ok(()),
                        Err(Errno::INTR) => continue,
                        Err(e) => return Err(e),
                    }
                })
                .await
                .map_err(|e| ProcError::Os {
                    op: "poll the pidfd of",
                    pid,
                    source: io::Error::other(e.to_string()),
                })?
                .map_err(|e| ProcError::Os {
                    op: "poll the pidfd of",
                    pid,
                    source: e.into(),
                })?;
                gone
            }
        }
    }
}

/// Registers an owned descriptor with the tokio reactor for readability.
pub(super) fn readable_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, AsyncFdRegisterError<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that it alone closes, and its
    // `as_raw_fd` always returns the same number while the `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
}

pub(super) fn convert_status(st: &rustix::process::WaitIdStatus) -> ExitStatus {
    if let Some(code) = st.exit_status() {
        ExitStatus::Code(code)
    } else if let Some(sig) = st.terminating_signal() {
        ExitStatus::Signaled(sig)
    } else {
        ExitStatus::Unknown
    }
}

/// Blocking `waitpid(pid)`: the fallback reaper.
pub(super) fn blocking_reap(pid: i32) -> ExitStatus {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return ExitStatus::Unknown;
    }
    if libc::WIFEXITED(status) {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        ExitStatus::Signaled(libc::WTERMSIG(status))
    } else {
        ExitStatus::Unknown
    }
}

/// Waits for our child to exit and reaps it.
pub(super) async fn reap(pid: i32, pidfd: Option<OwnedFd>) -> ExitStatus {
    if let Some(fd) = pidfd {
        if let Ok(afd) = readable_fd(fd) {
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    break;
                };
                let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
                match rustix::process::waitid(WaitId::PidFd(afd.get_ref().as_fd()), opts) {
                    Ok(Some(st)) => return convert_status(&st),
                    Ok(None) => guard.clear_ready(),
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        tracing::warn!(pid, error = %e, "waitid on pidfd failed; reaping with waitpid");
                        break;
                    }
                }
            }
        }
    }
    tokio::task::spawn_blocking(move || blocking_reap(pid))
        .await
        .unwrap_or(ExitStatus::Unknown)
}
