//! The reports read back from their JSON shapes (what the command line does with the
//! documents of `dms serve`) are the reports that were written, and a document that
//! does not hold a valid report is refused with the reason.

use dms_core::{
    CleanupReport, KeptMount, KillReport, KillStep, MountAction, MountOutcome, MountState,
    ProcessInfo, ProcessState, RemovalReason, Removed, Source, Stats,
};
use dms_proc::Signal;
use dms_store::{Pid, TargetId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, SystemTime};

fn round_trip<T: Serialize + DeserializeOwned>(v: &T) -> T {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

fn target(s: &str) -> TargetId {
    s.parse().unwrap()
}

#[test]
fn an_info_object_reads_back_as_written() {
    let info = ProcessInfo {
        target: target("t-1"),
        pid: Some(Pid::new(4242).unwrap()),
        state: ProcessState::Running,
        running: true,
        pid_file: "/run/dms/s3/t-1.pid".into(),
        pid_file_exists: true,
        source: Some(Source::Both),
        // Whole seconds: the JSON shape holds RFC 3339 seconds.
        started_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000)),
        uptime_secs: Some(12.5),
        cpu_percent: Some(0.25),
        rss_bytes: Some(3 << 20),
        threads: Some(4),
        cmdline: Some(vec!["s3fs".into(), "bucket".into()]),
        mount: Some("/mnt/t-1".into()),
        mounted: Some(true),
        mount_state: Some(MountState::Stale),
        detail: None,
        usage_sampled_at: None,
    };
    assert_eq!(round_trip(&info), info);
    for state in [
        ProcessState::Stale,
        ProcessState::Foreign,
        ProcessState::Corrupt,
        ProcessState::Absent,
        ProcessState::Unverified,
    ] {
        let mut other = info.clone();
        (other.state, other.started_at, other.source) = (state, None, None);
        assert_eq!(round_trip(&other), other);
    }
}

#[test]
fn kill_and_cleanup_reports_read_back_with_every_step_and_outcome() {
    let steps = vec![
        KillStep::Unmount,
        KillStep::UnmountFailed,
        KillStep::MountCovered,
        KillStep::MountUnproven,
        KillStep::Sigterm,
        KillStep::Sigkill,
        KillStep::Abort,
        KillStep::Detach,
        KillStep::DetachFailed,
        KillStep::ForgetMemory,
        KillStep::RemovePidFile,
        KillStep::ClearStale,
        KillStep::ClearForeign,
        KillStep::ClearCorrupt,
    ];
    for signal in [None, Some(Signal::Term), Some(Signal::Kill)] {
        let report = KillReport {
            target: target("k"),
            pid: Some(Pid::new(77).unwrap()),
            was_running: true,
            signal,
            stopped: true,
            steps: steps.clone(),
        };
        assert_eq!(round_trip(&report), report);
    }
    let outcomes = [
        MountOutcome::Detached { aborted: false },
        MountOutcome::Detached { aborted: true },
        MountOutcome::DetachFailed("EBUSY: device or resource busy".into()),
        MountOutcome::Gone,
        MountOutcome::Kept(KeptMount::NoIdentity),
        MountOutcome::Kept(KeptMount::Covered),
    ];
    let report = CleanupReport {
        removed: [
            RemovalReason::Stale,
            RemovalReason::Foreign,
            RemovalReason::Corrupt,
        ]
        .into_iter()
        .map(|reason| Removed {
            target: target("r"),
            reason,
        })
        .collect(),
        stopped: vec![target("s")],
        mounts: outcomes
            .into_iter()
            .map(|action| MountAction {
                target: target("m"),
                path: "/mnt/m".into(),
                state: MountState::Stale,
                action,
            })
            .collect(),
    };
    assert_eq!(round_trip(&report), report);
}

#[test]
fn stats_read_back_and_extra_keys_of_the_daemon_are_ignored() {
    let stats = Stats {
        total_tracked: 3,
        pid_files_on_disk: 4,
        running: 2,
        stale: 1,
        foreign: 0,
        corrupt: 1,
        unverified: 0,
        strays: 0,
        stale_mounts: Some(1),
        backend: "sqlite".into(),
        run_dir: "/run/dms".into(),
    };
    let mut doc = serde_json::to_value(&stats).unwrap();
    doc["restarts_total"] = 5.into();
    assert_eq!(serde_json::from_value::<Stats>(doc).unwrap(), stats);
}

#[test]
fn a_document_without_a_valid_report_is_refused_with_the_reason() {
    let kill = |target: &str, pid: i64, signal: &str| {
        serde_json::from_value::<KillReport>(serde_json::json!({
            "target": target, "pid": pid, "was_running": true, "signal": signal,
            "stopped": true, "steps": []
        }))
        .unwrap_err()
        .to_string()
    };
    assert!(kill("../etc", 5, "SIGKILL").contains("invalid target ID"));
    assert!(kill("t", -1, "SIGKILL").contains("negative"));
    assert!(kill("t", 5, "SIGHUP").contains("unknown signal \"SIGHUP\""));
    let action = serde_json::from_value::<MountAction>(serde_json::json!({
        "target": "m", "path": "/mnt/m", "state": "stale", "action": "explode"
    }))
    .unwrap_err()
    .to_string();
    assert!(
        action.contains("unknown mount action \"explode\""),
        "{action}"
    );
}
