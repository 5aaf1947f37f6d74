//! The HTTP client of `fleet push`, `fleet upload` and the other fleet commands: hyper over
//! plain TCP, bodies streamed from files, a timeout on every request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What a request sends.
#[derive(Debug, Clone)]
pub enum Upload {
    /// Nothing.
    Empty,
    /// A JSON document.
    Json(serde_json::Value),
    /// A file, streamed.
    File(PathBuf),
}

/// A server's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The JSON body (a body that is not JSON becomes `{"error": text}`).
    pub body: serde_json::Value,
}

impl Reply {
    /// The server's `error` message, or the status.
    pub fn error(&self) -> String {
        self.body.get("error").and_then(|e| e.as_str()).map(str::to_string).unwrap_or_else(|| self.status.to_string())
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not one this client can reach.
    #[error("{0}")]
    Url(String),
    /// The connection failed or broke.
    #[error("{0}")]
    Transport(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The file to send could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Longest a kept connection waits for its next request.
const IDLE_REUSE: Duration = Duration::from_secs(1);

/// A client with a connection pool.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Body>,
}

/// `base` (`http://host:port`, with or without a trailing slash) joined with `path`.
pub fn join(base: &str, path: &str) -> Result<hyper::Uri, ClientError> {
    let trimmed = base.trim_end_matches('/');
    if !trimmed.starts_with("http://") {
        return Err(ClientError::Url(format!(
            "{base}: only http:// URLs are spoken here; reach a TLS endpoint through a local proxy or VPN"
        )));
    }
    format!("{trimmed}{path}").parse().map_err(|e| ClientError::Url(format!("{base}: not a URL ({e})")))
}

impl Client {
    /// A client whose connections must open within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // A kept connection serves the requests of one poll or command, a few ms apart, and is
        // not used after `IDLE_REUSE`: servers close idle ones (ours after --header-timeout-s),
        // and a client whose runtime sleeps between polls (the agent's) does not see the close,
        // so its next request would go out on a dead connection and fail.
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_REUSE)
            .build(connector);
        Client { inner }
    }

    /// Sends one request and reads the whole answer, within `timeout`.
    pub async fn request(
        &self,
        method: Method,
        uri: hyper::Uri,
        token: &str,
        upload: &Upload,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let mut req =
            Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body: Body = match upload {
            Upload::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            Upload::Json(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string())).map_err(|never| match never {}).boxed()
            }
            Upload::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|source| ClientError::File { path: path.clone(), source })?;
                let len =
                    file.metadata().await.map_err(|source| ClientError::File { path: path.clone(), source })?.len();
                req = req.header(header::CONTENT_TYPE, "application/octet-stream").header(header::CONTENT_LENGTH, len);
                file_body(file)
            }
        };
        let req = req.body(body).map_err(|e| ClientError::Url(e.to_string()))?;
        let work = async {
            let resp = self.inner.request(req).await.map_err(|e| ClientError::Transport(describe(&e)))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport(format!("the answer broke off: {e}")))?
                .to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes).trim().to_string() }));
            Ok(Reply { status, body })
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// A small document fetched with a GET: its status, headers and bytes.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Client {
    /// A GET of a document of at most `max` bytes, with `if_none_match` sent as `If-None-Match`.
    pub async fn fetch(
        &self,
        uri: hyper::Uri,
        token: &str,
        if_none_match: Option<&str>,
        max: usize,
        timeout: Duration,
    ) -> Result<Fetched, ClientError> {
        let mut req = Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(tag) = if_none_match {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        let req = req
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let work = async {
            let resp = self.inner.request(req).await.map_err(|e| ClientError::Transport(describe(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| ClientError::Transport(format!("the answer broke off or ran over {max} bytes: {e}")))?
                .to_bytes();
            Ok(Fetched { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Downloads into `file` what it lacks of a resource of `size` bytes: from its current
    /// length on (`Range: bytes=N-`), appending, never past `size`. A cut connection leaves what
    /// arrived, so the next call resumes there. Returns the status when it is not 200 or 206.
    pub async fn resume(
        &self,
        uri: hyper::Uri,
        token: &str,
        file: &Path,
        size: u64,
        timeout: Duration,
    ) -> Result<Option<StatusCode>, ClientError> {
        use tokio::io::AsyncWriteExt;
        let io = |source| ClientError::File { path: file.to_path_buf(), source };
        let have = tokio::fs::metadata(file).await.map(|m| m.len()).unwrap_or(0);
        if have >= size {
            return Ok(None);
        }
        let req = Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::RANGE, format!("bytes={have}-"))
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let work = async {
            let resp = self.inner.request(req).await.map_err(|e| ClientError::Transport(describe(&e)))?;
            let status = resp.status();
            // A server that ignores the range starts again from the first byte.
            let append = match status {
                StatusCode::PARTIAL_CONTENT => true,
                StatusCode::OK => false,
                other => return Ok(Some(other)),
            };
            let mut out = tokio::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(file)
                .await
                .map_err(io)?;
            let mut written = if append { have } else { 0 };
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError::Transport(format!("the download broke off: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    written += data.len() as u64;
                    if written > size {
                        return Err(ClientError::Transport(format!(
                            "the server sent more than the {size} bytes expected"
                        )));
                    }
                    out.write_all(&data).await.map_err(io)?;
                }
            }
            out.sync_all().await.map_err(io)?;
            Ok(None)
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// A file as a request body, read in 256 KiB pieces, so memory does not grow with its size.
fn file_body(file: tokio::fs::File) -> Body {
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map(|r| r.map(Frame::data));
    BodyExt::boxed(StreamBody::new(stream))
}

/// The innermost cause of a hyper client error (hyper's own message is only "client error").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// Reads `path` relative to `base`'s folder when it is relative.
pub fn beside(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_path_buf() } else { base.parent().unwrap_or(Path::new(".")).join(path) }
}
