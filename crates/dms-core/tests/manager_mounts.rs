//! The manager's mount logic over a fake mount table ([`FakeMounts`]) and the fake
//! process table: readiness at spawn, cleanup of stale and foreign mounts, and the
//! unmount-first kill, without root or `/dev/fuse`.

mod common;

use common::{fake, init_tracing, run_dir, t};
use dms_core::mount::fake::{Health, MountCall};
use dms_core::mount::{FakeMounts, MountEntry, MountRegistry};
use dms_core::{
    Error, HelperSpec, KillStep, Manager, ManagerOptions, MountOutcome, MountState, UsageSampling,
};
use dms_proc::fake::FakeSpawner;
use dms_store::{MemoryStore, PidStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct World {
    run: tempfile::TempDir,
    _mnt_root: tempfile::TempDir,
    /// The helper's mount directory (canonical: as the manager records it).
    dir: PathBuf,
    store: Arc<MemoryStore>,
    fake: FakeSpawner,
    mounts: FakeMounts,
    manager: Manager,
}

impl World {
    fn registry(&self) -> MountRegistry {
        MountRegistry::new(self.run.path())
    }

    /// A helper that mounts `self.dir`; spawn waits `ready` for its mount.
    fn helper(&self, ready: Duration) -> HelperSpec {
        HelperSpec {
            program: "/usr/bin/s3vaultfuse.py".into(),
            args: vec!["--foreground".into()],
            mount: Some(self.dir.clone()),
            ready_timeout: Some(ready),
            ..HelperSpec::default()
        }
    }

    /// Spawns target `a`, whose helper mounts (answering) 50 ms after the spawn starts
    /// waiting; returns its PID and the mount.
    async fn spawn_mounted(&self) -> (dms_proc::Pid, MountEntry) {
        self.mounts
            .mount_when_awaited(&self.dir, Duration::from_millis(50), Health::Answers);
        let info = self
            .manager
            .spawn(&t("a"), self.helper(Duration::from_secs(10)))
            .await
            .expect("the helper mounts");
        assert_eq!(info.mount_state, Some(MountState::Mounted));
        let entry = self
            .mounts
            .table()
            .into_iter()
            .find(|m| m.mount_point == self.dir)
            .expect("the helper's mount is in the table");
        (info.pid.unwrap(), entry)
    }

    fn detaches_and_unmounts(&self) -> Vec<MountCall> {
        self.mounts
            .calls()
            .into_iter()
            .filter(|c| matches!(c, MountCall::DetachExact(..) | MountCall::UnmountExact(..)))
            .collect()
    }
}

async fn world() -> World {
    init_tracing();
    let run = run_dir();
    let mnt_root = tempfile::tempdir().unwrap();
    let dir = mnt_root.path().canonicalize().unwrap().join("target-a");
    let store = Arc::new(MemoryStore::new(run.path().join("s3")));
    let fake = fake(16);
    let mounts = FakeMounts::new();
    let mut opts = ManagerOptions::new(run.path());
    opts.usage = UsageSampling::Off;
    opts.failed_start_grace = Duration::from_millis(50);
    opts.mounts = Arc::new(mounts.clone());
    let (manager, _) = Manager::open(store.clone(), Arc::new(fake.clone()), opts)
        .await
        .unwrap();
    World {
        run,
        _mnt_root: mnt_root,
        dir,
        store,
        fake,
        mounts,
        manager,
    }
}

/// Waits (up to 5 s) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn spawn_waits_for_the_helpers_mount_and_records_exactly_it() {
    let w = world().await;
    let started = std::time::Instant::now();
    let (pid, entry) = w.spawn_mounted().await;
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "spawn returned before the mount came up"
    );
    assert!(w.fake.running_ours().iter().any(|p| p.pid == pid));
    // The record names this very mount, by its identity.
    let record = w.registry().get("a").expect("a mount record");
    assert_eq!(record.path, w.dir);
    let id = record.identity.expect("the mount's identity is recorded");
    assert!(id.matches(&entry) && id.unique.is_some());
    let calls = w.mounts.calls();
    let waited = calls
        .iter()
        .position(|c| *c == MountCall::WaitForMount(w.dir.clone()))
        .expect("spawn waited for the mount");
    let probed = calls
        .iter()
        .position(|c| *c == MountCall::Probe(w.dir.clone()))
        .expect("spawn probed the mount");
    assert!(waited < probed, "probed after the mount came up: {calls:?}");
}

#[tokio::test]
async fn spawn_fails_not_mounted_when_the_mount_never_appears_and_leaves_nothing() {
    let w = world().await;
    let err = w
        .manager
        .spawn(&t("a"), w.helper(Duration::from_millis(300)))
        .await
        .unwrap_err();
    let Error::NotMounted {
        target,
        path,
        timed_out,
        why,
        ..
    } = &err
    else {
        panic!("expected NotMounted, got {err:?}");
    };
    assert_eq!((target, path), (&t("a"), &w.dir));
    assert!(*timed_out, "{why}");
    assert!(why.contains("not mounted within 0.3 s"), "{why}");
    // No helper, no PID record, no mount record, nothing in memory.
    assert!(w.fake.running_ours().is_empty());
    assert_eq!(w.store.get(&t("a")).await.unwrap(), None);
    assert!(w.registry().get("a").is_none());
    assert!(w.manager.memory_snapshot().is_empty());
    assert!(w.detaches_and_unmounts().is_empty(), "nothing was mounted");
}

#[tokio::test]
async fn spawn_fails_when_the_mount_comes_up_stale_and_its_mount_is_detached_and_aborted() {
    let w = world().await;
    w.mounts
        .mount_when_awaited(&w.dir, Duration::from_millis(20), Health::Stale);
    let err = w
        .manager
        .spawn(&t("a"), w.helper(Duration::from_secs(10)))
        .await
        .unwrap_err();
    let Error::NotMounted { why, timed_out, .. } = &err else {
        panic!("expected NotMounted, got {err:?}");
    };
    assert!(!*timed_out);
    assert!(why.contains("does not answer (mount state stale"), "{why}");
    assert!(
        w.mounts.table().iter().all(|m| m.mount_point != w.dir),
        "the failed helper's mount is detached"
    );
    let calls = w.mounts.calls();
    let detached = calls
        .iter()
        .position(|c| matches!(c, MountCall::DetachExact(p, _) if *p == w.dir))
        .expect("its mount was detached");
    let aborted = calls
        .iter()
        .position(|c| matches!(c, MountCall::ConnAbort(_)))
        .expect("its connection was aborted");
    assert!(detached < aborted, "{calls:?}");
    assert!(w.fake.running_ours().is_empty());
    assert!(w.registry().get("a").is_none());
}

#[tokio::test]
async fn cleanup_detaches_a_stale_mount_and_aborts_its_connection() {
    let w = world().await;
    let mut events = w.manager.subscribe();
    let (pid, entry) = w.spawn_mounted().await;
    // The daemon dies; its mount stays, dead, and a process still holds a file on it.
    w.mounts.set_health(&w.dir, Health::Stale);
    w.mounts.hold_open(&w.dir);
    w.fake.crash(pid, 9);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .unwrap();
        if matches!(ev, dms_core::Event::Exited { .. }) {
            break;
        }
    }
    // The exit leaves the record: the mount is still there.
    until("exit handled", || w.manager.memory_snapshot().is_empty()).await;
    assert!(w.registry().get("a").is_some());
    w.mounts.clear_calls();

    let actions = w.manager.cleanup_mounts().await.unwrap();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0].target, t("a"));
    assert_eq!(actions[0].path, w.dir);
    assert_eq!(actions[0].state, MountState::Stale);
    assert_eq!(actions[0].action, MountOutcome::Detached { aborted: true });
    assert!(!w.mounts.is_mounted(&entry), "detached");
    let conn = w.mounts.connection(entry.minor).unwrap();
    assert!(conn.aborted && !conn.alive, "{conn:?}");
    assert_eq!(
        w.detaches_and_unmounts(),
        [MountCall::DetachExact(w.dir.clone(), entry.mount_id)],
        "exactly the recorded mount was detached, and nothing unmounted"
    );
    assert!(w.registry().get("a").is_none(), "the record is forgotten");
}

#[tokio::test]
async fn cleanup_reports_a_detach_that_fails_with_ebusy_and_keeps_the_record() {
    let w = world().await;
    let (pid, entry) = w.spawn_mounted().await;
    w.mounts.set_health(&w.dir, Health::Stale);
    w.mounts.fail_detach(&w.dir, libc::EBUSY);
    w.fake.exit(pid, 1);
    until("exit handled", || w.manager.memory_snapshot().is_empty()).await;

    let actions = w.manager.cleanup_mounts().await.unwrap();
    assert_eq!(actions.len(), 1, "{actions:?}");
    let MountOutcome::DetachFailed(why) = &actions[0].action else {
        panic!("expected DetachFailed, got {actions:?}");
    };
    assert!(why.contains("busy"), "{why}");
    assert!(w.mounts.is_mounted(&entry), "still there");
    assert!(
        !w.mounts.connection(entry.minor).unwrap().aborted,
        "not aborted: nothing was detached"
    );
    assert!(w.registry().get("a").is_some(), "kept for the next cleanup");
    // The next cleanup detaches it.
    let again = w.manager.cleanup_mounts().await.unwrap();
    assert_eq!(again[0].action, MountOutcome::Detached { aborted: false });
    assert!(!w.mounts.is_mounted(&entry));
}

#[tokio::test]
async fn a_foreign_mount_at_a_recorded_path_is_never_unmounted() {
    let w = world().await;
    let (_pid, mine) = w.spawn_mounted().await;
    // The helper's mount goes away behind dms's back; another mount takes the path, with
    // the very mount ID and device the kernel handed out again. It is stale, too.
    w.mounts.vanish(&w.dir).unwrap();
    let foreign = w.mounts.mount_reusing_ids(&w.dir, &mine);
    w.mounts.set_health(&w.dir, Health::Stale);

    let info = w.manager.process_info(&t("a")).await.unwrap();
    assert_eq!(
        info.mount_state,
        Some(MountState::Unmounted),
        "the recorded mount is gone"
    );
    assert!(w.manager.cleanup_mounts().await.unwrap().is_empty());
    let report = w
        .manager
        .kill(&t("a"), Duration::from_millis(50))
        .await
        .unwrap();
    assert!(report.stopped);
    assert!(
        !report
            .steps
            .iter()
            .any(|s| matches!(s, KillStep::Unmount | KillStep::Detach | KillStep::Abort)),
        "{:?}",
        report.steps
    );
    assert!(w.manager.cleanup_mounts().await.unwrap().is_empty());

    assert!(
        w.mounts.is_mounted(&foreign),
        "the foreign mount is untouched"
    );
    let conn = w.mounts.connection(foreign.minor).unwrap();
    assert!(conn.alive && !conn.aborted, "{conn:?}");
    assert!(
        w.registry().get("a").is_none(),
        "the record of a gone mount is forgotten"
    );
}

#[tokio::test]
async fn a_mount_covered_by_another_is_left_with_the_other() {
    let w = world().await;
    let (_pid, mine) = w.spawn_mounted().await;
    let other = w.mounts.mount(&w.dir);
    let report = w
        .manager
        .kill(&t("a"), Duration::from_millis(50))
        .await
        .unwrap();
    assert!(report.stopped);
    assert!(
        report.steps.contains(&KillStep::MountCovered),
        "{:?}",
        report.steps
    );
    assert!(w.mounts.is_mounted(&mine) && w.mounts.is_mounted(&other));
    assert!(
        w.registry().get("a").is_some(),
        "kept: its mount is still there"
    );
}

#[tokio::test]
async fn a_live_healthy_mount_is_left_alone() {
    let w = world().await;
    let (pid, entry) = w.spawn_mounted().await;
    assert!(w.manager.cleanup_mounts().await.unwrap().is_empty());
    let listed = w.manager.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].mount_state, Some(MountState::Mounted));
    assert!(w.mounts.is_mounted(&entry));
    assert!(!w.mounts.connection(entry.minor).unwrap().aborted);
    assert!(w.detaches_and_unmounts().is_empty());
    assert!(w.fake.signals().is_empty(), "no helper was signalled");
    assert!(w.fake.running_ours().iter().any(|p| p.pid == pid));
    assert!(w.registry().get("a").is_some());
}

#[tokio::test]
async fn kill_of_a_mount_helper_unmounts_its_mount_and_the_helper_exits_by_itself() {
    let w = world().await;
    let (pid, entry) = w.spawn_mounted().await;
    // A FUSE helper exits once its mount is unmounted.
    let fake = w.fake.clone();
    w.mounts.on_removed(move |_| {
        fake.exit(pid, 0);
    });
    let report = w
        .manager
        .kill(&t("a"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(report.was_running && report.stopped);
    assert_eq!(
        report.steps.first(),
        Some(&KillStep::Unmount),
        "{:?}",
        report.steps
    );
    assert_eq!(report.signal, None, "no signal was needed");
    assert!(w.fake.signals().is_empty());
    assert!(!w.mounts.is_mounted(&entry));
    // A clean unmount first; the detach after the exit found it gone.
    assert_eq!(
        w.detaches_and_unmounts().first(),
        Some(&MountCall::UnmountExact(w.dir.clone(), entry.mount_id))
    );
    assert!(
        !report
            .steps
            .iter()
            .any(|s| matches!(s, KillStep::Detach | KillStep::Abort)),
        "{:?}",
        report.steps
    );
    assert!(!w.mounts.connection(entry.minor).unwrap().aborted);
    assert!(w.registry().get("a").is_none());
    assert_eq!(w.store.get(&t("a")).await.unwrap(), None);
    assert!(Path::new(&w.dir).is_dir(), "the mount directory stays");
}

#[tokio::test]
async fn a_mount_that_hangs_reads_stale_and_cleanup_detaches_it_without_touching_its_live_helper() {
    let w = world().await;
    let (pid, entry) = w.spawn_mounted().await;
    w.mounts.set_health(&w.dir, Health::Hangs);

    // The listing's probe gives up after its timeout: stale, not a hang.
    let listed = w.manager.list().await.unwrap();
    assert_eq!(listed[0].mount_state, Some(MountState::Stale));
    assert_eq!(
        listed[0].mounted,
        Some(true),
        "a dead mount is still a mount"
    );
    assert_eq!(w.manager.stats().await.unwrap().stale_mounts, Some(1));

    let actions = w.manager.cleanup_mounts().await.unwrap();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0].state, MountState::Stale);
    // Its helper is live: the mount is detached, its connection left to the helper.
    assert_eq!(actions[0].action, MountOutcome::Detached { aborted: false });
    assert!(!w.mounts.is_mounted(&entry));
    assert!(!w.mounts.connection(entry.minor).unwrap().aborted);
    assert!(w.fake.signals().is_empty(), "the helper was not signalled");
    assert!(w.fake.running_ours().iter().any(|p| p.pid == pid));
}
