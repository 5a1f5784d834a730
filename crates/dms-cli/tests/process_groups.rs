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
    let st = w.run(["status", "frozen"]);
    st.expect_code(0);
    assert!(
        st.stdout.contains("stopped (SIGSTOP)"),
        "status shows the stop: {st:#?}"
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

/// Live processes whose command line is `sleep <secs>`.
fn sleeps(secs: &str) -> Vec<i32> {
    processes_with_cmdline(&["sleep", secs])
}

fn daemonizing_shell_child_becomes_the_helper(backend: Backend) {
    let w = World::new(backend);
    let secs = unique_sleep();
    let script = format!("sleep {secs} & exit 0");
    let r = w.json(["spawn", "bg", "--", "sh", "-c", &script]);
    let left = sleeps(&secs);
    for pid in &left {
        w.track(*pid);
    }
    r.expect_code(0);
    let info = r.json();
    let pid = pid_of(&info);
    assert_eq!(
        left,
        vec![pid],
        "the recorded helper is the sleep the shell left: {info}"
    );
    assert_eq!(info["state"], "running", "{info}");
    let file = std::fs::read_to_string(w.pid_file("bg")).unwrap();
    assert_eq!(file.trim(), pid.to_string(), "the PID file names the sleep");

    let st = w.json(["status", "bg"]);
    st.expect_code(0);
    assert_eq!(st.json()["state"], "running", "{st:#?}");
    assert_eq!(pid_of(&st.json()), pid);

    let k = w.json(["kill", "bg", "--grace", "5"]);
    k.expect_code(0);
    assert_eq!(k.json()["stopped"], true, "{k:#?}");
    assert!(wait_dead(pid, STOP), "the sleep survived kill");
    assert!(!w.pid_file("bg").exists());
}

fn undecidable_background_processes_fail_the_spawn_and_are_stopped(backend: Backend) {
    let w = World::new(backend);
    let secs = unique_sleep();
    let script = format!("sleep {secs} & sleep {secs} & exit 0");
    let r = w.json(["spawn", "two", "--", "sh", "-c", &script]);
    for pid in sleeps(&secs) {
        w.track(pid);
    }
    r.expect_code(1);
    r.expect_one_error_line();
    assert!(
        r.stderr.contains("--foreground"),
        "the error names the foreground flag: {r:#?}"
    );
    assert!(r.stderr.contains("went into the background"), "{r:#?}");
    assert!(
        wait_for(STOP, || sleeps(&secs).is_empty()),
        "processes the helper left still run: {:?}",
        sleeps(&secs)
    );
    assert!(!w.pid_file("two").exists());
}

fn failing_leader_that_leaves_a_process_fails_the_spawn(backend: Backend) {
    let w = World::new(backend);
    let secs = unique_sleep();
    let script = format!("sleep {secs} & exit 3");
    let r = w.json(["spawn", "bad", "--", "sh", "-c", &script]);
    for pid in sleeps(&secs) {
        w.track(pid);
    }
    r.expect_code(1);
    assert!(r.stderr.contains("Code(3)"), "{r:#?}");
    assert!(
        wait_for(STOP, || sleeps(&secs).is_empty()),
        "the sleep still runs"
    );
    assert!(!w.pid_file("bad").exists());
}

fn foreground_helper_is_unchanged_and_settles_fast(backend: Backend) {
    let w = World::new(backend);
    let started = Instant::now();
    let info = w.spawn("fg", &["sleep", &unique_sleep()]);
    let took = started.elapsed();
    assert_eq!(info["state"], "running");
    eprintln!("spawn of a foreground sleep: {took:?}");
    let k = w.json(["kill", "fg"]);
    k.expect_code(0);
    assert!(wait_dead(pid_of(&info), STOP));
}

/// Why the bindfs test cannot run here, if it cannot.
fn bindfs_skip_reason() -> Option<&'static str> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not root");
    }
    if std::process::Command::new("bindfs")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("bindfs is not installed (apt-get install -y bindfs)");
    }
    None
}

fn is_mount_point(dir: &Path) -> bool {
    let want = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == want.to_str())
}

fn daemonizing_bindfs_is_tracked_and_killed(backend: Backend) {
    if let Some(why) = bindfs_skip_reason() {
        eprintln!("SKIPPED daemonizing_bindfs_is_tracked_and_killed: {why}");
        return;
    }
    let w = World::new(backend);
    let src = w.tmp.path().join("src");
    let mnt = w.tmp.path().join("mnt");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello"), "world").unwrap();
    // No -f: bindfs forks into the background, its first process exits 0.
    let r = w.json([
        "spawn",
        "bind",
        "--mount",
        mnt.to_str().unwrap(),
        "--ready-timeout",
        "20",
        "--",
        "bindfs",
        src.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    let restore = scopeguard(mnt.clone());
    r.expect_code(0);
    let info = r.json();
    let pid = pid_of(&info);
    w.track(pid);
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["mount_state"], "mounted", "{info}");
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(
        fds.iter().any(|p| p == Path::new("/dev/fuse")),
        "the recorded helper {pid} is the process serving the mount (holding /dev/fuse): {fds:?}"
    );
    assert_eq!(std::fs::read_to_string(mnt.join("hello")).unwrap(), "world");

    let st = w.json(["status", "bind"]);
    st.expect_code(0);
    assert_eq!(st.json()["state"], "running", "{st:#?}");

    let k = w.json(["kill", "bind", "--grace", "5"]);
    k.expect_code(0);
    let kv = k.json();
    assert_eq!(kv["stopped"], true, "{kv}");
    assert_eq!(
        kv["was_running"], true,
        "kill found the daemon running: {kv}"
    );
    assert!(wait_dead(pid, STOP), "bindfs survived kill");
    assert!(!is_mount_point(&mnt), "the mount is left");
    drop(restore);
}

fn kill_after_unmount_stops_the_group_member_left(backend: Backend) {
    if let Some(why) = bindfs_skip_reason() {
        eprintln!("SKIPPED kill_after_unmount_stops_the_group_member_left: {why}");
        return;
    }
    let w = World::new(backend);
    let src = w.tmp.path().join("src");
    let mnt = w.tmp.path().join("mnt");
    std::fs::create_dir_all(&src).unwrap();
    let file = w.tmp.path().join("member.pid");
    // A foreground FUSE helper (bindfs -f exits once unmounted) with a member of its
    // group that ignores SIGTERM.
    let script = format!(
        r#"(trap "" TERM; exec sleep {}) & echo $! > {}; exec bindfs -f {} {}"#,
        unique_sleep(),
        file.display(),
        src.display(),
        mnt.display()
    );
    let r = w.json([
        "spawn",
        "fg",
        "--mount",
        mnt.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let restore = scopeguard(mnt.clone());
    r.expect_code(0);
    let pid = pid_of(&r.json());
    w.track(pid);
    let member = pid_in(&file);
    w.track(member);
    wait_comm(member, "sleep");
    let k = w.json(["kill", "fg", "--grace", "1"]);
    k.expect_code(0);
    let kv = k.json();
    assert_eq!(kv["stopped"], true, "{kv}");
    assert_eq!(kv["steps"][0], "unmount", "{kv}");
    assert_eq!(kv["signal"], "SIGKILL", "the member needed SIGKILL: {kv}");
    assert!(wait_dead(pid, STOP));
    assert!(!alive(member), "the member outlived kill: {kv}");
    assert!(!is_mount_point(&mnt));
    drop(restore);
}

/// Lazily detaches `dir` on drop if a failed assertion left it mounted.
struct MountGuard(std::path::PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mount_point(&self.0) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn scopeguard(dir: std::path::PathBuf) -> MountGuard {
    MountGuard(dir)
}

both_backends_both_ways!(
    daemonizing_shell_child_becomes_the_helper,
    undecidable_background_processes_fail_the_spawn_and_are_stopped,
    failing_leader_that_leaves_a_process_fails_the_spawn,
    foreground_helper_is_unchanged_and_settles_fast,
    daemonizing_bindfs_is_tracked_and_killed,
    kill_after_unmount_stops_the_group_member_left,
    cleanup_all_stops_helpers_together,
    kill_stops_a_group_member_that_outlives_sigterm,
    failed_ready_timeout_leaves_no_group_member,
    kill_continues_a_stopped_helper,
);
