//! Shared set-up of the FUSE tests: the `dms` binary with the real FUSE helper
//! (`dms-testfuse`) mounting in a temp dir; see `mounts.rs`.
#![allow(dead_code, unused_macros)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test binary uses some of them
pub use dms_testkit::wait_for;

pub const FUSE_HELPER: &str = env!("CARGO_BIN_EXE_dms-testfuse");

/// Why FUSE tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: mounting FUSE with mount(2) needs root".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("fuse"))
    {
        return Some("the kernel does not list the fuse file system".into());
    }
    if dms_bin().is_none() {
        return Some(
            "the dms binary is not built next to this test; run `cargo test --workspace`".into(),
        );
    }
    None
}

/// Returns from the test, with a message, where FUSE tests cannot run.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}

pub fn dms_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let bin = dir.join("dms");
    bin.is_file().then_some(bin)
}

/// Makes this test process a child subreaper (the kit's set-up).
pub fn subreaper() {
    dms_testkit::become_subreaper();
}

/// A temp run dir and mount root; detaches every mount under it and kills every helper
/// it recorded on drop.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub helpers: Mutex<Vec<i32>>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

impl World {
    pub fn new() -> World {
        subreaper();
        World {
            tmp: tempfile::TempDir::new().unwrap(),
            helpers: Mutex::new(Vec::new()),
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    pub fn mnt(&self, name: &str) -> PathBuf {
        self.tmp.path().join("mnt").join(name)
    }

    pub fn dms(&self, args: &[&str]) -> Run {
        let start = Instant::now();
        let out = Command::new(dms_bin().unwrap())
            .arg("--run-dir")
            .arg(self.run_dir())
            .args(args)
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }

    /// `dms --json spawn TARGET --mount DIR [extra dms args] -- dms-testfuse [flags] DIR`.
    pub fn spawn(&self, target: &str, dir: &Path, dms_extra: &[&str], flags: &[&str]) -> Run {
        let d = dir.to_str().unwrap();
        let mut args = vec!["--json", "spawn", target, "--mount", d];
        args.extend_from_slice(dms_extra);
        args.extend_from_slice(&["--", FUSE_HELPER]);
        args.extend_from_slice(flags);
        args.push(d);
        let r = self.dms(&args);
        if r.code == 0 {
            if let Some(pid) = r.json()["pid"].as_i64() {
                self.helpers.lock().unwrap().push(pid as i32);
            }
        }
        r
    }

    pub fn log(&self, target: &str) -> String {
        std::fs::read_to_string(self.run_dir().join("logs").join(format!("{target}.log")))
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let helpers: Vec<i32> = self.helpers.lock().unwrap().drain(..).collect();
        // Only helpers this test started; a reaped PID is skipped (ECHILD).
        let ours: Vec<i32> = helpers
            .into_iter()
            .filter(|&p| is_unreaped_child(p))
            .collect();
        for &pid in &ours {
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
        // Detach and abort this test's FUSE mounts before waiting: a helper thread stuck
        // in its own mount cannot die (and its leader cannot be reaped) until then. A
        // failed test must not hang the suite here.
        let root = self.tmp.path().to_owned();
        let table = dms_core::mount::read_mountinfo().unwrap_or_default();
        for m in table
            .iter()
            .rev()
            .filter(|m| m.mount_point.starts_with(&root))
        {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
            if m.is_fuse() {
                let _ = dms_core::mount::abort_connection(m.minor);
            }
        }
        for pid in ours {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
    }
}

/// Whether `pid` is still our (live or zombie) child, without reaping it.
pub fn is_unreaped_child(pid: i32) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    waitid(
        Id::Pid(nix::unistd::Pid::from_raw(pid)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    )
    .is_ok()
}

/// Mount points at or below `root`, in mount order.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    dms_core::mount::read_mountinfo()
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect()
}

pub fn is_mount_point(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

/// Reaps `pid` (our child by subreaping), waiting at most `limit`: true once every
/// thread of it has exited (a leader that is a zombie while another thread is stuck in
/// the kernel is not reapable yet), or, not our child (any more), once `/proc` has no
/// trace of it.
#[allow(unused_imports)] // each test binary uses some of them
pub use dms_testkit::process::reap_or_gone as reap;

/// Whether a thread of `pid` waits in the kernel for an answer from its FUSE
/// connection: its wait channel is FUSE's `request_wait_answer`, or, where the kernel
/// hides wait channels, it is inside `statfs(2)` (x86_64 syscall 137).
pub fn thread_stuck_in_fuse(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            read("wchan").contains("request_wait_answer")
                || (cfg!(target_arch = "x86_64") && read("syscall").starts_with("137 "))
        })
}

pub fn steps(v: &Value) -> Vec<String> {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Makes the helper `pid` of `target` (started with `--hang-statfs-on-usr1`) hang from
/// now on: SIGUSR1, then wait until its log says so.
pub fn hang(w: &World, target: &str, pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || w
            .log(target)
            .contains("statfs hangs from now on")),
        "helper {pid} never hung: {}",
        w.log(target)
    );
}

/// The PID in a spawn's JSON.
pub fn pid_of(r: &Run) -> i32 {
    r.json()["pid"].as_i64().expect("a PID") as i32
}

/// Mounts `dir` with a `dms-testfuse` started by the test itself, not by dms (an
/// operator's own FUSE mount), and returns its PID once the mount is up. The World
/// kills it on drop.
// The World's drop SIGKILLs and reaps it by PID.
#[allow(clippy::zombie_processes)]
pub fn operator_mount(w: &World, dir: &Path) -> i32 {
    std::fs::create_dir_all(dir).unwrap();
    let child = Command::new(FUSE_HELPER)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    w.helpers.lock().unwrap().push(pid);
    assert!(
        wait_for(Duration::from_secs(10), || is_mount_point(dir)),
        "{} never mounted",
        dir.display()
    );
    pid
}

/// Whether `dir` is a mount point that answers `statfs` (in a thread given `limit`).
pub fn answers(dir: &Path, limit: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(nix::sys::statfs::statfs(&d).is_ok());
    });
    is_mount_point(dir) && rx.recv_timeout(limit).unwrap_or(false)
}

/// Whether `pid` is alive and not a zombie (the kit's).
#[allow(unused_imports)] // each test binary uses some of them
pub use dms_testkit::alive;
