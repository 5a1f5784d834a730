//! `contrib/dms.service`, the systemd unit of `dms serve`: it says what serve.md asks
//! (`Type=notify`, `NotifyAccess=main`, `KillMode=process` with its reason, a socket
//! group), `systemd-analyze verify` accepts it where the tool exists, and its
//! `ExecStart=` command line really starts the daemon, which sends `READY=1` to
//! `$NOTIFY_SOCKET` and stops with exit 0 on SIGTERM (in a temp run dir, with the
//! test's own group as the socket group).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/dms.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).expect("contrib/dms.service is readable")
}

/// The value of `Key=` in the unit (the last one, as systemd takes it).
fn setting(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

#[test]
fn the_unit_says_what_serve_md_asks() {
    let text = unit();
    assert_eq!(setting(&text, "Type").as_deref(), Some("notify"));
    assert_eq!(setting(&text, "NotifyAccess").as_deref(), Some("main"));
    assert_eq!(setting(&text, "KillMode").as_deref(), Some("process"));
    let exec = setting(&text, "ExecStart").expect("an ExecStart=");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/bin/dms");
    assert!(argv.contains(&"serve"), "{exec}");
    assert!(argv.windows(2).any(|w| w[0] == "--socket-group"), "{exec}");
    // The reason for KillMode=process is written next to it.
    let comments: String = text
        .lines()
        .filter(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(comments.contains("KillMode=process"), "no reason given");
    assert!(
        comments.contains("outlive"),
        "the reason: helpers outlive a restart"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let tool = Path::new("/usr/bin/systemd-analyze");
    if !tool.exists() {
        eprintln!("skipped: /usr/bin/systemd-analyze is not installed");
        return;
    }
    // verify checks that ExecStart's program exists: a copy pointing at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("dms.service");
    let dms = assert_cmd::cargo::cargo_bin("dms");
    std::fs::write(&copy, unit().replace("/usr/bin/dms", dms.to_str().unwrap())).unwrap();
    let out = Command::new(tool)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // verify exits 0 on settings it ignores; any word about the unit is a finding.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dms.service"))
        .collect();
    assert!(about_unit.is_empty(), "verify says: {about_unit:?}");
}

#[test]
fn the_units_command_line_starts_the_daemon_and_it_notifies_ready() {
    let text = unit();
    let exec = setting(&text, "ExecStart").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let gid = nix::unistd::getegid().as_raw().to_string();
    let mut argv: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    argv[0] = assert_cmd::cargo::cargo_bin("dms")
        .to_str()
        .unwrap()
        .to_owned();
    for i in 1..argv.len() {
        if argv[i] == "/run/dms" {
            argv[i] = run_dir.to_str().unwrap().to_owned();
        }
        if argv[i - 1] == "--socket-group" {
            argv[i] = gid.clone();
        }
    }
    assert!(
        argv.iter().any(|a| a == run_dir.to_str().unwrap()),
        "{exec}"
    );
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = tmp.path().join("serve.log");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("RUST_LOG")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let got = notify.recv(&mut buf);
    let message = got
        .as_ref()
        .map(|&n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let mut status = None;
    let stopped = dms_testkit::wait_for(Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !stopped {
        let _ = child.kill();
        panic!("dms serve did not stop on SIGTERM");
    }
    let status = status.unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let message = message.unwrap_or_else(|e| panic!("no READY=1 ({e}): {log_text}"));
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "{message:?}: {log_text}"
    );
    assert_eq!(status.code(), Some(0), "{log_text}");
}
