//! A `dms serve` started by a test, and requests to it over its socket (a copy of the
//! harness of `serve.rs`, shared by the daemon tests that came after it; included with
//! `#[path = "common/served.rs"] mod served;`).

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
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Served {
    /// Starts `dms serve` on the world's run dir and waits until its socket answers.
    pub fn start(world: &World, extra: &[&str]) -> Served {
        Served::start_with_env(world, extra, &[])
    }

    /// [`Served::start`] with variables added to the daemon's environment.
    pub fn start_with_env(world: &World, extra: &[&str], env: &[(&str, &Path)]) -> Served {
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
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
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

    /// SIGTERM; waits for the exit and returns its code.
    pub fn stop(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "dms serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One request on a new connection; the status and the body (parsed as JSON when it
/// is JSON).
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
            Duration::from_secs(60),
            send.send_request(req.body(body).unwrap()),
        )
        .await
        .expect("an answer within 60 s")
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

/// Reads the event stream from `since` until `done` holds for the lines so far (at most
/// `timeout`); returns the events.
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

pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}
