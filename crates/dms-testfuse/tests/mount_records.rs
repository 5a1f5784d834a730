//! Mount records act on exactly their own mount (issue 17 item 1), a spawn whose mount
//! does not answer fails (issue 17 item 7), and the mount probes of one listing run
//! concurrently under one deadline (issue 11 item 5); with the real FUSE helper.
//!
//! Needs root and `/dev/fuse` (else each test prints why and is skipped). Every test
//! detaches what is left under its temp dir and kills every helper it started.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// SIGKILLs `pid` (a helper this test started through dms) and reaps it.
fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        reap(pid, Duration::from_secs(5)),
        "helper {pid} did not die"
    );
}

/// Target A's helper dies and its (stale) mount is unmounted by hand; target B mounts
/// the same directory. Returns B's PID.
fn a_dies_and_b_takes_its_directory(w: &World, dir: &Path) -> i32 {
    let a = w.spawn("a", dir, &[], &[]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    sigkill(pid_of(&a));
    nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert!(!is_mount_point(dir));
    let b = w.spawn("b", dir, &[], &[]);
    assert_eq!(b.code, 0, "{}", b.stderr);
    pid_of(&b)
}

#[test]
fn kill_of_a_dead_target_leaves_the_mount_another_target_made_at_its_path() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("shared");
    let b = a_dies_and_b_takes_its_directory(&w, &dir);
    let k = w.dms(&["--json", "kill", "a"]);
    assert_eq!(k.code, 3, "{} {}", k.stdout, k.stderr);
    let s = steps(&k.json());
    assert_eq!(s, ["clear_stale"], "nothing but A's PID file: {s:?}");
    assert!(
        answers(&dir, Duration::from_secs(2)),
        "B's mount was touched"
    );
    assert!(alive(b), "B's helper {b} was stopped");
    assert!(
        !w.run_dir().join("mounts/a.mount").exists(),
        "A's record stays after A was cleaned"
    );
    let st = w.dms(&["--json", "status", "b"]).json();
    assert_eq!(
        (&st["state"], &st["mount_state"]),
        (&"running".into(), &"mounted".into())
    );
    assert_eq!(w.dms(&["kill", "b", "--grace", "2"]).code, 0);
    assert!(!is_mount_point(&dir));
}

#[test]
fn cleanup_mounts_after_a_dead_targets_pid_file_is_gone_leaves_the_other_targets_mount() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("shared");
    let b = a_dies_and_b_takes_its_directory(&w, &dir);
    std::fs::remove_file(w.run_dir().join("s3/a.pid")).unwrap();
    // A's record names its old mount, not B's: A reads unmounted.
    let st = w.dms(&["--json", "status", "a"]).json();
    assert_eq!(st["mount_state"], "unmounted", "{st}");
    let c = w.dms(&["--json", "cleanup", "--mounts"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(c.json()["mounts"], serde_json::json!([]), "{}", c.stdout);
    assert!(
        answers(&dir, Duration::from_secs(2)),
        "B's mount was touched"
    );
    assert!(alive(b), "B's helper {b} was stopped");
    assert!(!w.run_dir().join("mounts/a.mount").exists());
    assert!(w.run_dir().join("mounts/b.mount").exists());
}

#[test]
fn cleanup_of_a_dead_helper_clears_its_record_once_its_mount_is_gone() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("gone");
    let a = w.spawn("gone", &dir, &[], &[]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    sigkill(pid_of(&a));
    // The stale mount is still there: plain cleanup keeps the record for --mounts.
    assert_eq!(w.dms(&["cleanup"]).code, 0);
    assert!(w.run_dir().join("mounts/gone.mount").exists());
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    // Spawned again (the PID file is gone now) and dead again, its mount unmounted: the
    // cleanup that removes the PID file removes the record too.
    let a = w.spawn("gone", &dir, &[], &[]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    sigkill(pid_of(&a));
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let c = w.dms(&["--json", "cleanup"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(!w.run_dir().join("s3/gone.pid").exists());
    assert!(
        !w.run_dir().join("mounts/gone.mount").exists(),
        "the record outlived its helper and its mount"
    );
}

#[test]
fn cleanup_mounts_never_touches_a_mount_it_did_not_record() {
    require_fuse!();
    let w = World::new();
    let old = w.mnt("old");
    // A dead helper's old path, now the operator's own FUSE mount; and records that
    // name paths only (an older dms, or a hand-made file), one of them `/`.
    let a = w.spawn("a", &old, &[], &[]);
    assert_eq!(a.code, 0, "{}", a.stderr);
    sigkill(pid_of(&a));
    nix::mount::umount2(&old, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let operator = operator_mount(&w, &old);
    let records = w.run_dir().join("mounts");
    std::fs::write(records.join("root.mount"), b"/").unwrap();
    std::fs::write(
        records.join("legacy.mount"),
        old.as_os_str().as_encoded_bytes(),
    )
    .unwrap();
    let c = w.dms(&["--json", "cleanup", "--mounts"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let v = c.json();
    assert!(
        answers(&old, Duration::from_secs(2)),
        "the operator's mount was touched: {v}"
    );
    assert!(
        alive(operator),
        "the operator's FUSE daemon {operator} died: {v}"
    );
    let mounts = v["mounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .all(|m| m["action"].as_str().unwrap().starts_with("kept:")),
        "only reports, no action: {v}"
    );
    let targets: Vec<&str> = mounts
        .iter()
        .map(|m| m["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["legacy", "root"], "{v}");
    // A's record (its mount is gone) is forgotten; the unproven ones stay for the operator.
    assert!(!records.join("a.mount").exists());
    assert!(records.join("legacy.mount").exists());
}

/// A record that names only a path (an older dms wrote it) proves nothing: `kill` stops
/// the helper but leaves the mount there (step `mount_unproven`), `cleanup --mounts`
/// reports it as kept, and the record goes once nothing is mounted at its path.
#[test]
fn a_record_without_identity_acts_on_nothing_and_says_so() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("legacy");
    let r = w.spawn("legacy", &dir, &[], &["--ignore-sigterm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pid = pid_of(&r);
    let record = w.run_dir().join("mounts/legacy.mount");
    std::fs::write(&record, dir.as_os_str().as_encoded_bytes()).unwrap();
    let k = w.dms(&["--json", "kill", "legacy", "--grace", "0.5"]);
    assert_eq!(k.code, 0, "{} {}", k.stdout, k.stderr);
    let s = steps(&k.json());
    assert!(s.contains(&"mount_unproven".to_owned()), "{s:?}");
    assert!(
        !s.iter()
            .any(|x| x == "unmount" || x == "detach" || x == "abort"),
        "{s:?}"
    );
    assert!(reap(pid, Duration::from_secs(5)));
    assert!(is_mount_point(&dir), "the unproven mount was touched");
    assert!(
        record.exists(),
        "the record is kept while its path is mounted"
    );
    let c = w.dms(&["--json", "cleanup", "--mounts"]).json();
    assert!(
        c["mounts"][0]["action"]
            .as_str()
            .unwrap()
            .starts_with("kept: "),
        "{c}"
    );
    assert!(is_mount_point(&dir));
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let c = w.dms(&["--json", "cleanup", "--mounts"]).json();
    assert_eq!(c["mounts"], serde_json::json!([]), "{c}");
    assert!(!record.exists());
}

#[test]
fn spawn_refuses_another_live_targets_mount_the_root_and_the_run_dir() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("one");
    assert_eq!(w.spawn("one", &dir, &[], &[]).code, 0);
    std::fs::create_dir_all(w.run_dir().join("inner")).unwrap();
    let run_inner = w.run_dir().join("inner");
    for (mount, code, says) in [
        (dir.as_path(), 1, "recorded mount of target one"),
        (Path::new("/"), 2, "it is the root directory"),
        (run_inner.as_path(), 2, "inside the run directory"),
        (w.tmp.path(), 2, "holds the run directory"),
    ] {
        let r = w.spawn("two", mount, &["--ready-timeout", "2"], &[]);
        assert_eq!(
            r.code,
            code,
            "{}: {} {}",
            mount.display(),
            r.stdout,
            r.stderr
        );
        assert!(r.stderr.contains(says), "{}", r.stderr);
        assert!(r.stderr.starts_with("dms: error:"), "{}", r.stderr);
        assert!(!w.run_dir().join("s3/two.pid").exists());
        assert!(!w.run_dir().join("mounts/two.mount").exists());
    }
    assert!(answers(&dir, Duration::from_secs(2)));
}

/// Two spawns of different targets on one directory at the same time (each helper slow
/// to mount): exactly one gets it, the other is refused naming it; one mount there.
#[test]
fn concurrent_spawns_of_two_targets_on_one_directory_start_one() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("contested");
    let slow = ["--mount-delay-ms", "700"];
    let (ra, rb) = std::thread::scope(|s| {
        let a = s.spawn(|| w.spawn("a", &dir, &[], &slow));
        let b = s.spawn(|| w.spawn("b", &dir, &[], &slow));
        (a.join().unwrap(), b.join().unwrap())
    });
    let codes = (ra.code, rb.code);
    assert!(
        codes == (0, 1) || codes == (1, 0),
        "a: {} {} | b: {} {}",
        ra.code,
        ra.stderr,
        rb.code,
        rb.stderr
    );
    let (won, lost, loser, winner) = if ra.code == 0 {
        (&ra, &rb, "b", "a")
    } else {
        (&rb, &ra, "a", "b")
    };
    assert!(
        lost.stderr.contains(&format!("target {winner}")),
        "{}",
        lost.stderr
    );
    assert_eq!(won.json()["mount_state"], "mounted");
    assert_eq!(mounts_under(&dir).len(), 1, "one mount at the directory");
    assert!(!w.run_dir().join(format!("s3/{loser}.pid")).exists());
    assert!(!w.run_dir().join(format!("mounts/{loser}.mount")).exists());
    assert_eq!(w.dms(&["kill", winner, "--grace", "2"]).code, 0);
    assert!(!is_mount_point(&dir));
}

#[test]
fn spawn_whose_mount_comes_up_but_does_not_answer_fails_and_keeps_nothing() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("mute");
    let r = w.spawn("mute", &dir, &[], &["--hang-statfs"]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.starts_with("dms: error:"), "{}", r.stderr);
    assert!(r.stderr.contains("does not answer"), "{}", r.stderr);
    assert!(
        r.stderr.contains("statfs received; hanging"),
        "no log tail: {}",
        r.stderr
    );
    assert!(r.elapsed < Duration::from_secs(15), "{:?}", r.elapsed);
    let pid: i32 = r
        .stderr
        .split("(PID ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .expect("PID in the error");
    assert!(
        reap(pid, Duration::from_secs(5)),
        "helper {pid} was left running"
    );
    assert!(!is_mount_point(&dir), "its mount was left");
    assert!(!w.run_dir().join("s3/mute.pid").exists());
    assert!(!w.run_dir().join("mounts/mute.mount").exists());
    eprintln!(
        "spawn of a mount that does not answer failed in {:?}",
        r.elapsed
    );
}

#[test]
fn spawn_whose_helper_exits_right_after_mounting_fails_and_keeps_nothing() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("nobucket");
    let r = w.spawn("nobucket", &dir, &[], &["--exit-after-mount"]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.starts_with("dms: error:"), "{}", r.stderr);
    assert!(
        r.stderr.contains("the bucket does not exist"),
        "no log tail: {}",
        r.stderr
    );
    assert!(!is_mount_point(&dir), "its dead mount was left");
    assert!(!w.run_dir().join("s3/nobucket.pid").exists());
    assert!(!w.run_dir().join("mounts/nobucket.mount").exists());
}

/// The checks of the new mount directory come before the old helper is stopped and must
/// not hang on its mount: a SIGSTOPped FUSE daemon answers nothing (a `stat` of its mount
/// point would wait forever).
#[test]
fn replace_of_a_stopped_fuse_helper_checks_the_directory_without_hanging_on_it() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("frozen");
    let r = w.spawn("frozen", &dir, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let old = pid_of(&r);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    // Let the root's cached attributes (100 ms) expire, so a stat would ask the daemon:
    // this wait is the scenario (the kernel's cache has no state a test can await).
    std::thread::sleep(Duration::from_millis(300));
    let r2 = w.spawn("frozen", &dir, &["--replace", "--grace", "0.5"], &[]);
    assert_eq!(r2.code, 0, "{} {}", r2.stdout, r2.stderr);
    assert!(r2.elapsed < Duration::from_secs(10), "{:?}", r2.elapsed);
    assert!(reap(old, Duration::from_secs(5)), "old helper {old} left");
    assert_eq!(r2.json()["mount_state"], "mounted");
    assert_eq!(mounts_under(&dir).len(), 1, "only the new helper's mount");
    eprintln!("replace of a stopped FUSE helper: {:?}", r2.elapsed);
}

#[test]
fn status_and_stats_answer_within_one_probe_limit_however_many_mounts_hang() {
    require_fuse!();
    let w = World::new();
    let n = 6;
    for i in 0..n {
        let t = format!("h{i}");
        let r = w.spawn(&t, &w.mnt(&t), &[], &["--hang-statfs-on-usr1"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        hang(&w, &t, pid_of(&r));
    }
    let st = w.dms(&["--json", "status"]);
    assert_eq!(st.code, 0, "{}", st.stderr);
    let infos = st.json();
    let states: Vec<&str> = infos
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["mount_state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["stale"; n], "{infos}");
    assert!(
        st.elapsed < Duration::from_secs(4),
        "status took {:?}",
        st.elapsed
    );
    let stats = w.dms(&["--json", "stats"]);
    assert_eq!(stats.json()["stale_mounts"], n, "{}", stats.stdout);
    assert!(
        stats.elapsed < Duration::from_secs(4),
        "stats took {:?}",
        stats.elapsed
    );
    eprintln!(
        "{n} hung mounts: status {:?}, stats {:?}",
        st.elapsed, stats.elapsed
    );
}
