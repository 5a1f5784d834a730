//! The real helper, end to end: `s3fs` mounting a bucket of a local S3 server (`moto`,
//! started by the test on a free loopback port), supervised by `dms serve` with
//! `on-failure`. A file written through the mount is in the bucket; SIGKILL of s3fs
//! leaves a stale mount that the daemon repairs before it starts s3fs again, and the
//! file reads again through the new mount, with no human step; a SIGSTOPped s3fs (its
//! mount no longer answers) is found by the mount check and replaced the same way; kill
//! unmounts cleanly; the credentials appear in no answer, event, log or file.
//!
//! Needs root, `/dev/fuse`, `s3fs`, `curl` and `moto_server` (on `PATH`, or in
//! `$DMS_VENV/bin`); without them it says why and passes as skipped.

mod common;
use dms_testkit::daemon;

use common::{alive, wait_dead, wait_for, Backend, World};
use daemon::{of, Served};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const KEY_ID: &str = "AKIDdmsTestKeyId4711";
const SECRET: &str = "dmsTestSecretNeverShown0815xyz";
const T: Duration = Duration::from_secs(120);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn moto_server() -> Option<PathBuf> {
    let venv = std::env::var_os("DMS_VENV").map(|v| PathBuf::from(v).join("bin/moto_server"));
    venv.filter(|p| p.is_file())
        .or_else(|| on_path("moto_server"))
}

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (FUSE mounts)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("needs /dev/fuse".into());
    }
    for tool in ["s3fs", "curl"] {
        if on_path(tool).is_none() {
            return Some(format!("needs {tool} on PATH"));
        }
    }
    if moto_server().is_none() {
        return Some("needs moto_server (on PATH or in $DMS_VENV/bin)".into());
    }
    None
}

/// The moto server started by the test; stopped when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(log: &Path) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_server().unwrap())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("moto_server starts");
    Moto { child, port }
}

/// curl with the test's own S3 signature; the HTTP code and the body.
fn s3(moto: &Moto, method: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-X", method, "-w", "\n%{http_code}"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{KEY_ID}:{SECRET}"))
        .arg(format!("http://127.0.0.1:{}{path}", moto.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn is_mount_point(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    table.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// Detaches what is left at `mnt` (only after a failure: the test's own mount point).
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        while is_mount_point(&self.0) {
            if nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

fn pid(v: &Value) -> i32 {
    v["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {v}")) as i32
}

#[test]
fn s3fs_recovers_from_a_crash_and_a_hang_without_a_human() {
    if let Some(why) = missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let world = World::new(Backend::Sqlite);
    let moto = start_moto(&world.tmp.path().join("moto.log"));
    assert!(
        wait_for(T, || s3(&moto, "PUT", "/backup-bucket").0 == 200),
        "moto does not answer on port {}",
        moto.port
    );
    let mnt = world.tmp.path().join("mnt");
    let _guard = MountGuard(mnt.clone());
    let d = Served::start_with_env(&world, &[], &[("DMS_MOUNT_CHECK_SECS", "0.5")]);
    let mut answers = String::new();
    let url = format!("url=http://127.0.0.1:{},use_path_request_style", moto.port);
    let argv = json!(["s3fs", "backup-bucket", mnt, "-f", "-o", url]);
    let info = d.post(
        "/v1/targets/t1/spawn",
        json!({"argv": argv, "mount": mnt, "ready_timeout_secs": 30,
               "env": {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET},
               "restart": {"policy": "on-failure", "initial_delay_secs": 0.05}}),
        201,
    );
    answers.push_str(&info.to_string());
    assert_eq!(info["mount_state"], "mounted", "{info}");
    let first = pid(&info);

    // Through the mount into the bucket.
    std::fs::write(mnt.join("hello.txt"), "backup data 1\n").unwrap();
    let (code, body) = s3(&moto, "GET", "/backup-bucket/hello.txt");
    assert_eq!((code, body.as_str()), (200, "backup data 1\n"));

    // SIGKILL: the exit is seen, the stale mount repaired, s3fs started again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_dead(first, T));
    let info = d.wait_info("t1", T, |v| {
        v["supervision"]["restarts"] == 1 && v["supervision"]["state"] == "running"
    });
    answers.push_str(&info.to_string());
    assert_eq!(info["mount_state"], "mounted", "{info}");
    assert_eq!(
        info["supervision"]["last_exit"]["signal"], "SIGKILL",
        "{info}"
    );
    let second = pid(&info);
    assert_ne!(second, first);
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "backup data 1\n"
    );
    let events = d.events();
    assert_eq!(of(&events, "mount_stale", "t1").len(), 1, "{events:?}");
    let repaired = of(&events, "mount_repaired", "t1");
    assert_eq!(repaired.len(), 1, "{events:?}");
    assert!(
        repaired[0]["steps"].to_string().contains("detach"),
        "{}",
        repaired[0]
    );

    // A hung s3fs (SIGSTOP): the mount check finds the mount not answering, repairs it
    // (the FUSE connection aborted, s3fs stopped) and starts s3fs again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let info = d.wait_info("t1", T, |v| {
        v["supervision"]["restarts"] == 2 && v["supervision"]["state"] == "running"
    });
    answers.push_str(&info.to_string());
    assert!(wait_dead(second, T), "the hung s3fs was stopped");
    assert_eq!(info["mount_state"], "mounted", "{info}");
    std::fs::write(mnt.join("second.txt"), "backup data 2\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "backup data 1\n"
    );
    assert_eq!(
        s3(&moto, "GET", "/backup-bucket/second.txt").1,
        "backup data 2\n"
    );
    assert_eq!(of(&d.events(), "mount_stale", "t1").len(), 2);

    // kill unmounts cleanly.
    let third = pid(&info);
    let report = d.post("/v1/targets/t1/kill", json!({"grace_secs": 5}), 200);
    answers.push_str(&report.to_string());
    assert!(report["steps"].to_string().contains("unmount"), "{report}");
    assert!(wait_dead(third, T));
    assert!(!is_mount_point(&mnt));
    assert_eq!(d.supervision("t1")["state"], "stopped");

    // The credentials are in no answer, event, log or file of dms.
    let mut seen = answers;
    seen.push_str(&d.get("/v1/targets").to_string());
    seen.push_str(&d.get("/v1/stats").to_string());
    seen.push_str(&d.events().iter().map(Value::to_string).collect::<String>());
    seen.push_str(&d.log_text());
    for f in common::files_under(&world.run_dir) {
        seen.push_str(&String::from_utf8_lossy(
            &std::fs::read(&f).unwrap_or_default(),
        ));
    }
    assert!(
        seen.contains("AWS_SECRET_ACCESS_KEY"),
        "the key names are kept"
    );
    assert!(
        !seen.contains(SECRET) && !seen.contains(KEY_ID),
        "a credential leaked"
    );
    assert!(!alive(third));
}
