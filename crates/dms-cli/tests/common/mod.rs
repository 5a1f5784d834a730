//! Shared harness of the end-to-end tests: a temp run dir per test, the built `dms`
//! binary, JSON parsing, and the bookkeeping of every helper a test started.
//!
//! Helpers started through `dms spawn` are children of a `dms` process that exits, so they
//! are reparented. The test process makes itself a child subreaper, so they are
//! reparented to it (never to PID 1, which on this machine does not reap), and it reaps
//! them: a dead helper stays our zombie until reaped, so its PID cannot be reused while a
//! test still holds it, which makes signalling a recorded helper PID at cleanup safe.
//!
//! The process, polling and daemon helpers are `dms-testkit`'s, shared with the other
//! crates' tests; this file keeps what is the CLI's own (its worlds, runs and flags).

#![allow(dead_code)]

use assert_cmd::Command;
use dms_testkit::daemon::{Instance, Served};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid as NixPid;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tempfile::TempDir;

#[allow(unused_imports)] // each test binary uses some of them
pub use dms_testkit::{alive, is_our_child, wait_dead, wait_for};

/// The two store backends every scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `--backend pidfile`.
    Pidfile,
    /// `--backend sqlite`.
    Sqlite,
}

impl Backend {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Pidfile => "pidfile",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// Runs each named scenario `fn name(backend: Backend)` once per backend, as the tests
/// `pidfile::name` and `sqlite::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        dms_testkit::per_backend! {
            #[test];
            pidfile => $crate::common::Backend::Pidfile,
            sqlite => $crate::common::Backend::Sqlite;
            [$($name),*]
        }
    };
}

/// Runs each named scenario `fn name(backend: Backend)` four times: once per backend with
/// the one-shot CLI (`pidfile::name`, `sqlite::name`), and once per backend with a `dms
/// serve` on the run dir that answers the CLI (`daemon_pidfile::name`,
/// `daemon_sqlite::name`; [`World::new`] starts it): same commands, same expected output
/// and exit codes, where a scenario does not ask [`World::via_daemon`] for a difference.
#[macro_export]
macro_rules! both_backends_both_ways {
    ($($name:ident),* $(,)?) => {
        $crate::both_backends!($($name),*);
        dms_testkit::per_backend! {
            #[test] via $crate::common::via_daemon;
            daemon_pidfile => $crate::common::Backend::Pidfile,
            daemon_sqlite => $crate::common::Backend::Sqlite;
            [$($name),*]
        }
    };
}

thread_local! {
    static VIA_DAEMON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every [`World`] it makes served by a `dms serve` of its own.
pub fn via_daemon<R>(f: impl FnOnce() -> R) -> R {
    VIA_DAEMON.with(|v| v.set(true));
    let r = f();
    VIA_DAEMON.with(|v| v.set(false));
    r
}

/// The result of one `dms` run.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// Asserts the exit code, showing the whole run when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Asserts that stderr is exactly one `dms: error:` line.
    #[track_caller]
    pub fn expect_one_error_line(&self) -> &Self {
        assert!(
            self.stderr.starts_with("dms: error: "),
            "stderr does not start with 'dms: error: ': {self:#?}"
        );
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "error is not one line: {self:#?}"
        );
        self
    }
}

/// One test's world: a temp dir holding the run dir, the backend, and the helpers started.
pub struct World {
    /// The temp dir (removed on drop).
    pub tmp: TempDir,
    /// `<tmp>/run`: the run dir passed with `--run-dir`.
    pub run_dir: PathBuf,
    /// The backend passed with `--backend`.
    pub backend: Backend,
    helpers: Mutex<Vec<i32>>,
    daemon: Option<Served>,
}

impl World {
    /// A fresh world; the run dir does not exist yet (dms creates it).
    pub fn new(backend: Backend) -> World {
        dms_testkit::become_subreaper();
        let tmp = dms_testkit::temp_dir("dms-e2e-");
        let run_dir = tmp.path().join("run");
        let daemon = VIA_DAEMON.with(|v| v.get()).then(|| {
            Served::launch(
                &assert_cmd::cargo::cargo_bin("dms"),
                &run_dir,
                backend.name(),
                &tmp.path().join("serve.log"),
                &[],
                &[],
            )
        });
        World {
            tmp,
            run_dir,
            backend,
            helpers: Mutex::new(Vec::new()),
            daemon,
        }
    }

    /// Whether a `dms serve` answers this world's commands ([`via_daemon`]).
    pub fn via_daemon(&self) -> bool {
        self.daemon.is_some()
    }

    /// The `source` a helper the CLI started or found is reported with: `disk` from the
    /// one-shot CLI, which holds nothing in memory; `both` from the daemon.
    pub fn live_source(&self) -> &'static str {
        if self.via_daemon() {
            "both"
        } else {
            "disk"
        }
    }

    /// What the daemon logged so far (empty without one).
    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(Served::log_text)
            .unwrap_or_default()
    }

    /// `dms --run-dir <run> --backend <backend>`, with a clean environment for dms's own
    /// variables.
    pub fn cmd(&self) -> Command {
        let mut c = dms();
        c.arg("--run-dir").arg(&self.run_dir);
        c.arg("--backend").arg(self.backend.name());
        c
    }

    /// Runs `dms <global flags> args...`.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.cmd();
        c.args(args);
        run(&mut c)
    }

    /// Runs `dms --json <args>`.
    pub fn json<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.cmd();
        c.arg("--json").args(args);
        run(&mut c)
    }

    /// `dms --json spawn TARGET -- program...`, expecting success; records the helper.
    pub fn spawn(&self, target: &str, program: &[&str]) -> Value {
        let mut args = vec!["spawn", target, "--"];
        args.extend_from_slice(program);
        let r = self.json(&args);
        r.expect_code(0);
        let info = r.json();
        self.track(pid_of(&info));
        info
    }

    /// Remembers a helper PID to reap or stop at the end.
    pub fn track(&self, pid: i32) {
        self.helpers.lock().unwrap().push(pid);
    }

    /// `<run>/s3/<target>.pid`.
    pub fn pid_file(&self, target: &str) -> PathBuf {
        self.run_dir.join("s3").join(format!("{target}.pid"))
    }

    /// Writes a PID file as the existing deployment does: the bare number, no newline.
    pub fn write_bare_pid_file(&self, target: &str, content: &str) {
        std::fs::create_dir_all(self.run_dir.join("s3")).unwrap();
        std::fs::write(self.pid_file(target), content).unwrap();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The daemon first: its helpers keep running and are reparented to this process
        // (the subreaper), so the sweep below stops them.
        drop(self.daemon.take());
        // Stop what is still running; every PID here is a helper this test started and,
        // because we are its subreaper and have not reaped it, cannot have been reused.
        let pids = std::mem::take(&mut *self.helpers.lock().unwrap());
        for pid in pids {
            if is_our_child(pid) {
                let _ = kill(NixPid::from_raw(pid), Signal::SIGKILL);
                let _ = dms_testkit::reap(pid, Duration::from_secs(10));
            }
        }
        reap_zombies();
    }
}

/// A `dms serve` of a test ([`Served::start`]) runs on the world's run dir and backend.
impl Instance for World {
    fn dms_bin(&self) -> PathBuf {
        assert_cmd::cargo::cargo_bin("dms")
    }
    fn dms_run_dir(&self) -> PathBuf {
        self.run_dir.clone()
    }
    fn dms_backend(&self) -> &str {
        self.backend.name()
    }
    fn scratch_dir(&self) -> PathBuf {
        self.tmp.path().to_owned()
    }
}

/// The built binary with dms's own environment variables removed.
pub fn dms() -> Command {
    let mut c = Command::cargo_bin("dms").expect("the dms binary is built");
    c.env_remove("DMS_RUN_DIR")
        .env_remove("DMS_BACKEND")
        .env_remove("RUST_LOG");
    c.timeout(Duration::from_secs(60));
    c
}

/// Runs a command to completion.
pub fn run(c: &mut Command) -> Run {
    let out = c.output().expect("dms runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `pid` field of an info or kill object.
#[track_caller]
pub fn pid_of(v: &Value) -> i32 {
    let pid = v["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {v}"));
    i32::try_from(pid).unwrap()
}

/// Reaps every zombie child of this process except `dms` runs, which the
/// `std::process::Command` that started them reaps itself.
pub fn reap_zombies() {
    dms_testkit::reap_zombies_except(&["dms"]);
}

/// Live processes whose command line is exactly `argv`.
pub fn processes_with_cmdline(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .as_deref()
            == Some(&want[..])
            && alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// A `sleep` duration unique to this call, so its helpers can be found by command line.
pub fn unique_sleep() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}.{}",
        300 + N.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// Starts a `sleep` owned by the test itself (not through dms) and returns its PID; the
/// world stops and reaps it at the end.
pub fn own_sleep(world: &World, secs: &str) -> i32 {
    let child = std::process::Command::new("sleep")
        .arg(secs)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("sleep starts");
    let pid = i32::try_from(child.id()).unwrap();
    // Reaped by PID through the world (and the zombie sweep), not through `Child`.
    drop(child);
    world.track(pid);
    pid
}
