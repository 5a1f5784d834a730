//! The command line itself: usage errors, invalid input, help, completions, man page,
//! backend choice and logging flags. No helper is started here.

mod common;

use common::{dms, run, Backend, World};

const RULE: &str = "1 to 200 bytes of [A-Za-z0-9._-], not starting with '.'";

fn invalid_target_ids_are_refused_and_create_nothing(backend: Backend) {
    let w = World::new(backend);
    let long = "a".repeat(201);
    let bad_ids = [
        "",
        ".hidden",
        "..",
        "../etc",
        "a/b",
        "a b",
        "é",
        "x\ny",
        long.as_str(),
    ];
    for id in bad_ids {
        let cases: [Vec<&str>; 5] = [
            vec!["spawn", id, "--", "sleep", "300"],
            vec!["kill", id],
            vec!["status", id],
            vec!["adopt", id, "12345"],
            vec!["--json", "status", id],
        ];
        for args in cases {
            let r = w.run(&args);
            r.expect_code(2).expect_one_error_line();
            assert!(
                r.stderr.contains(RULE),
                "message does not state the rule: {r:#?}"
            );
            assert!(r.stdout.is_empty(), "{r:#?}");
            assert!(!w.run_dir.exists(), "{args:?} created the run dir");
        }
    }
}

fn usage_errors_exit_2_with_one_line_and_create_nothing(backend: Backend) {
    let w = World::new(backend);
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["spawn", "t"],
        &["spawn", "t", "--"],
        &["spawn", "t", "sleep", "300"],
        &["spawn", "t", "--replace=yes", "--", "sleep", "300"],
        &["cleanup", "--mounts", "--frob"],
        &["kill"],
        &["kill", "t", "--grace", "abc"],
        &["kill", "t", "--grace", "-1"],
        &["status", "a", "b"],
        &["cleanup", "--grace", "soon"],
        &["adopt", "t"],
        &["adopt", "t", "0"],
        &["adopt", "t", "1"],
        &["adopt", "t", "-5"],
        &["adopt", "t", "4294967295"],
        &["adopt", "t", "abc"],
        &["--backend", "nosql", "stats"],
        &["-v", "-q", "stats"],
    ];
    for args in cases {
        let r = w.run(*args);
        r.expect_code(2).expect_one_error_line();
        assert!(r.stderr.contains("usage: dms"), "no usage hint: {r:#?}");
        assert!(!w.run_dir.exists(), "{args:?} created the run dir");
    }
}

fn env_errors_exit_2_never_show_values_and_create_nothing(backend: Backend) {
    let w = World::new(backend);
    let secret = "s3cr3t-VALUE-do-not-print";

    // --env KEY without KEY in dms's environment.
    let mut c = w.cmd();
    c.env_remove("DMS_E2E_UNSET_KEY").args([
        "spawn",
        "t",
        "--env",
        "DMS_E2E_UNSET_KEY",
        "--",
        "sleep",
        "300",
    ]);
    let r = run(&mut c);
    r.expect_code(2).expect_one_error_line();
    assert!(r.stderr.contains("DMS_E2E_UNSET_KEY"), "{r:#?}");

    // A bad line in an env file: named by file and line, the value never shown.
    let env_file = w.tmp.path().join("bad.env");
    std::fs::write(
        &env_file,
        format!("# creds\nGOOD=1\n\n{secret}\nK={secret}\n"),
    )
    .unwrap();
    let r = w.run([
        "spawn".as_ref(),
        "t".as_ref(),
        "--env-file".as_ref(),
        env_file.as_os_str(),
        "--".as_ref(),
        "sleep".as_ref(),
    ]);
    r.expect_code(2).expect_one_error_line();
    assert!(
        r.stderr.contains(&format!("{}:4:", env_file.display())),
        "{r:#?}"
    );
    assert!(
        !r.stderr.contains(secret) && !r.stdout.contains(secret),
        "{r:#?}"
    );

    // A missing env file.
    let missing = w.tmp.path().join("missing.env");
    let r = w.run([
        "spawn".as_ref(),
        "t".as_ref(),
        "--env-file".as_ref(),
        missing.as_os_str(),
        "--".as_ref(),
        "sleep".as_ref(),
    ]);
    r.expect_code(2).expect_one_error_line();
    assert!(r.stderr.contains("missing.env"), "{r:#?}");

    // An empty key.
    let r = w.run(["spawn", "t", "--env", "=x", "--", "sleep", "300"]);
    r.expect_code(2).expect_one_error_line();

    assert!(!w.run_dir.exists(), "a refused spawn created the run dir");
}

both_backends!(
    invalid_target_ids_are_refused_and_create_nothing,
    usage_errors_exit_2_with_one_line_and_create_nothing,
    env_errors_exit_2_never_show_values_and_create_nothing,
);

#[test]
fn every_command_has_help_with_an_example() {
    let w = World::new(Backend::Pidfile);
    let commands = [
        "spawn",
        "kill",
        "status",
        "stats",
        "cleanup",
        "adopt",
        "completions",
        "man",
    ];
    let r = w.run(["--help"]);
    r.expect_code(0);
    assert!(r.stdout.contains("Examples:"), "{r:#?}");
    for cmd in commands {
        assert!(r.stdout.contains(cmd), "main help does not list {cmd}");
        let r = w.run([cmd, "--help"]);
        r.expect_code(0);
        assert!(
            r.stdout.contains("Example"),
            "{cmd} --help has no example: {r:#?}"
        );
        assert!(r.stdout.contains(&format!("dms {cmd}")), "{r:#?}");
    }
    w.run(["--version"]).expect_code(0);
    assert!(!w.run_dir.exists());
}

#[test]
fn completions_and_man_pages_come_from_the_binary() {
    let w = World::new(Backend::Pidfile);
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = w.run(["completions", shell]);
        r.expect_code(0);
        assert!(
            r.stdout.contains("spawn") && r.stdout.contains("run-dir"),
            "{shell}"
        );
    }
    let r = w.run(["man"]);
    r.expect_code(0);
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH dms"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("spawn"));
    let r = w.run(["man", "spawn"]);
    r.expect_code(0);
    assert!(r.stdout.contains(".TH dms-spawn"), "{}", r.stdout);
    assert!(r.stdout.contains("\\-\\-env\\-file"), "{}", r.stdout);
    w.run(["man", "nosuch"])
        .expect_code(2)
        .expect_one_error_line();
    w.run(["completions", "tcsh"])
        .expect_code(2)
        .expect_one_error_line();
    assert!(!w.run_dir.exists());
}

#[test]
fn auto_backend_picks_sqlite_when_the_database_exists_and_env_vars_are_honoured() {
    let w = World::new(Backend::Pidfile);
    let backend_of = |args: &[&str]| {
        let mut c = dms();
        c.arg("--run-dir")
            .arg(&w.run_dir)
            .arg("--json")
            .args(args)
            .arg("stats");
        let r = run(&mut c);
        r.expect_code(0);
        r.json()["backend"].as_str().unwrap().to_owned()
    };
    assert_eq!(backend_of(&[]), "pidfile");
    assert_eq!(backend_of(&["--backend", "auto"]), "pidfile");
    assert!(!w.run_dir.join("dms.sqlite3").exists());
    assert_eq!(backend_of(&["--backend", "sqlite"]), "sqlite");
    assert!(
        !w.run_dir.join("dms.sqlite3").exists(),
        "stats (read-only) created the database"
    );
    let mut c = dms();
    c.arg("--run-dir")
        .arg(&w.run_dir)
        .args(["--backend", "sqlite", "cleanup"]);
    run(&mut c).expect_code(0);
    assert!(
        w.run_dir.join("dms.sqlite3").exists(),
        "the sqlite backend made no database"
    );
    assert_eq!(backend_of(&[]), "sqlite");
    assert_eq!(backend_of(&["--backend", "pidfile"]), "pidfile");

    // DMS_RUN_DIR and DMS_BACKEND stand in for the flags.
    let other = w.tmp.path().join("from-env");
    let mut c = dms();
    c.env("DMS_RUN_DIR", &other)
        .env("DMS_BACKEND", "sqlite")
        .args(["--json", "stats"]);
    let r = run(&mut c);
    r.expect_code(0);
    let v = r.json();
    assert_eq!(v["backend"], "sqlite");
    assert_eq!(v["run_dir"].as_str().unwrap(), other.to_str().unwrap());
    assert!(
        !other.join("dms.sqlite3").exists(),
        "stats wrote a database"
    );
}

#[test]
fn logging_follows_v_q_and_rust_log() {
    let w = World::new(Backend::Pidfile);
    let stderr_of = |args: &[&str], rust_log: Option<&str>| {
        let mut c = w.cmd();
        if let Some(l) = rust_log {
            c.env("RUST_LOG", l);
        }
        c.args(args).arg("stats");
        let r = run(&mut c);
        r.expect_code(0);
        r.stderr
    };
    const DEBUG_LINE: &str = "opening the manager";
    const INFO_LINE: &str = "manager started";
    let quiet = stderr_of(&[], None);
    assert!(
        quiet.is_empty(),
        "default logging is not errors only: {quiet}"
    );
    assert!(stderr_of(&["-v"], None).is_empty());
    let info = stderr_of(&["-vv"], None);
    assert!(
        info.contains(INFO_LINE) && !info.contains(DEBUG_LINE),
        "{info}"
    );
    assert!(stderr_of(&["-vvv"], None).contains(DEBUG_LINE));
    assert!(stderr_of(&["-vvvv"], None).contains(DEBUG_LINE));
    assert!(stderr_of(&["-q"], None).is_empty());
    assert!(stderr_of(&[], Some("debug")).contains(DEBUG_LINE));
    assert!(stderr_of(&["-q"], Some("debug")).contains(DEBUG_LINE));
    assert!(stderr_of(&["-vvv"], Some("off")).is_empty());
    // Not a terminal: no colour codes.
    assert!(!stderr_of(&["-vvv"], None).contains('\x1b'));
}
