//! The command line with a daemon (serve.md "The CLI with a daemon"): what only exists
//! with one (`events`, `restart`, `reload`, `--restart`), `--direct` beside a daemon, and
//! the answers when no daemon serves the run dir. The shared commands run both ways in
//! the lifecycle and process-group suites (`both_backends_both_ways!`).

mod common;

use common::{pid_of, unique_sleep, via_daemon, wait_dead, Backend, World};
use serde_json::Value;
use std::io::BufRead;
use std::time::Duration;

const STOP: Duration = Duration::from_secs(10);

/// Without a daemon, the commands that need one exit 1 and say how to start it; a
/// spawn with a restart policy is bad usage (exit 2); and nothing is created for them.
#[test]
fn commands_that_need_a_daemon_say_how_to_start_it() {
    let w = World::new(Backend::Pidfile);
    for args in [&["restart", "t1"][..], &["events"], &["reload"]] {
        let r = w.run(args);
        r.expect_code(1).expect_one_error_line();
        assert!(
            r.stderr.contains("needs the daemon")
                && r.stderr
                    .contains(&format!("dms --run-dir {} serve", w.run_dir.display())),
            "{args:?}: {r:#?}"
        );
    }
    let r = w.run(["spawn", "t1", "--restart", "always", "--", "sleep", "1"]);
    r.expect_code(2).expect_one_error_line();
    assert!(r.stderr.contains("--restart needs the daemon"), "{r:#?}");
    assert!(!w.pid_file("t1").exists());
    // `never` is what the one-shot path does anyway: accepted.
    let dur = unique_sleep();
    let r = w.json(["spawn", "t1", "--restart", "never", "--", "sleep", &dur]);
    r.expect_code(0);
    w.track(pid_of(&r.json()));
    w.run(["kill", "t1"]).expect_code(0);
}

/// Beside a daemon, `--direct` acts from the command line's own process: the helper
/// the daemon holds in memory reads `both` from the daemon and `disk` from `--direct`,
/// and a helper `--direct` starts is found by the daemon on disk.
#[test]
fn direct_bypasses_the_daemon() {
    via_daemon(|| {
        let w = World::new(Backend::Sqlite);
        let info = w.spawn("held", &["sleep", &unique_sleep()]);
        assert_eq!(info["source"], "both", "{info}");
        let r = w.json(["status", "held"]);
        r.expect_code(0);
        assert_eq!(r.json()["source"], "both");
        assert!(r.json().get("supervision").is_some(), "from the daemon");
        let r = w.json(["--direct", "status", "held"]);
        r.expect_code(0);
        assert_eq!(r.json()["source"], "disk");
        assert!(
            r.json().get("supervision").is_none(),
            "from the one-shot path"
        );

        let r = w.json(["--direct", "spawn", "solo", "--", "sleep", &unique_sleep()]);
        r.expect_code(0);
        let solo = pid_of(&r.json());
        w.track(solo);
        let r = w.json(["status", "solo"]);
        r.expect_code(0);
        assert_eq!(r.json()["pid"], solo);
        assert_eq!(r.json()["state"], "running");
        // The per-target locks keep both paths apart: the daemon refuses a second one.
        let r = w.run(["spawn", "solo", "--", "sleep", "1"]);
        r.expect_code(1).expect_one_error_line();
        assert!(
            r.stderr
                .contains(&format!("target solo is already running (PID {solo})")),
            "{r:#?}"
        );
        w.run(["kill", "solo"]).expect_code(0);
        assert!(wait_dead(solo, STOP));
        w.run(["kill", "held"]).expect_code(0);
    });
}

/// `dms events` follows the daemon's stream: a spawn and the helper's exit are lines of
/// it, in order, as text and as JSON; `--since 0` replays what was kept.
#[test]
fn events_follow_the_daemon() {
    via_daemon(|| {
        let w = World::new(Backend::Pidfile);
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"));
        c.arg("--run-dir")
            .arg(&w.run_dir)
            .args(["--json", "events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut follower = c.spawn().expect("dms events starts");
        let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();

        let info = w.spawn("ev", &["sh", "-c", "read x; exit 7"]);
        let pid = pid_of(&info);
        // The helper reads from /dev/null: it exits at once with 7.
        assert!(wait_dead(pid, STOP));
        let mut kinds = Vec::new();
        for line in lines.by_ref() {
            let v: Value = serde_json::from_str(&line.unwrap()).expect("one JSON event a line");
            if v["target"] == "ev" {
                kinds.push(v["kind"].as_str().unwrap().to_owned());
                if v["kind"] == "exited" {
                    assert_eq!(v["pid"], pid);
                    assert_eq!(v["code"], 7, "{v}");
                    break;
                }
            }
        }
        assert_eq!(kinds, ["spawned", "exited"]);
        let _ = follower.kill();
        let _ = follower.wait();

        // The replay, as text: one line per event, with its kind, target and PID.
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"));
        c.arg("--run-dir")
            .arg(&w.run_dir)
            .args(["events", "--since", "0"])
            .stdout(std::process::Stdio::piped());
        let mut replay = c.spawn().unwrap();
        let mut text = std::io::BufReader::new(replay.stdout.take().unwrap()).lines();
        let first = text.next().unwrap().unwrap();
        let second = text.next().unwrap().unwrap();
        let _ = replay.kill();
        let _ = replay.wait();
        assert!(first.contains(&format!(" spawned ev PID {pid}")), "{first}");
        assert!(
            second.contains(&format!(" exited ev PID {pid}")),
            "{second}"
        );
        assert!(second.contains("code=7"), "{second}");
    });
}

/// The end of the daemon ends `dms events` with exit code 0.
#[test]
fn events_end_when_the_daemon_stops() {
    let w = World::new(Backend::Pidfile);
    let mut serve = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"))
        .arg("--run-dir")
        .arg(&w.run_dir)
        .arg("serve")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = w.run_dir.join("dms.sock");
    assert!(common::wait_for(STOP, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    }));
    // A first event, so the follower's first line shows it is connected.
    w.spawn("one", &["sleep", &unique_sleep()]);
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"));
    c.arg("--run-dir")
        .arg(&w.run_dir)
        .args(["events", "--since", "0"]);
    let mut events = c.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(events.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains(" spawned one "), "{first}");
    let serve_pid = nix::unistd::Pid::from_raw(serve.id() as i32);
    nix::sys::signal::kill(serve_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(serve.wait().unwrap().code(), Some(0));
    // The rest of the stream (no more events) ends, and so does the command.
    assert!(lines.all(|l| l.is_ok()));
    let status = events.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    w.run(["kill", "one"]).expect_code(0);
}
