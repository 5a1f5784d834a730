//! End to end with real helpers: spawn, status, stats, kill, adopt, cleanup through the
//! built `dms` binary, in a temp run dir, on both backends.

mod common;

use common::{
    alive, files_under, own_sleep, pid_of, processes_with_cmdline, unique_sleep, wait_dead,
    wait_for, Backend, World,
};
use serde_json::Value;
use std::time::{Duration, Instant};

const STOP: Duration = Duration::from_secs(10);

/// Every field of cli.md's info object is present with its type; checks the common ones.
#[track_caller]
fn check_info(w: &World, info: &Value, target: &str, state: &str) {
    let o = info
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {info}"));
    for key in [
        "target",
        "pid",
        "state",
        "running",
        "pid_file",
        "pid_file_exists",
        "source",
        "started_at",
        "uptime_secs",
        "cpu_percent",
        "rss_bytes",
        "threads",
        "cmdline",
        "mount",
        "mounted",
        "mount_state",
    ] {
        assert!(o.contains_key(key), "info object lacks {key:?}: {info}");
    }
    assert_eq!(info["target"], target, "{info}");
    assert_eq!(info["state"], state, "{info}");
    assert_eq!(info["running"], state == "running", "{info}");
    assert_eq!(
        info["pid_file"].as_str().unwrap(),
        w.pid_file(target).to_str().unwrap(),
        "{info}"
    );
    assert_eq!(
        info["pid_file_exists"],
        w.pid_file(target).exists(),
        "{info}"
    );
    let source = &info["source"];
    assert!(
        source.is_null() || ["memory", "disk", "both"].contains(&source.as_str().unwrap()),
        "{info}"
    );
    if state == "running" {
        let pid = pid_of(info);
        assert!(alive(pid), "{info}");
        assert!(!source.is_null(), "{info}");
        let started = info["started_at"]
            .as_str()
            .expect("started_at of a running helper");
        assert!(
            started.len() >= 20 && started.as_bytes()[10] == b'T' && started.ends_with('Z'),
            "started_at is not RFC 3339 UTC: {started}"
        );
        let uptime = info["uptime_secs"].as_f64().expect("uptime_secs");
        assert!((0.0..3600.0).contains(&uptime), "{info}");
        assert!(info["cpu_percent"].as_f64().unwrap() >= 0.0, "{info}");
        // A number, but possibly 0: `spawn` samples its helper right after the exec,
        // when the kernel may not have mapped a page of the new image yet.
        assert!(info["rss_bytes"].as_u64().is_some(), "{info}");
        assert!(info["threads"].as_u64().unwrap() >= 1, "{info}");
        assert!(info["cmdline"].is_array(), "{info}");
    } else {
        assert!(info["uptime_secs"].is_null(), "{info}");
        assert!(info["cpu_percent"].is_null(), "{info}");
        assert!(info["rss_bytes"].is_null(), "{info}");
        assert!(info["threads"].is_null(), "{info}");
    }
    if state == "absent" {
        assert!(info["pid"].is_null(), "{info}");
        assert_eq!(info["pid_file_exists"], false, "{info}");
        assert!(info["source"].is_null(), "{info}");
    }
}

/// cli.md's kill object.
#[track_caller]
fn check_kill(report: &Value, target: &str, was_running: bool) {
    let o = report
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {report}"));
    for key in ["target", "pid", "was_running", "signal", "stopped", "steps"] {
        assert!(o.contains_key(key), "kill object lacks {key:?}: {report}");
    }
    assert_eq!(report["target"], target);
    assert_eq!(report["was_running"], was_running, "{report}");
    assert!(report["steps"].is_array(), "{report}");
    if was_running {
        assert_eq!(report["stopped"], true, "{report}");
        let signal = report["signal"].as_str().unwrap();
        assert!(["SIGTERM", "SIGKILL"].contains(&signal), "{report}");
        let steps: Vec<&str> = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(steps.first(), Some(&"SIGTERM"), "{report}");
        assert!(steps.contains(&signal), "{report}");
    } else {
        assert!(report["signal"].is_null(), "{report}");
    }
}

fn spawn_status_kill_round_trip(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    let info = w.spawn("target-1", &["sleep", &dur]);
    check_info(&w, &info, "target-1", "running");
    let pid = pid_of(&info);
    assert_eq!(info["cmdline"], serde_json::json!(["sleep", dur]));
    assert!(info["mount"].is_null() && info["mounted"].is_null() && info["mount_state"].is_null());
    assert_eq!(processes_with_cmdline(&["sleep", &dur]), [pid]);
    // dms writes `PID\n`.
    assert_eq!(
        std::fs::read_to_string(w.pid_file("target-1")).unwrap(),
        format!("{pid}\n")
    );
    assert!(
        w.run_dir.join("logs/target-1.log").is_file(),
        "default log file missing"
    );

    // A new dms process sees it from disk.
    let r = w.json(["status", "target-1"]);
    r.expect_code(0);
    let status = r.json();
    check_info(&w, &status, "target-1", "running");
    assert_eq!(pid_of(&status), pid);

    let r = w.json(["status"]);
    r.expect_code(0);
    let all = r.json();
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    check_info(&w, &all[0], "target-1", "running");

    // Human output: a table with a header and one row naming the PID.
    let r = w.run(["status"]);
    r.expect_code(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{r:#?}");
    assert!(
        lines[0].starts_with("TARGET") && lines[0].contains("PID"),
        "{r:#?}"
    );
    assert!(lines[1].starts_with("target-1") && lines[1].contains(&pid.to_string()));

    let started = Instant::now();
    let r = w.json(["kill", "target-1", "--grace", "5"]);
    r.expect_code(0);
    let report = r.json();
    check_kill(&report, "target-1", true);
    assert_eq!(pid_of(&report), pid);
    assert_eq!(
        report["signal"], "SIGTERM",
        "sleep dies of SIGTERM: {report}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "kill waited the grace out"
    );
    assert!(wait_dead(pid, STOP), "helper still alive after kill");
    assert!(!w.pid_file("target-1").exists());

    // Not running any more: kill exits 3, status TARGET exits 3 with an absent info.
    let r = w.json(["kill", "target-1"]);
    r.expect_code(3);
    check_kill(&r.json(), "target-1", false);
    let r = w.json(["status", "target-1"]);
    r.expect_code(3);
    check_info(&w, &r.json(), "target-1", "absent");
    let r = w.run(["kill", "target-1"]);
    r.expect_code(3);
    assert!(r.stdout.contains("not running"), "{r:#?}");
    let r = w.json(["status"]);
    r.expect_code(0);
    assert_eq!(r.json(), serde_json::json!([]));
}

fn second_spawn_is_refused_and_replace_restarts(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    let first = pid_of(&w.spawn("t", &["sleep", &dur]));

    let r = w.json(["spawn", "t", "--", "sleep", &dur]);
    r.expect_code(1).expect_one_error_line();
    assert!(r.stderr.contains("already running"), "{r:#?}");
    assert!(r.stdout.is_empty());
    assert!(alive(first));

    let r = w.json(["spawn", "t", "--replace", "--", "sleep", &dur]);
    r.expect_code(0);
    let info = r.json();
    let second = pid_of(&info);
    w.track(second);
    check_info(&w, &info, "t", "running");
    assert_ne!(first, second);
    assert!(
        wait_dead(first, STOP),
        "--replace left the old helper running"
    );
    assert_eq!(processes_with_cmdline(&["sleep", &dur]), [second]);
    w.run(["kill", "t"]).expect_code(0);
    assert!(wait_dead(second, STOP));
}

fn helper_env_is_own_plus_additions_and_values_are_never_shown(backend: Backend) {
    let w = World::new(backend);
    let out = w.tmp.path().join("env.out");
    let env_file = w.tmp.path().join("t.env");
    std::fs::write(
        &env_file,
        "# credentials\nFROM_FILE=file-secret-1\n\nOVERRIDDEN=file\n",
    )
    .unwrap();
    let script = format!(
        "printf '%s|%s|%s|%s|%s' \"$INHERITED\" \"$FROM_OWN\" \"$LITERAL\" \"$FROM_FILE\" \
         \"$OVERRIDDEN\" > {out}.tmp && mv {out}.tmp {out}; exec sleep 300",
        out = out.display()
    );
    let mut c = w.cmd();
    c.env("INHERITED", "inherited-secret-0")
        .env("FROM_OWN", "own-secret-2")
        .env("RUST_LOG", "trace")
        .arg("--json")
        .arg("-vvv")
        .args([
            "spawn",
            "envtest",
            "--env",
            "FROM_OWN",
            "--env",
            "LITERAL=literal-secret-3",
        ])
        .arg("--env-file")
        .arg(&env_file)
        .args(["--env", "OVERRIDDEN=cli", "--", "sh", "-c", &script]);
    let r = common::run(&mut c);
    r.expect_code(0);
    let pid = pid_of(&r.json());
    w.track(pid);
    assert!(
        wait_for(STOP, || out.exists()),
        "helper never wrote its environment"
    );
    // Through the daemon, the helper's base environment is the daemon's (as a service
    // gets the service manager's, not the caller's of `systemctl start`): only the
    // `--env` items and the files reach it from the command line.
    let inherited = if w.via_daemon() {
        ""
    } else {
        "inherited-secret-0"
    };
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("{inherited}|own-secret-2|literal-secret-3|file-secret-1|cli")
    );

    // Values are never printed, logged or stored (keys may be).
    let r2 = w.json(["-vvv", "status", "envtest"]);
    r2.expect_code(0);
    for secret in ["own-secret-2", "file-secret-1"] {
        for text in [&r.stdout, &r.stderr, &r2.stdout, &r2.stderr] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        for f in files_under(&w.run_dir) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes
                    .windows(secret.len())
                    .any(|win| win == secret.as_bytes()),
                "{secret} stored in {}",
                f.display()
            );
        }
    }
    w.run(["kill", "envtest"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

fn handwritten_bare_pid_file_is_running_then_killed(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    // The process exists before its PID file, as in the existing deployment.
    let pid = own_sleep(&w, &dur);
    assert!(wait_for(STOP, || alive(pid)));
    w.write_bare_pid_file("legacy", &pid.to_string());

    let r = w.json(["status", "legacy"]);
    r.expect_code(0);
    let info = r.json();
    check_info(&w, &info, "legacy", "running");
    assert_eq!(pid_of(&info), pid);

    let r = w.run(["status"]);
    r.expect_code(0);
    assert!(
        r.stdout.contains("legacy") && r.stdout.contains("running"),
        "{r:#?}"
    );

    let r = w.json(["kill", "legacy", "--grace", "5"]);
    r.expect_code(0);
    let report = r.json();
    check_kill(&report, "legacy", true);
    assert_eq!(pid_of(&report), pid);
    assert!(
        wait_dead(pid, STOP),
        "the hand-recorded sleep survived dms kill"
    );
    assert!(!w.pid_file("legacy").exists());
}

/// Spawns, as `target`, a shell that ignores SIGTERM, and returns its PID once its trap
/// is set.
fn spawn_sigterm_ignoring(w: &World, target: &str) -> i32 {
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

fn sigterm_ignoring_helper_is_killed_by_escalation_within_grace(backend: Backend) {
    let w = World::new(backend);
    let pid = spawn_sigterm_ignoring(&w, "stubborn");

    let grace = 1.0;
    let started = Instant::now();
    let r = w.json(["kill", "stubborn", "--grace", "1"]);
    let elapsed = started.elapsed();
    r.expect_code(0);
    let report = r.json();
    check_kill(&report, "stubborn", true);
    assert_eq!(report["signal"], "SIGKILL", "{report}");
    let steps = report["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s == "SIGTERM") && steps.iter().any(|s| s == "SIGKILL"),
        "{report}"
    );
    assert!(
        elapsed.as_secs_f64() < grace + 1.0,
        "stopped after {elapsed:?}, more than --grace + 1 s"
    );
    assert!(
        elapsed.as_secs_f64() >= grace * 0.9,
        "SIGKILL came before the grace period ended ({elapsed:?})"
    );
    assert!(wait_dead(pid, STOP));
    assert!(!w.pid_file("stubborn").exists());
}

/// `spawn --replace --grace SECS`: a SIGTERM-ignoring old helper gets SIGKILL after
/// SECS, not after the default 10 s, and the new helper runs in its place.
fn replace_gives_a_sigterm_ignoring_helper_the_grace_asked_for(backend: Backend) {
    let w = World::new(backend);
    let old = spawn_sigterm_ignoring(&w, "stubborn");

    let grace = 1.0;
    let dur = unique_sleep();
    let started = Instant::now();
    let r = w.json([
        "spawn",
        "stubborn",
        "--replace",
        "--grace",
        "1",
        "--",
        "sleep",
        &dur,
    ]);
    let elapsed = started.elapsed();
    r.expect_code(0);
    let new = pid_of(&r.json());
    w.track(new);
    assert_ne!(old, new);
    assert!(wait_dead(old, STOP), "the old helper survived the replace");
    assert!(
        elapsed.as_secs_f64() < grace + 1.0,
        "replaced after {elapsed:?}, more than --grace + 1 s"
    );
    assert!(
        elapsed.as_secs_f64() >= grace * 0.9,
        "SIGKILL came before the grace period ended ({elapsed:?})"
    );
    assert_eq!(processes_with_cmdline(&["sleep", &dur]), [new]);
    // --grace means nothing without --replace: refused as bad usage, nothing started.
    let r = w.json(["spawn", "other", "--grace", "1", "--", "sleep", &dur]);
    r.expect_code(2).expect_one_error_line();
    assert!(r.stderr.contains("--replace"), "{r:#?}");
    assert!(!w.pid_file("other").exists());
    w.run(["kill", "stubborn"]).expect_code(0);
    assert!(wait_dead(new, STOP));
}

fn concurrent_spawns_leave_exactly_one_helper(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    const N: usize = 20;
    let results: Vec<common::Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| s.spawn(|| w.json(["spawn", "race", "--", "sleep", &dur])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&common::Run> = results.iter().filter(|r| r.code == 0).collect();
    for r in &results {
        if r.code == 0 {
            w.track(pid_of(&r.json()));
        }
    }
    assert_eq!(winners.len(), 1, "{results:#?}");
    for r in results.iter().filter(|r| r.code != 0) {
        r.expect_code(1).expect_one_error_line();
        assert!(r.stderr.contains("already running"), "{r:#?}");
    }
    let pid = pid_of(&winners[0].json());
    assert_eq!(processes_with_cmdline(&["sleep", &dur]), [pid]);
    assert_eq!(
        std::fs::read_to_string(w.pid_file("race")).unwrap().trim(),
        pid.to_string()
    );
    w.run(["kill", "race"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

fn missing_program_leaves_no_pid_file(backend: Backend) {
    let w = World::new(backend);
    for program in ["/nonexistent/dms-e2e-helper", "dms-e2e-no-such-program"] {
        let r = w.json(["spawn", "ghost", "--", program, "arg"]);
        r.expect_code(1).expect_one_error_line();
        assert!(
            r.stderr.contains("dms-e2e-"),
            "error does not name the program: {r:#?}"
        );
        assert!(r.stdout.is_empty());
        assert!(
            !w.pid_file("ghost").exists(),
            "a PID file was left for {program}"
        );
        let r = w.json(["status", "ghost"]);
        r.expect_code(3);
        check_info(&w, &r.json(), "ghost", "absent");
    }
}

fn adopt_records_a_running_process_and_refuses_a_dead_one(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    let pid = own_sleep(&w, &dur);
    assert!(wait_for(STOP, || alive(pid)));

    let r = w.json(["adopt", "adopted", &pid.to_string()]);
    r.expect_code(0);
    let info = r.json();
    check_info(&w, &info, "adopted", "running");
    assert_eq!(pid_of(&info), pid);
    assert_eq!(
        std::fs::read_to_string(w.pid_file("adopted"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    // Human output: one line naming the PID.
    let other = own_sleep(&w, &dur);
    assert!(wait_for(STOP, || alive(other)));
    let r = w.run(["adopt", "other", &other.to_string()]);
    r.expect_code(0);
    assert_eq!(r.stdout, format!("adopted PID {other} for other\n"));

    // A PID that is no longer alive is refused.
    let dead = dead_pid();
    let r = w.json(["adopt", "dead", &dead.to_string()]);
    r.expect_code(1).expect_one_error_line();
    assert!(!w.pid_file("dead").exists());

    for (target, pid) in [("adopted", pid), ("other", other)] {
        let r = w.json(["kill", target, "--grace", "5"]);
        r.expect_code(0);
        check_kill(&r.json(), target, true);
        assert!(wait_dead(pid, STOP));
    }
}

/// A PID that was alive a moment ago and is now dead and reaped.
fn dead_pid() -> i32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    // The zombie sweep of a concurrent test may have reaped it first: then wait fails.
    let _ = c.wait();
    assert!(common::wait_for(STOP, || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    i32::try_from(pid).unwrap()
}

fn stats_count_every_state(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    let pid = pid_of(&w.spawn("alive", &["sleep", &dur]));
    w.write_bare_pid_file("dead", &dead_pid().to_string());
    w.write_bare_pid_file("garbage", "not a pid");

    let r = w.json(["stats"]);
    r.expect_code(0);
    let s = r.json();
    for key in [
        "total_tracked",
        "pid_files_on_disk",
        "running",
        "stale",
        "foreign",
        "corrupt",
        "stale_mounts",
        "backend",
        "run_dir",
    ] {
        assert!(s.get(key).is_some(), "stats lack {key:?}: {s}");
    }
    // `stats` only reads (as `systemctl status` does): the stale file is counted and
    // stays until `cleanup`; only the live helper counts as tracked.
    assert_eq!(s["pid_files_on_disk"], 3, "{s}");
    assert!(w.pid_file("dead").exists());
    assert_eq!(s["total_tracked"], 1, "{s}");
    assert_eq!(s["running"], 1, "{s}");
    assert_eq!(s["stale"], 1, "{s}");
    assert_eq!(s["corrupt"], 1, "{s}");
    assert_eq!(s["foreign"], 0, "{s}");
    assert!(s["stale_mounts"].is_null() || s["stale_mounts"] == 0, "{s}");
    assert_eq!(s["backend"], backend.name());
    assert_eq!(s["run_dir"].as_str().unwrap(), w.run_dir.to_str().unwrap());

    let r = w.run(["stats"]);
    r.expect_code(0);
    assert_eq!(r.stdout.lines().count(), 1, "{r:#?}");
    assert!(r.stdout.contains("1 running, 1 stale"), "{r:#?}");

    // status lists them sorted, with their states.
    w.write_bare_pid_file("dead", &dead_pid().to_string());
    let r = w.json(["status"]);
    r.expect_code(0);
    let all = r.json();
    let targets: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["alive", "dead", "garbage"]);
    check_info(&w, &all[0], "alive", "running");
    check_info(&w, &all[1], "dead", "stale");
    assert!(all[1]["pid"].is_i64(), "{all}");
    check_info(&w, &all[2], "garbage", "corrupt");
    w.write_bare_pid_file("dead", &dead_pid().to_string());
    let r = w.json(["status", "dead"]);
    r.expect_code(3);
    check_info(&w, &r.json(), "dead", "stale");
    w.json(["status", "garbage"]).expect_code(3);

    w.run(["kill", "alive"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

/// The bytes and modification time of a file.
fn snapshot(path: &std::path::Path) -> (Vec<u8>, std::time::SystemTime) {
    (
        std::fs::read(path).unwrap(),
        std::fs::metadata(path).unwrap().modified().unwrap(),
    )
}

/// Every name under `dir` (recursively), sorted.
fn names_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// `status` and `stats` only read (as `systemctl status` does): a stale PID file is
/// reported as `stale` with its PID and `source` `disk`, and stays, unchanged, with no
/// lock file made for it, until `cleanup` removes it.
fn status_and_stats_only_read_and_leave_a_stale_pid_file(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    let pid = pid_of(&w.spawn("alive", &["sleep", &dur]));
    let dead = dead_pid();
    w.write_bare_pid_file("dead", &dead.to_string());
    let before = snapshot(&w.pid_file("dead"));
    // The temporary file of a write interrupted an hour ago: a writer's open removes
    // it, a reader leaves it.
    let temp = w.run_dir.join("s3/.dead.pid.12345.tmp");
    std::fs::File::create(&temp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    let names = names_under(&w.run_dir);
    // The rows of the SQLite database (a hand-written PID file has none: a reader must
    // not add one).
    let rows = || -> Vec<(String, i64)> {
        let conn = rusqlite::Connection::open(w.run_dir.join("dms.sqlite3")).unwrap();
        let mut stmt = conn
            .prepare("SELECT target, pid FROM records ORDER BY target")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    };
    let rows_before = (backend == Backend::Sqlite).then(rows);

    let r = w.json(["status"]);
    r.expect_code(0);
    let all = r.json();
    check_info(&w, &all[0], "alive", "running");
    let dead_info = &all[1];
    check_info(&w, dead_info, "dead", "stale");
    assert_eq!(dead_info["pid"], dead, "{all}");
    assert_eq!(dead_info["source"], "disk", "{all}");
    assert_eq!(dead_info["pid_file_exists"], true, "{all}");
    let r = w.json(["status", "dead"]);
    r.expect_code(3);
    assert_eq!(r.json()["state"], "stale");
    let r = w.run(["status"]);
    r.expect_code(0);
    assert!(
        r.stdout.contains(&format!(
            "PID {dead} is dead; `dms cleanup` removes its PID file"
        )),
        "{r:#?}"
    );
    let r = w.json(["stats"]);
    r.expect_code(0);
    assert_eq!(r.json()["stale"], 1);
    assert_eq!(r.json()["running"], 1);

    assert_eq!(
        snapshot(&w.pid_file("dead")),
        before,
        "status changed the stale file"
    );
    // The daemon's inotify sync looks at a hand-written PID file under its target's
    // lock, whenever the file appears: its lock file is the daemon's, not a write of
    // `status`.
    let without_daemon_locks = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|n| !(w.via_daemon() && n.starts_with("locks/")))
            .collect()
    };
    assert_eq!(
        without_daemon_locks(names_under(&w.run_dir)),
        without_daemon_locks(names),
        "status or stats wrote in the run dir"
    );
    // A one-shot reader writes no row. The daemon holds the database open for writing
    // and gives a hand-written PID file its bare row as it lists it (the sqlite
    // backend's reconciliation), which is not a write of `status`.
    if let (Some(before), false) = (rows_before, w.via_daemon()) {
        assert_eq!(rows(), before, "status or stats wrote rows");
    }

    let r = w.json(["cleanup"]);
    r.expect_code(0);
    assert_eq!(
        r.json()["removed"],
        serde_json::json!([{"target": "dead", "reason": "stale"}])
    );
    assert!(!w.pid_file("dead").exists());
    // The one-shot `cleanup` opens the store for writing, which removes stale temporary
    // files; a daemon did that when it started (before this file was made).
    if !w.via_daemon() {
        assert!(!temp.exists(), "cleanup left a stale temporary file");
    }
    w.run(["kill", "alive"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

/// `spawn` and `kill` act on their own target's entry only (no scan of the others): a
/// stale PID file of another target survives both, and each still checks identity and
/// records the helper before it runs.
fn spawn_and_kill_touch_only_their_own_target(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    let dead = dead_pid();
    w.write_bare_pid_file("other", &dead.to_string());
    let before = snapshot(&w.pid_file("other"));

    let info = w.spawn("mine", &["sleep", &dur]);
    let pid = pid_of(&info);
    check_info(&w, &info, "mine", "running");
    assert_eq!(
        std::fs::read_to_string(w.pid_file("mine")).unwrap().trim(),
        pid.to_string()
    );
    // A second spawn of the same target is refused: the one-shot manager found the live
    // helper through its entry alone.
    let r = w.json(["spawn", "mine", "--", "sleep", &dur]);
    r.expect_code(1);
    assert!(r.stderr.contains("already running"), "{r:#?}");

    let r = w.json(["kill", "mine", "--grace", "5"]);
    r.expect_code(0);
    check_kill(&r.json(), "mine", true);
    assert!(wait_dead(pid, STOP));
    assert!(!w.pid_file("mine").exists());
    assert_eq!(
        snapshot(&w.pid_file("other")),
        before,
        "spawn or kill touched another target"
    );
}

fn cleanup_removes_dead_entries_and_all_stops_helpers(backend: Backend) {
    let w = World::new(backend);
    let dur = unique_sleep();
    let a = pid_of(&w.spawn("a-alive", &["sleep", &dur]));
    let b = pid_of(&w.spawn("b-alive", &["sleep", &dur]));
    w.write_bare_pid_file("c-dead", &dead_pid().to_string());
    w.write_bare_pid_file("d-garbage", "");

    let r = w.json(["cleanup"]);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(
        v["removed"],
        serde_json::json!([
            {"target": "c-dead", "reason": "stale"},
            {"target": "d-garbage", "reason": "corrupt"},
        ]),
        "{v}"
    );
    assert_eq!(v["stopped"], serde_json::json!([]), "{v}");
    assert!(!w.pid_file("c-dead").exists() && !w.pid_file("d-garbage").exists());
    assert!(w.pid_file("a-alive").exists() && alive(a) && alive(b));

    let r = w.run(["cleanup"]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), "removed no PID files");

    let r = w.json(["cleanup", "--all", "--grace", "5"]);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(v["removed"], serde_json::json!([]), "{v}");
    assert_eq!(
        v["stopped"],
        serde_json::json!(["a-alive", "b-alive"]),
        "{v}"
    );
    assert!(wait_dead(a, STOP) && wait_dead(b, STOP));
    assert!(!w.pid_file("a-alive").exists() && !w.pid_file("b-alive").exists());
    let r = w.json(["stats"]);
    assert_eq!(r.json()["total_tracked"], 0);
}

fn kill_of_a_stale_entry_exits_3_and_removes_the_file(backend: Backend) {
    let w = World::new(backend);
    let pid = dead_pid();
    w.write_bare_pid_file("gone", &pid.to_string());
    let r = w.json(["kill", "gone"]);
    r.expect_code(3);
    let report = r.json();
    check_kill(&report, "gone", false);
    assert_eq!(pid_of(&report), pid, "{report}");
    assert_eq!(report["stopped"], false, "{report}");
    assert!(
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "clear_stale"),
        "{report}"
    );
    assert!(!w.pid_file("gone").exists(), "the stale PID file was left");
}

fn output_goes_to_the_log_file(backend: Backend) {
    let w = World::new(backend);
    let default_log = w.run_dir.join("logs/chatty.log");
    let pid = pid_of(&w.spawn(
        "chatty",
        &[
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exec sleep 300",
        ],
    ));
    assert!(
        wait_for(STOP, || {
            std::fs::read_to_string(&default_log)
                .is_ok_and(|s| s.contains("to-stdout") && s.contains("to-stderr"))
        }),
        "default log {} lacks the output",
        default_log.display()
    );
    w.run(["kill", "chatty"]).expect_code(0);
    assert!(wait_dead(pid, STOP));

    let log = w.tmp.path().join("custom.log");
    let r = w.json([
        "spawn".as_ref(),
        "chatty".as_ref(),
        "--log".as_ref(),
        log.as_os_str(),
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        "echo custom; exec sleep 300".as_ref(),
    ]);
    r.expect_code(0);
    let pid = pid_of(&r.json());
    w.track(pid);
    assert!(wait_for(STOP, || std::fs::read_to_string(&log)
        .is_ok_and(|s| s.contains("custom"))));
    let r = w.run(["kill", "chatty"]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("stopped chatty"), "{r:#?}");
    assert!(wait_dead(pid, STOP));
}

fn relative_paths_are_resolved_against_the_callers_directory(backend: Backend) {
    let w = World::new(backend);
    let base = w.tmp.path();
    let ready = base.join("script-ran");
    let script = base.join("helper.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch {}\nexec sleep 300\n", ready.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The helper runs in `/`, so dms resolves ./helper.sh and out.log here. (A relative
    // --mount DIR is covered with a real FUSE helper in dms-testfuse's tests: without a
    // mount, spawn --mount fails after --ready-timeout.)
    let mut c = w.cmd();
    c.current_dir(base).args([
        "--json",
        "spawn",
        "rel",
        "--log",
        "out.log",
        "--",
        "./helper.sh",
    ]);
    let r = common::run(&mut c);
    r.expect_code(0);
    let info = r.json();
    let pid = pid_of(&info);
    w.track(pid);
    check_info(&w, &info, "rel", "running");
    assert!(wait_for(STOP, || ready.exists()), "./helper.sh did not run");
    assert!(base.join("out.log").is_file());
    let r = w.run(["kill", "rel"]);
    r.expect_code(0);
    assert!(wait_dead(pid, STOP));

    // A bare name found through a relative PATH entry (`bin`, here `base/bin`) is run
    // from there too, not from `/bin`.
    std::fs::create_dir(base.join("bin")).unwrap();
    let ready2 = base.join("bin-script-ran");
    std::fs::write(
        base.join("bin/dms-rel-helper"),
        format!("#!/bin/sh\ntouch {}\nexec sleep 300\n", ready2.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        base.join("bin/dms-rel-helper"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut c = w.cmd();
    c.current_dir(base).args([
        "--json",
        "spawn",
        "relpath",
        "--env",
        "PATH=bin:/usr/bin:/bin",
        "--",
        "dms-rel-helper",
    ]);
    let r = common::run(&mut c);
    r.expect_code(0);
    let pid = pid_of(&r.json());
    w.track(pid);
    assert!(
        wait_for(STOP, || ready2.exists()),
        "bin/dms-rel-helper did not run"
    );
    w.run(["kill", "relpath"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

both_backends_both_ways!(
    spawn_status_kill_round_trip,
    second_spawn_is_refused_and_replace_restarts,
    helper_env_is_own_plus_additions_and_values_are_never_shown,
    handwritten_bare_pid_file_is_running_then_killed,
    sigterm_ignoring_helper_is_killed_by_escalation_within_grace,
    replace_gives_a_sigterm_ignoring_helper_the_grace_asked_for,
    concurrent_spawns_leave_exactly_one_helper,
    missing_program_leaves_no_pid_file,
    adopt_records_a_running_process_and_refuses_a_dead_one,
    stats_count_every_state,
    status_and_stats_only_read_and_leave_a_stale_pid_file,
    spawn_and_kill_touch_only_their_own_target,
    cleanup_removes_dead_entries_and_all_stops_helpers,
    kill_of_a_stale_entry_exits_3_and_removes_the_file,
    output_goes_to_the_log_file,
    relative_paths_are_resolved_against_the_callers_directory,
);
