//! The shared exit watcher of the Linux spawner (one epoll set of pidfds, one task)
//! reports each watched helper's exit once and promptly, many helpers at a time; a
//! process already gone when watched is reported at once; an unwatched helper is not
//! reported; a PID reused by another process is never taken for the watched one.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ProcIdentity, Signal, SignalOutcome, Spawner};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const HELPERS: usize = 40;

/// Receives reports until `want` are in or `limit` passes.
async fn reports(
    rx: &mut mpsc::UnboundedReceiver<ProcIdentity>,
    want: usize,
    limit: Duration,
) -> Vec<ProcIdentity> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(id)) => got.push(id),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_exits_are_reported_once_each_and_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watch = spawner
        .exit_watch(tx)
        .unwrap()
        .expect("the Linux spawner has one");

    let mut helpers = Vec::new();
    for _ in 0..HELPERS {
        helpers.push(start(&spawner, &spec(dir.path(), "sleep", &["600"])).await);
    }
    for (id, _) in &helpers {
        watch.watch(id).unwrap();
    }
    assert_eq!(watch.watched(), HELPERS);

    // One is unwatched first: its exit is not reported.
    let (quiet, _quiet_guard) = helpers.pop().unwrap();
    watch.unwatch(&quiet);
    assert_eq!(watch.watched(), HELPERS - 1);
    assert_eq!(
        spawner.signal(&quiet, Signal::Kill).await.unwrap(),
        SignalOutcome::Delivered
    );

    let sent = Instant::now();
    for (id, _) in &helpers {
        assert_eq!(
            spawner.signal(id, Signal::Kill).await.unwrap(),
            SignalOutcome::Delivered
        );
    }
    let got = reports(&mut rx, helpers.len(), Duration::from_secs(5)).await;
    let took = sent.elapsed();
    let want: HashSet<&ProcIdentity> = helpers.iter().map(|(id, _)| id).collect();
    let got_set: HashSet<&ProcIdentity> = got.iter().collect();
    assert_eq!(got.len(), helpers.len(), "reports: {got:?}");
    assert_eq!(
        got_set, want,
        "each watched helper is reported once, with its identity"
    );
    assert!(
        took < Duration::from_secs(1),
        "{HELPERS} exits took {took:?} to report"
    );
    eprintln!(
        "{} exits reported {took:?} after the first SIGKILL",
        helpers.len()
    );
    assert_eq!(watch.watched(), 0);
    assert!(dead(&spawner, quiet.pid).await);
    // Nothing more: not the unwatched helper, no exit twice.
    assert!(reports(&mut rx, 1, Duration::from_millis(200))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_already_gone_or_reused_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watch = spawner.exit_watch(tx).unwrap().unwrap();

    let (gone, _guard) = start(&spawner, &spec(dir.path(), "true", &[])).await;
    assert!(
        wait_until(Duration::from_secs(5), || !alive(
            gone.pid.get(),
            gone.start_ticks
        ))
        .await
    );
    watch.watch(&gone).unwrap();
    assert_eq!(
        reports(&mut rx, 1, Duration::from_secs(1)).await,
        vec![gone]
    );

    // A live PID with other start ticks is another process: the recorded one is gone.
    let (live, _guard) = start(&spawner, &spec(dir.path(), "sleep", &["600"])).await;
    let impostor = ProcIdentity {
        start_ticks: live.start_ticks + 1,
        ..live.clone()
    };
    watch.watch(&impostor).unwrap();
    assert_eq!(
        reports(&mut rx, 1, Duration::from_secs(1)).await,
        vec![impostor]
    );
    assert_eq!(watch.watched(), 0);
    assert!(alive(live.pid.get(), live.start_ticks));
}
