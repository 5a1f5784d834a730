//! Processes as a test sees them: alive or dead (a zombie counts as dead), reaping, and
//! the child-subreaper set-up.
//!
//! Helpers started through `dms` are children of a `dms` process that may exit first,
//! so they are reparented. PID 1 on the test machines does not reap, so a test process
//! makes itself a child subreaper ([`become_subreaper`]): orphans are reparented to it,
//! and it reaps them. Until reaped, a dead helper stays its zombie, so the helper's PID
//! cannot be reused while the test still holds it, which makes signalling a recorded
//! helper PID at cleanup safe.

use rustix::process::{Pid, WaitOptions};
use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The command name (`comm`, at most 15 bytes).
    pub comm: String,
    /// The state letter: `R`, `S`, `D`, `T`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// The parent's PID.
    pub ppid: i32,
    /// The start time in clock ticks since boot: with the PID, one incarnation.
    pub start_ticks: u64,
}

/// `/proc/PID/stat` of `pid`, or `None` when there is no such process (or it cannot be
/// read or parsed).
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // After ") ": state, ppid, ... starttime is the 20th field.
    let rest: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` is a live process: it exists and is neither a zombie nor dead.
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Whether `pid` is the live incarnation that started at `start_ticks` (a recycled PID
/// is not).
pub fn alive_since(pid: i32, start_ticks: u64) -> bool {
    matches!(stat(pid), Some(s) if s.state != 'Z' && s.state != 'X' && s.start_ticks == start_ticks)
}

/// Whether `pid` is a (live or zombie) child of this test process.
pub fn is_our_child(pid: i32) -> bool {
    matches!(stat(pid), Some(s) if s.ppid == std::process::id() as i32)
}

/// Makes this test process a child subreaper (`PR_SET_CHILD_SUBREAPER`), once: orphaned
/// descendants are reparented to it instead of to PID 1.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("prctl(PR_SET_CHILD_SUBREAPER)");
    });
}

/// What one non-blocking `waitpid` of a PID found.
enum Wait {
    Reaped(i32),
    Running,
    NotOurs,
}

fn wait_once(pid: i32) -> Wait {
    let Some(p) = Pid::from_raw(pid) else {
        return Wait::NotOurs;
    };
    match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
        Ok(Some((_, status))) => Wait::Reaped(status.as_raw()),
        Ok(None) => Wait::Running,
        Err(_) => Wait::NotOurs,
    }
}

/// Reaps `pid` once it is (or becomes, within `limit`) a zombie child of ours; returns
/// its raw wait status, or `None` when it is not our child or is still running at the
/// deadline. Never waits for "any child". A leader that is a zombie while another of
/// its threads is still in the kernel is not reapable yet, so this waits for that too.
pub fn reap(pid: i32, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        match wait_once(pid) {
            Wait::Reaped(status) => return Some(status),
            Wait::NotOurs => return None,
            Wait::Running if Instant::now() >= deadline => return None,
            Wait::Running => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Whether `pid` is gone within `limit`: reaped by us, or, not being our child (any
/// more), without a trace in `/proc`.
pub fn reap_or_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match wait_once(pid) {
            Wait::Reaped(_) => return true,
            Wait::NotOurs => return !Path::new(&format!("/proc/{pid}")).exists(),
            Wait::Running if Instant::now() >= deadline => return false,
            Wait::Running => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Waits until `pid` is dead (gone or a zombie), up to `limit`; reaps it if it is ours.
pub fn wait_dead(pid: i32, limit: Duration) -> bool {
    if !crate::wait_for(limit, || !alive(pid)) {
        return false;
    }
    if is_our_child(pid) {
        let _ = wait_once(pid);
    }
    true
}

/// Reaps every zombie child of this process except those whose command name is in
/// `keep` (children a `std::process::Child` still owns and reaps itself, say).
pub fn reap_zombies_except(keep: &[&str]) {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(s) = stat(pid) {
            if s.state == 'Z' && s.ppid == me && !keep.contains(&s.comm.as_str()) {
                let _ = wait_once(pid);
            }
        }
    }
}
