//! Following a helper through its startup when it daemonizes (issue 17.2): the startup
//! window that makes this process a child subreaper, the first-wait check, the search
//! for what a leader left behind, and the adoption of an orphan as a child.
//!
//! # Subreaper windows
//!
//! `PR_SET_CHILD_SUBREAPER` is an attribute of the whole process, so it is on while at
//! least one [`StartupWindow`] is open and off otherwise: an orphan of a helper that
//! starts meanwhile is reparented to this process (not to init, where it would be lost),
//! and nothing else is. Orphans found are adopted ([`Spawner::adopt_orphan`]: a reaper
//! task, as for a spawned child); orphans nobody claimed are reaped when they die, by
//! the sweep that runs whenever a window opens or closes or orphans are looked for (so
//! they do not linger as zombies of a long-running manager).
//!
//! # Telling whose orphan it is
//!
//! An orphan is a child of this process that is not in the child table, is not in this
//! process's own session (the children dms forks for itself, such as mount probes, are;
//! a helper's are not: every helper starts a session of its own), and started no
//! earlier than the leader. When no other window was open at any time during this
//! one, that makes it the leader's. When windows overlapped, only an orphan still in
//! the leader's session (it did not `setsid`) is provably the leader's; the others are
//! reported as unattributed and never touched.

use super::{pidfd_open, read_stat, LinuxSpawner};
use crate::{
    Orphan, Orphans, Pid, ProcError, ProcIdentity, Settled, Spawner, StartupWindow, WaitOutcome,
};
use rustix::process::{WaitId, WaitIdOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often [`Spawner::settle`] looks at the leader's state.
const SETTLE_POLL: Duration = Duration::from_millis(1);

/// The open startup windows: id -> whether another window was open at some time
/// during it.
#[derive(Debug, Default)]
pub(super) struct Windows {
    next_id: u64,
    open: HashMap<u64, bool>,
}

/// This process's PID and session (0 when the session lies outside this PID
/// namespace, as `/proc/self/stat` says; `getsid` would say 0 too).
fn own_pid_and_session() -> (i32, i32) {
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    let sid = Pid::try_from(pid)
        .ok()
        .and_then(|p| read_stat(p).ok().flatten())
        .map_or(-1, |s| s.session);
    (pid, sid)
}

/// The numeric entries of `/proc`.
fn proc_pids() -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(|p| Pid::try_from(p).ok())
        .collect()
}

/// Whether `pid` has `/dev/fuse` open.
fn holds_fuse(pid: Pid) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == "/dev/fuse")
    })
}

/// Whether `pid` is a child of ours that the reaper has not reaped yet: its PID is
/// stable (only we can reap it), and it is a helper we started, not an orphan.
fn unreaped_child(children: &std::collections::HashMap<i32, super::Child>, pid: Pid) -> bool {
    children
        .get(&pid.get())
        .is_some_and(|c| c.status.borrow().is_none())
}

impl LinuxSpawner {
    /// Reaps the zombie children that are not in the child table and not of this
    /// process's own session: orphans of helpers nobody adopted.
    fn sweep_orphan_zombies(&self) {
        let (own, own_sid) = own_pid_and_session();
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for pid in proc_pids() {
            // Our running helpers are most of what a daemon's scan meets: skipped without
            // a read of their stat file (a scan per spawn read every one of them, which
            // made the bring-up of N helpers quadratic).
            if unreaped_child(&children, pid) {
                continue;
            }
            let Ok(Some(stat)) = read_stat(pid) else {
                continue;
            };
            if stat.ppid != own
                || stat.state != 'Z'
                || stat.session == own_sid
                || children.contains_key(&pid.get())
            {
                continue;
            }
            let raw = rustix::process::Pid::from_raw(pid.get()).expect("a Pid is positive");
            match rustix::process::waitid(
                WaitId::Pid(raw),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            ) {
                Ok(status) => tracing::debug!(%pid, ?status, "reaped an orphan nobody adopted"),
                Err(e) => tracing::debug!(%pid, error = %e, "cannot reap an orphan"),
            }
        }
    }

    /// See [`Spawner::begin_startup`].
    pub(super) fn open_startup_window(&self) -> StartupWindow {
        let id = {
            let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            if w.open.is_empty() {
                if let Err(e) =
                    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                {
                    tracing::warn!(error = %e, "cannot become a child subreaper; a helper that daemonizes cannot be followed");
                }
            }
            let overlapped = !w.open.is_empty();
            for v in w.open.values_mut() {
                *v = true;
            }
            w.next_id += 1;
            let id = w.next_id;
            w.open.insert(id, overlapped);
            id
        };
        self.sweep_orphan_zombies();
        let spawner = self.clone();
        StartupWindow::new(
            id,
            Box::new(move || {
                let last = {
                    let mut w = spawner.windows.lock().unwrap_or_else(|e| e.into_inner());
                    w.open.remove(&id);
                    w.open.is_empty()
                };
                if last {
                    if let Err(e) = rustix::process::set_child_subreaper(None) {
                        tracing::warn!(error = %e, "cannot stop being a child subreaper");
                    }
                }
                spawner.sweep_orphan_zombies();
            }),
        )
    }

    /// See [`Spawner::settle`].
    pub(super) async fn settle_leader(
        &self,
        leader: &ProcIdentity,
        limit: Duration,
    ) -> Result<Settled, ProcError> {
        let deadline = Instant::now() + limit;
        loop {
            let exited = match read_stat(leader.pid)? {
                None => true,
                Some(s) if s.starttime != leader.start_ticks => true,
                Some(s) if matches!(s.state, 'Z' | 'X' | 'x') => true,
                Some(s) if matches!(s.state, 'S' | 'T' | 't' | 'I') => return Ok(Settled::Waiting),
                Some(_) => false,
            };
            if exited {
                // Our child: the reaper has (or soon has) its status.
                return Ok(
                    match self
                        .wait_exit(leader, Some(crate::DEFAULT_KILL_WAIT))
                        .await?
                    {
                        WaitOutcome::Exited(status) => Settled::Exited(status),
                        WaitOutcome::TimedOut => Settled::Busy,
                    },
                );
            }
            if Instant::now() >= deadline {
                return Ok(Settled::Busy);
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// See [`Spawner::orphans`].
    pub(super) fn find_orphans(
        &self,
        leader: &ProcIdentity,
        window: &StartupWindow,
    ) -> Result<Orphans, ProcError> {
        self.sweep_orphan_zombies();
        let overlapped = {
            let w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            w.open.get(&window.id()).copied().unwrap_or(true)
        };
        let (own, own_sid) = own_pid_and_session();
        let mut out = Orphans::default();
        let pids = proc_pids();
        // Our helpers that are not reaped yet (their PIDs cannot have been reused): none is
        // an orphan; skipped without reading their stat files.
        let running: std::collections::HashSet<i32> = {
            let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            pids.iter()
                .map(|p| p.get())
                .filter(|p| children.get(p).is_some_and(|c| c.status.borrow().is_none()))
                .collect()
        };
        for pid in pids {
            if running.contains(&pid.get()) {
                continue;
            }
            let Ok(Some(stat)) = read_stat(pid) else {
                continue;
            };
            if stat.ppid != own
                || stat.session == own_sid
                || matches!(stat.state, 'Z' | 'X' | 'x')
                || stat.starttime < leader.start_ticks
                || self.child(&self.identity(pid, stat.starttime)).is_some()
            {
                continue;
            }
            // A child of ours cannot be reaped by anyone else, so its PID is stable; the
            // pidfd and the second read only make sure it was not reaped meanwhile.
            let Ok(Some(_pidfd)) = pidfd_open(pid) else {
                continue;
            };
            match read_stat(pid) {
                Ok(Some(again)) if again.starttime == stat.starttime && again.ppid == own => {}
                _ => continue,
            }
            let orphan = Orphan {
                identity: self.identity(pid, stat.starttime),
                holds_fuse: holds_fuse(pid),
            };
            if !overlapped || stat.session == leader.pid.get() {
                out.ours.push(orphan);
            } else {
                out.unattributed.push(orphan);
            }
        }
        Ok(out)
    }

    /// See [`Spawner::fuse_children`].
    pub(super) fn find_fuse_children(&self, parent: &ProcIdentity) -> Vec<ProcIdentity> {
        let mut out = Vec::new();
        for pid in proc_pids() {
            if let Ok(Some(stat)) = read_stat(pid) {
                if stat.ppid == parent.pid.get()
                    && !matches!(stat.state, 'Z' | 'X' | 'x')
                    && holds_fuse(pid)
                {
                    out.push(self.identity(pid, stat.starttime));
                }
            }
        }
        // The parent must still be that process: else its PID's children are another's.
        match read_stat(parent.pid) {
            Ok(Some(s)) if s.starttime == parent.start_ticks => out,
            _ => Vec::new(),
        }
    }

    /// See [`Spawner::adopt_orphan`].
    pub(super) fn adopt_child(&self, orphan: &ProcIdentity) -> Result<(), ProcError> {
        if self.child(orphan).is_some() {
            return Ok(());
        }
        let (own, _) = own_pid_and_session();
        let pidfd = pidfd_open(orphan.pid)?;
        match read_stat(orphan.pid)? {
            Some(s) if s.starttime == orphan.start_ticks && s.ppid == own => {}
            _ => {
                return Err(ProcError::Os {
                    op: "adopt as a child",
                    pid: orphan.pid,
                    source: std::io::Error::other("it is not (or no longer) a child of dms"),
                })
            }
        }
        let (tx, rx) = watch::channel(None);
        let pid = orphan.pid;
        tokio::spawn(async move {
            let status = super::reap(pid.get(), pidfd).await;
            tracing::debug!(%pid, ?status, "reaped adopted helper");
            tx.send_replace(Some(status));
        });
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        super::prune_reaped(&mut children);
        children.insert(
            pid.get(),
            super::Child {
                start_ticks: orphan.start_ticks,
                seq,
                status: rx,
            },
        );
        tracing::info!(%pid, start_ticks = orphan.start_ticks, "adopted a daemonized helper as a child");
        Ok(())
    }
}

/// Shared state of a spawner's windows.
pub(super) type SharedWindows = Arc<Mutex<Windows>>;
