//! Mount awareness end to end: the `dms` binary with the real FUSE helper
//! (`dms-testfuse`) mounting in a temp dir.
//!
//! Needs root and `/dev/fuse`; where either is missing every test prints why and is
//! skipped. The `dms` binary is taken from the same target directory (built by
//! `cargo test --workspace`). Every test detaches whatever is still mounted under its
//! temp dir and SIGKILLs (and reaps) every helper it started, even when it fails.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// Tests that hang a mount leave, while they run, probers of it that `dms` orphaned to
/// this (subreaper) process: they hold this for reading; the test that counts the
/// probers left over holds it for writing, so it counts only its own.
static HANGS: RwLock<()> = RwLock::new(());

/// Held by a test that hangs a mount (see [`HANGS`]).
fn hangs_a_mount() -> RwLockReadGuard<'static, ()> {
    HANGS.read().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn readiness_waits_for_a_slow_mount_without_fixed_sleeps() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("slow");
    assert!(!dir.exists(), "spawn must create the mount directory");
    let r = w.spawn("slow", &dir, &[], &["--mount-delay-ms", "500"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Returned only once the mount was there: not before the helper's 500 ms delay, and
    // not a fixed sleep later (the old code slept 2 s).
    assert!(
        is_mount_point(&dir),
        "spawn returned before the mount appeared"
    );
    assert!(r.elapsed >= Duration::from_millis(500), "{:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_millis(1900), "{:?}", r.elapsed);
    let v = r.json();
    assert_eq!(v["state"], "running");
    assert_eq!(v["mount"], dir.to_str().unwrap());
    assert_eq!(v["mounted"], true);
    assert_eq!(v["mount_state"], "mounted");
    assert_eq!(
        std::fs::read_to_string(dir.join("hello.txt")).unwrap(),
        "hello from dms-testfuse\n"
    );
    eprintln!(
        "spawn with a 500 ms mount delay returned after {:?}",
        r.elapsed
    );
    let k = w.dms(&["--json", "kill", "slow", "--grace", "2"]);
    assert_eq!(k.code, 0, "{}", k.stderr);
}

#[test]
fn relative_mount_dir_is_resolved_and_a_plain_spawn_has_no_mount() {
    require_fuse!();
    let w = World::new();
    std::fs::create_dir_all(w.tmp.path().join("mnt")).unwrap();
    let out = Command::new(dms_bin().unwrap())
        .current_dir(w.tmp.path())
        .arg("--run-dir")
        .arg(w.run_dir())
        .args(["--json", "spawn", "rel", "--mount", "mnt/rel", "--"])
        .arg(FUSE_HELPER)
        .arg(w.mnt("rel"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    w.helpers
        .lock()
        .unwrap()
        .push(v["pid"].as_i64().unwrap() as i32);
    assert_eq!(v["mount"], w.mnt("rel").to_str().unwrap());
    assert_eq!(v["mount_state"], "mounted");
    // Without --mount: started once the program runs; no mount fields.
    let r = w.dms(&["--json", "spawn", "plain", "--", "sleep", "300"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = r.json();
    w.helpers
        .lock()
        .unwrap()
        .push(p["pid"].as_i64().unwrap() as i32);
    assert_eq!(p["mount"], Value::Null);
    assert_eq!(p["mount_state"], Value::Null);
    assert_eq!(w.dms(&["kill", "plain", "--grace", "2"]).code, 0);
    assert_eq!(w.dms(&["kill", "rel", "--grace", "2"]).code, 0);
    assert!(!is_mount_point(&w.mnt("rel")));
}

#[test]
fn kill_of_a_healthy_mount_unmounts_first_and_leaves_no_mount() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("healthy");
    // SIGTERM is ignored: only the unmount can make it exit this fast without SIGKILL.
    let r = w.spawn("healthy", &dir, &[], &["--ignore-sigterm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pid = r.json()["pid"].as_i64().unwrap() as i32;
    let k = w.dms(&["--json", "kill", "healthy", "--grace", "5"]);
    assert_eq!(k.code, 0, "{}", k.stderr);
    let v = k.json();
    let s = steps(&v);
    assert_eq!(s.first().map(String::as_str), Some("unmount"), "{s:?}");
    assert!(
        !s.iter().any(|x| x.starts_with("SIG")),
        "no signal was needed: {s:?}"
    );
    assert_eq!(v["stopped"], true);
    assert_eq!(v["was_running"], true);
    assert!(
        !is_mount_point(&dir),
        "a mount is left at {}",
        dir.display()
    );
    assert!(
        reap(pid, Duration::from_secs(5)),
        "helper {pid} did not exit"
    );
    assert!(
        w.log("healthy").contains("unmounted; exiting"),
        "{}",
        w.log("healthy")
    );
    assert!(!w.run_dir().join("s3/healthy.pid").exists());
    assert!(!w.run_dir().join("mounts/healthy.mount").exists());
    let st = w.dms(&["--json", "status", "healthy"]);
    assert_eq!(st.code, 3);
    assert_eq!(st.json()["state"], "absent");
}

#[test]
fn sigkilled_helper_leaves_a_stale_mount_that_status_reports_and_cleanup_detaches() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("victim");
    let r = w.spawn("victim", &dir, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pid = r.json()["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(reap(pid, Duration::from_secs(5)));
    // The kernel leaves the mount, and it answers ENOTCONN.
    assert!(is_mount_point(&dir));
    let err = nix::sys::statfs::statfs(&dir).unwrap_err();
    assert_eq!(err, nix::errno::Errno::ENOTCONN);

    let st = w.dms(&["--json", "status", "victim"]);
    assert!(
        st.elapsed < Duration::from_secs(2),
        "status took {:?}",
        st.elapsed
    );
    let v = st.json();
    assert_eq!(st.code, 3, "{}", st.stdout);
    assert_eq!(v["state"], "stale");
    assert_eq!(v["mount_state"], "stale", "{v}");
    assert_eq!(v["mounted"], true);
    eprintln!("status of the stale mount answered in {:?}", st.elapsed);
    let stats = w.dms(&["--json", "stats"]).json();
    assert_eq!(stats["stale_mounts"], 1, "{stats}");

    let c = w.dms(&["--json", "cleanup", "--mounts"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let v = c.json();
    let mounts = v["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{v}");
    assert_eq!(mounts[0]["target"], "victim");
    assert_eq!(mounts[0]["path"], dir.to_str().unwrap());
    assert_eq!(mounts[0]["state"], "stale");
    assert!(
        mounts[0]["action"].as_str().unwrap().starts_with("detach"),
        "{v}"
    );
    assert!(!is_mount_point(&dir), "cleanup left the mount");
    assert!(mounts_under(w.tmp.path()).is_empty());
    assert_eq!(w.dms(&["--json", "stats"]).json()["stale_mounts"], 0);
    // Nothing left to do the second time.
    let again = w.dms(&["--json", "cleanup", "--mounts"]).json();
    assert_eq!(again["mounts"], serde_json::json!([]));
}

#[test]
fn hung_helper_is_stale_within_the_probe_timeout_and_kill_still_cleans_up() {
    require_fuse!();
    let _hangs = hangs_a_mount();
    let w = World::new();
    let dir = w.mnt("hung");
    let r = w.spawn(
        "hung",
        &dir,
        &[],
        &["--hang-statfs-on-usr1", "--ignore-sigterm"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pid = r.json()["pid"].as_i64().unwrap() as i32;
    hang(&w, "hung", pid);
    let st = w.dms(&["--json", "status", "hung"]);
    assert!(
        st.elapsed >= Duration::from_millis(1900) && st.elapsed < Duration::from_secs(4),
        "status took {:?}",
        st.elapsed
    );
    assert_eq!(st.json()["mount_state"], "stale", "{}", st.stdout);
    assert_eq!(st.json()["state"], "running");
    eprintln!("status of the hung mount answered in {:?}", st.elapsed);
    // One probe per mount in stats too: about 2 s, not one per view of it.
    let stats = w.dms(&["--json", "stats"]);
    assert_eq!(stats.json()["stale_mounts"], 1, "{}", stats.stdout);
    assert!(
        stats.elapsed < Duration::from_millis(3500),
        "stats took {:?}",
        stats.elapsed
    );
    let k = w.dms(&["--json", "kill", "hung", "--grace", "1"]);
    assert_eq!(k.code, 0, "{}", k.stderr);
    let v = k.json();
    let s = steps(&v);
    assert!(s.first().is_some_and(|x| x.starts_with("unmount")), "{s:?}");
    assert!(s.contains(&"SIGKILL".to_owned()), "{s:?}");
    assert_eq!(v["stopped"], true);
    assert!(reap(pid, Duration::from_secs(5)));
    assert!(!is_mount_point(&dir), "a mount is left: {s:?}");
    assert!(
        k.elapsed < Duration::from_secs(10),
        "kill took {:?}",
        k.elapsed
    );
}

/// Spawns a helper (ignoring SIGTERM) whose own `statfs` thread waits on its hung mount,
/// and returns its PID once that thread is stuck there.
fn spawn_stuck_in_own_mount(w: &World, target: &str, dir: &Path) -> i32 {
    let r = w.spawn(
        target,
        dir,
        &[],
        &["--hang-statfs-on-usr1", "--self-statfs", "--ignore-sigterm"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pid = r.json()["pid"].as_i64().unwrap() as i32;
    hang(w, target, pid);
    // The helper's statfs thread starts once the mount is up, so the spawn can return
    // before the daemon holds that thread's request: wait for it (its log says so), or
    // a SIGKILL that lands first simply works and there is nothing to abort.
    assert!(
        wait_for(Duration::from_secs(10), || w
            .log(target)
            .contains("(my own thread: true) left unanswered")),
        "the helper never received its own statfs: {}",
        w.log(target)
    );
    assert!(
        thread_stuck_in_fuse(pid),
        "no thread of helper {pid} waits in its own mount"
    );
    pid
}

#[test]
/// A thread of the helper waits in the kernel for an answer its own (hung) worker will
/// never give: after SIGKILL the leader is a zombie but that thread stays in D state
/// (checked by hand on this kernel) until the FUSE connection is aborted.
fn helper_stuck_in_its_own_mount_is_freed_by_detach_and_abort_after_sigkill() {
    require_fuse!();
    let _hangs = hangs_a_mount();
    let w = World::new();
    let dir = w.mnt("stuck");
    let pid = spawn_stuck_in_own_mount(&w, "stuck", &dir);
    let k = w.dms(&["--json", "kill", "stuck", "--grace", "0.5"]);
    assert_eq!(k.code, 0, "{} {}", k.stdout, k.stderr);
    let v = k.json();
    let s = steps(&v);
    let pos = |name: &str| s.iter().position(|x| x == name);
    assert!(s[0].starts_with("unmount"), "{s:?}");
    assert!(
        pos("SIGKILL").is_some() && pos("abort") > pos("SIGKILL"),
        "abort must follow a SIGKILL that did not work: {s:?}"
    );
    assert_eq!(v["stopped"], true);
    // Every thread is gone, including the one that was stuck in its own mount.
    assert!(
        reap(pid, Duration::from_secs(5)),
        "helper {pid} is still stuck: {s:?}"
    );
    assert!(!is_mount_point(&dir), "a mount is left: {s:?}");
    eprintln!(
        "kill of a helper stuck in its own mount: {s:?} in {:?}",
        k.elapsed
    );
}

#[test]
fn helper_that_fails_to_mount_fails_the_spawn_with_its_log_tail() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("broken");
    let r = w.spawn("broken", &dir, &[], &["--fail-mount"]);
    assert_eq!(r.code, 1, "{r:?}", r = (&r.stdout, &r.stderr));
    assert!(r.stderr.starts_with("dms: error:"), "{}", r.stderr);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("exited with code 3"), "{}", r.stderr);
    assert!(
        r.stderr.contains("refusing to mount (--fail-mount)"),
        "no log tail: {}",
        r.stderr
    );
    assert!(!w.run_dir().join("s3/broken.pid").exists());
    assert!(!w.run_dir().join("mounts/broken.mount").exists());
    assert!(!is_mount_point(&dir));
    assert_eq!(
        w.dms(&["--json", "status", "broken"]).json()["state"],
        "absent"
    );
}

#[test]
fn ready_timeout_stops_the_helper_and_keeps_nothing() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("late");
    let r = w.spawn(
        "late",
        &dir,
        &["--ready-timeout", "0.3"],
        &["--mount-delay-ms", "1500"],
    );
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("not mounted within 0.3 s"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("waiting 1500 ms before mounting"),
        "{}",
        r.stderr
    );
    let pid: i32 = r
        .stderr
        .split("(PID ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .expect("PID in the error");
    // The helper is gone (dms reaped it) and nothing is mounted or recorded.
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || reap(pid, Duration::ZERO));
    assert!(!is_mount_point(&dir));
    assert!(!w.run_dir().join("s3/late.pid").exists());
    assert!(!w.run_dir().join("mounts/late.mount").exists());
}

#[test]
fn spawn_on_a_directory_that_is_already_a_mount_point_is_refused() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("busy");
    let r = w.spawn("first", &dir, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Another target's recorded mount, its helper running: refused, naming it.
    let r2 = w.spawn("second", &dir, &["--ready-timeout", "1"], &[]);
    assert_eq!(r2.code, 1);
    assert!(
        r2.stderr.contains("recorded mount of target first"),
        "{}",
        r2.stderr
    );
    assert!(!w.run_dir().join("s3/second.pid").exists());
    assert!(!w.run_dir().join("mounts/second.mount").exists());
    // A mount dms did not record (the operator's own): refused as a mount point.
    let own = w.mnt("own");
    operator_mount(&w, &own);
    let r3 = w.spawn("third", &own, &["--ready-timeout", "1"], &[]);
    assert_eq!(r3.code, 1);
    assert!(r3.stderr.contains("already a mount point"), "{}", r3.stderr);
    assert!(!w.run_dir().join("s3/third.pid").exists());
    assert!(is_mount_point(&own));
    assert_eq!(w.dms(&["kill", "first", "--grace", "2"]).code, 0);
    assert!(!is_mount_point(&dir));
}

#[test]
fn replace_unmounts_the_old_helper_and_mounts_the_new_one() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("rep");
    let r = w.spawn("rep", &dir, &[], &["--ignore-sigterm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let old = r.json()["pid"].as_i64().unwrap() as i32;
    // The old helper ignores SIGTERM: only the unmount-first rule stops it quickly.
    let r2 = w.spawn("rep", &dir, &["--replace"], &[]);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert!(r2.elapsed < Duration::from_secs(5), "{:?}", r2.elapsed);
    let v = r2.json();
    assert_ne!(v["pid"].as_i64().unwrap() as i32, old);
    assert_eq!(v["mount_state"], "mounted");
    assert!(reap(old, Duration::from_secs(5)));
    assert!(w.log("rep").contains("unmounted; exiting"));
    // Exactly one mount at the directory: the new helper's.
    assert_eq!(mounts_under(&dir).len(), 1);
    assert_eq!(w.dms(&["kill", "rep", "--grace", "2"]).code, 0);
    assert!(!is_mount_point(&dir));
}

#[test]
/// `spawn --replace` stops the old helper as `kill` does, including the abort of the
/// FUSE connection when the old helper is stuck in its own mount (it ignores SIGTERM:
/// `--grace` keeps the wait short).
fn replace_frees_a_helper_stuck_in_its_own_mount() {
    require_fuse!();
    let _hangs = hangs_a_mount();
    let w = World::new();
    let dir = w.mnt("stuckrep");
    let old = spawn_stuck_in_own_mount(&w, "stuckrep", &dir);
    let r = w.spawn("stuckrep", &dir, &["--replace", "--grace", "0.5"], &[]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let v = r.json();
    assert_ne!(v["pid"].as_i64().unwrap() as i32, old);
    assert_eq!(v["mount_state"], "mounted");
    // Every thread of the old helper is gone, including the stuck one.
    assert!(
        reap(old, Duration::from_secs(5)),
        "old helper {old} is still stuck"
    );
    assert_eq!(mounts_under(&dir).len(), 1, "only the new helper's mount");
    eprintln!(
        "replace of a helper stuck in its own mount: {:?}",
        r.elapsed
    );
    assert_eq!(w.dms(&["kill", "stuckrep", "--grace", "2"]).code, 0);
    assert!(!is_mount_point(&dir));
}

#[test]
fn cleanup_mounts_detaches_a_mount_whose_helper_is_no_longer_recorded() {
    require_fuse!();
    let w = World::new();
    let dir = w.mnt("orphan");
    let keep = w.mnt("kept");
    let r = w.spawn("orphan", &dir, &[], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pid = r.json()["pid"].as_i64().unwrap() as i32;
    assert_eq!(w.spawn("kept", &keep, &[], &[]).code, 0);
    // The PID file is lost (as when /run is wiped): the helper is orphaned, its mount
    // healthy, and only the mount record still names it.
    std::fs::remove_file(w.run_dir().join("s3/orphan.pid")).unwrap();
    let c = w.dms(&["--json", "cleanup", "--mounts"]);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let v = c.json();
    let mounts = v["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "only the orphan's mount: {v}");
    assert_eq!(mounts[0]["target"], "orphan");
    assert_eq!(mounts[0]["state"], "mounted");
    assert!(
        mounts[0]["action"].as_str().unwrap().starts_with("detach"),
        "{v}"
    );
    assert!(!is_mount_point(&dir));
    // The orphaned helper sees its mount go and exits by itself.
    assert!(
        reap(pid, Duration::from_secs(5)),
        "orphaned helper {pid} still runs"
    );
    // The recorded target's healthy mount is untouched.
    assert!(is_mount_point(&keep));
    assert_eq!(
        w.dms(&["--json", "status", "kept"]).json()["mount_state"],
        "mounted"
    );
    assert_eq!(w.dms(&["kill", "kept", "--grace", "2"]).code, 0);
    assert!(mounts_under(w.tmp.path()).is_empty());
}

/// Children of this process whose name is `dms-mount-probe`.
fn probers() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 2..].split(' ').nth(1);
            comm == "dms-mount-probe" && ppid == Some(me.as_str())
        })
        .collect()
}

/// Each probe of a hung mount answers `stale` within its timeout, however the prober
/// is stuck (a request still queued can be killed; one the daemon read and never
/// answered cannot, until the connection ends), and no prober outlives the mount.
#[test]
fn probes_of_a_hung_mount_are_bounded_by_their_timeout_and_leave_no_prober() {
    require_fuse!();
    let _alone = HANGS.write().unwrap_or_else(|e| e.into_inner());
    let w = World::new();
    let dir = w.mnt("silent");
    let r = w.spawn("silent", &dir, &[], &["--hang-statfs-on-usr1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    hang(&w, "silent", pid_of(&r));
    // dms status's probe is the one the daemon read and never answers; that prober was
    // orphaned to this (subreaper) process when dms exited.
    let st = w.dms(&["--json", "status", "silent"]);
    assert_eq!(st.json()["mount_state"], "stale", "{}", st.stdout);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let limit = Duration::from_millis(300);
    rt.block_on(async {
        use dms_core::{mount::probe, MountState};
        for _ in 0..3 {
            let t = Instant::now();
            assert_eq!(probe(&dir, limit).await, MountState::Stale);
            let took = t.elapsed();
            assert!(took < limit * 3, "{took:?}");
        }
    });
    assert_eq!(w.dms(&["kill", "silent", "--grace", "1"]).code, 0);
    assert!(!is_mount_point(&dir));
    // With the daemon gone every prober ends: ours are reaped by dms-core's reaper
    // threads, the orphan by us.
    for pid in probers() {
        assert!(
            reap(pid, Duration::from_secs(5)),
            "prober {pid} is still stuck"
        );
    }
    assert!(
        wait_for(Duration::from_secs(5), || probers().is_empty()),
        "probers left: {:?}",
        probers()
    );
}
