//! A released helper is detached: it outlives the process that spawned it, in its own
//! session and process group.
//!
//! `harness = false`: this binary re-executes itself in a "spawner" role (a separate
//! process that uses `LinuxSpawner`, releases a helper and exits), while the test role
//! becomes a child subreaper so it inherits, checks, stops and reaps the helper.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Pid, Probe, ProcIdentity, Spawner, WaitOutcome};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const ROLE: &str = "DMS_PROC_TEST_ROLE";
const DIR: &str = "DMS_PROC_TEST_DIR";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("spawn-release-exit") => role_spawn_release_exit(),
        _ => {
            println!("\nrunning 1 test");
            detached_helper_outlives_the_process_that_spawned_it();
            println!("test detached_helper_outlives_the_process_that_spawned_it ... ok\n");
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Spawner role: start `sleep 60`, release it, print its identity, exit.
fn role_spawn_release_exit() {
    let dir = PathBuf::from(std::env::var_os(DIR).expect("DMS_PROC_TEST_DIR"));
    runtime().block_on(async {
        let spawner = LinuxSpawner::new().unwrap();
        let pending = spawner.spawn(&spec(&dir, "sleep", &["60"])).await.unwrap();
        let id = pending.identity.clone();
        pending.gate.release().await.unwrap();
        println!("{} {}", id.pid, id.start_ticks);
    });
    std::process::exit(0);
}

fn detached_helper_outlives_the_process_that_spawned_it() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "spawn-release-exit")
        .env(DIR, dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "spawner role failed: {out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let mut parts = line.split_whitespace();
    let pid: i32 = parts.next().unwrap().parse().unwrap();
    let ticks: u64 = parts.next().unwrap().parse().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let id = ProcIdentity {
        pid: Pid::try_from(pid).unwrap(),
        start_ticks: ticks,
        boot_id: spawner.boot_id().to_owned(),
    };
    let _guard = KillOnDrop(id.clone());

    // The process that spawned it has exited (and been reaped by `output()`); the
    // helper still runs, is now our child (we are its subreaper), and leads its own
    // session and process group.
    runtime().block_on(async {
        match probe_now(&spawner, id.pid).await {
            Probe::Alive(info) => {
                assert_eq!(info.identity, id);
                assert_eq!(info.sid, pid, "own session");
                assert_eq!(info.pgid, pid, "own process group");
                assert_eq!(
                    info.cmdline.as_deref(),
                    Some(&["sleep".to_owned(), "60".to_owned()][..])
                );
            }
            other => panic!("the helper did not outlive its spawner: {other:?}"),
        }
        let ppid = procfs::process::Process::new(pid)
            .unwrap()
            .stat()
            .unwrap()
            .ppid;
        assert_eq!(
            ppid as u32,
            std::process::id(),
            "reparented to the subreaper"
        );

        // Stop it through a spawner that did not start it: pidfd path, status unknown.
        let stop = spawner
            .terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
            .await
            .unwrap();
        assert!(stop.stopped, "{stop:?}");
        assert_eq!(stop.status, Some(ExitStatus::Unknown));
        assert_eq!(
            spawner.wait_exit(&id, Some(Duration::ZERO)).await.unwrap(),
            WaitOutcome::Exited(ExitStatus::Unknown)
        );
    });
    let status = reap(pid, Duration::from_secs(5)).expect("reap the helper");
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
}
