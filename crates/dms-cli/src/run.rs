//! Running one command: pick the backend, open the manager, act, print, choose the exit code.

use crate::cli::{
    AdoptArgs, BackendChoice, CleanupArgs, Cli, Command, EventsArgs, KillArgs, RestartArgs,
    RestartPolicy, SpawnArgs, StatusArgs,
};
use crate::client::{self, Client};
use crate::env::{self, EnvError};
use crate::output;
use crate::remote;
use crate::{EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_USAGE};
use dms_core::{
    HelperSpec, KillReport, ListOrder, Manager, ManagerOptions, ProcessInfo, ProcessState,
    RemovalReason, Removed, UsageSampling,
};
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
    /// `dms serve` refused the request as conflicting with what is (its `conflict`
    /// error: a helper already runs, an adoption is refused, nothing to restart): exit
    /// code 1.
    #[error("{0}")]
    Conflict(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) | CliError::Conflict(_) => EXIT_FAILED,
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
    CliError::Failed(dms_server::render(e))
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
        Command::Restart(a) => Prepared::Restart(a),
        Command::Events(a) => Prepared::Events(a),
        Command::Reload => Prepared::Reload,
        Command::Logs(a) => return crate::logs::run(&run_dir, cli.backend, cli.json, a).await,
        Command::Completions { .. } | Command::Man { .. } | Command::Serve(_) => {
            unreachable!("handled before the runtime starts")
        }
    };
    let out = Out { json: cli.json };
    // The daemon answers where its socket accepts a connection (serve.md "The CLI with
    // a daemon"); else this process acts on the run dir itself.
    let prepared = if cli.direct {
        prepared
    } else {
        match Client::connect(&client::socket_of(&run_dir)).await {
            Ok(mut c) => return through_daemon(&mut c, prepared, &out).await,
            Err(e) => {
                tracing::debug!(error = %e, "no daemon answers; acting on the run dir directly");
                prepared
            }
        }
    };
    let prepared = match prepared {
        Prepared::Restart(_) | Prepared::Events(_) | Prepared::Reload => {
            return Err(CliError::Failed(format!(
                "this command needs the daemon: {}",
                client::start_hint(&run_dir)
            )))
        }
        Prepared::Spawn(p) if p.restart.is_some_and(|r| r != RestartPolicy::Never) => {
            return Err(CliError::Usage(format!(
                "--restart needs the daemon, which supervises the helper: {}; or leave \
                 --restart out",
                client::start_hint(&run_dir)
            )))
        }
        other => other,
    };
    let backend = choose_backend(cli.backend, &run_dir);
    tracing::debug!(run_dir = %run_dir.display(), ?backend, "opening the manager");
    // Only `cleanup` scans every PID file and applies the startup rule (removing the
    // files of dead helpers): `status` and `stats` only read, as `systemctl status`
    // does, and `spawn`, `kill` and `adopt` need only their own target's entry.
    let one_shot = !matches!(prepared, Prepared::Cleanup(_));
    let read_only = matches!(prepared, Prepared::Status(_) | Prepared::Stats);
    let session = open_manager(&run_dir, backend, one_shot, read_only).await?;
    let result = match prepared {
        Prepared::Spawn(p) => spawn(&session, *p, &out).await,
        Prepared::Kill(a) => kill(&session, a, &out).await,
        Prepared::Status(a) => status(&session, a, &out).await,
        Prepared::Stats => stats(&session, &out).await,
        Prepared::Cleanup(a) => cleanup(&session, a, &out).await,
        Prepared::Adopt(a) => adopt(&session, a, &out).await,
        Prepared::Restart(_) | Prepared::Events(_) | Prepared::Reload => {
            unreachable!("refused above without a daemon")
        }
    };
    // A database locked by another process costs a wait and the identity checks of the
    // database: said at the default level (with -v the log's warning says it already).
    if let Some(notice) = session.sqlite.as_ref().and_then(|s| s.busy_notice()) {
        if cli.verbose == 0 && cli.quiet == 0 {
            eprintln!("dms: warning: {}", output::escaped(&notice));
        }
    }
    result
}

/// A command whose input is checked, before anything is touched.
enum Prepared {
    Spawn(Box<PreparedSpawn>),
    Kill(KillArgs),
    Status(StatusArgs),
    Stats,
    Cleanup(CleanupArgs),
    Adopt(AdoptArgs),
    Restart(RestartArgs),
    Events(EventsArgs),
    Reload,
}

/// Runs a prepared command through the daemon.
async fn through_daemon(c: &mut Client, prepared: Prepared, out: &Out) -> Result<u8, CliError> {
    match prepared {
        Prepared::Spawn(p) => remote::spawn(c, *p, out).await,
        Prepared::Kill(a) => remote::kill(c, a, out).await,
        Prepared::Status(a) => remote::status(c, a, out).await,
        Prepared::Stats => remote::stats(c, out).await,
        Prepared::Cleanup(a) => remote::cleanup(c, a, out).await,
        Prepared::Adopt(a) => remote::adopt(c, a, out).await,
        Prepared::Restart(a) => remote::restart(c, a, out).await,
        Prepared::Events(a) => remote::events(c, a, out).await,
        Prepared::Reload => remote::reload(c, out).await,
    }
}

/// A checked `dms spawn`: the spec for the one-shot path, and what the daemon's request
/// needs.
pub(crate) struct PreparedSpawn {
    /// The command line's arguments.
    pub args: SpawnArgs,
    /// The helper spec (environment: this process's, the files', the items').
    pub spec: HelperSpec,
    /// The log file shown in the output line.
    pub log_shown: PathBuf,
    /// The `--env` items alone, resolved (for the daemon, which adds them inline).
    pub inline_env: Vec<(OsString, OsString)>,
    /// The `--env-file` paths, absolute (the daemon reads them at every start).
    pub env_files: Vec<PathBuf>,
    /// `--restart`.
    pub restart: Option<RestartPolicy>,
}

fn prepare_spawn(args: SpawnArgs, run_dir: &Path) -> Result<PreparedSpawn, CliError> {
    let helper_env = env::build(std::env::vars_os(), &args.env_file, &args.env, |k| {
        std::env::var_os(k)
    })?;
    let inline_env = env::build(std::iter::empty(), &[], &args.env, |k| std::env::var_os(k))?;
    let env_files = args
        .env_file
        .iter()
        .map(|f| absolute(f))
        .collect::<Result<Vec<_>, _>>()?;
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
        replace: args.replace.then_some(args.grace),
    };
    let restart = args.restart;
    Ok(PreparedSpawn {
        args,
        spec,
        log_shown,
        inline_env,
        env_files,
        restart,
    })
}

/// An open manager, and what its startup recovery did in this invocation.
struct Session {
    manager: Manager,
    /// The SQLite store, when that is the backend (for its [`busy_notice`]).
    ///
    /// [`busy_notice`]: dms_store::SqliteStore::busy_notice
    sqlite: Option<dms_store::SqliteStore>,
    /// Entries whose PID was dead, removed by startup recovery (the existing deployment's
    /// startup rule; only `cleanup` runs it). `cleanup` reports them as removed.
    cleared: BTreeMap<TargetId, Pid>,
}

/// Opens the manager; `one_shot`: without startup recovery and exit watching
/// ([`ManagerOptions::one_shot`]), for a command that reads, or acts on one target;
/// `read_only`: for a command that changes nothing in `s3/`.
async fn open_manager(
    run_dir: &Path,
    backend: Backend,
    one_shot: bool,
    read_only: bool,
) -> Result<Session, CliError> {
    let sqlite = match backend {
        Backend::Pidfile => None,
        Backend::Sqlite if read_only => {
            Some(dms_store::SqliteStore::open_for_reading(run_dir).map_err(|e| failed(&e))?)
        }
        Backend::Sqlite => Some(dms_store::SqliteStore::open(run_dir).map_err(|e| failed(&e))?),
    };
    let store: Arc<dyn dms_store::PidStore> = match &sqlite {
        Some(s) => Arc::new(s.clone()),
        None if read_only => {
            Arc::new(dms_store::PidFileStore::open_for_reading(run_dir).map_err(|e| failed(&e))?)
        }
        None => Arc::new(dms_store::PidFileStore::open(run_dir).map_err(|e| failed(&e))?),
    };
    let spawner = Arc::new(dms_proc::linux::LinuxSpawner::new().map_err(|e| failed(&e))?);
    let mut opts = ManagerOptions::new(run_dir.to_owned());
    // CPU percent is the average since the helper started (what ps shows as %CPU), read
    // without waiting: sampling over an interval would make every spawn and status
    // wait for that interval.
    opts.usage = UsageSampling::Lifetime;
    opts.one_shot = one_shot;
    let (manager, recovery) = Manager::open(store, spawner, opts)
        .await
        .map_err(|e| failed(&e))?;
    tracing::debug!(?recovery, "startup recovery");
    let cleared = recovery
        .cleared
        .into_iter()
        .map(|tp| (tp.target, tp.pid))
        .collect();
    Ok(Session {
        manager,
        sqlite,
        cleared,
    })
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
        e @ dms_core::Error::MountRefused {
            bad_input: true, ..
        } => CliError::Usage(e.to_string()),
        dms_core::Error::NotReplaced {
            target,
            pid,
            source,
        } => CliError::Failed(format!(
            "target {target}: the new helper cannot be started, so the running helper (PID \
             {pid}) was left running and nothing changed: {}",
            manager_error(*source)
        )),
        dms_core::Error::ReplacedThenFailed {
            target,
            old_pid,
            source,
        } => CliError::Failed(format!(
            "target {target}: the old helper (PID {old_pid}) was stopped; the new one \
             failed: {}; the target has no helper now",
            manager_error(*source)
        )),
        other => failed(&other),
    }
}

/// Where the output goes and in which form.
pub(crate) struct Out {
    /// `--json`.
    pub json: bool,
}

impl Out {
    /// Prints `report` as JSON, or `human(report)` as text. A closed stdout (`dms status
    /// | head -1`) is not an error.
    pub fn print<T: Serialize>(
        &self,
        report: &T,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        self.write(if self.json {
            serde_json::to_string(report)
                .map_err(|e| CliError::Failed(format!("cannot encode the output as JSON: {e}")))?
        } else {
            output::escape_lines(human(report))
        })
    }

    /// Prints `doc` as it is (a document of `dms serve`, which may hold more than
    /// `report`, its typed reading) as JSON, or `human(report)` as text.
    pub fn print_doc<T>(
        &self,
        doc: &Value,
        report: &T,
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        self.write(if self.json {
            doc.to_string()
        } else {
            output::escape_lines(human(report))
        })
    }

    /// Writes `text` (already in the chosen form) and a final newline.
    pub fn write(&self, mut text: String) -> Result<(), CliError> {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .or_else(stdout_error)
    }
}

/// A write to stdout that failed: a closed pipe (`dms status | head -1`) is not an
/// error; anything else (`dms status >/dev/full`) is, with exit code 1.
pub(crate) fn stdout_error(e: std::io::Error) -> Result<(), CliError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(CliError::Failed(format!(
        "cannot write to stdout: {e}; the output is lost (check the file or device stdout \
         goes to)"
    )))
}

/// The exit code of `kill`: 0 stopped, 1 did not stop, 3 was not running.
pub(crate) fn kill_exit(report: &KillReport) -> u8 {
    match (report.was_running, report.stopped) {
        (false, _) => EXIT_NOT_RUNNING,
        (true, true) => 0,
        (true, false) => EXIT_FAILED,
    }
}

/// The exit code of `status TARGET`: 0 running, 3 not.
pub(crate) fn status_exit(info: &ProcessInfo) -> u8 {
    if info.running {
        0
    } else {
        EXIT_NOT_RUNNING
    }
}

async fn spawn(session: &Session, p: PreparedSpawn, out: &Out) -> Result<u8, CliError> {
    let info = session
        .manager
        .spawn(&p.args.target, p.spec)
        .await
        .map_err(manager_error)?;
    let log = p.log_shown.display().to_string();
    out.print(&info, |i| output::spawn_line(i, &log))?;
    Ok(0)
}

async fn kill(session: &Session, a: KillArgs, out: &Out) -> Result<u8, CliError> {
    let report = session
        .manager
        .kill(&a.target, a.grace)
        .await
        .map_err(manager_error)?;
    out.print(&report, output::kill_line)?;
    Ok(kill_exit(&report))
}

/// The detail shown for a row: the manager's, or for a dead entry what to do about it.
pub(crate) fn detail_of(info: &ProcessInfo) -> Option<String> {
    detail_ref(info).map(|d| d.to_string())
}

/// [`detail_of`] without a string of its own (written straight into a table row).
fn detail_ref(info: &ProcessInfo) -> Option<Detail<'_>> {
    match (&info.detail, info.state, info.pid) {
        (Some(d), _, _) => Some(Detail::Given(d)),
        (None, ProcessState::Stale, Some(pid)) => Some(Detail::Dead(pid)),
        _ => None,
    }
}

/// The detail of a row, see [`detail_of`].
enum Detail<'a> {
    /// The manager's detail.
    Given(&'a str),
    /// A stale entry: its PID is dead.
    Dead(Pid),
}

impl std::fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detail::Given(d) => f.write_str(d),
            Detail::Dead(pid) => write_dead(f, pid),
        }
    }
}

/// The detail of a stale entry whose PID is dead: what to do about it (the one-shot
/// path's rows and the daemon path's, [`crate::remote`], show the same words).
pub(crate) fn write_dead(
    w: &mut impl std::fmt::Write,
    pid: impl std::fmt::Display,
) -> std::fmt::Result {
    write!(w, "PID {pid} is dead; `dms cleanup` removes its PID file")
}

/// `status`: read-only. Rows are written as they are made (JSON) or kept as compact
/// table rows until the column widths are known (text): the memory of the command does
/// not hold an info object per target.
async fn status(session: &Session, a: StatusArgs, out: &Out) -> Result<u8, CliError> {
    let manager = &session.manager;
    if let Some(target) = &a.target {
        let info = manager.process_info(target).await.map_err(manager_error)?;
        let detail = detail_of(&info);
        out.print(&info, |i| {
            output::status_table(std::slice::from_ref(i), &[detail])
        })?;
        return Ok(status_exit(&info));
    }
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut failure: Option<std::io::Error> = None;
    let written = if out.json {
        let mut first = true;
        manager
            .list_each(ListOrder::ByTarget, |info| {
                if failure.is_some() {
                    return;
                }
                let sep: &[u8] = if std::mem::take(&mut first) {
                    b"["
                } else {
                    b","
                };
                let res = w.write_all(sep).and_then(|()| {
                    serde_json::to_writer(&mut w, &info).map_err(std::io::Error::from)
                });
                if let Err(e) = res {
                    failure = Some(e);
                }
            })
            .await
            .map_err(manager_error)?;
        w.write_all(if first { b"[]\n" } else { b"]\n" })
    } else {
        // Rows are made as the entries are classified (while the store reads the rest)
        // and sorted when the table is written.
        let mut table = output::StatusTable::default();
        manager
            .list_each(ListOrder::AsMade, |info| {
                table.push_info(&info, detail_ref(&info));
            })
            .await
            .map_err(manager_error)?;
        if table.is_empty() {
            w.write_all(b"no helpers tracked\n")
        } else {
            table.write_to(&mut w)
        }
    };
    failure
        .map_or(written, Err)
        .and_then(|()| w.flush())
        .or_else(stdout_error)?;
    Ok(0)
}

async fn stats(session: &Session, out: &Out) -> Result<u8, CliError> {
    let stats = session.manager.stats().await.map_err(manager_error)?;
    out.print(&stats, output::stats_line)?;
    Ok(0)
}

async fn cleanup(session: &Session, a: CleanupArgs, out: &Out) -> Result<u8, CliError> {
    let manager = &session.manager;
    let mut report = if a.all {
        manager.cleanup_all(a.grace).await
    } else {
        manager.cleanup_dead().await
    }
    .map_err(manager_error)?;
    if a.mounts {
        report.mounts = manager.cleanup_mounts().await.map_err(manager_error)?;
    }
    // What the startup recovery of this invocation removed is part of what it cleaned.
    report
        .removed
        .extend(session.cleared.keys().map(|target| Removed {
            target: target.clone(),
            reason: RemovalReason::Stale,
        }));
    report.removed.sort_by(|a, b| a.target.cmp(&b.target));
    out.print(&report, output::cleanup_line)?;
    Ok(0)
}

async fn adopt(session: &Session, a: AdoptArgs, out: &Out) -> Result<u8, CliError> {
    let info = session
        .manager
        .adopt(&a.target, a.pid)
        .await
        .map_err(manager_error)?;
    out.print(&info, output::adopt_line)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
