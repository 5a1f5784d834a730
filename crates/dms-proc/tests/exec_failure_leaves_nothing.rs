//! An exec failure (ENOENT, EACCES) is an error naming the program, and leaves no process.

mod common;

use common::*;
use dms_proc::linux::LinuxSpawner;
use dms_proc::{ExitStatus, Probe, ProcError, Spawner, WaitOutcome};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[tokio::test]
async fn missing_program_by_path_errors_at_release_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let missing = dir.path().join("no-such-helper");
    let pending = spawner
        .spawn(&spec(dir.path(), missing.to_str().unwrap(), &[]))
        .await
        .expect("the child is created; the exec fails later");
    let id = pending.identity.clone();
    let err = pending.gate.release().await.expect_err("exec must fail");
    match &err {
        ProcError::Exec { program, source } => {
            assert_eq!(program, missing.as_os_str());
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("expected ProcError::Exec, got {other:?}"),
    }
    assert!(err.to_string().contains("no-such-helper"), "{err}");
    // Already reaped when release returns: nothing is left, not even a zombie.
    assert_eq!(probe_now(&spawner, id.pid).await, Probe::Gone);
    assert_eq!(
        spawner.wait_exit(&id, Some(Duration::ZERO)).await.unwrap(),
        WaitOutcome::Exited(ExitStatus::Code(127))
    );
}

#[tokio::test]
async fn missing_program_in_path_errors_at_spawn_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let err = spawner
        .spawn(&spec(dir.path(), "dms-proc-test-no-such-program", &[]))
        .await
        .expect_err("lookup must fail");
    match err {
        ProcError::Exec { program, source } => {
            assert_eq!(program, "dms-proc-test-no-such-program");
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("expected ProcError::Exec, got {other:?}"),
    }
}

#[tokio::test]
async fn non_executable_program_errors_with_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let pending = spawner
        .spawn(&spec(dir.path(), script.to_str().unwrap(), &[]))
        .await
        .unwrap();
    let id = pending.identity.clone();
    match pending.gate.release().await {
        Err(ProcError::Exec { program, source }) => {
            assert_eq!(program, script.as_os_str());
            assert_eq!(source.kind(), ErrorKind::PermissionDenied);
        }
        other => panic!("expected an EACCES exec error, got {other:?}"),
    }
    assert_eq!(probe_now(&spawner, id.pid).await, Probe::Gone);
    let log = std::fs::read_to_string(dir.path().join("helper.log")).unwrap_or_default();
    assert!(
        !log.contains("ran"),
        "the program must not have run: {log:?}"
    );
}

#[tokio::test]
async fn missing_working_directory_errors_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let mut s = spec(dir.path(), "/bin/true", &[]);
    s.cwd = Some(dir.path().join("gone"));
    let pending = spawner.spawn(&s).await.unwrap();
    let id = pending.identity.clone();
    match pending.gate.release().await {
        Err(ProcError::Exec { source, .. }) => {
            assert_eq!(source.kind(), ErrorKind::NotFound);
            assert!(source.to_string().contains("working directory"), "{source}");
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
    assert_eq!(probe_now(&spawner, id.pid).await, Probe::Gone);
}

#[tokio::test]
async fn unopenable_log_is_a_log_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spawner = LinuxSpawner::new().unwrap();
    let mut s = spec(dir.path(), "/bin/true", &[]);
    s.log = dir.path().join("no-dir").join("helper.log");
    match spawner.spawn(&s).await {
        Err(ProcError::Log { path, source }) => {
            assert_eq!(path, s.log);
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("expected ProcError::Log, got {other:?}"),
    }
}
