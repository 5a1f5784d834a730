//! Unit tests of the table and one-line renderings.

use super::*;
use serde_json::json;

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
}

#[test]
fn rows_pushed_from_info_objects_are_the_rows_of_their_json() {
    let running = ProcessInfo {
        target: "t1".parse().unwrap(),
        pid: Some(dms_store::Pid::new(4242).unwrap()),
        state: dms_core::ProcessState::Running,
        running: true,
        pid_file: "/run/dms/s3/t1.pid".into(),
        pid_file_exists: true,
        source: Some(dms_core::Source::Both),
        started_at: Some(std::time::SystemTime::UNIX_EPOCH),
        uptime_secs: Some(7500.4),
        cpu_percent: Some(12.345),
        rss_bytes: Some(3 * 1024 * 1024 + 5),
        threads: Some(4),
        cmdline: Some(vec!["s3vaultfuse".into(), "--bucket".into(), "b".into()]),
        mount: Some("/mnt/t1".into()),
        mounted: Some(true),
        mount_state: Some(MountState::Stale),
        detail: None,
        usage_sampled_at: None,
    };
    let mut stale = running.clone();
    stale.state = dms_core::ProcessState::Stale;
    stale.running = false;
    stale.source = Some(dms_core::Source::Disk);
    (stale.started_at, stale.uptime_secs, stale.cpu_percent) = (None, None, None);
    (stale.rss_bytes, stale.threads, stale.cmdline) = (None, None, None);
    (stale.mount, stale.mounted, stale.mount_state) = (None, None, None);
    let mut absent = stale.clone();
    (absent.pid, absent.source, absent.state) = (None, None, dms_core::ProcessState::Absent);
    let mut unmounted = running.clone();
    unmounted.mount_state = Some(MountState::Mounted);
    let (mut pushed, mut rendered) = (StatusTable::default(), Vec::new());
    for info in [&running, &stale, &absent, &unmounted] {
        for detail in [None, Some("why")] {
            let v = serde_json::to_value(info).unwrap();
            pushed.push_info(info, detail);
            rendered.push(status_row(&v, detail));
        }
    }
    let mut out = Vec::new();
    pushed.write_to(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        render_status_table(&rendered)
    );
}

#[test]
fn streamed_table_is_the_rendered_table() {
    let infos = [
        json!({"target": "a", "pid": 12, "state": "running", "source": "disk",
               "uptime_secs": 75.0, "cpu_percent": 0.5, "rss_bytes": 2048, "threads": 1,
               "cmdline": ["sleep", "300"]}),
        json!({"target": "long-target-name", "pid": 99999, "state": "stale",
               "source": "disk"}),
    ];
    let rows: Vec<StatusRow> = infos
        .iter()
        .zip([None, Some("PID 99999 is dead")])
        .map(|(i, d)| status_row(i, d))
        .collect();
    let mut table = StatusTable::default();
    assert!(table.is_empty());
    rows.iter().for_each(|r| table.push(r));
    let mut out = Vec::new();
    table.write_to(&mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), render_status_table(&rows));
}

#[test]
fn table_is_aligned() {
    let infos = [
        json!({"target": "a", "pid": 12345, "state": "running", "source": "both",
               "uptime_secs": 61.0, "cpu_percent": 0.25, "rss_bytes": 2048, "threads": 1,
               "cmdline": ["sleep", "300"], "mount": null}),
        json!({"target": "longer-target", "pid": null, "state": "corrupt", "source": "disk",
               "uptime_secs": null, "cpu_percent": null, "rss_bytes": null,
               "threads": null, "cmdline": null, "mount": "/mnt/x", "mount_state": "stale"}),
    ];
    let t = status_table(&infos, &[None, Some("not a decimal PID".into())]);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("TARGET         PID    STATE"), "{t}");
    assert!(
        lines[1].starts_with("a              12345  running  both    1m01s   0.2%"),
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
fn one_liners() {
    assert_eq!(
        kill_line(&json!({"target": "t", "pid": 5, "was_running": true,
                          "signal": "SIGKILL", "stopped": true, "steps": []})),
        "stopped t (PID 5) with SIGKILL"
    );
    assert_eq!(
        kill_line(&json!({"target": "t", "pid": null, "was_running": false,
                          "signal": null, "stopped": false, "steps": []})),
        "t was not running"
    );
    assert_eq!(
        cleanup_line(&json!({"removed": [{"target": "a", "reason": "stale"}],
                             "stopped": ["b", "c"]})),
        "removed 1 PID file: a (stale); stopped 2 helpers: b, c"
    );
    assert_eq!(
        cleanup_line(&json!({"removed": [], "stopped": []})),
        "removed no PID files"
    );
    assert!(stats_line(
        &json!({"total_tracked": 2, "running": 1, "backend": "sqlite",
                                "run_dir": "/r"})
    )
    .starts_with("2 tracked, 0 PID files on disk: 1 running"));
    let line = stats_line(&json!({"total_tracked": 1, "pid_files_on_disk": 1,
        "stale_mounts": null, "strays": 2, "backend": "pidfile", "run_dir": "/r"}));
    assert_eq!(
        line,
        "1 tracked, 1 PID file on disk: 0 running, 0 stale, 0 foreign, 0 corrupt, \
         2 stray PID files; backend pidfile, run dir /r"
    );
}
