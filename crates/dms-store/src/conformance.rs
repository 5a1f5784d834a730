//! The conformance suite every [`PidStore`] backend must pass.
//!
//! Each function takes a store that starts **empty** and checks one part of the trait's
//! contract; [`run_all`] calls them all. Differences between backends are parameters
//! ([`Capabilities`], and closures that put a corrupt or stray entry in place the way only
//! that backend can), never copies of the tests. Another crate that implements
//! [`PidStore`] enables the `conformance` feature from its `[dev-dependencies]` and calls
//! [`run_all`] from its own tests.
//!
//! Functions panic (with `assert!`) on a violation, like any test.

use crate::{Entry, Error, Identity, Metadata, Pid, PidStore, Record, Stored, TargetId};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What a backend keeps beyond the PID, and how a test can plant entries in it.
pub struct Capabilities<'a> {
    /// Whether identity and metadata survive a `put`/`get` round trip.
    pub keeps_metadata: bool,
    /// Makes the entry of the given target corrupt (e.g. writes `abc` to its PID file).
    pub make_corrupt: &'a (dyn Fn(&TargetId) + Sync),
    /// Plants a stray entry with this file name (a `*.pid` name that is not a valid
    /// target ID).
    pub make_stray: &'a (dyn Fn(&str) + Sync),
}

fn t(s: &str) -> TargetId {
    TargetId::new(s).expect("valid target in the suite")
}

fn pid(n: i32) -> Pid {
    Pid::try_from(n).expect("valid PID in the suite")
}

/// A record with identity and every metadata field set.
pub fn full_record(n: i32) -> Record {
    Record {
        pid: pid(n),
        identity: Some(Identity {
            start_ticks: 123_456_789,
            boot_id: "6f1c2a8e-0d4b-4f7e-9a51-2b1d3c4e5f60".into(),
        }),
        meta: Metadata {
            cmdline: Some(vec![
                "/usr/bin/s3vaultfuse.py".into(),
                "--flag".into(),
                "arg with spaces \"quoted\" ünïcödé".into(),
            ]),
            mount: Some(PathBuf::from("/var/lib/dms/mnt/target-1")),
            spawned_at: Some(SystemTime::UNIX_EPOCH + Duration::new(1_764_153_079, 123_456_789)),
            log_path: Some(PathBuf::from("/run/dms/logs/target-1.log")),
        },
        written_at: None,
    }
}

fn present(l: Option<Stored>) -> Record {
    match l {
        Some(Stored::Valid(r)) => r,
        other => panic!("expected a present record, got {other:?}"),
    }
}

/// Runs every check of the suite, each on the (empty) store, which it leaves empty.
pub async fn run_all(store: &dyn PidStore, caps: &Capabilities<'_>) {
    get_absent(store).await;
    put_get_roundtrip(store).await;
    put_replaces(store).await;
    remove_roundtrip(store).await;
    list_sorted_by_target(store).await;
    many_targets(store).await;
    metadata_roundtrip(store, caps.keeps_metadata).await;
    bare_record_has_no_identity(store).await;
    corrupt_entry_listed_replaced_and_removed(store, caps.make_corrupt).await;
    stray_listed_and_removed(store, caps.make_stray).await;
    remove_stray_refuses_bad_names(store).await;
    assert!(
        crate::list_sorted(store).await.unwrap().is_empty(),
        "the suite leaves the store empty"
    );
}

/// `get` of a target never written is `Absent`; `remove` of it is `Ok(false)`.
pub async fn get_absent(store: &dyn PidStore) {
    assert_eq!(store.get(&t("never-written")).await.unwrap(), None);
    assert!(!store.remove(&t("never-written")).await.unwrap());
    assert!(crate::list_sorted(store).await.unwrap().is_empty());
}

/// What `put` writes, `get` and `list` read back, with `written_at` filled in.
pub async fn put_get_roundtrip(store: &dyn PidStore) {
    let target = t("target-123");
    let before = SystemTime::now() - Duration::from_secs(2);
    store.put(&target, &Record::bare(pid(12345))).await.unwrap();
    let got = present(store.get(&target).await.unwrap());
    assert_eq!(got.pid, pid(12345));
    let written = got.written_at.expect("written_at is filled in by reads");
    assert!(
        written >= before,
        "written_at {written:?} is before the put"
    );
    let list = crate::list_sorted(store).await.unwrap();
    assert!(
        matches!(&list[..], [Entry::Target { target: lt, state: Stored::Valid(r) }]
            if lt == &target && r.pid == pid(12345)),
        "{list:?}"
    );
    assert!(store.remove(&target).await.unwrap());
}

/// A second `put` replaces the first: one entry, the new PID.
pub async fn put_replaces(store: &dyn PidStore) {
    let target = t("target-prod-001");
    store.put(&target, &full_record(100)).await.unwrap();
    store.put(&target, &Record::bare(pid(200))).await.unwrap();
    let got = present(store.get(&target).await.unwrap());
    assert_eq!(got.pid, pid(200));
    assert_eq!(
        got.identity, None,
        "the old identity does not survive a replace"
    );
    assert_eq!(got.meta, Metadata::default());
    assert_eq!(crate::list_sorted(store).await.unwrap().len(), 1);
    assert!(store.remove(&target).await.unwrap());
}

/// `remove` reports whether there was an entry, and afterwards there is none.
pub async fn remove_roundtrip(store: &dyn PidStore) {
    let target = t("gone");
    store.put(&target, &full_record(4242)).await.unwrap();
    assert!(store.remove(&target).await.unwrap());
    assert_eq!(store.get(&target).await.unwrap(), None);
    assert!(!store.remove(&target).await.unwrap());
    // A later put starts afresh: no identity left over from before.
    store.put(&target, &Record::bare(pid(4243))).await.unwrap();
    assert_eq!(present(store.get(&target).await.unwrap()).identity, None);
    assert!(store.remove(&target).await.unwrap());
}

/// `list` is sorted by target ID (not by file name: `a-b` sorts before `a.b`, and `a`
/// before both).
pub async fn list_sorted_by_target(store: &dyn PidStore) {
    let names = ["b", "a.b", "a", "A", "a-b", "a_b", "0"];
    for (i, n) in names.iter().enumerate() {
        store
            .put(&t(n), &Record::bare(pid(1000 + i as i32)))
            .await
            .unwrap();
    }
    let listed: Vec<String> = crate::list_sorted(store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Entry::Target { target, .. } => target.as_str().to_owned(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for n in names {
        assert!(store.remove(&t(n)).await.unwrap());
    }
}

/// Many targets: all listed with the right PIDs, all removable.
pub async fn many_targets(store: &dyn PidStore) {
    let n = 64;
    for i in 0..n {
        store
            .put(&t(&format!("t{i:03}")), &Record::bare(pid(2 + i)))
            .await
            .unwrap();
    }
    let list = crate::list_sorted(store).await.unwrap();
    assert_eq!(list.len(), n as usize);
    for (i, e) in list.iter().enumerate() {
        match e {
            Entry::Target {
                target,
                state: Stored::Valid(r),
            } => {
                assert_eq!(target.as_str(), format!("t{i:03}"));
                assert_eq!(r.pid, pid(2 + i as i32));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 0..n {
        assert!(store.remove(&t(&format!("t{i:03}"))).await.unwrap());
    }
}

/// Identity and metadata round-trip where the backend keeps them (`keeps`), and are
/// `None`/empty where it does not; either way `get` and `list` agree.
pub async fn metadata_roundtrip(store: &dyn PidStore, keeps: bool) {
    let target = t("meta");
    let rec = full_record(777);
    store.put(&target, &rec).await.unwrap();
    let got = present(store.get(&target).await.unwrap());
    assert_eq!(got.pid, rec.pid);
    if keeps {
        assert_eq!(got.identity, rec.identity);
        assert_eq!(got.meta, rec.meta);
    } else {
        assert_eq!(got.identity, None);
        assert_eq!(got.meta, Metadata::default());
    }
    let list = crate::list_sorted(store).await.unwrap();
    assert!(
        matches!(&list[..], [Entry::Target { state: Stored::Valid(r), .. }] if *r == got),
        "list and get disagree: {list:?} vs {got:?}"
    );
    assert!(store.remove(&target).await.unwrap());
}

/// A bare record (PID only) reads back with no identity.
pub async fn bare_record_has_no_identity(store: &dyn PidStore) {
    let target = t("bare");
    store.put(&target, &Record::bare(pid(31337))).await.unwrap();
    let got = present(store.get(&target).await.unwrap());
    assert_eq!(
        (got.pid, got.identity, got.meta),
        (pid(31337), None, Metadata::default())
    );
    assert!(store.remove(&target).await.unwrap());
}

/// A corrupt entry is reported by `get` and `list` with its path and a reason; `put`
/// replaces it; `remove` removes it.
pub async fn corrupt_entry_listed_replaced_and_removed(
    store: &dyn PidStore,
    make_corrupt: &(dyn Fn(&TargetId) + Sync),
) {
    let target = t("broken");
    let path = target.pid_file_in(store.pid_dir());
    make_corrupt(&target);
    match store.get(&target).await.unwrap() {
        Some(Stored::Corrupt(c)) => {
            assert_eq!(c.path, path);
            assert!(!c.reason.is_empty());
        }
        other => panic!("expected corrupt, got {other:?}"),
    }
    let list = crate::list_sorted(store).await.unwrap();
    assert!(
        matches!(&list[..], [Entry::Target { target: lt, state: Stored::Corrupt(c) }]
            if lt == &target && c.path == path && !c.reason.is_empty()),
        "{list:?}"
    );
    store.put(&target, &Record::bare(pid(555))).await.unwrap();
    assert_eq!(present(store.get(&target).await.unwrap()).pid, pid(555));
    make_corrupt(&target);
    assert!(store.remove(&target).await.unwrap());
    assert_eq!(store.get(&target).await.unwrap(), None);
}

/// A stray is listed (never dropped) with a reason, is not a target's entry, and is
/// removable by its file name.
pub async fn stray_listed_and_removed(store: &dyn PidStore, make_stray: &(dyn Fn(&str) + Sync)) {
    let name = "not a target!.pid";
    make_stray(name);
    store
        .put(&t("real"), &Record::bare(pid(999)))
        .await
        .unwrap();
    let list = crate::list_sorted(store).await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list.iter()
            .any(|e| matches!(e, Entry::Stray { file_name, reason }
            if file_name == name && !reason.is_empty())),
        "{list:?}"
    );
    assert!(store.remove_stray(name).await.unwrap());
    assert!(!store.remove_stray(name).await.unwrap());
    assert!(store.remove(&t("real")).await.unwrap());
}

/// `remove_stray` refuses anything but a single `*.pid` name that is not a valid target.
pub async fn remove_stray_refuses_bad_names(store: &dyn PidStore) {
    store
        .put(&t("keep"), &Record::bare(pid(4321)))
        .await
        .unwrap();
    for bad in [
        "",
        "..",
        "../keep.pid",
        "a/b.pid",
        "keep.pid",
        "x.txt",
        "nul\0.pid",
    ] {
        match store.remove_stray(bad).await {
            Err(Error::Invalid(_)) => {}
            other => panic!("remove_stray({bad:?}) gave {other:?}"),
        }
    }
    assert_eq!(present(store.get(&t("keep")).await.unwrap()).pid, pid(4321));
    assert!(store.remove(&t("keep")).await.unwrap());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, PidFileStore, SqliteStore};
    use std::sync::Arc;

    fn memory_caps(store: &Arc<MemoryStore>) -> (impl Fn(&TargetId) + Sync, impl Fn(&str) + Sync) {
        let (a, b) = (store.clone(), store.clone());
        (
            move |target: &TargetId| a.insert_corrupt(target, "planted by the suite"),
            move |name: &str| b.insert_stray(name, "planted by the suite").unwrap(),
        )
    }

    fn disk_caps(pid_dir: PathBuf) -> (impl Fn(&TargetId) + Sync, impl Fn(&str) + Sync) {
        let d2 = pid_dir.clone();
        (
            move |target: &TargetId| std::fs::write(target.pid_file_in(&pid_dir), b"abc").unwrap(),
            move |name: &str| std::fs::write(d2.join(name), b"4242\n").unwrap(),
        )
    }

    #[tokio::test]
    async fn memory_store_conforms() {
        let store = Arc::new(MemoryStore::new("/run/dms-test/s3".into()));
        let (c, s) = memory_caps(&store);
        let caps = Capabilities {
            keeps_metadata: true,
            make_corrupt: &c,
            make_stray: &s,
        };
        run_all(&*store, &caps).await;
        // Through Box<dyn PidStore> and Arc<dyn PidStore>, as the layers above hold it.
        let boxed: Box<dyn PidStore> = Box::new(store.clone());
        run_all(&*boxed, &caps).await;
        assert_eq!(boxed.backend_name(), "memory");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pidfile_store_conforms() {
        let run_dir = tempfile::tempdir().unwrap();
        let store = PidFileStore::open(run_dir.path()).unwrap();
        let (c, s) = disk_caps(store.pid_dir().to_owned());
        let caps = Capabilities {
            keeps_metadata: false,
            make_corrupt: &c,
            make_stray: &s,
        };
        run_all(&store, &caps).await;
        let boxed: Box<dyn PidStore> = Box::new(store);
        run_all(&*boxed, &caps).await;
        let arced: Arc<dyn PidStore> = Arc::from(boxed);
        run_all(&arced, &caps).await;
        assert_eq!(arced.backend_name(), "pidfile");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_conforms() {
        let run_dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(run_dir.path()).unwrap();
        assert!(store.has_database());
        let (c, s) = disk_caps(store.pid_dir().to_owned());
        let caps = Capabilities {
            keeps_metadata: true,
            make_corrupt: &c,
            make_stray: &s,
        };
        run_all(&store, &caps).await;
        let boxed: Box<dyn PidStore> = Box::new(store);
        run_all(&*boxed, &caps).await;
        assert_eq!(boxed.backend_name(), "sqlite");
    }

    /// Without a usable database (here: one from a newer dms, left alone), the SQLite
    /// backend still honours the whole contract, keeping PIDs only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_without_database_conforms() {
        let run_dir = tempfile::tempdir().unwrap();
        let db = run_dir.path().join(crate::DB_FILE_NAME);
        rusqlite::Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 999)
            .unwrap();
        let store = SqliteStore::open(run_dir.path()).unwrap();
        assert!(!store.has_database());
        let (c, s) = disk_caps(store.pid_dir().to_owned());
        let caps = Capabilities {
            keeps_metadata: false,
            make_corrupt: &c,
            make_stray: &s,
        };
        run_all(&store, &caps).await;
    }
}
