//! Helpers shared by the real-process tests. Every test only signals processes it
//! started itself, in a temporary directory, and reaps what it becomes the parent of.
#![allow(dead_code)]

use dms_proc::linux::LinuxSpawner;
use dms_proc::{Pid, Probe, ProcIdentity, SpawnSpec, Spawner};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

/// The environment every test helper gets: nothing but a PATH and a marker.
pub fn env() -> Vec<(OsString, OsString)> {
    vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("DMS_TEST_MARKER".into(), "s3cr3t-value".into()),
    ]
}

/// A spec running `program args...` with output to `dir/helper.log`.
pub fn spec(dir: &Path, program: &str, args: &[&str]) -> SpawnSpec {
    SpawnSpec {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
        env: env(),
        log: dir.join("helper.log"),
        cwd: Some(dir.to_path_buf()),
    }
}

/// `sh -c script` with output to `dir/helper.log`.
pub fn sh(dir: &Path, script: &str) -> SpawnSpec {
    spec(dir, "sh", &["-c", script])
}

/// Spawns and releases; the helper is killed when the returned guard drops.
pub async fn start(spawner: &LinuxSpawner, spec: &SpawnSpec) -> (ProcIdentity, KillOnDrop) {
    let pending = spawner.spawn(spec).await.expect("spawn");
    let id = pending.identity.clone();
    pending.gate.release().await.expect("release");
    (id.clone(), KillOnDrop(id))
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking variant of [`wait_until`] for non-async tests.
pub fn wait_until_blocking(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// State and start ticks of `pid` from `/proc/PID/stat`, if it exists.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let s = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some((s.state, s.starttime))
}

/// Whether `pid` is a live (non-zombie) process with `start_ticks`.
pub fn alive(pid: i32, start_ticks: u64) -> bool {
    matches!(stat(pid), Some((state, ticks)) if state != 'Z' && ticks == start_ticks)
}

/// Whether the probe says dead (gone or zombie).
pub async fn dead(spawner: &LinuxSpawner, pid: Pid) -> bool {
    matches!(
        spawner.probe(pid).await.expect("probe"),
        Probe::Gone | Probe::Zombie(_)
    )
}

/// Makes this test process a child subreaper: orphaned descendants become our children.
pub fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("prctl(PR_SET_CHILD_SUBREAPER)");
}

/// Reaps `pid` if it is (or becomes, within `limit`) a zombie child of ours; returns its
/// raw wait status. Never waits for "any child".
pub fn reap(pid: i32, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waits for one specific PID with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return Some(status);
        }
        if rc < 0 || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs the process on drop if it is still the same incarnation (cleanup after a
/// failed assertion; never hits a recycled PID thanks to the start-ticks check).
pub struct KillOnDrop(pub ProcIdentity);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_if_same(&self.0);
    }
}

/// SIGKILLs `id` only if it is of this boot and `/proc` still shows that incarnation
/// (identities of the fake, with their made-up boot ID, are never acted on).
pub fn kill_if_same(id: &ProcIdentity) {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    if id.boot_id != boot.trim() {
        return;
    }
    let pid = id.pid.get();
    let Ok(fd) = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::PidfdFlags::empty(),
    ) else {
        return;
    };
    if alive(pid, id.start_ticks) {
        let _ = rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL);
    }
}
