//! Rows of issue 17 (items 4, 5 and part of 7): `spawn --replace` that checks the new
//! helper before it stops the old one, files dms opens (FIFOs, symlinks), control
//! characters in text output, `status` on a corrupt database, one PID adopted under two
//! targets, a lock file on a full file system, and `status` into `/dev/full`.

use super::*;
use std::os::unix::fs::OpenOptionsExt;

/// Where the setup of a replace row writes the old helper's PID.
fn old_pid_file(c: &Ctx) -> PathBuf {
    c.w.tmp.path().join("old-pid")
}

/// Starts `x`'s helper (a `sleep`) and notes its PID for the row's check.
fn spawn_old(c: &Ctx) {
    let info = c.w.spawn("x", &["sleep", "300"]);
    assert_eq!(info["state"], "running");
    std::fs::write(old_pid_file(c), info["pid"].to_string()).unwrap();
}

fn old_pid(c: &Ctx) -> i32 {
    std::fs::read_to_string(old_pid_file(c))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// After a refused replace: the old helper still runs, `status x` names it as running;
/// then it is stopped.
fn old_survives() -> After {
    (
        "the old helper still runs and `status x` reads `running` with its PID",
        Box::new(|c: &Ctx, _: &Outcome| {
            let pid = old_pid(c);
            assert!(alive(pid), "the old helper was stopped");
            let r = c.w.json(["status", "x"]);
            assert_eq!(r.json()["state"], "running", "{r:#?}");
            assert_eq!(r.json()["pid"], pid, "{r:#?}");
            c.w.run(["kill", "x"]).expect_code(0);
            assert!(wait_dead(pid, STOP));
        }),
    )
}

fn replace_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    // (The PID file is checked by the `after` check, which then stops the helper.)
    let refused = |code: i32, error: Vec<&'static str>| Expect {
        code,
        error,
        ..Expect::default()
    };
    for (input, argv, error) in [
        (
            "`--replace` with a program that does not exist (a typo)",
            vec!["spawn", "x", "--replace", "--", "/nonexistent/dms-helper"],
            vec![
                "was left running and nothing changed",
                "/nonexistent/dms-helper",
                "No such file or directory",
            ],
        ),
        (
            "`--replace` with a program that is not executable",
            vec!["spawn", "x", "--replace", "--", "{outside}/victim"],
            vec![
                "was left running and nothing changed",
                "{outside}/victim is not executable",
            ],
        ),
        (
            "`--replace` with a directory as `--log`",
            vec![
                "spawn",
                "x",
                "--replace",
                "--log",
                "{outside}",
                "--",
                "sleep",
                "300",
            ],
            vec![
                "was left running and nothing changed",
                "{outside}",
                "it is a directory",
            ],
        ),
        (
            "`--replace` with a file as `--mount`",
            vec![
                "spawn",
                "x",
                "--replace",
                "--mount",
                "{outside}/victim",
                "--",
                "sleep",
                "300",
            ],
            vec![
                "was left running and nothing changed",
                "{outside}/victim",
                "not a directory",
            ],
        ),
    ] {
        let mut r = row(
            "spawn --replace",
            input,
            spawn_old,
            Launch::Host,
            args(&argv),
            refused(1, error),
        );
        r.after = Some(old_survives());
        rows.push(r);
    }
    let mut r = row(
        "spawn --replace",
        "`--replace` with an `--env-file` that does not exist",
        spawn_old,
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--replace",
            "--env-file",
            "{tmp}/missing.env",
            "--",
            "sleep",
            "300",
        ]),
        refused(2, vec!["cannot read env file {tmp}/missing.env"]),
    );
    r.after = Some(old_survives());
    rows.push(r);
    // Passes every check that needs no fork; fails only at execve, after the stop.
    let mut r = row(
        "spawn --replace",
        "`--replace` with a script whose interpreter is missing (fails only at exec)",
        |c: &Ctx| {
            spawn_old(c);
            let script = c.w.tmp.path().join("bad-interp");
            std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        },
        Launch::Host,
        args(&["spawn", "x", "--replace", "--", "{tmp}/bad-interp"]),
        Expect {
            code: 1,
            error: vec![
                "the old helper (PID",
                "was stopped; the new one failed",
                "{tmp}/bad-interp",
                "the target has no helper now",
            ],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "the old helper is gone",
        Box::new(|c: &Ctx, out: &Outcome| {
            let pid = old_pid(c);
            assert!(
                out.stderr.contains(&format!("(PID {pid}) was stopped")),
                "{}",
                out.stderr
            );
            assert!(wait_dead(pid, STOP));
        }),
    ));
    rows.push(r);
    rows
}

/// `mkfifo path`.
fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// After a refused spawn: the target's lock is free (`kill x` answers at once).
fn lock_free() -> After {
    (
        "`kill x` then answers at once (exit 3): nothing hangs on the lock",
        Box::new(|c: &Ctx, _: &Outcome| {
            c.w.run(["kill", "x"]).expect_code(3);
        }),
    )
}

fn file_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let refused = |error: Vec<&'static str>| Expect {
        code: 1,
        error,
        pid_file_after: Some(false),
        ..Expect::default()
    };
    let mut r = row(
        "files dms opens",
        "`--log` a FIFO with no reader",
        |c: &Ctx| mkfifo(&c.w.tmp.path().join("log.fifo")),
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--log",
            "{tmp}/log.fifo",
            "--",
            "sleep",
            "300",
        ]),
        refused(vec![
            "{tmp}/log.fifo",
            "it is a FIFO",
            "nothing was started",
        ]),
    );
    r.after = Some(lock_free());
    rows.push(r);
    let mut r = row(
        "files dms opens",
        "a FIFO at `logs/x.log`, with a reader",
        |c: &Ctx| {
            let logs = c.run().join("logs");
            std::fs::create_dir_all(&logs).unwrap();
            let fifo = logs.join("x.log");
            mkfifo(&fifo);
            // A reader holds it open for the rest of the test (so a plain open would not
            // fail with ENXIO, and the type check is what refuses it).
            let reader = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap();
            std::mem::forget(reader);
        },
        Launch::Host,
        args(&["spawn", "x", "--", "sleep", "300"]),
        refused(vec!["{run}/logs/x.log", "it is a FIFO"]),
    );
    r.after = Some(lock_free());
    rows.push(r);
    let mut r = row(
        "files dms opens",
        "a symlink at `logs/x.log` to a file outside",
        |c: &Ctx| {
            let logs = c.run().join("logs");
            std::fs::create_dir_all(&logs).unwrap();
            std::os::unix::fs::symlink(c.outside.join("victim"), logs.join("x.log")).unwrap();
        },
        Launch::Host,
        args(&["spawn", "x", "--", "sleep", "300"]),
        refused(vec!["{run}/logs/x.log", "it is a symbolic link"]),
    );
    r.after = Some((
        "the file it points to is unchanged",
        Box::new(|c: &Ctx, _: &Outcome| {
            assert_eq!(
                std::fs::read_to_string(c.outside.join("victim")).unwrap(),
                "victim file: never written by dms\n"
            );
        }),
    ));
    rows.push(r);
    rows.push(row(
        "files dms opens",
        "`--env-file` a FIFO",
        |c: &Ctx| mkfifo(&c.w.tmp.path().join("env.fifo")),
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--env-file",
            "{tmp}/env.fifo",
            "--",
            "sleep",
            "300",
        ]),
        Expect {
            code: 2,
            error: vec!["{tmp}/env.fifo", "is a FIFO", "not a regular file"],
            run_dir_after: Some(false),
            ..Expect::default()
        },
    ));
    rows
}

/// The argument with a newline and an escape sequence, as the helper gets it.
const FAKE_ROW: &str = "a\ny  1 running\u{1b}[31m";

fn output_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let mut r = row(
        "output",
        "a helper's command line with a newline and an escape sequence",
        |_: &Ctx| {},
        Launch::Host,
        args(&[
            "spawn",
            "x",
            "--",
            "sh",
            "-c",
            "sleep 300; exit 0",
            FAKE_ROW,
        ]),
        Expect {
            code: 0,
            json: vec![("cmdline/3", "\"a\\ny  1 running\\u001b[31m\"")],
            ..Expect::default()
        },
    );
    r.after = Some((
        "text `status` shows it escaped, on one row: `a\\ny  1 running\\u{1b}[31m`",
        Box::new(|c: &Ctx, out: &Outcome| {
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            let pid = i32::try_from(v["pid"].as_i64().unwrap()).unwrap();
            for argv in [&["status"][..], &["status", "x"][..]] {
                let r = c.w.run(argv);
                assert_eq!(r.stdout.lines().count(), 2, "{argv:?}: a fake row\n{r:#?}");
                assert!(!r.stdout.contains('\u{1b}'), "{argv:?}: raw escape\n{r:#?}");
                assert!(
                    r.stdout.contains("a\\ny  1 running\\u{1b}[31m"),
                    "{argv:?}\n{r:#?}"
                );
            }
            c.w.run(["kill", "x"]).expect_code(0);
            assert!(wait_dead(pid, STOP));
        }),
    ));
    rows.push(r);
    rows.push(row(
        "output",
        "stdout is `/dev/full`",
        |_: &Ctx| {},
        Launch::PidNs {
            pre: "exec >/dev/full",
            exec: true,
        },
        args(&["status"]),
        Expect {
            code: 1,
            error: vec!["cannot write to stdout", "No space left on device"],
            ..Expect::default()
        },
    ));
    rows
}

fn store_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let garbage = || -> Vec<u8> { (0..8192u32).map(|i| (i * 7 + 3) as u8).collect() };
    let mut r = row(
        "SQLite database",
        "garbage in `dms.sqlite3`, a helper running",
        move |c: &Ctx| {
            spawn_old(c);
            std::fs::write(c.run().join("dms.sqlite3"), garbage()).unwrap();
        },
        Launch::Host,
        args(&["status", "x"]),
        Expect {
            code: 0,
            json: vec![("state", "\"running\"")],
            ..Expect::default()
        },
    );
    r.after = Some((
        "the database is left as it is (not moved aside, not rewritten)",
        Box::new(move |c: &Ctx, _: &Outcome| {
            assert_eq!(
                std::fs::read(c.run().join("dms.sqlite3")).unwrap(),
                garbage()
            );
            let names: Vec<String> = std::fs::read_dir(c.run())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                !names.iter().any(|n| n.contains("corrupt")),
                "moved aside: {names:?}"
            );
            c.w.run(["kill", "x"]).expect_code(0);
            assert!(wait_dead(old_pid(c), STOP));
        }),
    ));
    rows.push(r);
    let mut r = row(
        "adopt",
        "the PID of target `y`'s running helper",
        |c: &Ctx| {
            c.w.spawn("y", &["sleep", "300"]);
        },
        Launch::Host,
        args(&["adopt", "x", "{pid_of_y}"]),
        Expect {
            code: 1,
            error: vec!["it is already the helper of target y"],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    );
    r.after = Some((
        "`y` still reads `running`",
        Box::new(|c: &Ctx, _: &Outcome| {
            let r = c.w.json(["status", "y"]);
            assert_eq!(r.json()["state"], "running", "{r:#?}");
            let pid = i32::try_from(r.json()["pid"].as_i64().unwrap()).unwrap();
            c.w.run(["kill", "y"]).expect_code(0);
            assert!(wait_dead(pid, STOP));
        }),
    ));
    rows.push(r);
    rows.push(row(
        "run dir",
        "no inode left for `locks/x.lock` (a full tmpfs)",
        |c: &Ctx| std::fs::create_dir_all(c.run()).unwrap(),
        Launch::PidNs {
            pre: "mount -t tmpfs -o size=1m,nr_inodes=4,mode=0755 tmpfs \"$DMS_RUN\" && \
                  mkdir \"$DMS_RUN/s3\" \"$DMS_RUN/locks\" \"$DMS_RUN/logs\" || exit 99",
            exec: true,
        },
        args(&["spawn", "x", "--", "sleep", "300"]),
        Expect {
            code: 1,
            error: vec![
                "{run}/locks/x.lock",
                "No space left on device",
                "free some space (or inodes)",
            ],
            pid_file_after: Some(false),
            ..Expect::default()
        },
    ));
    rows
}

/// Every row of this file, in table order.
pub(super) fn rows() -> Vec<Row> {
    let mut rows = replace_rows();
    rows.extend(file_rows());
    rows.extend(output_rows());
    rows.extend(store_rows());
    rows
}
