//! `dms serve`: the long-lived manager of one run dir, answering the HTTP API of
//! serve.md (crate `dms-server`) on `<run-dir>/dms.sock`.
//!
//! Start: one instance per run dir (an `flock` on `<run-dir>/dms-serve.lock`, which holds
//! the PID of the daemon that has it), startup recovery (full mode: exits are watched),
//! the socket (a stale one of a dead daemon replaced, a live one never), `READY=1` and
//! the watchdog through `$NOTIFY_SOCKET`; with `--metrics-listen`, `GET /metrics` over TCP
//! too. Stop (SIGTERM, SIGINT): stop accepting, finish
//! the requests in flight (at most 5 s), exit 0; the helpers keep running.

use crate::cli::BackendChoice;
use crate::cli::ServeArgs;
use crate::env;
use crate::run::{choose_backend, Backend, CliError};
use dms_core::{Manager, ManagerOptions, UsageSampling};
use dms_server::{render, serve::ServeOptions, Access, Daemon};
use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The name of the instance lock in the run dir.
pub const LOCK_FILE: &str = "dms-serve.lock";

/// The name of the default socket in the run dir.
pub const SOCKET_FILE: &str = "dms.sock";

/// How often the usage of every helper is sampled.
const USAGE_SAMPLING: Duration = Duration::from_secs(1);

/// Variables of the daemon's own environment that its helpers must not inherit (they
/// speak for the daemon to systemd).
const DAEMON_ONLY_ENV: [&str; 5] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
];

fn failed(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

/// Runs the daemon until SIGTERM or SIGINT; `Ok(0)` then.
pub async fn run(
    run_dir: PathBuf,
    backend: BackendChoice,
    args: ServeArgs,
) -> Result<u8, CliError> {
    let run_dir = std::path::absolute(&run_dir)
        .map_err(|e| CliError::Usage(format!("cannot make {} absolute: {e}", run_dir.display())))?;
    let stop = stop_signal()?;
    // Installed at once too: a SIGHUP during startup must not end the daemon.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| failed(format!("cannot handle SIGHUP: {e}")))?;
    let socket_gid = match &args.socket_group {
        None => None,
        Some(name) => Some(group_id(name)?),
    };
    // Inline environment values live in this process's memory: no core file, no
    // /proc/PID/mem or environ for other users.
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "cannot make the daemon undumpable (PR_SET_DUMPABLE)");
    }
    raise_fd_limit();
    std::fs::create_dir_all(&run_dir).map_err(|e| {
        failed(format!(
            "cannot create the run directory {}: {e}; create it or choose another --run-dir",
            run_dir.display()
        ))
    })?;
    let _instance = lock_instance(&run_dir)?;
    let socket = args
        .socket
        .clone()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .unwrap_or_else(|| run_dir.join(SOCKET_FILE));

    // Refused before anything is touched: the run dir's recovery waits for a usable socket.
    check_socket(&socket)?;
    let metrics_listener = match args.metrics_listen {
        None => None,
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            failed(format!(
                "cannot listen on {addr} for --metrics-listen: {e}; choose another address \
                 or port (another process may hold it)"
            ))
        })?),
    };
    let backend = choose_backend(backend, &run_dir);
    let store: Arc<dyn dms_store::PidStore> = match backend {
        Backend::Pidfile => {
            Arc::new(dms_store::PidFileStore::open(&run_dir).map_err(|e| failed(render(&e)))?)
        }
        Backend::Sqlite => {
            Arc::new(dms_store::SqliteStore::open(&run_dir).map_err(|e| failed(render(&e)))?)
        }
    };
    let spawner = Arc::new(dms_proc::linux::LinuxSpawner::new().map_err(|e| failed(render(&e)))?);
    // Watched before the startup recovery scans it, so no change after the scan is
    // missed (automatic sync, dms_server::sync).
    let watch = dms_server::sync::DiskWatch::new(store.pid_dir())
        .map_err(|e| tracing::warn!(error = %e, "no automatic sync of PID files written or removed from outside; lookups still load helpers found on disk"))
        .ok();
    let mut opts = ManagerOptions::new(run_dir.clone());
    // Usage sampled in the background every second (serve.md: at most 2 s old); a
    // helper not sampled yet has its usage read without waiting.
    opts.usage = UsageSampling::Background {
        every: USAGE_SAMPLING,
    };
    let (manager, recovery) = Manager::open(store, spawner, opts)
        .await
        .map_err(|e| failed(render(&e)))?;
    let manager = Arc::new(manager);
    tracing::info!(
        adopted = recovery.adopted.len(),
        cleared = recovery.cleared.len(),
        "startup recovery done"
    );

    let listener = bind(&socket, socket_gid)?;
    let mut access = Access::of_this_process();
    if let Some(gid) = socket_gid {
        access.socket_gid = gid;
    }
    let daemon = Daemon::new(manager, &recovery, access, Box::new(build_env));
    if let Err(e) = dms_server::logs::watch::spawn_log_bounder(&daemon.manager, args.log_max_bytes)
    {
        return Err(failed(format!(
            "cannot start the thread that bounds the helper logs: {e}; check the process limits (ulimit -u)"
        )));
    }
    let targets = args
        .targets
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let sup = dms_server::SuperviseOptions {
        targets_dir: targets,
        mount_check: args.mount_check_secs,
    };
    if let Some(report) = dms_server::supervise::start(&daemon, sup).await {
        log_reload(&report);
    }
    start_reload_on_hangup(&daemon, hup);
    // Acting on the PID files changed from outside once every subscriber of the
    // manager's events (the event log, the supervisor) is in place.
    if let Some(watch) = watch {
        watch.spawn(daemon.manager.clone());
    }
    let app = dms_server::router(daemon.clone());
    if let Some(l) = metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving GET /metrics over TCP");
        }
        tokio::spawn(dms_server::metrics::serve_tcp(l, daemon.clone()));
    }
    tracing::info!(socket = %socket.display(), run_dir = %run_dir.display(), pid = std::process::id(), "dms serve is listening");
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot send READY=1 to $NOTIFY_SOCKET");
    }
    start_watchdog();
    dms_server::serve::serve(listener, app, daemon, ServeOptions::default(), stop).await;
    // The socket file goes with the daemon (the next one would replace it anyway).
    let _ = std::fs::remove_file(&socket);
    tracing::info!("dms serve stopped; the helpers keep running");
    Ok(0)
}

/// The helper environment of a spawn request: the daemon's own (without the variables
/// that speak for the daemon to systemd), the env files, the inline items.
fn build_env(files: &[PathBuf], items: &[OsString]) -> Result<Vec<(OsString, OsString)>, String> {
    let base = std::env::vars_os().filter(|(k, _)| !DAEMON_ONLY_ENV.iter().any(|d| k == d));
    env::build(base, files, items, |k| std::env::var_os(k)).map_err(|e| e.to_string())
}

fn group_id(name: &str) -> Result<u32, CliError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(CliError::Usage(format!(
            "--socket-group {name}: no such group; create it or name an existing group"
        ))),
        Err(e) => Err(failed(format!(
            "--socket-group {name}: cannot look it up: {e}"
        ))),
    }
}

/// Raises the soft limit of open files to the hard limit: each connection and each
/// helper's pidfd holds one.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
        }
    }
}

/// Takes the run dir's instance lock (held while the file stays open) and writes this
/// process's PID into it; refuses when another daemon holds it, naming its PID.
fn lock_instance(run_dir: &Path) -> Result<std::fs::File, CliError> {
    let path = run_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc_o_nofollow())
        .open(&path)
        .map_err(|e| failed(format!("cannot open the instance lock {}: {e}; the run directory must be writable by this user", path.display())))?;
    // A daemon killed in the middle of a spawn leaves, for a moment, a forked child that
    // has not reached its exec (it exits when it sees its parent gone) and still shares
    // the lock's open file: while the PID the file names is dead, that is who holds the
    // lock, so wait for it (as a supervisor restarting dms at once would meet it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK)
                if std::time::Instant::now() < deadline && holder_is_dead(&mut file) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break lock_result(other, &mut file, run_dir, &path)?,
        }
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "cannot write this daemon's PID into the instance lock");
    }
    Ok(file)
}

/// Whether the PID written in the instance lock names no live process (gone, or a
/// zombie): then the lock is held by a short-lived child of that dead daemon.
fn holder_is_dead(file: &mut std::fs::File) -> bool {
    let mut text = String::new();
    if file
        .rewind()
        .and_then(|()| file.read_to_string(&mut text))
        .is_err()
    {
        return false;
    }
    let Ok(pid) = text.trim().parse::<u32>() else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// The outcome of the instance lock's `flock`.
fn lock_result(
    r: rustix::io::Result<()>,
    file: &mut std::fs::File,
    run_dir: &Path,
    path: &Path,
) -> Result<(), CliError> {
    match r {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
            let holder = text.trim();
            let who = if holder.is_empty() {
                "another dms serve".to_owned()
            } else {
                format!("another dms serve (PID {holder})")
            };
            return Err(failed(format!(
                "{who} already serves the run directory {}; stop it first, or give this one \
                 another --run-dir",
                run_dir.display()
            )));
        }
        Err(e) => {
            return Err(failed(format!("cannot lock {}: {e}", path.display())));
        }
    }
    Ok(())
}

fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Refuses a socket path a live process answers on, or that is not a socket; removes
/// the socket file of a dead daemon.
fn check_socket(path: &Path) -> Result<(), CliError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(failed(format!(
                    "a live process answers on the socket {}; another daemon serves it \
                     (stop it first, or give this one another --socket)",
                    path.display()
                )))
            }
            Err(_) => {
                tracing::info!(socket = %path.display(), "replacing the socket file of a dead daemon");
                std::fs::remove_file(path).map_err(|e| {
                    failed(format!(
                        "cannot remove the stale socket {}: {e}",
                        path.display()
                    ))
                })?;
            }
        },
        Ok(_) => {
            return Err(failed(format!(
                "{} exists and is not a socket; move it away or give another --socket",
                path.display()
            )))
        }
        Err(_) => {}
    }
    Ok(())
}

/// Binds the socket, mode 0660, group `gid` when given (after [`check_socket`]).
fn bind(path: &Path, gid: Option<u32>) -> Result<tokio::net::UnixListener, CliError> {
    check_socket(path)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
        failed(format!(
            "cannot listen on {}: {e}; check the directory's permissions or give another --socket",
            path.display()
        ))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| failed(format!("cannot set the mode of {}: {e}", path.display())))?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            failed(format!(
                "cannot give {} to group {gid}: {e}; run as root or as a member of the group",
                path.display()
            ))
        })?;
    }
    Ok(listener)
}

/// `WATCHDOG=1` at half of `$WATCHDOG_USEC`, when systemd asks for it.
fn start_watchdog() {
    // As sd_watchdog_enabled(3): `$WATCHDOG_USEC`, for this process when `$WATCHDOG_PID`
    // names it or is unset (the sd-notify crate requires it set).
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
    let Some(usec) = usec.filter(|&u| u > 0 && for_us) else {
        return;
    };
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "cannot send WATCHDOG=1");
            }
        }
    });
}

fn log_reload(report: &dms_server::supervise::ReloadReport) {
    tracing::info!(
        started = report.started.len(),
        stopped = report.stopped.len(),
        restarted = report.restarted.len(),
        unchanged = report.unchanged,
        "declared targets applied"
    );
    for e in &report.errors {
        tracing::warn!(file = %e.file.display(), line = e.line, "{}", e.message);
    }
}

/// SIGHUP: re-reads `--targets DIR`, as `POST /v1/reload` does.
fn start_reload_on_hangup(daemon: &Arc<Daemon>, mut hup: tokio::signal::unix::Signal) {
    let weak = Arc::downgrade(daemon);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(d) = weak.upgrade() else { break };
            tracing::info!("SIGHUP: reloading the declared targets");
            log_reload(&dms_server::supervise::reload(&d).await);
        }
    });
}

/// Installs the SIGTERM and SIGINT handlers (at once, so a signal during startup is not
/// fatal) and returns a future that completes at the first of them.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler =
        |kind| signal(kind).map_err(|e| failed(format!("cannot handle SIGTERM/SIGINT: {e}")));
    let (mut term, mut int) = (
        handler(SignalKind::terminate())?,
        handler(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}
