//! Fault injection through the `dms` binary: a full disk, a read-only run directory,
//! another process holding the SQLite database, a corrupt database, and dms itself
//! SIGKILLed at random points of `spawn` and `kill`.
//!
//! The file-system faults need root: they run dms inside a private mount namespace
//! (`unshare --mount`) where a tiny tmpfs or a read-only bind mount exists only for that
//! namespace, so nothing outside the test's temp dir is affected. Where `unshare` is not
//! permitted, those tests print why and return.
//!
//! Expected everywhere: a clear one-line error naming the path and the fix, no PID file
//! lost or half-written, no temporary file left, no helper running untracked, and work
//! continuing from the PID files when only the database is in trouble.

mod common;

use common::{
    alive, files_under, pid_of, processes_with_cmdline, reap_zombies, run, wait_dead, wait_for,
    Backend, World,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const STOP: Duration = Duration::from_secs(10);

fn dms_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("dms")
}

/// Whether `unshare --mount` works here; prints why not.
fn mount_ns_available() -> bool {
    match std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "skipped: unshare --mount failed (needs root): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            false
        }
    }
}

/// Runs `script` with `sh` in a private mount namespace, with `DMS` (the binary), `B` (the
/// backend) and `vars` in its environment.
fn in_mount_ns(w: &World, script: &str, vars: &[(&str, &Path)]) -> common::Run {
    let mut c = assert_cmd::Command::new("unshare");
    c.args(["--mount", "--", "sh", "-c", script])
        .env("DMS", dms_bin())
        .env("B", w.backend.name())
        .env_remove("DMS_RUN_DIR")
        .env_remove("DMS_BACKEND")
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(120));
    for (k, v) in vars {
        c.env(k, v);
    }
    run(&mut c)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A `sleep` argument unique to this test and `tag`, to find the helper by command line.
fn marker(tag: u32) -> String {
    format!("{}.{}", 5000 + tag, std::process::id())
}

// ---------------------------------------------------------------------------------------
// Disk full

const DISK_FULL: &str = r#"
set -u
mount -t tmpfs -o size=256k,mode=0755 tmpfs "$MNT" || exit 99
R="$MNT/run"
"$DMS" --run-dir "$R" --backend "$B" --json spawn a -- sleep "$MARK_A" > "$OUT/a.json" || exit 98
# t's PID file names a live process that started after the file was written (foreign):
# a new spawn of t replaces that file, so the write below is an overwrite.
sleep 600 & F=$!
echo "$F" > "$OUT/foreign.pid"
printf '%s\n' "$F" > "$R/s3/t.pid"
touch -d '-1 hour' "$R/s3/t.pid"
dd if=/dev/zero of="$MNT/fill" bs=4096 2>/dev/null
df -k "$MNT" > "$OUT/df"
"$DMS" --run-dir "$R" --backend "$B" spawn t -- sleep "$MARK_FAILED" > "$OUT/full.out" 2> "$OUT/full.err"
echo $? > "$OUT/full.rc"
cp -a "$R/s3" "$OUT/s3-full"
# Space again: work continues.
rm "$MNT/fill"
"$DMS" --run-dir "$R" --backend "$B" --json spawn t -- sleep "$MARK_T" > "$OUT/t.json" 2> "$OUT/t.err"
echo $? > "$OUT/t.rc"
ls -A "$R" > "$OUT/run.ls"
"$DMS" --run-dir "$R" --backend "$B" --json status > "$OUT/status.json"
"$DMS" --run-dir "$R" kill t > /dev/null
"$DMS" --run-dir "$R" kill a > /dev/null
kill "$F"; wait "$F"
exit 0
"#;

/// A PID-file write on a full file system fails with an error naming the path and the
/// fix; the previous PID file (of this and of another target) is intact, no temporary
/// file is left, the helper that could not be recorded never ran, and the database is
/// not moved aside. With space again, the same spawn succeeds.
fn disk_full_while_writing_a_pid_file(backend: Backend) {
    if !mount_ns_available() {
        return;
    }
    let w = World::new(backend);
    let mnt = w.tmp.path().join("mnt");
    let out = w.tmp.path().join("out");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let (mark_a, mark_failed, mark_t) = (marker(1), marker(2), marker(3));
    let mut c = assert_cmd::Command::new("unshare");
    c.args(["--mount", "--", "sh", "-c", DISK_FULL])
        .env("DMS", dms_bin())
        .env("B", backend.name())
        .env("MNT", &mnt)
        .env("OUT", &out)
        .env("MARK_A", &mark_a)
        .env("MARK_FAILED", &mark_failed)
        .env("MARK_T", &mark_t)
        .timeout(Duration::from_secs(120));
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:#?}");
    let a = pid_of(&serde_json::from_str(&read(&out.join("a.json"))).unwrap());
    w.track(a);
    let run_dir = mnt.join("run");

    // The failed write.
    assert_eq!(
        read(&out.join("full.rc")).trim(),
        "1",
        "{}",
        read(&out.join("df"))
    );
    let err = read(&out.join("full.err"));
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("dms: error: "), "{err}");
    for word in [
        format!("{}/s3/.t.pid.", run_dir.display()),
        "No space left on device".to_owned(),
        "is full; free some space and retry".to_owned(),
    ] {
        assert!(last.contains(&word), "{word:?} not in {last}");
    }
    // The previous files, intact; nothing else (no temporary file).
    let s3 = out.join("s3-full");
    let mut names: Vec<String> = std::fs::read_dir(&s3)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.pid", "t.pid"], "temporary files left behind");
    assert_eq!(read(&s3.join("a.pid")), format!("{a}\n"));
    assert_eq!(
        read(&s3.join("t.pid")),
        format!("{}\n", read(&out.join("foreign.pid")).trim())
    );
    assert!(
        processes_with_cmdline(&["sleep", &mark_failed]).is_empty(),
        "the helper that could not be recorded runs"
    );

    // With space again.
    assert_eq!(
        read(&out.join("t.rc")).trim(),
        "0",
        "{}",
        read(&out.join("t.err"))
    );
    let t = pid_of(&serde_json::from_str(&read(&out.join("t.json"))).unwrap());
    w.track(t);
    let listing = read(&out.join("run.ls"));
    assert!(
        !listing.contains("corrupt-"),
        "database moved aside: {listing}"
    );
    if backend == Backend::Sqlite {
        assert!(listing.lines().any(|l| l == "dms.sqlite3"), "{listing}");
    }
    let status: Value = serde_json::from_str(&read(&out.join("status.json"))).unwrap();
    let states: Vec<(&str, &str)> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["target"].as_str().unwrap(), i["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("a", "running"), ("t", "running")]);
    // The script stopped both.
    assert!(wait_dead(a, STOP) && wait_dead(t, STOP));
}

// ---------------------------------------------------------------------------------------
// Read-only run dir

const READ_ONLY: &str = r#"
set -u
mount --bind "$R" "$R" && mount -o remount,bind,ro "$R" || exit 99
"$DMS" --run-dir "$R" --backend "$B" --json status > "$OUT/status.json" 2>> "$OUT/errors"
echo "status => $?" >> "$OUT/codes"
for cmd in "spawn t -- sleep 300" "kill a" "cleanup --all" "adopt t $A"; do
  # shellcheck disable=SC2086
  "$DMS" --run-dir "$R" --backend "$B" $cmd > /dev/null 2>> "$OUT/errors"
  echo "$cmd => $?" >> "$OUT/codes"
done
exit 0
"#;

/// With the run dir read-only (a read-only bind mount: chmod does not stop root),
/// `status` (which only reads) still answers, and every command that writes fails with
/// exit 1 and an error naming the read-only file system and the path; the running helper
/// is not signalled and its PID file stays.
fn read_only_run_dir(backend: Backend) {
    if !mount_ns_available() {
        return;
    }
    let w = World::new(backend);
    let a = pid_of(&w.spawn("a", &["sleep", &marker(10 + backend as u32)]));
    let before = std::fs::read(w.pid_file("a")).unwrap();
    let out = w.tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let r = in_mount_ns(
        &w,
        READ_ONLY,
        &[
            ("R", &w.run_dir),
            ("OUT", &out),
            ("A", Path::new(&a.to_string())),
        ],
    );
    assert_eq!(r.code, 0, "{r:#?}");
    let codes = read(&out.join("codes"));
    for line in codes.lines() {
        let code = if line.starts_with("status ") {
            "=> 0"
        } else {
            "=> 1"
        };
        assert!(line.ends_with(code), "{codes}");
    }
    assert_eq!(codes.lines().count(), 5);
    let status: serde_json::Value = serde_json::from_str(&read(&out.join("status.json"))).unwrap();
    assert_eq!(status[0]["target"], "a", "{status}");
    assert_eq!(status[0]["state"], "running", "{status}");
    let errors = read(&out.join("errors"));
    for line in errors.lines().filter(|l| l.starts_with("dms: error:")) {
        assert!(
            line.contains("Read-only file system")
                && line.contains(&w.run_dir.display().to_string()),
            "{line}"
        );
    }
    assert_eq!(
        errors
            .lines()
            .filter(|l| l.starts_with("dms: error:"))
            .count(),
        4
    );
    assert!(alive(a), "the helper was signalled");
    assert_eq!(std::fs::read(w.pid_file("a")).unwrap(), before);
    // Outside the namespace the run dir is writable: work goes on.
    w.json(["status", "a"]).expect_code(0);
    w.run(["kill", "a"]).expect_code(0);
    assert!(wait_dead(a, STOP));
}

// ---------------------------------------------------------------------------------------
// SQLite held by another process, or corrupt

fn open_db(w: &World) -> rusqlite::Connection {
    rusqlite::Connection::open(w.run_dir.join("dms.sqlite3")).unwrap()
}

fn row_count(w: &World, target: &str) -> i64 {
    open_db(w)
        .query_row(
            "SELECT count(*) FROM records WHERE target = ?1",
            [target],
            |r| r.get(0),
        )
        .unwrap()
}

/// Another process holds a write transaction on dms.sqlite3 longer than the busy timeout
/// (5 s) while `dms spawn` opens the store: dms warns, works from the PID files, and the
/// helper is recorded. Once the lock is gone, `status` reads it (and writes nothing), and
/// the next writing command records its row.
#[test]
fn sqlite_busy_beyond_the_timeout_works_from_pid_files() {
    let w = World::new(Backend::Sqlite);
    w.run(["cleanup"]).expect_code(0); // creates the database
    let conn = open_db(&w);
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let mut c = w.cmd();
    c.args(["-v", "--json", "spawn", "t", "--", "sleep", &marker(20)]);
    let r = run(&mut c);
    let took = started.elapsed();
    r.expect_code(0);
    let pid = pid_of(&r.json());
    w.track(pid);
    assert!(
        took >= dms_store::BUSY_TIMEOUT,
        "did not wait for the lock: {took:?}"
    );
    assert!(r.stderr.contains("busy"), "no warning: {r:#?}");
    assert!(r.stderr.contains("running without metadata"), "{r:#?}");
    assert_eq!(
        std::fs::read_to_string(w.pid_file("t")).unwrap(),
        format!("{pid}\n")
    );
    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);

    let r = w.json(["status", "t"]);
    r.expect_code(0);
    assert_eq!(r.json()["state"], "running");
    assert_eq!(r.json()["pid"], pid);
    assert_eq!(row_count(&w, "t"), 0, "status wrote a row");
    w.run(["cleanup"]).expect_code(0);
    assert_eq!(row_count(&w, "t"), 1, "the row was not repaired");
    w.run(["kill", "t"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

/// Another process keeps dms.sqlite3 locked for everyone (`locking_mode=EXCLUSIVE`, so
/// not even a read gets through): `status` and `kill` warn and work from the PID files.
#[test]
fn sqlite_locked_exclusively_works_from_pid_files() {
    let w = World::new(Backend::Sqlite);
    let pid = pid_of(&w.spawn("t", &["sleep", &marker(21)]));
    let conn = open_db(&w);
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;").unwrap();

    let r = w.json(["-v", "status", "t"]);
    r.expect_code(0);
    assert_eq!(r.json()["state"], "running");
    assert!(r.stderr.contains("database is locked"), "{r:#?}");
    let r = w.json(["-v", "kill", "t"]);
    r.expect_code(0);
    assert_eq!(r.json()["stopped"], true);
    assert!(wait_dead(pid, STOP));
    assert!(!w.pid_file("t").exists());
    drop(conn);
    // Unlocked: the leftover row (the kill could not delete it) is kept by a reader and
    // dropped by the next writer.
    w.json(["status"]).expect_code(0);
    assert_eq!(row_count(&w, "t"), 1, "status deleted a row");
    w.json(["cleanup"]).expect_code(0);
    assert_eq!(row_count(&w, "t"), 0);
}

/// A database locked by another process: `status` waits at most the readers' short busy
/// timeout (not the writers' 5 s), says so at the default verbosity as one
/// `dms: warning:` line, and answers from the PID files.
#[test]
fn sqlite_locked_costs_status_a_short_wait_and_a_warning() {
    let w = World::new(Backend::Sqlite);
    let pid = pid_of(&w.spawn("t", &["sleep", &marker(25)]));
    let conn = open_db(&w);
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;").unwrap();
    for args in [&["status", "t"][..], &["stats"][..]] {
        let started = Instant::now();
        let r = w.json(args);
        let took = started.elapsed();
        r.expect_code(0);
        assert!(
            took < dms_store::BUSY_TIMEOUT,
            "{args:?} waited the writers' busy timeout: {took:?}"
        );
        let warnings: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(warnings.len(), 1, "{r:#?}");
        assert!(warnings[0].starts_with("dms: warning: "), "{r:#?}");
        assert!(warnings[0].contains("dms.sqlite3"), "{r:#?}");
        assert!(warnings[0].contains("locked"), "{r:#?}");
    }
    assert_eq!(w.json(["status", "t"]).json()["state"], "running");
    // -q: no warning.
    assert_eq!(w.json(["-q", "status", "t"]).stderr, "");
    drop(conn);
    w.run(["kill", "t"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

/// The database is busy exactly when the row of a new helper is written (dms already
/// opened it): the PID file is written, so the spawn succeeds with a warning instead of
/// giving up a recorded helper.
#[test]
fn sqlite_busy_at_the_row_write_still_records_the_helper() {
    use nix::fcntl::{Flock, FlockArg};
    let w = World::new(Backend::Sqlite);
    w.run(["status"]).expect_code(0);
    let lock_path = w.run_dir.join("locks/t.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let flock = Flock::lock(f, FlockArg::LockExclusive).unwrap();
    let child = std::process::Command::new(dms_bin())
        .args(["--run-dir"])
        .arg(&w.run_dir)
        .args(["--backend", "sqlite", "-v", "--json", "spawn", "t", "--"])
        .args(["sleep", &marker(22)])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // dms has opened the database and waits for the target's lock.
    let fd_dir = format!("/proc/{}/fd", child.id());
    let holds_lock = || {
        std::fs::read_dir(&fd_dir)
            .map(|d| {
                d.flatten()
                    .any(|e| std::fs::read_link(e.path()).is_ok_and(|p| p == lock_path))
            })
            .unwrap_or(false)
    };
    assert!(wait_for(STOP, holds_lock), "dms never waited for the lock");
    let conn = open_db(&w);
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    drop(flock);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("metadata row was not"), "{stderr}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = pid_of(&info);
    w.track(pid);
    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);
    let r = w.json(["status", "t"]);
    assert_eq!(r.json()["state"], "running");
    assert_eq!(r.json()["pid"], pid);
    w.run(["kill", "t"]).expect_code(0);
    assert!(wait_dead(pid, STOP));
}

/// A database overwritten with garbage while helpers run: `status` warns, leaves it as it
/// is and answers from the PID files; the next writing command moves it aside (kept for
/// inspection), rebuilds it from the PID files, and every helper is still tracked and
/// can be stopped.
#[test]
fn corrupt_database_is_moved_aside_and_nothing_is_lost() {
    let w = World::new(Backend::Sqlite);
    let a = pid_of(&w.spawn("a", &["sleep", &marker(23)]));
    let b = pid_of(&w.spawn("b", &["sleep", &marker(24)]));
    let db = w.run_dir.join("dms.sqlite3");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();

    let r = w.json(["-v", "status"]);
    r.expect_code(0);
    assert!(r.stderr.contains("unusable"), "{r:#?}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "status changed the database"
    );
    assert!(
        !files_under(&w.run_dir)
            .iter()
            .any(|p| p.to_string_lossy().contains("corrupt-")),
        "status moved the database aside"
    );
    let r2 = w.json(["-v", "cleanup"]);
    r2.expect_code(0);
    assert!(r2.stderr.contains("moved it aside"), "{r2:#?}");
    let got: Vec<(String, i64)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["state"], "running", "{i}");
            (
                i["target"].as_str().unwrap().to_owned(),
                i["pid"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("a".to_owned(), a as i64), ("b".to_owned(), b as i64)]
    );
    let aside: Vec<PathBuf> = files_under(&w.run_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("dms.sqlite3.corrupt-"))
        .collect();
    assert!(
        aside.iter().any(|p| std::fs::read(p).unwrap() == garbage),
        "the corrupt file is not kept: {aside:?}"
    );
    assert_eq!(row_count(&w, "a") + row_count(&w, "b"), 2, "not rebuilt");
    for (t, pid) in [("a", a), ("b", b)] {
        w.run(["kill", t]).expect_code(0);
        assert!(wait_dead(pid, STOP));
    }
}

// ---------------------------------------------------------------------------------------
// dms SIGKILLed during spawn and kill

/// xorshift64*: a small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the rounds saw.
#[derive(Debug, Default)]
struct Tally {
    rounds: u32,
    killed: u32,
    finished: u32,
    /// Children held at the start barrier of a killed dms, which exited unreleased.
    barrier_children: u32,
    /// Children released just before their dms was killed, seen before their exec.
    released_before_exec: u32,
}

const TARGETS: [&str; 3] = ["k0", "k1", "k2"];

/// Recovery after a round: `dms cleanup`, then `dms status --json`; then I1-I5 against
/// the live helpers the test finds among its own children by their marker.
fn recover_and_check(w: &World, marks: &[String], tally: &mut Tally, round: u32, seed: u64) {
    for attempt in 0..2 {
        w.run(["cleanup"]).expect_code(0);
        let r = w.json(["status"]);
        r.expect_code(0);
        let status = r.json();
        let entries = status.as_array().unwrap();
        reap_zombies();
        // An entry whose process is not (or not yet) the helper program: a child of the
        // dms just killed, between fork and exec. Either its gate closed unopened and it
        // exits with code 125, or dms released it just before it died and it is about to
        // exec the helper program. Wait for one or the other, then recover again.
        let mut barrier = false;
        for e in entries {
            let pid = e["pid"]
                .as_i64()
                .unwrap_or_else(|| panic!("round {round} (seed {seed}): entry without PID {e}"))
                as i32;
            let k = TARGETS
                .iter()
                .position(|t| e["target"] == *t)
                .unwrap_or_else(|| panic!("unknown entry {e}"));
            let is_helper = processes_with_cmdline(&["sleep", &marks[k]]).contains(&pid);
            if !is_helper && attempt == 0 {
                let became_helper = || processes_with_cmdline(&["sleep", &marks[k]]).contains(&pid);
                assert!(
                    wait_for(STOP, || !alive(pid) || became_helper()),
                    "round {round} (seed {seed}): entry {e} names a live process that is not \
                     its helper\n{}",
                    diagnose(pid)
                );
                if became_helper() {
                    tally.released_before_exec += 1;
                } else {
                    wait_dead(pid, STOP);
                    tally.barrier_children += 1;
                }
                barrier = true;
            }
        }
        if barrier {
            continue;
        }
        for (k, target) in TARGETS.iter().enumerate() {
            let live = processes_with_cmdline(&["sleep", &marks[k]]);
            for pid in &live {
                w.track(*pid);
            }
            let ctx = || format!("round {round} (seed {seed}), target {target}: {status}");
            // I5: at most one live helper per target.
            assert!(live.len() <= 1, "{}: live helpers {live:?}", ctx());
            let entry = entries.iter().find(|e| e["target"] == *target);
            match (live.first(), entry) {
                // I1/I3: the live helper is tracked, memory and disk agree.
                (Some(pid), Some(e)) => {
                    assert_eq!(e["state"], "running", "{}", ctx());
                    assert_eq!(e["pid"].as_i64(), Some(i64::from(*pid)), "{}", ctx());
                    assert!(w.pid_file(target).exists(), "{}", ctx());
                }
                (Some(pid), None) => panic!("{}: helper {pid} is untracked", ctx()),
                // I2: no entry names a dead or foreign process after cleanup.
                (None, Some(e)) => panic!("{}: entry without a live helper: {e}", ctx()),
                (None, None) => assert!(!w.pid_file(target).exists(), "{}", ctx()),
            }
        }
        return;
    }
    panic!("round {round} (seed {seed}): recovery did not settle");
}

/// What a process that should have exited is doing: its stat, wait channel and open
/// descriptors (a barrier child that outlives its dms points at whoever holds its gate).
fn diagnose(pid: i32) -> String {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{what}")).unwrap_or_else(|e| format!("<{e}>"))
    };
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    format!("{}->{target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "stat: {}wchan: {}\nfds: {fds:?}",
        read("stat"),
        read("wchan")
    )
}

fn dms_killed_at_random_points_of_spawn_and_kill(backend: Backend) {
    let rounds: u32 = std::env::var("DMS_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("DMS_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{}: {rounds} rounds, DMS_FAULT_SEED={seed}", backend.name());
    let w = World::new(backend);
    let marks: Vec<String> = (0..TARGETS.len() as u32)
        .map(|k| marker(100 + 10 * backend as u32 + k))
        .collect();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let started = Instant::now();
    w.run(["status"]).expect_code(0);
    for round in 0..rounds {
        let k = rng.below(TARGETS.len() as u64) as usize;
        let delay = Duration::from_micros(rng.below(20_001));
        let mut c = std::process::Command::new(dms_bin());
        c.arg("--run-dir")
            .arg(&w.run_dir)
            .args(["--backend", backend.name()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match rng.below(3) {
            0 => c.args(["spawn", TARGETS[k], "--", "sleep", &marks[k]]),
            1 => c.args(["spawn", TARGETS[k], "--replace", "--", "sleep", &marks[k]]),
            _ => c.args(["kill", TARGETS[k], "--grace", "2"]),
        };
        let mut child = c.spawn().unwrap();
        // A random moment of the run to kill it at: this wait is the scenario.
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(_) => tally.finished += 1,
            None => {
                // Our own child, not yet reaped: its PID is still its own.
                child.kill().unwrap();
                child.wait().unwrap();
                tally.killed += 1;
            }
        }
        tally.rounds += 1;
        recover_and_check(&w, &marks, &mut tally, round, seed);
    }
    // The end: everything stops, nothing is left.
    w.run(["cleanup", "--all", "--grace", "2"]).expect_code(0);
    for m in &marks {
        assert!(
            common::wait_for(STOP, || processes_with_cmdline(&["sleep", m]).is_empty()),
            "a helper survived cleanup --all"
        );
    }
    reap_zombies();
    let pid_files: Vec<PathBuf> = files_under(&w.run_dir.join("s3"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pid"))
        .collect();
    assert!(pid_files.is_empty(), "{pid_files:?}");
    let temps = files_under(&w.run_dir.join("s3"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .count();
    eprintln!(
        "{}: {tally:?}, {temps} temporary files from interrupted writes (removed by a later \
         open once 5 minutes old), in {:.1?}",
        backend.name(),
        started.elapsed()
    );
    assert!(tally.killed > 0 && tally.finished > 0, "{tally:?}");
}

both_backends!(
    disk_full_while_writing_a_pid_file,
    read_only_run_dir,
    dms_killed_at_random_points_of_spawn_and_kill,
);
