//! Where the fleet server keeps everything: an object store named by URL (`s3://bucket/prefix`
//! for AWS S3, MinIO, Garage, R2...; `file:///path` or a plain path for a local folder), through
//! the `object_store` crate. The server holds nothing of its own, so any number of them can serve
//! one bucket.
//!
//! S3 settings come from the environment as the AWS tools read them: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` (a non-AWS store), `AWS_ALLOW_HTTP`
//! (`true` for an endpoint without TLS) and `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload};

/// Why the bucket could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The URL or the settings do not name a usable store.
    #[error("the fleet store {url}: {message}")]
    Config {
        /// The URL, without credentials.
        url: String,
        /// What is wrong, and how to fix it.
        message: String,
    },
    /// The store did not answer, or answered with an error.
    #[error("the fleet store {url} failed to {what} {key}: {source}")]
    Store {
        /// The URL, without credentials.
        url: String,
        /// The operation.
        what: &'static str,
        /// The object.
        key: String,
        /// The store's error.
        source: Box<object_store::Error>,
    },
}

/// One object's bytes and the store's version tag for them.
#[derive(Debug, Clone)]
pub struct Object {
    /// The bytes.
    pub bytes: Bytes,
    /// The store's ETag.
    pub e_tag: Option<String>,
}

/// An object read from an offset on, as a stream.
pub struct Reading {
    /// The object's whole size.
    pub size: u64,
    /// The bytes from the offset on.
    pub stream: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// What a listing found: each object's key (relative to the prefix listed) and tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The key below the prefix listed.
    pub name: String,
    /// The store's ETag.
    pub e_tag: Option<String>,
    /// Size, bytes.
    pub size: u64,
}

/// Requests sent to the store since the server started, by kind (a listing counts once, however
/// many pages of 1000 keys it takes; an upload in parts counts once per part).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Requests {
    /// Objects read, whole or from an offset.
    pub get: u64,
    /// Objects checked for.
    pub head: u64,
    /// Objects written.
    pub put: u64,
    /// Listings.
    pub list: u64,
    /// Objects removed.
    pub delete: u64,
}

#[derive(Default)]
struct Counters {
    get: std::sync::atomic::AtomicU64,
    head: std::sync::atomic::AtomicU64,
    put: std::sync::atomic::AtomicU64,
    list: std::sync::atomic::AtomicU64,
    delete: std::sync::atomic::AtomicU64,
}

fn count(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// The fleet's object store.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// The same store without a deadline per request, for bundles read and written as streams.
    streams: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
    url: String,
    /// Whether the store refuses a conditional put (`If-None-Match: *`) over an object: some
    /// S3 servers (Garage 2.5) take the header and overwrite all the same.
    conditional: bool,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

/// How long the store may take: one request's deadline, and how long failed requests are
/// retried before the error reaches the client (a robot polls again later; an operator sees
/// the reason rather than a hung command).
#[derive(Debug, Clone, Copy)]
pub struct StoreTimes {
    /// One request, connect included.
    pub request: Duration,
    /// All retries of one operation.
    pub retries: Duration,
}

impl Default for StoreTimes {
    fn default() -> Self {
        StoreTimes { request: Duration::from_secs(30), retries: Duration::from_secs(10) }
    }
}

impl Bucket {
    /// Opens the store `url` names: `s3://bucket[/prefix]`, `file:///path`, or a folder's path
    /// (made when missing).
    pub fn open(url: &str, times: StoreTimes) -> Result<Bucket, BucketError> {
        let config = |message: String| BucketError::Config { url: url.to_string(), message };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(config("name the bucket: s3://BUCKET[/PREFIX]".into()));
            }
            let retry = object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 10,
                retry_timeout: times.retries,
            };
            // The client options replace those from_env read, so AWS_ALLOW_HTTP is read here.
            let client = object_store::ClientOptions::new()
                .with_timeout(times.request)
                .with_connect_timeout(times.request.min(Duration::from_secs(5)))
                .with_allow_http(std::env::var_os("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1"));
            let builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
            let build = |options: object_store::ClientOptions| -> Result<Arc<dyn ObjectStore>, BucketError> {
                let s3 = builder.clone().with_client_options(options).build().map_err(|e| {
                    config(format!(
                        "{e}; S3 settings come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for a store other than AWS, AWS_ENDPOINT_URL (AWS_ALLOW_HTTP=true without TLS)"
                    ))
                })?;
                Ok(match prefix.trim_matches('/') {
                    "" => Arc::new(s3),
                    p => Arc::new(object_store::prefix::PrefixStore::new(s3, p)),
                })
            };
            // A bundle streams to a robot at the robot's pace, for as long as the server's
            // download allows: the request deadline would cut it off.
            let streams = build(client.clone().with_timeout_disabled())?;
            let store = build(client)?;
            return Ok(Bucket {
                store,
                streams,
                counters: Default::default(),
                url: url.to_string(),
                conditional: false,
            });
        }
        let path = match url.strip_prefix("file://") {
            Some(p) => std::path::PathBuf::from(p),
            None if url.contains("://") => {
                return Err(config("give s3://BUCKET[/PREFIX], file:///PATH or a folder's path".into()));
            }
            None => std::path::PathBuf::from(url),
        };
        std::fs::create_dir_all(&path).map_err(|e| config(format!("cannot make the folder: {e}")))?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(&path)
            .map_err(|e| config(e.to_string()))?
            .with_automatic_cleanup(true);
        let local: Arc<dyn ObjectStore> = Arc::new(local);
        Ok(Bucket {
            store: local.clone(),
            streams: local,
            counters: Default::default(),
            url: url.to_string(),
            conditional: false,
        })
    }

    /// The requests sent to the store so far.
    pub fn requests(&self) -> Requests {
        let c = &self.counters;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Requests { get: n(&c.get), head: n(&c.head), put: n(&c.put), list: n(&c.list), delete: n(&c.delete) }
    }

    fn fail(&self, what: &'static str, key: &str, source: object_store::Error) -> BucketError {
        BucketError::Store { url: self.url.clone(), what, key: key.to_string(), source: Box::new(source) }
    }

    /// The object at `key`; None when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Object>, BucketError> {
        count(&self.counters.get, 1);
        match self.store.get(&Key::from(key)).await {
            Ok(r) => {
                let e_tag = r.meta.e_tag.clone();
                let bytes = r.bytes().await.map_err(|e| self.fail("read", key, e))?;
                Ok(Some(Object { bytes, e_tag }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("read", key, e)),
        }
    }

    /// The object at `key` from byte `start` on; None when there is none or it is shorter.
    pub async fn read_from(&self, key: &str, start: u64) -> Result<Option<Reading>, BucketError> {
        count(&self.counters.get, 1);
        let options = GetOptions { range: (start > 0).then_some(GetRange::Offset(start)), ..Default::default() };
        match self.streams.get_opts(&Key::from(key), options).await {
            Ok(r) => {
                let size = r.meta.size;
                let stream = r.into_stream().map_err(std::io::Error::other).boxed();
                Ok(Some(Reading { size, stream }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("read", key, e)),
        }
    }

    /// Writes `bytes` at `key`, replacing what is there.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), BucketError> {
        count(&self.counters.put, 1);
        self.store
            .put(&Key::from(key), PutPayload::from(bytes.into()))
            .await
            .map(|_| ())
            .map_err(|e| self.fail("write", key, e))
    }

    /// Finds out whether the store honours conditional puts, by creating one scratch object
    /// twice (then removing it); true when it does.
    pub async fn probe(&mut self) -> Result<bool, BucketError> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let key = format!(".probe/{}-{nanos}", std::process::id());
        let at = Key::from(key.as_str());
        let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
        count(&self.counters.put, 2);
        let first = self.store.put_opts(&at, PutPayload::from_static(b"1"), create()).await;
        let honoured = match first {
            Err(object_store::Error::NotImplemented | object_store::Error::NotSupported { .. }) => false,
            Err(e) => return Err(self.fail("write", &key, e)),
            Ok(_) => match self.store.put_opts(&at, PutPayload::from_static(b"2"), create()).await {
                Ok(_) => false,
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => true,
                Err(e) => return Err(self.fail("write", &key, e)),
            },
        };
        count(&self.counters.delete, 1);
        self.store.delete(&at).await.map_err(|e| self.fail("remove", &key, e))?;
        self.conditional = honoured;
        Ok(honoured)
    }

    /// Writes `bytes` at `key` unless an object is there; false when one was. Where the store
    /// honours conditional puts ([`Bucket::probe`]) two writers at once cannot both create;
    /// elsewhere it is a check, then a put, and the later of two simultaneous writers wins.
    pub async fn create(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool, BucketError> {
        let payload = PutPayload::from(bytes.into());
        count(&self.counters.put, 1);
        if self.conditional {
            let options = PutOptions { mode: PutMode::Create, ..Default::default() };
            return match self.store.put_opts(&Key::from(key), payload, options).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(self.fail("write", key, e)),
            };
        }
        if self.exists(key).await? {
            return Ok(false);
        }
        self.store.put(&Key::from(key), payload).await.map_err(|e| self.fail("write", key, e))?;
        Ok(true)
    }

    /// Whether an object is at `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, BucketError> {
        count(&self.counters.head, 1);
        match self.store.head(&Key::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.fail("read", key, e)),
        }
    }

    /// Writes the file at `path` to `key`, in parts for a large one.
    pub async fn upload(&self, key: &str, path: &std::path::Path) -> Result<(), BucketError> {
        use tokio::io::AsyncReadExt;
        const PART: usize = 8 << 20;
        let io = |e: std::io::Error| {
            self.fail("write", key, object_store::Error::Generic { store: "file", source: e.into() })
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        if size <= PART as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).await.map_err(io)?;
            return self.put(key, bytes).await;
        }
        count(&self.counters.put, size.div_ceil(PART as u64) + 2);
        let upload = self.streams.put_multipart(&Key::from(key)).await.map_err(|e| self.fail("write", key, e))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(|e| self.fail("write", key, e))?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map(|_| ()).map_err(|e| self.fail("write", key, e))
    }

    /// Every object below `prefix` (a folder-like prefix, without its trailing `/`), by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, BucketError> {
        count(&self.counters.list, 1);
        let at = Key::from(prefix);
        let mut out: Vec<Listed> = self
            .store
            .list(Some(&at))
            .map_ok(|m| Listed {
                name: m
                    .location
                    .prefix_match(&at)
                    .map(|p| p.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
                    .unwrap_or_default(),
                e_tag: m.e_tag,
                size: m.size,
            })
            .try_collect()
            .await
            .map_err(|e| self.fail("list", prefix, e))?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
