//! A `dms serve` started by a test, and requests to it on its socket: the one harness of
//! dms-cli's daemon tests (API, logs, storm, memory, supervision, s3fs, and the
//! `World`s that run the CLI through a daemon).
//!
//! The kit depends on no dms crate, so the binary is passed in: through [`Instance`],
//! which a test's world implements (dms-cli's tests pass
//! `assert_cmd::cargo::cargo_bin("dms")`), or to [`Served::launch`] directly. A test
//! signals only the daemon it started.

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
pub use rustix::process::Signal;
use serde_json::Value;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::wait_for;

/// Where a daemon runs: what [`Served::start`] needs of a test's world.
pub trait Instance {
    /// The `dms` binary.
    fn dms_bin(&self) -> PathBuf;
    /// The run dir (`--run-dir`).
    fn dms_run_dir(&self) -> PathBuf;
    /// The backend's name (`--backend`).
    fn dms_backend(&self) -> &str;
    /// A dir of the test's own for the daemon's log.
    fn scratch_dir(&self) -> PathBuf;
}

/// A `dms serve` started by the test; SIGTERMed (then SIGKILLed after 10 s) when dropped.
pub struct Served {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its stderr, in a file.
    pub log: PathBuf,
}

impl Served {
    /// Starts `dms serve` with `extra` flags on the world's run dir and waits until it
    /// answers `GET /v1/health` with its own PID (startup recovery is done by then).
    pub fn start(world: &impl Instance, extra: &[&str]) -> Served {
        Served::start_with_env(world, extra, &[])
    }

    /// [`Served::start`] with `env` added to the daemon's environment.
    pub fn start_with_env(world: &impl Instance, extra: &[&str], env: &[(&str, &str)]) -> Served {
        let run_dir = world.dms_run_dir();
        std::fs::create_dir_all(&run_dir).unwrap();
        let log = world.scratch_dir().join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        Served::launch(
            &world.dms_bin(),
            &run_dir,
            world.dms_backend(),
            &log,
            extra,
            env,
        )
    }

    /// Starts `bin --run-dir RUN --backend BACKEND serve EXTRA...` with its stderr in
    /// `log`, without dms's own environment variables (`DMS_RUN_DIR`, `DMS_BACKEND`,
    /// `RUST_LOG`, `NOTIFY_SOCKET`) but with `env`, and waits (up to 30 s) until it
    /// answers `GET /v1/health` with its own PID: a connection alone could reach a
    /// listener that a killed daemon's child held for an instant after its fork.
    pub fn launch(
        bin: &Path,
        run_dir: &Path,
        backend: &str,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Served {
        let child = std::process::Command::new(bin)
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--backend")
            .arg(backend)
            .arg("serve")
            .args(extra)
            .env_remove("DMS_RUN_DIR")
            .env_remove("DMS_BACKEND")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("dms serve starts");
        let mut served = Served {
            child: Some(child),
            socket: run_dir.join("dms.sock"),
            log: log.to_owned(),
        };
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
            "dms serve did not come up on {}: {}",
            served.socket.display(),
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

    /// Sends `sig` to the daemon (which this test started).
    pub fn signal(&self, sig: Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("a PID");
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGKILL, and waits for (reaps) the daemon.
    pub fn sigkill(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGTERM; waits (up to 30 s, else it panics) for the exit and returns its code.
    pub fn stop(&mut self) -> i32 {
        self.signal(Signal::TERM);
        let mut c = self.child.take().expect("running");
        let mut code = None;
        let stopped = wait_for(Duration::from_secs(30), || {
            code = c.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        if !stopped {
            let _ = c.kill();
            let _ = c.wait();
            panic!("dms serve did not stop on SIGTERM");
        }
        code.unwrap()
    }

    /// One request (see [`call_within`]), expecting an answer within 120 s; the status,
    /// the body as JSON (null when it is not), the body as text.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value, String) {
        let a = call_within(Duration::from_secs(120), &self.socket, method, path, body);
        (a.status, a.json(), a.text)
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

    /// Polls `GET /v1/targets/{target}` until `cond` holds (at most `timeout`, else it
    /// panics with the last answer).
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
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, Signal::TERM);
            }
            wait_for(Duration::from_secs(10), || {
                c.try_wait().ok().flatten().is_some()
            });
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

/// The body of `GET /v1/events?since=N`, once the stream answered 200.
async fn event_stream(socket: &Path, since: u64) -> hyper::body::Incoming {
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
    resp.into_body()
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
        let mut body = event_stream(socket, since).await;
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

/// The kept events (from seq 0) but heartbeats, read until no line came for `idle`.
pub fn events_idle(socket: &Path, idle: Duration) -> Vec<Value> {
    runtime().block_on(async {
        let mut body = event_stream(socket, 0).await;
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

/// The events of `kind`.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// The events of `kind` about `target`.
pub fn of<'a>(events: &'a [Value], kind: &str, target: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["target"] == target)
        .collect()
}

/// Seconds between two events' `time` fields (RFC 3339).
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
