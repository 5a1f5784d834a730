//! The daemon harness of `daemon/mod.rs`, with what the supervision and s3fs tests
//! add to it: requests answered as (status, JSON, text), the info and supervision
//! objects of a target, polling, and the kept events.

#![allow(dead_code)]

#[path = "../daemon/mod.rs"]
mod base;

pub use base::Served;

use crate::common::wait_for;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

impl Served {
    /// Sends `sig` to the daemon (which this test started).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// One request (see [`call`]).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value, String) {
        call(&self.socket, method, path, body)
    }

    /// `GET path`, expecting 200; the JSON document.
    pub fn get(&self, path: &str) -> Value {
        let (code, v, text) = self.call("GET", path, None);
        assert_eq!(code, 200, "GET {path}: {text}");
        v
    }

    /// `POST path` with `body`, expecting `want`; the JSON document.
    pub fn post(&self, path: &str, body: Value, want: u16) -> Value {
        let (code, v, text) = self.call("POST", path, Some(body));
        assert_eq!(code, want, "POST {path}: {text}");
        v
    }

    /// The `supervision` object of `target`.
    pub fn supervision(&self, target: &str) -> Value {
        self.get(&format!("/v1/targets/{target}"))["supervision"].clone()
    }

    /// Polls `GET /v1/targets/{target}` until `cond` holds (at most `timeout`).
    pub fn wait_info(
        &self,
        target: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let ok = wait_for(timeout, || {
            last = self.get(&format!("/v1/targets/{target}"));
            cond(&last)
        });
        assert!(
            ok,
            "{target}: condition not reached in {timeout:?}; last: {last}"
        );
        last
    }

    /// The kept events so far (replayed from 0, read until the stream is idle 300 ms).
    pub fn events(&self) -> Vec<Value> {
        events_idle(&self.socket, Duration::from_millis(300))
    }
}

/// One request on a new connection (an answer within 120 s); the status, the body as
/// JSON (null when it is not), the body as text.
pub fn call(socket: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value, String) {
    let a = base::call_within(Duration::from_secs(120), socket, method, path, body);
    (a.status, a.json(), a.text)
}

/// The kept events (from seq 0), read until no line came for `idle`.
pub fn events_idle(socket: &Path, idle: Duration) -> Vec<Value> {
    base::runtime().block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/v1/events?since=0")
            .header("host", "dms")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut buf = String::new();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(idle, body.frame()).await {
            if let Ok(data) = frame.into_data() {
                buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
        buf.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["kind"] != "heartbeat")
            .collect()
    })
}

/// The events of `kind` about `target`.
pub fn of<'a>(events: &'a [Value], kind: &str, target: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["target"] == target)
        .collect()
}

/// Seconds between two events' `time` fields.
pub fn secs_between(a: &Value, b: &Value) -> f64 {
    let t = |v: &Value| {
        humantime::parse_rfc3339(v["time"].as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    t(b) - t(a)
}
