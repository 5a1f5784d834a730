//! What a helper gets: stdin `/dev/null`, stdout and stderr appended to its log (never a
//! pipe), exactly the given environment, no inherited descriptors, default signal
//! handling, and its own session and process group.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Probe, Spawner, WaitOutcome};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test]
async fn stdin_is_dev_null_and_output_is_appended_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("helper.log");
    std::fs::write(&log, "previous run\n").unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    // `cat` copies stdin: with /dev/null it ends at once and adds nothing.
    let (id, _guard) = start(
        &spawner,
        &sh(dir.path(), "echo out; echo err >&2; cat; echo done"),
    )
    .await;
    assert_eq!(
        spawner
            .wait_exit(&id, Some(Duration::from_secs(5)))
            .await
            .unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(0)),
        "stdin must be /dev/null, not a terminal or a pipe"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "previous run\nout\nerr\ndone\n"
    );
}

#[tokio::test]
async fn environment_descriptors_signals_and_session_are_exactly_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    // A descriptor without close-on-exec in the spawning process: must not leak.
    // SAFETY: dup of stderr; closed below.
    let leaky = unsafe { libc::dup(2) };
    assert!(leaky > 2);
    let spawner = LinuxSpawner::new().unwrap();
    let (id, _guard) = start(&spawner, &spec(dir.path(), "sleep", &["60"])).await;
    let pid = id.pid.get();
    // SAFETY: closes the descriptor we dup'ed.
    unsafe { libc::close(leaky) };
    let proc = procfs::process::Process::new(pid).unwrap();

    // Exactly the given environment, in order, nothing inherited.
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let got: Vec<OsString> = raw
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect();
    let want: Vec<OsString> = env()
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            kv
        })
        .collect();
    assert_eq!(got, want);

    // Descriptors 0, 1, 2 only: /dev/null and the log (twice).
    let mut fds: Vec<(i32, PathBuf)> = proc
        .fd()
        .unwrap()
        .map(|fd| {
            let fd = fd.unwrap();
            (
                fd.fd,
                std::fs::read_link(format!("/proc/{pid}/fd/{}", fd.fd)).unwrap(),
            )
        })
        .collect();
    fds.sort();
    let log = dir.path().join("helper.log");
    assert_eq!(
        fds,
        vec![
            (0, PathBuf::from("/dev/null")),
            (1, log.clone()),
            (2, log.clone())
        ]
    );
    let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/1")).unwrap();
    let flags = flags.lines().find(|l| l.starts_with("flags:")).unwrap();
    let flags = u32::from_str_radix(flags.split_whitespace().nth(1).unwrap(), 8).unwrap();
    assert_ne!(
        flags & libc::O_APPEND as u32,
        0,
        "the log is opened for appending"
    );

    // Default signal handling: nothing blocked or ignored (the test harness ignores
    // SIGPIPE, so this shows the child reset it).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for key in ["SigBlk:", "SigIgn:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        assert!(line.trim_end().ends_with("0000000000000000"), "{line}");
    }

    // Own session and process group, not ours; working directory as given.
    let Probe::Alive(info) = probe_now(&spawner, id.pid).await else {
        panic!("helper should be alive");
    };
    assert_eq!((info.sid, info.pgid), (pid, pid));
    // SAFETY: getsid(0) queries the calling process.
    let our_sid = unsafe { libc::getsid(0) };
    assert_ne!(info.sid, our_sid);
    assert_eq!(proc.cwd().unwrap(), dir.path());
    assert_eq!(info.exe.unwrap().file_name().unwrap(), "sleep");
    assert_eq!(
        info.cmdline.unwrap(),
        vec!["sleep".to_owned(), "60".to_owned()]
    );

    assert!(
        spawner
            .terminate(&id, Duration::from_secs(5), dms_proc::DEFAULT_KILL_WAIT)
            .await
            .unwrap()
            .stopped
    );
}
