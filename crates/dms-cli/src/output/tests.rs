//! Unit tests of the table and one-line renderings.

use super::*;

#[test]
fn durations_and_bytes() {
    assert_eq!(duration(12.5), "12s");
    assert_eq!(duration(303.0), "5m03s");
    assert_eq!(duration(7500.0), "2h05m");
    assert_eq!(duration(273_600.0), "3d04h");
    assert_eq!(bytes(512), "512B");
    assert_eq!(bytes(1024), "1.0K");
    assert_eq!(bytes(1_048_576), "1.0M");
    assert_eq!(bytes(12_900_000), "12.3M");
}

#[test]
fn names_are_the_json_names() {
    use ProcessState::*;
    for s in [Running, Stale, Foreign, Corrupt, Absent, Unverified] {
        assert_eq!(json_name(&s).as_deref(), Some(state_name(s)));
    }
    for s in [Source::Memory, Source::Disk, Source::Both] {
        assert_eq!(json_name(&s).as_deref(), Some(source_name(s)));
    }
    for s in [
        MountState::Mounted,
        MountState::Stale,
        MountState::Unmounted,
    ] {
        assert_eq!(json_name(&s).as_deref(), Some(mount_state_name(s)));
    }
    for r in [
        RemovalReason::Stale,
        RemovalReason::Foreign,
        RemovalReason::Corrupt,
    ] {
        assert_eq!(json_name(&r).as_deref(), Some(reason_name(r)));
    }
}

/// An info object for the table tests: a running helper with every column filled.
fn running(target: &str) -> ProcessInfo {
    ProcessInfo {
        target: target.parse().unwrap(),
        pid: Some(dms_store::Pid::new(4242).unwrap()),
        state: ProcessState::Running,
        running: true,
        pid_file: format!("/run/dms/s3/{target}.pid").into(),
        pid_file_exists: true,
        source: Some(Source::Both),
        started_at: Some(std::time::SystemTime::UNIX_EPOCH),
        uptime_secs: Some(61.4),
        cpu_percent: Some(0.25),
        rss_bytes: Some(2048),
        threads: Some(1),
        cmdline: Some(vec!["sleep".into(), "300".into()]),
        mount: None,
        mounted: None,
        mount_state: None,
        detail: None,
        usage_sampled_at: None,
    }
}

/// The same entry with only what a dead or unreadable entry has.
fn bare(mut info: ProcessInfo, state: ProcessState) -> ProcessInfo {
    info.state = state;
    info.running = false;
    info.source = Some(Source::Disk);
    (info.started_at, info.uptime_secs, info.cpu_percent) = (None, None, None);
    (info.rss_bytes, info.threads, info.cmdline) = (None, None, None);
    info
}

#[test]
fn table_is_aligned_and_sorted() {
    let mut corrupt = bare(running("longer-target"), ProcessState::Corrupt);
    corrupt.pid = None;
    corrupt.mount = Some("/mnt/x".into());
    corrupt.mount_state = Some(MountState::Stale);
    let mut a = running("a");
    a.pid = Some(dms_store::Pid::new(12345).unwrap());
    let t = status_table(&[corrupt, a], &[Some("not a decimal PID".into()), None]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("TARGET         PID    STATE"), "{t}");
    assert!(
        lines[1].starts_with("a              12345  running  both    1m01s   0.2%  2.0K"),
        "{t}"
    );
    assert!(lines[1].ends_with("sleep 300"), "{t}");
    assert!(lines[2].contains("/mnt/x (stale)"), "{t}");
    assert!(lines[2].ends_with("  (not a decimal PID)"), "{t}");
    // Every column starts at the same offset in every line.
    let pos = |l: &str, word: &str| l.find(word).unwrap();
    assert_eq!(pos(lines[0], "STATE"), pos(lines[1], "running"));
    assert_eq!(pos(lines[0], "STATE"), pos(lines[2], "corrupt"));
}

#[test]
fn missing_cells_are_dashes_and_a_plain_mount_shows_no_state() {
    let mut mounted = running("m");
    mounted.mount = Some("/mnt/m".into());
    mounted.mount_state = Some(MountState::Mounted);
    let mut absent = bare(running("z"), ProcessState::Absent);
    (absent.pid, absent.source) = (None, None);
    let t = status_table(&[mounted, absent], &[None, Some("why".into())]);
    let lines: Vec<&str> = t.lines().collect();
    let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        cells(lines[1]),
        ["m", "4242", "running", "both", "1m01s", "0.2%", "2.0K", "1", "/mnt/m", "sleep", "300"]
    );
    assert_eq!(
        cells(lines[2]),
        ["z", "-", "absent", "-", "-", "-", "-", "-", "-", "(why)"]
    );
}

#[test]
fn control_characters_in_cells_are_escaped() {
    let mut evil = running("e");
    evil.cmdline = Some(vec!["x\n\u{1b}[2J".into()]);
    let t = status_table(&[evil], &[None]);
    assert_eq!(t.lines().count(), 2, "{t}");
    assert!(t.contains("x\\n\\u{1b}[2J"), "{t}");
}

#[test]
fn one_liners() {
    let target: dms_store::TargetId = "t".parse().unwrap();
    let kill = |pid: Option<i64>, was_running, stopped, signal, steps: Vec<KillStep>| {
        kill_line(&KillReport {
            target: target.clone(),
            pid: pid.map(|p| dms_store::Pid::new(p).unwrap()),
            was_running,
            signal,
            stopped,
            steps,
        })
    };
    use dms_proc::Signal;
    assert_eq!(
        kill(Some(5), true, true, Some(Signal::Kill), vec![]),
        "stopped t (PID 5) with SIGKILL"
    );
    assert_eq!(
        kill(Some(5), true, true, None, vec![KillStep::Unmount]),
        "stopped t (PID 5) with an unmount"
    );
    assert_eq!(kill(None, false, false, None, vec![]), "t was not running");
    assert_eq!(
        kill(Some(7), true, false, Some(Signal::Kill), vec![]),
        "t (PID 7) did not stop after SIGKILL"
    );
    let removed = |t: &str| dms_core::Removed {
        target: t.parse().unwrap(),
        reason: RemovalReason::Stale,
    };
    let report = CleanupReport {
        removed: vec![removed("a")],
        stopped: vec!["b".parse().unwrap(), "c".parse().unwrap()],
        mounts: vec![dms_core::MountAction {
            target: "a".parse().unwrap(),
            path: "/mnt/a".into(),
            state: MountState::Stale,
            action: dms_core::MountOutcome::Detached { aborted: true },
        }],
    };
    assert_eq!(
        cleanup_line(&report),
        "removed 1 PID file: a (stale); stopped 2 helpers: b, c; \
         mounts 1: /mnt/a (stale, detach+abort)"
    );
    assert_eq!(
        cleanup_line(&CleanupReport::default()),
        "removed no PID files"
    );
    let stats = Stats {
        total_tracked: 1,
        pid_files_on_disk: 1,
        running: 0,
        stale: 0,
        foreign: 0,
        corrupt: 0,
        unverified: 0,
        strays: 2,
        stale_mounts: None,
        backend: "pidfile".into(),
        run_dir: "/r".into(),
    };
    assert_eq!(
        stats_line(&stats),
        "1 tracked, 1 PID file on disk: 0 running, 0 stale, 0 foreign, 0 corrupt, \
         2 stray PID files; backend pidfile, run dir /r"
    );
    let info = running("t");
    assert_eq!(
        spawn_line(&info, "/l/t.log"),
        "started t: PID 4242, log /l/t.log"
    );
    assert_eq!(adopt_line(&info), "adopted PID 4242 for t");
}
