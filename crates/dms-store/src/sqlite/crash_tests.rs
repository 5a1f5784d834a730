use super::*;
use crate::conformance::full_record;
use crate::Pid;
use std::fs;

fn t(s: &str) -> TargetId {
    s.parse().unwrap()
}

fn rows(run_dir: &Path) -> Vec<(String, i64, Option<i64>)> {
    let conn = Connection::open(run_dir.join(DB_FILE_NAME)).unwrap();
    let mut stmt = conn
        .prepare("SELECT target, pid, start_ticks FROM records ORDER BY target")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn with_identity(pid: i32, ticks: u64) -> Record {
    let mut r = full_record(pid);
    r.identity.as_mut().unwrap().start_ticks = ticks;
    r
}

/// Every crash point of a put (after each PID-file step, before the row), over every
/// prior state, including a replacement with the same PID but a new process (same PID
/// reused: only the file stamp tells the rows apart). After the "crash" the store is
/// dropped and reopened from what is on disk, and `list` must report:
/// before the rename, exactly the old entry (with its identity); from the rename on,
/// the new PID with identity unknown, never the old identity; when not crashed, the
/// new record. The repaired rows must then agree with the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_of_put_is_reported_correctly() {
    let target = t("crashy");
    let priors: [Option<Record>; 2] = [None, Some(with_identity(100, 1111))];
    let news = [with_identity(200, 2222), with_identity(100, 3333)];
    let points = [
        Some(WriteStep::TempCreated),
        Some(WriteStep::TempSynced),
        Some(WriteStep::Renamed),
        Some(WriteStep::DirSynced),
        None,
    ];
    for prior in &priors {
        for new in &news {
            for crash in points {
                let case = format!("prior {prior:?}, new {new:?}, crash after {crash:?}");
                let run = tempfile::tempdir().unwrap();
                {
                    let store = SqliteStore::open(run.path()).unwrap();
                    if let Some(p) = prior {
                        store.put(&target, p).await.unwrap();
                    }
                    store.put_crashing(&target, new, crash).await.unwrap();
                } // the crash: everything in memory is gone

                let store = SqliteStore::open(run.path()).unwrap();
                let list = crate::list_sorted(&store).await.unwrap();
                let expected: Option<Record> = match crash {
                    Some(WriteStep::TempCreated | WriteStep::TempSynced) => prior.clone(),
                    Some(WriteStep::Renamed | WriteStep::DirSynced) => Some(Record::bare(new.pid)),
                    None => Some(new.clone()),
                };
                match (&expected, &list[..]) {
                    (None, []) => {}
                    (
                        Some(exp),
                        [Entry::Target {
                            target: lt,
                            state: Stored::Valid(got),
                        }],
                    ) if lt == &target => {
                        assert_eq!(got.pid, exp.pid, "{case}");
                        assert_eq!(got.identity, exp.identity, "{case}");
                        assert_eq!(got.meta, exp.meta, "{case}");
                    }
                    _ => panic!("{case}: expected {expected:?}, listed {list:?}"),
                }
                // get agrees with list, and the rows now agree with the files.
                let again = store.get(&target).await.unwrap();
                let exp_lookup_pid = expected.as_ref().map(|r| r.pid);
                match &again {
                    Some(Stored::Valid(r)) => assert_eq!(Some(r.pid), exp_lookup_pid, "{case}"),
                    None => assert_eq!(exp_lookup_pid, None, "{case}"),
                    other => panic!("{case}: {other:?}"),
                }
                let expected_rows: Vec<(String, i64, Option<i64>)> = expected
                    .iter()
                    .map(|r| {
                        (
                            target.to_string(),
                            i64::from(r.pid.get()),
                            r.identity.as_ref().map(|i| i.start_ticks as i64),
                        )
                    })
                    .collect();
                assert_eq!(rows(run.path()), expected_rows, "{case}");
            }
        }
    }
}

/// A crash between the two steps of a remove (the file unlinked, the row not yet
/// deleted) is repaired on the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_steps_of_remove_is_repaired() {
    let run = tempfile::tempdir().unwrap();
    let target = t("half-removed");
    {
        let store = SqliteStore::open(run.path()).unwrap();
        store.put(&target, &full_record(321)).await.unwrap();
        // Step 1 of remove, done by hand; step 2 (the row) never happens.
        fs::remove_file(target.pid_file_in(store.pid_dir())).unwrap();
    }
    assert_eq!(rows(run.path()).len(), 1);
    let store = SqliteStore::open(run.path()).unwrap();
    assert!(crate::list_sorted(&store).await.unwrap().is_empty());
    assert!(rows(run.path()).is_empty(), "the orphan row is dropped");
    // A later put of the same target starts afresh.
    store
        .put(&target, &Record::bare(Pid::new(322).unwrap()))
        .await
        .unwrap();
    let Some(Stored::Valid(r)) = store.get(&target).await.unwrap() else {
        panic!()
    };
    assert_eq!((r.pid.get(), r.identity), (322, None));
}
