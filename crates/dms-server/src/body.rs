//! Request bodies: JSON only (415 otherwise), at most 1 MiB (413), read within a time
//! limit (408), unknown and ill-typed fields refused with their name (400), and no value
//! ever repeated in a message (a value may be a secret).

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The largest request body accepted: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A JSON request body of type `T`; an empty body (with or without a content type) is
/// `T::default()`, so endpoints whose fields are all optional accept a bare `POST`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Whether the content type is `application/json` (parameters such as `charset` allowed).
fn is_json(v: &header::HeaderValue) -> bool {
    v.to_str().ok().is_some_and(|s| {
        s.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the request body is over {MAX_BODY_BYTES} bytes (1 MiB); send a smaller one"),
    )
}

fn unsupported() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "the request body must be JSON; send it with `Content-Type: application/json`",
    )
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        if content_type.as_ref().is_some_and(|v| !is_json(v)) {
            return Err(unsupported());
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
        let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body did not arrive within {} s; send it whole",
                        BODY_TIMEOUT.as_secs()
                    ),
                ))
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Ok(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read the request body: {e}"
                )))
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        if content_type.is_none() {
            return Err(unsupported());
        }
        parse(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as `T`; the message names the field (its path, such as
/// `restart.policy`) and what was expected, never the value found.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let what = redact(&inner);
            let msg = if path.is_empty() || path == "." {
                format!("bad JSON body: {what}")
            } else {
                format!("bad JSON body: field `{path}`: {what}")
            };
            Err(ApiError::bad_request(msg))
        }
    }
}

/// serde_json's message without the value it quotes (`invalid type: string "..."`
/// becomes `invalid type: string`), with its position.
fn redact(e: &serde_json::Error) -> String {
    let full = e.to_string();
    // Drop serde_json's " at line L column C" suffix; it is added back below.
    let msg = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => &full[..],
    };
    let mut out = String::new();
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            let (found, expected) = rest.split_once(", expected").unwrap_or((rest, ""));
            // `string "x"`, `integer `5``, `map`: keep the kind word only.
            let kind = found.split([' ', '`', '"']).next().unwrap_or("value");
            out = format!("{prefix}{kind}");
            if !expected.is_empty() {
                out.push_str(", expected");
                out.push_str(expected);
            }
        }
    }
    if out.is_empty() {
        out = match e.classify() {
            // Syntax and EOF messages hold no value; data messages other than the two
            // above name fields (`unknown field `x``, `missing field `argv``).
            serde_json::error::Category::Data
                if !(msg.starts_with("unknown field")
                    || msg.starts_with("missing field")
                    || msg.starts_with("duplicate field")
                    || msg.starts_with("unknown variant")) =>
            {
                "a value of the wrong type or range".to_owned()
            }
            _ => msg.to_owned(),
        };
    }
    if e.line() > 0 {
        out.push_str(&format!(" (line {}, column {})", e.line(), e.column()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        env: Option<std::collections::BTreeMap<String, String>>,
        n: Option<u32>,
    }

    #[test]
    fn messages_name_the_field_and_never_the_value() {
        let e = parse::<Req>(br#"{"env": "AWS_SECRET=hunter2"}"#).unwrap_err();
        assert!(e.message.contains("`env`"), "{e:?}");
        assert!(!e.message.contains("hunter2"), "{e:?}");
        let e = parse::<Req>(br#"{"env": {"K": 31337}}"#).unwrap_err();
        assert!(e.message.contains("env.K"), "{e:?}");
        assert!(!e.message.contains("31337"), "{e:?}");
        let e = parse::<Req>(br#"{"bogus": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `bogus`"), "{e:?}");
        let e = parse::<Req>(br#"{"n": 99999999999}"#).unwrap_err();
        assert!(!e.message.contains("99999999999"), "{e:?}");
        let e = parse::<Req>(b"{not json").unwrap_err();
        assert_eq!(e.code, "bad_request");
    }
}
