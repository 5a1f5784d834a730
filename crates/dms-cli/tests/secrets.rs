//! Credentials handed to a helper through `--env KEY` (from dms's own environment),
//! `--env-file` and dms's inherited environment reach the helper, and nowhere else:
//!
//! - not the output of any command (`--json` and the human tables), nor its logs at the
//!   most verbose level (`-vvvv` and `RUST_LOG=trace`);
//! - not a byte of any file dms writes in the run dir: PID files, lock files, the helper
//!   log that dms creates (the helper itself writes nothing), and the SQLite database,
//!   its `-wal` and `-shm` files, read raw while a connection keeps the WAL from being
//!   checkpointed away;
//! - not the command line of the `dms` process (read from `/proc/PID/cmdline` while that
//!   `dms spawn` is blocked on the target's lock the test holds) nor of the helper.
//!
//! Not even a 12-character piece of a secret may appear (the field notes report a
//! manager that logged part of a secret payload). `--env KEY=VALUE` is left out on
//! purpose: a literal value stands on dms's command line by the caller's choice; cli.md
//! offers `--env KEY` and `--env-file` to avoid exactly that.
//!
//! `lifecycle.rs` checks that the helper gets its environment right; this file is about
//! where the values must not go.

mod common;

use common::{files_under, pid_of, unique_sleep, wait_dead, wait_for, Backend, World};
use nix::fcntl::{Flock, FlockArg};
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const STOP: Duration = Duration::from_secs(10);

/// A fresh random secret: `CANARY-` and 32 hex digits from the kernel's random source.
fn canary(tag: &str) -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("CANARY-{tag}-{hex}")
}

/// The secrets of one test and the checks against them.
struct Secrets {
    /// Passed as `--env AWS_SECRET_ACCESS_KEY` (value from dms's environment).
    aws: String,
    /// A line of the `--env-file`.
    file: String,
    /// Only in dms's own environment: inherited by the helper.
    inherited: String,
}

impl Secrets {
    fn new() -> Secrets {
        Secrets {
            aws: canary("aws"),
            file: canary("file"),
            inherited: canary("inherited"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.aws, &self.file, &self.inherited]
    }

    /// Panics if `bytes` holds any secret or any 12-byte piece of its random part.
    #[track_caller]
    fn assert_absent(&self, what: &str, bytes: &[u8]) {
        for secret in self.all() {
            let random = &secret.as_bytes()[secret.len() - 32..];
            let whole = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            let piece = random
                .windows(12)
                .find(|p| bytes.windows(12).any(|w| w == *p));
            assert!(
                !whole && piece.is_none(),
                "{what} holds the secret {secret} (or the piece {:?})",
                piece.map(String::from_utf8_lossy)
            );
        }
    }

    /// Sets dms's environment: the AWS key (for `--env KEY`) and the inherited one, plus
    /// the most verbose logging.
    fn env(&self, c: &mut assert_cmd::Command) {
        c.env("AWS_SECRET_ACCESS_KEY", &self.aws)
            .env("VAULT_INHERITED_TOKEN", &self.inherited)
            .env("RUST_LOG", "trace");
    }
}

/// Runs `dms -vvvv <args>` (human output) and `dms -vvvv --json <args>` with the secrets in
/// its environment; checks both outputs and returns the JSON run's stdout.
fn run_both_ways(w: &World, s: &Secrets, args: &[&str], codes: &[i32]) -> String {
    let mut json_out = String::new();
    for json in [false, true] {
        let mut c = w.cmd();
        s.env(&mut c);
        c.arg("-vvvv");
        if json {
            c.arg("--json");
        }
        c.args(args);
        let r = common::run(&mut c);
        assert!(codes.contains(&r.code), "{args:?}: {r:#?}");
        s.assert_absent(&format!("stdout of {args:?}"), r.stdout.as_bytes());
        s.assert_absent(&format!("stderr of {args:?}"), r.stderr.as_bytes());
        if json {
            json_out = r.stdout;
        }
    }
    json_out
}

/// `/proc/PID/cmdline`, or empty when the process is gone.
fn cmdline(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
}

/// Whether `pid` has `path` open.
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
}

fn secrets_stay_out_of_logs_output_files_and_command_lines(backend: Backend) {
    let w = World::new(backend);
    let s = Secrets::new();
    let env_file = w.tmp.path().join("vault.env");
    std::fs::write(
        &env_file,
        format!(
            "# credentials\nvault_s3_bucket=backups\nVAULT_FILE_SECRET={}\n",
            s.file
        ),
    )
    .unwrap();

    // The layout exists, so the test can hold the target's lock and hold the database
    // open (keeping its WAL file from being checkpointed and deleted when dms exits).
    w.run(["status"]).expect_code(0);
    let _db = (backend == Backend::Sqlite)
        .then(|| dms_store::SqliteStore::open(&w.run_dir).expect("the test opens the store"));
    let lock_path = w.run_dir.join("locks/t.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let lock = Flock::lock(lock_file, FlockArg::LockExclusive).expect("flock");

    // `dms spawn` blocks on the lock: its command line can be read while it runs.
    let dur = unique_sleep();
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"));
    c.arg("--run-dir")
        .arg(&w.run_dir)
        .args(["--backend", backend.name(), "-vvvv", "--json"])
        .args(["spawn", "t", "--env", "AWS_SECRET_ACCESS_KEY", "--env-file"])
        .arg(&env_file)
        .args(["--", "sleep", &dur])
        .env("AWS_SECRET_ACCESS_KEY", &s.aws)
        .env("VAULT_INHERITED_TOKEN", &s.inherited)
        .env("RUST_LOG", "trace")
        .env_remove("DMS_RUN_DIR")
        .env_remove("DMS_BACKEND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("dms starts");
    let dms_pid = child.id();
    assert!(
        wait_for(STOP, || has_open(dms_pid, &lock_path)),
        "dms never opened the lock file"
    );
    let dms_cmdline = cmdline(dms_pid);
    assert!(
        dms_cmdline.windows(3).any(|w| w == b"\0t\0"),
        "read the wrong process's command line: {}",
        String::from_utf8_lossy(&dms_cmdline)
    );
    s.assert_absent("the command line of dms", &dms_cmdline);
    // dms's own environment does hold them: that is where `--env KEY` reads from.
    let dms_environ = std::fs::read(format!("/proc/{dms_pid}/environ")).unwrap();
    assert!(dms_environ
        .windows(s.aws.len())
        .any(|w| w == s.aws.as_bytes()));
    drop(lock);

    let deadline = Instant::now() + Duration::from_secs(60);
    let out = child.wait_with_output().unwrap();
    assert!(Instant::now() < deadline);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    s.assert_absent("stdout of spawn", &out.stdout);
    s.assert_absent("stderr of spawn", &out.stderr);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TRACE") || stderr.contains("DEBUG"),
        "logging was not verbose: {stderr}"
    );
    // The keys are logged (they may be), so the values had every chance to be.
    for key in [
        "AWS_SECRET_ACCESS_KEY",
        "VAULT_FILE_SECRET",
        "VAULT_INHERITED_TOKEN",
    ] {
        assert!(stderr.contains(key), "{key} not logged: {stderr}");
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let helper = pid_of(&info);
    w.track(helper);

    // The helper got the secrets, in its environment only.
    let helper_environ = std::fs::read(format!("/proc/{helper}/environ")).unwrap();
    for secret in s.all() {
        assert!(
            helper_environ
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the helper lacks {secret}"
        );
    }
    let helper_cmdline = cmdline(helper as u32);
    assert_eq!(helper_cmdline, format!("sleep\0{dur}\0").into_bytes());
    s.assert_absent("the command line of the helper", &helper_cmdline);

    // Every other command, human and JSON, at the most verbose level.
    run_both_ways(&w, &s, &["status"], &[0]);
    run_both_ways(&w, &s, &["status", "t"], &[0]);
    run_both_ways(&w, &s, &["stats"], &[0]);
    run_both_ways(&w, &s, &["cleanup"], &[0]);

    // The files dms wrote, raw, while the helper runs (the WAL is still there).
    let files = files_under(&w.run_dir);
    if backend == Backend::Sqlite {
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for want in ["dms.sqlite3", "dms.sqlite3-wal", "dms.sqlite3-shm"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
    assert!(files.iter().any(|f| f.ends_with("s3/t.pid")));
    assert!(files.iter().any(|f| f.ends_with("logs/t.log")));
    for f in &files {
        s.assert_absent(&f.display().to_string(), &std::fs::read(f).unwrap());
    }

    // A replace and a kill: the same again.
    let dur2 = unique_sleep();
    let mut c = w.cmd();
    s.env(&mut c);
    c.args(["-vvvv", "--json", "spawn", "t", "--replace", "--env"])
        .arg("AWS_SECRET_ACCESS_KEY")
        .arg("--env-file")
        .arg(&env_file)
        .args(["--", "sleep", &dur2]);
    let r = common::run(&mut c);
    r.expect_code(0);
    s.assert_absent("stdout of spawn --replace", r.stdout.as_bytes());
    s.assert_absent("stderr of spawn --replace", r.stderr.as_bytes());
    let second = pid_of(&r.json());
    w.track(second);
    assert!(wait_dead(helper, STOP), "the replaced helper still runs");
    run_both_ways(&w, &s, &["kill", "t"], &[0, 3]);
    assert!(wait_dead(second, STOP));
    run_both_ways(&w, &s, &["cleanup", "--all"], &[0]);
    for f in files_under(&w.run_dir) {
        s.assert_absent(&f.display().to_string(), &std::fs::read(&f).unwrap());
    }
}

both_backends!(secrets_stay_out_of_logs_output_files_and_command_lines);
