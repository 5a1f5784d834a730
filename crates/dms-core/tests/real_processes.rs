//! The manager with real processes: the Linux spawner and the PID-file and SQLite
//! backends in a temporary run directory. Every process signalled here was started by
//! this test (directly, or as a helper by a manager it runs).
//!
//! The race test re-executes this test binary as a second OS process (`race_child`,
//! ignored when run normally) so that two processes with their own managers spawn the
//! same target on the same run dir at the same moment, 50 times.

mod common;

use common::{init_tracing, run_dir, store, t, Backend};
use dms_core::{
    Error, Event, HelperSpec, KillStep, ListOrder, Manager, ManagerOptions, ProcessState,
    UsageSampling,
};
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Pid, Spawner};
use dms_store::{PidStore, TargetId};
use nix::sys::signal::{SigSet, Signal as NixSignal};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

fn opts(run_dir: &Path) -> ManagerOptions {
    let mut o = ManagerOptions::new(run_dir);
    o.failed_start_grace = Duration::from_secs(5);
    o
}

async fn open(backend: Backend, run_dir: &Path) -> (Manager, dms_core::RecoveryReport) {
    let spawner = Arc::new(LinuxSpawner::new().unwrap());
    Manager::open(store(backend, run_dir), spawner, opts(run_dir))
        .await
        .unwrap()
}

/// A helper that sleeps; `tag` makes its command line unique.
fn sleeper(tag: u64) -> HelperSpec {
    HelperSpec {
        program: "sleep".into(),
        args: vec![format!("{}", 100_000 + tag).into()],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("DMS_TEST_SECRET".into(), "s3cr3t-value".into()),
        ],
        ..HelperSpec::default()
    }
}

/// Alive and not a zombie.
fn alive(pid: Pid) -> bool {
    dms_testkit::alive(pid.get())
}

fn cmdline(pid: Pid) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

use dms_testkit::wait_for_async as wait_for;

async fn next_exit(rx: &mut broadcast::Receiver<Event>, pid: Pid) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(Event::Exited { pid: p, status, .. })) if p == pid => return status,
            Ok(Ok(_)) => {}
            other => panic!("no exit event for {pid}: {other:?}"),
        }
    }
}

fn pid_file(run_dir: &Path, target: &TargetId) -> PathBuf {
    target.pid_file_in(&run_dir.join("s3"))
}

// ---------------------------------------------------------------------------------------

async fn spawn_and_kill(backend: Backend) {
    init_tracing();
    let dir = run_dir();
    let (m, _) = open(backend, dir.path()).await;
    let target = t("target-123");
    let info = m.spawn(&target, sleeper(1)).await.unwrap();
    let pid = info.pid.unwrap();
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!(info.source, Some(dms_core::Source::Both));
    assert_eq!(cmdline(pid), ["sleep", "100001"]);
    assert!(
        info.rss_bytes.is_some() && info.threads == Some(1),
        "{info:?}"
    );
    assert_eq!(
        std::fs::read_to_string(pid_file(dir.path(), &target)).unwrap(),
        format!("{pid}\n")
    );
    // The helper's log is where the CLI contract says.
    assert!(dir.path().join("logs/target-123.log").exists());
    // Never stored: the environment value.
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cr3t-value"),
            "{} holds an environment value",
            entry.display()
        );
    }
    assert!(m.is_running(&target).await.unwrap());

    let report = m.kill(&target, Duration::from_secs(5)).await.unwrap();
    assert!(report.was_running && report.stopped, "{report:?}");
    assert_eq!(report.signal, Some(dms_proc::Signal::Term));
    assert!(!alive(pid));
    assert!(!pid_file(dir.path(), &target).exists());
    assert!(!m.is_running(&target).await.unwrap());
    assert_eq!(
        m.process_info(&target).await.unwrap().state,
        ProcessState::Absent
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------

async fn restart_adopts_running_helper(backend: Backend) {
    init_tracing();
    let dir = run_dir();
    let target = t("survivor");
    let (m1, _) = open(backend, dir.path()).await;
    let pid = m1.spawn(&target, sleeper(2)).await.unwrap().pid.unwrap();
    drop(m1);
    assert!(alive(pid), "dropping the manager must not stop the helper");

    let (m2, report) = open(backend, dir.path()).await;
    assert_eq!(report.adopted.len(), 1, "{report:?}");
    assert_eq!(report.adopted[0].pid, pid);
    assert_eq!(m2.memory_snapshot().len(), 1);
    assert!(m2.is_running(&target).await.unwrap());
    let info = m2.process_info(&target).await.unwrap();
    assert_eq!(info.source, Some(dms_core::Source::Both));

    // The recovered helper's exit is watched too.
    let mut events = m2.subscribe();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.get()), NixSignal::SIGTERM).unwrap();
    next_exit(&mut events, pid).await;
    assert!(!pid_file(dir.path(), &target).exists());
    assert!(m2.memory_snapshot().is_empty());
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_watching_clears_memory_and_disk_promptly() {
    init_tracing();
    let dir = run_dir();
    let (m, _) = open(Backend::PidFile, dir.path()).await;
    let mut events = m.subscribe();
    let target = t("exits");
    let spec = HelperSpec {
        program: "sh".into(),
        args: vec!["-c".into(), "read line; exit 7".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..HelperSpec::default()
    };
    // stdin is /dev/null: `read` sees end of file at once and the helper exits 7, maybe
    // before `spawn` reads back its info (then `absent`): its PID comes from the event,
    // which the target's lock orders before the exit's.
    let info = m.spawn(&target, spec).await.unwrap();
    let pid = loop {
        match events.try_recv() {
            Ok(Event::Spawned { pid, .. }) => break pid,
            Ok(_) => {}
            Err(e) => panic!("no spawned event: {e:?} ({info:?})"),
        }
    };
    let started = Instant::now();
    let status = next_exit(&mut events, pid).await;
    let took = started.elapsed();
    assert_eq!(status, ExitStatus::Code(7));
    assert!(!pid_file(dir.path(), &target).exists());
    assert!(m.memory_snapshot().is_empty());
    assert!(!m.is_running(&target).await.unwrap());
    eprintln!("exit noticed and PID file removed {took:?} after spawn returned");

    // A helper stopped from outside dms.
    let pid = m.spawn(&target, sleeper(3)).await.unwrap().pid.unwrap();
    let sent = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.get()), NixSignal::SIGKILL).unwrap();
    let status = next_exit(&mut events, pid).await;
    let took = sent.elapsed();
    assert_eq!(status, ExitStatus::Signaled(9));
    assert!(!pid_file(dir.path(), &target).exists());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    eprintln!("external SIGKILL -> exit event + PID file removed in {took:?}");
}

/// A one-shot manager (the command line's `spawn`, `kill`, `status`) runs no startup
/// recovery, so another target's stale PID file stays, and watches no exit, so a memory
/// hit is probed: a helper killed from outside reads as not running at once. Its own
/// target's spawn and kill still lock, record before the program runs, and check
/// identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_manager_scans_nothing_and_probes_memory_hits() {
    init_tracing();
    let dir = run_dir();
    let (store_dir, other) = (dir.path(), t("other"));
    std::fs::create_dir_all(store_dir.join("s3")).unwrap();
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    std::fs::write(pid_file(store_dir, &other), dead.to_string()).unwrap();
    let mut o = opts(store_dir);
    o.one_shot = true;
    let spawner = Arc::new(LinuxSpawner::new().unwrap());
    let (m, report) = Manager::open(store(Backend::PidFile, store_dir), spawner, o)
        .await
        .unwrap();
    assert!(report.cleared.is_empty() && report.adopted.is_empty());
    assert!(
        pid_file(store_dir, &other).exists(),
        "a one-shot open removed a file"
    );

    let target = t("one-shot");
    let pid = m.spawn(&target, sleeper(7)).await.unwrap().pid.unwrap();
    assert!(m.is_running(&target).await.unwrap());
    assert_eq!(
        std::fs::read_to_string(pid_file(store_dir, &target))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    assert!(matches!(
        m.spawn(&target, sleeper(8)).await,
        Err(Error::AlreadyRunning { .. })
    ));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.get()), NixSignal::SIGKILL).unwrap();
    // No watcher: the memory hit is probed, and the dead helper (a zombie until the
    // spawner reaps it) reads as not running.
    assert!(wait_for(Duration::from_secs(5), || !alive(pid)).await);
    assert!(!m.is_running(&target).await.unwrap());
    let report = m.kill(&target, Duration::from_secs(1)).await.unwrap();
    assert!(!report.was_running, "{report:?}");
    assert!(!pid_file(store_dir, &target).exists());
    assert!(
        pid_file(store_dir, &other).exists(),
        "kill touched another target"
    );
}

/// One shared exit watcher serves every tracked helper: 30 helpers killed from outside
/// dms at once are each reported (an `Exited` event with the signal), forgotten in
/// memory and their PID files removed, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_exit_watcher_notices_many_exits_promptly() {
    const N: u64 = 30;
    init_tracing();
    let dir = run_dir();
    let (m, _) = open(Backend::PidFile, dir.path()).await;
    let mut events = m.subscribe();
    let mut pids = std::collections::HashSet::new();
    for i in 0..N {
        let info = m
            .spawn(&t(&format!("many-{i}")), sleeper(10 + i))
            .await
            .unwrap();
        pids.insert(info.pid.unwrap());
    }
    assert_eq!(m.memory_snapshot().len(), N as usize);
    let sent = Instant::now();
    for pid in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.get()), NixSignal::SIGKILL).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut exited = std::collections::HashSet::new();
    while exited.len() < pids.len() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(Event::Exited { pid, status, .. })) => {
                assert_eq!(status, ExitStatus::Signaled(9));
                assert!(exited.insert(pid), "PID {pid} reported twice");
            }
            Ok(Ok(_)) => {}
            other => panic!("{} of {N} exits seen: {other:?}", exited.len()),
        }
    }
    let took = sent.elapsed();
    assert_eq!(exited, pids);
    assert!(m.memory_snapshot().is_empty());
    for i in 0..N {
        let target = t(&format!("many-{i}"));
        assert!(!pid_file(dir.path(), &target).exists());
        assert!(!m.is_running(&target).await.unwrap());
    }
    assert!(took < Duration::from_secs(2), "took {took:?}");
    eprintln!("{N} external SIGKILLs -> {N} exit events + PID files removed in {took:?}");
}

// ---------------------------------------------------------------------------------------

/// A process of the test's own, with SIGTERM, SIGINT and SIGHUP blocked, so a signal
/// sent to it stays visible as pending in /proc/PID/status instead of killing it.
fn stranger() -> std::process::Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("600").stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls (sigprocmask) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = SigSet::empty();
            set.add(NixSignal::SIGTERM);
            set.add(NixSignal::SIGINT);
            set.add(NixSignal::SIGHUP);
            set.thread_block().map_err(std::io::Error::from)
        });
    }
    cmd.spawn().unwrap()
}

fn pending_signals(pid: Pid) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    (field("SigPnd:"), field("ShdPnd:"))
}

async fn foreign_pid_is_never_signalled(backend: Backend) {
    init_tracing();
    let dir = run_dir();
    let target = t("reused");
    let (m, _) = open(backend, dir.path()).await;
    // A PID file written a minute ago by hand; the process that has that PID now
    // started after it: the situation after PID reuse.
    let mut child = stranger();
    let pid = Pid::new(i64::from(child.id())).unwrap();
    let path = pid_file(dir.path(), &target);
    std::fs::write(&path, format!("{pid}")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();

    let report = m.reload().await.unwrap();
    assert_eq!(report.foreign.len(), 1, "{report:?}");
    assert!(report.adopted.is_empty());
    assert!(!m.is_running(&target).await.unwrap());
    assert_eq!(
        m.process_info(&target).await.unwrap().state,
        ProcessState::Foreign
    );
    // spawn over it is allowed (the entry is not a live helper of ours)...
    // ...but first: kill clears it without any signal.
    let k = m.kill(&target, Duration::from_secs(1)).await.unwrap();
    assert!(!k.was_running && !k.stopped, "{k:?}");
    assert_eq!(k.steps, [KillStep::ClearForeign]);
    assert!(!path.exists());
    // And cleanup of a fresh foreign entry removes it, again without a signal.
    std::fs::write(&path, format!("{pid}\n")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let c = m.cleanup_all(Duration::from_secs(1)).await.unwrap();
    assert_eq!(c.removed.len(), 1);
    assert!(c.stopped.is_empty());

    assert!(alive(pid), "the stranger was killed");
    assert_eq!(
        pending_signals(pid),
        (0, 0),
        "a signal reached the stranger"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_process_is_tracked_and_watched() {
    init_tracing();
    let dir = run_dir();
    let (m, _) = open(Backend::Sqlite, dir.path()).await;
    let mut events = m.subscribe();
    let mut child = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = Pid::new(i64::from(child.id())).unwrap();
    let info = m.adopt(&t("adopted"), pid).await.unwrap();
    assert!(info.running);
    assert_eq!(
        info.cmdline.as_deref(),
        Some(&["sleep".to_owned(), "600".to_owned()][..])
    );
    // Its exit (it is not the spawner's child: a pidfd tells) clears it.
    child.kill().unwrap();
    assert_eq!(next_exit(&mut events, pid).await, ExitStatus::Unknown);
    assert!(!pid_file(dir.path(), &t("adopted")).exists());
    child.wait().unwrap();
    // A dead PID cannot be adopted.
    assert!(matches!(
        m.adopt(&t("adopted"), pid).await,
        Err(Error::NotRunning { .. })
    ));
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_grace_period_does_not_block_other_targets() {
    init_tracing();
    let dir = run_dir();
    let (m, _) = open(Backend::PidFile, dir.path()).await;
    // Survives SIGTERM and writes down that it came: one process, no shell.
    let term_seen = dir.path().join("slow.sigterm");
    let stubborn = HelperSpec {
        program: "python3".into(),
        args: vec![
            "-c".into(),
            "import signal, sys, time\n\
             signal.signal(signal.SIGTERM, lambda *_: open(sys.argv[1], 'w').write('TERM'))\n\
             while True: time.sleep(1)"
                .into(),
            term_seen.clone().into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..HelperSpec::default()
    };
    let slow = m.spawn(&t("slow"), stubborn).await.unwrap().pid.unwrap();
    let m2 = m.clone();
    let killing = tokio::spawn(async move { m2.kill(&t("slow"), Duration::from_secs(2)).await });
    // While that kill waits out its grace period (its SIGTERM came), other targets work
    // normally.
    assert!(
        wait_for(Duration::from_secs(10), || term_seen.exists()).await,
        "the kill of the stubborn helper sent no SIGTERM"
    );
    let start = Instant::now();
    let other = m.spawn(&t("other"), sleeper(4)).await.unwrap().pid.unwrap();
    assert!(m.is_running(&t("other")).await.unwrap());
    let k = m.kill(&t("other"), Duration::from_secs(5)).await.unwrap();
    let took = start.elapsed();
    assert!(k.stopped);
    assert!(
        took < Duration::from_secs(1),
        "other target blocked for {took:?}"
    );
    assert!(!alive(other));
    let slow_report = killing.await.unwrap().unwrap();
    assert_eq!(slow_report.signal, Some(dms_proc::Signal::Kill));
    assert!(!alive(slow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spawns_in_one_process_start_one_helper() {
    init_tracing();
    let dir = run_dir();
    let _cleanup = KillTagged(dir.path().to_owned());
    let (m, _) = open(Backend::PidFile, dir.path()).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let m = m.clone();
        let spec = race_spec(dir.path(), 0);
        set.spawn(async move { m.spawn(&t("one"), spec).await });
    }
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(info) => ok.push(info.pid.unwrap()),
            Err(Error::AlreadyRunning { pid, .. }) => refused.push(pid),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert!(refused.iter().all(|p| *p == ok[0]));
    assert_eq!(count_tagged(&race_tag(dir.path(), 0)), 1);
    let started = std::fs::read_to_string(dir.path().join("started-0")).unwrap_or_default();
    assert!(
        started.lines().count() <= 1,
        "programs started: {started:?}"
    );
    m.kill(&t("one"), Duration::from_secs(5)).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Two OS processes race.

const RACE_ROUNDS: u64 = 50;
const RACE_ENV: &str = "DMS_CORE_RACE_RUN_DIR";
const RACE_BACKEND_ENV: &str = "DMS_CORE_RACE_BACKEND";

/// The environment entry that marks the helpers of one round of one race (the run dir
/// is unique), so leftovers of other runs can never be counted.
fn race_tag(dir: &Path, round: u64) -> String {
    format!("{}#{round}", dir.display())
}

fn race_spec(dir: &Path, round: u64) -> HelperSpec {
    // The program appends its PID to a per-round file once it runs, then sleeps.
    let started = dir.join(format!("started-{round}"));
    HelperSpec {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!("echo $$ >> '{}'; exec sleep 600", started.display()).into(),
        ],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("DMS_RACE_TAG".into(), race_tag(dir, round).into()),
        ],
        ..HelperSpec::default()
    }
}

/// Live processes whose environment has a `DMS_RACE_TAG` for which `matches` holds.
fn tagged(matches: impl Fn(&[u8]) -> bool) -> Vec<Pid> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter_map(|p| Pid::new(p).ok())
        .filter(|&p| {
            alive(p)
                && std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                    env.split(|&b| b == 0)
                        .filter_map(|kv| kv.strip_prefix(b"DMS_RACE_TAG="))
                        .any(&matches)
                })
        })
        .collect()
}

/// Live processes whose environment carries `DMS_RACE_TAG=<tag>`.
fn count_tagged(tag: &str) -> usize {
    tagged(|v| v == tag.as_bytes()).len()
}

/// On drop (also when a test fails), kills and reaps every helper tagged with this run
/// dir: only processes this test started carry the tag.
struct KillTagged(PathBuf);

impl Drop for KillTagged {
    fn drop(&mut self) {
        let prefix = format!("{}#", self.0.display());
        for pid in tagged(|v| v.starts_with(prefix.as_bytes())) {
            let pid = nix::unistd::Pid::from_raw(pid.get());
            let _ = nix::sys::signal::kill(pid, NixSignal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

/// Sleeps until the wall-clock instant `at_nanos` (nanoseconds since the epoch): a
/// starting line shared by two processes, not a synchronisation.
async fn start_at(at_nanos: u128) {
    let at = std::time::UNIX_EPOCH + Duration::from_nanos(at_nanos as u64);
    // Timers have millisecond resolution: sleep most of the way, then spin.
    if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait.saturating_sub(Duration::from_millis(3))).await;
    }
    while std::time::SystemTime::now() < at {
        std::hint::spin_loop();
    }
}

fn backend_from_env() -> Backend {
    match std::env::var(RACE_BACKEND_ENV).as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        _ => Backend::PidFile,
    }
}

/// The second racer: run by `*::two_processes_race` in a child process.
#[test]
#[ignore = "helper process of the two_processes_race tests; does nothing on its own"]
fn race_child() {
    let Some(run_dir) = std::env::var_os(RACE_ENV).map(PathBuf::from) else {
        return;
    };
    let backend = backend_from_env();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (m, _) = open(backend, &run_dir).await;
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut lines = tokio::io::AsyncBufReadExt::lines(stdin);
        while let Some(line) = lines.next_line().await.unwrap() {
            let Some(rest) = line.strip_prefix("go ") else {
                break;
            };
            let (round, at) = rest.split_once(' ').unwrap();
            let round: u64 = round.parse().unwrap();
            start_at(at.parse().unwrap()).await;
            let outcome = match m.spawn(&t("race"), race_spec(&run_dir, round)).await {
                Ok(info) => format!("ok {}", info.pid.unwrap()),
                Err(Error::AlreadyRunning { pid, .. }) => format!("refused {pid}"),
                Err(e) => format!("error {e}"),
            };
            println!("RACE {round} {outcome}");
        }
    });
}

async fn two_processes_race(backend: Backend) {
    init_tracing();
    // Helpers of the second racer outlive it: they must be reparented to us and reaped.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = run_dir();
    let _cleanup = KillTagged(dir.path().to_owned());
    let (m, _) = open(backend, dir.path()).await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "race_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(RACE_ENV, dir.path())
        .env(
            RACE_BACKEND_ENV,
            match backend {
                Backend::PidFile => "pidfile",
                Backend::Sqlite => "sqlite",
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let target = t("race");
    let mut helpers = Vec::new();
    let mut wins = [0u32; 2];
    for round in 0..RACE_ROUNDS {
        // Both racers start at the same instant, a little in the future, so that their
        // spawns really overlap (otherwise the one that reads the command first wins).
        let at = std::time::SystemTime::now() + Duration::from_millis(20);
        let at_nanos = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        writeln!(to_child, "go {round} {at_nanos}").unwrap();
        to_child.flush().unwrap();
        start_at(at_nanos).await;
        let mine = m.spawn(&target, race_spec(dir.path(), round)).await;
        let theirs = loop {
            let mut line = String::new();
            assert!(from_child.read_line(&mut line).unwrap() > 0, "racer died");
            // libtest prints "test race_child ... " without a newline first.
            let tag = format!("RACE {round} ");
            if let Some(at) = line.find(&tag) {
                break line[at + tag.len()..].trim().to_owned();
            }
        };
        let helper = match (&mine, theirs.split_once(' ')) {
            (Ok(info), Some(("refused", pid))) => {
                wins[0] += 1;
                assert_eq!(pid, info.pid.unwrap().to_string(), "round {round}");
                info.pid.unwrap()
            }
            (Err(Error::AlreadyRunning { pid, .. }), Some(("ok", theirs))) => {
                wins[1] += 1;
                assert_eq!(theirs, pid.to_string(), "round {round}");
                *pid
            }
            other => panic!("round {round}: not exactly one winner: {other:?}"),
        };
        helpers.push(helper);
        // Exactly one helper ran its program, and exactly one is alive.
        let started = dir.path().join(format!("started-{round}"));
        assert!(
            wait_for(Duration::from_secs(5), || started.exists()).await,
            "round {round}: helper never ran"
        );
        let tag = race_tag(dir.path(), round);
        assert!(
            wait_for(Duration::from_secs(5), || count_tagged(&tag) == 1).await,
            "round {round}: {} helpers alive",
            count_tagged(&tag)
        );
        let lines = std::fs::read_to_string(&started).unwrap();
        assert_eq!(
            lines.lines().count(),
            1,
            "round {round}: programs started: {lines:?}"
        );
        assert_eq!(lines.trim(), helper.to_string());
        // Clear for the next round.
        let k = m.kill(&target, Duration::from_secs(5)).await.unwrap();
        assert!(k.stopped, "round {round}: {k:?}");
        assert!(
            wait_for(Duration::from_secs(5), || !alive(helper)).await,
            "round {round}: helper survived kill"
        );
        assert!(m.store().get(&target).await.unwrap().is_none());
    }
    drop(to_child);
    assert!(child.wait().unwrap().success());
    // Reap helpers that were reparented to us (never waitpid(-1): our own spawner reaps
    // its children).
    for pid in helpers {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid.get()),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
    eprintln!("race wins: this process {}, the other {}", wins[0], wins[1]);
    assert_eq!(wins[0] + wins[1], RACE_ROUNDS as u32);
}

// ---------------------------------------------------------------------------------------
// Status reads usage with the probe.

/// `dms status` (a one-shot manager with a zero usage interval, memory empty, so each
/// helper is classified from its PID file) takes the usage columns from the probe's own
/// read of `/proc/PID/stat`: the same RSS, threads and lifetime CPU percent as
/// `Spawner::usage` with a zero interval read just before and after. `process_info`
/// agrees too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_live_helper_reports_the_same_usage_fields() {
    init_tracing();
    let dir = run_dir();
    let (m, _) = open(Backend::PidFile, dir.path()).await;
    let busy = HelperSpec {
        program: "sh".into(),
        args: vec!["-c".into(), "while :; do :; done".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..HelperSpec::default()
    };
    let busy_pid = m.spawn(&t("busy"), busy).await.unwrap().pid.unwrap();
    let idle_pid = m.spawn(&t("idle"), sleeper(7)).await.unwrap().pid.unwrap();
    // The loop has used some CPU (awaited on its own counter).
    let utime = |pid: Pid| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let f: Vec<&str> = s
            .rsplit_once(')')
            .map_or("", |(_, a)| a)
            .split_whitespace()
            .collect();
        f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
    };
    assert!(wait_for(Duration::from_secs(20), || utime(busy_pid) >= 5).await);

    let mut o = opts(dir.path());
    o.usage = UsageSampling::Lifetime;
    o.one_shot = true;
    let spawner = Arc::new(LinuxSpawner::new().unwrap());
    let (status, _) = Manager::open(store(Backend::PidFile, dir.path()), spawner.clone(), o)
        .await
        .unwrap();
    assert!(status.memory_snapshot().is_empty());
    let ids: Vec<_> = m.memory_snapshot();
    let usage = |who: &str| {
        let id = ids
            .iter()
            .find(|(t, _)| t.as_str() == who)
            .unwrap()
            .1
            .clone();
        let spawner = spawner.clone();
        async move { spawner.usage(&id, Duration::ZERO).await.unwrap().unwrap() }
    };
    for round in 0..2 {
        let before = [usage("busy").await, usage("idle").await];
        let mut infos = Vec::new();
        if round == 0 {
            infos = status.list().await.unwrap();
        } else {
            for who in ["busy", "idle"] {
                infos.push(status.process_info(&t(who)).await.unwrap());
            }
        }
        let after = [usage("busy").await, usage("idle").await];
        assert_eq!(infos.len(), 2, "{infos:?}");
        assert_eq!(
            [infos[0].pid, infos[1].pid],
            [Some(busy_pid), Some(idle_pid)]
        );
        for ((info, b), a) in infos.iter().zip(&before).zip(&after) {
            assert_eq!(info.state, ProcessState::Running, "{info:?}");
            eprintln!("before {b:?}\nstatus {info:?}\nafter {a:?}");
            assert_eq!(info.threads, Some(b.threads));
            assert_eq!(info.threads, Some(a.threads));
            let rss = info.rss_bytes.expect("RSS");
            assert!((b.rss_bytes.min(a.rss_bytes)..=b.rss_bytes.max(a.rss_bytes)).contains(&rss));
            let cpu = info.cpu_percent.expect("CPU percent");
            let (lo, hi) = (
                b.cpu_percent.min(a.cpu_percent),
                b.cpu_percent.max(a.cpu_percent),
            );
            assert!(
                cpu >= lo - 1.0 && cpu <= hi + 1.0,
                "CPU {cpu}% outside [{lo}, {hi}] (± 1)"
            );
        }
        assert!(infos[0].cpu_percent.unwrap() > 1.0, "{:?}", infos[0]);
        assert!(infos[1].cpu_percent.unwrap() < 5.0, "{:?}", infos[1]);
    }
    for who in ["busy", "idle"] {
        assert!(
            m.kill(&t(who), Duration::from_secs(5))
                .await
                .unwrap()
                .stopped
        );
    }
}

/// `list_each` as made hands over the same info objects as sorted by target (only the order
/// may differ), with every kind of entry: a running helper from memory and disk, one
/// only in memory (its PID file removed), a stale and a corrupt PID file; each target
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_listing_has_the_infos_of_the_sorted_one() {
    init_tracing();
    let dir = run_dir();
    let mut o = opts(dir.path());
    o.usage = UsageSampling::Lifetime;
    let spawner = Arc::new(LinuxSpawner::new().unwrap());
    let (m, _) = Manager::open(store(Backend::PidFile, dir.path()), spawner, o)
        .await
        .unwrap();
    m.spawn(&t("both"), sleeper(31)).await.unwrap();
    m.spawn(&t("memory-only"), sleeper(32)).await.unwrap();
    let s3 = dir.path().join("s3");
    std::fs::remove_file(s3.join("memory-only.pid")).unwrap();
    std::fs::write(s3.join("corrupt.pid"), b"not a pid\n").unwrap();
    // A PID no process holds: a child of ours, exited and reaped (PIDs are handed out
    // in increasing order, so it is not reused within this test).
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    std::fs::write(s3.join("stale.pid"), format!("{}\n", gone.id())).unwrap();

    // The fields that do not change between two listings a moment apart (`started_at`
    // is derived from the clocks at each read, so it may move by a few nanoseconds).
    let key = |i: &dms_core::ProcessInfo| {
        (
            i.target.clone(),
            i.pid,
            i.state,
            i.source,
            i.pid_file_exists,
            i.pid_file.clone(),
            i.cmdline.clone(),
            i.detail.clone(),
            i.started_at.is_some(),
            i.threads,
        )
    };
    let mut sorted = Vec::new();
    m.list_each(ListOrder::ByTarget, |i| sorted.push(key(&i)))
        .await
        .unwrap();
    let mut unordered = Vec::new();
    m.list_each(ListOrder::AsMade, |i| unordered.push(key(&i)))
        .await
        .unwrap();
    assert_eq!(sorted.len(), 4, "{sorted:?}");
    assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0), "{sorted:?}");
    unordered.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(unordered, sorted);
    let states: Vec<_> = sorted.iter().map(|k| (k.0.as_str(), k.2)).collect();
    assert_eq!(
        states,
        [
            ("both", ProcessState::Running),
            ("corrupt", ProcessState::Corrupt),
            ("memory-only", ProcessState::Running),
            ("stale", ProcessState::Stale),
        ]
    );
    for who in ["both", "memory-only"] {
        assert!(
            m.kill(&t(who), Duration::from_secs(5))
                .await
                .unwrap()
                .stopped
        );
    }
}

// Each scenario above that takes a backend, once per backend: `pid_files::NAME` and
// `sqlite::NAME`.
dms_testkit::per_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async;
    pid_files => Backend::PidFile, sqlite => Backend::Sqlite;
    [spawn_and_kill, restart_adopts_running_helper, foreign_pid_is_never_signalled, two_processes_race]
}
