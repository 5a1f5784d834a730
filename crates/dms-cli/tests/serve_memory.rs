//! The memory half of `dms serve`, with a real daemon on a real socket: a PID file
//! written by hand is loaded and watched (event `adopted`, within a second of the
//! write), and its helper's exit is an `exited` event; a PID file removed by hand ends
//! the tracking of its helper (event `untracked`) without any signal, while a file
//! replaced by an atomic rename and the daemon's own spawns and kills are no change from
//! outside; usage is sampled in the background (CPU over the last interval, at most
//! 2 s old).
//!
//! The processes signalled here are the test's own (started by it, directly or through
//! the daemon's API); the test process is a child subreaper (see `common`).

mod common;
use dms_testkit::daemon;

use common::{alive, wait_dead, wait_for, Backend, World};
use daemon::{events_until, of_kind, Served};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// A process of the test's own that writes a marker file if it ever gets SIGTERM (so a
/// signal it must never get is seen); returns its PID and the marker's path.
fn own_helper(world: &World, name: &str) -> (i32, PathBuf) {
    let marker = world.tmp.path().join(format!("{name}.sigterm"));
    let script = format!(
        "trap 'echo TERM > {}; exit 0' TERM; while :; do sleep 1; done",
        marker.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    drop(child);
    world.track(pid);
    (pid, marker)
}

/// One request; the status, the body as JSON (`Null` when it is not) and as text.
fn call(socket: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value, String) {
    let a = daemon::call(socket, method, path, body);
    (a.status, a.json(), a.text)
}

fn time_of(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("an RFC 3339 time")).unwrap()
}

/// Events after `since` for `target` until one of `kind` is there.
fn until_kind(socket: &Path, since: u64, target: &str, kind: &str) -> Vec<Value> {
    events_until(socket, since, Duration::from_secs(20), |ev| {
        ev.iter()
            .any(|e| e["kind"] == kind && e["target"] == target)
    })
}

#[test]
fn a_pid_file_written_by_hand_is_loaded_and_watched() {
    for backend in [Backend::Pidfile, Backend::Sqlite] {
        let world = World::new(backend);
        let s = Served::start(&world, &[]);
        let (pid, marker) = own_helper(&world, "handwritten");
        // Bare-file rule: written after the process started.
        world.write_bare_pid_file("hand", &pid.to_string());
        let written = SystemTime::now();
        let events = until_kind(&s.socket, 0, "hand", "adopted");
        let adopted = of_kind(&events, "adopted")
            .into_iter()
            .find(|e| e["target"] == "hand")
            .unwrap()
            .clone();
        assert_eq!(adopted["pid"], pid);
        // The daemon stamps the event when it happens (not when this test reads it).
        let after = time_of(&adopted["time"])
            .duration_since(written)
            .unwrap_or_default();
        assert!(
            after <= Duration::from_secs(1),
            "{backend:?}: loaded {after:?} after the write"
        );
        eprintln!("{backend:?}: hand-written PID file loaded {after:?} after the write");
        let (code, info, text) = call(&s.socket, "GET", "/v1/targets/hand", None);
        assert_eq!(code, 200, "{text}");
        assert_eq!(info["state"], "running");
        assert_eq!(info["source"], "both");
        assert_eq!(info["pid"], pid);

        // Watched: its exit (the test stops its own process) is an event.
        let since = adopted["seq"].as_u64().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let events = until_kind(&s.socket, since, "hand", "exited");
        let exited = of_kind(&events, "exited")[0];
        assert_eq!(exited["pid"], pid);
        assert!(wait_dead(pid, Duration::from_secs(10)));
        assert!(!marker.exists());
        let (_, info, _) = call(&s.socket, "GET", "/v1/targets/hand", None);
        assert_eq!(info["state"], "absent", "{info}");
    }
}

#[test]
fn a_removed_pid_file_ends_the_tracking_without_any_signal() {
    let world = World::new(Backend::Sqlite);
    let s = Served::start(&world, &[]);
    let (pid, marker) = own_helper(&world, "removed");
    let (code, _, text) = call(
        &s.socket,
        "POST",
        "/v1/targets/gone/adopt",
        Some(json!({ "pid": pid })),
    );
    assert_eq!(code, 200, "{text}");
    let pid_file = world.pid_file("gone");
    assert!(pid_file.exists());

    // An atomic replace by hand (a temporary file renamed onto it, as dms writes): a
    // write, not a removal.
    let temp = pid_file.with_file_name(".gone.pid.by-hand.tmp");
    std::fs::write(&temp, format!("{pid}\n")).unwrap();
    std::fs::rename(&temp, &pid_file).unwrap();

    // The daemon's own spawn and kill of another target.
    let (code, v, text) = call(
        &s.socket,
        "POST",
        "/v1/targets/own/spawn",
        Some(json!({"argv": ["sleep", "300"]})),
    );
    assert_eq!(code, 201, "{text}");
    world.track(v["pid"].as_i64().unwrap() as i32);
    let (code, _, _) = call(
        &s.socket,
        "POST",
        "/v1/targets/own/kill",
        Some(json!({"grace_secs": 5})),
    );
    assert_eq!(code, 200);

    std::fs::remove_file(&pid_file).unwrap();
    let events = until_kind(&s.socket, 0, "gone", "untracked");
    let untracked = of_kind(&events, "untracked");
    assert_eq!(untracked.len(), 1, "{events:?}");
    assert_eq!(untracked[0]["target"], "gone");
    assert_eq!(untracked[0]["pid"], pid);
    // Only the adopt and the end of tracking for `gone`; for `own`, what the API did.
    let kinds = |target: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["target"] == target)
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds("gone"), ["adopted", "untracked"], "{events:?}");
    assert_eq!(kinds("own"), ["spawned", "killed"], "{events:?}");

    let (_, info, _) = call(&s.socket, "GET", "/v1/targets/gone", None);
    assert_eq!(info["state"], "absent", "{info}");
    // Never signalled: alive, and no SIGTERM marker (SIGKILL would have ended it).
    assert!(alive(pid));
    assert!(!marker.exists());
    // And not taken back by a later lookup either: there is no file to find.
    let (_, stats, _) = call(&s.socket, "GET", "/v1/stats", None);
    assert_eq!(stats["total_tracked"], 0, "{stats}");
}

#[test]
fn usage_is_sampled_in_the_background() {
    let world = World::new(Backend::Pidfile);
    let s = Served::start(&world, &[]);
    let spawn = |target: &str, argv: Value| {
        let (code, v, text) = call(
            &s.socket,
            "POST",
            &format!("/v1/targets/{target}/spawn"),
            Some(json!({ "argv": argv })),
        );
        assert_eq!(code, 201, "{text}");
        let pid = v["pid"].as_i64().unwrap() as i32;
        world.track(pid);
        pid
    };
    spawn("busy", json!(["sh", "-c", "while :; do :; done"]));
    spawn("idle", json!(["sleep", "300"]));
    let usage = |target: &str| {
        let (code, info, text) = call(&s.socket, "GET", &format!("/v1/targets/{target}"), None);
        assert_eq!(code, 200, "{text}");
        let age = info["usage_sampled_at"].as_str().map(|_| {
            SystemTime::now()
                .duration_since(time_of(&info["usage_sampled_at"]))
                .unwrap_or_default()
        });
        (info["cpu_percent"].as_f64(), age, info)
    };
    let mut seen = None;
    let ok = wait_for(Duration::from_secs(10), || {
        let (busy, busy_age, _) = usage("busy");
        let (idle, idle_age, _) = usage("idle");
        let fresh = |a: Option<Duration>| a.is_some_and(|a| a <= Duration::from_secs(2));
        seen = Some((busy, busy_age, idle, idle_age));
        // Near 100 on an idle machine; the bound leaves room for a loaded one.
        busy.is_some_and(|c| c > 30.0)
            && idle.is_some_and(|c| c < 5.0)
            && fresh(busy_age)
            && fresh(idle_age)
    });
    assert!(ok, "busy/idle cpu_percent and sample age: {seen:?}");
    eprintln!("busy cpu, age, idle cpu, age: {seen:?}");
    // The listing shows the same columns.
    let (code, list, _) = call(&s.socket, "GET", "/v1/targets", None);
    assert_eq!(code, 200);
    for info in list.as_array().unwrap() {
        assert!(info["usage_sampled_at"].is_string(), "{info}");
        assert!(info["rss_bytes"].as_u64().is_some_and(|r| r > 0), "{info}");
        assert!(info["threads"].as_u64().is_some_and(|n| n >= 1), "{info}");
    }
    let (code, _, _) = call(
        &s.socket,
        "POST",
        "/v1/cleanup",
        Some(json!({"all": true, "grace_secs": 5})),
    );
    assert_eq!(code, 200);
}

/// A supervised helper whose PID file is removed from outside: a stop from outside, so
/// its supervision ends (its spec is forgotten) and nothing restarts it.
#[test]
fn a_removed_pid_file_ends_supervision_too() {
    let world = World::new(Backend::Pidfile);
    let s = Served::start(&world, &[]);
    let (code, v, text) = call(
        &s.socket,
        "POST",
        "/v1/targets/sup/spawn",
        Some(json!({"argv": ["sleep", "300"], "restart": {"policy": "always"}})),
    );
    assert_eq!(code, 201, "{text}");
    let pid = v["pid"].as_i64().unwrap() as i32;
    world.track(pid);
    assert_eq!(v["supervision"]["policy"], "always", "{v}");
    std::fs::remove_file(world.pid_file("sup")).unwrap();
    let events = until_kind(&s.socket, 0, "sup", "untracked");
    assert_eq!(of_kind(&events, "untracked")[0]["pid"], pid);
    let ok = wait_for(Duration::from_secs(10), || {
        call(&s.socket, "GET", "/v1/targets/sup", None).1["supervision"].is_null()
    });
    assert!(ok, "the spec of an untracked helper is forgotten");
    let (_, info, _) = call(&s.socket, "GET", "/v1/targets/sup", None);
    assert_eq!(info["state"], "absent", "{info}");
    assert!(alive(pid), "not signalled");
}
