//! `GET /metrics` (serve.md, "Metrics"): the daemon's state for Prometheus, in the text
//! exposition format 0.0.4 ([`CONTENT_TYPE`]), built on the official `prometheus-client`
//! crate.
//!
//! - What the daemon counts as it goes lives in [`Metrics`] (held by the [`Daemon`]): the
//!   API's requests (`dms_api_requests_total{method, route, code}`, recorded by the
//!   [`track`] middleware with the route *template* axum matched, never a raw path) and
//!   their durations (`dms_api_request_duration_seconds`, a histogram). The events
//!   (`dms_events_total{kind}`) are counted by the [`EventLog`](crate::EventLog).
//! - What describes the helpers is computed at each scrape from the same info documents
//!   `GET /v1/targets` serves (`dms_helpers{state}`, `dms_mounts{state}` and the
//!   per-target series), so a target that is gone has no series left: one series per
//!   target and per metric, none per PID.
//! - The daemon's own `process_*` series come from `/proc/self` ([`ProcessCollector`]).
//!
//! [`router`] is the TCP side of `--metrics-listen`: `/metrics` and nothing else.

mod process;
mod targets;

use crate::error::ApiError;
use crate::Daemon;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use process::ProcessCollector;
pub use targets::Snapshot;

/// The `Content-Type` of the answer: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `route` label of a request that matched no route (a 404): a fixed value, so that
/// a scan of random paths cannot make a series per path.
pub const UNMATCHED: &str = "unmatched";

/// The upper bounds (seconds) of `dms_api_request_duration_seconds`: from 100 µs (a
/// lookup served from memory) to 30 s (a spawn waiting for its mount).
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// The labels of `dms_api_requests_total`: all bounded (a fixed set of methods, the
/// route templates of the router, the status codes).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    code: u16,
}

/// What the daemon counts as it serves: requests and their durations.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Nothing counted yet.
    pub fn new() -> Metrics {
        Metrics {
            requests: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        }
    }

    /// Records one answered request: `route` is the matched route template (or
    /// [`UNMATCHED`]), `elapsed` the time until the response's head was ready (an event
    /// stream counts until its first byte can be sent, not until it ends).
    pub fn observe(&self, method: &Method, route: &str, code: StatusCode, elapsed: Duration) {
        let labels = RequestLabels {
            method: method_label(method),
            route: route.to_owned(),
            code: code.as_u16(),
        };
        self.requests.get_or_create(&labels).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The `method` label: the standard methods by name, any other (a client may send any
/// token) as `other`, so the label stays bounded.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The middleware that counts every request (a layer of the router, so that axum's
/// [`MatchedPath`] is known: `/v1/targets/{target}`, not the target's name).
pub async fn track(State(d): State<Arc<Daemon>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    d.metrics
        .observe(&method, &route, response.status(), start.elapsed());
    response
}

/// The text of one scrape: the counted series, the snapshot of the helpers (taken now),
/// the build and the daemon's own process.
pub async fn render(d: &Daemon) -> Result<String, ApiError> {
    let snapshot = Snapshot::take(d).await?;
    let mut registry = Registry::default();
    registry.register(
        "dms_build",
        "The version of dms serve (value 1)",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register(
        "dms_api_requests",
        "Requests answered by the API, by method, route template and status code",
        d.metrics.requests.clone(),
    );
    registry.register(
        "dms_api_request_duration_seconds",
        "Time from a request's arrival until its response is ready to send",
        d.metrics.duration.clone(),
    );
    registry.register_collector(Box::new(snapshot));
    registry.register_collector(Box::new(ProcessCollector));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map_err(|e| ApiError::failed(format!("cannot encode the metrics: {e}")))?;
    Ok(text)
}

/// `GET /metrics`.
pub async fn scrape(State(d): State<Arc<Daemon>>) -> Result<Response, ApiError> {
    let text = render(&d).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

async fn only_metrics(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {} here: this port serves GET /metrics only (the API is on the \
         daemon's Unix socket)",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("/metrics does not take {method}; use GET"),
    )
}

/// The router of `--metrics-listen`: `GET /metrics`, 404 for every other path, 405 for
/// another method. It changes nothing, so it needs no peer check.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(only_metrics)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(daemon.clone(), track))
        .with_state(daemon)
}

/// Serves [`router`] on `listener` (the TCP address of `--metrics-listen`) until the
/// daemon shuts down.
pub async fn serve_tcp(listener: tokio::net::TcpListener, daemon: Arc<Daemon>) {
    let mut stop = daemon.shutdown_signal();
    let app = router(daemon);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    if let Err(e) = served.await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}
