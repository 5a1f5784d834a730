//! A `dms serve` started by a test, and requests to it on its socket (for the log,
//! storm and memory tests, and under `supervised/` for the supervision tests; `serve.rs`
//! has its own copy of the same few functions).
//!
//! The test signals only the daemon it started.

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
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its stderr, in a file.
    pub log: PathBuf,
}

impl Served {
    /// Starts `dms serve` with `extra` flags on the world's run dir and waits until its
    /// socket answers (startup recovery is done by then).
    pub fn start(world: &World, extra: &[&str]) -> Served {
        Served::start_with_env(world, extra, &[])
    }

    /// [`Served::start`] with `env` added to the daemon's environment.
    pub fn start_with_env(world: &World, extra: &[&str], env: &[(&str, &str)]) -> Served {
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
        let mut served = Served {
            child: Some(child),
            socket: world.run_dir.join("dms.sock"),
            log,
        };
        // Up when `/v1/health` answers with this daemon's PID: a connection alone could
        // reach a listener a killed daemon's child held for an instant after its fork
        // (until it closed what it inherited), while this daemon still recovers.
        let pid = served.pid();
        let rt = runtime();
        let ok = wait_for(Duration::from_secs(30), || {
            if served.exited().is_some() {
                return true;
            }
            if StdUnixStream::connect(&served.socket).is_err() {
                return false;
            }
            let health = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    request(&served.socket, "GET", "/v1/health", None),
                )
                .await
            });
            matches!(health, Ok(Ok(a)) if a.json()["pid"] == pid)
        });
        assert!(
            ok && served.exited().is_none(),
            "dms serve did not come up: {}",
            served.log_text()
        );
        served
    }

    /// The daemon's PID.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Its exit code, once it exited.
    pub fn exited(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        c.try_wait().unwrap().map(|s| s.code().unwrap_or(-1))
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and waits for (reaps) the daemon.
    pub fn sigkill(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
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

/// A current-thread runtime for a test's requests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An answer: the status and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body as text.
    pub text: String,
    /// The content type.
    pub content_type: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// One request on a new connection, inside a runtime. An error is any failure to get a
/// whole answer: no connection, a connection closed before or during the answer.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
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
    let resp = send
        .send_request(req.body(body).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        content_type,
    })
}

/// [`request`] on its own runtime, expecting an answer within 60 s.
pub fn call(socket: &Path, method: &str, path: &str, body: Option<Value>) -> Answer {
    call_within(Duration::from_secs(60), socket, method, path, body)
}

/// [`request`] on its own runtime, expecting an answer within `limit`.
pub fn call_within(
    limit: Duration,
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    runtime().block_on(async {
        tokio::time::timeout(limit, request(socket, method, path, body.as_ref()))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {limit:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    })
}

/// Reads the event stream from `since` until `done` holds for the events so far (at most
/// `timeout`, then it panics with what came); returns the events.
pub fn events_until(
    socket: &Path,
    since: u64,
    timeout: Duration,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    runtime().block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("/v1/events?since={since}"))
            .header("host", "dms")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (mut buf, mut events) = (String::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&events) {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .unwrap_or_else(|_| panic!("events so far: {events:?}"))
                .expect("the stream goes on")
                .unwrap();
            if let Some(d) = frame.data_ref() {
                buf.push_str(std::str::from_utf8(d).unwrap());
                while let Some(n) = buf.find('\n') {
                    let line: String = buf.drain(..=n).collect();
                    events.push(serde_json::from_str(&line).unwrap());
                }
            }
        }
        events
    })
}

/// The events of `kind`.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}
