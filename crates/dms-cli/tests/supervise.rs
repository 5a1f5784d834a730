//! Supervision by `dms serve` with real helpers and short policies (serve.md
//! "Supervision", "Declared targets"): the delay rule and give-up, the stops that never
//! restart, jitter over 100 helpers crashing together, a SIGKILLed daemon whose successor
//! keeps the failure counts and restarts what is due, the inline-environment rule, the
//! restart endpoint, and reload of declared targets.
//!
//! Each test signals only the daemons it started and the helpers they started for it.

mod common;
use dms_testkit::daemon;

use common::{alive, wait_dead, wait_for, Backend, World};
use daemon::{of, secs_between, Served};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn pid(v: &Value) -> i32 {
    v["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {v}")) as i32
}

/// A helper that exits 1 is restarted after the initial delay, then twice and four times
/// it (±10 %); one that ran longer than reset_after_secs waits the initial delay again;
/// after max_failures it is `failed` and stays down; exit 0 under on-failure stays down.
#[test]
fn delay_rule_reset_give_up_and_clean_exit() {
    let world = World::new(Backend::Pidfile);
    let d = Served::start_with_env(&world, &[], &[]);
    let counter = world.tmp.path().join("runs");
    // Runs 1, 2, 3 fail at once; run 4 runs 3 s (longer than reset_after, with a margin
    // for a loaded machine) and fails;
    // then at once again until given up.
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; \
         [ $n -eq 4 ] && sleep 3; exit 1",
        c = counter.display()
    );
    let policy = json!({"policy": "on-failure", "initial_delay_secs": 0.2,
        "max_delay_secs": 10, "reset_after_secs": 2, "max_failures": 6, "window_secs": 60});
    d.post(
        "/v1/targets/crash/spawn",
        json!({"argv": ["sh", "-c", script], "restart": policy}),
        201,
    );
    let info = d.wait_info("crash", T, |v| v["supervision"]["state"] == "failed");
    let sup = &info["supervision"];
    assert_eq!(sup["failures"], 6, "{sup}");
    assert_eq!(sup["restarts"], 5, "{sup}");
    assert_eq!(sup["last_exit"], json!({"code": 1, "signal": null}));
    assert!(sup["reason"].as_str().unwrap().contains("gave up"), "{sup}");
    let events = d.events();
    let scheduled = of(&events, "restart_scheduled", "crash");
    let delays: Vec<f64> = scheduled
        .iter()
        .map(|e| e["delay_secs"].as_f64().unwrap())
        .collect();
    let attempts: Vec<u64> = scheduled
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    // Exits 1-3: 0.2, 0.4, 0.8; exit 4 after a stable run: 0.2 again; exit 5: 0.4.
    assert_eq!(attempts, [1, 2, 3, 1, 2], "{delays:?}");
    for (got, want) in delays.iter().zip([0.2, 0.4, 0.8, 0.2, 0.4]) {
        assert!(
            (got - want).abs() <= want * 0.1 + 1e-6,
            "delay {got} for {want}: {delays:?}"
        );
    }
    // Each restart came no earlier than its delay after the exit.
    let exits = of(&events, "exited", "crash");
    let spawns = of(&events, "spawned", "crash");
    assert_eq!((exits.len(), spawns.len()), (6, 6));
    for i in 0..5 {
        let waited = secs_between(exits[i], spawns[i + 1]);
        assert!(
            waited >= delays[i] - 0.005,
            "restart {i} after {waited} s, delay {}",
            delays[i]
        );
    }
    let gave_up = of(&events, "gave_up", "crash");
    assert_eq!(gave_up.len(), 1);
    assert_eq!(gave_up[0]["failures"], 6);
    // Stays down: no start within twice the longest delay the rule would take now. This
    // wait is the scenario (no event announces that a restart will never come).
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(of(&d.events(), "spawned", "crash").len(), 6);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "6");
    let stats = d.get("/v1/stats");
    assert_eq!(
        (stats["supervised"].as_u64(), stats["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(stats["restarts_total"], 5);

    // exit 0 under on-failure: recorded, not restarted.
    d.post(
        "/v1/targets/clean/spawn",
        json!({"argv": ["sh", "-c", "sleep 0.1; exit 0"],
               "restart": {"policy": "on-failure", "initial_delay_secs": 0.05}}),
        201,
    );
    let info = d.wait_info("clean", T, |v| v["supervision"]["state"] == "stopped");
    assert_eq!(info["supervision"]["last_exit"]["code"], 0);
    // Six initial delays later nothing came back: this wait is the scenario (no event
    // announces that a restart will never come).
    std::thread::sleep(Duration::from_millis(300));
    let events = d.events();
    assert_eq!(of(&events, "spawned", "clean").len(), 1);
    assert!(of(&events, "restart_scheduled", "clean").is_empty());
}

/// kill, DELETE and cleanup --all stop a helper under `always` for good.
#[test]
fn stops_by_kill_delete_and_cleanup_all_never_restart() {
    let world = World::new(Backend::Sqlite);
    let d = Served::start_with_env(&world, &[], &[]);
    let always = json!({"policy": "always", "initial_delay_secs": 0.05});
    let mut pids = Vec::new();
    for t in ["k", "del", "c1", "c2"] {
        let info = d.post(
            &format!("/v1/targets/{t}/spawn"),
            json!({"argv": ["sleep", "300"], "restart": always}),
            201,
        );
        assert_eq!(info["supervision"]["state"], "running");
        assert_eq!(info["supervision"]["policy"], "always");
        pids.push(pid(&info));
    }
    assert!(world.run_dir.join("specs/del.json").exists());
    d.post("/v1/targets/k/kill", json!({"grace_secs": 2}), 200);
    let (code, _, text) = d.call("DELETE", "/v1/targets/del", None);
    assert_eq!(code, 200, "{text}");
    d.post("/v1/cleanup", json!({"all": true, "grace_secs": 2}), 200);
    for p in &pids {
        assert!(wait_dead(*p, T), "{p} stopped");
    }
    // Ten initial delays later nothing came back: this wait is the scenario (no event
    // announces that a restart will never come).
    std::thread::sleep(Duration::from_millis(500));
    let events = d.events();
    for t in ["k", "del", "c1", "c2"] {
        assert_eq!(of(&events, "spawned", t).len(), 1, "{t}: {events:?}");
        assert!(of(&events, "restart_scheduled", t).is_empty(), "{t}");
        let info = d.get(&format!("/v1/targets/{t}"));
        assert_eq!(info["running"], false, "{t}");
    }
    assert_eq!(d.supervision("k")["state"], "stopped");
    assert_eq!(d.supervision("c1")["state"], "stopped");
    assert_eq!(d.supervision("del"), Value::Null);
    assert!(!world.run_dir.join("specs/del.json").exists());
    // A stopped target is restarted on request; nothing recorded is a conflict.
    let info = d.post("/v1/targets/k/restart", json!({}), 200);
    assert_eq!(info["supervision"]["state"], "running");
    assert_eq!(info["supervision"]["restarts"], 1);
    let (code, v, _) = d.call("POST", "/v1/targets/nothing/restart", Some(json!({})));
    assert_eq!((code, v["error"]["code"].as_str()), (409, Some("conflict")));
    d.post("/v1/targets/k/kill", json!({"grace_secs": 2}), 200);
}

/// 100 helpers that crash at once restart spread over the ±10 % jitter.
#[test]
fn hundred_helpers_crashing_together_restart_spread() {
    let world = World::new(Backend::Pidfile);
    let d = Served::start_with_env(&world, &[], &[]);
    let policy = json!({"policy": "on-failure", "initial_delay_secs": 1.0});
    let mut pids = Vec::new();
    for i in 0..100 {
        let info = d.post(
            &format!("/v1/targets/h{i}/spawn"),
            json!({"argv": ["sleep", "300"], "restart": policy}),
            201,
        );
        pids.push(pid(&info));
    }
    for p in &pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    // A deadline for a loaded machine (100 starts), not a measure of speed.
    let mut last = Value::Null;
    let done = wait_for(Duration::from_secs(180), || {
        last = d.get("/v1/stats");
        last["restarts_total"] == 100 && last["running"] == 100
    });
    assert!(done, "not all restarted: {last}");
    let events = d.events();
    let delays: Vec<f64> = events
        .iter()
        .filter(|e| e["kind"] == "restart_scheduled")
        .map(|e| e["delay_secs"].as_f64().unwrap())
        .collect();
    assert_eq!(delays.len(), 100);
    let (lo, hi) = delays
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    assert!(lo >= 0.9 && hi <= 1.1, "{lo}..{hi}");
    assert!(hi - lo >= 0.1, "spread over the jitter: {lo}..{hi}");
    let mut distinct = delays.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup_by(|a, b| (*a - *b).abs() < 1e-4);
    assert!(distinct.len() > 90, "{} distinct delays", distinct.len());
    // The restarts themselves are spread over more than 0.1 s.
    let restarts: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "spawned")
        .skip(100)
        .collect();
    assert_eq!(restarts.len(), 100);
    let spread = secs_between(restarts[0], restarts[99]);
    assert!(spread >= 0.1, "the restarts came within {spread} s");
    d.post("/v1/cleanup", json!({"all": true, "grace_secs": 2}), 200);
}

/// SIGKILL of the daemon during a backoff: the next daemon adopts what runs (and goes on
/// supervising it), keeps the failure counts, restarts what is due; a helper whose spec
/// had inline environment values is kept running but goes to `failed` when it exits; one
/// with env files restarts fully.
#[test]
fn a_sigkilled_daemon_is_succeeded_without_losing_supervision() {
    for backend in [Backend::Pidfile, Backend::Sqlite] {
        let world = World::new(backend);
        let mut d = Served::start_with_env(&world, &[], &[]);
        let env_file = world.tmp.path().join("t.env");
        std::fs::write(&env_file, "FROM_FILE=file-value-not-shown\n").unwrap();
        let crash = json!({"policy": "on-failure", "initial_delay_secs": 1.5,
            "max_failures": 10, "window_secs": 600});
        let quick = json!({"policy": "on-failure", "initial_delay_secs": 0.05});
        d.post(
            "/v1/targets/backoff/spawn",
            json!({"argv": ["sh", "-c", "sleep 0.2; exit 3"], "restart": crash}),
            201,
        );
        let steady = pid(&d.post(
            "/v1/targets/steady/spawn",
            json!({"argv": ["sleep", "300"], "restart": quick}),
            201,
        ));
        let inline = pid(&d.post(
            "/v1/targets/inline/spawn",
            json!({"argv": ["sleep", "301"], "env": {"SECRET_TOKEN": "inline-value-not-shown"},
                   "restart": quick}),
            201,
        ));
        let filed = pid(&d.post(
            "/v1/targets/filed/spawn",
            json!({"argv": ["sleep", "302"], "env_files": [env_file], "restart": quick}),
            201,
        ));
        d.wait_info("backoff", T, |v| v["supervision"]["state"] == "backoff");
        d.sigkill();

        let d = Served::start_with_env(&world, &[], &[]);
        // What runs is adopted and supervised, unchanged.
        for (t, p) in [("steady", steady), ("inline", inline), ("filed", filed)] {
            let info = d.get(&format!("/v1/targets/{t}"));
            assert_eq!(
                (pid(&info), &info["supervision"]["state"]),
                (p, &json!("running")),
                "{t}"
            );
        }
        // The failure count is kept and the due restart comes (within its 1.5 s).
        let info = d.wait_info("backoff", T, |v| v["supervision"]["restarts"] == 1);
        assert!(
            info["supervision"]["failures"].as_u64().unwrap() >= 1,
            "{info}"
        );
        let info = d.wait_info("backoff", T, |v| {
            v["supervision"]["failures"].as_u64() >= Some(2)
        });
        assert_eq!(info["supervision"]["last_exit"]["code"], 3, "{info}");
        // The adopted helpers' exits are seen and handled per their spec.
        for p in [steady, inline, filed] {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            assert!(wait_dead(p, T));
        }
        let restarted =
            |v: &Value| v["supervision"]["state"] == "running" && v["supervision"]["restarts"] == 1;
        let info = d.wait_info("steady", T, restarted);
        assert!(pid(&info) != steady && info["running"] == true, "{info}");
        let info = d.wait_info("filed", T, restarted);
        assert!(pid(&info) != filed && info["running"] == true, "{info}");
        let new_filed = pid(&info);
        let environ = std::fs::read(format!("/proc/{new_filed}/environ")).unwrap();
        assert!(String::from_utf8_lossy(&environ).contains("FROM_FILE=file-value-not-shown"));
        let info = d.wait_info("inline", T, |v| v["supervision"]["state"] == "failed");
        assert!(
            info["supervision"]["reason"]
                .as_str()
                .unwrap()
                .contains("not available after a restart"),
            "{info}"
        );
        assert_eq!(info["running"], false);
        let (code, v, _) = d.call("POST", "/v1/targets/inline/restart", Some(json!({})));
        assert_eq!(
            (code, v["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{v}"
        );
        // No value anywhere in the daemon's answers, events, log or run dir.
        let mut seen = d
            .events()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        seen.push_str(&d.get("/v1/targets").to_string());
        seen.push_str(&d.log_text());
        for f in common::files_under(&world.run_dir) {
            seen.push_str(&String::from_utf8_lossy(
                &std::fs::read(f).unwrap_or_default(),
            ));
        }
        assert!(seen.contains("SECRET_TOKEN"), "the key is kept");
        assert!(!seen.contains("inline-value-not-shown") && !seen.contains("file-value-not-shown"));
        d.post("/v1/cleanup", json!({"all": true, "grace_secs": 2}), 200);
        assert!(!alive(steady));
    }
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Declared targets: started at start; a reload (POST /v1/reload, then SIGHUP) starts
/// new files, restarts changed ones, stops removed ones, leaves the others untouched,
/// and reports a bad file with its line while the others go on.
#[test]
fn reload_touches_only_what_changed() {
    let world = World::new(Backend::Sqlite);
    let dir = world.tmp.path().join("targets");
    std::fs::create_dir_all(&dir).unwrap();
    let decl = |secs: &str| {
        format!("argv = [\"sleep\", \"{secs}\"]\n\n[restart]\npolicy = \"on-failure\"\ninitial_delay_secs = 0.05\n")
    };
    write(&dir.join("a.toml"), &decl("310"));
    write(&dir.join("b.toml"), &decl("311"));
    write(&dir.join("c.toml"), &decl("312"));
    write(
        &dir.join("bad.toml"),
        "argv = [\"sleep\", \"1\"]\n[restart]\npolicy = \"sometimes\"\n",
    );
    write(&dir.join("README"), "not a target\n");
    let dir_arg = dir.to_str().unwrap().to_owned();
    let d = Served::start_with_env(&world, &["--targets", &dir_arg], &[]);
    let pid_of = |t: &str| pid(&d.wait_info(t, T, |v| v["running"] == true));
    let (a, b, c) = (pid_of("a"), pid_of("b"), pid_of("c"));
    assert_eq!(d.supervision("a")["policy"], "on-failure");
    assert_eq!(d.get("/v1/targets/bad")["state"], "absent");
    assert!(d.log_text().contains("sometimes"), "the bad file is logged");

    write(&dir.join("b.toml"), &decl("321"));
    std::fs::remove_file(dir.join("c.toml")).unwrap();
    write(&dir.join("d.toml"), &decl("313"));
    let r = d.post("/v1/reload", Value::Null, 200);
    assert_eq!(r["started"], json!(["d"]), "{r}");
    assert_eq!(r["restarted"], json!(["b"]), "{r}");
    assert_eq!(r["stopped"], json!(["c"]), "{r}");
    assert_eq!(r["unchanged"], 1, "{r}");
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{r}");
    assert!(errors[0]["file"].as_str().unwrap().ends_with("bad.toml"));
    assert_eq!(errors[0]["line"], 3, "{r}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("sometimes"),
        "{r}"
    );
    assert_eq!(pid_of("a"), a, "untouched");
    let b2 = pid_of("b");
    assert_ne!(b2, b);
    assert!(wait_dead(b, T) && wait_dead(c, T));
    assert_eq!(d.get("/v1/targets/b")["cmdline"], json!(["sleep", "321"]));
    assert_eq!(d.get("/v1/targets/c")["state"], "absent");
    assert_eq!(d.supervision("c"), Value::Null);
    let dpid = pid_of("d");

    // SIGHUP does the same; nothing changed now.
    let before = d.events().len();
    d.signal(daemon::Signal::HUP);
    assert!(wait_for(T, || d
        .events()
        .iter()
        .skip(before)
        .any(|e| e["kind"] == "reloaded")));
    let ev = d.events();
    let reloaded = ev.iter().rev().find(|e| e["kind"] == "reloaded").unwrap();
    assert_eq!(reloaded["unchanged"], 3, "{reloaded}");
    assert_eq!((pid_of("a"), pid_of("b"), pid_of("d")), (a, b2, dpid));
    d.post("/v1/cleanup", json!({"all": true, "grace_secs": 2}), 200);
}
