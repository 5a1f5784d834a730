//! Helpers shared by the real-process tests. Every test only signals processes it
//! started itself, in a temporary directory, and reaps what it becomes the parent of.
#![allow(dead_code)]

use dms_proc::linux::LinuxSpawner;
use dms_proc::{Pid, Probe, ProcIdentity, SpawnSpec, Spawner};
use std::ffi::OsString;
use std::path::Path;

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

// Polling, liveness, reaping and the subreaper set-up are the test kit's, under the
// names these tests have always used.
#[allow(unused_imports)] // each test binary uses some of them
pub use dms_testkit::{
    alive_since as alive, become_subreaper, reap, wait_for as wait_until_blocking,
    wait_for_async as wait_until,
};

/// State and start ticks of `pid` from `/proc/PID/stat`, if it exists.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    dms_testkit::stat(pid).map(|s| (s.state, s.start_ticks))
}

/// What `spawner` finds at `pid` now: a probe of one PID, its executable read, no usage.
pub async fn probe_now<S: Spawner + ?Sized>(spawner: &S, pid: Pid) -> Probe {
    let (probe, _) = spawner
        .probe(pid, dms_proc::ProbeFields::DETAIL)
        .await
        .expect("probe");
    probe
}

/// Whether the probe says dead (gone or zombie).
pub async fn dead(spawner: &LinuxSpawner, pid: Pid) -> bool {
    matches!(
        probe_now(spawner, pid).await,
        Probe::Gone | Probe::Zombie(_)
    )
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
