//! The router in-process (`tower::ServiceExt::oneshot`), over a manager with a fake
//! process table: every endpoint, and every error code of serve.md's table that does not
//! need a socket (the socket tests are in `crates/dms-cli/tests/serve.rs`).

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use dms_core::{Manager, ManagerOptions, UsageSampling};
use dms_proc::fake::FakeSpawner;
use dms_server::{Access, Daemon, Peer};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const ROOT: Peer = Peer {
    uid: 0,
    gid: 0,
    pid: None,
};
const NOBODY: Peer = Peer {
    uid: 65534,
    gid: 65534,
    pid: None,
};

struct World {
    _dir: tempfile::TempDir,
    daemon: Arc<Daemon>,
    fake: FakeSpawner,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(dms_store::MemoryStore::new(dir.path().join("s3")));
    let fake = FakeSpawner::default();
    let mut opts = ManagerOptions::new(dir.path());
    opts.usage = UsageSampling::Off;
    let (manager, recovery) = Manager::open(store, Arc::new(fake.clone()), opts)
        .await
        .unwrap();
    let access = Access {
        daemon_uid: 0,
        socket_gid: 0,
    };
    let daemon = Daemon::new(
        Arc::new(manager),
        &recovery,
        access,
        Box::new(|_files, items| {
            Ok(items
                .iter()
                .map(|i| {
                    let s = i.to_str().unwrap();
                    let (k, v) = s.split_once('=').unwrap();
                    (k.into(), v.into())
                })
                .collect())
        }),
    );
    World {
        _dir: dir,
        daemon,
        fake,
    }
}

/// Sends one request as `peer` (none: a connection whose peer is unknown).
async fn call(
    w: &World,
    peer: Option<Peer>,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let mut req = req.body(body.into()).unwrap();
    if let Some(p) = peer {
        req.extensions_mut().insert(p);
    }
    let resp = dms_server::router(w.daemon.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, v, text)
}

async fn get(w: &World, uri: &str) -> (StatusCode, Value, String) {
    call(w, Some(NOBODY), Method::GET, uri, None, Body::empty()).await
}

async fn post(w: &World, uri: &str, body: Value) -> (StatusCode, Value, String) {
    call(
        w,
        Some(ROOT),
        Method::POST,
        uri,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

#[track_caller]
fn assert_error(r: &(StatusCode, Value, String), status: StatusCode, code: &str) {
    assert_eq!(r.0, status, "{}", r.2);
    assert_eq!(r.1["error"]["code"], code, "{}", r.2);
    assert!(
        r.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        r.2
    );
}

#[tokio::test]
async fn every_endpoint_answers_its_document() {
    let w = world().await;
    let (s, v, _) = get(&w, "/v1/health").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["pid"], std::process::id());
    assert_eq!(v["backend"], "memory");
    assert!(v["uptime_secs"].as_f64().is_some());
    assert_eq!(get(&w, "/v1/targets").await.1, json!([]));
    let (s, v, _) = get(&w, "/v1/targets/t1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "absent");

    let (s, v, text) = post(
        &w,
        "/v1/targets/t1/spawn",
        json!({"argv": ["helper", "--x"], "env": {"AWS_SECRET_ACCESS_KEY": "hunter2-secret"},
               "restart": {"policy": "never"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{text}");
    assert_eq!(v["state"], "running");
    assert_eq!(v["supervision"], Value::Null);
    assert!(!text.contains("hunter2-secret"));
    let pid = v["pid"].as_i64().unwrap();

    let r = post(&w, "/v1/targets/t1/spawn", json!({"argv": ["helper"]})).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
    let (s, v, _) = post(
        &w,
        "/v1/targets/t1/spawn",
        json!({"argv": ["helper"], "replace": true, "grace_secs": 0.5}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_ne!(v["pid"].as_i64().unwrap(), pid, "replaced by a new helper");

    let (s, v, _) = get(&w, "/v1/targets").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, v, _) = get(&w, "/v1/stats").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["running"], 1);
    assert_eq!(v["supervised"], 0);

    let (s, v, _) = post(&w, "/v1/targets/t1/kill", json!({"grace_secs": 1})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["was_running"], true);
    assert_eq!(v["stopped"], true);
    // An empty body (no content type) takes the defaults.
    let (s, v, _) = call(
        &w,
        Some(ROOT),
        Method::POST,
        "/v1/targets/t1/kill",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["was_running"], false);

    // Adopt a process of the fake table that no target tracks.
    let foreign = w.fake.spawn_foreign().pid;
    let (s, v, text) = post(&w, "/v1/targets/t2/adopt", json!({"pid": foreign.get()})).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(v["state"], "running");
    let (s, v, _) = call(
        &w,
        Some(ROOT),
        Method::DELETE,
        "/v1/targets/t2",
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["was_running"], true);
    let (s, v, _) = post(&w, "/v1/cleanup", json!({"all": false})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["removed"].is_array());

    // The events: spawned, killed (replace), spawned, killed, adopted, killed; replayed
    // after `since`.
    let text = first_lines(&w, "/v1/events?since=0", 6).await;
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds[0], "spawned", "{text}");
    assert!(kinds.contains(&"adopted".to_owned()), "{text}");
    assert!(!text.contains("hunter2-secret"));
}

/// The first `n` lines of an (endless) event stream.
async fn first_lines(w: &World, uri: &str, n: usize) -> String {
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let resp = dms_server::router(w.daemon.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    let mut body = resp.into_body();
    let mut text = String::new();
    while text.lines().count() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the replay arrives")
            .unwrap()
            .unwrap();
        if let Some(data) = frame.data_ref() {
            text.push_str(std::str::from_utf8(data).unwrap());
        }
    }
    text
}

#[tokio::test]
async fn bad_requests_get_the_documented_codes() {
    let w = world().await;
    for uri in [
        "/v1/targets/..%2Fx",
        "/v1/targets/.hidden",
        "/v1/targets/a%00b",
        "/v1/targets/%FF",
    ] {
        assert_error(&get(&w, uri).await, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_error(
        &post(&w, "/v1/targets/..%2Fx/spawn", json!({"argv": ["x"]})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let r = post(
        &w,
        "/v1/targets/t/spawn",
        json!({"argv": ["x"], "bogus": 1}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert!(r.2.contains("bogus"), "{}", r.2);
    let r = post(&w, "/v1/targets/t/spawn", json!({"argv": "x"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert!(r.2.contains("argv"), "{}", r.2);
    let r = post(
        &w,
        "/v1/targets/t/spawn",
        json!({"argv": ["x"], "env": "K=secret-v"}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert!(!r.2.contains("secret-v"), "{}", r.2);
    assert_error(
        &post(&w, "/v1/targets/t/spawn", json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let r = post(
        &w,
        "/v1/targets/t/spawn",
        json!({"argv": ["x"], "restart": {"policy": "sometimes"}}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert!(r.2.contains("restart.policy"), "{}", r.2);
    let r = post(
        &w,
        "/v1/targets/t/spawn",
        json!({"argv": ["x"], "restart": {"policy": "always", "max_failures": 0}}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    assert!(r.2.contains("restart.max_failures"), "{}", r.2);
    assert_error(
        &post(
            &w,
            "/v1/targets/t/spawn",
            json!({"argv": ["x"], "mount": "rel/dir"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &post(&w, "/v1/targets/t/kill", json!({"grace_secs": -1})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    for pid in [json!(0), json!(1), json!(-5), json!("12"), json!(null)] {
        assert_error(
            &post(&w, "/v1/targets/t/adopt", json!({ "pid": pid })).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    // A PID no process has: adopt refused.
    assert_error(
        &post(&w, "/v1/targets/t/adopt", json!({"pid": 5_000_000})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &post(&w, "/v1/targets/t/adopt", json!({"pid": 30_001})).await,
        StatusCode::CONFLICT,
        "conflict",
    );
    let malformed = call(
        &w,
        Some(ROOT),
        Method::POST,
        "/v1/cleanup",
        Some("application/json"),
        "{\"all\": tru",
    )
    .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "bad_request");
    assert_error(
        &get(&w, "/v1/events?since=abc").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &get(&w, "/v1/events?bogus=1").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // 413: over 1 MiB, with and without a declared length.
    let big = format!("{{\"argv\": [\"{}\"]}}", "x".repeat(2 * 1024 * 1024));
    assert_error(
        &post(
            &w,
            "/v1/targets/t/spawn",
            serde_json::from_str(&big).unwrap(),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    let mut req = Request::post("/v1/targets/t/spawn")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "2097152")
        .body(Body::from("{}"))
        .unwrap();
    req.extensions_mut().insert(ROOT);
    let resp = dms_server::router(w.daemon.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 415: not JSON, declared or not.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        assert_error(
            &call(
                &w,
                Some(ROOT),
                Method::POST,
                "/v1/targets/t/spawn",
                ct,
                "{\"argv\": [\"x\"]}",
            )
            .await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    // 404 and 405, as JSON.
    assert_error(
        &get(&w, "/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(&get(&w, "/").await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &get(&w, "/v1/targets/t/spawn").await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        &call(
            &w,
            Some(ROOT),
            Method::PUT,
            "/v1/stats",
            None,
            Body::empty(),
        )
        .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_eq!(w.fake.spawn_count(), 0, "no bad request started anything");
}

#[tokio::test]
async fn only_privileged_peers_change_anything() {
    let w = world().await;
    let changes: [(Method, &str); 6] = [
        (Method::POST, "/v1/targets/t/spawn"),
        (Method::POST, "/v1/targets/t/kill"),
        (Method::POST, "/v1/targets/t/adopt"),
        (Method::DELETE, "/v1/targets/t"),
        (Method::POST, "/v1/cleanup"),
        (Method::POST, "/v1/targets/t/spawn"),
    ];
    for peer in [Some(NOBODY), None] {
        for (m, uri) in &changes {
            let r = call(
                &w,
                peer,
                m.clone(),
                uri,
                Some("application/json"),
                json!({"argv": ["x"]}).to_string(),
            )
            .await;
            assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
        }
        for uri in ["/v1/health", "/v1/targets", "/v1/targets/t", "/v1/stats"] {
            let r = call(&w, peer, Method::GET, uri, None, Body::empty()).await;
            assert_eq!(r.0, StatusCode::OK, "{uri}: {}", r.2);
        }
    }
    // The daemon's own uid and the socket's group may.
    let w2 = world().await;
    let mut access = w2.daemon.access;
    access.daemon_uid = 4242;
    access.socket_gid = 4343;
    assert!(access.may_change(&Peer {
        uid: 4242,
        gid: 1,
        pid: None
    }));
    assert!(access.may_change(&Peer {
        uid: 5000,
        gid: 4343,
        pid: None
    }));
    assert!(!access.may_change(&Peer {
        uid: 5000,
        gid: 5000,
        pid: None
    }));
    assert_eq!(w.fake.spawn_count(), 0);
}

#[tokio::test]
async fn shutting_down_answers_503() {
    let w = world().await;
    w.daemon.begin_shutdown();
    assert_error(
        &get(&w, "/v1/health").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
}
