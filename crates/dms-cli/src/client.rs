//! The command line's client of `dms serve`: one HTTP/1.1 connection (hyper) over the run
//! dir's Unix socket, JSON in and out, and the API's error documents turned into the
//! command line's errors and exit codes.

use crate::run::CliError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The socket a daemon of `run_dir` listens on (serve.md: `<run-dir>/dms.sock`).
pub fn socket_of(run_dir: &Path) -> PathBuf {
    run_dir.join("dms.sock")
}

/// How to start the daemon, for messages that need one.
pub fn start_hint(run_dir: &Path) -> String {
    format!(
        "no dms serve answers on {}; start it with `dms --run-dir {} serve`",
        socket_of(run_dir).display(),
        run_dir.display()
    )
}

/// A connection to a daemon.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    socket: PathBuf,
}

/// A daemon's answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Client {
    /// Connects to the daemon at `socket`. An error means no daemon answers there (no
    /// socket file, a socket left by a dead daemon, no permission to connect).
    pub async fn connect(socket: &Path) -> std::io::Result<Client> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "the connection to dms serve ended");
            }
        });
        Ok(Client {
            sender,
            socket: socket.to_owned(),
        })
    }

    /// Sends one request and returns the head of the answer with its body unread.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>, CliError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "dms");
        let body = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| CliError::Failed(format!("cannot build the request {path}: {e}")))?;
        self.sender
            .send_request(req)
            .await
            .map_err(|e| self.lost(path, &e))
    }

    /// The error of a connection that broke during a request: the request may or may
    /// not have taken effect.
    fn lost(&self, path: &str, e: &dyn std::fmt::Display) -> CliError {
        CliError::Failed(format!(
            "the connection to dms serve at {} broke during {path}: {e}; the daemon may \
             have stopped; check with `dms status`, or use --direct",
            self.socket.display()
        ))
    }

    /// One request and its whole answer.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CliError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.lost(path, &e))?
            .to_bytes();
        Ok(Answer { status, body })
    }

    /// One request whose success is a JSON document; an error document becomes the
    /// command line's error ([`api_error`]).
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let a = self.call(method, path, body).await?;
        if !a.status.is_success() {
            return Err(api_error(a.status, &a.body));
        }
        serde_json::from_slice(&a.body).map_err(|e| {
            CliError::Failed(format!(
                "dms serve answered {path} with a body that is not JSON ({e}); is the daemon \
                 the same version as this dms?"
            ))
        })
    }

    /// Follows a streaming answer (NDJSON), calling `line` with each line as it comes,
    /// until the daemon ends the stream or `line` returns `false`.
    pub async fn follow(
        &mut self,
        path: &str,
        mut line: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), CliError> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.lost(path, &e))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.lost(path, &e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let rest = pending.split_off(end + 1);
                let text = std::mem::replace(&mut pending, rest);
                if !line(&text[..end]) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The command line's error for an API error document: a refusal of the input (400,
/// 413, 415) is a usage error (exit code 2), anything else failed (exit code 1). The
/// message is the daemon's (which never holds an environment value).
pub fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let message = doc
        .as_ref()
        .and_then(|d| d.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "dms serve answered {status} with {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        });
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE => CliError::Usage(message),
        StatusCode::FORBIDDEN => CliError::Failed(format!(
            "{message}; changes through dms serve need root, the daemon's user or the socket's \
             group"
        )),
        StatusCode::CONFLICT => CliError::Conflict(message),
        _ => CliError::Failed(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_input_exit_2_and_the_rest_1() {
        let body = br#"{"error": {"code": "bad_request", "message": "field `argv`: required"}}"#;
        let e = api_error(StatusCode::BAD_REQUEST, body);
        assert_eq!(e.exit_code(), crate::EXIT_USAGE);
        assert_eq!(e.to_string(), "field `argv`: required");
        let e = api_error(StatusCode::CONFLICT, br#"{"error": {"message": "taken"}}"#);
        assert_eq!(e.exit_code(), crate::EXIT_FAILED);
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>");
        assert!(e.to_string().contains("502"), "{e}");
    }
}
