//! A `dms serve` started by a test, and a small HTTP client for its socket (shared by
//! the supervision and s3fs tests).

#![allow(dead_code)]

use crate::common::{wait_for, World};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A `dms serve` started by the test; SIGTERMed (then SIGKILLed) when dropped.
pub struct Served {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Served {
    /// Starts `dms serve` on the world's run dir with `extra` arguments and `env` added,
    /// and waits until its socket answers.
    pub fn start(world: &World, extra: &[&str], env: &[(&str, &str)]) -> Served {
        std::fs::create_dir_all(&world.run_dir).unwrap();
        let log = world.tmp.path().join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("dms"))
            .arg("--run-dir")
            .arg(&world.run_dir)
            .arg("--backend")
            .arg(world.backend.name())
            .arg("-vv")
            .arg("serve")
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("dms serve starts");
        let socket = world.run_dir.join("dms.sock");
        let mut served = Served {
            child: Some(child),
            socket,
            log,
        };
        let ok = wait_for(Duration::from_secs(30), || {
            StdUnixStream::connect(&served.socket).is_ok() || served.exited().is_some()
        });
        assert!(
            ok && served.exited().is_none(),
            "dms serve did not come up: {}",
            served.log_text()
        );
        served
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn exited(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        c.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` to the daemon (which this test started).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// SIGKILL; waits for the exit.
    pub fn sigkill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
        let _ = std::fs::remove_file(&self.socket);
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

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One request on a new connection; the status, the body as JSON (null when it is not),
/// the body as text.
pub fn call(socket: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value, String) {
    runtime().block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "dms");
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                http_body_util::Full::new(hyper::body::Bytes::from(v.to_string()))
            }
            None => http_body_util::Full::new(hyper::body::Bytes::new()),
        };
        let resp = tokio::time::timeout(
            Duration::from_secs(120),
            send.send_request(req.body(body).unwrap()),
        )
        .await
        .expect("an answer within 120 s")
        .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    })
}

/// The kept events (from seq 0), read until no line came for `idle`.
pub fn events_idle(socket: &Path, idle: Duration) -> Vec<Value> {
    runtime().block_on(async {
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
