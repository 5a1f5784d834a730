//! End-to-end tests of issue 17's process items through the `dms` binary: `kill` and a
//! failed `--ready-timeout` leave no member of the helper's process group (17.3), a
//! SIGSTOPped helper is continued after SIGTERM (17.7), `cleanup --all` stops helpers
//! together (17.6), and helpers that daemonize are tracked (17.2).

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// A generous bound for things that take milliseconds on an idle machine.
const STOP: Duration = Duration::from_secs(20);

/// Waits for `file` to hold a PID and a newline; returns the PID.
fn pid_in(file: &Path) -> i32 {
    assert!(
        wait_for(STOP, || std::fs::read_to_string(file)
            .is_ok_and(|s| s.ends_with('\n'))),
        "no PID was written to {}",
        file.display()
    );
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `pid` runs `comm`.
fn wait_comm(pid: i32, comm: &str) {
    assert!(
        wait_for(STOP, || std::fs::read_to_string(format!(
            "/proc/{pid}/comm"
        ))
        .is_ok_and(|c| c.trim() == comm)),
        "PID {pid} never ran {comm}"
    );
}

/// A shell script whose member (a `sleep`) ignores SIGTERM while the shell does not;
/// the member's PID goes to `file`.
fn member_ignoring_term(file: &Path) -> String {
    format!(
        r#"(trap "" TERM; exec sleep {}) & echo $! > {}; wait"#,
        unique_sleep(),
        file.display()
    )
}

fn kill_stops_a_group_member_that_outlives_sigterm(backend: Backend) {
    let w = World::new(backend);
    let file = w.tmp.path().join("member.pid");
    let leader = pid_of(&w.spawn("grp", &["sh", "-c", &member_ignoring_term(&file)]));
    let member = pid_in(&file);
    w.track(member);
    wait_comm(member, "sleep");

    let started = Instant::now();
    let r = w.json(["kill", "grp", "--grace", "1"]);
    let took = started.elapsed();
    r.expect_code(0);
    let k = r.json();
    assert_eq!(k["stopped"], true, "{k}");
    assert_eq!(
        k["signal"], "SIGKILL",
        "the last member needed SIGKILL: {k}"
    );
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL before the grace: {took:?}"
    );
    assert!(
        !alive(member),
        "the group member still runs after kill said stopped"
    );
    assert!(wait_dead(leader, STOP));
}

fn failed_ready_timeout_leaves_no_group_member(backend: Backend) {
    let w = World::new(backend);
    let file = w.tmp.path().join("member.pid");
    let mnt = w.tmp.path().join("never-mounted");
    let script = member_ignoring_term(&file);
    let r = w.json([
        "spawn",
        "nomount",
        "--mount",
        mnt.to_str().unwrap(),
        "--ready-timeout",
        "1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // The member existed (the script writes its PID before the timeout passes).
    let member = pid_in(&file);
    w.track(member);
    r.expect_code(1);
    assert!(r.stderr.contains("--ready-timeout"), "{r:#?}");
    assert!(
        !alive(member),
        "a failed --ready-timeout left a member of the helper's group running: {r:#?}"
    );
    assert!(!w.pid_file("nomount").exists());
}

fn kill_continues_a_stopped_helper(backend: Backend) {
    let w = World::new(backend);
    let pid = pid_of(&w.spawn("frozen", &["sleep", &unique_sleep()]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    assert!(
        wait_for(STOP, || std::fs::read_to_string(format!(
            "/proc/{pid}/stat"
        ))
        .is_ok_and(|s| s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('T')))),
        "the helper did not stop"
    );
    let started = Instant::now();
    let r = w.json(["kill", "frozen", "--grace", "30"]);
    let took = started.elapsed();
    r.expect_code(0);
    let k = r.json();
    assert_eq!(k["stopped"], true, "{k}");
    assert_eq!(
        k["signal"], "SIGTERM",
        "SIGTERM (with SIGCONT) must end it: {k}"
    );
    assert!(
        took < Duration::from_secs(30),
        "it took the whole grace: {took:?}"
    );
    assert!(wait_dead(pid, STOP));
}

/// Spawns, as `target`, a shell that ignores SIGTERM; returns its PID once the trap is set.
fn spawn_term_ignoring(w: &World, target: &str) -> i32 {
    let ready = w.tmp.path().join(format!("{target}.trap-set"));
    let script = format!(
        "trap '' TERM; touch {}; while :; do sleep 0.1; done",
        ready.display()
    );
    let pid = pid_of(&w.spawn(target, &["sh", "-c", &script]));
    assert!(
        wait_for(STOP, || ready.exists()),
        "the helper never set its trap"
    );
    pid
}

fn cleanup_all_stops_helpers_together(backend: Backend) {
    let w = World::new(backend);
    let pids: Vec<i32> = (0..10)
        .map(|i| spawn_term_ignoring(&w, &format!("stubborn-{i}")))
        .collect();
    let started = Instant::now();
    let r = w.json(["cleanup", "--all", "--grace", "1"]);
    let took = started.elapsed();
    eprintln!("cleanup --all --grace 1 of 10 SIGTERM-ignoring helpers: {took:?}");
    r.expect_code(0);
    let report = r.json();
    assert_eq!(
        report["stopped"].as_array().map(Vec::len),
        Some(10),
        "{report}"
    );
    for pid in &pids {
        assert!(!alive(*pid), "helper {pid} survived cleanup --all");
    }
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL before the grace: {took:?}"
    );
    // One after another, 10 helpers that ignore SIGTERM take at least 10 graces.
    assert!(
        took < Duration::from_secs(7),
        "cleanup --all took {took:?} for 10 helpers with a 1 s grace"
    );
    for i in 0..10 {
        assert!(!w.pid_file(&format!("stubborn-{i}")).exists());
    }
}

both_backends!(
    cleanup_all_stops_helpers_together,
    kill_stops_a_group_member_that_outlives_sigterm,
    failed_ready_timeout_leaves_no_group_member,
    kill_continues_a_stopped_helper,
);
