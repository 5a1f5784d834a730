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

/// `e` rendered for an operator on one line ([`dms_core::Report`]: what, where, each
/// cause, how to fix it), with the front end's words for the fix where they name a flag
/// of `dms` ([`remedy`]). The API's error messages and the CLI's error line are both
/// made with it.
pub fn render(e: &(dyn std::error::Error + 'static)) -> String {
    match remedy(e) {
        Some(hint) => dms_core::Report::with_hint(e, &hint).to_string(),
        None => dms_core::Report::new(e).to_string(),
    }
}

/// The fix of `e` in the words of the command line, where it names one of its flags or
/// subcommands; `None` keeps the library's own hints. (The libraries name no flag: a
/// library does not know which front end called it.)
pub fn remedy(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use dms_core::Error as E;
    if let Some(e) = e.downcast_ref::<dms_store::Error>() {
        return run_dir_flag(e.wants_other_run_dir(), e.hint());
    }
    let e = match e.downcast_ref::<Box<E>>() {
        Some(boxed) => boxed.as_ref(),
        None => e.downcast_ref::<E>()?,
    };
    match e {
        E::AlreadyRunning { target, .. } => Some(format!(
            "stop it first (`dms kill {target}`) or replace it (`dms spawn --replace`)"
        )),
        E::AlreadyMounted { .. } => Some(
            "run `dms cleanup --mounts` (if it is stale) or unmount it, then spawn again".into(),
        ),
        E::NotMounted {
            timed_out: true, ..
        } => Some("or give it longer to mount (--ready-timeout)".into()),
        E::NotReplaced { source, .. } | E::ReplacedThenFailed { source, .. } => {
            remedy(source.as_ref())
        }
        E::Store(s) => run_dir_flag(s.wants_other_run_dir(), s.hint()),
        e @ (E::RunDir { .. } | E::Lock { .. }) => run_dir_flag(e.wants_other_run_dir(), e.hint()),
        _ => None,
    }
}

/// `hint`, naming `--run-dir` when the fix is another run directory.
fn run_dir_flag(wanted: bool, hint: Option<String>) -> Option<String> {
    wanted.then(|| format!("{} (--run-dir)", hint.unwrap_or_default()))
}

impl From<dms_core::Error> for ApiError {
    /// A refusal the caller can resolve (already running, adopt refused, a mount point
    /// in the way, an entry that cannot be verified) is 409; everything else failed: 500.
    fn from(e: dms_core::Error) -> ApiError {
        use dms_core::Error as E;
        let message = render(&e);
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

#[cfg(test)]
mod tests {
    use super::*;
    use dms_store::{Pid, TargetId};

    fn rofs() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EROFS)
    }

    #[test]
    fn the_front_end_names_its_flags() {
        let target = TargetId::new("a").unwrap();
        let pid = Pid::new(42).unwrap();
        let running = dms_core::Error::AlreadyRunning {
            target: target.clone(),
            pid,
        };
        assert_eq!(
            render(&running),
            "target a already has a running helper (PID 42); stop it first (`dms kill a`) \
             or replace it (`dms spawn --replace`)"
        );
        let lock = dms_core::Error::Lock {
            path: "/ro/locks/a.lock".into(),
            source: rofs(),
        };
        let shown = render(&lock);
        assert!(
            shown.ends_with("choose another run directory (--run-dir)"),
            "{shown}"
        );
        // Inside a replace, the cause's fix is named.
        let replaced = dms_core::Error::NotReplaced {
            target: target.clone(),
            pid,
            source: Box::new(lock),
        };
        assert!(
            render(&replaced).ends_with("(--run-dir)"),
            "{}",
            render(&replaced)
        );
        let not_mounted = |timed_out| dms_core::Error::NotMounted {
            target: target.clone(),
            pid,
            path: "/mnt/a".into(),
            why: "not mounted within 1.0 s (the ready timeout)".into(),
            log: "/run/dms/logs/a.log".into(),
            log_tail: "(log is empty)".into(),
            timed_out,
        };
        assert!(render(&not_mounted(true)).ends_with("(--ready-timeout)"));
        assert_eq!(render(&not_mounted(false)), not_mounted(false).to_string());
    }

    #[test]
    fn without_a_flag_to_name_the_library_hint_stays() {
        let e = dms_core::Error::Mount {
            path: "/mnt/a".into(),
            op: "unmount",
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert_eq!(render(&e), dms_core::Report::new(&e).to_string());
        assert!(render(&e).ends_with("; check the path and that dms runs as root"));
    }
}
