//! What the inbox and the fleet server share: token checks, JSON problem replies, and uploads
//! streamed to disk under a size limit (a bundle is never held in memory).

use std::path::Path;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::auth::Tokens;

/// A JSON reply `{"error": message}` with `status`.
pub fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// A JSON reply with `status`.
pub fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A 401 reply, unless the request carries one of `tokens`.
pub fn unauthorized(tokens: &Tokens, headers: &HeaderMap) -> Option<Response> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if tokens.accepts(value) {
        None
    } else {
        let what = if value.is_some() { "the bearer token is not accepted" } else { "no bearer token" };
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            format!("{what}; send `Authorization: Bearer TOKEN` with a token from this server's token file"),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        Some(r)
    }
}

/// Why an upload was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Larger than the limit (bytes).
    #[error("larger than the limit of {} MiB", .0 >> 20)]
    TooLarge(u64),
    /// The client stopped before the end.
    #[error("the upload ended early ({0})")]
    Truncated(String),
    /// The disk refused.
    #[error("cannot store the upload: {0}")]
    Io(std::io::Error),
}

impl SpoolError {
    /// The reply to send, and the counter to raise.
    pub fn reply(&self) -> (Response, &'static str) {
        match self {
            SpoolError::TooLarge(max) => (
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the upload is larger than this server's limit of {} MiB", max >> 20),
                ),
                "too_large",
            ),
            SpoolError::Truncated(e) => (
                problem(StatusCode::BAD_REQUEST, format!("the upload ended early ({e}); send the whole bundle again")),
                "truncated",
            ),
            SpoolError::Io(e) => {
                (problem(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the upload: {e}")), "io")
            }
        }
    }
}

/// Longest silence in the middle of an upload.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Streams a request body into the new file `dest`, refusing more than `max` bytes (before
/// reading anything when `Content-Length` says so). On any error `dest` is removed.
pub async fn spool(headers: &HeaderMap, body: Body, dest: &Path, max: u64) -> Result<u64, SpoolError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(SpoolError::TooLarge(max));
    }
    let result = spool_to(body, dest, max, declared).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

async fn spool_to(body: Body, dest: &Path, max: u64, declared: Option<u64>) -> Result<u64, SpoolError> {
    let mut file =
        tokio::fs::OpenOptions::new().write(true).create_new(true).open(dest).await.map_err(SpoolError::Io)?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    loop {
        // A client that stops sending is a truncated upload, not one that holds its scratch
        // file and its turn forever.
        let next = tokio::time::timeout(IDLE, stream.next())
            .await
            .map_err(|_| SpoolError::Truncated(format!("no data for {} s", IDLE.as_secs())))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| SpoolError::Truncated(e.to_string()))?;
        n += chunk.len() as u64;
        if n > max {
            return Err(SpoolError::TooLarge(max));
        }
        file.write_all(&chunk).await.map_err(SpoolError::Io)?;
    }
    if declared.is_some_and(|d| d != n) {
        return Err(SpoolError::Truncated(format!("{n} of {} bytes", declared.unwrap_or(0))));
    }
    file.sync_all().await.map_err(SpoolError::Io)?;
    Ok(n)
}

/// A tokio runtime for a server thread or a client command.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}
