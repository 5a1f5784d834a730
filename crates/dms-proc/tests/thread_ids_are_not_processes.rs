//! A thread ID is not a process: `kill(tid, 0)` and `/proc/TID/stat` both answer for a
//! thread that is not its group's leader, but the probe calls it [`Probe::Thread`] (with
//! its process), and an identity whose PID is now such a thread is never signalled.
//! The only process signalled here is a child of this test.

use dms_proc::linux::LinuxSpawner;
use dms_proc::{Pid, Probe, ProcIdentity, Signal, SignalOutcome, Spawner};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// Start ticks of thread `tid` of process `pid` (field 22 of its stat).
fn thread_ticks(pid: u32, tid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    s.rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_thread_of_this_process_is_not_a_process() {
    let spawner = LinuxSpawner::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        tx.send(rustix::thread::gettid().as_raw_nonzero().get())
            .unwrap();
        let _ = stop_rx.recv();
    });
    let tid = rx.recv().unwrap();
    let probe = spawner
        .probe(Pid::try_from(tid).unwrap(), dms_proc::ProbeFields::DETAIL)
        .await
        .map(|(p, _)| p)
        .unwrap();
    stop_tx.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(
        probe,
        Probe::Thread {
            tgid: Some(std::process::id() as i32)
        }
    );
    // The process itself is one.
    let me = Pid::try_from(std::process::id() as i32).unwrap();
    assert!(matches!(
        spawner
            .probe(me, dms_proc::ProbeFields::DETAIL)
            .await
            .map(|(p, _)| p)
            .unwrap(),
        Probe::Alive(_)
    ));
}

#[tokio::test]
async fn a_thread_of_another_process_is_never_signalled() {
    let spawner = LinuxSpawner::new().unwrap();
    // A child with a second thread, which prints that thread's ID.
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import threading, time\n\
             t = threading.Thread(target=time.sleep, args=(600,), daemon=True); t.start()\n\
             print(t.native_id, flush=True); time.sleep(600)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let tid: i32 = line.trim().parse().unwrap();
    let pid = Pid::try_from(tid).unwrap();
    let probe = spawner
        .probe(pid, dms_proc::ProbeFields::DETAIL)
        .await
        .map(|(p, _)| p)
        .unwrap();
    let usage_probe = spawner
        .probe(pid, dms_proc::ProbeFields::LISTING)
        .await
        .unwrap();
    // An identity that names the thread exactly (its own start ticks), as a PID file
    // naming it would after a PID reuse.
    let as_recorded = ProcIdentity {
        pid,
        start_ticks: thread_ticks(child.id(), tid),
        boot_id: spawner.boot_id().to_owned(),
    };
    let term = spawner.signal(&as_recorded, Signal::Term).await.unwrap();
    let kill = spawner.signal(&as_recorded, Signal::Kill).await.unwrap();
    // A fatal signal starts the group's exit as it is sent, so had either been sent,
    // the child would die of it, not of the SIGKILL this test sends now.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let tgid = Some(child.id() as i32);
    assert_eq!(probe, Probe::Thread { tgid });
    assert_eq!(usage_probe, (Probe::Thread { tgid }, None));
    assert_eq!(term, SignalOutcome::Gone);
    assert_eq!(kill, SignalOutcome::Gone);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the thread's process was signalled by the spawner: {status:?}"
    );
}
