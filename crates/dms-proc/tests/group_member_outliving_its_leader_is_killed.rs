//! Stopping a helper stops every member of its process group, not only the leader: a
//! member that ignores SIGTERM while the leader dies of it gets SIGKILL after the grace,
//! and the outcome says SIGKILL ended it. A stopped (SIGSTOP) helper is continued after
//! SIGTERM, so it acts on it within the grace.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Signal, Spawner};
use std::path::Path;
use std::time::{Duration, Instant};

/// Waits for `dir/name` to hold a PID followed by a newline and returns it.
async fn pid_in(dir: &Path, name: &str) -> i32 {
    let file = dir.join(name);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&file)
            .is_ok_and(|s| s.ends_with('\n')))
        .await,
        "the helper never wrote {name}"
    );
    std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn member_ignoring_sigterm_is_sigkilled_after_its_leader_died() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    // The leader (sh) dies of SIGTERM; the member ignores it (the ignored disposition
    // survives the exec of sleep).
    let (helper, _guard) = start(
        &spawner,
        &sh(
            dir.path(),
            r#"(trap "" TERM; exec sleep 300) & echo $! > member.pid; setsid sleep 300 & echo $! > outside.pid; wait"#,
        ),
    )
    .await;
    // Canaries: a process of the test's own, and a descendant of the helper that left
    // its group (setsid). Neither is a member: neither may be signalled.
    let mut own_canary = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let outside = pid_in(dir.path(), "outside.pid").await;
    wait_comm(outside, "sleep").await;
    let (_, outside_ticks) = stat(outside).expect("the outside process runs");
    let _outside_guard = KillOnDrop(dms_proc::ProcIdentity {
        pid: dms_proc::Pid::try_from(outside).unwrap(),
        start_ticks: outside_ticks,
        boot_id: helper.boot_id.clone(),
    });
    let member = pid_in(dir.path(), "member.pid").await;
    let (_, member_ticks) = stat(member).expect("member runs");
    // The trap is in place once the subshell has exec'd sleep.
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{member}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
        })
        .await
    );
    let _member_guard = KillOnDrop(dms_proc::ProcIdentity {
        pid: dms_proc::Pid::try_from(member).unwrap(),
        start_ticks: member_ticks,
        boot_id: helper.boot_id.clone(),
    });

    let grace = Duration::from_secs(1);
    let t0 = Instant::now();
    let stop = spawner
        .terminate(&helper, grace, dms_proc::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    let took = t0.elapsed();

    assert!(stop.stopped, "{stop:?}");
    assert!(!stop.mismatch);
    assert_eq!(
        stop.signals,
        vec![Signal::Term, Signal::Kill],
        "SIGKILL must end the member that outlived SIGTERM"
    );
    assert_eq!(
        stop.status,
        Some(ExitStatus::Signaled(libc::SIGTERM)),
        "the leader's status"
    );
    assert!(
        took >= grace,
        "SIGKILL came before the grace ended: {took:?}"
    );
    assert!(
        !alive(member, member_ticks),
        "the member still runs after a stop that said stopped"
    );
    if let Some(status) = reap(member, Duration::from_secs(2)) {
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    }
    assert!(
        alive(outside, outside_ticks),
        "a process outside the helper's group was signalled"
    );
    assert!(
        own_canary.try_wait().unwrap().is_none(),
        "the test's own canary was signalled"
    );
    own_canary.kill().unwrap();
    own_canary.wait().unwrap();
}

/// Waits until `pid` runs `comm`.
async fn wait_comm(pid: i32, comm: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .await,
        "PID {pid} never ran {comm}"
    );
}

#[tokio::test]
async fn member_forked_during_the_grace_is_stopped_too() {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    // On SIGTERM the leader starts a new member that ignores SIGTERM, then exits: that
    // member did not exist when the stop began.
    let (helper, _guard) = start(
        &spawner,
        &sh(
            dir.path(),
            r#"trap '(trap "" TERM; exec sleep 300) & echo $! > late.pid; exit 0' TERM; echo ready; while :; do sleep 1; done"#,
        ),
    )
    .await;
    let log = dir.path().join("helper.log");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("ready")))
        .await
    );
    let stop = spawner
        .terminate(&helper, Duration::from_secs(3), dms_proc::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    let late = pid_in(dir.path(), "late.pid").await;
    assert!(stop.stopped, "{stop:?}");
    assert_eq!(stop.signals.last(), Some(&Signal::Kill), "{stop:?}");
    assert!(
        wait_until(
            Duration::from_secs(5),
            || !matches!(stat(late), Some((s, _)) if s != 'Z')
        )
        .await,
        "the member forked during the grace still runs"
    );
    let _ = reap(late, Duration::from_secs(1));
}

#[tokio::test]
async fn stopped_helper_is_continued_and_ends_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (helper, _guard) = start(&spawner, &spec(dir.path(), "sleep", &["300"])).await;
    let pid = helper.pid.get();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            stat(pid),
            Some(('T', _))
        ))
        .await,
        "the helper did not stop"
    );
    let grace = Duration::from_secs(20);
    let t0 = Instant::now();
    let stop = spawner
        .terminate(&helper, grace, dms_proc::DEFAULT_KILL_WAIT)
        .await
        .unwrap();
    assert!(stop.stopped, "{stop:?}");
    assert_eq!(
        stop.signals,
        vec![Signal::Term],
        "SIGTERM alone must end it"
    );
    assert_eq!(stop.status, Some(ExitStatus::Signaled(libc::SIGTERM)));
    assert!(
        t0.elapsed() < grace,
        "the stopped helper only ended at SIGKILL"
    );
}
