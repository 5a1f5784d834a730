//! The endpoints of serve.md that exist so far, and the request documents they take
//! (`GET /metrics` is in [`crate::metrics`]).

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::events::{line_text, Line};
use crate::supervise::policy::{Policy, RestartPolicy};
use crate::supervise::spec::StoredSpec;
use crate::{peer, supervise, Daemon};
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dms_core::{HelperSpec, ProcessInfo};
use dms_store::{Pid, TargetId};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The default grace between SIGTERM and SIGKILL (kill, DELETE, cleanup, replace).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// The default time a helper with a mount has to mount it.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest duration a request may ask for (a day): longer is surely a mistake.
const MAX_SECS: f64 = 86_400.0;

/// How often an idle event stream sends a `heartbeat` line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The router of every endpoint, with the error documents for unknown paths (404),
/// wrong methods (405), refused peers (403), a panic (500) and shutdown (503).
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/targets", get(list))
        .route("/v1/targets/{target}", get(status).delete(forget))
        .route("/v1/targets/{target}/spawn", post(spawn))
        .route("/v1/targets/{target}/kill", post(kill))
        .route("/v1/targets/{target}/adopt", post(adopt))
        .route(
            "/v1/targets/{target}/logs",
            get(crate::logs::endpoint::logs),
        )
        .route("/v1/targets/{target}/restart", post(restart))
        .route("/v1/reload", post(reload))
        .route("/v1/cleanup", post(cleanup))
        .route("/v1/stats", get(stats))
        .route("/v1/events", get(events))
        .route("/metrics", get(crate::metrics::scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            peer::authorize,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(on_panic))
        // Outermost, so that refused, failed and panicked requests are counted too.
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            crate::metrics::track,
        ))
        .with_state(daemon)
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; the daemon goes on");
    ApiError::failed("internal error while handling the request (see the daemon's log)")
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {}; the endpoints are under /v1/ (see GET /v1/health)",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

/// The target of the path, or 400.
pub(crate) fn target_of(path: Result<Path<String>, PathRejection>) -> Result<TargetId, ApiError> {
    let Path(raw) =
        path.map_err(|e| ApiError::bad_request(format!("bad target in the path: {e}")))?;
    raw.parse::<TargetId>()
        .map_err(|e| ApiError::bad_request(format!("in the path: {e}")))
}

/// A duration in seconds from a request field: finite, not negative, at most a day.
fn secs(field: &str, v: Option<f64>, default: Duration) -> Result<Duration, ApiError> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && (0.0..=MAX_SECS).contains(&s) => Ok(Duration::from_secs_f64(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "field `{field}`: seconds must be a number from 0 to {MAX_SECS} (decimals allowed)"
        ))),
    }
}

/// The info object of the daemon: the manager's, plus `usage_sampled_at` (when its
/// usage columns were read, RFC 3339 with milliseconds; `null` when they are empty),
/// `supervision` (`null` for an unsupervised helper) and `detail` (why the state is what
/// it is, in words, or `null`: the text the command line shows beside a row; `dms
/// --json` leaves it out). Serialized straight into a response by the hot path (`GET
/// /v1/targets/{t}`), with no intermediate JSON value.
#[derive(serde::Serialize)]
pub(crate) struct InfoDoc<'a> {
    #[serde(flatten)]
    info: &'a ProcessInfo,
    #[serde(serialize_with = "rfc3339_millis")]
    usage_sampled_at: Option<SystemTime>,
    supervision: Value,
    detail: &'a Option<String>,
}

fn rfc3339_millis<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        None => s.serialize_none(),
    }
}

/// The info object of `info`, whose usage columns were read at `usage_sampled_at`.
pub(crate) fn info_doc_sampled<'a>(
    d: &Daemon,
    info: &'a ProcessInfo,
    usage_sampled_at: Option<SystemTime>,
) -> InfoDoc<'a> {
    InfoDoc {
        info,
        usage_sampled_at,
        supervision: d.supervisor.doc(&info.target),
        detail: &info.detail,
    }
}

/// The info object of `info`, made just now (its usage, when it has any, was read now),
/// as a JSON value.
pub(crate) fn info_doc(d: &Daemon, info: &ProcessInfo) -> Result<Value, ApiError> {
    let read_now = info.rss_bytes.map(|_| SystemTime::now());
    doc(&info_doc_sampled(d, info, read_now))
}

fn doc(v: &impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::failed(format!("cannot encode the answer: {e}")))
}

async fn health(State(d): State<Arc<Daemon>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": d.uptime_secs(),
        "run_dir": d.run_dir,
        "backend": d.backend,
    }))
}

async fn list(State(d): State<Arc<Daemon>>) -> Result<Response, ApiError> {
    let infos = d.manager.list().await?;
    let docs: Vec<InfoDoc<'_>> = infos
        .iter()
        .map(|info| info_doc_sampled(&d, info, info.usage_sampled_at))
        .collect();
    Ok(Json(docs).into_response())
}

async fn status(
    State(d): State<Arc<Daemon>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let target = target_of(path)?;
    let info = d.manager.process_info(&target).await?;
    Ok(Json(info_doc_sampled(&d, &info, info.usage_sampled_at)).into_response())
}

/// The `restart` object of a spawn request (omitted fields take the defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartRequest {
    policy: Option<RestartPolicy>,
    initial_delay_secs: Option<f64>,
    max_delay_secs: Option<f64>,
    reset_after_secs: Option<f64>,
    max_failures: Option<u32>,
    window_secs: Option<f64>,
}

impl RestartRequest {
    fn policy(&self) -> Result<Policy, ApiError> {
        let mut p = Policy {
            policy: self.policy.unwrap_or_default(),
            ..Policy::default()
        };
        let set = |to: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *to = v;
            }
        };
        set(&mut p.initial_delay_secs, self.initial_delay_secs);
        set(&mut p.max_delay_secs, self.max_delay_secs);
        set(&mut p.reset_after_secs, self.reset_after_secs);
        set(&mut p.window_secs, self.window_secs);
        if let Some(n) = self.max_failures {
            p.max_failures = n;
        }
        p.check("restart.").map_err(ApiError::bad_request)?;
        Ok(p)
    }
}

/// What a spawn request starts and records: the helper spec (environment included), the
/// spec kept on disk (no values), and the inline `KEY=VALUE` items (memory only).
struct Spawnable {
    helper: HelperSpec,
    stored: StoredSpec,
    inline: Vec<OsString>,
}

/// The spawn request of serve.md.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SpawnRequest {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    env_files: Vec<PathBuf>,
    mount: Option<PathBuf>,
    ready_timeout_secs: Option<f64>,
    log: Option<PathBuf>,
    replace: bool,
    grace_secs: Option<f64>,
    restart: Option<RestartRequest>,
}

fn absolute(field: &str, p: &std::path::Path) -> Result<(), ApiError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "field `{field}`: {:?} is not an absolute path; the daemon has no working \
             directory of yours, so give the full path",
            p.display().to_string()
        )))
    }
}

/// Checks a spawn request and builds its helper spec (the environment included).
fn spawn_spec(d: &Daemon, req: SpawnRequest) -> Result<Spawnable, ApiError> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(ApiError::bad_request(
            "field `argv`: required, a non-empty array whose first item is the program",
        ));
    }
    if let Some(n) = req.argv.iter().position(|a| a.contains('\0')) {
        return Err(ApiError::bad_request(format!(
            "field `argv[{n}]`: contains a NUL byte, which no program argument can hold"
        )));
    }
    let policy = req
        .restart
        .as_ref()
        .map_or_else(|| Ok(Policy::default()), RestartRequest::policy)?;
    let mut items = Vec::with_capacity(req.env.len());
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "field `env`: key {:?} is not a variable name (empty, or holds '=' or NUL)",
                k.escape_debug().to_string()
            )));
        }
        if v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "field `env.{k}`: the value contains a NUL byte, which no environment \
                 value can hold"
            )));
        }
        items.push(OsString::from(format!("{k}={v}")));
    }
    for (n, f) in req.env_files.iter().enumerate() {
        absolute(&format!("env_files[{n}]"), f)?;
    }
    if let Some(m) = &req.mount {
        absolute("mount", m)?;
    }
    if let Some(l) = &req.log {
        absolute("log", l)?;
    }
    if req.ready_timeout_secs.is_some() && req.mount.is_none() {
        return Err(ApiError::bad_request(
            "field `ready_timeout_secs`: only with `mount` (it is the time the helper has to \
             mount it)",
        ));
    }
    let ready = secs(
        "ready_timeout_secs",
        req.ready_timeout_secs,
        DEFAULT_READY_TIMEOUT,
    )?;
    let env = d
        .build_env(&req.env_files, &items)
        .map_err(ApiError::bad_request)?;
    let stored = StoredSpec {
        argv: req.argv.clone(),
        env_keys: req.env.keys().cloned().collect(),
        env_files: req.env_files.clone(),
        mount: req.mount.clone(),
        ready_timeout_secs: req.mount.as_ref().map(|_| ready.as_secs_f64()),
        log: req.log.clone(),
        restart: policy,
        declared: None,
    };
    let mut argv = req.argv.into_iter().map(OsString::from);
    let helper = HelperSpec {
        program: argv.next().unwrap_or_default(),
        args: argv.collect(),
        env,
        log: req.log,
        ready_timeout: req.mount.as_ref().map(|_| ready),
        mount: req.mount,
        // The grace of a replace is set by the caller (`spawn`, from `grace_secs`).
        replace: req.replace.then_some(DEFAULT_GRACE),
    };
    Ok(Spawnable {
        helper,
        stored,
        inline: items,
    })
}

async fn spawn(
    State(d): State<Arc<Daemon>>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<SpawnRequest>,
) -> Result<Response, ApiError> {
    let target = target_of(path)?;
    let grace = secs("grace_secs", req.grace_secs, DEFAULT_GRACE)?;
    let mut spec = spawn_spec(&d, req)?;
    // The old helper of a replace gets the request's grace; what can fail without
    // starting anything is checked before it is stopped (the manager's replace).
    spec.helper.replace = spec.helper.replace.map(|_| grace);
    let info = supervise::spawn(&d, &target, spec.stored, spec.inline, spec.helper).await?;
    Ok((StatusCode::CREATED, Json(info_doc(&d, &info)?)).into_response())
}

/// The body of `kill` (and of `DELETE`, where it is optional too).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct KillRequest {
    grace_secs: Option<f64>,
}

async fn kill(
    State(d): State<Arc<Daemon>>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<KillRequest>,
) -> Result<Json<Value>, ApiError> {
    let target = target_of(path)?;
    let grace = secs("grace_secs", req.grace_secs, DEFAULT_GRACE)?;
    supervise::stop(&d, &target, "stopped by kill");
    let report = d.manager.kill(&target, grace).await?;
    Ok(Json(doc(&report)?))
}

async fn forget(
    State(d): State<Arc<Daemon>>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<KillRequest>,
) -> Result<Json<Value>, ApiError> {
    let target = target_of(path)?;
    let grace = secs("grace_secs", req.grace_secs, DEFAULT_GRACE)?;
    supervise::forget(&d, &target);
    let report = d.manager.kill(&target, grace).await?;
    Ok(Json(doc(&report)?))
}

async fn restart(
    State(d): State<Arc<Daemon>>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<KillRequest>,
) -> Result<Json<Value>, ApiError> {
    let target = target_of(path)?;
    let grace = secs("grace_secs", req.grace_secs, DEFAULT_GRACE)?;
    let info = supervise::restart(&d, &target, grace).await?;
    Ok(Json(info_doc(&d, &info)?))
}

async fn reload(State(d): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let report = supervise::reload(&d).await;
    Ok(Json(doc(&report)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AdoptRequest {
    pid: Option<i64>,
}

async fn adopt(
    State(d): State<Arc<Daemon>>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<AdoptRequest>,
) -> Result<Json<Value>, ApiError> {
    let target = target_of(path)?;
    let raw = req
        .pid
        .ok_or_else(|| ApiError::bad_request("field `pid`: required, the PID to adopt"))?;
    let pid = Pid::new(raw).map_err(|e| ApiError::bad_request(format!("field `pid`: {e}")))?;
    let info = d.manager.adopt(&target, pid).await?;
    Ok(Json(info_doc(&d, &info)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CleanupRequest {
    all: bool,
    grace_secs: Option<f64>,
    mounts: bool,
}

async fn cleanup(
    State(d): State<Arc<Daemon>>,
    JsonBody(req): JsonBody<CleanupRequest>,
) -> Result<Json<Value>, ApiError> {
    let grace = secs("grace_secs", req.grace_secs, DEFAULT_GRACE)?;
    let mut report = if req.all {
        supervise::cleanup_all_begin(&d);
        d.manager.cleanup_all(grace).await?
    } else {
        d.manager.cleanup_dead().await?
    };
    if req.mounts {
        report.mounts = d.manager.cleanup_mounts().await?;
    }
    Ok(Json(doc(&report)?))
}

async fn stats(State(d): State<Arc<Daemon>>) -> Result<Json<Value>, ApiError> {
    let stats = d.manager.stats().await?;
    let mut v = doc(&stats)?;
    if let Some(o) = v.as_object_mut() {
        for (key, n) in d.supervisor.stats() {
            o.insert(key.into(), json!(n));
        }
    }
    Ok(Json(v))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
}

/// The state of one event stream.
struct Stream {
    replay: std::vec::IntoIter<Line>,
    rx: tokio::sync::broadcast::Receiver<Line>,
    last: u64,
    beat: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

async fn events(
    State(d): State<Arc<Daemon>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "bad query: {}; the only parameter is since=SEQ (a whole number)",
            e.body_text()
        ))
    })?;
    let since = q.since.unwrap_or(0);
    let (replay, rx, last) = d.events.subscribe(since);
    let start = tokio::time::Instant::now() + HEARTBEAT;
    let state = Stream {
        replay: replay.into_iter(),
        rx,
        last: since.min(last),
        beat: tokio::time::interval_at(start, HEARTBEAT),
        shutdown: d.shutdown_signal(),
    };
    let stream = futures_util::stream::unfold(state, next_line);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The next line of an event stream: the replay first, then live events (a `heartbeat`
/// after 15 s without one); the stream ends when the daemon shuts down or when the
/// client fell so far behind that events were lost (it resumes with `since`).
async fn next_line(mut s: Stream) -> Option<(Result<Bytes, std::convert::Infallible>, Stream)> {
    if let Some(line) = s.replay.next() {
        s.last = line.seq;
        return Some((Ok(Bytes::copy_from_slice(line.text.as_bytes())), s));
    }
    if *s.shutdown.borrow() {
        return None;
    }
    loop {
        tokio::select! {
            r = s.rx.recv() => match r {
                Ok(line) if line.seq <= s.last => continue,
                Ok(line) => {
                    s.last = line.seq;
                    s.beat.reset();
                    return Some((Ok(Bytes::copy_from_slice(line.text.as_bytes())), s));
                }
                Err(_) => return None,
            },
            _ = s.beat.tick() => {
                let text = line_text(s.last, "heartbeat", Value::Null, Value::Null, Map::new());
                return Some((Ok(Bytes::copy_from_slice(text.as_bytes())), s));
            }
            _ = s.shutdown.changed() => return None,
        }
    }
}
