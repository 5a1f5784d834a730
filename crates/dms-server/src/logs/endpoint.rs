//! `GET /v1/targets/{t}/logs?lines=N`: the last lines of a helper's log, `text/plain`.

use super::{last_lines, LogError, DEFAULT_LINES, MAX_LINES};
use crate::error::ApiError;
use crate::handlers::target_of;
use crate::Daemon;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    lines: Option<usize>,
}

/// The last `lines` lines (default 100) of the target's log, read across its older
/// generation: 200 `text/plain` with the bytes as the helper wrote them (an empty log
/// gives an empty body); 404 when neither the log nor its `.1` exists, or when the log
/// is not a regular file (such as `/dev/null`); 400 for a bad target or query.
pub(crate) async fn logs(
    State(d): State<Arc<Daemon>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let target = target_of(path)?;
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "bad query: {}; the only parameter is lines=N (a whole number from 0 to {MAX_LINES})",
            e.body_text()
        ))
    })?;
    let n = q.lines.unwrap_or(DEFAULT_LINES);
    if n > MAX_LINES {
        return Err(ApiError::bad_request(format!(
            "lines={n}: at most {MAX_LINES} lines can be asked for at once"
        )));
    }
    let file = d.manager.log_file(&target).await;
    let read = tokio::task::spawn_blocking(move || last_lines(&file, n))
        .await
        .map_err(|e| ApiError::failed(format!("reading the log failed: {e}")))?;
    let bytes = read.map_err(|e| match e {
        LogError::Missing { .. } | LogError::NotRegular { .. } => {
            ApiError::not_found(format!("target {target}: {e}"))
        }
        LogError::Io { .. } => ApiError::failed(format!("target {target}: {}", crate::render(&e))),
    })?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], bytes).into_response())
}
