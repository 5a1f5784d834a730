//! Figures of supervision, measured by hand (ignored tests; run with
//! `cargo test -p dms-cli --test supervise_figures -- --ignored --nocapture --test-threads 1`):
//!
//! - `restart_latency`: SIGKILL of a healthy supervised helper (`initial_delay_secs: 0`)
//!   to the new helper's exec, 100 runs: the helper is a tiny C program (built with
//!   `gcc`) that writes `CLOCK_BOOTTIME` at the start of `main`, and the new process's
//!   start time in `/proc/PID/stat` (10 ms ticks) is shown too;
//! - `s3fs_restart_latency`: with a mount (s3fs against moto), SIGKILL to the mount
//!   serving again (a file reads through it), 20 runs;
//! - `crash_loop`: 100 helpers that exit 1 at once, for 60 s: the starts against the
//!   policy's bound, and the daemon's CPU.

mod common;
use dms_testkit::daemon;

use common::{wait_for, Backend, World};
use daemon::Served;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn boottime() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn start_ticks(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: f64 = rest.split(' ').nth(19)?.parse().ok()?;
    Some(ticks / 100.0)
}

fn pid_in(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Builds the stamping helper: writes CLOCK_BOOTTIME (seconds) to argv[1] at the start of
/// main, then waits.
fn stamper(dir: &Path) -> PathBuf {
    let src = dir.join("stamp.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <time.h>\n#include <unistd.h>\n\
         int main(int c, char **v) { struct timespec t; clock_gettime(CLOCK_BOOTTIME, &t);\n\
         FILE *f = fopen(v[1], \"w\"); fprintf(f, \"%ld.%09ld\\n\", t.tv_sec, t.tv_nsec); fclose(f);\n\
         for (;;) pause(); }\n",
    )
    .unwrap();
    let bin = dir.join("stamp");
    let ok = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc runs");
    assert!(ok.success());
    bin
}

#[test]
#[ignore = "a measurement; run by hand"]
fn restart_latency() {
    // DMS_FIGURES_BACKEND=pidfile measures the pidfile backend.
    let backend = match std::env::var("DMS_FIGURES_BACKEND").as_deref() {
        Ok("pidfile") => Backend::Pidfile,
        _ => Backend::Sqlite,
    };
    let world = World::new(backend);
    let d = Served::start_with_env(&world, &[], &[]);
    let bin = stamper(world.tmp.path());
    let stamp = world.tmp.path().join("stamp.txt");
    let info = d.post(
        "/v1/targets/fast/spawn",
        json!({"argv": [bin, stamp], "restart": {"policy": "on-failure",
               "initial_delay_secs": 0, "max_failures": 100000, "window_secs": 1}}),
        201,
    );
    let pid_file = world.run_dir.join("s3/fast.pid");
    let mut pid = info["pid"].as_i64().unwrap() as i32;
    let (mut exec, mut ticks, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..100 {
        assert!(wait_for(T, || std::fs::read_to_string(&stamp)
            .is_ok_and(|s| s.ends_with('\n'))));
        std::fs::remove_file(&stamp).unwrap();
        let t0 = boottime();
        let at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(wait_for(T, || pid_in(&pid_file).is_some_and(|p| p != pid)
            && std::fs::read_to_string(&stamp)
                .is_ok_and(|s| s.ends_with('\n'))));
        seen.push(at.elapsed().as_secs_f64() * 1e3);
        let new = pid_in(&pid_file).unwrap();
        let t1: f64 = std::fs::read_to_string(&stamp)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        exec.push((t1 - t0) * 1e3);
        if let Some(s) = start_ticks(new) {
            ticks.push((s - t0) * 1e3);
        }
        common::reap_zombies();
        pid = new;
    }
    println!(
        "SIGKILL -> new helper's main(): median {:.2} ms, p90 {:.2} ms, max {:.2} ms (n={})",
        median(&mut exec),
        pct(&mut exec, 0.9),
        pct(&mut exec, 1.0),
        exec.len()
    );
    println!(
        "SIGKILL -> new process start (/proc ticks, 10 ms resolution): median {:.1} ms",
        median(&mut ticks)
    );
    println!(
        "SIGKILL -> new PID file and stamp seen by the test: median {:.2} ms",
        median(&mut seen)
    );
    d.post("/v1/targets/fast/kill", json!({"grace_secs": 2}), 200);
}

#[test]
#[ignore = "a measurement; run by hand (needs root, /dev/fuse, s3fs, moto_server in $DMS_VENV/bin)"]
fn s3fs_restart_latency() {
    let moto_bin =
        PathBuf::from(std::env::var_os("DMS_VENV").expect("DMS_VENV")).join("bin/moto_server");
    let world = World::new(Backend::Sqlite);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = Command::new(moto_bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let put = || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .arg(format!("http://127.0.0.1:{port}/fig-bucket"))
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    };
    assert!(wait_for(Duration::from_secs(120), put));
    let mnt = world.tmp.path().join("mnt");
    let d = Served::start_with_env(&world, &[], &[]);
    let url = format!("url=http://127.0.0.1:{port},use_path_request_style");
    let info = d.post(
        "/v1/targets/m/spawn",
        json!({"argv": ["s3fs", "fig-bucket", mnt, "-f", "-o", url], "mount": mnt,
               "env": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
               "restart": {"policy": "on-failure", "initial_delay_secs": 0,
                           "max_failures": 100000, "window_secs": 1}}),
        201,
    );
    std::fs::write(mnt.join("f"), "x").unwrap();
    let pid_file = world.run_dir.join("s3/m.pid");
    let mut pid = info["pid"].as_i64().unwrap() as i32;
    let mut serving = Vec::new();
    for _ in 0..20 {
        let at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(wait_for(T, || pid_in(&pid_file).is_some_and(|p| p != pid)
            && std::fs::read_to_string(mnt.join("f"))
                .is_ok_and(|s| s == "x")));
        serving.push(at.elapsed().as_secs_f64() * 1e3);
        pid = pid_in(&pid_file).unwrap();
        common::reap_zombies();
    }
    println!(
        "s3fs SIGKILL -> mount serving again: median {:.1} ms, p90 {:.1} ms, max {:.1} ms (n={})",
        median(&mut serving),
        pct(&mut serving, 0.9),
        pct(&mut serving, 1.0),
        serving.len()
    );
    d.post("/v1/targets/m/kill", json!({"grace_secs": 5}), 200);
    let _ = moto.kill();
    let _ = moto.wait();
}

fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let (u, s): (f64, f64) = (rest[11].parse().unwrap(), rest[12].parse().unwrap());
    (u + s) / 100.0
}

#[test]
#[ignore = "a measurement of 60 s; run by hand"]
fn crash_loop() {
    let world = World::new(Backend::Sqlite);
    let d = Served::start_with_env(&world, &[], &[]);
    let policy = json!({"policy": "on-failure", "initial_delay_secs": 0.1, "max_delay_secs": 1,
        "reset_after_secs": 60, "max_failures": 1000, "window_secs": 60});
    for i in 0..100 {
        d.post(
            &format!("/v1/targets/loop{i}/spawn"),
            json!({"argv": ["sh", "-c", "exit 1"], "restart": policy}),
            201,
        );
    }
    // A window of 60 s once all run their loops.
    let restarts = |d: &Served| d.get("/v1/stats")["restarts_total"].as_u64().unwrap();
    let (c0, r0, t0) = (cpu_secs(d.pid()), restarts(&d), Instant::now());
    std::thread::sleep(Duration::from_secs(60));
    let elapsed = t0.elapsed().as_secs_f64();
    let starts = restarts(&d) - r0;
    let cpu = cpu_secs(d.pid()) - c0;
    // The bound in any window: the restarts whose delays (at least 0.9 * base, the
    // series from its start) fit into it.
    let mut bound = 0u64;
    let (mut t, mut n) = (0.0, 1u32);
    loop {
        let base: f64 = (0.1 * 2f64.powi(n as i32 - 1)).min(1.0);
        t += base * 0.9;
        if t > elapsed {
            break;
        }
        bound += 1;
        n += 1;
    }
    println!(
        "crash loop: 100 helpers, a window of {elapsed:.1} s: {starts} starts (bound {} = 100 x \
         {bound}), daemon CPU {cpu:.2} s = {:.1} % of one core",
        100 * bound,
        cpu / elapsed * 100.0
    );
    assert!(starts <= 100 * bound);
    d.post("/v1/cleanup", json!({"all": true, "grace_secs": 2}), 200);
}
