//! Serving the router on a Unix socket: each connection's peer credentials attached to
//! its requests, at most [`ServeOptions::max_connections`] connections at once (further
//! ones wait in the listen queue), a time limit on reading each request's header (which
//! also closes idle keep-alive connections), and a graceful stop.

use crate::{Daemon, Peer};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Limits of [`serve`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections served at once; further ones wait until one closes.
    pub max_connections: usize,
    /// How long a client has to send a request's header, and how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long requests in flight may take to finish once the stop begins.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `app` on `listener` until `stop` completes; then stops accepting, marks
/// `daemon` as shutting down (new requests on open connections get 503, event streams
/// end) and waits up to [`ServeOptions::drain_timeout`] for the requests in flight.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    daemon: Arc<Daemon>,
    opts: ServeOptions,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let peer = stream.peer_cred().ok().map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        });
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            if let Some(p) = peer {
                req.extensions_mut().insert(p);
            }
            app.clone().oneshot(req)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    daemon.begin_shutdown();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(opts.drain_timeout) => {
            tracing::warn!(
                "requests still in flight after {} s; stopping anyway",
                opts.drain_timeout.as_secs_f64()
            );
        }
    }
}
