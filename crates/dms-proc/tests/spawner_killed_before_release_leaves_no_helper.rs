//! Crash-atomic start: if the spawning process is SIGKILLed while a helper waits at the
//! start barrier, that helper exits without ever running its program, even while
//! another (released) helper of the same spawner keeps running.
//!
//! `harness = false`: this binary re-executes itself in a "spawner" role that creates
//! the helpers and then blocks forever; the test role SIGKILLs it as a child subreaper,
//! so the orphaned helpers become its children and can be checked and reaped.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{Pid, Probe, Spawner, GATE_DROPPED_EXIT_CODE};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const ROLE: &str = "DMS_PROC_TEST_ROLE";
const DIR: &str = "DMS_PROC_TEST_DIR";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("spawn-and-hold") => role_spawn_and_hold(),
        _ => {
            println!("\nrunning 1 test");
            spawning_process_killed_before_confirmation_leaves_no_helper_running();
            println!(
                "test spawning_process_killed_before_confirmation_leaves_no_helper_running ... ok\n"
            );
        }
    }
}

/// Spawner role: create helper A (held at the barrier), then helper B (released), print
/// both PIDs, and block forever holding A's gate.
fn role_spawn_and_hold() {
    let dir = PathBuf::from(std::env::var_os(DIR).expect("DMS_PROC_TEST_DIR"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spawner = LinuxSpawner::new().unwrap();
        let held = spawner
            .spawn(&sh(&dir, "touch ran-marker; exec sleep 60"))
            .await
            .unwrap();
        let released = spawner.spawn(&spec(&dir, "sleep", &["60"])).await.unwrap();
        let b = released.identity.clone();
        released.gate.release().await.unwrap();
        println!(
            "{} {} {}",
            held.identity.pid, held.identity.start_ticks, b.pid
        );
        // Hold the gate of A until we are killed.
        std::future::pending::<()>().await;
        drop(held);
    });
}

/// The spawner-role child, SIGKILLed and reaped if the test fails before it does so
/// itself (then helper A, losing its gate, exits without running).
struct RoleGuard(std::process::Child);

impl Drop for RoleGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawning_process_killed_before_confirmation_leaves_no_helper_running() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let mut role = RoleGuard(
        Command::new(std::env::current_exe().unwrap())
            .env(ROLE, "spawn-and-hold")
            .env(DIR, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(role.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let nums: Vec<i64> = line
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let (a, a_ticks, b) = (nums[0] as i32, nums[1] as u64, nums[2] as i32);
    let b_ticks = stat(b).expect("helper B runs").1;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    rt.block_on(async {
        // A exists, at the barrier: still the forked spawner image, not `sh`. `spawn`
        // returns once the child exists; the child's own set-up (its session, its fds)
        // runs on in the child before it blocks at the barrier, so under load the new
        // session may come a moment later: poll for it, checking every time that A has
        // not exec'd.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match spawner
                .probe(Pid::try_from(a).unwrap(), dms_proc::ProbeFields::DETAIL)
                .await
                .map(|(p, _)| p)
                .unwrap()
            {
                Probe::Alive(info) => {
                    assert_eq!(info.identity.start_ticks, a_ticks);
                    assert_eq!(
                        info.exe,
                        Some(std::env::current_exe().unwrap()),
                        "not exec'd yet"
                    );
                    if info.sid == a {
                        break; // in its own session, at the barrier
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "helper A never got its own session: sid {}",
                        info.sid
                    );
                }
                other => panic!("helper A should be pending: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    // The crash: SIGKILL the spawner before it confirms A.
    role.0.kill().unwrap();
    role.0.wait().unwrap();

    // A sees end of file on its gate and exits with the "gate dropped" code; it is now
    // our child (subreaper), so reap it and read that code.
    let status = reap(a, Duration::from_secs(10)).expect("helper A exits after the crash");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == GATE_DROPPED_EXIT_CODE,
        "helper A should exit with {GATE_DROPPED_EXIT_CODE} without running: status {status:#x}"
    );
    assert!(stat(a).is_none(), "nothing left of helper A");
    assert!(
        !dir.path().join("ran-marker").exists(),
        "helper A's program must never have run"
    );

    // B, released before the crash, still runs: it did not keep A's gate open (no fd
    // leak), and it outlives the crashed spawner. Clean it up.
    assert!(alive(b, b_ticks), "released helper B survives the crash");
    let b_fds: Vec<i32> = procfs::process::Process::new(b)
        .unwrap()
        .fd()
        .unwrap()
        .map(|fd| fd.unwrap().fd)
        .collect();
    assert_eq!(b_fds, vec![0, 1, 2], "helper B holds no other descriptor");
    // SAFETY: B is our child now (subreaper) and not reaped, so the PID is still B.
    unsafe { libc::kill(b, libc::SIGKILL) };
    reap(b, Duration::from_secs(5)).expect("reap helper B");
}
