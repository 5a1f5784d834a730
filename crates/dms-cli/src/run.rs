//! Running one command: pick the backend, open the manager, act, print, choose the exit code.

use crate::cli::{
    AdoptArgs, BackendChoice, CleanupArgs, Cli, Command, KillArgs, SpawnArgs, StatusArgs,
};
use crate::env::{self, EnvError};
use crate::output;
use crate::{EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_USAGE};
use dms_core::{HelperSpec, Manager, ManagerOptions, ProcessInfo, ProcessState};
use dms_store::{Pid, TargetId};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of the SQLite database inside the run directory.
pub const SQLITE_FILE: &str = dms_store::DB_FILE_NAME;

/// Why a command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or bad input: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The operation failed: exit code 1.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILED,
        }
    }
}

impl From<EnvError> for CliError {
    fn from(e: EnvError) -> Self {
        CliError::Usage(e.to_string())
    }
}

/// A manager error: what failed, with its causes, on one line.
fn failed(e: &(dyn std::error::Error + 'static)) -> CliError {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        source = s.source();
    }
    CliError::Failed(msg)
}

/// The backend actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PID files only.
    Pidfile,
    /// PID files and SQLite.
    Sqlite,
}

/// `auto` means `sqlite` when `<run-dir>/dms.sqlite3` exists (as anything), else `pidfile`.
pub fn choose_backend(choice: BackendChoice, run_dir: &Path) -> Backend {
    match choice {
        BackendChoice::Pidfile => Backend::Pidfile,
        BackendChoice::Sqlite => Backend::Sqlite,
        BackendChoice::Auto => {
            if std::fs::symlink_metadata(run_dir.join(SQLITE_FILE)).is_ok() {
                Backend::Sqlite
            } else {
                Backend::Pidfile
            }
        }
    }
}

/// Makes a path absolute against the current directory (helpers run in `/`).
fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(p).map_err(|e| {
        CliError::Usage(format!(
            "cannot make {} absolute: {e}; pass an absolute path",
            p.display()
        ))
    })
}

/// Runs the parsed command; `Ok` holds the exit code.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let run_dir = absolute(&cli.run_dir)?;
    // Everything that can be refused as bad input is checked before the run directory is
    // touched, so a refused command creates nothing.
    let prepared = match cli.command {
        Command::Spawn(args) => Prepared::Spawn(Box::new(prepare_spawn(args, &run_dir)?)),
        Command::Kill(a) => Prepared::Kill(a),
        Command::Status(a) => Prepared::Status(a),
        Command::Stats => Prepared::Stats,
        Command::Cleanup(a) => Prepared::Cleanup(a),
        Command::Adopt(a) => Prepared::Adopt(a),
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
    };
    let backend = choose_backend(cli.backend, &run_dir);
    tracing::debug!(run_dir = %run_dir.display(), ?backend, "opening the manager");
    let session = open_manager(&run_dir, backend).await?;
    let out = Out { json: cli.json };
    match prepared {
        Prepared::Spawn(p) => spawn(&session, *p, &out).await,
        Prepared::Kill(a) => kill(&session, a, &out).await,
        Prepared::Status(a) => status(&session, a, &out).await,
        Prepared::Stats => stats(&session, &out).await,
        Prepared::Cleanup(a) => cleanup(&session, a, &out).await,
        Prepared::Adopt(a) => adopt(&session, a, &out).await,
    }
}

enum Prepared {
    Spawn(Box<PreparedSpawn>),
    Kill(KillArgs),
    Status(StatusArgs),
    Stats,
    Cleanup(CleanupArgs),
    Adopt(AdoptArgs),
}

struct PreparedSpawn {
    args: SpawnArgs,
    spec: HelperSpec,
    log_shown: PathBuf,
}

fn prepare_spawn(args: SpawnArgs, run_dir: &Path) -> Result<PreparedSpawn, CliError> {
    let helper_env = env::build(std::env::vars_os(), &args.env_file, &args.env, |k| {
        std::env::var_os(k)
    })?;
    tracing::debug!(keys = ?env::added_keys(&args.env), files = ?args.env_file, "helper environment built");
    let mut command = args.command.iter();
    let program: OsString = command.next().cloned().ok_or_else(|| {
        CliError::Usage("no PROGRAM after `--`; write: dms spawn TARGET -- PROGRAM [ARG]...".into())
    })?;
    // A relative path with a `/` is resolved here: the helper runs in `/`.
    let program =
        if Path::new(&program).components().count() > 1 && Path::new(&program).is_relative() {
            absolute(Path::new(&program))?.into_os_string()
        } else {
            program
        };
    let log = args.log.as_deref().map(absolute).transpose()?;
    let mount = args.mount.as_deref().map(absolute).transpose()?;
    let log_shown = log
        .clone()
        .unwrap_or_else(|| args.target.log_file_in(&run_dir.join("logs")));
    let spec = HelperSpec {
        program,
        args: command.cloned().collect(),
        env: helper_env,
        log,
        mount,
        ready_timeout: Some(args.ready_timeout),
        replace: args.replace,
    };
    Ok(PreparedSpawn {
        args,
        spec,
        log_shown,
    })
}

/// An open manager, and what its startup recovery did in this invocation.
struct Session {
    manager: Manager,
    /// Entries whose PID was dead, removed by startup recovery (the existing deployment's
    /// startup rule). `status`, `stats`, `kill` and `cleanup` report them as stale.
    cleared: BTreeMap<TargetId, Pid>,
}

async fn open_manager(run_dir: &Path, backend: Backend) -> Result<Session, CliError> {
    let store: Arc<dyn dms_store::PidStore> = match backend {
        Backend::Pidfile => {
            Arc::new(dms_store::PidFileStore::open(run_dir).map_err(|e| failed(&e))?)
        }
        Backend::Sqlite => Arc::new(dms_store::SqliteStore::open(run_dir).map_err(|e| failed(&e))?),
    };
    let spawner = Arc::new(dms_proc::linux::LinuxSpawner::new().map_err(|e| failed(&e))?);
    let mut opts = ManagerOptions::new(run_dir.to_owned());
    // CPU percent is the average since the helper started (what ps shows as %CPU), read
    // without waiting: sampling over an interval would make every spawn and status
    // wait for that interval.
    opts.usage_interval = Some(std::time::Duration::ZERO);
    let (manager, recovery) = Manager::open(store, spawner, opts)
        .await
        .map_err(|e| failed(&e))?;
    tracing::debug!(?recovery, "startup recovery");
    let cleared = recovery
        .cleared
        .into_iter()
        .map(|tp| (tp.target, tp.pid))
        .collect();
    Ok(Session { manager, cleared })
}

/// A manager error, with the command line's wording where it has its own.
fn manager_error(e: dms_core::Error) -> CliError {
    match e {
        dms_core::Error::AlreadyRunning { target, pid } => CliError::Failed(format!(
            "target {target} is already running (PID {pid}); stop it first with \
             `dms kill {target}`, or start the new helper with `dms spawn {target} --replace`"
        )),
        dms_core::Error::Proc(dms_proc::ProcError::Exec { program, source }) => {
            CliError::Failed(format!(
                "cannot start {}: {source}; nothing was recorded; check that the program \
                 exists and is executable (a name without '/' is looked up in PATH)",
                Path::new(&program).display()
            ))
        }
        dms_core::Error::Proc(dms_proc::ProcError::Log { path, source }) => {
            CliError::Failed(format!(
                "cannot open the log file {}: {source}; nothing was started; create its \
                 directory or pass a writable --log FILE",
                path.display()
            ))
        }
        other => failed(&other),
    }
}

/// Where the output goes and in which form.
struct Out {
    json: bool,
}

impl Out {
    /// Prints `value` as JSON, or `human(value)` as text. A closed stdout (`dms status |
    /// head -1`) is not an error.
    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        self.write(if self.json {
            value.to_string()
        } else {
            human(value)
        });
    }

    /// Writes `text` (already in the chosen form) and a final newline.
    fn write(&self, mut text: String) {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::error!(error = %e, "cannot write to stdout");
            }
        }
    }
}

fn to_value(v: &impl Serialize) -> Result<Value, CliError> {
    serde_json::to_value(v)
        .map_err(|e| CliError::Failed(format!("cannot encode the output as JSON: {e}")))
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// The info of a target whose dead entry startup recovery removed: the manager's (absent)
/// info, marked `stale` with the PID that was recorded.
fn stale_info(mut absent: Value, pid: Pid) -> Value {
    if let Some(o) = absent.as_object_mut() {
        if o.get("state").and_then(Value::as_str) == Some("absent") {
            o.insert("state".into(), "stale".into());
            o.insert("pid".into(), pid.get().into());
            o.insert("source".into(), "disk".into());
        }
    }
    absent
}

async fn spawn(session: &Session, p: PreparedSpawn, out: &Out) -> Result<u8, CliError> {
    let info = session
        .manager
        .spawn(&p.args.target, p.spec)
        .await
        .map_err(manager_error)?;
    let log = p.log_shown.display().to_string();
    out.print(&to_value(&info)?, |v| output::spawn_line(v, &log));
    Ok(0)
}

async fn kill(session: &Session, a: KillArgs, out: &Out) -> Result<u8, CliError> {
    let report = session
        .manager
        .kill(&a.target, a.grace)
        .await
        .map_err(manager_error)?;
    let mut v = to_value(&report)?;
    // A dead entry already removed by this invocation's startup recovery.
    if let (Some(pid), Some(o)) = (session.cleared.get(&a.target), v.as_object_mut()) {
        if o.get("pid").is_some_and(Value::is_null) {
            o.insert("pid".into(), pid.get().into());
            if let Some(steps) = o.get_mut("steps").and_then(Value::as_array_mut) {
                steps.push("clear_stale".into());
            }
        }
    }
    out.print(&v, output::kill_line);
    Ok(match (flag(&v, "was_running"), flag(&v, "stopped")) {
        (false, _) => EXIT_NOT_RUNNING,
        (true, true) => 0,
        (true, false) => EXIT_FAILED,
    })
}

async fn status(session: &Session, a: StatusArgs, out: &Out) -> Result<u8, CliError> {
    let manager = &session.manager;
    let targets = match &a.target {
        Some(target) => vec![manager.process_info(target).await.map_err(manager_error)?],
        None => manager.list().await.map_err(manager_error)?,
    };
    // target -> (info, the PID whose dead entry this invocation's startup recovery
    // removed). Rows stay info objects until printed, one at a time: over many targets
    // a JSON value per row would dominate the memory of the command.
    let mut rows: BTreeMap<TargetId, (ProcessInfo, Option<Pid>)> = targets
        .into_iter()
        .map(|info| (info.target.clone(), (info, None)))
        .collect();
    for (target, pid) in &session.cleared {
        match rows.get_mut(target) {
            Some(row) => row.1 = Some(*pid),
            // Not listed: neither memory nor disk holds anything for it any more.
            None if a.target.is_none() => {
                let info = absent_info(manager, target);
                rows.insert(target.clone(), (info, Some(*pid)));
            }
            None => {}
        }
    }
    let row_value = |(info, cleared): &(ProcessInfo, Option<Pid>)| {
        let v = to_value(info)?;
        Ok::<_, CliError>(match cleared {
            Some(pid) => (
                stale_info(v, *pid),
                Some(format!("PID {pid} was dead; its PID file was removed")),
            ),
            None => (v, info.detail.clone()),
        })
    };
    if a.target.is_some() {
        let Some(row) = rows.values().next() else {
            return Err(CliError::Failed("no info for the target".into()));
        };
        let (v, detail) = row_value(row)?;
        let (infos, details) = (vec![v], vec![detail]);
        out.print(&infos[0], |_| output::status_table(&infos, &details));
        return Ok(if flag(&infos[0], "running") {
            0
        } else {
            EXIT_NOT_RUNNING
        });
    }
    let text = if out.json {
        let mut text = String::from("[");
        for (n, row) in rows.values().enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(&row_value(row)?.0.to_string());
        }
        text.push(']');
        text
    } else if rows.is_empty() {
        "no helpers tracked".to_owned()
    } else {
        let mut table = Vec::with_capacity(rows.len());
        for row in rows.values() {
            let (v, detail) = row_value(row)?;
            table.push(output::status_row(&v, detail.as_deref()));
        }
        output::render_status_table(&table)
    };
    out.write(text);
    Ok(0)
}

/// The info object of a target that neither memory nor disk holds: what
/// [`Manager::process_info`] returns for it, without reading the disk again.
fn absent_info(manager: &Manager, target: &TargetId) -> ProcessInfo {
    ProcessInfo {
        target: target.clone(),
        pid: None,
        state: ProcessState::Absent,
        running: false,
        pid_file: target.pid_file_in(manager.store().pid_dir()),
        pid_file_exists: false,
        source: None,
        started_at: None,
        uptime_secs: None,
        cpu_percent: None,
        rss_bytes: None,
        threads: None,
        cmdline: None,
        mount: None,
        mounted: None,
        mount_state: None,
        detail: None,
    }
}

async fn stats(session: &Session, out: &Out) -> Result<u8, CliError> {
    let stats = session.manager.stats().await.map_err(manager_error)?;
    let mut v = to_value(&stats)?;
    if let Some(stale) = v.get_mut("stale") {
        let n = stale.as_u64().unwrap_or(0) + session.cleared.len() as u64;
        *stale = n.into();
    }
    out.print(&v, output::stats_line);
    Ok(0)
}

async fn cleanup(session: &Session, a: CleanupArgs, out: &Out) -> Result<u8, CliError> {
    let manager = &session.manager;
    let report = if a.all {
        manager.cleanup_all(a.grace).await
    } else {
        manager.cleanup_dead().await
    }
    .map_err(manager_error)?;
    let mut report = report;
    if a.mounts {
        report.mounts = manager.cleanup_mounts().await.map_err(manager_error)?;
    }
    let mut v = to_value(&report)?;
    if let Some(removed) = v.get_mut("removed").and_then(Value::as_array_mut) {
        for target in session.cleared.keys() {
            removed.push(serde_json::json!({"target": target, "reason": "stale"}));
        }
        removed.sort_by(|a, b| {
            let t = |v: &Value| {
                v.get("target")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            t(a).cmp(&t(b))
        });
    }
    out.print(&v, output::cleanup_line);
    Ok(0)
}

async fn adopt(session: &Session, a: AdoptArgs, out: &Out) -> Result<u8, CliError> {
    let info = session
        .manager
        .adopt(&a.target, a.pid)
        .await
        .map_err(manager_error)?;
    out.print(&to_value(&info)?, output::adopt_line);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_info_is_what_process_info_says_of_an_absent_target() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Arc::new(dms_store::PidFileStore::open(dir.path()).unwrap());
            let spawner = Arc::new(dms_proc::fake::FakeSpawner::default());
            let opts = ManagerOptions::new(dir.path());
            let (manager, _) = Manager::open(store, spawner, opts).await.unwrap();
            let target: TargetId = "gone".parse().unwrap();
            let info = manager.process_info(&target).await.unwrap();
            assert_eq!(info.state, ProcessState::Absent);
            assert_eq!(absent_info(&manager, &target), info);
        });
    }

    #[test]
    fn auto_picks_sqlite_only_when_the_database_exists() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            choose_backend(BackendChoice::Auto, dir.path()),
            Backend::Pidfile
        );
        assert_eq!(
            choose_backend(BackendChoice::Sqlite, dir.path()),
            Backend::Sqlite
        );
        std::fs::write(dir.path().join(SQLITE_FILE), b"").unwrap();
        assert_eq!(
            choose_backend(BackendChoice::Auto, dir.path()),
            Backend::Sqlite
        );
        assert_eq!(
            choose_backend(BackendChoice::Pidfile, dir.path()),
            Backend::Pidfile
        );
    }
}
