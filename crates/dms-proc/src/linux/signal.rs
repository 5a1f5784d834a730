//! Signalling a verified process or its group through a pidfd, and the processes dms
//! refuses to signal (see the [module docs](super) of `linux`).

use super::probe::{pidfd_open, read_stat, Verified};
use super::LinuxSpawner;
use crate::{Pid, ProcError, ProcIdentity, Signal, SignalOutcome};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::io::Errno;
use std::io;

/// `PIDFD_SIGNAL_PROCESS_GROUP` from `<linux/pidfd.h>` (Linux 6.9).
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

impl LinuxSpawner {
    pub(super) async fn send_signal(
        &self,
        who: &ProcIdentity,
        signal: Signal,
    ) -> Result<SignalOutcome, ProcError> {
        if u32::try_from(who.pid.get()) == Ok(std::process::id()) {
            return Err(ProcError::SelfPid(who.pid));
        }
        if let Some(why) = self.protected_why(who.pid) {
            return Err(ProcError::Protected { pid: who.pid, why });
        }
        if *who.boot_id != *self.boot_id {
            tracing::info!(pid = %who.pid, "not signalling: recorded in another boot");
            return Ok(SignalOutcome::Mismatch);
        }
        let Some(pidfd) = pidfd_open(who.pid)? else {
            return Ok(SignalOutcome::Gone);
        };
        let stat = match self.verify(who)? {
            Verified::Gone => return Ok(SignalOutcome::Gone),
            Verified::Mismatch => {
                tracing::warn!(
                    pid = %who.pid,
                    start_ticks = who.start_ticks,
                    "not signalling: the PID now belongs to another process"
                );
                return Ok(SignalOutcome::Mismatch);
            }
            Verified::Alive(stat) => stat,
        };
        let leads_group = stat.pgrp == who.pid.get();
        let denied = || ProcError::PermissionDenied {
            pid: who.pid,
            what: format!("send {}", signal.name()),
        };
        let os = |e: Errno| ProcError::Os {
            op: "pidfd_send_signal to",
            pid: who.pid,
            source: e.into(),
        };
        let to_leader = || match rustix::process::pidfd_send_signal(&pidfd, rustix_signal(signal)) {
            Ok(()) => Ok(SignalOutcome::Delivered),
            Err(Errno::SRCH) => Ok(SignalOutcome::Gone),
            Err(Errno::PERM) => Err(denied()),
            Err(e) => Err(os(e)),
        };
        let outcome = if leads_group {
            match pidfd_send_signal_flags(&pidfd, signal, PIDFD_SIGNAL_PROCESS_GROUP) {
                Ok(()) => Ok(SignalOutcome::Delivered),
                // The leader left its group meanwhile (or the group is gone): the leader
                // alone, still through the verified pidfd.
                Err(Errno::SRCH) => to_leader(),
                Err(Errno::PERM) => Err(denied()),
                Err(Errno::INVAL) => {
                    // Kernel < 6.9: leader through the pidfd, then the group by number
                    // while holding the verified pidfd (see the module docs for the race).
                    let out = to_leader()?;
                    if out == SignalOutcome::Delivered {
                        let pgid = rustix::process::Pid::from_raw(who.pid.get())
                            .expect("a Pid is positive");
                        match rustix::process::kill_process_group(pgid, rustix_signal(signal)) {
                            Ok(()) | Err(Errno::SRCH) | Err(Errno::PERM) => {}
                            Err(e) => {
                                tracing::warn!(pid = %who.pid, error = %e, "kill(-pgid) failed")
                            }
                        }
                    }
                    Ok(out)
                }
                Err(e) => Err(os(e)),
            }
        } else {
            to_leader()
        }?;
        if signal == Signal::Term && outcome == SignalOutcome::Delivered {
            // As systemd does: a stopped (SIGSTOP) helper cannot act on SIGTERM until it
            // is continued. Same target as the SIGTERM (the group when it leads one).
            let cont = rustix::process::Signal::CONT;
            match leads_group
                .then(|| pidfd_send_raw(&pidfd, cont.as_raw(), PIDFD_SIGNAL_PROCESS_GROUP))
            {
                Some(Ok(())) => {}
                // Kernel < 6.9, as for the SIGTERM: the leader, then the group by number
                // while holding the verified pidfd.
                Some(Err(Errno::INVAL)) => {
                    let _ = rustix::process::pidfd_send_signal(&pidfd, cont);
                    let pgid =
                        rustix::process::Pid::from_raw(who.pid.get()).expect("a Pid is positive");
                    let _ = rustix::process::kill_process_group(pgid, cont);
                }
                // The group is gone (or the leader left it): the leader alone.
                Some(Err(_)) | None => {
                    let _ = rustix::process::pidfd_send_signal(&pidfd, cont);
                }
            }
        }
        tracing::info!(
            pid = %who.pid,
            start_ticks = who.start_ticks,
            signal = signal.name(),
            group = leads_group,
            ?outcome,
            "signal"
        );
        Ok(outcome)
    }

    pub(super) fn protected_why(&self, pid: Pid) -> Option<String> {
        if u32::try_from(pid.get()) == Ok(std::process::id()) {
            return Some("it is dms itself".into());
        }
        // Only a PID that was an ancestor can be one, if it is still that process: one
        // read of /proc for such a PID, none for any other (every entry of a scan).
        let &(_, ticks) = self.ancestors.iter().find(|(p, _)| *p == pid.get())?;
        // (Start ticks unknown: the ancestor's stat could not be read; as the walk did,
        // protect the PID itself.)
        let still = ticks == u64::MAX
            || matches!(read_stat(pid), Ok(Some(stat)) if stat.starttime == ticks);
        still
            .then(|| "it is an ancestor of dms (the process that runs dms, or one above it)".into())
    }
}

pub(super) fn rustix_signal(signal: Signal) -> rustix::process::Signal {
    match signal {
        Signal::Term => rustix::process::Signal::TERM,
        Signal::Kill => rustix::process::Signal::KILL,
    }
}

/// `pidfd_send_signal(fd, sig, NULL, flags)`; rustix has no flags argument.
pub(super) fn pidfd_send_signal_flags(
    fd: &OwnedFd,
    signal: Signal,
    flags: libc::c_uint,
) -> Result<(), Errno> {
    pidfd_send_raw(fd, rustix_signal(signal).as_raw(), flags)
}

/// [`pidfd_send_signal_flags`] with a raw signal number.
pub(super) fn pidfd_send_raw(fd: &OwnedFd, sig: i32, flags: libc::c_uint) -> Result<(), Errno> {
    // SAFETY: plain syscall with a valid descriptor, a valid signal and a null siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
    }
}
