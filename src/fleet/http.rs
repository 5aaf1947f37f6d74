//! What the inbox and the fleet server share: the connection loop with its limits (a cap on
//! connections, a deadline to send the request head, a deadline for the whole request), token
//! checks before any body is read, JSON problem replies, and uploads streamed to disk under a
//! size limit, a deadline and a minimum rate (a bundle is never held in memory, and a client
//! that trickles cannot hold an upload slot).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::auth::{Caller, Tokens};

/// A JSON reply `{"error": message}` with `status`.
pub fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// A JSON reply with `status`.
pub fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Whom the request's token speaks for; None when it carries no accepted token.
pub fn caller(tokens: &Tokens, headers: &HeaderMap) -> Option<Caller> {
    tokens.caller(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
}

/// The 401 for a request without an accepted token.
pub fn unauthorized(headers: &HeaderMap) -> Response {
    let what = if headers.contains_key(header::AUTHORIZATION) {
        "the bearer token is not accepted"
    } else {
        "no bearer token"
    };
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        format!("{what}; send `Authorization: Bearer TOKEN` with a token from this server's token file"),
    );
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

/// What a server allows each client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest a client may take to send a request's head.
    pub header_timeout: Duration,
    /// Longest a request other than an upload may take, body and answer included.
    pub request_timeout: Duration,
    /// Slowest upload accepted after `grace`, bytes per second on average.
    pub min_rate: u64,
    /// Time an upload has before the minimum rate applies (connection set-up, a slow start).
    pub grace: Duration,
    /// Uploads received at once.
    pub uploads: usize,
    /// Longest an upload waits for a free upload slot before it is told to come back.
    pub queue: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            min_rate: 64 << 10,
            grace: Duration::from_secs(5),
            uploads: 4,
            queue: Duration::from_secs(20),
        }
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves, then lets the requests
/// in flight finish. `refused` counts connections closed because the cap was reached.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    refused: Arc<AtomicU64>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, typically: wait for connections to close rather than
                // spinning on the error.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    drop(listener);
    let _ =
        tokio::time::timeout(Duration::from_secs(3), async { while connections.join_next().await.is_some() {} }).await;
}

/// The request-wide deadline for everything but uploads (which carry their own): a 408 when it
/// passes.
pub async fn within(limit: Duration, work: impl std::future::Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => problem(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} s; send it again", limit.as_secs()),
        ),
    }
}

/// Reads a small request body (a JSON request), at most `max` bytes, within `limit`.
pub async fn small_body(body: Body, max: usize) -> Result<axum::body::Bytes, Response> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        problem(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is not a small JSON document ({e})"))
    })
}

/// Why an upload was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Larger than the limit (bytes).
    #[error("larger than the limit of {} MiB", .0 >> 20)]
    TooLarge(u64),
    /// Slower than the minimum rate, or past the upload's deadline.
    #[error("too slow: {0}")]
    TooSlow(String),
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
            SpoolError::TooSlow(why) => (
                problem(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the upload was too slow ({why}); send it again over a faster link"),
                ),
                "too_slow",
            ),
            SpoolError::Io(e) => {
                (problem(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the upload: {e}")), "io")
            }
        }
    }
}

/// Longest silence in the middle of an upload.
const IDLE: Duration = Duration::from_secs(30);

/// Streams a request body into the new file `dest`, refusing more than `max` bytes (before
/// reading anything when `Content-Length` says so), and an upload that falls below the minimum
/// rate of `limits` after its grace time. On any error `dest` is removed.
pub async fn spool(
    headers: &HeaderMap,
    body: Body,
    dest: &Path,
    max: u64,
    limits: &HttpLimits,
) -> Result<u64, SpoolError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(SpoolError::TooLarge(max));
    }
    let result = spool_to(body, dest, max, declared, limits).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

async fn spool_to(
    body: Body,
    dest: &Path,
    max: u64,
    declared: Option<u64>,
    limits: &HttpLimits,
) -> Result<u64, SpoolError> {
    let mut file =
        tokio::fs::OpenOptions::new().write(true).create_new(true).open(dest).await.map_err(SpoolError::Io)?;
    let mut stream = body.into_data_stream();
    let started = tokio::time::Instant::now();
    let mut last_data = started;
    let rate = limits.min_rate.max(1);
    let mut n = 0u64;
    loop {
        // Woken at least once a second, so a client that sends nothing is measured too.
        let next = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
        let now = tokio::time::Instant::now();
        match next {
            Ok(None) => break,
            Ok(Some(chunk)) => {
                let chunk = chunk.map_err(|e| SpoolError::Truncated(e.to_string()))?;
                n += chunk.len() as u64;
                if n > max {
                    return Err(SpoolError::TooLarge(max));
                }
                file.write_all(&chunk).await.map_err(SpoolError::Io)?;
                last_data = now;
            }
            Err(_) => {}
        }
        let elapsed = now - started;
        if let Some(over) = elapsed.checked_sub(limits.grace)
            && n < (over.as_secs_f64() * rate as f64) as u64
        {
            return Err(SpoolError::TooSlow(format!(
                "{n} bytes in {:.0} s, under the minimum of {} KiB/s",
                elapsed.as_secs_f64(),
                rate >> 10
            )));
        }
        if now - last_data > IDLE {
            return Err(SpoolError::Truncated(format!("no data for {} s", IDLE.as_secs())));
        }
    }
    if declared.is_some_and(|d| d != n) {
        return Err(SpoolError::Truncated(format!("{n} of {} bytes", declared.unwrap_or(0))));
    }
    file.sync_all().await.map_err(SpoolError::Io)?;
    Ok(n)
}

/// `message` with every mention of `root` (a store's folder) taken out: replies go to clients,
/// which have no business knowing the robot's file system.
pub fn redact(message: &str, root: &Path) -> String {
    let root = root.display().to_string();
    if root.is_empty() { message.to_string() } else { message.replace(&root, "STORE") }
}

/// A tokio runtime for a server thread or a client command.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}
