//! The manager's behaviour over the fake process table: spawn, refusal, replace, kill,
//! exit watching, adopt, recovery, cleanup, info and events, with scripted failures.

mod common;

use common::{fake, init_tracing, run_dir, t};
use dms_core::{
    Error, Event, HelperSpec, KillStep, Manager, ManagerOptions, ProcessState, RemovalReason,
    Source, UsageSampling,
};
use dms_proc::fake::{FakeSpawner, SpawnFailure};
use dms_proc::{ExitStatus, Pid, Signal};
use dms_store::{MemoryStore, PidFileStore, PidStore, Record, StoreOp, Stored};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

fn opts(dir: &tempfile::TempDir) -> ManagerOptions {
    let mut o = ManagerOptions::new(dir.path());
    o.usage = UsageSampling::Off;
    o.failed_start_grace = Duration::from_millis(50);
    o
}

fn helper() -> HelperSpec {
    HelperSpec {
        program: "/usr/bin/s3vaultfuse.py".into(),
        args: vec!["--foreground".into()],
        env: vec![("AWS_SECRET_ACCESS_KEY".into(), "very-secret-value".into())],
        mount: Some("/mnt/vault/target-1".into()),
        ..HelperSpec::default()
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<MemoryStore>,
    fake: FakeSpawner,
    manager: Manager,
}

async fn world() -> World {
    init_tracing();
    let dir = run_dir();
    let store = Arc::new(MemoryStore::new(dir.path().join("s3")));
    let fake = fake(16);
    let (manager, _) = Manager::open(store.clone(), Arc::new(fake.clone()), opts(&dir))
        .await
        .unwrap();
    World {
        _dir: dir,
        store,
        fake,
        manager,
    }
}

async fn next_event(rx: &mut broadcast::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event within 5 s")
        .expect("event channel open")
}

#[tokio::test]
async fn spawn_records_before_exec_and_tracks_in_both_places() {
    let w = world().await;
    let mut events = w.manager.subscribe();
    let info = w.manager.spawn(&t("target-1"), helper()).await.unwrap();
    let pid = info.pid.unwrap();
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!(info.source, Some(Source::Both));
    assert!(info.pid_file_exists);
    assert_eq!(info.mount.as_deref(), Some("/mnt/vault/target-1".as_ref()));
    assert_eq!(
        info.cmdline.as_deref(),
        Some(
            &[
                "/usr/bin/s3vaultfuse.py".to_owned(),
                "--foreground".to_owned()
            ][..]
        )
    );
    // The record holds identity and metadata, never environment values.
    let Some(Stored::Valid(rec)) = w.store.get(&t("target-1")).await.unwrap() else {
        panic!("no record")
    };
    assert_eq!(rec.pid, pid);
    assert!(rec.identity.is_some());
    assert!(!format!("{rec:?}").contains("very-secret-value"));
    assert_eq!(w.fake.running_ours().len(), 1);
    assert_eq!(
        next_event(&mut events).await,
        Event::Spawned {
            target: t("target-1"),
            pid
        }
    );
    assert!(w.manager.is_running(&t("target-1")).await.unwrap());
}

#[tokio::test]
async fn second_spawn_is_refused_and_replace_stops_the_old_one_first() {
    let w = world().await;
    let first = w
        .manager
        .spawn(&t("a"), helper())
        .await
        .unwrap()
        .pid
        .unwrap();
    match w.manager.spawn(&t("a"), helper()).await {
        Err(Error::AlreadyRunning { target, pid }) => {
            assert_eq!((target, pid), (t("a"), first));
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    assert_eq!(w.fake.running_ours().len(), 1);
    let replaced = w
        .manager
        .spawn(
            &t("a"),
            HelperSpec {
                replace: Some(Duration::from_millis(50)),
                ..helper()
            },
        )
        .await
        .unwrap();
    assert_ne!(replaced.pid.unwrap(), first);
    let running = w.fake.running_ours();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].pid, replaced.pid.unwrap());
    assert_eq!(w.fake.signals().len(), 1, "only the old helper got SIGTERM");
}

#[tokio::test]
async fn kill_escalates_and_clears_both_places() {
    let w = world().await;
    let pid = w
        .manager
        .spawn(&t("a"), helper())
        .await
        .unwrap()
        .pid
        .unwrap();
    w.fake.ignore_term(pid);
    let report = w
        .manager
        .kill(&t("a"), Duration::from_millis(20))
        .await
        .unwrap();
    assert!(report.was_running && report.stopped);
    assert_eq!(report.signal, Some(Signal::Kill));
    assert_eq!(
        report.steps,
        [
            KillStep::Sigterm,
            KillStep::Sigkill,
            KillStep::ForgetMemory,
            KillStep::RemovePidFile
        ]
    );
    assert!(w.manager.memory_snapshot().is_empty());
    assert_eq!(w.store.get(&t("a")).await.unwrap(), None);
    assert!(w.fake.running_ours().is_empty());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["signal"], "SIGKILL");

    let again = w
        .manager
        .kill(&t("a"), Duration::from_millis(20))
        .await
        .unwrap();
    assert!(!again.was_running && !again.stopped && again.pid.is_none());
}

#[tokio::test]
async fn exit_is_noticed_without_polling_and_clears_memory_and_disk() {
    let w = world().await;
    let mut events = w.manager.subscribe();
    let pid = w
        .manager
        .spawn(&t("a"), helper())
        .await
        .unwrap()
        .pid
        .unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::Spawned { .. }
    ));
    w.fake.crash(pid, 11);
    assert_eq!(
        next_event(&mut events).await,
        Event::Exited {
            target: t("a"),
            pid,
            status: ExitStatus::Signaled(11)
        }
    );
    assert!(w.manager.memory_snapshot().is_empty());
    assert_eq!(w.store.get(&t("a")).await.unwrap(), None);
    assert!(!w.manager.is_running(&t("a")).await.unwrap());
}

#[tokio::test]
async fn a_record_that_cannot_be_written_means_the_program_never_runs() {
    let w = world().await;
    w.store.fail_next(StoreOp::Put);
    let err = w.manager.spawn(&t("a"), helper()).await.unwrap_err();
    assert!(matches!(err, Error::Store(_)), "{err}");
    assert_eq!(w.fake.spawn_count(), 1);
    assert!(w.fake.running_ours().is_empty());
    assert!(w.fake.processes().is_empty(), "the held helper exited");
    assert!(w.manager.memory_snapshot().is_empty());
}

#[tokio::test]
async fn a_program_that_cannot_start_leaves_no_record() {
    let w = world().await;
    w.fake.fail_next_spawn(SpawnFailure::NotFound);
    let err = w.manager.spawn(&t("a"), helper()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("s3vaultfuse.py"), "{msg}");
    assert_eq!(w.store.get(&t("a")).await.unwrap(), None);
    assert!(w.manager.memory_snapshot().is_empty());
    assert!(w.fake.processes().is_empty());
}

#[tokio::test]
async fn adopt_requires_a_live_process_and_tracks_it() {
    let w = world().await;
    let stranger = w.fake.spawn_foreign();
    let info = w.manager.adopt(&t("a"), stranger.pid).await.unwrap();
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!(
        w.manager.memory_snapshot(),
        vec![(t("a"), stranger.clone())]
    );
    // Another target cannot adopt the same PID.
    assert!(matches!(
        w.manager.adopt(&t("b"), stranger.pid).await,
        Err(Error::AlreadyTracked { .. })
    ));
    // A dead PID cannot be adopted.
    let gone = w.fake.spawn_foreign();
    w.fake.exit(gone.pid, 0);
    assert!(matches!(
        w.manager.adopt(&t("b"), gone.pid).await,
        Err(Error::NotRunning { .. })
    ));
    // Nor a zombie.
    let z = w.fake.spawn_foreign();
    w.fake.make_zombie(z.pid, 0);
    assert!(matches!(
        w.manager.adopt(&t("b"), z.pid).await,
        Err(Error::NotRunning { .. })
    ));
    // Nor dms itself.
    let me = Pid::new(i64::from(std::process::id())).unwrap();
    assert!(matches!(
        w.manager.adopt(&t("b"), me).await,
        Err(Error::Proc(dms_proc::ProcError::SelfPid(_)))
    ));
    // Its exit is watched too.
    let mut events = w.manager.subscribe();
    w.fake.exit(stranger.pid, 3);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Exited { .. }
    ));
    assert_eq!(w.store.get(&t("a")).await.unwrap(), None);
}

#[tokio::test]
async fn restart_recovers_live_helpers_clears_stale_and_reports_foreign() {
    init_tracing();
    let dir = run_dir();
    let store = Arc::new(MemoryStore::new(dir.path().join("s3")));
    let fake = fake(4);
    let (m1, _) = Manager::open(store.clone(), Arc::new(fake.clone()), opts(&dir))
        .await
        .unwrap();
    // Each its own mount: another running target's recorded mount is refused.
    let own = |name: &str| HelperSpec {
        mount: Some(format!("/mnt/vault/{name}").into()),
        ..helper()
    };
    let live = m1
        .spawn(&t("live"), own("live"))
        .await
        .unwrap()
        .pid
        .unwrap();
    let dies = m1
        .spawn(&t("dies"), own("dies"))
        .await
        .unwrap()
        .pid
        .unwrap();
    let reused = m1
        .spawn(&t("reused"), own("reused"))
        .await
        .unwrap()
        .pid
        .unwrap();
    drop(m1); // the manager goes away; helpers stay
    assert_eq!(fake.running_ours().len(), 3);
    fake.exit(dies, 0);
    fake.exit(reused, 0);
    let stranger = fake.spawn_foreign_at(reused).unwrap();
    store.insert_corrupt(&t("junk"), "not a decimal PID: \"abc\"");

    let (m2, report) = Manager::open(store.clone(), Arc::new(fake.clone()), opts(&dir))
        .await
        .unwrap();
    let pairs = |v: &[dms_core::TargetPid]| {
        v.iter()
            .map(|p| (p.target.to_string(), p.pid))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&report.adopted), vec![("live".to_owned(), live)]);
    assert_eq!(pairs(&report.cleared), vec![("dies".to_owned(), dies)]);
    assert_eq!(pairs(&report.foreign), vec![("reused".to_owned(), reused)]);
    assert_eq!(report.corrupt.len(), 1);
    assert!(fake.signals().is_empty(), "recovery never signals");
    assert!(m2.is_running(&t("live")).await.unwrap());
    assert!(!m2.is_running(&t("reused")).await.unwrap());
    let info = m2.process_info(&t("reused")).await.unwrap();
    assert_eq!(info.state, ProcessState::Foreign);

    let stats = m2.stats().await.unwrap();
    assert_eq!(
        (
            stats.total_tracked,
            stats.pid_files_on_disk,
            stats.running,
            stats.foreign,
            stats.corrupt
        ),
        (1, 3, 1, 1, 1)
    );

    // Kill of a foreign entry: cleared, never signalled.
    let k = m2
        .kill(&t("reused"), Duration::from_millis(10))
        .await
        .unwrap();
    assert!(!k.was_running);
    assert_eq!(k.steps, [KillStep::ClearForeign]);
    assert!(fake.signals().is_empty());
    assert!(fake.processes().iter().any(|p| p.identity == stranger));

    let cleaned = m2.cleanup_dead().await.unwrap();
    assert_eq!(cleaned.removed.len(), 1);
    assert_eq!(cleaned.removed[0].reason, RemovalReason::Corrupt);
    assert!(fake.signals().is_empty());

    // cleanup_all stops what is running, and only when asked.
    let all = m2.cleanup_all(Duration::from_millis(10)).await.unwrap();
    assert_eq!(all.stopped, vec![t("live")]);
    assert!(fake.running_ours().is_empty());
    assert!(fake.signals().iter().all(|s| s.ours));
}

#[tokio::test]
async fn dropping_the_manager_never_stops_helpers() {
    let w = world().await;
    w.manager.spawn(&t("a"), helper()).await.unwrap();
    let World { fake, manager, .. } = w;
    drop(manager);
    tokio::task::yield_now().await;
    assert_eq!(fake.running_ours().len(), 1);
    assert!(fake.signals().is_empty());
}

#[tokio::test]
async fn a_denied_probe_is_not_dead() {
    let w = world().await;
    let stranger = w.fake.spawn_foreign();
    w.store
        .put(&t("other-user"), &Record::bare(stranger.pid))
        .await
        .unwrap();
    w.fake.deny_probe(stranger.pid);
    let report = w.manager.reload().await.unwrap();
    assert_eq!(report.unverified.len(), 1);
    assert!(report.cleared.is_empty());
    let cleaned = w.manager.cleanup_dead().await.unwrap();
    assert!(cleaned.removed.is_empty());
    assert!(matches!(
        w.store.get(&t("other-user")).await.unwrap(),
        Some(Stored::Valid(_))
    ));
    assert!(matches!(
        w.manager.is_running(&t("other-user")).await,
        Err(Error::Unverified { .. })
    ));
    assert!(matches!(
        w.manager
            .kill(&t("other-user"), Duration::from_millis(10))
            .await,
        Err(Error::Unverified { .. })
    ));
    assert!(w.fake.signals().is_empty());
    let info = w.manager.process_info(&t("other-user")).await.unwrap();
    assert_eq!(info.state, ProcessState::Unverified);
}

#[tokio::test]
async fn deleted_pid_file_of_a_live_helper_is_rewritten_from_memory() {
    let w = world().await;
    let pid = w
        .manager
        .spawn(&t("a"), helper())
        .await
        .unwrap()
        .pid
        .unwrap();
    w.store.remove(&t("a")).await.unwrap();
    let info = w.manager.process_info(&t("a")).await.unwrap();
    assert_eq!(info.source, Some(Source::Memory));
    assert!(info.running);
    let report = w.manager.reload().await.unwrap();
    assert_eq!(report.repaired.len(), 1);
    assert!(matches!(w.store.get(&t("a")).await.unwrap(), Some(Stored::Valid(r)) if r.pid == pid));
}

#[tokio::test]
async fn info_serialises_to_the_cli_shape() {
    let w = world().await;
    let info = w.manager.spawn(&t("target-123"), helper()).await.unwrap();
    let json = serde_json::to_value(&info).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "target",
        "pid",
        "state",
        "running",
        "pid_file",
        "pid_file_exists",
        "source",
        "started_at",
        "uptime_secs",
        "cpu_percent",
        "rss_bytes",
        "threads",
        "cmdline",
        "mount",
        "mounted",
        "mount_state",
    ];
    let mut got = keys.clone();
    got.sort_unstable();
    expected.sort_unstable();
    assert_eq!(got, expected);
    assert_eq!(json["state"], "running");
    assert_eq!(json["source"], "both");
    assert_eq!(json["target"], "target-123");
    assert_eq!(json["pid"], info.pid.unwrap().get());
    let started = json["started_at"].as_str().unwrap();
    assert!(started.ends_with('Z') && started.len() == 20, "{started}");
    // The recorded mount (never mounted by the fake helper) is probed on the real host.
    assert_eq!(json["mount"], "/mnt/vault/target-1");
    assert_eq!(json["mounted"], false);
    assert_eq!(json["mount_state"], "unmounted");
    let absent = w.manager.process_info(&t("nothing")).await.unwrap();
    let json = serde_json::to_value(&absent).unwrap();
    assert_eq!(json["state"], "absent");
    assert!(json["source"].is_null() && json["pid"].is_null());
    let stats = serde_json::to_value(w.manager.stats().await.unwrap()).unwrap();
    for k in [
        "total_tracked",
        "pid_files_on_disk",
        "running",
        "stale",
        "foreign",
        "corrupt",
        "stale_mounts",
        "backend",
        "run_dir",
    ] {
        assert!(stats.get(k).is_some(), "stats lacks {k}");
    }
    assert_eq!(stats["backend"], "memory");
}

#[tokio::test]
async fn bare_pid_file_identity_uses_the_file_time() {
    // PID files alone: a process that started before its file was written is ours, one
    // that started after is foreign. The fake clock starts in 2023, so every fake
    // process started long before a file written now: ours, unless the file is older.
    init_tracing();
    let dir = run_dir();
    let store = Arc::new(PidFileStore::open(dir.path()).unwrap());
    let fake = fake(8);
    let (m, _) = Manager::open(store.clone(), Arc::new(fake.clone()), opts(&dir))
        .await
        .unwrap();
    let p = fake.spawn_foreign();
    std::fs::write(dir.path().join("s3/mine.pid"), format!("{}", p.pid)).unwrap();
    let q = fake.spawn_foreign();
    let path = dir.path().join("s3/old.pid");
    std::fs::write(&path, format!("{}\n", q.pid)).unwrap();
    // Written before the fake boot: q started after it.
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        .unwrap();
    drop(f);
    let report = m.reload().await.unwrap();
    assert_eq!(report.adopted.len(), 1);
    assert_eq!(report.adopted[0].pid, p.pid);
    assert_eq!(report.foreign.len(), 1);
    assert_eq!(report.foreign[0].pid, q.pid);
}

#[tokio::test]
async fn a_copied_pid_file_never_lets_one_target_stop_another_targets_helper() {
    let w = world().await;
    let pid = w
        .manager
        .spawn(&t("a"), helper())
        .await
        .unwrap()
        .pid
        .unwrap();
    // An operator copies a.pid to b.pid (same PID; the memory store keeps identity).
    let Some(Stored::Valid(rec)) = w.store.get(&t("a")).await.unwrap() else {
        panic!()
    };
    w.store.put(&t("b"), &rec).await.unwrap();
    let report = w.manager.reload().await.unwrap();
    assert_eq!(report.foreign.len(), 1, "{report:?}");
    assert_eq!(report.foreign[0].target, t("b"));
    assert!(!w.manager.is_running(&t("b")).await.unwrap());
    let k = w
        .manager
        .kill(&t("b"), Duration::from_millis(10))
        .await
        .unwrap();
    assert!(!k.was_running);
    assert!(w.fake.signals().is_empty());
    assert!(w.manager.is_running(&t("a")).await.unwrap());
    assert_eq!(w.fake.running_ours()[0].pid, pid);
}

#[test]
fn manager_is_send_sync_and_cheap_to_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Manager>();
}
