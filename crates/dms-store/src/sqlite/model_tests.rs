//! A model-based test in the style of redb's crash tests: random sequences of puts,
//! removes, interrupted puts, restarts and changes made by hand to the PID files, each
//! applied both to a real `SqliteStore` and to a plain model of what must be listed.

use super::*;
use crate::{Identity, Pid};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;

const TARGETS: [&str; 3] = ["alpha", "beta", "gamma"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, i32, u64),
    Remove(usize),
    CrashPut(usize, i32, u64, usize),
    HandWriteInPlace(usize, i32),
    HandReplace(usize, i32),
    HandDelete(usize),
    HandCorrupt(usize),
    Restart,
}

/// What `list` must say about one target: its PID and start ticks (None = identity
/// unknown), or corrupt.
#[derive(Debug, Clone, PartialEq)]
enum Model {
    Valid(i32, Option<u64>),
    Corrupt,
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TARGETS.len();
    let pid = 2..40i32;
    prop_oneof![
        3 => (t.clone(), pid.clone(), any::<u32>()).prop_map(|(t, p, k)| Op::Put(t, p, k.into())),
        1 => t.clone().prop_map(Op::Remove),
        2 => (t.clone(), pid.clone(), any::<u32>(), 0..4usize)
            .prop_map(|(t, p, k, s)| Op::CrashPut(t, p, k.into(), s)),
        1 => (t.clone(), pid.clone()).prop_map(|(t, p)| Op::HandWriteInPlace(t, p)),
        1 => (t.clone(), pid.clone()).prop_map(|(t, p)| Op::HandReplace(t, p)),
        1 => t.clone().prop_map(Op::HandDelete),
        1 => t.prop_map(Op::HandCorrupt),
        1 => Just(Op::Restart),
    ]
}

const STEPS: [WriteStep; 4] = [
    WriteStep::TempCreated,
    WriteStep::TempSynced,
    WriteStep::Renamed,
    WriteStep::DirSynced,
];

fn record(pid: i32, ticks: u64) -> Record {
    Record {
        identity: Some(Identity {
            start_ticks: ticks,
            boot_id: "boot".into(),
        }),
        ..Record::bare(Pid::try_from(pid).unwrap())
    }
}

fn listed(store: &SqliteStore, rt: &tokio::runtime::Runtime) -> BTreeMap<String, Model> {
    rt.block_on(crate::list_sorted(store))
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Entry::Target {
                target,
                state: Stored::Valid(r),
            } => (
                target.to_string(),
                Model::Valid(r.pid.get(), r.identity.map(|i| i.start_ticks)),
            ),
            Entry::Target { target, .. } => (target.to_string(), Model::Corrupt),
            Entry::Stray { file_name, .. } => panic!("unexpected stray {file_name}"),
        })
        .collect()
}

fn run(ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
    let base = Path::new("/dev/shm");
    let run_dir = if base.is_dir() {
        tempfile::tempdir_in(base).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut store = SqliteStore::open(run_dir.path()).unwrap();
    let mut model: BTreeMap<String, Model> = BTreeMap::new();
    let tid = |i: usize| TargetId::new(TARGETS[i]).unwrap();
    for (n, op) in ops.iter().enumerate() {
        let path = |i: usize| tid(i).pid_file_in(store.pid_dir());
        let name = |i: usize| TARGETS[i].to_string();
        match *op {
            Op::Put(t, p, k) => {
                rt.block_on(store.put(&tid(t), &record(p, k))).unwrap();
                model.insert(name(t), Model::Valid(p, Some(k)));
            }
            Op::Remove(t) => {
                let had = rt.block_on(store.remove(&tid(t))).unwrap();
                prop_assert_eq!(had, model.remove(&name(t)).is_some());
            }
            Op::CrashPut(t, p, k, s) => {
                rt.block_on(store.put_crashing(&tid(t), &record(p, k), Some(STEPS[s])))
                    .unwrap();
                if STEPS[s] >= WriteStep::Renamed {
                    model.insert(name(t), Model::Valid(p, None));
                }
                // A crash ends the process: what follows runs in a new one.
                store = SqliteStore::open(run_dir.path()).unwrap();
            }
            Op::HandWriteInPlace(t, p) => {
                // Like `echo PID > file`: same inode. A tool rewriting the same PID in
                // place within one clock tick is indistinguishable, so pick another PID.
                let p = match model.get(&name(t)) {
                    Some(Model::Valid(cur, _)) if *cur == p => p + 1,
                    _ => p,
                };
                fs::write(path(t), format!("{p}")).unwrap();
                model.insert(name(t), Model::Valid(p, None));
            }
            Op::HandReplace(t, p) => {
                let tmp = store.pid_dir().join("by-hand.tmp");
                fs::write(&tmp, format!("{p}\n")).unwrap();
                fs::rename(&tmp, path(t)).unwrap();
                model.insert(name(t), Model::Valid(p, None));
            }
            Op::HandDelete(t) => {
                let _ = fs::remove_file(path(t));
                model.remove(&name(t));
            }
            Op::HandCorrupt(t) => {
                fs::write(path(t), b"\x00garbage\xff").unwrap();
                model.insert(name(t), Model::Corrupt);
            }
            Op::Restart => store = SqliteStore::open(run_dir.path()).unwrap(),
        }
        prop_assert_eq!(
            &listed(&store, &rt),
            &model,
            "after op {} {:?} of {:?}",
            n,
            op,
            ops
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn list_matches_the_model_through_crashes_restarts_and_hand_edits(
        ops in proptest::collection::vec(op(), 1..24)
    ) {
        run(ops)?;
    }
}

/// A corruption error while the store is in use (not at open) moves the database
/// aside, rebuilds it from the PID files and retries the operation once. The error is
/// injected: a real file corrupted under an open connection is not reliably noticed.
#[test]
fn a_corruption_error_during_use_rebuilds_and_retries() {
    let run_dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(run_dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.put(&TargetId::new("keep").unwrap(), &record(77, 5)))
        .unwrap();
    let mut calls = 0;
    let count = {
        let mut db = store.inner.lock();
        db.with(&store.inner.files, |conn| {
            calls += 1;
            if calls == 1 {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some("injected".into()),
                ));
            }
            conn.query_row(
                "SELECT count(*) FROM records WHERE start_ticks IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap()
    };
    assert_eq!(calls, 2);
    assert_eq!(count, Some(1), "rebuilt from the PID file: one bare row");
    let aside: Vec<_> = fs::read_dir(run_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("dms.sqlite3.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let Some(Stored::Valid(r)) = rt
        .block_on(store.get(&TargetId::new("keep").unwrap()))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((r.pid.get(), r.identity), (77, None));
}
