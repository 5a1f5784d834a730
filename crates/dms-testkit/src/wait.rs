//! Polling with a deadline: for conditions no event announces (a process gone, a file
//! written, a daemon answering).
//!
//! Every function checks the condition first, then again each interval, and a last time
//! once the deadline has passed; it returns whether the condition held. A test asserts
//! on that result with its own message.

use std::time::{Duration, Instant};

/// The interval of [`wait_for`] and `wait_for_async` (feature `tokio`).
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` every 10 ms until it holds (`true`) or `limit` passes (`false`).
pub fn wait_for(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_for_every(limit, POLL, cond)
}

/// [`wait_for`] with another interval, for conditions costly to check (a query to
/// another program, say).
pub fn wait_for_every(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// [`wait_for`] on a tokio runtime: sleeps with `tokio::time::sleep`, so the runtime's
/// other tasks run meanwhile.
#[cfg(feature = "tokio")]
pub async fn wait_for_async(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for_future(limit, || std::future::ready(cond())).await
}

/// [`wait_for_async`] for a condition that is itself awaited (a question to a manager,
/// say): `cond` makes the future of one check.
#[cfg(feature = "tokio")]
pub async fn wait_for_future<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
