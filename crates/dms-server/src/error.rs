//! The error document of the API: `{"error": {"code": C, "message": M}}` with the status
//! codes of serve.md's table.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: an HTTP status, a machine-readable code and a message that says what,
/// where and how to fix it (never an environment value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `code` of serve.md's error table (`bad_request`, `forbidden`, ...).
    pub code: &'static str,
    /// The message.
    pub message: String,
}

impl ApiError {
    /// An error of `status` with `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500 `failed`.
    pub fn failed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", message)
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

/// `e` and its causes on one line, each cause once (a cause whose text the message
/// already holds is not repeated). The API's error messages and the CLI's error line
/// are both made with it.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        source = s.source();
    }
    msg
}

impl From<dms_core::Error> for ApiError {
    /// A refusal the caller can resolve (already running, adopt refused, a mount point
    /// in the way, an entry that cannot be verified) is 409; everything else failed: 500.
    fn from(e: dms_core::Error) -> ApiError {
        use dms_core::Error as E;
        let message = chain(&e);
        match e {
            E::AlreadyRunning { .. }
            | E::NotRunning { .. }
            | E::AlreadyTracked { .. }
            | E::NotAProcess { .. }
            | E::Unverified { .. }
            | E::AlreadyMounted { .. } => ApiError::conflict(message),
            _ => ApiError::failed(message),
        }
    }
}
