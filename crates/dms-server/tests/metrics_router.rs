//! `GET /metrics` in-process (`tower::ServiceExt::oneshot`), over a manager with a fake
//! process table: the names and labels of serve.md, per-target series that follow the
//! listing, bounded request labels, and the TCP router that serves `/metrics` only. The
//! real tools (promtool, a Prometheus server) check a real daemon in
//! `crates/dms-cli/tests/metrics.rs`.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use dms_core::{Manager, ManagerOptions, UsageSampling};
use dms_proc::fake::FakeSpawner;
use dms_server::{Access, Daemon, Peer};
use http_body_util::BodyExt;
use serde_json::json;
use std::sync::Arc;
use tower::ServiceExt;

const ROOT: Peer = Peer {
    uid: 0,
    gid: 0,
    pid: None,
};

async fn daemon(dir: &std::path::Path) -> Arc<Daemon> {
    let store = Arc::new(dms_store::MemoryStore::new(dir.join("s3")));
    let mut opts = ManagerOptions::new(dir);
    opts.usage = UsageSampling::Lifetime;
    let (manager, recovery) = Manager::open(store, Arc::new(FakeSpawner::default()), opts)
        .await
        .unwrap();
    let access = Access {
        daemon_uid: 0,
        socket_gid: 0,
    };
    Daemon::new(
        Arc::new(manager),
        &recovery,
        access,
        Box::new(|_files, _items| Ok(Vec::new())),
    )
}

/// One request through `app`; the status, the content type and the body.
async fn call(
    app: axum::Router,
    method: Method,
    uri: &str,
    body: &str,
) -> (StatusCode, String, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    req.extensions_mut().insert(ROOT);
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of the sample `series` (name and labels exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn names_labels_and_series_that_follow_the_targets() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path()).await;
    let app = dms_server::router(d.clone());
    for t in ["alpha", "beta"] {
        let r = call(
            app.clone(),
            Method::POST,
            &format!("/v1/targets/{t}/spawn"),
            &json!({"argv": ["sleep", "300"]}).to_string(),
        )
        .await;
        assert_eq!(r.0, StatusCode::CREATED, "{}", r.2);
    }
    assert_eq!(
        call(app.clone(), Method::GET, "/v1/targets/alpha", "")
            .await
            .0,
        StatusCode::OK
    );
    let r = call(app.clone(), Method::GET, "/no/such/path-x1234", "").await;
    assert_eq!(r.0, StatusCode::NOT_FOUND);

    let (status, ct, text) = call(app.clone(), Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    for (series, want) in [
        (r#"dms_helpers{state="running"}"#, 2.0),
        (r#"dms_helpers{state="stale"}"#, 0.0),
        (r#"dms_helpers{state="corrupt"}"#, 0.0),
        (r#"dms_mounts{state="stale"}"#, 0.0),
        (r#"dms_helper_up{target="alpha"}"#, 1.0),
        (r#"dms_helper_up{target="beta"}"#, 1.0),
        (r#"dms_helper_restarts_total{target="alpha"}"#, 0.0),
        (r#"dms_events_total{kind="spawned"}"#, 2.0),
        (
            r#"dms_api_requests_total{method="GET",route="/v1/targets/{target}",code="200"}"#,
            1.0,
        ),
        (
            r#"dms_api_requests_total{method="POST",route="/v1/targets/{target}/spawn",code="201"}"#,
            2.0,
        ),
        (
            r#"dms_api_requests_total{method="GET",route="unmatched",code="404"}"#,
            1.0,
        ),
        (
            &format!(
                r#"dms_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
        ("dms_api_request_duration_seconds_count", 4.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    let start = sample(&text, r#"dms_helper_start_time_seconds{target="alpha"}"#)
        .unwrap_or_else(|| panic!("a start time in:\n{text}"));
    assert!(start > 1.0e9, "{start}");
    assert!(
        sample(&text, r#"dms_helper_cpu_seconds_total{target="alpha"}"#).is_some(),
        "{text}"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(
            sample(&text, name).is_some_and(|v| v > 0.0 || name == "process_cpu_seconds_total"),
            "{name} in:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE dms_api_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        !text.contains("x1234"),
        "a raw path became a label:\n{text}"
    );

    // A killed target is no longer listed: its series go with it.
    let r = call(app.clone(), Method::POST, "/v1/targets/alpha/kill", "{}").await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    // The manager's events reach the daemon's log through a task of their own: await
    // the kill's event before the scrape that counts it.
    let killed = || d.events.counts().iter().any(|(k, _)| k == "killed");
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !killed() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the killed event reaches the event log within 10 s");
    let (_, _, text) = call(app.clone(), Method::GET, "/metrics", "").await;
    assert!(!text.contains(r#"target="alpha""#), "{text}");
    assert_eq!(sample(&text, r#"dms_helper_up{target="beta"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"dms_helpers{state="running"}"#), Some(1.0));
    assert_eq!(
        sample(&text, r#"dms_events_total{kind="killed"}"#),
        Some(1.0)
    );
    // The scrape before this one is counted too.
    assert_eq!(
        sample(
            &text,
            r#"dms_api_requests_total{method="GET",route="/metrics",code="200"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_unknown_method_is_one_bounded_label() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path()).await;
    let app = dms_server::router(d.clone());
    for m in ["FROB", "WIBBLE"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        call(app.clone(), method, "/v1/health", "").await;
    }
    let (_, _, text) = call(app, Method::GET, "/metrics", "").await;
    assert!(!text.contains("FROB") && !text.contains("WIBBLE"), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"dms_api_requests_total{method="other",route="/v1/health",code="405"}"#
        ),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test]
async fn the_tcp_router_serves_metrics_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path()).await;
    let app = dms_server::metrics::router(d.clone());
    let (status, ct, text) = call(app.clone(), Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, dms_server::metrics::CONTENT_TYPE);
    assert!(text.contains("dms_build_info"), "{text}");
    for path in ["/v1/health", "/v1/targets", "/", "/metrics/x"] {
        let (status, _, body) = call(app.clone(), Method::GET, path, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(body.contains("GET /metrics only"), "{body}");
    }
    let (status, _, _) = call(app.clone(), Method::POST, "/metrics", "{}").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (_, _, text) = call(app, Method::GET, "/metrics", "").await;
    assert_eq!(
        sample(
            &text,
            r#"dms_api_requests_total{method="GET",route="unmatched",code="404"}"#
        ),
        Some(4.0),
        "{text}"
    );
}
