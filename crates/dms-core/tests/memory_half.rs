//! The manager's memory half: a lookup that finds a helper proven ours on disk loads it
//! into memory and watches it ("Automatically loaded!"), not in one-shot mode;
//! `sync_target` loads a PID file written from outside and ends the tracking of a helper
//! whose file was removed, without a signal, and leaves the manager's own writes alone;
//! a watched helper is answered from memory without a probe; the background sampler
//! shows CPU use over the last interval.
//!
//! Real processes (the Linux spawner) where the kernel matters; the fake process table
//! where the test must see that nothing was probed. Every process signalled here was
//! started by this test, directly or as a helper of a manager it runs.

mod common;

use common::{fake, init_tracing, run_dir, store, t, Backend};
use dms_core::{Event, HelperSpec, Manager, ManagerOptions, ProcessState, Source, UsageSampling};
use dms_proc::linux::LinuxSpawner;
use dms_proc::{Pid, Usage};
use dms_store::{MemoryStore, PidStore, TargetId};
use nix::sys::signal::{kill, Signal};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;

async fn open_with(
    backend: Backend,
    run_dir: &Path,
    tune: impl FnOnce(&mut ManagerOptions),
) -> Manager {
    let mut opts = ManagerOptions::new(run_dir);
    opts.failed_start_grace = Duration::from_secs(5);
    opts.usage = UsageSampling::Lifetime;
    tune(&mut opts);
    let spawner = Arc::new(LinuxSpawner::new().unwrap());
    Manager::open(store(backend, run_dir), spawner, opts)
        .await
        .unwrap()
        .0
}

/// A process of the test's own (not started by dms) that writes `marker` if it ever
/// gets SIGTERM; stopped with SIGKILL when dropped.
struct Own {
    child: Child,
    marker: PathBuf,
}

impl Own {
    fn start(dir: &Path, name: &str) -> Own {
        let marker = dir.join(format!("{name}.sigterm"));
        let script = format!(
            "trap 'echo TERM > {}; exit 0' TERM; while :; do sleep 1; done",
            marker.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Own { child, marker }
    }

    fn pid(&self) -> Pid {
        Pid::new(i64::from(self.child.id())).unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a PID file as the existing deployment does (the bare number), after the
/// process started: the bare-file rule proves it ours.
fn write_pid_file(run_dir: &Path, target: &TargetId, pid: Pid) -> PathBuf {
    let path = target.pid_file_in(&run_dir.join("s3"));
    std::fs::write(&path, pid.get().to_string()).unwrap();
    path
}

async fn next_event(rx: &mut broadcast::Receiver<Event>, what: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if what(&e) => return e,
            Ok(Ok(_)) => {}
            other => panic!("no such event within 10 s: {other:?}"),
        }
    }
}

fn in_memory(m: &Manager, target: &TargetId) -> Option<Pid> {
    m.memory_snapshot()
        .into_iter()
        .find(|(t, _)| t == target)
        .map(|(_, id)| id.pid)
}

async fn lookups_load_a_proven_helper_found_on_disk(backend: Backend) {
    init_tracing();
    let dir = run_dir();
    let m = open_with(backend, dir.path(), |_| {}).await;
    let mut events = m.subscribe();

    // process_info: answered, and loaded.
    let (a, b) = (t("a"), t("b"));
    let mut own_a = Own::start(dir.path(), "a");
    write_pid_file(dir.path(), &a, own_a.pid());
    let info = m.process_info(&a).await.unwrap();
    assert_eq!(info.state, ProcessState::Running, "{info:?}");
    assert_eq!(info.source, Some(Source::Both));
    assert_eq!(in_memory(&m, &a), Some(own_a.pid()));
    let e = next_event(&mut events, |e| matches!(e, Event::Adopted { .. })).await;
    assert_eq!(
        e,
        Event::Adopted {
            target: a.clone(),
            pid: own_a.pid()
        }
    );

    // is_running: the same.
    let own_b = Own::start(dir.path(), "b");
    write_pid_file(dir.path(), &b, own_b.pid());
    assert!(m.is_running(&b).await.unwrap());
    assert_eq!(in_memory(&m, &b), Some(own_b.pid()));
    next_event(
        &mut events,
        |e| matches!(e, Event::Adopted { target, .. } if *target == b),
    )
    .await;

    // Loaded means watched: its exit is seen (the test stops its own process).
    kill(
        nix::unistd::Pid::from_raw(own_a.pid().get()),
        Signal::SIGKILL,
    )
    .unwrap();
    let exited = next_event(&mut events, |e| matches!(e, Event::Exited { .. })).await;
    assert_eq!(exited.target(), &a);
    assert!(!own_a.alive());
    assert_eq!(in_memory(&m, &a), None);

    // A one-shot manager answers from disk and keeps nothing.
    let one_dir = run_dir();
    let one = open_with(backend, one_dir.path(), |o| o.one_shot = true).await;
    write_pid_file(one_dir.path(), &b, own_b.pid());
    let info = one.process_info(&b).await.unwrap();
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!(info.source, Some(Source::Disk));
    assert!(one.is_running(&b).await.unwrap());
    assert!(one.memory_snapshot().is_empty());
}

dms_testkit::per_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async;
    pid_files => Backend::PidFile, sqlite => Backend::Sqlite;
    [lookups_load_a_proven_helper_found_on_disk]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_loads_written_files_and_untracks_removed_ones_without_a_signal() {
    init_tracing();
    let dir = run_dir();
    let m = open_with(Backend::Sqlite, dir.path(), |_| {}).await;
    let mut events = m.subscribe();
    let x = t("x");

    // Written from outside: loaded, once.
    let mut own = Own::start(dir.path(), "x");
    let path = write_pid_file(dir.path(), &x, own.pid());
    let e = m.sync_target(&x).await.unwrap();
    assert_eq!(
        e,
        Some(Event::Adopted {
            target: x.clone(),
            pid: own.pid()
        })
    );
    assert_eq!(in_memory(&m, &x), Some(own.pid()));
    assert_eq!(m.sync_target(&x).await.unwrap(), None);

    // Removed from outside: no longer tracked, still running, never signalled.
    std::fs::remove_file(&path).unwrap();
    let e = m.sync_target(&x).await.unwrap();
    assert_eq!(
        e,
        Some(Event::Untracked {
            target: x.clone(),
            pid: own.pid()
        })
    );
    assert_eq!(in_memory(&m, &x), None);
    assert_eq!(
        m.process_info(&x).await.unwrap().state,
        ProcessState::Absent
    );
    assert!(own.alive());
    assert!(!own.marker.exists(), "the helper got SIGTERM");

    // The manager's own spawn and kill are no change from outside.
    let y = t("y");
    let spec = HelperSpec {
        program: "sleep".into(),
        args: vec!["300".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..HelperSpec::default()
    };
    let pid = m.spawn(&y, spec).await.unwrap().pid.unwrap();
    assert_eq!(m.sync_target(&y).await.unwrap(), None);
    assert_eq!(in_memory(&m, &y), Some(pid));
    assert!(m.kill(&y, Duration::from_secs(5)).await.unwrap().stopped);
    assert_eq!(m.sync_target(&y).await.unwrap(), None);

    // A stale file is left for cleanup: the sync never removes a file.
    let z = t("z");
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let gone = Pid::new(i64::from(gone.id())).unwrap();
    let stale = write_pid_file(dir.path(), &z, gone);
    assert_eq!(m.sync_target(&z).await.unwrap(), None);
    assert!(stale.exists());
    assert_eq!(m.sync_all().await.unwrap(), Vec::new());

    // Of adoptions and ends of tracking, only those returned.
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        if matches!(e, Event::Adopted { .. } | Event::Untracked { .. }) {
            seen.push(e);
        }
    }
    assert_eq!(
        seen,
        [
            Event::Adopted {
                target: x.clone(),
                pid: own.pid()
            },
            Event::Untracked {
                target: x.clone(),
                pid: own.pid()
            }
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_samples_show_cpu_use_over_the_last_interval() {
    init_tracing();
    let dir = run_dir();
    let m = open_with(Backend::PidFile, dir.path(), |o| {
        o.usage = UsageSampling::Background {
            every: Duration::from_millis(500),
        };
    })
    .await;
    let env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    let busy = HelperSpec {
        program: "sh".into(),
        args: vec!["-c".into(), "while :; do :; done".into()],
        env: env.clone(),
        ..HelperSpec::default()
    };
    let idle = HelperSpec {
        program: "sleep".into(),
        args: vec!["300".into()],
        env,
        ..HelperSpec::default()
    };
    let (tb, ti) = (t("busy"), t("idle"));
    let busy_pid = m.spawn(&tb, busy).await.unwrap().pid.unwrap();
    m.spawn(&ti, idle).await.unwrap();

    let usage = |info: &dms_core::ProcessInfo, at: Option<SystemTime>| {
        let age = at.map(|at| SystemTime::now().duration_since(at).unwrap_or_default());
        (info.cpu_percent, age)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut b, mut i);
    loop {
        let info = m.process_info(&tb).await.unwrap();
        let at = info.usage_sampled_at;
        b = usage(&info, at);
        let info = m.process_info(&ti).await.unwrap();
        let at = info.usage_sampled_at;
        i = usage(&info, at);
        // Near 100 on an idle machine; the bound leaves room for a loaded one.
        let fresh = |age: Option<Duration>| age.is_some_and(|a| a <= Duration::from_secs(2));
        if b.0.is_some_and(|c| c > 30.0) && i.0.is_some_and(|c| c < 5.0) && fresh(b.1) && fresh(i.1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "busy {b:?}, idle {i:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("busy helper {b:?}, idle helper {i:?}");

    // Stopped, the busy helper uses nothing: the sample says so at once, where its
    // lifetime average would stay near 100 %.
    kill(nix::unistd::Pid::from_raw(busy_pid.get()), Signal::SIGSTOP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = m.process_info(&tb).await.unwrap();
        let at = info.usage_sampled_at;
        if let (Some(c), Some(detail)) = (info.cpu_percent, &info.detail) {
            if c < 1.0 {
                assert!(detail.contains("SIGSTOP"), "{detail}");
                assert!(at.is_some());
                break;
            }
        }
        assert!(Instant::now() < deadline, "stopped helper: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // kill continues it after SIGTERM.
    assert!(m.kill(&tb, Duration::from_secs(5)).await.unwrap().stopped);
    assert!(m.kill(&ti, Duration::from_secs(5)).await.unwrap().stopped);
}

#[tokio::test]
async fn a_watched_helper_is_answered_from_memory_without_a_probe() {
    init_tracing();
    let dir = run_dir();
    let store = Arc::new(MemoryStore::new(dir.path().join("s3")));
    let fake = fake(16);
    let mut opts = ManagerOptions::new(dir.path());
    opts.usage = UsageSampling::Lifetime;
    let (m, _) = Manager::open(store.clone(), Arc::new(fake.clone()), opts)
        .await
        .unwrap();
    let a = t("a");
    let spec = HelperSpec {
        program: "/usr/bin/helper".into(),
        ..HelperSpec::default()
    };
    let pid = m.spawn(&a, spec).await.unwrap().pid.unwrap();
    // The first lookup probed it; from now on a probe would be refused.
    assert!(fake.deny_probe(pid));
    let info = m.process_info(&a).await.unwrap();
    assert_eq!(info.state, ProcessState::Running, "{info:?}");
    assert_eq!(info.source, Some(Source::Both));
    assert_eq!(info.cmdline, Some(vec!["/usr/bin/helper".to_owned()]));
    assert!(info.started_at.is_some());
    // Usage cannot be read either: it is left empty rather than guessed.
    assert_eq!(info.cpu_percent, None);
    let listed = m.list().await.unwrap();
    assert_eq!(listed[0].state, ProcessState::Running);

    // The PID file removed behind the manager's back: memory only.
    store.remove(&a).await.unwrap();
    let info = m.process_info(&a).await.unwrap();
    assert_eq!(info.source, Some(Source::Memory));
    assert!(!info.pid_file_exists);

    // Its exit takes it out of memory: then it is absent.
    let mut events = m.subscribe();
    assert!(fake.exit(pid, 0));
    next_event(&mut events, |e| matches!(e, Event::Exited { .. })).await;
    assert_eq!(
        m.process_info(&a).await.unwrap().state,
        ProcessState::Absent
    );

    // With usage readable again, a sampled helper shows its sample.
    let b = t("b");
    let spec = HelperSpec {
        program: "/usr/bin/helper".into(),
        ..HelperSpec::default()
    };
    let pid = m.spawn(&b, spec).await.unwrap().pid.unwrap();
    let usage = Usage {
        cpu_seconds: 1.0,
        cpu_percent: 12.5,
        rss_bytes: 4096,
        threads: 3,
        stopped: false,
    };
    assert!(fake.set_usage(pid, usage));
    let info = m.process_info(&b).await.unwrap();
    let at = info.usage_sampled_at;
    assert_eq!(info.rss_bytes, Some(4096));
    assert_eq!(info.threads, Some(3));
    assert!(at.is_some());
}

/// A helper is tracked before its program runs (held at the start barrier, with dms's
/// command line): a sampler probing all the time never keeps that as the helper's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_being_spawned_is_not_observed_before_its_program_runs() {
    init_tracing();
    let dir = run_dir();
    let m = open_with(Backend::PidFile, dir.path(), |o| {
        o.usage = UsageSampling::Background {
            every: Duration::from_millis(10),
        };
    })
    .await;
    for n in 0..20 {
        let target = t(&format!("s{n}"));
        let spec = HelperSpec {
            program: "sleep".into(),
            args: vec![format!("{}", 300 + n).into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            ..HelperSpec::default()
        };
        m.spawn(&target, spec).await.unwrap();
    }
    // Sampled a few times over: every helper has a background sample (taken before the
    // question, so not read in line) from three intervals or more after the last spawn.
    let spawned = SystemTime::now() + Duration::from_millis(30);
    let all_sampled = dms_testkit::wait_for_future(Duration::from_secs(10), || {
        let m = &m;
        async move {
            for n in 0..20 {
                let asked = SystemTime::now();
                let at = m
                    .process_info(&t(&format!("s{n}")))
                    .await
                    .unwrap()
                    .usage_sampled_at;
                if !at.is_some_and(|at| at >= spawned && at < asked) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(all_sampled, "the sampler did not sample every helper");
    for n in 0..20 {
        let target = t(&format!("s{n}"));
        let info = m.process_info(&target).await.unwrap();
        assert_eq!(
            info.cmdline,
            Some(vec!["sleep".to_owned(), format!("{}", 300 + n)]),
            "{info:?}"
        );
        assert!(
            m.kill(&target, Duration::from_secs(5))
                .await
                .unwrap()
                .stopped
        );
    }
}
