//! Load and soak: many helpers at once, through the library and through the binary.
//!
//! - 1,000 helpers (`sleep 600`) spawned concurrently through one `Manager` over
//!   `LinuxSpawner` and `PidFileStore` in a temp run dir, then stopped concurrently;
//! - a soak: 20 cycles of 100 concurrent spawns and kills on one manager, with the
//!   file descriptors and the resident memory of the test process measured each cycle;
//! - 200 `dms spawn` processes at once, then 200 `dms kill` processes at once.
//!
//! Afterwards: every helper is dead, no zombie is left among the test's children, the
//! manager holds no more file descriptors than before (`/proc/self/fd`), and the run dir
//! holds no PID file and no temporary file. Lock files (`locks/<target>.lock`) stay by
//! design: deleting a lock file another process may be about to `flock` would let two
//! processes hold "the" lock at once; the test checks that none is still held.
//!
//! Each test prints its timings (`cargo test -p dms-cli --test load -- --nocapture`).

mod common;

use common::{alive, files_under, is_our_child, pid_of, reap_zombies, Backend, World};
use dms_core::{HelperSpec, Manager, ManagerOptions, UsageSampling};
use dms_proc::linux::LinuxSpawner;
use dms_store::{PidFileStore, TargetId};
use nix::fcntl::{Flock, FlockArg};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tests here run one at a time: each counts the zombies and fds of the whole
/// process, and the CLI test's zombie sweep must not reap the library's helpers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const LIB_HELPERS: usize = 1000;
const CLI_HELPERS: usize = 200;
const GRACE: Duration = Duration::from_secs(5);

/// Open file descriptors of this process.
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's resident set size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// PIDs of zombie children of this process.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        if f[0] == "Z" && f[1] == me {
            out.push(pid);
        }
    }
    out
}

/// Checks that the process limits allow `n` more processes and `8 n` open files
/// (raising the soft limit on files when the hard limit allows); prints them.
fn check_limits(n: usize) {
    // Each spawn in flight holds a few fds (socketpair, pipes, log, lock, pidfd).
    raise_nofile((10 * n + 512) as u64);
    let pid_max: usize = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft = |name: &str| -> Option<u64> {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok()) // "unlimited" is None
    };
    let nproc = soft("Max processes");
    let nofile = soft("Max open files");
    eprintln!("limits: pid_max {pid_max}, max processes {nproc:?}, max open files {nofile:?}");
    assert!(
        pid_max > 4 * n,
        "pid_max {pid_max} is too small for {n} helpers"
    );
    if let Some(nproc) = nproc {
        assert!(
            nproc as usize > 2 * n,
            "ulimit -u {nproc} is too small for {n} helpers"
        );
    }
    if let Some(nofile) = nofile {
        assert!(
            nofile as usize >= 8 * n,
            "ulimit -n {nofile} is too small: raise it (ulimit -n {}) to run {n} helpers",
            10 * n + 512
        );
    }
}

/// Raises the soft limit on open files to at least `want` when the hard limit allows
/// (many systems default to a soft limit of 1024; the manager holds a pidfd per helper).
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// No PID file and no temporary file under `s3/`; every lock file can be taken at once
/// (nobody holds it). Returns the number of lock files.
fn check_run_dir_clean(run_dir: &Path) -> usize {
    let leftovers: Vec<_> = files_under(&run_dir.join("s3"));
    assert!(leftovers.is_empty(), "left in s3/: {leftovers:?}");
    let locks = files_under(&run_dir.join("locks"));
    for lock in &locks {
        let f = std::fs::File::open(lock).unwrap();
        let held = Flock::lock(f, FlockArg::LockExclusiveNonblock);
        assert!(held.is_ok(), "{} is still held", lock.display());
    }
    locks.len()
}

fn spec() -> HelperSpec {
    HelperSpec {
        program: "sleep".into(),
        args: vec!["600".into()],
        env: std::env::vars_os().collect(),
        ..HelperSpec::default()
    }
}

fn target(i: usize) -> TargetId {
    format!("load-{i:04}").parse().unwrap()
}

/// Spawns `n` helpers concurrently on `manager`, returns their PIDs.
async fn spawn_all(manager: &Manager, n: usize) -> Vec<i32> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let m = manager.clone();
            tokio::spawn(async move { m.spawn(&target(i), spec()).await })
        })
        .collect();
    let mut pids = Vec::with_capacity(n);
    for t in tasks {
        let info = t.await.unwrap().expect("spawn");
        assert!(info.running);
        pids.push(info.pid.unwrap().get());
    }
    pids
}

/// Stops `n` helpers concurrently.
async fn kill_all(manager: &Manager, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let m = manager.clone();
            tokio::spawn(async move { m.kill(&target(i), GRACE).await })
        })
        .collect();
    for t in tasks {
        let report = t.await.unwrap().expect("kill");
        assert!(report.was_running && report.stopped, "{report:?}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Kills any helper still alive (a failed check must not leave 1,000 sleeps behind).
struct Reaper(Vec<i32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if is_our_child(pid) {
                let p = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(p, None);
            }
        }
    }
}

#[test]
fn thousand_helpers_through_the_library() {
    let _serial = serial();
    check_limits(LIB_HELPERS);
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rt = runtime();
    let fds_before = fd_count();
    let mut reaper = Reaper(Vec::new());
    let (fds_open, fds_peak, fds_after, spawn_time, kill_time) = rt.block_on(async {
        let store = Arc::new(PidFileStore::open(&run_dir).unwrap());
        let spawner = Arc::new(LinuxSpawner::new().unwrap());
        let mut opts = ManagerOptions::new(&run_dir);
        opts.usage = UsageSampling::Off; // no CPU sampling: this measures spawn and kill
        let (manager, _) = Manager::open(store, spawner, opts).await.unwrap();
        let fds_open = fd_count();

        let t = Instant::now();
        let pids = spawn_all(&manager, LIB_HELPERS).await;
        let spawn_time = t.elapsed();
        reaper.0.clone_from(&pids);
        let mut unique = pids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), LIB_HELPERS);
        assert!(pids.iter().all(|&p| alive(p)));
        let pid_files = files_under(&run_dir.join("s3")).len();
        assert_eq!(pid_files, LIB_HELPERS);
        // One pidfd per watched helper: the count below is worth checking.
        let fds_peak = fd_count();
        assert!(
            fds_peak >= fds_open + LIB_HELPERS,
            "{fds_peak} fds with 1,000 helpers"
        );

        let t = Instant::now();
        kill_all(&manager, LIB_HELPERS).await;
        let kill_time = t.elapsed();
        assert!(pids.iter().all(|&p| !alive(p)));
        // Exit watchers finish as their helpers are reaped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while fd_count() > fds_open && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fds_after = fd_count();
        drop(manager);
        (fds_open, fds_peak, fds_after, spawn_time, kill_time)
    });
    drop(rt);
    let zombies = zombie_children();
    assert!(zombies.is_empty(), "zombie children: {zombies:?}");
    assert_eq!(
        fds_after,
        fds_open,
        "the manager leaked {} file descriptors",
        fds_after.saturating_sub(fds_open)
    );
    let fds_end = fd_count();
    let locks = check_run_dir_clean(&run_dir);
    assert_eq!(locks, LIB_HELPERS);
    eprintln!(
        "library: {LIB_HELPERS} helpers spawned concurrently in {spawn_time:.2?} \
         ({:.0}/s), stopped concurrently in {kill_time:.2?} ({:.0}/s); fds: {fds_before} \
         before, {fds_open} with the manager open, {fds_peak} with 1,000 helpers, {fds_after} \
         after the kills, {fds_end} \
         after the runtime; {locks} lock files kept, none held",
        LIB_HELPERS as f64 / spawn_time.as_secs_f64(),
        LIB_HELPERS as f64 / kill_time.as_secs_f64(),
    );
    assert!(fds_end <= fds_before, "{fds_end} > {fds_before}");
}

#[test]
fn soak_spawn_kill_cycles_keep_fds_and_memory_flat() {
    let _serial = serial();
    // DMS_SOAK_CYCLES raises the number of cycles for a longer soak.
    let cycles: usize = std::env::var("DMS_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .max(4);
    const PER_CYCLE: usize = 100;
    check_limits(PER_CYCLE);
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rt = runtime();
    let started = Instant::now();
    let (fds, rss) = rt.block_on(async {
        let store = Arc::new(PidFileStore::open(&run_dir).unwrap());
        let spawner = Arc::new(LinuxSpawner::new().unwrap());
        let mut opts = ManagerOptions::new(&run_dir);
        opts.usage = UsageSampling::Off;
        let (manager, _) = Manager::open(store, spawner, opts).await.unwrap();
        let mut fds = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..cycles {
            let pids = spawn_all(&manager, PER_CYCLE).await;
            let _reaper = Reaper(pids.clone());
            kill_all(&manager, PER_CYCLE).await;
            assert!(pids.iter().all(|&p| !alive(p)));
            // Settle: exit watchers are done once the fd count stops falling.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut last = fd_count();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = fd_count();
                if now == last || Instant::now() > deadline {
                    break;
                }
                last = now;
            }
            fds.push(fd_count());
            rss.push(rss_kib());
        }
        (fds, rss)
    });
    drop(rt);
    eprintln!(
        "soak: {cycles} cycles x {PER_CYCLE} helpers in {:.2?}; fds per cycle {fds:?}; \
         RSS KiB per cycle {rss:?}",
        started.elapsed()
    );
    assert!(zombie_children().is_empty());
    // Flat: the last half of the cycles holds no more fds than the first cycle did, and
    // memory grows by less than 8 MiB from cycle 2 to the end (allocator warm-up aside).
    let first = fds[0];
    assert!(fds.iter().all(|&f| f <= first), "fd count grows: {fds:?}");
    let growth = rss[cycles - 1].saturating_sub(rss[1]);
    assert!(growth < 8 * 1024, "RSS grew by {growth} KiB: {rss:?}");
    check_run_dir_clean(&run_dir);
}

#[test]
fn two_hundred_helpers_through_the_cli() {
    let _serial = serial();
    check_limits(CLI_HELPERS);
    let w = World::new(Backend::Pidfile);
    w.run(["status"]).expect_code(0);
    let dur = common::unique_sleep();
    let spawn = |i: usize| {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"));
        c.arg("--run-dir")
            .arg(&w.run_dir)
            .args([
                "--json",
                "spawn",
                &format!("cli-{i:03}"),
                "--",
                "sleep",
                &dur,
            ])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let t = Instant::now();
    let children: Vec<_> = (0..CLI_HELPERS)
        .map(|i| spawn(i).spawn().expect("dms starts"))
        .collect();
    let mut pids = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = pid_of(&serde_json::from_slice(&out.stdout).unwrap());
        w.track(pid);
        pids.push(pid);
    }
    let spawn_time = t.elapsed();
    assert_eq!(
        common::processes_with_cmdline(&["sleep", &dur]).len(),
        CLI_HELPERS
    );

    let t = Instant::now();
    let children: Vec<_> = (0..CLI_HELPERS)
        .map(|i| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"))
                .arg("--run-dir")
                .arg(&w.run_dir)
                .args(["--json", "kill", &format!("cli-{i:03}")])
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("dms starts")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kill_time = t.elapsed();
    // The helpers were reparented to this test (the child subreaper): it reaps them.
    for &pid in &pids {
        assert!(
            common::wait_dead(pid, Duration::from_secs(10)),
            "{pid} alive"
        );
    }
    reap_zombies();
    let zombies = zombie_children();
    assert!(zombies.is_empty(), "zombie children: {zombies:?}");
    let locks = check_run_dir_clean(&w.run_dir);
    eprintln!(
        "cli: {CLI_HELPERS} parallel `dms spawn` in {spawn_time:.2?}, {CLI_HELPERS} parallel \
         `dms kill` in {kill_time:.2?}; {locks} lock files kept, none held"
    );
}
