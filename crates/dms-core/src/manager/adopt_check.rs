//! `adopt` refuses a process that is already the helper of another target, also when
//! that target is known only from disk (a one-shot command line, another dms process).

use super::{Inner, Verdict};
use crate::error::Result;
use dms_proc::ProcIdentity;
use dms_store::{Entry, EntryState, TargetId};

impl Inner {
    /// The other target whose PID file names `identity`'s process and is proven to be
    /// that very process (same identity), if any. Memory is checked by the caller; this
    /// reads every PID file, which an adopt (rare, and by hand) can afford.
    pub(super) async fn tracked_on_disk(
        &self,
        target: &TargetId,
        identity: &ProcIdentity,
    ) -> Result<Option<TargetId>> {
        for entry in self.store.list().await? {
            let Entry::Target {
                target: other,
                state: EntryState::Valid(record),
            } = entry
            else {
                continue;
            };
            if other == *target || record.pid != identity.pid {
                continue;
            }
            if let Verdict::Own(info) = self.classify(&other, &record).await {
                if info.identity == *identity {
                    return Ok(Some(other));
                }
            }
        }
        Ok(None)
    }
}
