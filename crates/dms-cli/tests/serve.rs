//! `dms serve` as a real process on a real socket in a temp run dir: the API through the
//! socket with real helpers, exits seen as events, a stop that leaves the helpers running
//! and a next daemon that adopts them, one daemon per run dir, peer credentials (a
//! `nobody` client), stalled and idle clients, and curl.
//!
//! Each test signals only the daemon it started and helpers it started (through the
//! API); the test process is a child subreaper, so a helper outliving its daemon is
//! reparented to it and stopped at the end.

mod common;

use common::{alive, processes_with_cmdline, unique_sleep, wait_dead, Backend, World};
use dms_testkit::daemon::{events_until, of_kind, Served};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn spawn_sleep(world: &World, s: &Served, target: &str) -> (i32, String) {
    let secs = unique_sleep();
    let (code, v, text) = s.call(
        "POST",
        &format!("/v1/targets/{target}/spawn"),
        Some(json!({"argv": ["sleep", secs]})),
    );
    assert_eq!(code, 201, "{text}");
    let pid = v["pid"].as_i64().unwrap() as i32;
    world.track(pid);
    (pid, secs)
}

#[test]
fn spawn_status_adopt_kill_cleanup_through_the_socket() {
    let world = World::new(Backend::Sqlite);
    let mut s = Served::start(&world, &[]);
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let (code, health, _) = s.call("GET", "/v1/health", None);
    assert_eq!(code, 200);
    assert_eq!(health["pid"], s.pid());
    assert_eq!(health["backend"], "sqlite");

    let (pid, secs) = spawn_sleep(&world, &s, "t1");
    assert!(alive(pid));
    let (code, info, _) = s.call("GET", "/v1/targets/t1", None);
    assert_eq!(code, 200);
    assert_eq!(info["state"], "running");
    assert_eq!(info["source"], "both");
    assert_eq!(info["pid"], pid);
    assert_eq!(info["cmdline"], json!(["sleep", secs]));
    let (code, _, text) = s.call(
        "POST",
        "/v1/targets/t1/spawn",
        Some(json!({"argv": ["sleep", "1"]})),
    );
    assert_eq!(code, 409, "{text}");

    // Adopt a process the test started itself.
    let own = common::own_sleep(&world, &unique_sleep());
    let (code, info, text) = s.call("POST", "/v1/targets/t2/adopt", Some(json!({ "pid": own })));
    assert_eq!(code, 200, "{text}");
    assert_eq!(info["state"], "running");
    let (code, list, _) = s.call("GET", "/v1/targets", None);
    assert_eq!(code, 200);
    let targets: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["t1", "t2"]);
    let (_, stats, _) = s.call("GET", "/v1/stats", None);
    assert_eq!(stats["running"], 2);
    assert_eq!(stats["total_tracked"], 2);

    let (code, report, _) = s.call(
        "POST",
        "/v1/targets/t1/kill",
        Some(json!({"grace_secs": 5})),
    );
    assert_eq!(code, 200);
    assert_eq!(report["was_running"], true);
    assert_eq!(report["stopped"], true);
    assert!(wait_dead(pid, Duration::from_secs(10)));
    assert!(!world.pid_file("t1").exists());
    let (code, report, _) = s.call("DELETE", "/v1/targets/t2", None);
    assert_eq!(code, 200);
    assert_eq!(report["was_running"], true);
    assert!(wait_dead(own, Duration::from_secs(10)));

    // A stale PID file written by hand: cleanup removes it.
    world.write_bare_pid_file("t3", "999999");
    let (code, report, text) = s.call("POST", "/v1/cleanup", Some(json!({})));
    assert_eq!(code, 200, "{text}");
    assert!(report["removed"].is_array(), "{text}");
    assert!(!world.pid_file("t3").exists(), "{text}");
    assert_eq!(s.exited(), None);
}

#[test]
fn a_helper_exit_is_an_exited_event() {
    let world = World::new(Backend::Pidfile);
    let s = Served::start(&world, &[]);
    let (code, v, text) = s.call(
        "POST",
        "/v1/targets/brief/spawn",
        Some(json!({"argv": ["sh", "-c", "sleep 0.5; exit 3"]})),
    );
    assert_eq!(code, 201, "{text}");
    let pid = v["pid"].as_i64().unwrap();
    world.track(pid as i32);
    let events = events_until(&s.socket, 0, Duration::from_secs(30), |ev| {
        !of_kind(ev, "exited").is_empty()
    });
    let spawned = of_kind(&events, "spawned");
    assert_eq!(spawned.len(), 1, "{events:?}");
    let exited = of_kind(&events, "exited")[0];
    assert_eq!(exited["target"], "brief");
    assert_eq!(exited["pid"], pid);
    assert_eq!(exited["code"], 3);
    assert!(exited["seq"].as_u64().unwrap() > spawned[0]["seq"].as_u64().unwrap());
    assert!(exited["time"].as_str().unwrap().ends_with('Z'));
    // Replay after `since` starts after it.
    let since = spawned[0]["seq"].as_u64().unwrap();
    let again = events_until(&s.socket, since, Duration::from_secs(10), |ev| {
        !ev.is_empty()
    });
    assert_eq!(again[0]["kind"], "exited");
}

#[test]
fn sigterm_leaves_helpers_running_and_the_next_daemon_adopts_them() {
    let world = World::new(Backend::Sqlite);
    let mut s = Served::start(&world, &[]);
    let helpers: Vec<(String, i32, String)> = (0..3)
        .map(|n| {
            let t = format!("t{n}");
            let (pid, secs) = spawn_sleep(&world, &s, &t);
            (t, pid, secs)
        })
        .collect();
    assert_eq!(s.stop(), 0, "{}", s.log_text());
    for (_, pid, _) in &helpers {
        assert!(alive(*pid), "a helper died with its daemon");
    }
    assert!(!s.socket.exists(), "the socket file went with the daemon");

    let s2 = Served::start(&world, &[]);
    let events = events_until(&s2.socket, 0, Duration::from_secs(30), |ev| {
        of_kind(ev, "adopted").len() == 3
    });
    assert!(of_kind(&events, "spawned").is_empty(), "{events:?}");
    for (t, pid, secs) in &helpers {
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == "adopted" && e["target"] == t.as_str() && e["pid"] == *pid),
            "{t} not adopted: {events:?}"
        );
        let (_, info, _) = s2.call("GET", &format!("/v1/targets/{t}"), None);
        assert_eq!(info["pid"], *pid);
        assert_eq!(info["state"], "running");
        assert_eq!(info["source"], "both");
        assert_eq!(
            processes_with_cmdline(&["sleep", secs]),
            vec![*pid],
            "started twice"
        );
    }
    // The adopted helpers are watched: a kill from outside is seen as an exit.
    let (_, victim, _) = &helpers[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(*victim),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let last = events.last().unwrap()["seq"].as_u64().unwrap();
    let later = events_until(&s2.socket, last, Duration::from_secs(30), |ev| {
        !of_kind(ev, "exited").is_empty()
    });
    assert_eq!(of_kind(&later, "exited")[0]["pid"], *victim);
}

#[test]
fn a_second_daemon_on_the_run_dir_is_refused_naming_the_first() {
    let world = World::new(Backend::Pidfile);
    let mut s = Served::start(&world, &[]);
    let r = world.run(["serve"]);
    r.expect_code(1).expect_one_error_line();
    assert!(
        r.stderr.contains(&format!("PID {}", s.pid())),
        "{}",
        r.stderr
    );
    // The first one goes on serving.
    assert_eq!(s.call("GET", "/v1/health", None).0, 200);
    // A live socket at another --socket path is never replaced: a second run dir whose
    // socket is the first daemon's.
    let other = World::new(Backend::Pidfile);
    let r = other.run(["serve", "--socket", s.socket.to_str().unwrap()]);
    r.expect_code(1).expect_one_error_line();
    assert!(r.stderr.contains("live"), "{}", r.stderr);
    assert_eq!(s.call("GET", "/v1/health", None).0, 200);
    assert_eq!(s.stop(), 0);
}

#[test]
fn the_socket_of_a_dead_daemon_is_replaced() {
    let world = World::new(Backend::Pidfile);
    std::fs::create_dir_all(&world.run_dir).unwrap();
    let socket = world.run_dir.join("dms.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let s = Served::start(&world, &[]);
    assert_eq!(s.call("GET", "/v1/health", None).0, 200);
    // Something that is not a socket is never removed.
    let other = World::new(Backend::Pidfile);
    std::fs::create_dir_all(&other.run_dir).unwrap();
    let file = other.run_dir.join("dms.sock");
    std::fs::write(&file, "keep me").unwrap();
    let r = other.run(["serve"]);
    r.expect_code(1).expect_one_error_line();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// Runs `curl` as `nobody` against the socket; the HTTP status.
fn curl_as_nobody(socket: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_nobody_peer_may_get_but_not_change_anything() {
    if !nix::unistd::geteuid().is_root() || !have("curl") || !have("setpriv") {
        eprintln!("skipped: needs root, curl and setpriv (to connect as nobody)");
        return;
    }
    let world = World::new(Backend::Pidfile);
    let s = Served::start(&world, &[]);
    let (pid, _) = spawn_sleep(&world, &s, "kept");
    // Let nobody reach the socket: the check under test is the daemon's, not the file's.
    for dir in [world.tmp.path(), world.run_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for path in ["/v1/health", "/v1/targets", "/v1/targets/kept", "/v1/stats"] {
        assert_eq!(
            curl_as_nobody(&s.socket, &[&format!("http://dms{path}")]),
            "200",
            "{path}"
        );
    }
    let json = ["-H", "Content-Type: application/json"];
    for (method, path, body) in [
        (
            "POST",
            "/v1/targets/x/spawn",
            r#"{"argv": ["sleep", "300"]}"#,
        ),
        ("POST", "/v1/targets/kept/kill", "{}"),
        ("POST", "/v1/targets/x/adopt", r#"{"pid": 2}"#),
        ("POST", "/v1/cleanup", r#"{"all": true}"#),
        ("DELETE", "/v1/targets/kept", ""),
    ] {
        let url = format!("http://dms{path}");
        let mut args = vec!["-X", method, url.as_str()];
        if !body.is_empty() {
            args.extend(json);
            args.extend(["-d", body]);
        }
        assert_eq!(curl_as_nobody(&s.socket, &args), "403", "{method} {path}");
    }
    assert!(alive(pid), "nothing was stopped");
    let (_, list, _) = s.call("GET", "/v1/targets", None);
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "nothing was started: {list}"
    );
}

#[test]
fn stalled_and_idle_clients_do_not_block_others() {
    let world = World::new(Backend::Pidfile);
    let s = Served::start(&world, &[]);
    // Half a header, and a header with half its body, then nothing.
    let mut half_header = StdUnixStream::connect(&s.socket).unwrap();
    half_header
        .write_all(b"GET /v1/health HTTP/1.1\r\nHo")
        .unwrap();
    let mut half_body = StdUnixStream::connect(&s.socket).unwrap();
    half_body
        .write_all(
            b"POST /v1/targets/t/spawn HTTP/1.1\r\nHost: dms\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"argv\"",
        )
        .unwrap();
    // 500 connections that send nothing.
    let idle: Vec<StdUnixStream> = (0..500)
        .map(|_| StdUnixStream::connect(&s.socket).unwrap())
        .collect();
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(s.call("GET", "/v1/health", None).0, 200);
    }
    let (pid, _) = spawn_sleep(&world, &s, "busy");
    assert!(alive(pid));
    eprintln!(
        "20 requests and a spawn beside the stalled clients: {:?}",
        start.elapsed()
    );
    // The stalled body gets 408 once its time is up; the stalled header is closed.
    half_body
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    let _ = half_body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"timeout\""), "{answer}");
    half_header
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = half_header.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    drop(idle);
    assert_eq!(s.call("GET", "/v1/health", None).0, 200);
}

#[test]
fn curl_works_and_no_environment_value_appears_anywhere() {
    if !have("curl") {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let world = World::new(Backend::Sqlite);
    let secret = format!("s3cr3t-{}-value", std::process::id());
    let env_file = world.tmp.path().join("t.env");
    std::fs::write(&env_file, format!("FROM_FILE={secret}-file\n")).unwrap();
    // Logging at its most verbose, so that every log line is checked.
    let s = Served::start(&world, &["-vvvv"]);
    let sock = s.socket.to_str().unwrap().to_owned();
    let body = json!({"argv": ["sleep", unique_sleep()], "env": {"INLINE": secret},
                      "env_files": [env_file]})
    .to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            &sock,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "http://dms/v1/targets/sec/spawn",
        ])
        .output()
        .unwrap();
    let spawned = String::from_utf8_lossy(&out.stdout).into_owned();
    let info: Value = serde_json::from_str(&spawned).unwrap_or_else(|_| panic!("{spawned}"));
    let pid = info["pid"].as_i64().unwrap() as i32;
    world.track(pid);
    // The helper has both values.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains(&format!("INLINE={secret}")));
    assert!(environ.contains(&format!("FROM_FILE={secret}-file")));
    let mut seen = vec![spawned];
    for path in ["/v1/targets", "/v1/targets/sec", "/v1/stats", "/v1/health"] {
        let out = std::process::Command::new("curl")
            .args(["-s", "--unix-socket", &sock, &format!("http://dms{path}")])
            .output()
            .unwrap();
        assert!(out.status.success());
        seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let events = events_until(&s.socket, 0, Duration::from_secs(10), |ev| {
        !of_kind(ev, "spawned").is_empty()
    });
    seen.push(format!("{events:?}"));
    s.call("POST", "/v1/targets/sec/kill", None);
    seen.push(s.log_text());
    for f in common::files_under(&world.run_dir) {
        seen.push(String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned());
    }
    for text in &seen {
        assert!(
            !text.contains(&secret),
            "an environment value leaked: {text}"
        );
    }
    assert!(
        s.log_text().contains("INLINE"),
        "keys may be logged; the log is verbose"
    );
}

#[test]
fn ready_and_watchdog_go_to_notify_socket_and_not_to_helpers() {
    let world = World::new(Backend::Pidfile);
    let notify_path = world.tmp.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let s = Served::start_with_env(
        &world,
        &[],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 2
    {
        let n = notify.recv(&mut buf).expect("a notification within 30 s");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("READY=1") {
            // Sent once listening: the socket answers by then.
            assert!(StdUnixStream::connect(&s.socket).is_ok());
        }
        got.push(msg);
    }
    assert!(got[0].contains("READY=1"), "{got:?}");
    let (pid, _) = spawn_sleep(&world, &s, "env");
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    assert!(
        !environ.contains("NOTIFY_SOCKET="),
        "a helper must not speak for the daemon"
    );
    assert!(!environ.contains("WATCHDOG_USEC="));
}

/// The figures of issue 13's goals, printed (not asserted: a timed test would not hold
/// under load). Run alone:
/// `cargo test --release -p dms-cli --test serve -- --ignored --nocapture goal_figures`.
#[test]
#[ignore = "a measurement; run by hand"]
fn goal_figures() {
    const HELPERS: usize = 1000;
    let world = World::new(Backend::Sqlite);
    let s = Served::start(&world, &["-q"]);
    let t0 = Instant::now();
    for n in 0..HELPERS {
        spawn_sleep(&world, &s, &format!("t{n}"));
    }
    eprintln!("{HELPERS} spawns through the API: {:?}", t0.elapsed());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = s.socket.clone();
    rt.block_on(async move {
        async fn client(
            socket: &Path,
        ) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>
        {
            let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            send
        }
        async fn get(
            send: &mut hyper::client::conn::http1::SendRequest<
                http_body_util::Empty<hyper::body::Bytes>,
            >,
            path: &str,
        ) -> u16 {
            send.ready().await.unwrap();
            let req = hyper::Request::get(path)
                .header("host", "dms")
                .body(http_body_util::Empty::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            resp.into_body().collect().await.unwrap();
            status
        }
        let mut send = client(&socket).await;
        let mut lat = Vec::with_capacity(10_000);
        for n in 0..10_000 {
            let path = format!("/v1/targets/t{}", n % HELPERS);
            let t = Instant::now();
            assert_eq!(get(&mut send, &path).await, 200);
            lat.push(t.elapsed());
        }
        lat.sort();
        eprintln!(
            "GET /v1/targets/{{t}}, {HELPERS} helpers, one keep-alive connection, 10,000 requests: \
             p50 {:?}, p99 {:?}, max {:?}",
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100],
            lat[lat.len() - 1]
        );
        let t = Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|c| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let mut send = client(&socket).await;
                    let mut errors = 0;
                    for n in 0..100 {
                        if get(
                            &mut send,
                            &format!("/v1/targets/t{}", (c * 100 + n) % HELPERS),
                        )
                        .await
                            != 200
                        {
                            errors += 1;
                        }
                    }
                    errors
                })
            })
            .collect();
        let mut errors = 0;
        for task in tasks {
            errors += task.await.unwrap();
        }
        eprintln!(
            "10,000 requests from 100 concurrent connections: {errors} errors, {:?}",
            t.elapsed()
        );
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .to_owned();
    eprintln!("daemon {rss} with {HELPERS} helpers");
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let (c0, t0) = (cpu(), Instant::now());
    // The window the idle CPU is measured over: this wait is the measurement.
    std::thread::sleep(Duration::from_secs(60));
    let ticks = cpu() - c0;
    eprintln!(
        "idle CPU over {:?}: {ticks} ticks = {:.3} % of one core",
        t0.elapsed(),
        ticks as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0
    );
    let (code, _, _) = s.call(
        "POST",
        "/v1/cleanup",
        Some(json!({"all": true, "grace_secs": 5})),
    );
    assert_eq!(code, 200);
}

#[test]
fn members_of_the_socket_group_may_change_things() {
    let world = World::new(Backend::Pidfile);
    let r = world.run(["serve", "--socket-group", "no-such-group-dms"]);
    r.expect_code(2).expect_one_error_line();
    assert!(r.stderr.contains("no-such-group-dms"), "{}", r.stderr);
    if !nix::unistd::geteuid().is_root() || !have("curl") || !have("setpriv") {
        eprintln!("skipped the rest: needs root, curl and setpriv (to connect as nobody)");
        return;
    }
    let s = Served::start(&world, &["--socket-group", "65534"]);
    let meta = std::fs::metadata(&s.socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.gid(), 65534);
    assert_eq!(meta.mode() & 0o777, 0o660);
    for dir in [world.tmp.path(), world.run_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // nobody (primary group 65534) reaches the socket through its group and may spawn.
    let secs = unique_sleep();
    let body = json!({"argv": ["sleep", secs]}).to_string();
    let code = curl_as_nobody(
        &s.socket,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "http://dms/v1/targets/g/spawn",
        ],
    );
    assert_eq!(code, "201");
    let (_, info, _) = s.call("GET", "/v1/targets/g", None);
    let pid = info["pid"].as_i64().unwrap() as i32;
    world.track(pid);
    assert_eq!(processes_with_cmdline(&["sleep", &secs]), vec![pid]);
    let code = curl_as_nobody(&s.socket, &["-X", "POST", "http://dms/v1/targets/g/kill"]);
    assert_eq!(code, "200");
    assert!(wait_dead(pid, Duration::from_secs(10)));
}
