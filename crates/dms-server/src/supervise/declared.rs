//! Declared targets (`--targets DIR`): each `DIR/<target>.toml` declares one target
//! (`argv`, `env_files`, `mount`, `ready_timeout_secs`, `log`, `[restart]`). At start and
//! at each reload (SIGHUP, `POST /v1/reload`): declared targets that do not run are
//! started, running ones whose file changed are restarted, removed files stop their
//! helper, unchanged ones are not touched. A bad file is reported (file, line, message)
//! and skipped, and its target left as it is.

use super::policy::Policy;
use super::run::{forget, start_locked};
use super::spec::{Persisted, StoredSpec, SupState};
use crate::handlers::DEFAULT_GRACE;
use crate::Daemon;
use dms_store::TargetId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One declared target's file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredFile {
    argv: Vec<String>,
    #[serde(default)]
    env_files: Vec<PathBuf>,
    mount: Option<PathBuf>,
    ready_timeout_secs: Option<f64>,
    log: Option<PathBuf>,
    restart: Option<Policy>,
}

/// A problem with one file of the targets directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// The line (from 1), when the problem has one.
    pub line: Option<usize>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The answer of a reload (read back by the command line, which renders it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Declared targets started.
    pub started: Vec<TargetId>,
    /// Targets whose file was removed, stopped.
    pub stopped: Vec<TargetId>,
    /// Running targets whose file changed, restarted.
    pub restarted: Vec<TargetId>,
    /// Declared targets left untouched.
    pub unchanged: usize,
    /// Bad files (skipped) and failed starts.
    pub errors: Vec<FileError>,
}

/// The line (from 1) of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line where `key` is set (`key = ...` or the table `[key]`), else 1.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('=') || r.starts_with(']'))
                || l.strip_prefix('[')
                    .is_some_and(|r| r.trim_start().starts_with(key))
        })
        .map_or(1, |n| n + 1)
}

/// Parses and checks one file into the spec it declares.
fn parse(file: &Path, text: &str) -> Result<StoredSpec, (Option<usize>, String)> {
    let f: DeclaredFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_at(text, s.start));
        (line, e.message().to_owned())
    })?;
    let at = |key: &str, msg: String| (Some(line_of(text, key)), msg);
    if f.argv.is_empty() || f.argv[0].is_empty() {
        return Err(at(
            "argv",
            "`argv`: must be a non-empty array whose first item is the program".into(),
        ));
    }
    if f.argv.iter().any(|a| a.contains('\0')) {
        return Err(at("argv", "`argv`: an item contains a NUL byte".into()));
    }
    for (key, p) in f
        .env_files
        .iter()
        .map(|p| ("env_files", p))
        .chain(f.mount.iter().map(|p| ("mount", p)))
        .chain(f.log.iter().map(|p| ("log", p)))
    {
        if !p.is_absolute() {
            return Err(at(
                key,
                format!(
                    "`{key}`: {:?} is not an absolute path; give the full path",
                    p.display().to_string()
                ),
            ));
        }
    }
    if f.ready_timeout_secs.is_some() && f.mount.is_none() {
        return Err(at(
            "ready_timeout_secs",
            "`ready_timeout_secs`: only with `mount`".into(),
        ));
    }
    if let Some(t) = f.ready_timeout_secs {
        if !(t.is_finite() && (0.0..=super::policy::MAX_POLICY_SECS).contains(&t)) {
            return Err(at(
                "ready_timeout_secs",
                "`ready_timeout_secs`: seconds from 0 to 86400".into(),
            ));
        }
    }
    let restart = f.restart.unwrap_or_default();
    restart.check("restart.").map_err(|m| at("restart", m))?;
    Ok(StoredSpec {
        argv: f.argv,
        env_keys: Vec::new(),
        env_files: f.env_files,
        mount: f.mount,
        ready_timeout_secs: f.ready_timeout_secs,
        log: f.log,
        restart,
        declared: file.file_name().map(|n| n.to_string_lossy().into_owned()),
    })
}

/// The declared specs, the targets of bad files, the errors.
type DirRead = (
    BTreeMap<TargetId, StoredSpec>,
    BTreeSet<TargetId>,
    Vec<FileError>,
);

/// Reads the targets directory.
fn read_dir(dir: &Path) -> Result<DirRead, FileError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FileError {
        file: dir.to_owned(),
        line: None,
        message: format!("cannot read the targets directory: {e}; nothing was changed"),
    })?;
    let (mut specs, mut bad, mut errors) = (BTreeMap::new(), BTreeSet::new(), Vec::new());
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".toml"))
        else {
            continue;
        };
        if stem.starts_with('.') {
            continue; // an editor's or a deployment tool's temp file
        }
        let err = |line, message| FileError {
            file: path.clone(),
            line,
            message,
        };
        let target = match stem.parse::<TargetId>() {
            Ok(t) => t,
            Err(e) => {
                errors.push(err(
                    None,
                    format!("the file name is not a target ID: {e}; name it <target>.toml"),
                ));
                continue;
            }
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(err(None, format!("cannot read it: {e}")));
                bad.insert(target);
                continue;
            }
        };
        match parse(&path, &text) {
            Ok(spec) => {
                specs.insert(target, spec);
            }
            Err((line, message)) => {
                errors.push(err(line, message));
                bad.insert(target);
            }
        }
    }
    Ok((specs, bad, errors))
}

/// Installs `spec` as `target`'s record and starts it (stopping a running helper first).
async fn apply(
    d: &Arc<Daemon>,
    target: &TargetId,
    spec: StoredSpec,
    running: bool,
) -> Result<(), String> {
    let (slot, _) = d.supervisor.slot_or_new(target);
    let _op = slot.op.lock().await;
    {
        let mut e = slot.entry();
        e.doc = Persisted {
            spec,
            state: SupState::Stopped,
            ..Default::default()
        };
        e.inline = Some(Vec::new());
        e.pid = None;
        e.generation += 1;
        d.supervisor.persist(target, &e);
    }
    if running {
        d.manager
            .kill(target, DEFAULT_GRACE)
            .await
            .map_err(|e| crate::render(&e))?;
    }
    start_locked(d, target, &slot).await
}

/// Re-reads `--targets DIR` and applies it (see the module docs).
pub async fn reload(d: &Arc<Daemon>) -> ReloadReport {
    let _one = d.supervisor.reload_lock.lock().await;
    let mut report = ReloadReport::default();
    let Some(dir) = d.supervisor.options().targets_dir else {
        report.errors.push(FileError {
            file: PathBuf::new(),
            line: None,
            message: "dms serve was started without --targets DIR: nothing to reload".into(),
        });
        return report;
    };
    let (specs, bad, errors) = match read_dir(&dir) {
        Ok(x) => x,
        Err(e) => {
            report.errors.push(e);
            return report;
        }
    };
    report.errors = errors;
    for (target, slot) in d.supervisor.all_slots() {
        let declared = slot.entry().doc.spec.declared.is_some();
        if declared && !specs.contains_key(&target) && !bad.contains(&target) {
            forget(d, &target);
            match d.manager.kill(&target, DEFAULT_GRACE).await {
                Ok(_) => report.stopped.push(target),
                Err(e) => report.errors.push(FileError {
                    file: dir.join(format!("{}.toml", target.as_str())),
                    line: None,
                    message: format!(
                        "removed, but its helper cannot be stopped: {}",
                        crate::render(&e)
                    ),
                }),
            }
        }
    }
    for (target, spec) in specs {
        let running = d.manager.is_running(&target).await.unwrap_or(false);
        let (same, state) = match d.supervisor.slot(&target) {
            Some(s) => {
                let e = s.entry();
                (e.doc.spec == spec, Some(e.doc.state))
            }
            None => (false, None),
        };
        let file = dir.join(format!("{}.toml", target.as_str()));
        if same && (running || state == Some(SupState::Backoff)) {
            report.unchanged += 1;
            continue;
        }
        let restarted = running;
        match apply(d, &target, spec, running).await {
            Ok(()) if restarted => report.restarted.push(target),
            Ok(()) => report.started.push(target),
            Err(why) => report.errors.push(FileError {
                file,
                line: None,
                message: format!("cannot start it: {why}"),
            }),
        }
    }
    let mut f = Map::new();
    f.insert("started".into(), json!(report.started));
    f.insert("stopped".into(), json!(report.stopped));
    f.insert("restarted".into(), json!(report.restarted));
    f.insert("unchanged".into(), json!(report.unchanged));
    f.insert("errors".into(), json!(report.errors.len()));
    d.events.push("reloaded", Value::Null, Value::Null, f);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_declared_target_and_reports_lines() {
        let p = Path::new("/etc/dms/targets/t1.toml");
        let ok = "argv = [\"sleep\", \"300\"]\nmount = \"/mnt/t1\"\n[restart]\npolicy = \"on-failure\"\ninitial_delay_secs = 0.5\n";
        let spec = parse(p, ok).unwrap();
        assert_eq!(spec.argv, ["sleep", "300"]);
        assert_eq!(
            spec.restart.policy,
            super::super::policy::RestartPolicy::OnFailure
        );
        assert_eq!(spec.restart.initial_delay_secs, 0.5);
        assert_eq!(spec.restart.max_failures, 10);
        assert_eq!(spec.declared.as_deref(), Some("t1.toml"));
        let (line, msg) = parse(p, "argv = [\"x\"]\n\nbogus = 1\n").unwrap_err();
        assert_eq!(line, Some(3), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        let (line, msg) =
            parse(p, "argv = [\"x\"]\n[restart]\npolicy = \"sometimes\"\n").unwrap_err();
        assert_eq!(line, Some(3), "{msg}");
        let (line, msg) = parse(p, "argv = [\"x\"\n").unwrap_err();
        assert!(line.is_some(), "{msg}");
        let (line, msg) = parse(p, "# c\nargv = []\n").unwrap_err();
        assert_eq!(line, Some(2), "{msg}");
        let (line, msg) = parse(p, "argv = [\"x\"]\nlog = \"rel.log\"\n").unwrap_err();
        assert_eq!(line, Some(2), "{msg}");
        let (line, msg) = parse(p, "argv = [\"x\"]\n[restart]\nmax_failures = 0\n").unwrap_err();
        assert_eq!(line, Some(2), "{msg}");
    }
}
