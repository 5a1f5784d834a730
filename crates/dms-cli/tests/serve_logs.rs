//! Helper logs (serve.md "Helper logs"): `dms serve --log-max-bytes` keeps a chatty
//! helper's log and its older generation within the bound while it keeps writing;
//! `GET /v1/targets/{t}/logs` and `dms logs` read across the two; `dms logs -f` follows
//! across truncations; `dms logs` works without a daemon and escapes control characters.
//!
//! The writers are `python3` programs that pace themselves (a sleep after each write), so
//! the most they can write in any window of time is known, and with it the bound the
//! log must stay within. A test signals only the daemon and helpers it started.

mod common;
use dms_testkit::daemon;

use common::{wait_for, Backend, World};
use daemon::{call, Served};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";

fn have_python() -> bool {
    if Path::new(PYTHON).exists() {
        return true;
    }
    eprintln!("skipped: {PYTHON} is missing (the paced log writers are Python programs)");
    false
}

/// Spawns `argv` for `target` through the daemon; returns the helper's PID.
fn spawn(world: &World, s: &Served, target: &str, argv: &[&str]) -> i32 {
    let a = call(
        &s.socket,
        "POST",
        &format!("/v1/targets/{target}/spawn"),
        Some(json!({ "argv": argv })),
    );
    assert_eq!(a.status, 201, "{}", a.text);
    let pid = a.json()["pid"].as_i64().unwrap() as i32;
    world.track(pid);
    pid
}

fn size(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The bound, 1 MiB; the writer: 1,024 writes of 64 lines of 1 KiB (64 MiB in all), each
/// followed by a 10 ms sleep, then, after 1.5 s (the bounder has settled: what is written
/// in the instant of a truncation can be lost, as with logrotate's `copytruncate`, and on
/// a loaded machine that instant can hold a few blocks), 3 more lines and `END`, then it
/// sleeps on.
const MAX: u64 = 1 << 20;
const BLOCK: u64 = 64 * 1024;
const BLOCKS: u64 = 1024;
const CHATTY: &str = r#"
import os, time
for b in range(1024):
    os.write(1, b"".join(b"%08d " % (b * 64 + i) + b"x" * 1014 + b"\n" for i in range(64)))
    time.sleep(0.01)
time.sleep(1.5)
os.write(1, b"".join(b"%08d " % (1024 * 64 + i) + b"x" * 1014 + b"\n" for i in range(3)))
os.write(1, b"END\n")
time.sleep(300)
"#;

/// serve.md: within 2 s of passing the bound, the log's tail goes to `.1` and the log is
/// truncated. The writer sleeps 10 ms after each 64 KiB, so in any 2 s it writes at most
/// 201 blocks: the log never exceeds 1 MiB + 201 x 64 KiB (13.6 MiB; unbounded, it would
/// reach 64 MiB), and `.1` never exceeds 1 MiB. Sampled every few milliseconds while the
/// helper writes; then, once it has written everything, the log is within 1 MiB itself
/// (within 2 s), the same inode throughout (truncated in place), and its last lines are
/// readable through the API and `dms logs`.
#[test]
fn a_chatty_helpers_log_and_its_older_generation_stay_within_the_bound() {
    if !have_python() {
        return;
    }
    let world = World::new(Backend::Sqlite);
    let s = Served::start(&world, &["--log-max-bytes", "1M"]);
    let pid = spawn(&world, &s, "chatty", &[PYTHON, "-c", CHATTY]);
    let log = world.run_dir.join("logs/chatty.log");
    let older = world.run_dir.join("logs/chatty.log.1");
    assert!(wait_for(Duration::from_secs(30), || log.exists()));
    let ino = std::fs::metadata(&log).unwrap().ino();
    let log_bound = MAX + (Duration::from_secs(2).as_millis() as u64 / 10 + 1) * BLOCK;

    let (mut max_log, mut max_older, mut samples) = (0u64, 0u64, 0u64);
    let mut last_check = Instant::now();
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (l, o) = (size(&log), size(&older));
        samples += 1;
        max_log = max_log.max(l);
        max_older = max_older.max(o);
        assert!(
            l <= log_bound,
            "the log reached {l} bytes (bound {log_bound}) at {:?}: {}",
            started.elapsed(),
            s.log_text()
        );
        assert!(
            o <= MAX,
            "the older generation reached {o} bytes (bound {MAX})"
        );
        if last_check.elapsed() > Duration::from_millis(200) {
            last_check = Instant::now();
            let a = call(&s.socket, "GET", "/v1/targets/chatty/logs?lines=1", None);
            if a.text == "END\n" {
                break;
            }
            assert!(Instant::now() < deadline, "the writer did not finish");
            assert!(common::alive(pid), "the writer died: {}", s.log_text());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "{samples} samples: log at most {max_log} bytes (bound {log_bound}), .1 at most \
         {max_older} (bound {MAX}), {} MiB written",
        (BLOCK * BLOCKS) >> 20
    );
    assert!(max_older > 0, "nothing was ever truncated");
    assert!(
        wait_for(Duration::from_secs(5), || size(&log) <= MAX),
        "the log stays over the bound once the writer stopped: {} bytes",
        size(&log)
    );
    assert_eq!(
        std::fs::metadata(&log).unwrap().ino(),
        ino,
        "truncated in place"
    );
    assert!(
        common::alive(pid),
        "the writer went on to the end and still runs"
    );

    // The last lines, across the log and .1, through the API and the CLI.
    let want: String = (BLOCKS * 64..BLOCKS * 64 + 3)
        .map(|n| format!("{n:08} {}\n", "x".repeat(1014)))
        .chain(["END\n".to_owned()])
        .collect();
    let a = call(&s.socket, "GET", "/v1/targets/chatty/logs?lines=4", None);
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "text/plain");
    assert_eq!(a.text, want);
    let r = world.run(["logs", "chatty", "-n", "4"]);
    r.expect_code(0);
    assert_eq!(r.stdout, want);
    let a = call(&s.socket, "POST", "/v1/targets/chatty/kill", None);
    assert_eq!(a.status, 200, "{}", a.text);
}

/// The endpoint's rules: 400 for a bad query, 404 when there is no log (or it is not a
/// regular file), an empty 200 for `lines=0`, and the default of 100 lines.
#[test]
fn the_logs_endpoint_answers_each_case() {
    let world = World::new(Backend::Pidfile);
    let s = Served::start(&world, &[]);
    let a = call(&s.socket, "GET", "/v1/targets/none/logs", None);
    assert_eq!(a.status, 404, "{}", a.text);
    assert_eq!(a.json()["error"]["code"], "not_found");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("none.log"));
    for bad in ["lines=abc", "lines=-1", "lines=2000000", "tail=3"] {
        let a = call(&s.socket, "GET", &format!("/v1/targets/x/logs?{bad}"), None);
        assert_eq!(a.status, 400, "{bad}: {}", a.text);
        assert_eq!(a.json()["error"]["code"], "bad_request", "{bad}");
    }
    let a = call(&s.socket, "GET", "/v1/targets/..%2Fx/logs", None);
    assert_eq!(a.status, 400, "{}", a.text);

    let logs = world.run_dir.join("logs");
    let text: String = (0..150).map(|n| format!("{n}\n")).collect();
    std::fs::write(logs.join("many.log"), &text).unwrap();
    let a = call(&s.socket, "GET", "/v1/targets/many/logs", None);
    assert_eq!(a.status, 200);
    let want: String = (50..150).map(|n| format!("{n}\n")).collect();
    assert_eq!(a.text, want, "the default is 100 lines");
    let a = call(&s.socket, "GET", "/v1/targets/many/logs?lines=0", None);
    assert_eq!((a.status, a.text.as_str()), (200, ""));

    // A helper whose log is /dev/null: nothing to read, said so.
    let a = call(
        &s.socket,
        "POST",
        "/v1/targets/quiet/spawn",
        Some(json!({"argv": ["sleep", common::unique_sleep()], "log": "/dev/null"})),
    );
    assert_eq!(a.status, 201, "{}", a.text);
    world.track(a.json()["pid"].as_i64().unwrap() as i32);
    let a = call(&s.socket, "GET", "/v1/targets/quiet/logs", None);
    assert_eq!(a.status, 404, "{}", a.text);
    assert!(
        a.text.contains("/dev/null is a character device"),
        "{}",
        a.text
    );
    call(&s.socket, "POST", "/v1/targets/quiet/kill", None);
}

/// Whether the main thread of `pid` (a process this test started) waits in
/// `epoll_wait(2)`: its wait channel says so, or, where the kernel hides wait channels,
/// its current system call (x86_64: `epoll_wait`, `epoll_pwait`, `epoll_pwait2`).
fn waits_in_epoll(pid: i32) -> bool {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    read("wchan").contains("epoll")
        || (cfg!(target_arch = "x86_64")
            && ["232 ", "281 ", "441 "]
                .iter()
                .any(|n| read("syscall").starts_with(n)))
}

/// The follower's writer: numbered lines, one every 2 ms, then `END`.
const NUMBERED: &str = r#"
import os, time
for i in range(2000):
    os.write(1, b"%06d\n" % i)
    time.sleep(0.002)
os.write(1, b"END\n")
time.sleep(300)
"#;

/// `dms logs -f` goes on across truncations: with a 1 KiB bound the log is truncated
/// every second or so; the follower prints every line in order, none twice. A line the
/// helper writes between the daemon's read of the tail and its truncation (a few
/// microseconds, as with logrotate's copytruncate) is lost for everyone, so at most one
/// line per truncation may be missing.
#[test]
fn dms_logs_follow_goes_on_across_truncations() {
    if !have_python() {
        return;
    }
    let world = World::new(Backend::Pidfile);
    let s = Served::start(&world, &["--log-max-bytes", "1K"]);
    let log = world.run_dir.join("logs/numbered.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut follower = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"))
        .arg("--run-dir")
        .arg(&world.run_dir)
        .args(["logs", "numbered", "-f", "-n", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The follower waits for the log to appear: it is in its follow loop once its
    // (current-thread) runtime first parks in epoll, between two looks at the log.
    let follower_pid = follower.id() as i32;
    assert!(
        wait_for(Duration::from_secs(30), || waits_in_epoll(follower_pid)),
        "the follower never started following"
    );
    spawn(&world, &s, "numbered", &[PYTHON, "-c", NUMBERED]);
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines.last().map(String::as_str) != Some("END") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!(
                "no END within 60 s; got {} lines: {:?}",
                lines.len(),
                lines.last()
            ),
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let truncations = s.log_text().matches("truncated").count();
    let numbers: Vec<u32> = lines[..lines.len() - 1]
        .iter()
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("not a numbered line: {l:?}"))
        })
        .collect();
    assert!(
        truncations >= 2,
        "the log was truncated {truncations} times: {}",
        s.log_text()
    );
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice: {numbers:?}"
    );
    let missing = (numbers[numbers.len() - 1] - numbers[0] + 1) as usize - numbers.len();
    eprintln!(
        "{} lines followed, {truncations} truncations, {missing} lines missing",
        numbers.len()
    );
    assert_eq!(*numbers.last().unwrap(), 1999);
    assert!(
        numbers[0] < 100,
        "the follower started late, at line {}",
        numbers[0]
    );
    assert!(
        missing <= truncations,
        "{missing} lines missing over {truncations} truncations: {numbers:?}"
    );
    call(&s.socket, "POST", "/v1/targets/numbered/kill", None);
}

/// `dms logs` without a daemon: the recorded `--log FILE` (SQLite backend), read across
/// its `.1`; control characters escaped in text, exact in `--json`; no log is exit 1
/// saying where it looked.
#[test]
fn dms_logs_without_a_daemon() {
    let world = World::new(Backend::Sqlite);
    let file = world.tmp.path().join("own.log");
    std::fs::write(world.tmp.path().join("own.log.1"), "old 1\nold 2\n").unwrap();
    let r = world.json([
        "spawn",
        "t",
        "--log",
        file.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "printf 'new\\n\\033[31mred\\n'; exec sleep 300",
    ]);
    r.expect_code(0);
    world.track(common::pid_of(&r.json()));
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.ends_with("red\n"))
    }));
    let r = world.run(["logs", "t", "-n", "3"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "old 2\nnew\n\\u{1b}[31mred\n");
    let r = world.json(["logs", "t", "-n", "3"]);
    r.expect_code(0);
    assert_eq!(
        r.json(),
        json!({"target": "t", "log": file, "lines": ["old 2", "new", "\u{1b}[31mred"]})
    );
    let r = world.run(["logs", "missing"]);
    r.expect_code(1).expect_one_error_line();
    assert!(r.stderr.contains("missing.log"), "{r:?}");
    let r = world.run(["logs", "t", "-n", "x"]);
    r.expect_code(2);
    world.run(["kill", "t", "--grace", "1"]).expect_code(0);
}
