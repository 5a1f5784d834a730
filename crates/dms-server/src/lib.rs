//! The HTTP API of `dms serve` (serve.md): HTTP/1.1 and JSON on a Unix socket, over one
//! [`dms_core::Manager`].
//!
//! - [`router`] builds the endpoints (an axum [`Router`](axum::Router)), testable
//!   in-process with `tower::ServiceExt::oneshot`;
//! - [`serve`](serve::serve) runs it on a [`tokio::net::UnixListener`]: the peer
//!   credentials of each connection, a bound on connections, header and body timeouts,
//!   and a graceful stop;
//! - [`EventLog`] numbers and keeps the manager's events for `GET /v1/events`;
//! - [`metrics`] answers `GET /metrics` (Prometheus text format 0.0.4), on the socket and
//!   on the TCP listener of `--metrics-listen` ([`metrics::serve_tcp`]).
//!
//! Documents are the manager's report types serialized as they are (the JSON that
//! `dms --json` prints), errors are `{"error": {"code", "message"}}` ([`ApiError`]).
//! Environment values of a spawn request are handed to the manager and never put in a
//! response, an event, a log line or a file.

mod body;
mod error;
pub mod events;
mod handlers;
pub mod logs;
pub mod metrics;
mod peer;
pub mod serve;
pub mod supervise;
pub mod sync;

pub use body::{JsonBody, BODY_TIMEOUT, MAX_BODY_BYTES};
pub use error::{remedy, render, ApiError};
pub use events::EventLog;
pub use handlers::router;
pub use peer::{Access, Peer};
pub use supervise::{SuperviseOptions, Supervisor};

use dms_core::{Manager, RecoveryReport};
use serde_json::{json, Map};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Builds a helper's environment from the env files (read at every start, in order) and
/// the inline `KEY=VALUE` items of a spawn request (which win). The error message names
/// the file, line or key and never a value. The daemon's command line supplies it (the
/// same rules as `dms spawn --env-file --env`).
pub type EnvBuilder =
    dyn Fn(&[PathBuf], &[OsString]) -> Result<Vec<(OsString, OsString)>, String> + Send + Sync;

/// The state of one daemon: its manager, its events, and what it tells about itself.
pub struct Daemon {
    /// The manager (full mode: startup recovery done, exits watched).
    pub manager: Arc<Manager>,
    /// The numbered events.
    pub events: EventLog,
    /// Who may change things.
    pub access: Access,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The backend's name (`pidfile`, `sqlite`).
    pub backend: String,
    /// What the API counts for `GET /metrics` (requests, durations).
    pub metrics: metrics::Metrics,
    /// Supervision: restart policies, mount health, specs, declared targets.
    pub supervisor: Supervisor,
    env_builder: Box<EnvBuilder>,
    started: Instant,
    shutdown: watch::Sender<bool>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("run_dir", &self.run_dir)
            .field("backend", &self.backend)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// A daemon over `manager`; `recovery` is what its startup recovery did, recorded as
    /// the first events (`adopted`, `cleaned`). Starts the task that moves the manager's
    /// events into [`Daemon::events`] (call it inside a tokio runtime).
    pub fn new(
        manager: Arc<Manager>,
        recovery: &RecoveryReport,
        access: Access,
        env_builder: Box<EnvBuilder>,
    ) -> Arc<Daemon> {
        let opts = manager.options();
        let run_dir = opts.run_dir.clone();
        let backend = manager.store().backend_name().to_owned();
        // Subscribed before the recovery events are written, so that no event of the
        // manager is missed between the two.
        let mut rx = manager.subscribe();
        let daemon = Arc::new(Daemon {
            manager,
            events: EventLog::new(),
            access,
            supervisor: Supervisor::new(&run_dir),
            run_dir,
            backend,
            metrics: metrics::Metrics::new(),
            env_builder,
            started: Instant::now(),
            shutdown: watch::channel(false).0,
            stopping: AtomicBool::new(false),
        });
        for tp in &recovery.adopted {
            daemon
                .events
                .push("adopted", json!(tp.target), json!(tp.pid.get()), Map::new());
        }
        for tp in &recovery.cleared {
            let mut fields = Map::new();
            fields.insert("reason".into(), json!("stale"));
            daemon
                .events
                .push("cleaned", json!(tp.target), json!(tp.pid.get()), fields);
        }
        let weak = Arc::downgrade(&daemon);
        tokio::spawn(async move {
            loop {
                let event = rx.recv().await;
                let Some(daemon) = weak.upgrade() else { break };
                match event {
                    Ok(e) => {
                        daemon.events.push_event(&e);
                        supervise::on_event(&daemon, &e);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the event log fell behind the manager");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        daemon
    }

    /// Seconds since the daemon started.
    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Marks the daemon as shutting down: new requests get 503 and event streams end.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    /// Whether [`Daemon::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A receiver that sees `true` once the daemon shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The helper environment of a spawn request ([`EnvBuilder`]).
    pub(crate) fn build_env(
        &self,
        files: &[PathBuf],
        items: &[OsString],
    ) -> Result<Vec<(OsString, OsString)>, String> {
        (self.env_builder)(files, items)
    }
}
