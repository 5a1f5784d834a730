//! The hostile-input table: the "Hostile inputs" section of `docs/hostile-inputs.md`, row
//! by row, run through the `dms` binary.
//!
//! Each [`Row`] is one hostile input and one command, with the result it must give: the
//! exit code, fields of the `--json` output (state, steps, removal reason), words the
//! one-line error must contain, what becomes of the PID file, and, for every row, that
//! nothing outside the run directory changed (a snapshot of the rest of the temp dir,
//! including a victim file that symlinks point at) and that no process was signalled (a
//! canary `sleep` in the test's own process group stays alive).
//!
//! Rows that could signal PID 0 or -1 (every PID-file content row, `adopt` of a reserved
//! PID, `cleanup --all` over them) run inside a fresh PID namespace: dms is started
//! through `unshare --pid --fork --mount-proc` (in a process group of its own: process
//! groups span namespaces), next to a canary `sleep` in the same
//! namespace and process group, so a wrong `kill(0)` or `kill(-1)` could only hit that
//! namespace, and the canary shows whether it happened. Where `unshare` is not permitted,
//! those rows are skipped with a printed reason; they are never run outside.
//!
//! `DMS_PRINT_HOSTILE_TABLE=1 cargo test -p dms-cli --test hostile_inputs -- --nocapture`
//! prints the table as markdown (the docs section is that output); the test fails when a
//! row's line is missing from the "## Hostile inputs" section of `docs/hostile-inputs.md`.

mod common;
#[path = "hostile_inputs/inputs.rs"]
mod inputs;

use common::{alive, is_our_child, reap_zombies, run, wait_dead, wait_for, Backend, World};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const RULE: &str = "1 to 200 bytes of [A-Za-z0-9._-], not starting with '.'";
const STOP: Duration = Duration::from_secs(10);

/// How dms is started for a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Launch {
    /// A child of the test, in the test's process group.
    Host,
    /// Inside a fresh PID namespace, next to a canary. `pre` is shell code run just before
    /// dms starts, in the shell that then becomes dms (`exec: true`, so `$$` is dms's own
    /// PID) or that runs dms as its child (`exec: false`, so `$$` is dms's caller).
    PidNs { pre: &'static str, exec: bool },
    /// In a private mount namespace where the run dir is bind-mounted read-only (chmod
    /// does not stop root).
    ReadOnlyRunDir,
}

/// What a row's setup and checks get to see.
struct Ctx<'a> {
    w: &'a World,
    /// `<tmp>/outside`: files outside the run dir that symlinks point at.
    outside: PathBuf,
}

impl Ctx<'_> {
    fn run(&self) -> &Path {
        &self.w.run_dir
    }
    fn s3(&self) -> PathBuf {
        self.w.run_dir.join("s3")
    }
    fn pid_file(&self) -> PathBuf {
        self.s3().join("x.pid")
    }
    fn write_pid_file(&self, content: &[u8]) {
        std::fs::create_dir_all(self.s3()).unwrap();
        std::fs::write(self.pid_file(), content).unwrap();
    }
    /// Replaces `{run}`, `{tmp}`, `{outside}`, `{test_pid}`, `{mnt}`, `{fuse}` and
    /// `{pid_of_y}` (the PID in `s3/y.pid`) in `s`.
    fn fill(&self, s: &str) -> String {
        let s = if s.contains("{pid_of_y}") {
            let pid = std::fs::read_to_string(self.s3().join("y.pid")).unwrap();
            s.replace("{pid_of_y}", pid.trim())
        } else {
            s.to_owned()
        };
        s.replace("{run}", &self.run().display().to_string())
            .replace("{mnt}", &mnt_root(self).display().to_string())
            .replace("{fuse}", &fuse_bin().display().to_string())
            .replace("{tmp}", &self.w.tmp.path().display().to_string())
            .replace("{outside}", &self.outside.display().to_string())
            .replace("{test_pid}", &std::process::id().to_string())
    }
}

type Setup = Box<dyn Fn(&Ctx)>;
type Check = Box<dyn Fn(&Ctx, &Outcome)>;
/// An extra check after the run; the text goes into the table.
type After = (&'static str, Check);

/// The result a row must give.
#[derive(Default)]
struct Expect {
    code: i32,
    /// JSON pointer (without the leading `/`) and the expected value as JSON text.
    json: Vec<(&'static str, &'static str)>,
    /// Words the one `dms: error:` line must contain (placeholders are filled).
    error: Vec<&'static str>,
    /// A word the human `status` output must contain (the reason of a corrupt or foreign
    /// entry); checked with a second run of the same command without `--json`.
    reason: Option<&'static str>,
    /// `s3/x.pid` afterwards: `Some(true)` still there, `Some(false)` gone.
    pid_file_after: Option<bool>,
    /// Whether the run dir exists afterwards (`Some(false)`: a refused command created
    /// nothing).
    run_dir_after: Option<bool>,
    /// For `Launch::PidNs { exec: false }`: whether dms's caller survives.
    caller_survives: Option<bool>,
}

struct Row {
    group: &'static str,
    input: &'static str,
    setup: Setup,
    launch: Launch,
    /// dms's arguments after the global flags (placeholders are filled). `None`: the
    /// arguments cannot be passed at all (see the NUL row).
    args: Option<Vec<String>>,
    expect: Expect,
    after: Option<After>,
    /// Needs root (to chown to another user); skipped with a message otherwise.
    root: bool,
    /// Mounts FUSE file systems with `dms-testfuse` (`{fuse}`) at `{mnt}`; skipped with a
    /// message where FUSE cannot be used.
    fuse: bool,
}

/// What one run gave.
struct Outcome {
    code: i32,
    stdout: String,
    /// stderr without the harness's own `dms-*:` lines.
    stderr: String,
    caller_survived: Option<bool>,
    ns_canary_alive: Option<bool>,
    /// How long the command took.
    elapsed: Duration,
}

fn args(a: &[&str]) -> Option<Vec<String>> {
    Some(a.iter().map(|s| s.to_string()).collect())
}

fn row(
    group: &'static str,
    input: &'static str,
    setup: impl Fn(&Ctx) + 'static,
    launch: Launch,
    argv: Option<Vec<String>>,
    expect: Expect,
) -> Row {
    Row {
        group,
        input,
        setup: Box::new(setup),
        launch,
        args: argv,
        expect,
        after: None,
        root: false,
        fuse: false,
    }
}

const NS: Launch = Launch::PidNs {
    pre: "",
    exec: true,
};

/// The three rows of one PID-file content: `status x`, `kill x` and `cleanup --all`, all
/// in a PID namespace.
fn pid_content_rows(
    input: &'static str,
    content: impl Fn(&Ctx) -> Vec<u8> + Clone + 'static,
    state: &'static str,
    reason: &'static str,
) -> Vec<Row> {
    let kill_step: &'static str = match state {
        "corrupt" => "\"clear_corrupt\"",
        "foreign" => "\"clear_foreign\"",
        _ => "\"clear_stale\"",
    };
    let removed_reason: &'static str = match state {
        "corrupt" => "\"corrupt\"",
        "foreign" => "\"foreign\"",
        _ => "\"stale\"",
    };
    let state_json: &'static str = Box::leak(format!("\"{state}\"").into_boxed_str());
    let setup = move |c: &Ctx| c.write_pid_file(&content(c));
    vec![
        row(
            "PID file",
            input,
            setup.clone(),
            NS,
            args(&["status", "x"]),
            Expect {
                code: 3,
                json: vec![("state", state_json), ("running", "false")],
                reason: Some(reason),
                pid_file_after: Some(true),
                ..Expect::default()
            },
        ),
        row(
            "PID file",
            input,
            setup.clone(),
            NS,
            args(&["kill", "x", "--grace", "1"]),
            Expect {
                code: 3,
                json: vec![
                    ("was_running", "false"),
                    ("signal", "null"),
                    ("steps/0", kill_step),
                ],
                pid_file_after: Some(false),
                ..Expect::default()
            },
        ),
        row(
            "PID file",
            input,
            setup,
            NS,
            args(&["cleanup", "--all", "--grace", "1"]),
            Expect {
                code: 0,
                json: vec![
                    ("removed/0/target", "\"x\""),
                    ("removed/0/reason", removed_reason),
                    ("stopped", "[]"),
                ],
                pid_file_after: Some(false),
                ..Expect::default()
            },
        ),
    ]
}

fn bytes(b: &'static [u8]) -> impl Fn(&Ctx) -> Vec<u8> + Clone {
    move |_| b.to_vec()
}

fn pid_file_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for (input, content, reason) in [
        ("`0`", &b"0"[..], "PID 0 is reserved"),
        ("`1`", b"1\n", "PID 1 is reserved"),
        ("`-1`", b"-1", "PID -1 is negative"),
        ("`+5`", b"+5", "not a decimal PID"),
        (
            "`4294967295` (-1 as u32)",
            b"4294967295",
            "above the kernel's pid_max",
        ),
        (
            "`99999999999`",
            b"99999999999\n",
            "above the kernel's pid_max",
        ),
        ("empty", b"", "empty: no PID in it"),
        ("`abc`", b"abc", "not a decimal PID"),
        ("`12 34`", b"12 34\n", "not a decimal PID"),
        (
            "garbage bytes",
            b"\xff\xfe\x1b[31m$(reboot)\n",
            "not a decimal PID",
        ),
        ("NUL bytes (`12\\0\\0`)", b"12\0\0", "not a decimal PID"),
    ] {
        rows.extend(pid_content_rows(input, bytes(content), "corrupt", reason));
    }
    rows.extend(pid_content_rows(
        "1 MiB of digits",
        |_| vec![b'7'; 1 << 20],
        "corrupt",
        "1048576 bytes long",
    ));

    // dms's own PID: the shell writes `$$` and then becomes dms.
    let own = Launch::PidNs {
        pre: r#"echo $$ > "$DMS_RUN/s3/x.pid""#,
        exec: true,
    };
    let mkdirs = |c: &Ctx| std::fs::create_dir_all(c.s3()).unwrap();
    rows.push(row(
        "PID file",
        "dms's own PID",
        mkdirs,
        own,
        args(&["status", "x"]),
        Expect {
            code: 3,
            json: vec![("state", "\"foreign\""), ("running", "false")],
            reason: Some("is dms itself"),
            pid_file_after: Some(true),
            ..Expect::default()
        },
    ));
    rows.push(row(
        "PID file",
        "dms's own PID",
        mkdirs,
        own,
        args(&["kill", "x", "--grace", "1"]),
        Expect {
            code: 3,
            json: vec![("signal", "null"), ("steps/0", "\"clear_foreign\"")],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    ));
    rows.push(row(
        "PID file",
        "dms's own PID",
        mkdirs,
        own,
        args(&["cleanup", "--all", "--grace", "1"]),
        Expect {
            code: 0,
            json: vec![("removed/0/reason", "\"foreign\""), ("stopped", "[]")],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    ));

    // The PID of the test process (dms's parent), written before dms starts. A bare PID
    // file older than the process it names passes the identity rule, so dms must refuse
    // its own ancestors explicitly. `status` cannot signal anything, so it runs on the
    // host against the real test process.
    rows.push(row(
        "PID file",
        "the test process's PID (dms's caller), status",
        |c: &Ctx| c.write_pid_file(format!("{}\n", std::process::id()).as_bytes()),
        Launch::Host,
        args(&["status", "x"]),
        Expect {
            code: 3,
            json: vec![("state", "\"foreign\""), ("pid", "{test_pid}")],
            reason: Some("ancestor of dms"),
            pid_file_after: Some(true),
            ..Expect::default()
        },
    ));
    // `kill` of the caller's PID runs only in a PID namespace, where the caller is a
    // shell that runs dms as its child: were dms wrong, only that shell would die.
    rows.push(row(
        "PID file",
        "the caller's PID, kill",
        mkdirs,
        Launch::PidNs {
            pre: r#"echo $$ > "$DMS_RUN/s3/x.pid""#,
            exec: false,
        },
        args(&["kill", "x", "--grace", "1"]),
        Expect {
            code: 3,
            json: vec![("signal", "null"), ("steps/0", "\"clear_foreign\"")],
            pid_file_after: Some(false),
            caller_survives: Some(true),
            ..Expect::default()
        },
    ));
    rows
}

fn file_type_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    type Make = fn(&Ctx);
    let makers: [(&'static str, Make, &'static str); 5] = [
        (
            "symlink to a file outside the run dir",
            |c| {
                std::fs::create_dir_all(c.s3()).unwrap();
                std::os::unix::fs::symlink(c.outside.join("victim"), c.pid_file()).unwrap();
            },
            "is a symbolic link to",
        ),
        (
            "symlink to `/dev/zero`",
            |c| {
                std::fs::create_dir_all(c.s3()).unwrap();
                std::os::unix::fs::symlink("/dev/zero", c.pid_file()).unwrap();
            },
            "never followed",
        ),
        (
            "FIFO",
            |c| {
                std::fs::create_dir_all(c.s3()).unwrap();
                nix::unistd::mkfifo(
                    &c.pid_file(),
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )
                .unwrap();
            },
            "a FIFO (named pipe), not a regular file",
        ),
        (
            "directory `x.pid`",
            |c| std::fs::create_dir_all(c.pid_file()).unwrap(),
            "a directory, not a regular file",
        ),
        (
            "socket",
            |c| {
                std::fs::create_dir_all(c.s3()).unwrap();
                let l = std::os::unix::net::UnixListener::bind(c.pid_file()).unwrap();
                drop(l); // the socket file stays
            },
            "a socket, not a regular file",
        ),
    ];
    for (input, make, reason) in makers {
        for (argv, expect) in [
            (
                args(&["status", "x"]),
                Expect {
                    code: 3,
                    json: vec![("state", "\"corrupt\"")],
                    reason: Some(reason),
                    pid_file_after: Some(true),
                    ..Expect::default()
                },
            ),
            (
                args(&["kill", "x", "--grace", "1"]),
                Expect {
                    code: 3,
                    json: vec![("signal", "null"), ("steps/0", "\"clear_corrupt\"")],
                    pid_file_after: Some(false),
                    ..Expect::default()
                },
            ),
        ] {
            rows.push(row("file type", input, make, NS, argv, expect));
        }
    }
    // Strays: `*.pid` names that are not target IDs are counted, never touched.
    rows.push(row(
        "file type",
        "`s3/a b.pid` and `s3/..pid` (names that are not target IDs)",
        |c: &Ctx| {
            std::fs::create_dir_all(c.s3()).unwrap();
            std::fs::write(c.s3().join("a b.pid"), "12345\n").unwrap();
            std::fs::write(c.s3().join("..pid"), "5\n").unwrap();
        },
        NS,
        args(&["stats"]),
        Expect {
            code: 0,
            json: vec![("strays", "2"), ("corrupt", "0"), ("total_tracked", "0")],
            ..Expect::default()
        },
    ));
    rows
}

fn target_rows() -> Vec<Row> {
    let long: &'static str = Box::leak("a".repeat(201).into_boxed_str());
    let mut rows = Vec::new();
    for (input, id) in [
        ("`../x`", "../x"),
        ("empty", ""),
        ("`.x` (leading dot)", ".x"),
        ("201 bytes", long),
        ("`a/b`", "a/b"),
        ("unicode `é`", "é"),
        ("newline `x\\ny`", "x\ny"),
    ] {
        rows.push(row(
            "target ID",
            input,
            |_: &Ctx| {},
            Launch::Host,
            args(&["spawn", id, "--", "sleep", "300"]),
            Expect {
                code: 2,
                error: vec![RULE],
                run_dir_after: Some(false),
                ..Expect::default()
            },
        ));
    }
    rows.push(row(
        "target ID",
        "NUL (`a\\0b`): cannot be passed, execve takes C strings",
        |_: &Ctx| {},
        Launch::Host,
        None,
        Expect {
            run_dir_after: Some(false),
            ..Expect::default()
        },
    ));
    rows
}

/// A helper that writes `$K` to `<run>/got` and then sleeps.
const SHOW_K: &str = r#"printf %s "$K" > "$0/got.tmp" && mv "$0/got.tmp" "$0/got"; exec sleep 300"#;

/// Checks that the helper received `want` as `K`, then stops it.
fn helper_got(want: impl Fn() -> Vec<u8> + 'static) -> Check {
    Box::new(move |c: &Ctx, out: &Outcome| {
        let info: Value = serde_json::from_str(&out.stdout).unwrap();
        let pid = i32::try_from(info["pid"].as_i64().unwrap()).unwrap();
        c.w.track(pid);
        let got = c.run().join("got");
        assert!(wait_for(STOP, || got.exists()), "helper never wrote $K");
        let value = std::fs::read(&got).unwrap();
        assert!(
            value == want(),
            "helper got {} bytes, not the value",
            value.len()
        );
        let r = c.w.run(["kill", "x"]);
        r.expect_code(0);
        assert!(wait_dead(pid, STOP));
    })
}

fn env_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let spawn_k = |item: &str| -> Option<Vec<String>> {
        args(&[
            "spawn", "x", "--env", item, "--", "sh", "-c", SHOW_K, "{run}",
        ])
    };
    let ok = || Expect {
        code: 0,
        json: vec![("state", "\"running\"")],
        pid_file_after: Some(false), // stopped by the check
        ..Expect::default()
    };
    let mut r = row(
        "environment",
        "value with newlines (`--env K=$'a\\nb\\n'`)",
        |_: &Ctx| {},
        Launch::Host,
        spawn_k("K=a\nb\n"),
        ok(),
    );
    r.after = Some((
        "the helper gets the value byte for byte",
        helper_got(|| b"a\nb\n".to_vec()),
    ));
    rows.push(r);
    let mut r = row(
        "environment",
        "`=` inside the value (`--env K=a=b==`)",
        |_: &Ctx| {},
        Launch::Host,
        spawn_k("K=a=b=="),
        ok(),
    );
    r.after = Some(("the helper gets `a=b==`", helper_got(|| b"a=b==".to_vec())));
    rows.push(r);
    let mut r = row(
        "environment",
        "100 KiB value from `--env-file`",
        |c: &Ctx| {
            let mut f = b"K=".to_vec();
            f.extend(std::iter::repeat_n(b'v', 100 * 1024));
            f.push(b'\n');
            std::fs::write(c.w.tmp.path().join("big.env"), f).unwrap();
        },
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--env-file",
            "{tmp}/big.env",
            "--",
            "sh",
            "-c",
            SHOW_K,
            "{run}",
        ]),
        ok(),
    );
    r.after = Some((
        "the helper gets all 102400 bytes",
        helper_got(|| vec![b'v'; 100 * 1024]),
    ));
    rows.push(r);
    rows.push(row(
        "environment",
        "200 KiB value from `--env-file` (over the kernel's 128 KiB per string)",
        |c: &Ctx| {
            let mut f = b"K=".to_vec();
            f.extend(std::iter::repeat_n(b'v', 200 * 1024));
            f.push(b'\n');
            std::fs::write(c.w.tmp.path().join("huge.env"), f).unwrap();
        },
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--env-file",
            "{tmp}/huge.env",
            "--",
            "sleep",
            "300",
        ]),
        Expect {
            code: 1,
            error: vec!["Argument list too long", "nothing was recorded"],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    ));
    rows.push(row(
        "environment",
        "`--env KEY` with KEY not set",
        |_: &Ctx| {},
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--env",
            "DMS_HOSTILE_UNSET_KEY",
            "--",
            "sleep",
            "300",
        ]),
        Expect {
            code: 2,
            error: vec!["DMS_HOSTILE_UNSET_KEY is not set in dms's environment"],
            run_dir_after: Some(false),
            ..Expect::default()
        },
    ));
    rows.push(row(
        "environment",
        "`--env-file` line without `=` (holding a secret)",
        |c: &Ctx| std::fs::write(c.w.tmp.path().join("bad.env"), "A=1\nhunter2-secret\n").unwrap(),
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--env-file",
            "{tmp}/bad.env",
            "--",
            "sleep",
            "300",
        ]),
        Expect {
            code: 2,
            error: vec!["{tmp}/bad.env:2: no '=' in it"],
            run_dir_after: Some(false),
            ..Expect::default()
        },
    ));
    rows.push(row(
        "environment",
        "`--env-file` line with a NUL byte",
        |c: &Ctx| std::fs::write(c.w.tmp.path().join("nul.env"), b"A=1\nB=x\0y\n").unwrap(),
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--env-file",
            "{tmp}/nul.env",
            "--",
            "sleep",
            "300",
        ]),
        Expect {
            code: 2,
            error: vec!["{tmp}/nul.env:2: it contains a NUL byte"],
            run_dir_after: Some(false),
            ..Expect::default()
        },
    ));
    rows
}

fn run_dir_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut r = row(
        "run dir",
        "missing (with missing parents)",
        |_: &Ctx| {},
        Launch::Host,
        args(&["status"]),
        Expect {
            code: 0,
            json: vec![("", "[]")],
            run_dir_after: Some(true),
            ..Expect::default()
        },
    );
    r.after = Some((
        "`run/`, `s3/`, `locks/`, `logs/` created with mode 0755",
        Box::new(|c: &Ctx, _: &Outcome| {
            for d in ["", "s3", "locks", "logs"] {
                let m = std::fs::metadata(c.run().join(d)).unwrap();
                assert!(m.is_dir());
                assert_eq!(m.permissions().mode() & 0o7777, 0o755, "{d}");
            }
        }),
    ));
    rows.push(r);
    rows.push(row(
        "run dir",
        "read-only (read-only bind mount: chmod does not stop root)",
        |c: &Ctx| std::fs::create_dir_all(c.run()).unwrap(),
        Launch::ReadOnlyRunDir,
        args(&["spawn", "x", "--", "sleep", "300"]),
        Expect {
            code: 1,
            error: vec!["Read-only file system", "{run}"],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    ));
    rows.push(row(
        "run dir",
        "read-only, with a PID file in it",
        |c: &Ctx| {
            for d in ["s3", "locks", "logs"] {
                std::fs::create_dir_all(c.run().join(d)).unwrap();
            }
            c.write_pid_file(b"12345\n");
        },
        Launch::ReadOnlyRunDir,
        args(&["kill", "x"]),
        Expect {
            code: 1,
            error: vec!["Read-only file system", "{run}/locks/x.lock"],
            pid_file_after: Some(true),
            ..Expect::default()
        },
    ));
    rows.push(row(
        "run dir",
        "not a directory (a file)",
        |c: &Ctx| std::fs::write(c.run(), "not a dir").unwrap(),
        Launch::Host,
        args(&["status"]),
        Expect {
            code: 1,
            error: vec!["{run}", "not a directory", "choose another --run-dir"],
            ..Expect::default()
        },
    ));
    rows.push(row(
        "run dir",
        "world-writable (mode 1777)",
        |c: &Ctx| {
            std::fs::create_dir(c.run()).unwrap();
            std::fs::set_permissions(c.run(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        },
        Launch::Host,
        args(&["status"]),
        Expect {
            code: 1,
            error: vec!["writable by every user", "`chmod o-w {run}`"],
            ..Expect::default()
        },
    ));
    rows.push(row(
        "run dir",
        "`s3/` world-writable (mode 0777)",
        |c: &Ctx| {
            std::fs::create_dir_all(c.s3()).unwrap();
            std::fs::set_permissions(c.s3(), std::fs::Permissions::from_mode(0o777)).unwrap();
        },
        Launch::Host,
        args(&["status"]),
        Expect {
            code: 1,
            error: vec!["`chmod o-w {run}/s3`"],
            ..Expect::default()
        },
    ));
    rows.push(row(
        "run dir",
        "`s3/` a symlink to a directory outside",
        |c: &Ctx| {
            std::fs::create_dir(c.run()).unwrap();
            std::os::unix::fs::symlink(&c.outside, c.s3()).unwrap();
        },
        Launch::Host,
        args(&["status"]),
        Expect {
            code: 1,
            error: vec![
                "{run}/s3: it is a symbolic link to {outside}",
                "`rm {run}/s3",
            ],
            ..Expect::default()
        },
    ));
    rows.push(row(
        "run dir",
        "`locks/` a symlink",
        |c: &Ctx| {
            std::fs::create_dir(c.run()).unwrap();
            std::os::unix::fs::symlink(&c.outside, c.run().join("locks")).unwrap();
        },
        Launch::Host,
        args(&["spawn", "x", "--", "sleep", "300"]),
        Expect {
            code: 1,
            error: vec!["{run}/locks: it is a symbolic link"],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    ));
    let mut r = row(
        "run dir",
        "owned by another unprivileged user (`nobody`)",
        |c: &Ctx| {
            std::fs::create_dir(c.run()).unwrap();
            nix::unistd::chown(c.run(), Some(65534.into()), None).unwrap();
        },
        Launch::Host,
        args(&["status"]),
        Expect {
            code: 1,
            error: vec!["owned by", "uid 65534", "`chown root {run}`"],
            ..Expect::default()
        },
    );
    r.root = true;
    rows.push(r);
    rows
}

fn flag_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for (input, argv, word) in [
        ("`--grace -1`", ["kill", "x", "--grace", "-1"], "'-1'"),
        (
            "`--grace abc`",
            ["kill", "x", "--grace", "abc"],
            "is not a number of seconds",
        ),
        (
            "`--grace 1e400`",
            ["kill", "x", "--grace", "1e400"],
            "finite number of seconds",
        ),
        (
            "`--grace 18446744073709551616`",
            ["kill", "x", "--grace", "18446744073709551616"],
            "finite number of seconds",
        ),
        (
            "unknown flag `--frobnicate`",
            ["kill", "x", "--frobnicate", "1"],
            "'--frobnicate'",
        ),
    ] {
        rows.push(row(
            "flags",
            input,
            |_: &Ctx| {},
            Launch::Host,
            args(&argv),
            Expect {
                code: 2,
                error: vec![word, "usage: dms kill"],
                run_dir_after: Some(false),
                ..Expect::default()
            },
        ));
    }
    let mut r = row(
        "flags",
        "`--grace 1e12` (31,700 years) on a running helper",
        |c: &Ctx| {
            let info = c.w.spawn("x", &["sleep", "300"]);
            assert_eq!(info["state"], "running");
        },
        Launch::Host,
        args(&["kill", "x", "--grace", "1e12"]),
        Expect {
            code: 0,
            json: vec![("stopped", "true"), ("signal", "\"SIGTERM\"")],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "the helper is gone at once",
        Box::new(|c: &Ctx, out: &Outcome| {
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            let pid = i32::try_from(v["pid"].as_i64().unwrap()).unwrap();
            assert!(wait_dead(pid, STOP));
            let _ = c;
        }),
    ));
    rows.push(r);
    for (input, pid, word) in [
        ("`adopt x 0`", "0", "PID 0 is reserved"),
        ("`adopt x 1`", "1", "PID 1 is reserved"),
        ("`adopt x -1`", "-1", "'-1'"),
        (
            "`adopt x 4294967295`",
            "4294967295",
            "above the kernel's pid_max",
        ),
        ("`adopt x abc`", "abc", "not a decimal PID"),
    ] {
        rows.push(row(
            "flags",
            input,
            |_: &Ctx| {},
            NS,
            args(&["adopt", "x", pid]),
            Expect {
                code: 2,
                error: vec![word],
                run_dir_after: Some(false),
                ..Expect::default()
            },
        ));
    }
    rows.push(row(
        "flags",
        "`adopt x <dms's own PID>`",
        |_: &Ctx| {},
        Launch::PidNs {
            pre: r#"set -- "$@" $$"#,
            exec: true,
        },
        args(&["adopt", "x"]),
        Expect {
            code: 1,
            error: vec!["it is dms itself"],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    ));
    rows
}

/// Mount directories and mount records (issue 17 item 1). Nothing here needs a FUSE
/// mount: each is refused, or acts on nothing, before one could matter (the FUSE tests
/// in `crates/dms-testfuse/tests/mount_records.rs` show the same with real mounts).
fn mount_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let mkrun = |c: &Ctx| std::fs::create_dir_all(c.s3()).unwrap();
    for (input, dir, word) in [
        ("`--mount /`", "/", "it is the root directory"),
        (
            "`--mount` inside the run dir",
            "{run}/m",
            "inside the run directory",
        ),
        (
            "`--mount` holding the run dir",
            "{tmp}",
            "holds the run directory",
        ),
    ] {
        rows.push(row(
            "mount dir",
            input,
            mkrun,
            Launch::Host,
            args(&["spawn", "x", "--mount", dir, "--", "sleep", "300"]),
            Expect {
                code: 2,
                error: vec![word, "nothing was started or stopped"],
                pid_file_after: Some(false),
                ..Expect::default()
            },
        ));
    }
    rows.push(row(
        "run dir",
        "`mounts/` world-writable (mode 0777)",
        |c: &Ctx| {
            let m = c.run().join("mounts");
            std::fs::create_dir_all(&m).unwrap();
            std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o777)).unwrap();
        },
        Launch::Host,
        args(&["cleanup", "--mounts"]),
        Expect {
            code: 1,
            error: vec!["`chmod o-w {run}/mounts`"],
            ..Expect::default()
        },
    ));
    rows.push(row(
        "run dir",
        "`mounts/` a symlink to a directory outside",
        |c: &Ctx| {
            std::fs::create_dir(c.run()).unwrap();
            std::os::unix::fs::symlink(&c.outside, c.run().join("mounts")).unwrap();
        },
        Launch::Host,
        args(&["cleanup", "--mounts"]),
        Expect {
            code: 1,
            error: vec!["{run}/mounts: it is a symbolic link to {outside}"],
            ..Expect::default()
        },
    ));
    let mut r = row(
        "mount record",
        "`mounts/x.mount` holding `/` (no recorded identity)",
        |c: &Ctx| {
            std::fs::create_dir_all(c.run().join("mounts")).unwrap();
            std::fs::write(c.run().join("mounts/x.mount"), b"/").unwrap();
        },
        Launch::Host,
        args(&["cleanup", "--mounts"]),
        Expect {
            code: 0,
            json: vec![("mounts/0/target", "\"x\""), ("mounts/0/path", "\"/\"")],
            ..Expect::default()
        },
    );
    r.after = Some((
        "action `kept: ...` (nothing detached or aborted); record kept",
        Box::new(|c: &Ctx, o: &Outcome| {
            let v: Value = serde_json::from_str(&o.stdout).unwrap();
            let action = v["mounts"][0]["action"].as_str().unwrap_or_default();
            assert!(action.starts_with("kept: "), "{v}");
            assert!(c.run().join("mounts/x.mount").exists());
        }),
    ));
    rows.push(r);
    let mut r = row(
        "mount record",
        "`mounts/x.mount` a symlink to a file outside (naming an unmounted path)",
        |c: &Ctx| {
            std::fs::create_dir_all(c.run().join("mounts")).unwrap();
            let named = c.outside.join("nothing-mounted-here");
            std::fs::write(c.outside.join("record"), named.as_os_str().as_bytes()).unwrap();
            std::os::unix::fs::symlink(c.outside.join("record"), c.run().join("mounts/x.mount"))
                .unwrap();
        },
        Launch::Host,
        args(&["cleanup", "--mounts"]),
        Expect {
            code: 0,
            json: vec![("mounts", "[]")],
            ..Expect::default()
        },
    );
    r.after = Some((
        "the link is not followed (nor removed)",
        Box::new(|c: &Ctx, _: &Outcome| {
            assert!(c.run().join("mounts/x.mount").is_symlink());
        }),
    ));
    rows.push(r);
    rows
}

/// Waits (at most 10 s) until `file` contains `text`.
fn wait_for_text(file: &Path, text: &str) {
    let ok = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(file).is_ok_and(|t| t.contains(text))
    });
    assert!(ok, "{} never said {text:?}", file.display());
}

/// FUSE helpers whose mount does not answer (issue 17 item 7) and listings over many hung
/// mounts (issue 11 item 5), with the test-only FUSE helper.
fn mount_helper_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let mkmnt = |c: &Ctx| {
        std::fs::create_dir_all(c.s3()).unwrap();
        std::fs::create_dir_all(mnt_root(c)).unwrap();
    };
    for (input, flag, word) in [
        (
            "a mount that comes up but never answers `statfs`",
            "--hang-statfs",
            "statfs received; hanging",
        ),
        (
            "a helper that exits right after mounting (as s3fs with a missing bucket)",
            "--exit-after-mount",
            "the bucket does not exist",
        ),
    ] {
        let mut r = row(
            "mount helper",
            input,
            mkmnt,
            Launch::Host,
            args(&[
                "spawn", "x", "--mount", "{mnt}/x", "--", "{fuse}", flag, "{mnt}/x",
            ]),
            Expect {
                code: 1,
                error: vec!["does not answer", "nothing was kept", word],
                pid_file_after: Some(false),
                ..Expect::default()
            },
        );
        r.fuse = true;
        r.after = Some((
            "no mount left at `{mnt}/x`; no `mounts/x.mount`",
            Box::new(|c: &Ctx, _: &Outcome| {
                let at = format!(" {}/x ", mnt_root(c).display());
                let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
                assert!(!table.contains(&at), "a mount is left: {table}");
                assert!(!c.run().join("mounts/x.mount").exists());
            }),
        ));
        rows.push(r);
    }
    let six_hung = |c: &Ctx| {
        std::fs::create_dir_all(mnt_root(c)).unwrap();
        for i in 0..6 {
            let t = format!("h{i}");
            let dir = mnt_root(c).join(&t);
            let mut cmd = common::dms();
            cmd.arg("--run-dir")
                .arg(c.run())
                .args([
                    "--backend",
                    c.w.backend.name(),
                    "--json",
                    "spawn",
                    &t,
                    "--mount",
                ])
                .arg(&dir)
                .arg("--")
                .arg(fuse_bin())
                .arg("--hang-statfs-on-usr1")
                .arg(&dir);
            let r = run(&mut cmd);
            assert_eq!(r.code, 0, "{r:?}");
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            let pid = i32::try_from(v["pid"].as_i64().unwrap()).unwrap();
            c.w.track(pid);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGUSR1,
            )
            .unwrap();
            wait_for_text(
                &c.run().join(format!("logs/{t}.log")),
                "statfs hangs from now on",
            );
        }
    };
    for (cmd, json) in [("status", "5/mount_state"), ("stats", "stale_mounts")] {
        let want: &'static str = if cmd == "status" { "\"stale\"" } else { "6" };
        let mut r = row(
            "mount helper",
            "six mounts that hang (`--hang-statfs-on-usr1`, then SIGUSR1)",
            six_hung,
            Launch::Host,
            args(&[cmd]),
            Expect {
                code: 0,
                json: vec![(json, want)],
                ..Expect::default()
            },
        );
        r.fuse = true;
        r.after = Some(if cmd == "status" {
            (
                "all six `stale`; answered within 4 s (one probe limit is 2 s)",
                Box::new(|_: &Ctx, o: &Outcome| {
                    let v: Value = serde_json::from_str(&o.stdout).unwrap();
                    let states: Vec<&Value> = v
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| &i["mount_state"])
                        .collect();
                    assert_eq!(states, vec!["stale"; 6], "{v}");
                    assert!(o.elapsed < Duration::from_secs(4), "{:?}", o.elapsed);
                }),
            )
        } else {
            (
                "answered within 4 s",
                Box::new(|_: &Ctx, o: &Outcome| {
                    assert!(o.elapsed < Duration::from_secs(4), "{:?}", o.elapsed);
                }),
            )
        });
        rows.push(r);
    }
    rows
}

fn all_rows() -> Vec<Row> {
    let mut rows = pid_file_rows();
    rows.extend(file_type_rows());
    rows.extend(target_rows());
    rows.extend(env_rows());
    rows.extend(run_dir_rows());
    rows.extend(flag_rows());
    rows.extend(mount_rows());
    rows.extend(mount_helper_rows());
    rows.extend(process_rows());
    rows.extend(inputs::rows());
    rows
}

/// A member of the helper's group that ignores SIGTERM while its leader (the shell) dies
/// of it; the member's PID goes to `{run}/member.pid`.
const MEMBER_IGNORING_TERM: &str =
    r#"(trap "" TERM; exec sleep 300) & echo $! > "$0/member.pid"; wait"#;

/// The PID in `{run}/member.pid` once it is there and runs `sleep`; tracked.
fn member_pid(c: &Ctx) -> i32 {
    let file = c.run().join("member.pid");
    assert!(
        wait_for(STOP, || std::fs::read_to_string(&file)
            .is_ok_and(|s| s.ends_with('\n'))),
        "no member PID"
    );
    let pid: i32 = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    c.w.track(pid);
    assert!(wait_for(STOP, || std::fs::read_to_string(format!(
        "/proc/{pid}/comm"
    ))
    .is_ok_and(|s| s.trim() == "sleep")));
    pid
}

/// Live processes whose command line is exactly `sleep secs`.
fn sleeps(secs: &str) -> Vec<i32> {
    common::processes_with_cmdline(&["sleep", secs])
}

/// Issue 17's process rows: process groups, daemonizing helpers, `cleanup --all` and a
/// stopped helper.
fn process_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut r = row(
        "processes",
        "a group member that ignores SIGTERM while the leader dies of it",
        |c: &Ctx| {
            std::fs::create_dir_all(c.run()).unwrap();
            let run = c.run().display().to_string();
            c.w.spawn("x", &["sh", "-c", MEMBER_IGNORING_TERM, &run]);
            member_pid(c);
        },
        Launch::Host,
        args(&["kill", "x", "--grace", "1"]),
        Expect {
            code: 0,
            json: vec![("stopped", "true"), ("signal", "\"SIGKILL\"")],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "the member is gone",
        Box::new(|c: &Ctx, _: &Outcome| {
            let pid = std::fs::read_to_string(c.run().join("member.pid")).unwrap();
            assert!(
                !alive(pid.trim().parse().unwrap()),
                "the member survived kill"
            );
        }),
    ));
    rows.push(r);
    let mut r = row(
        "processes",
        "the same group, and the mount never comes (`--ready-timeout 1`)",
        |c: &Ctx| std::fs::create_dir_all(c.w.tmp.path().join("m")).unwrap(),
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--mount",
            "{tmp}/m",
            "--ready-timeout",
            "1",
            "--",
            "sh",
            "-c",
            MEMBER_IGNORING_TERM,
            "{run}",
        ]),
        Expect {
            code: 1,
            error: vec!["--ready-timeout", "nothing was kept"],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "the member is gone",
        Box::new(|c: &Ctx, _: &Outcome| {
            let pid = member_pid_if_any(c);
            assert!(
                pid.is_some_and(|p| !alive(p)),
                "the member survived: {pid:?}"
            );
        }),
    ));
    rows.push(r);
    let mut r = row(
        "processes",
        "a helper that forks into the background (`sh -c 'sleep … & exit 0'`)",
        |_: &Ctx| {},
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--",
            "sh",
            "-c",
            "sleep 299.{test_pid} & exit 0",
        ]),
        Expect {
            code: 0,
            json: vec![("state", "\"running\"")],
            pid_file_after: Some(false), // stopped by the check
            ..Expect::default()
        },
    );
    r.after = Some((
        "the recorded PID is the `sleep` the shell left, and `kill x` stops it",
        Box::new(|c: &Ctx, out: &Outcome| {
            let info: Value = serde_json::from_str(&out.stdout).unwrap();
            let pid = i32::try_from(info["pid"].as_i64().unwrap()).unwrap();
            c.w.track(pid);
            assert_eq!(sleeps(&c.fill("299.{test_pid}")), vec![pid]);
            c.w.run(["kill", "x"]).expect_code(0);
            assert!(wait_dead(pid, STOP));
        }),
    ));
    rows.push(r);
    let mut r = row(
        "processes",
        "a helper that leaves two processes in the background",
        |_: &Ctx| {},
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--",
            "sh",
            "-c",
            "sleep 298.{test_pid} & sleep 298.{test_pid} & exit 0",
        ]),
        Expect {
            code: 1,
            error: vec!["went into the background", "--foreground"],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "both are stopped",
        Box::new(|c: &Ctx, _: &Outcome| {
            let left = sleeps(&c.fill("298.{test_pid}"));
            for pid in &left {
                c.w.track(*pid);
            }
            assert!(left.is_empty(), "left running: {left:?}");
        }),
    ));
    rows.push(r);
    let since = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let set = since.clone();
    let mut r = row(
        "processes",
        "three helpers that ignore SIGTERM (`x`, `y`, `z`)",
        move |c: &Ctx| {
            for t in ["x", "y", "z"] {
                let ready = c.w.tmp.path().join(format!("{t}.trap"));
                let script = format!(
                    "trap '' TERM; touch {}; while :; do sleep 0.1; done",
                    ready.display()
                );
                c.w.spawn(t, &["sh", "-c", &script]);
                assert!(wait_for(STOP, || ready.exists()));
            }
            *set.lock().unwrap() = Some(std::time::Instant::now());
        },
        Launch::Host,
        args(&["cleanup", "--all", "--grace", "1"]),
        Expect {
            code: 0,
            json: vec![("stopped", "[\"x\",\"y\",\"z\"]")],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "all three stopped together, in under 2.9 s (not one grace after another)",
        Box::new(move |c: &Ctx, _: &Outcome| {
            let took = since.lock().unwrap().unwrap().elapsed();
            assert!(
                took < Duration::from_millis(2900),
                "cleanup --all took {took:?}"
            );
            for t in ["y", "z"] {
                assert!(!c.run().join("s3").join(format!("{t}.pid")).exists());
            }
        }),
    ));
    rows.push(r);
    let mut r = row(
        "processes",
        "a stopped (SIGSTOP) helper",
        |c: &Ctx| {
            let pid = common::pid_of(&c.w.spawn("x", &["sleep", "300"]));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGSTOP,
            )
            .unwrap();
            assert!(wait_for(STOP, || std::fs::read_to_string(format!(
                "/proc/{pid}/stat"
            ))
            .is_ok_and(|s| s
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T')))));
        },
        Launch::Host,
        args(&["kill", "x", "--grace", "30"]),
        Expect {
            code: 0,
            json: vec![("stopped", "true"), ("signal", "\"SIGTERM\"")],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "SIGCONT after SIGTERM: it ends on SIGTERM, within the grace",
        Box::new(|_: &Ctx, out: &Outcome| {
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            let pid = i32::try_from(v["pid"].as_i64().unwrap()).unwrap();
            assert!(wait_dead(pid, STOP));
        }),
    ));
    rows.push(r);
    rows
}

/// The PID in `{run}/member.pid`, if the helper wrote one.
fn member_pid_if_any(c: &Ctx) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(c.run().join("member.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    c.w.track(pid);
    Some(pid)
}

/// The expected result as one table cell.
fn describe(row: &Row) -> String {
    let e = &row.expect;
    let mut parts = Vec::new();
    if row.args.is_none() {
        parts.push("not runnable: `Command` refuses the argument".to_owned());
    } else if e.caller_survives == Some(false) {
        parts.push(format!("dms's caller dies of SIGTERM (exit {})", e.code));
    } else {
        parts.push(format!("exit {}", e.code));
    }
    for (ptr, v) in &e.json {
        let k = if ptr.is_empty() { "output" } else { ptr };
        parts.push(format!("`{k}`=`{v}`").replace("\"", ""));
    }
    if let Some(r) = e.reason {
        parts.push(format!("reason \"{r}\""));
    }
    for w in &e.error {
        parts.push(format!("error says \"{w}\""));
    }
    match e.pid_file_after {
        Some(true) => parts.push("PID file kept".into()),
        Some(false) => parts.push("no PID file left".into()),
        None => {}
    }
    if e.run_dir_after == Some(false) {
        parts.push("run dir not created".into());
    }
    match e.caller_survives {
        Some(false) => parts.push("**known hazard: dms signalled its caller**".into()),
        Some(true) => parts.push("caller survives".into()),
        None => {}
    }
    if let Some((what, _)) = &row.after {
        parts.push((*what).to_owned());
    }
    parts.join("; ").replace('|', "\\|")
}

fn command_cell(row: &Row) -> String {
    let place = match row.launch {
        Launch::Host => "",
        Launch::PidNs { .. } => " (PID ns)",
        Launch::ReadOnlyRunDir => " (ro mount)",
    };
    let cmd = match &row.args {
        Some(a) => {
            let shown: Vec<String> = a
                .iter()
                .map(|s| {
                    if s.len() > 24 {
                        "…".to_owned()
                    } else {
                        s.escape_debug().to_string()
                    }
                })
                .collect();
            format!("`{}`", shown.join(" ").trim())
        }
        None => "`spawn a\\0b …`".to_owned(),
    };
    format!("{cmd}{place}").replace('|', "\\|")
}

fn table_line(row: &Row) -> String {
    format!(
        "| {} | {} | {} | {} |",
        row.group,
        row.input,
        command_cell(row),
        describe(row)
    )
}

/// Whether `unshare --pid --fork --mount-proc` works here; the reason when it does not.
fn pid_ns_available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE
        .get_or_init(|| {
            match std::process::Command::new("unshare")
                .args(["--pid", "--fork", "--mount-proc", "true"])
                .output()
            {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "unshare --pid --fork --mount-proc failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("cannot run unshare: {e}")),
            }
        })
        .clone()
}

fn mount_ns_available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE
        .get_or_init(|| {
            match std::process::Command::new("unshare")
                .args(["--mount", "true"])
                .output()
            {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "unshare --mount failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("cannot run unshare: {e}")),
            }
        })
        .clone()
}

/// The outer shell in the PID namespace (PID 1 there): starts a canary `sleep`, runs dms
/// (through an inner shell that runs `$DMS_PRE` first), then reports whether the canary
/// is still alive (not a zombie) and exits with dms's code.
const NS_SCRIPT: &str = r#"
sleep 600 </dev/null >/dev/null 2>&1 &
canary=$!
sh -c "$DMS_INNER" "$@"
rc=$?
# A dms whose caller was killed lives on as an orphan of this shell: wait (up to 20 s)
# until every process but this shell and the canary is gone, so its output is complete.
n=0
while [ $n -lt 1000 ]; do
  others=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    if [ "$p" = 1 ] || [ "$p" = "$canary" ]; then continue; fi
    line=
    read -r line < "$d/stat" 2>/dev/null
    st=${line##*) }
    st=${st%% *}
    if [ -n "$line" ] && [ "$st" != Z ] && [ "$st" != X ]; then others=1; fi
  done
  [ $others = 0 ] && break
  n=$((n + 1))
  sleep 0.02
done
state=$(sed 's/.*) //' "/proc/$canary/stat" 2>/dev/null | cut -d' ' -f1)
if [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]; then
  echo "dms-canary: alive" >&2
else
  echo "dms-canary: dead" >&2
fi
kill -9 "$canary" 2>/dev/null
wait "$canary" 2>/dev/null
exit $rc
"#;

/// The read-only launch: bind-mounts the run dir read-only in a private mount namespace.
const RO_SCRIPT: &str = r#"
mount --bind "$DMS_RUN" "$DMS_RUN" && mount -o remount,bind,ro "$DMS_RUN" || exit 99
exec "$@"
"#;

fn dms_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("dms")
}

/// Runs `row` once against `backend`; `None` when the row had to be skipped.
fn run_row(row: &Row, backend: Backend, host_canary: i32) -> Option<()> {
    let w = World::new(backend);
    let outside = w.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(
        outside.join("victim"),
        "victim file: never written by dms\n",
    )
    .unwrap();
    let c = Ctx { w: &w, outside };
    let label = format!("[{}] {} | {}", backend.name(), row.input, command_cell(row));

    let Some(argv) = &row.args else {
        // NUL cannot be passed to a program at all.
        let err = std::process::Command::new(dms_bin())
            .arg("--run-dir")
            .arg(c.run())
            .arg("spawn")
            .arg(OsString::from_vec(b"a\0b".to_vec()))
            .args(["--", "sleep", "300"])
            .output()
            .expect_err("an argument with NUL cannot be passed");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{label}");
        assert!(!c.run().exists(), "{label}");
        return Some(());
    };
    match row.launch {
        Launch::PidNs { .. } => {
            if let Err(why) = pid_ns_available() {
                eprintln!("SKIPPED {label}: {why}; this row is never run outside a PID namespace");
                return None;
            }
        }
        Launch::ReadOnlyRunDir => {
            if let Err(why) = mount_ns_available() {
                eprintln!("SKIPPED {label}: {why}");
                return None;
            }
        }
        Launch::Host => {}
    }
    if row.root && !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {label}: needs root to give a directory to another user");
        return None;
    }
    if row.fuse {
        if let Some(why) = fuse_missing() {
            eprintln!("SKIPPED {label}: {why}");
            return None;
        }
    }
    // Dropped before the World (which SIGKILLs the helpers): detaches and aborts what is
    // mounted under {mnt}, so that no helper stays stuck in its mount.
    let _mounts = row.fuse.then(|| MountGuard(mnt_root(&c)));

    (row.setup)(&c);
    let before = snapshot_outside(&c);
    let argv: Vec<String> = argv.iter().map(|a| c.fill(a)).collect();
    let out = launch(&c, row.launch, &argv, true);
    let e = &row.expect;
    if argv[0] == "spawn" && out.code == 0 {
        // Stopped at the end of the row even if a check fails first.
        if let Some(pid) = serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["pid"].as_i64())
        {
            w.track(i32::try_from(pid).unwrap());
        }
    }

    // Exit code, error line, JSON.
    assert_eq!(out.code, e.code, "{label}: exit code\n{}", show(&out));
    if e.caller_survives == Some(false) {
        // dms outlived its caller; its stderr may hold a log line about the signal.
    } else if e.code == 1 || e.code == 2 {
        assert!(
            out.stderr.starts_with("dms: error: ") && out.stderr.lines().count() == 1,
            "{label}: not one error line\n{}",
            show(&out)
        );
        for word in &e.error {
            let word = c.fill(word);
            assert!(
                out.stderr.contains(&word),
                "{label}: error lacks {word:?}\n{}",
                show(&out)
            );
        }
        assert!(out.stdout.is_empty(), "{label}\n{}", show(&out));
    } else {
        assert!(out.stderr.is_empty(), "{label}: stderr\n{}", show(&out));
    }
    if !e.json.is_empty() {
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|err| panic!("{label}: not JSON ({err})\n{}", show(&out)));
        for (ptr, want) in &e.json {
            let want: Value = serde_json::from_str(&c.fill(want)).unwrap();
            let pointer = if ptr.is_empty() {
                String::new()
            } else {
                format!("/{ptr}")
            };
            assert_eq!(
                v.pointer(&pointer),
                Some(&want),
                "{label}: /{ptr}\n{}",
                show(&out)
            );
        }
    }
    if let Some(reason) = e.reason {
        // The same command, human output: the table shows why.
        let human = launch(&c, row.launch, &argv, false);
        assert!(
            human.stdout.contains(reason),
            "{label}: reason {reason:?} not shown\n{}",
            show(&human)
        );
    }

    // Nothing signalled: the canaries live, and so does the caller where it should.
    assert!(
        alive(host_canary),
        "{label}: the test's canary was signalled"
    );
    if let Some(ns_alive) = out.ns_canary_alive {
        assert!(
            ns_alive,
            "{label}: the canary in the PID namespace was signalled"
        );
    }
    if let Some(want) = e.caller_survives {
        assert_eq!(
            out.caller_survived,
            Some(want),
            "{label}: caller\n{}",
            show(&out)
        );
    }

    if let Some((_, check)) = &row.after {
        check(&c, &out);
    }

    // The PID file and the run dir.
    if let Some(want) = e.pid_file_after {
        assert_eq!(
            std::fs::symlink_metadata(c.pid_file()).is_ok(),
            want,
            "{label}: PID file present?"
        );
    }
    if let Some(want) = e.run_dir_after {
        assert_eq!(c.run().exists(), want, "{label}: run dir exists?");
    }

    // Nothing outside the run dir changed.
    let after = snapshot_outside(&c);
    assert_eq!(
        before, after,
        "{label}: something outside the run dir changed"
    );
    assert!(
        std::fs::metadata("/dev/zero")
            .unwrap()
            .file_type()
            .is_char_device(),
        "{label}"
    );
    Some(())
}

fn show(o: &Outcome) -> String {
    format!(
        "code {}\nstdout: {}\nstderr: {}",
        o.code, o.stdout, o.stderr
    )
}

/// Runs dms with the global flags and `argv` as `launch` says.
fn launch(c: &Ctx, launch: Launch, argv: &[String], json: bool) -> Outcome {
    let mut dms_args: Vec<OsString> = vec![
        "--run-dir".into(),
        c.run().into(),
        "--backend".into(),
        c.w.backend.name().into(),
    ];
    if json {
        dms_args.push("--json".into());
    }
    dms_args.extend(argv.iter().map(OsString::from));
    let mut cmd = match launch {
        Launch::Host => {
            let mut cmd = common::dms();
            cmd.args(&dms_args);
            cmd
        }
        Launch::PidNs { pre, exec } => {
            let inner = if exec {
                format!("{pre}\nexec \"$0\" \"$@\"")
            } else {
                format!("{pre}\n\"$0\" \"$@\"\nrc=$?\necho 'dms-caller: survived' >&2\nexit $rc")
            };
            // A process group of its own: process groups span PID namespaces, so a
            // kill(0) inside would otherwise reach the test process itself.
            let mut std_cmd = std::process::Command::new("unshare");
            std::os::unix::process::CommandExt::process_group(&mut std_cmd, 0);
            let mut cmd = assert_cmd::Command::from_std(std_cmd);
            cmd.args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--",
                "sh",
                "-c",
                NS_SCRIPT,
                "sh",
            ])
            .arg(dms_bin())
            .args(&dms_args)
            .env("DMS_INNER", inner)
            .env("DMS_RUN", c.run())
            .env_remove("DMS_RUN_DIR")
            .env_remove("DMS_BACKEND")
            .env_remove("RUST_LOG")
            .timeout(Duration::from_secs(60));
            cmd
        }
        Launch::ReadOnlyRunDir => {
            let mut cmd = assert_cmd::Command::new("unshare");
            cmd.args(["--mount", "--", "sh", "-c", RO_SCRIPT, "sh"])
                .arg(dms_bin())
                .args(&dms_args)
                .env("DMS_RUN", c.run())
                .env_remove("DMS_RUN_DIR")
                .env_remove("DMS_BACKEND")
                .env_remove("RUST_LOG")
                .timeout(Duration::from_secs(60));
            cmd
        }
    };
    let started = std::time::Instant::now();
    let r = run(&mut cmd);
    let elapsed = started.elapsed();
    assert_ne!(r.code, 99, "the read-only bind mount failed: {r:?}");
    let mut ns_canary_alive = None;
    let mut caller_survived = None;
    if let Launch::PidNs { exec, .. } = launch {
        if !exec {
            caller_survived = Some(false);
        }
    }
    let mut stderr = String::new();
    for line in r.stderr.lines() {
        match line {
            "dms-canary: alive" => ns_canary_alive = Some(true),
            "dms-canary: dead" => ns_canary_alive = Some(false),
            "dms-caller: survived" => caller_survived = Some(true),
            _ => {
                stderr.push_str(line);
                stderr.push('\n');
            }
        }
    }
    if matches!(launch, Launch::PidNs { .. }) {
        assert!(
            ns_canary_alive.is_some(),
            "the namespace script did not finish: {r:?}"
        );
    }
    Outcome {
        code: r.code,
        stdout: r.stdout,
        stderr,
        caller_survived,
        ns_canary_alive,
        elapsed,
    }
}

/// Where FUSE rows mount: `<tmp>.mnt`, beside the temp dir, so that the snapshot of
/// the temp dir never walks into a (hung) mount.
fn mnt_root(c: &Ctx) -> PathBuf {
    let mut p = c.w.tmp.path().as_os_str().to_owned();
    p.push(".mnt");
    PathBuf::from(p)
}

/// The test-only FUSE helper, built next to `dms` by `cargo test --workspace`.
fn fuse_bin() -> PathBuf {
    dms_bin().with_file_name("dms-testfuse")
}

/// Why the FUSE rows cannot run here, if they cannot.
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

/// Detaches every mount under its path and aborts their FUSE connections, then removes
/// the path (on drop, even when a check failed).
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.0.display().to_string();
        for line in table.lines().rev() {
            let f: Vec<&str> = line.split(' ').collect();
            let (Some(dev), Some(point)) = (f.get(2), f.get(4)) else {
                continue;
            };
            if !point.starts_with(&root) {
                continue;
            }
            let _ = nix::mount::umount2(*point, nix::mount::MntFlags::MNT_DETACH);
            if let Some(minor) = dev.strip_prefix("0:") {
                let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mode, owner, size, mtime (s, ns) and content (or link target) of each path.
type Snapshot = BTreeMap<PathBuf, (u32, u32, u64, i64, i64, Vec<u8>)>;

/// Every path under the temp dir except the run dir, with its type, mode, owner, size,
/// mtime and (for regular files) content.
fn snapshot_outside(c: &Ctx) -> Snapshot {
    fn walk(dir: &Path, skip: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            out.insert(
                p.clone(),
                (
                    m.mode(),
                    m.uid(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    content,
                ),
            );
            if m.is_dir() {
                walk(&p, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(c.w.tmp.path(), c.run(), &mut out);
    out
}

/// The section of `docs/hostile-inputs.md` lists every row exactly as the test runs it.
fn check_docs(lines: &[String]) {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/hostile-inputs.md");
    let text = std::fs::read_to_string(&docs)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", docs.display()));
    let start = text
        .find("## Hostile inputs")
        .unwrap_or_else(|| panic!("{} has no \"## Hostile inputs\" section", docs.display()));
    let section = &text[start..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    for line in lines {
        assert!(
            section.contains(line.as_str()),
            "docs/hostile-inputs.md's table lacks the row\n{line}\n(regenerate it with \
             DMS_PRINT_HOSTILE_TABLE=1 cargo test -p dms-cli --test hostile_inputs -- --nocapture)"
        );
    }
}

#[test]
fn hostile_inputs_table() {
    let rows = all_rows();
    let lines: Vec<String> = rows.iter().map(table_line).collect();
    if std::env::var_os("DMS_PRINT_HOSTILE_TABLE").is_some() {
        println!("| input | value | command | expected (both backends) |");
        println!("|---|---|---|---|");
        for l in &lines {
            println!("{l}");
        }
    }
    check_docs(&lines);

    // The canary in the test's own process group: a kill(0) or kill(-1) would hit it.
    let canary = Canary::start();
    let canary_pid = canary.pid;

    let mut ran = 0;
    let mut skipped = 0;
    let started = std::time::Instant::now();
    // DMS_HOSTILE_ROWS=TEXT runs only the rows whose input contains TEXT.
    let only = std::env::var("DMS_HOSTILE_ROWS").ok();
    for backend in [Backend::Pidfile, Backend::Sqlite] {
        for row in &rows {
            if only.as_deref().is_some_and(|o| !row.input.contains(o)) {
                continue;
            }
            match run_row(row, backend, canary_pid) {
                Some(()) => ran += 1,
                None => skipped += 1,
            }
        }
    }
    eprintln!(
        "hostile inputs: {ran} row runs passed, {skipped} skipped, in {:.1?}",
        started.elapsed()
    );
    assert!(alive(canary_pid));
    drop(canary);
    reap_zombies();
    assert!(ran > 0);
}

/// A `sleep` in the test's own process group, stopped and reaped on drop (also when a
/// check fails). Its output goes nowhere, so it cannot hold the test harness's pipes.
struct Canary {
    pid: i32,
    child: std::process::Child,
}

impl Canary {
    fn start() -> Canary {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sleep starts");
        Canary {
            pid: i32::try_from(child.id()).unwrap(),
            child,
        }
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        // Only while it is still our (live or zombie) child: if it died and the zombie
        // sweep reaped it, its PID may have been reused.
        if is_our_child(self.pid) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
