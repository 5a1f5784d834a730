//! The shared helpers of dms's tests, in one place instead of a copy per crate.
//!
//! - [`wait`]: poll a condition until it holds or a deadline passes ([`wait_for`], and
//!   `wait_for_async` and `wait_for_future` on a tokio runtime, feature `tokio`); the
//!   one way a test awaits what no event announces.
//! - [`process`]: zombie-aware liveness ([`alive`]), reaping one child or every zombie
//!   child ([`reap`], [`reap_zombies_except`]), and the child-subreaper set-up
//!   ([`become_subreaper`]): PID 1 here does not reap orphans, so a test that starts
//!   helpers which outlive their parent adopts them and counts zombies as dead;
//!   [`reap_or_gone`] for PIDs that may or may not be ours.
//! - [`dirs`]: temp run dirs, on tmpfs when there is one.
//! - [`per_backend!`]: one test per store backend from one scenario function.
//! - [`chain`]: an error and its causes on one line, to assert on a cause (dms's errors
//!   carry their cause in `source()` only).
//! - `daemon` (feature `daemon`): a `dms serve` started by a test, requests and event
//!   streams on its socket. The binary's path is passed in (only dms-cli's tests have
//!   `CARGO_BIN_EXE_dms`).
//!
//! Safety: every helper here signals or reaps only a PID it is given or a child of the
//! calling test process; nothing kills by name.
//!
//! The kit depends on no dms crate (it is a dev-dependency of them), so it knows dms
//! only through what it is passed: PIDs, paths, the binary, a backend's name.

pub mod dirs;
pub mod process;
pub mod wait;

mod backends;

#[cfg(feature = "daemon")]
pub mod daemon;

pub use dirs::{temp_dir, tmpfs_dir};
pub use process::{
    alive, alive_since, become_subreaper, is_our_child, reap, reap_or_gone, reap_zombies_except,
    stat, wait_dead, Stat,
};
pub use wait::{wait_for, wait_for_every};

/// `e` and each of its causes ([`std::error::Error::source`]), joined with `": "`: what
/// a test asserts on when the words it looks for are in a cause.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}
#[cfg(feature = "tokio")]
pub use wait::{wait_for_async, wait_for_future};
