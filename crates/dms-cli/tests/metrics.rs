//! `GET /metrics` of a real `dms serve`, checked by the real tools: `promtool check
//! metrics` on the output (socket and `--metrics-listen`), and a real Prometheus server
//! on loopback that scrapes `--metrics-listen` every second and is asked, through its
//! HTTP API, for `dms_helper_up`, the restart counter after a forced restart (once the
//! daemon accepts restart policies) and `dms_mounts{state="stale"}` after a SIGKILLed
//! FUSE helper. Each skips with a printed reason where its tool is missing.
//!
//! Each test signals only the processes it started: its daemon, its Prometheus, and the
//! helpers it spawned through the daemon. The test process is a child subreaper, so
//! helpers that outlive the daemon are reparented to it and reaped.

mod common;

use common::{reap_zombies, wait_for, Backend, World};
use dms_testkit::daemon::Served;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `dms serve` of the world's run dir, with `--metrics-listen 127.0.0.1:PORT`.
struct Daemon {
    served: Served,
    metrics_port: u16,
}

impl Daemon {
    fn start(world: &World) -> Daemon {
        let metrics_port = free_port();
        let listen = format!("127.0.0.1:{metrics_port}");
        let served = Served::start(world, &["--metrics-listen", &listen]);
        let d = Daemon {
            served,
            metrics_port,
        };
        let up = wait_for(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", metrics_port)).is_ok()
        });
        assert!(up, "dms serve did not come up: {}", d.log_text());
        d
    }

    fn log_text(&self) -> String {
        self.served.log_text()
    }

    /// One request on the daemon's socket.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let s = UnixStream::connect(&self.served.socket).expect("the socket answers");
        http(s, method, path, body)
    }

    /// `POST /v1/targets/{t}/spawn`; the status and the document.
    fn spawn(&self, target: &str, req: &Value) -> (u16, Value) {
        let (code, body) = self.call("POST", &format!("/v1/targets/{target}/spawn"), Some(req));
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stop every helper this daemon holds (ours, spawned by this test), detach the
        // recorded mounts, then stop the daemon.
        let body = json!({"all": true, "grace_secs": 1, "mounts": true});
        if let Ok(s) = UnixStream::connect(&self.served.socket) {
            let _ = std::panic::catch_unwind(|| http(s, "POST", "/v1/cleanup", Some(&body)));
        }
        // The daemon stops when `served` drops, after this.
        reap_zombies();
    }
}

/// SIGTERM to a child this test started, SIGKILL after 10 s, then reap it.
fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let gone = wait_for(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !gone {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A TCP port on loopback that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request (`Connection: close`) on `stream`; the status and the body.
fn http<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_owned()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: dms\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        code,
        if chunked {
            unchunk(rest)
        } else {
            rest.to_owned()
        },
    )
}

/// The body of a chunked response.
fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET /metrics` on the TCP listener; the status, the content type and the body.
fn scrape_tcp(d: &Daemon, path: &str) -> (u16, String) {
    let s = TcpStream::connect(("127.0.0.1", d.metrics_port)).unwrap();
    http(s, "GET", path, None)
}

/// Why `tool` cannot be used, if it cannot.
fn missing(tool: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    (!found).then(|| format!("{tool} is not installed (Debian package prometheus)"))
}

/// The test-only FUSE helper, built next to `dms` by `cargo test --workspace`.
fn fuse_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("dms").with_file_name("dms-testfuse")
}

/// Why a FUSE helper cannot run here, if it cannot.
fn fuse_missing() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("mounting FUSE with mount(2) needs root".into());
    }
    if !fuse_bin().is_file() {
        return Some(format!(
            "{} is not built; run `cargo test --workspace`",
            fuse_bin().display()
        ));
    }
    None
}

/// Detaches every mount under its path and aborts their FUSE connections (on drop, even
/// when a check failed), so that a failed test never leaves a hung mount behind.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let table = dms_core::mount::read_mountinfo().unwrap_or_default();
        for m in table
            .iter()
            .rev()
            .filter(|m| m.mount_point.starts_with(&self.0))
        {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
            if m.is_fuse() {
                let _ = dms_core::mount::abort_connection(m.minor);
            }
        }
    }
}

/// Spawns a FUSE helper through the daemon, mounting `<tmp>/mnt/<target>`.
fn spawn_fuse(d: &Daemon, world: &World, target: &str) -> Value {
    let dir = world.tmp.path().join("mnt").join(target);
    let dir = dir.to_str().unwrap();
    let (code, info) = d.spawn(
        target,
        &json!({"argv": [fuse_bin().to_str().unwrap(), dir], "mount": dir}),
    );
    assert_eq!(code, 201, "{info}\n{}", d.log_text());
    info
}

fn spawn_sleep(d: &Daemon, target: &str) -> Value {
    let (code, info) = d.spawn(target, &json!({"argv": ["sleep", "300"]}));
    assert_eq!(code, 201, "{info}\n{}", d.log_text());
    info
}

/// Runs `promtool check metrics` on `text`; its exit status and output.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn promtool_accepts_the_metrics() {
    if let Some(why) = missing("promtool") {
        eprintln!("SKIPPED promtool_accepts_the_metrics: {why}");
        return;
    }
    let world = World::new(Backend::Sqlite);
    let d = Daemon::start(&world);
    let _guard = MountGuard(world.tmp.path().join("mnt"));
    for t in ["alpha", "beta", "gamma"] {
        spawn_sleep(&d, t);
    }
    let with_mount = match fuse_missing() {
        Some(why) => {
            eprintln!("promtool_accepts_the_metrics: no FUSE helper ({why}); sleep helpers only");
            false
        }
        None => {
            spawn_fuse(&d, &world, "fused");
            true
        }
    };
    // A PID file written by hand that holds no PID: a corrupt entry.
    std::fs::write(world.run_dir.join("s3").join("junk.pid"), "abc").unwrap();
    // A 404, so that the `unmatched` route has a series.
    assert_eq!(d.call("GET", "/v1/nothing/here", None).0, 404);

    let (code, text) = d.call("GET", "/metrics", None);
    assert_eq!(code, 200, "{text}");
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool check metrics failed: {said}\n{text}");
    for needle in [
        r#"dms_helper_up{target="alpha"} 1"#,
        r#"dms_helpers{state="running"} "#,
        r#"dms_helpers{state="corrupt"} 1"#,
        r#"dms_api_requests_total{method="GET",route="unmatched",code="404"} 1"#,
        "dms_helper_cpu_seconds_total{target=\"alpha\"}",
        "dms_helper_resident_memory_bytes{target=\"alpha\"}",
        "process_open_fds ",
        "dms_build_info{version=",
    ] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    let running = if with_mount { 4 } else { 3 };
    assert!(
        text.contains(&format!(r#"dms_helpers{{state="running"}} {running}"#)),
        "{text}"
    );
    if with_mount {
        // A probe of a loaded machine may miss its 2 s deadline once (the mount then
        // reads stale for that scrape): await the state rather than take one sample.
        let mut last = text.clone();
        let seen = wait_for(Duration::from_secs(20), || {
            last = d.call("GET", "/metrics", None).1;
            last.contains(r#"dms_mounts{state="mounted"} 1"#)
        });
        assert!(seen, "the FUSE mount never read mounted:\n{last}");
    }

    // The TCP listener: the same metrics, and nothing else.
    let (code, tcp_text) = scrape_tcp(&d, "/metrics");
    assert_eq!(code, 200, "{tcp_text}");
    let (ok, said) = promtool(&tcp_text);
    assert!(
        ok,
        "promtool check metrics failed (TCP): {said}\n{tcp_text}"
    );
    assert!(tcp_text.contains(r#"dms_helper_up{target="gamma"} 1"#));
    for path in ["/v1/health", "/v1/targets", "/"] {
        let (code, body) = scrape_tcp(&d, path);
        assert_eq!(code, 404, "{path}: {body}");
    }
}

/// A Prometheus server on loopback, its TSDB in the world's temp dir; stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(world: &World, metrics_port: u16) -> Prometheus {
        let dir = world.tmp.path().join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: dms\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, port, log }
    }

    /// The result vector of an instant query (empty when the server does not answer yet).
    fn query(&self, q: &str) -> Vec<Value> {
        let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return Vec::new();
        };
        let (code, body) = http(
            s,
            "GET",
            &format!("/api/v1/query?query={}", encode(q)),
            None,
        );
        if code != 200 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits (up to `limit`, asking every 200 ms) until `q` has a sample whose value is
    /// `want`.
    fn wait_value(&self, q: &str, want: f64, limit: Duration) -> bool {
        dms_testkit::wait_for_every(limit, Duration::from_millis(200), || {
            self.query(q).iter().any(|r| {
                r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_some_and(|v| v == want)
            })
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sigkill(pid: i64) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
fn prometheus_scrapes_the_daemon() {
    if let Some(why) = missing("prometheus") {
        eprintln!("SKIPPED prometheus_scrapes_the_daemon: {why}");
        return;
    }
    let world = World::new(Backend::Sqlite);
    let d = Daemon::start(&world);
    let _guard = MountGuard(world.tmp.path().join("mnt"));
    spawn_sleep(&d, "web");
    let prom = Prometheus::start(&world, d.metrics_port);
    let limit = Duration::from_secs(60);
    assert!(
        prom.wait_value(r#"dms_helper_up{target="web"}"#, 1.0, limit),
        "Prometheus never saw dms_helper_up{{target=\"web\"}} = 1\n{}\n{}",
        prom.log_text(),
        d.log_text()
    );
    assert!(prom.wait_value(r#"up{job="dms"}"#, 1.0, limit));

    // The restart counter: needs restart policies (issue "Supervision"). Probe with a
    // spawn that asks for one: a daemon without supervision answers 400.
    let (code, info) = d.spawn(
        "restarted",
        &json!({"argv": ["sleep", "300"], "restart": {"policy": "always", "initial_delay_secs": 0}}),
    );
    match code {
        201 => {
            assert!(
                prom.wait_value(
                    r#"dms_helper_restarts_total{target="restarted"}"#,
                    0.0,
                    limit
                ),
                "a supervised target has its restart counter from its first start"
            );
            sigkill(info["pid"].as_i64().unwrap());
            assert!(
                prom.wait_value(
                    r#"dms_helper_restarts_total{target="restarted"}"#,
                    1.0,
                    limit
                ),
                "the restart counter never reached 1 after a SIGKILL\n{}",
                d.log_text()
            );
            assert!(prom.wait_value(r#"dms_helper_up{target="restarted"}"#, 1.0, limit));
        }
        400 => eprintln!(
            "prometheus_scrapes_the_daemon: restart counter part skipped: the daemon refuses \
             restart policies yet ({})",
            info["error"]["message"]
        ),
        other => panic!("unexpected answer {other} to a spawn with a restart policy: {info}"),
    }

    // A SIGKILLed FUSE helper leaves its mount behind, answering ENOTCONN: stale.
    match fuse_missing() {
        Some(why) => eprintln!("prometheus_scrapes_the_daemon: stale mount part skipped: {why}"),
        None => {
            assert!(prom.wait_value(r#"dms_mounts{state="stale"}"#, 0.0, limit));
            let info = spawn_fuse(&d, &world, "fused");
            assert!(prom.wait_value(r#"dms_mounts{state="mounted"}"#, 1.0, limit));
            sigkill(info["pid"].as_i64().unwrap());
            assert!(
                prom.wait_value(r#"dms_mounts{state="stale"}"#, 1.0, limit),
                "Prometheus never saw dms_mounts{{state=\"stale\"}} = 1\n{}",
                d.log_text()
            );
            // The daemon cleared the dead helper's entry: its series are gone (stale
            // markers), while the stale mount is still counted.
            assert!(
                wait_for(limit, || prom
                    .query(r#"dms_helper_up{target="fused"}"#)
                    .is_empty()),
                "the series of a target that is no longer listed stayed"
            );
        }
    }
}
