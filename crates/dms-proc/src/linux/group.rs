//! Stopping a helper's whole process group ([`LinuxSpawner`]'s
//! [`Spawner::terminate_with`](crate::Spawner::terminate_with)).
//!
//! A helper that leads its process group is stopped with its group: SIGTERM (followed by
//! SIGCONT), the grace, then SIGKILL, until the leader *and every member found in the
//! group* are gone. A member that ignores SIGTERM is not left running because its leader
//! died of it, and the outcome lists SIGKILL when it was needed for the last member.
//!
//! # Finding members without trusting a number
//!
//! Members are found by scanning `/proc` for processes whose process group is the
//! leader's PID `N`. A number alone proves nothing, so each member is proven:
//!
//! 1. its `stat` shows group `N`; then a pidfd is opened; then its `stat` is read again
//!    and must show the same start ticks and group `N`, not a zombie. The pidfd now
//!    refers to exactly that process for as long as it is held, and every signal to the
//!    member goes through it (never `kill(PID)`), after one more check that it is still
//!    in group `N`;
//! 2. the group itself must be the helper's: after the scan, an *anchor* (the leader, or
//!    a member proven earlier, by its start ticks) must still be in group `N`. The kernel
//!    never hands out a group ID as a new PID while the group has members, so if an
//!    anchor stayed in group `N` from its proof until now, group `N` has been the
//!    helper's all along, and every process seen in it meanwhile was a member.
//!
//! When no anchor is left (every known member and the leader exited, but a member forked
//! meanwhile may live on, such as a child the leader started on SIGTERM just before it
//! exited), a process in group `N` counts only if it started (start ticks, rounded down
//! to the clock tick) no later than the last moment an anchor was proven in the group
//! or seen exiting: it was born while the group was the helper's.
//!
//! Residuals, stated honestly: (a) an anchor seen exiting may have exited up to the
//! latency of that observation plus one clock tick (10 ms) earlier; a process in group
//! `N` born in that window from a *new* group `N` would be taken for a member, which
//! needs the old group to empty, the PID space to wrap around to `N` and the newcomer to
//! make itself a group leader and fork, all within those milliseconds; (b) the anchor
//! argument assumes an anchor that left group `N` (`setpgid`) did not join a new group
//! `N` in its own session meanwhile.

use super::{pidfd_open, read_stat, readable_fd, rustix_signal, since_boot, LinuxSpawner};
use crate::{
    Pid, ProcError, ProcIdentity, Signal, SignalOutcome, Spawner, StopOutcome, WaitOutcome,
};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::time::Duration;
use tokio::time::Instant;

/// A member of the helper's group, held by a verified pidfd.
struct Member {
    identity: ProcIdentity,
    pidfd: OwnedFd,
}

/// The helper's process group while it is being stopped.
struct Group {
    /// The group ID: the leader's PID.
    pgid: i32,
    leader: ProcIdentity,
    members: Vec<Member>,
    /// Start ticks at or below which a process in the group is proven a member (see the
    /// module docs); `None` until the group was first proven.
    born_by: Option<u64>,
}

/// Clock ticks since boot now (the clock of a process's start ticks), rounded down.
fn ticks_now() -> u64 {
    let tps = rustix::param::clock_ticks_per_second().max(1) as u128;
    let ticks = since_boot().as_nanos() * tps / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Whether `pid` with `start_ticks` is (still) in group `pgid`, a zombie included (a
/// zombie still holds its group).
fn in_group(pid: Pid, start_ticks: u64, pgid: i32) -> bool {
    matches!(read_stat(pid), Ok(Some(s)) if s.starttime == start_ticks && s.pgrp == pgid)
}

/// Whether `pid` with `start_ticks` is alive (not a zombie) and in group `pgid`.
fn live_in_group(pid: Pid, start_ticks: u64, pgid: i32) -> bool {
    matches!(read_stat(pid), Ok(Some(s))
        if s.starttime == start_ticks && s.pgrp == pgid && !matches!(s.state, 'Z' | 'X' | 'x'))
}

impl Group {
    /// Whether the group is provably empty: `kill(-pgid, 0)` answers `ESRCH`. Signal 0
    /// sends nothing (it is the kernel's existence test, as `kill(pid, 0)` is for one
    /// process); it only lets a stop skip the scan of `/proc`, which reads the stat of
    /// every process on the host: a scan per stop made `cleanup --all` of 1,000 helpers
    /// quadratic (two million stat reads; stops then outlasted their SIGKILL wait). Any
    /// other answer (a member, a zombie member not yet reaped, a new group of that
    /// number) falls back to the scan, which proves what it finds.
    fn provably_empty(&self) -> bool {
        let pgid = rustix::process::Pid::from_raw(self.pgid).expect("a group ID is positive");
        rustix::process::test_kill_process_group(pgid) == Err(Errno::SRCH)
    }

    /// The last anchor was just seen exiting: a process born until now was born while
    /// the group was the helper's (see the module docs).
    fn anchor_exited(&mut self) {
        if self.born_by.is_some() {
            self.born_by = Some(ticks_now());
        }
    }

    /// Scans `/proc` for members not yet known and proves them (module docs). Returns
    /// how many were added.
    fn rescan(&mut self, spawner: &LinuxSpawner) -> usize {
        let own = std::process::id() as i32;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut found = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|&p| p != own && p != self.pgid)
                .and_then(|p| Pid::try_from(p).ok())
            else {
                continue;
            };
            // Known already, or one dms must never signal (an ancestor of dms that sits
            // in the group: the group signal of the leader is the kernel's, this is ours).
            if self.members.iter().any(|m| m.identity.pid == pid)
                || spawner.protected(pid).is_some()
            {
                continue;
            }
            let Ok(Some(first)) = read_stat(pid) else {
                continue;
            };
            if first.pgrp != self.pgid || matches!(first.state, 'Z' | 'X' | 'x') {
                continue;
            }
            let pidfd = match pidfd_open(pid) {
                Ok(Some(fd)) => fd,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(pgid = self.pgid, member = %pid, error = %e,
                        "cannot open a pidfd of a member of the helper's group; it is not stopped");
                    continue;
                }
            };
            if !live_in_group(pid, first.starttime, self.pgid) {
                continue;
            }
            found.push(Member {
                identity: spawner.identity(pid, first.starttime),
                pidfd,
            });
        }
        // The proof of the group: an anchor still in it after the scan.
        let anchored = in_group(self.leader.pid, self.leader.start_ticks, self.pgid)
            || self
                .members
                .iter()
                .any(|m| in_group(m.identity.pid, m.identity.start_ticks, self.pgid));
        if anchored {
            self.born_by = Some(ticks_now());
        } else {
            match self.born_by {
                Some(limit) => found.retain(|m| m.identity.start_ticks <= limit),
                None => found.clear(),
            }
        }
        for m in &found {
            tracing::debug!(pgid = self.pgid, member = %m.identity.pid,
                start_ticks = m.identity.start_ticks, "member of the helper's process group");
        }
        let n = found.len();
        self.members.extend(found);
        n
    }

    /// Sends `signal` (SIGTERM followed by SIGCONT) to every member still in the group,
    /// through its pidfd. Returns whether any was delivered.
    fn signal_members(&self, signal: Signal) -> bool {
        let mut delivered = false;
        for m in &self.members {
            // Still that process (the pidfd says) and still in the group (its stat says).
            if !live_in_group(m.identity.pid, m.identity.start_ticks, self.pgid) {
                continue;
            }
            let sent = rustix::process::pidfd_send_signal(&m.pidfd, rustix_signal(signal));
            match sent {
                Ok(()) => {
                    delivered = true;
                    if signal == Signal::Term {
                        let _ = rustix::process::pidfd_send_signal(
                            &m.pidfd,
                            rustix::process::Signal::CONT,
                        );
                    }
                    tracing::info!(pgid = self.pgid, member = %m.identity.pid,
                        signal = signal.name(), "signal to a member of the helper's group");
                }
                Err(Errno::SRCH) => {}
                Err(e) => {
                    tracing::warn!(pgid = self.pgid, member = %m.identity.pid, error = %e,
                        "cannot signal a member of the helper's group")
                }
            }
        }
        delivered
    }

    /// Waits until every known member has exited (a zombie counts), or `deadline`.
    /// Returns whether they all did.
    async fn members_exited(&mut self, deadline: Instant) -> bool {
        let mut left = Vec::new();
        for m in std::mem::take(&mut self.members) {
            if !live_in_group(m.identity.pid, m.identity.start_ticks, self.pgid) {
                // Exited, or left the group: no longer a member either way. (It is kept
                // as a possible anchor only while it is in the group.)
                continue;
            }
            left.push(m);
        }
        let mut all = true;
        for m in left {
            let Member { identity, pidfd } = m;
            let exited = match readable_fd(pidfd) {
                Ok(afd) => {
                    let exited = tokio::time::timeout_at(deadline, afd.readable())
                        .await
                        .is_ok();
                    self.members.push(Member {
                        identity,
                        pidfd: afd.into_inner(),
                    });
                    exited
                }
                Err(e) => {
                    // The reactor refused it: check the stat until the deadline.
                    let (pidfd, _) = e.into_parts();
                    let mut exited = false;
                    while Instant::now() < deadline {
                        if !live_in_group(identity.pid, identity.start_ticks, self.pgid) {
                            exited = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    self.members.push(Member { identity, pidfd });
                    exited
                }
            };
            all &= exited;
        }
        all
    }
}

impl LinuxSpawner {
    /// See [`Spawner::group_members`](crate::Spawner::group_members).
    pub(super) fn proven_group_members(&self, leader: &ProcIdentity) -> Vec<ProcIdentity> {
        if *leader.boot_id != *self.boot_id
            || !live_in_group(leader.pid, leader.start_ticks, leader.pid.get())
        {
            return Vec::new();
        }
        let mut group = Group {
            pgid: leader.pid.get(),
            leader: leader.clone(),
            members: Vec::new(),
            born_by: None,
        };
        group.rescan(self);
        group.members.into_iter().map(|m| m.identity).collect()
    }

    /// See the [module docs](self).
    pub(super) async fn terminate_group(
        &self,
        who: &ProcIdentity,
        grace: Duration,
        kill_wait: Duration,
    ) -> Result<StopOutcome, ProcError> {
        let mut out = StopOutcome::default();
        let mut group = Group {
            pgid: who.pid.get(),
            leader: who.clone(),
            members: Vec::new(),
            born_by: None,
        };
        // Only a helper that leads its group has one to stop (an adopted process inside
        // someone else's group is stopped alone).
        let leads =
            *who.boot_id == *self.boot_id && live_in_group(who.pid, who.start_ticks, who.pid.get());
        if leads {
            // The leader, just proven in its group, is the anchor: a process in the group
            // now was born while the group was the helper's. Members are found by a scan
            // only once the leader is gone and the group is not provably empty; until
            // then the leader's group signal reaches them all.
            group.born_by = Some(ticks_now());
        }
        // Set once the leader's exit was seen (its status is then known).
        let mut leader_exited = false;
        for (round, (signal, wait)) in [(Signal::Term, grace), (Signal::Kill, kill_wait)]
            .into_iter()
            .enumerate()
        {
            let deadline = Instant::now() + wait;
            let mut delivered = false;
            let mut group_signalled = false;
            if !leader_exited {
                match self.signal(who, signal).await? {
                    SignalOutcome::Delivered => {
                        delivered = true;
                        // A leader of its group is signalled with its group (a helper
                        // leads its session, so it cannot leave its group).
                        group_signalled = leads;
                    }
                    SignalOutcome::Gone => {}
                    SignalOutcome::Mismatch if round == 0 => {
                        out.mismatch = true;
                        return Ok(out);
                    }
                    // The leader exited and its PID was reused during the grace: its
                    // members are still stopped.
                    SignalOutcome::Mismatch => {}
                }
            }
            if !group_signalled && group.signal_members(signal) {
                delivered = true;
            }
            loop {
                if !leader_exited {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.wait_exit(who, Some(left)).await? {
                        WaitOutcome::Exited(status) => {
                            out.status = Some(status);
                            leader_exited = true;
                            group.anchor_exited();
                        }
                        WaitOutcome::TimedOut => break,
                    }
                }
                if !group.members_exited(deadline).await {
                    break;
                }
                group.anchor_exited();
                // Everyone known is gone: a member forked meanwhile may live on.
                if group.provably_empty() || group.rescan(self) == 0 {
                    out.stopped = true;
                    break;
                }
                if group.signal_members(signal) {
                    delivered = true;
                }
            }
            if delivered {
                out.signals.push(signal);
            }
            if out.stopped {
                return Ok(out);
            }
            if leads && !group.provably_empty() {
                group.rescan(self);
            }
        }
        Ok(out)
    }
}
