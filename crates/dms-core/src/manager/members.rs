//! The members of a helper's process group when the helper itself ends without a signal
//! (issue 17.3): a FUSE helper exits by itself once its mount is unmounted, and the
//! members of its group that outlive it are then stopped as `kill` stops a helper, so
//! `kill` and `spawn --replace` leave no member running in that case either.

use super::Inner;
use crate::report::KillStep;
use dms_proc::{ProcIdentity, Signal};
use std::time::Duration;
use tracing::warn;

/// What became of the members.
pub(super) struct MembersStopped {
    /// The last signal any member needed (SIGKILL if one did).
    pub(super) last: Option<Signal>,
    /// A member still running after SIGKILL, if any.
    pub(super) left: Option<ProcIdentity>,
}

impl Inner {
    /// The proven members of `leader`'s group, taken before the leader is made to end
    /// without a signal; empty when they cannot be listed (logged).
    pub(super) async fn members_of(&self, leader: &ProcIdentity) -> Vec<ProcIdentity> {
        match self.spawner.group_members(leader).await {
            Ok(m) => m,
            Err(e) => {
                warn!(pid = leader.pid.get(), error = %crate::Report::new(&e), "cannot list the members of the helper's group");
                Vec::new()
            }
        }
    }

    /// Stops `members` (each with its own grace, all at once), appending the signals
    /// sent to `steps`.
    pub(super) async fn stop_members(
        &self,
        members: &[ProcIdentity],
        grace: Duration,
        steps: &mut Vec<KillStep>,
    ) -> MembersStopped {
        let mut tasks = tokio::task::JoinSet::new();
        for m in members {
            let spawner = self.spawner.clone();
            let m = m.clone();
            tasks.spawn(async move {
                let out = spawner
                    .terminate(&m, grace, dms_proc::DEFAULT_KILL_WAIT)
                    .await;
                (m, out)
            });
        }
        let mut done = MembersStopped {
            last: None,
            left: None,
        };
        let mut sent: Vec<Signal> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (m, out) = match joined {
                Ok(done) => done,
                Err(e) => {
                    warn!(error = %crate::Report::new(&e), "a task stopping a member of the helper's group failed");
                    continue;
                }
            };
            match out {
                Ok(out) => {
                    for s in &out.signals {
                        if !sent.contains(s) {
                            sent.push(*s);
                        }
                    }
                    if !out.stopped && !out.mismatch {
                        done.left.get_or_insert(m);
                    }
                }
                Err(e) => {
                    warn!(pid = m.pid.get(), error = %crate::Report::new(&e), "cannot stop a member of the helper's group");
                    done.left.get_or_insert(m);
                }
            }
        }
        for s in [Signal::Term, Signal::Kill] {
            if sent.contains(&s) {
                steps.push(s.into());
                done.last = Some(s);
            }
        }
        done
    }
}
