//! The SIGKILL storm (issue 13 §5): `dms serve` is SIGKILLed at random points of a storm
//! of API spawns, kills and deletes, round after round. After each restart the
//! crash-recovery invariants hold:
//!
//! - at most one helper runs per target;
//! - no helper is untracked: every live helper is the PID in its target's PID file, and
//!   the new daemon reports it `running` with that PID;
//! - no foreign process is signalled: a `sleep` the test started itself, whose PID is
//!   written by hand into a PID file (dated before the process started, so it reads
//!   `foreign`), survives every round;
//! - every API call completed or failed with an error (a connection refused or closed
//!   mid-request is an error; none hangs), and a completed call's effect is what the new
//!   daemon shows: a target whose last call answered 201 runs the helper with the PID
//!   of that answer, one whose last call answered a kill or delete runs nothing.
//!
//! Calls are sequential per target (one worker each, all targets at once), so each
//! target's last call is well defined. A fixed seed drives the operations and the kill
//! points: `DMS_STORM_SEED` replaces it, `DMS_STORM_ROUNDS` the number of rounds (100).
//!
//! The test signals only the daemons it started; the helpers are reparented to the test
//! (a child subreaper) when their daemon dies, and stopped at the end.

mod common;
use dms_testkit::daemon;

use common::{alive, processes_with_cmdline, reap_zombies, wait_for, Backend, World};
use daemon::{request, Answer, Served};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TARGETS: usize = 8;
const DEFAULT_SEED: u64 = 0x5eed_0013;
const DEFAULT_ROUNDS: u32 = 100;

/// splitmix64: a small, fixed pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Spawn,
    Kill,
    Delete,
}

/// The outcome of one call.
#[derive(Debug, Clone)]
enum Outcome {
    /// An answer came.
    Answered(Answer),
    /// No answer: the daemon died before or while it was asked (what failed, for a
    /// failing test's message).
    #[allow(dead_code)]
    Failed(String),
}

fn target(i: usize) -> String {
    format!("storm-{i}")
}

/// The helper of target `i`: a `sleep` whose command line is unique to the target and
/// to this test process, so its processes can be found and counted.
fn helper_argv(i: usize) -> Vec<String> {
    vec![
        "sleep".into(),
        format!("{}.{}", 9000 + i, std::process::id()),
    ]
}

fn argv_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// One worker: calls on target `i`, one after another, until `stop`; returns each
/// call with its outcome, in order.
async fn worker(
    socket: std::path::PathBuf,
    i: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<(Op, Outcome)> {
    let mut rng = Rng(seed);
    let mut done = Vec::new();
    let t = target(i);
    while !stop.load(Ordering::SeqCst) {
        let op = match rng.below(10) {
            0..=4 => Op::Spawn,
            5..=8 => Op::Kill,
            _ => Op::Delete,
        };
        let (method, path, body) = match op {
            Op::Spawn => (
                "POST",
                format!("/v1/targets/{t}/spawn"),
                Some(json!({ "argv": helper_argv(i) })),
            ),
            Op::Kill => (
                "POST",
                format!("/v1/targets/{t}/kill"),
                Some(json!({"grace_secs": 5})),
            ),
            Op::Delete => ("DELETE", format!("/v1/targets/{t}"), None),
        };
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            request(&socket, method, &path, body.as_ref()),
        )
        .await;
        let outcome = match r {
            Ok(Ok(a)) => Outcome::Answered(a),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => panic!("{method} {path}: no answer and no error within 30 s (a hang)"),
        };
        let failed = matches!(outcome, Outcome::Failed(_));
        done.push((op, outcome));
        if failed {
            // The daemon is gone (or going): nothing more to ask this round.
            break;
        }
    }
    done
}

/// What the last call on a target says the new daemon must show.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Anything (the last call failed, or no call was made).
    Any,
    /// Running, with this PID.
    RunningPid(i64),
    /// Running (a spawn refused as already running).
    Running,
    /// Not running (a kill or delete answered).
    Stopped,
}

fn expectation(calls: &[(Op, Outcome)], target: &str) -> Expect {
    let Some((op, outcome)) = calls.last() else {
        return Expect::Any;
    };
    let a = match outcome {
        Outcome::Failed(_) => return Expect::Any,
        Outcome::Answered(a) => a,
    };
    let v = a.json();
    match (op, a.status) {
        (Op::Spawn, 201) => {
            assert_eq!(v["state"], "running", "{target}: {}", a.text);
            Expect::RunningPid(v["pid"].as_i64().expect("a pid in a 201"))
        }
        (Op::Spawn, 409) => Expect::Running,
        (Op::Kill | Op::Delete, 200) => {
            assert!(v["was_running"].is_boolean(), "{target}: {}", a.text);
            Expect::Stopped
        }
        // A 503 (the daemon shutting down) or another error: the effect is unknown.
        (_, code) => {
            assert!(
                code >= 400 && v["error"]["code"].is_string(),
                "{target}: {op:?} answered {code} without an error document: {}",
                a.text
            );
            Expect::Any
        }
    }
}

#[test]
fn sigkill_storm_keeps_the_crash_recovery_invariants() {
    let seed: u64 = env_or("DMS_STORM_SEED", DEFAULT_SEED);
    let rounds: u32 = env_or("DMS_STORM_ROUNDS", DEFAULT_ROUNDS);
    eprintln!("storm: seed {seed:#x}, {rounds} rounds (DMS_STORM_SEED, DMS_STORM_ROUNDS)");
    // The run dir on tmpfs, as in production (/run): no fsync costs a real disk's time.
    let shm = tempfile::Builder::new()
        .prefix("dms-storm-")
        .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
            std::path::Path::new("/dev/shm")
        } else {
            std::path::Path::new("/tmp")
        })
        .unwrap();
    let mut world = World::new(Backend::Sqlite);
    world.run_dir = shm.path().join("run");
    let mut rng = Rng(seed);

    // The foreign process: the test's own sleep, its PID in a PID file dated 60 s
    // before it started, so that no rule can take it for a helper.
    let foreign = common::own_sleep(&world, &format!("600.{}", std::process::id()));
    let foreign_file = world.pid_file("foreign");
    let write_foreign = || {
        std::fs::create_dir_all(foreign_file.parent().unwrap()).unwrap();
        if !foreign_file.exists() {
            std::fs::write(&foreign_file, foreign.to_string()).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(&foreign_file)
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
                .unwrap();
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut served = None;
    let mut last_calls: Vec<Vec<(Op, Outcome)>> = Vec::new();
    let (mut answered, mut failed, mut by_code) = (0u64, 0u64, BTreeMap::<u16, u64>::new());
    let mut helpers_seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    for round in 0..=rounds {
        write_foreign();
        let mut s = Served::start(&world, &[]);
        let socket = s.socket.clone();
        // The invariants, on the state the previous daemon's death left.
        if round > 0 {
            check_invariants(&world, &rt, &s, &last_calls, round, &mut helpers_seen);
        }
        assert!(
            alive(foreign),
            "round {round}: the foreign process was signalled"
        );
        if round == rounds {
            served = Some(s);
            break;
        }
        // The storm, killed at a random point (0 to 250 ms after it began).
        let stop = Arc::new(AtomicBool::new(false));
        let kill_after = Duration::from_millis(rng.below(251));
        let seeds: Vec<u64> = (0..TARGETS).map(|_| rng.next()).collect();
        let calls = rt.block_on(async {
            let workers: Vec<_> = (0..TARGETS)
                .map(|i| tokio::spawn(worker(socket.clone(), i, seeds[i], stop.clone())))
                .collect();
            tokio::time::sleep(kill_after).await;
            s.sigkill();
            stop.store(true, Ordering::SeqCst);
            let mut all = Vec::new();
            for w in workers {
                all.push(w.await.expect("a worker panicked"));
            }
            all
        });
        for (op, o) in calls.iter().flatten() {
            match o {
                Outcome::Answered(a) => {
                    answered += 1;
                    *by_code.entry(a.status).or_default() += 1;
                    if *op == Op::Spawn && a.status == 201 {
                        let pid = a.json()["pid"].as_i64().unwrap() as i32;
                        world.track(pid);
                    }
                }
                Outcome::Failed(_) => failed += 1,
            }
        }
        last_calls = calls;
        reap_zombies();
    }
    eprintln!(
        "storm: {rounds} rounds in {:.1} s; {answered} calls answered {by_code:?}, {failed} \
         failed with an error; {} helpers started in all",
        started.elapsed().as_secs_f64(),
        helpers_seen.len()
    );
    // The end: the last daemon stops every helper; the foreign process still runs.
    let s = served.expect("the last daemon");
    let a = rt
        .block_on(request(
            &s.socket,
            "POST",
            "/v1/cleanup",
            Some(&json!({"all": true, "grace_secs": 5})),
        ))
        .expect("cleanup answers");
    assert_eq!(a.status, 200, "{}", a.text);
    for i in 0..TARGETS {
        let argv = helper_argv(i);
        assert!(
            wait_for(Duration::from_secs(10), || {
                reap_zombies();
                processes_with_cmdline(&argv_refs(&argv)).is_empty()
            }),
            "{} still runs after cleanup --all",
            target(i)
        );
    }
    assert!(alive(foreign), "the foreign process was signalled");
}

/// After a restart: each target's helpers, PID file and status agree, and the last
/// completed call's effect is visible.
fn check_invariants(
    world: &World,
    rt: &tokio::runtime::Runtime,
    served: &Served,
    last_calls: &[Vec<(Op, Outcome)>],
    round: u32,
    helpers_seen: &mut std::collections::BTreeSet<i32>,
) {
    reap_zombies();
    let by_cmdline = live_by_cmdline();
    for i in 0..TARGETS {
        let t = target(i);
        let argv = helper_argv(i).join("\0");
        let live = by_cmdline.get(&argv).cloned().unwrap_or_default();
        for &pid in &live {
            if helpers_seen.insert(pid) {
                // Stopped at the end even if the test fails before its cleanup.
                world.track(pid);
            }
        }
        assert!(
            live.len() <= 1,
            "round {round}: {t} has {} helpers running: {live:?}",
            live.len()
        );
        let a = rt
            .block_on(request(
                &served.socket,
                "GET",
                &format!("/v1/targets/{t}"),
                None,
            ))
            .unwrap_or_else(|e| {
                panic!(
                    "round {round}: GET {t}: {e}; the daemon's log: {}",
                    served.log_text()
                )
            });
        assert_eq!(a.status, 200, "{}", a.text);
        let info = a.json();
        let file_pid = std::fs::read_to_string(world.pid_file(&t))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok());
        if let Some(&pid) = live.first() {
            assert_eq!(
                file_pid,
                Some(i64::from(pid)),
                "round {round}: {t}'s helper {pid} is untracked (PID file: {file_pid:?})"
            );
            assert_eq!(info["state"], "running", "round {round}: {t}: {}", a.text);
            assert_eq!(info["pid"], pid, "round {round}: {t}: {}", a.text);
        } else {
            assert_ne!(info["state"], "running", "round {round}: {t}: {}", a.text);
        }
        let calls = last_calls.get(i).map(Vec::as_slice).unwrap_or(&[]);
        match expectation(calls, &t) {
            Expect::Any => {}
            Expect::RunningPid(pid) => assert_eq!(
                live.first().map(|&p| i64::from(p)),
                Some(pid),
                "round {round}: {t}: the last call answered 201 with PID {pid}, but {live:?} runs"
            ),
            Expect::Running => assert_eq!(
                live.len(),
                1,
                "round {round}: {t}: the last spawn answered 409 (already running), but none runs"
            ),
            Expect::Stopped => assert!(
                live.is_empty(),
                "round {round}: {t}: the last kill answered 200, but {live:?} runs"
            ),
        }
    }
}

/// Every live process by its command line (arguments joined by NUL), in one pass over
/// `/proc`.
fn live_by_cmdline() -> BTreeMap<String, Vec<i32>> {
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(raw.strip_suffix(b"\0").unwrap_or(&raw)).into_owned();
        if alive(pid) {
            out.entry(text).or_default().push(pid);
        }
    }
    out
}
