//! The fleet server (`skillgraft fleet serve --store URL`): a catalog of signed bundles that
//! robots and people upload and download, the signed channels robots follow, staged rollouts
//! and the robots' reports. Everything lives in an object store (`bucket`): the server keeps
//! nothing of its own, and any number of servers can serve one bucket.
//!
//! ```text
//! catalog/NAME/VERSION.json                what the catalog says of a bundle: digest, signer, provenance
//! catalog/NAME/VERSION/DIGEST.skill        the bundle, written before its entry
//! keys/VERSION.json                        the root-signed key lists; the highest version is the one
//! channels/NAME/SERIAL.json                each signed index of a channel; the highest serial is the one
//! rollouts/NAME/SERIAL/                    a staged rollout (SERIAL: its new index's): start.json,
//!                                          new.json, back.json, then one stage-K.json per wave
//!                                          reached, halted.json when it halts, and
//!                                          withdrawn.json when another started with it
//! reports/ROBOT.json                       each robot's last report
//! robots.toml                              the registry `fleet push` reads ([[robot]] name, url, token_file)
//! ```
//!
//! Two servers writing at once cannot undo each other's work because no write changes what
//! another wrote: every document is a new object under a key that says where it stands (a
//! serial, a version, a wave), the current state is the highest of them, and an object is
//! created only where none is (a conditional put where the store has them). A rollout's state is
//! the set of its facts: two servers that advance it at once write the same stage, and a halt
//! wins over any advance (its index has the highest serial). Reports are one robot's each.
//!
//! ```text
//! GET  /health
//! GET  /catalog                    {"bundles": [entries]}
//! GET  /catalog/{name}/{version}   the bundle file (Range: bytes=N- resumes)
//! POST /catalog                    body: a .skill bundle; 201 entry (200 when already there)
//! GET  /robots                     {"robots": [{"name", "url"}]}
//! GET  /keys                       the key list; ETag, If-None-Match gives 304
//! PUT  /keys                       body: a key list; 201, 200 when the same, 409 when older
//! GET  /reports                    {"reports": [each robot's last report, with "received"]}
//! PUT  /reports/{robot}            body: the robot's report after a poll (skillgraft agent)
//! GET  /channels/{channel}[?robot=ID]  the channel's index (during a staged rollout, the
//!                                  robot's wave decides which); ETag, If-None-Match gives 304
//! PUT  /channels/{channel}         body: an index signed by a listed fleet key; 201, 200, 409
//! POST /rollouts/{channel}         {"new": index, "back": index, "waves": [1, 10, 50, 100]}
//! POST /rollouts/{channel}/advance the next wave (after the last: the rollout is done)
//! POST /rollouts/{channel}/halt    every robot gets the `back` index
//! GET  /rollouts/{channel}         the rollout's state, and per wave its robots' reports
//! ```
//!
//! The server keeps no root key: a robot checks the key list against the root it pins. What the
//! server checks on a PUT is what keeps a mistake from reaching the robots: an index signed by a
//! key of the stored list, for this channel, not expired, and never a serial (or key-list
//! version) below the stored one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::FleetError;
use super::auth::{Caller, Tokens};
use super::bucket::{Bucket, BucketError, StoreTimes};
use super::channel;
use super::http::{HttpLimits, caller, problem, redact, reply, spool, unauthorized, within};
use crate::file::FileError;
use crate::skill::bundle::{self, Limits};
use crate::skill::manifest::Provenance;
use crate::skill::sandbox::Sandbox;

/// Default address of the fleet server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";

/// One bundle in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Skill name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// The skill's digest.
    pub digest: String,
    /// Key that signed the bundle.
    pub signer: String,
    /// Bundle size, bytes.
    pub bytes: u64,
    /// When it reached the catalog, RFC 3339.
    pub added: String,
    /// Where the skill came from: its manifest's provenance (robot, method, parent, metrics).
    pub provenance: Provenance,
}

/// What `fleet serve` runs with.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The fleet's object store: `s3://bucket/prefix`, `file:///path` or a folder.
    pub store: String,
    /// Where uploads are received and checked before they go to the store.
    pub spool: Option<PathBuf>,
    /// Address to listen on.
    pub listen: String,
    /// Keys whose bundles the catalog takes (the fleet's own, and its robots').
    pub trust: Vec<PathBuf>,
    /// File of accepted bearer tokens.
    pub tokens: PathBuf,
    /// Largest bundle, MiB.
    pub max_mib: u64,
    /// What each client is allowed: connections, deadlines, uploads at once and how slow.
    pub http: HttpLimits,
    /// The channels' root public key: key lists not signed by it are refused.
    pub channel_root: Option<PathBuf>,
    /// How long a channel's index and rollout, read from the store, answer polls before they
    /// are read again (this server's own writes are seen at once).
    pub cache: Duration,
    /// How long the store may take.
    pub store_times: StoreTimes,
}

/// A channel as the store had it when last read: its index, and its rollout.
#[derive(Debug, Default)]
struct View {
    index: Option<Bytes>,
    rollout: Option<Live>,
}

/// A rollout and its two indexes.
#[derive(Debug, Clone)]
struct Live {
    r: Rollout,
    new: Bytes,
    back: Bytes,
}

struct Shared {
    bucket: Bucket,
    spool: PathBuf,
    /// What names this process's files in the spool (`PID_START_HOST`), which servers sharing a
    /// folder store share: one that starts clears what dead ones left, never a live one's.
    owner: String,
    trusted: Vec<VerifyingKey>,
    tokens: Tokens,
    limits: Limits,
    http: HttpLimits,
    sandbox: Sandbox,
    seq: std::sync::atomic::AtomicU64,
    /// The channels' root key, when the server was given it.
    channel_root: Option<VerifyingKey>,
    /// Uploads received at once.
    uploads: Arc<tokio::sync::Semaphore>,
    /// One check and store change at a time on this server: checks (each a worker process) do
    /// not pile up, and this server's own writes do not race each other.
    adding: tokio::sync::Mutex<()>,
    /// Channels as last read, and when.
    views: std::sync::Mutex<HashMap<String, (Instant, Arc<View>)>>,
    /// Held while a view is read from the store.
    reading: tokio::sync::Mutex<()>,
    cache: Duration,
    /// Objects read before, by key: a listing's ETag says whether to read one again.
    objects: std::sync::Mutex<HashMap<String, (Option<String>, Bytes)>>,
    /// Channels whose robots reported since their rollout was last judged.
    reported: std::sync::Mutex<HashSet<String>>,
}

/// A store failure, as the client sees it: the store is the one at fault, and the request may
/// pass later.
fn unavailable(e: BucketError) -> (StatusCode, String) {
    tracing::error!("{e}");
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}; try again later"))
}

/// [`unavailable`] as the answer.
fn store_failed(e: BucketError) -> Response {
    let (status, message) = unavailable(e);
    problem(status, message)
}

/// Serves until `shutdown` resolves. Errors in the settings are returned before anything listens.
pub async fn serve(
    settings: &ServerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    bound: impl FnOnce(std::net::SocketAddr),
) -> Result<(), FleetError> {
    let trusted = bundle::read_trusted(&settings.trust).map_err(|e| FleetError::Config(e.to_string()))?;
    let channel_root = match &settings.channel_root {
        None => None,
        Some(path) => {
            match bundle::read_trusted(std::slice::from_ref(path)).map_err(|e| FleetError::Config(e.to_string()))?[..] {
                [key] => Some(key),
                ref keys => {
                    return Err(FleetError::Config(format!(
                        "{} holds {} keys; --channel-root takes the one root key",
                        path.display(),
                        keys.len()
                    )));
                }
            }
        }
    };
    let tokens = Tokens::load_with_robots(&settings.tokens)?;
    let mut bucket =
        Bucket::open(&settings.store, settings.store_times).map_err(|e| FleetError::Config(e.to_string()))?;
    // A folder store receives uploads beside its objects; an S3 one in a scratch folder.
    let spool = settings.spool.clone().unwrap_or_else(|| match settings.store.contains("://") {
        false => Path::new(&settings.store).join(".incoming"),
        true if settings.store.starts_with("file://") => {
            Path::new(settings.store.trim_start_matches("file://")).join(".incoming")
        }
        true => std::env::temp_dir().join("skillgraft-fleet"),
    });
    private_dir(&spool)?;
    crate::skill::store::clear_scratch(&spool)?;
    // An unreachable store or wrong credentials show at start, not at the first robot's poll.
    bucket.list("keys").await.map_err(|e| FleetError::Config(e.to_string()))?;
    if !bucket.probe().await.map_err(|e| FleetError::Config(e.to_string()))? {
        tracing::warn!(
            "{} does not refuse a conditional put over an object: documents are created after a check, so of two servers creating one at the same instant the later wins (README: Fleet storage)",
            settings.store
        );
    }
    let sandbox = Sandbox::current(settings.max_mib).map_err(|e| FleetError::Config(e.to_string()))?;
    let shared = Arc::new(Shared {
        bucket,
        spool,
        owner: crate::skill::store::scratch_owner(),
        trusted,
        tokens,
        limits: Limits::mib(settings.max_mib),
        http: settings.http,
        sandbox,
        seq: Default::default(),
        channel_root,
        uploads: Arc::new(tokio::sync::Semaphore::new(settings.http.uploads.max(1))),
        adding: Default::default(),
        views: Default::default(),
        reading: Default::default(),
        cache: settings.cache,
        objects: Default::default(),
        reported: Default::default(),
    });
    let judge = tokio::spawn(judge_loop(shared.clone()));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = axum::Router::new()
        .route("/health", get(health))
        .route("/catalog", get(catalog).post(upload))
        .route("/catalog/{name}/{version}", get(download))
        .route("/robots", get(robots))
        .route("/keys", get(get_keys).put(put_keys))
        .route("/channels/{channel}", get(get_channel).put(put_channel))
        .route("/rollouts/{channel}", get(rollout_status).post(rollout_start))
        .route("/rollouts/{channel}/{action}", axum::routing::post(rollout_act))
        .route("/reports", get(reports))
        .route("/reports/{robot}", axum::routing::put(put_report))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| FleetError::Listen { addr: settings.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(FileError::at("configure", Path::new(&settings.listen)))?;
    bound(addr);
    super::http::serve(listener, app, settings.http, refused, shutdown).await;
    judge.abort();
    Ok(())
}

/// Creates `dir` (mode 700) if need be, and refuses it when another user owns it or others may
/// write to it: bundles wait there between their check and the store, so whoever could swap a
/// file there could put an unchecked bundle in the catalog.
fn private_dir(dir: &Path) -> Result<(), FleetError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(FileError::at("create", dir)(e).into()),
    }
    let meta = std::fs::metadata(dir).map_err(FileError::at("read", dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(FleetError::Config(format!(
            "{}: the upload spool belongs to another user or others may write to it (mode {:o}); remove it, or give `--spool` a folder of your own",
            dir.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// Every request, before its handler reads anything of its body: the token, what a robot's
/// token may ask, then the request-wide deadline for all but uploads and downloads (which carry
/// their own).
async fn authorize(State(s): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let Some(caller) = caller(&s.tokens, req.headers()) else {
        tracing::warn!("fleet server: request without an accepted token refused");
        return unauthorized(req.headers());
    };
    if let Caller::Robot(robot) = &caller
        && let Some(r) = beyond_a_robot(robot, req.method(), req.uri())
    {
        tracing::warn!("fleet server: robot {robot}'s token refused for {} {}", req.method(), req.uri().path());
        return r;
    }
    req.extensions_mut().insert(caller);
    let streams = (req.method() == Method::POST && req.uri().path() == "/catalog")
        || (req.method() == Method::GET && req.uri().path().starts_with("/catalog/"));
    if streams { next.run(req).await } else { within(s.http.request_timeout, next.run(req)).await }
}

/// The robot a channel poll names (`?robot=ID`, for its wave in a staged rollout). Robot names
/// are plain (letters, digits, `-`, `_`), so no decoding is needed.
fn robot_asked(uri: &axum::http::Uri) -> Option<&str> {
    uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("robot=")))
}

/// A 403 unless robot `name`'s token may make this request: what a robot that pulls needs (the
/// key list, its channel's index, bundles) and its own reports, nothing that changes what other
/// robots run or what the fleet hears of them.
fn beyond_a_robot(name: &str, method: &Method, uri: &axum::http::Uri) -> Option<Response> {
    let path: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
    let reads = method == Method::GET || method == Method::HEAD;
    let why = match path.as_slice() {
        ["health" | "keys" | "catalog"] | ["catalog", _, _] if reads => return None,
        ["channels", _] if reads => match robot_asked(uri) {
            Some(other) if other != name => format!("robot {name}'s token polls as {name}, not as {other:?}"),
            _ => return None,
        },
        ["reports", robot] if method == Method::PUT => match *robot == name {
            true => return None,
            false => format!("robot {name}'s token reports as {name} only, not as {robot:?}"),
        },
        _ => format!(
            "robot {name}'s token may read the key list, channels and the catalog, and report as {name}; {method} {} needs an operator's token (a line of the server's --tokens without `robot`)",
            uri.path()
        ),
    };
    Some(problem(StatusCode::FORBIDDEN, why))
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    reply(StatusCode::OK, serde_json::json!({ "status": "ok", "store_requests": s.bucket.requests() }))
}

/// Answers with `work`'s value (as JSON, with `ok`) or its refusal.
async fn answer<T: Serialize>(
    ok: StatusCode,
    work: impl std::future::Future<Output = Result<T, (StatusCode, String)>>,
) -> Response {
    match work.await {
        Ok(v) => reply(ok, serde_json::to_value(&v).unwrap_or_default()),
        Err((status, message)) => problem(status, message),
    }
}

impl Shared {
    /// The objects below `prefix`, each read once per ETag the store gives it.
    async fn read_all(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, BucketError> {
        let listed = self.bucket.list(prefix).await?;
        let mut out = Vec::with_capacity(listed.len());
        for l in listed {
            if let Some(bytes) = self.read_tagged(&format!("{prefix}/{}", l.name), l.e_tag).await? {
                out.push((l.name, bytes));
            }
        }
        Ok(out)
    }

    /// The object at `key`, whose listing gave it `tag`: what was read before when that had
    /// the same tag, else read again (None when it is gone).
    async fn read_tagged(&self, key: &str, tag: Option<String>) -> Result<Option<Bytes>, BucketError> {
        let known = self.objects.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        if let Some((t, bytes)) = known
            && t.is_some()
            && t == tag
        {
            return Ok(Some(bytes));
        }
        let Some(o) = self.bucket.get(key).await? else { return Ok(None) };
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), (o.e_tag, o.bytes.clone()));
        Ok(Some(o.bytes))
    }

    /// The object at `key`, read once per ETag (an object under a serial never changes).
    async fn read_fixed(&self, key: &str) -> Result<Option<Bytes>, BucketError> {
        if let Some((_, b)) = self.objects.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(Some(b.clone()));
        }
        let Some(o) = self.bucket.get(key).await? else { return Ok(None) };
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), (o.e_tag, o.bytes.clone()));
        Ok(Some(o.bytes))
    }

    /// The document with the highest number below `prefix` (`prefix/NUMBER.json`), read again
    /// only when the listing gives it another ETag (it was replaced behind the fleet's back,
    /// which the robots' signature check then sees).
    async fn latest(&self, prefix: &str) -> Result<Option<(u64, Bytes)>, BucketError> {
        let listed = self.bucket.list(prefix).await?;
        let Some((n, tag)) = listed
            .into_iter()
            .filter_map(|l| Some((l.name.strip_suffix(".json")?.parse::<u64>().ok()?, l.e_tag)))
            .max_by_key(|(n, _)| *n)
        else {
            return Ok(None);
        };
        Ok(self.read_tagged(&numbered(prefix, n), tag).await?.map(|b| (n, b)))
    }

    /// The channel as the store has it, read again when older than the cache time.
    async fn view(&self, channel: &str) -> Result<Arc<View>, BucketError> {
        self.cached(channel, async {
            Ok(View {
                index: self.latest(&format!("channels/{channel}")).await?.map(|(_, b)| b),
                rollout: self.rollout(channel).await?,
            })
        })
        .await
    }

    /// The key list as the store has it, read again when older than the cache time (kept
    /// among the views under the empty name, which no channel has).
    async fn keys(&self) -> Result<Option<Bytes>, BucketError> {
        let read = async { Ok(View { index: self.latest("keys").await?.map(|(_, b)| b), rollout: None }) };
        Ok(self.cached("", read).await?.index.clone())
    }

    /// The view `name` as last read, or, when older than the cache time, what `read` reads.
    async fn cached(
        &self,
        name: &str,
        read: impl std::future::Future<Output = Result<View, BucketError>>,
    ) -> Result<Arc<View>, BucketError> {
        let fresh = || {
            let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            views.get(name).filter(|(at, _)| at.elapsed() < self.cache).map(|(_, v)| v.clone())
        };
        if let Some(v) = fresh() {
            return Ok(v);
        }
        // One reader at a time: the polls that arrive while the store is read wait for it and
        // take what it read, instead of each reading the store again.
        let _reading = self.reading.lock().await;
        if let Some(v) = fresh() {
            return Ok(v);
        }
        let v = Arc::new(read.await?);
        self.views.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), (Instant::now(), v.clone()));
        Ok(v)
    }

    /// Forgets what this server read of `channel` (the key list: ""), after it changed it.
    fn changed(&self, channel: &str) {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).remove(channel);
    }
}

/// `prefix/NUMBER.json`, the number zero-padded so that keys sort as numbers.
fn numbered(prefix: &str, n: u64) -> String {
    format!("{prefix}/{n:020}.json")
}

/// Every entry of the catalog, by name then version.
async fn entries(s: &Shared) -> Result<Vec<CatalogEntry>, BucketError> {
    let mut out = Vec::new();
    for (name, bytes) in s.read_all("catalog").await? {
        // NAME/VERSION.json: entries; bundles sit a level further down.
        if name.matches('/').count() != 1 || !name.ends_with(".json") {
            continue;
        }
        // One damaged entry must not hide the rest of the catalog.
        match serde_json::from_slice(&bytes) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!("catalog/{name}: {e}; remove it and upload its bundle again"),
        }
    }
    out.sort_by(|a: &CatalogEntry, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

async fn catalog(State(s): State<Arc<Shared>>) -> Response {
    match entries(&s).await {
        Ok(list) => reply(StatusCode::OK, serde_json::json!({ "bundles": list })),
        Err(e) => store_failed(e),
    }
}

fn entry_key(name: &str, version: &semver::Version) -> String {
    format!("catalog/{name}/{version}.json")
}

fn bundle_key(name: &str, version: &semver::Version, digest: &str) -> String {
    format!("catalog/{name}/{version}/{}.skill", digest.replace(':', "-"))
}

/// The catalog's entry for `name` `version`.
async fn entry(s: &Shared, name: &str, version: &semver::Version) -> Result<Option<CatalogEntry>, BucketError> {
    let Some(o) = s.bucket.get(&entry_key(name, version)).await? else { return Ok(None) };
    Ok(serde_json::from_slice(&o.bytes).ok())
}

/// Where a `Range: bytes=N-` request starts (a download resumed after a cut): 0 without one,
/// None for a range this server does not serve.
fn range_start(headers: &HeaderMap, len: u64) -> Option<u64> {
    let Some(v) = headers.get(header::RANGE) else { return Some(0) };
    let start = v
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    start.filter(|&n| n < len)
}

async fn download(
    State(s): State<Arc<Shared>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(version) = version.parse::<semver::Version>() else {
        return problem(StatusCode::BAD_REQUEST, format!("{version:?} is not a version (X.Y.Z)"));
    };
    if !crate::skill::manifest::valid_name(&name) {
        return problem(StatusCode::BAD_REQUEST, format!("{name:?} is not a skill name"));
    }
    let missing =
        || problem(StatusCode::NOT_FOUND, format!("{name} {version} is not in the catalog; GET /catalog lists it"));
    let e = match entry(&s, &name, &version).await {
        Ok(Some(e)) => e,
        Ok(None) => return missing(),
        Err(e) => {
            return store_failed(e);
        }
    };
    let len = e.bytes;
    let Some(start) = range_start(&headers, len) else {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            "this server resumes downloads with `Range: bytes=N-`, N below the bundle's size",
        )
            .into_response();
    };
    let reading = match s.bucket.read_from(&bundle_key(&name, &version, &e.digest), start).await {
        Ok(Some(r)) if r.size == len => r,
        Ok(_) => return missing(),
        Err(e) => {
            return store_failed(e);
        }
    };
    let rest = len - start;
    // A reader slower than the minimum rate loses the rest: it must not hold a connection.
    let allowed = s.http.grace + Duration::from_secs_f64(rest as f64 / s.http.min_rate.max(1) as f64);
    let body = Body::from_stream(reading.stream.take_until(tokio::time::sleep(allowed)));
    let fixed = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, rest.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
    ];
    if headers.contains_key(header::RANGE) {
        let range = [(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1))];
        (StatusCode::PARTIAL_CONTENT, fixed, range, body).into_response()
    } else {
        (StatusCode::OK, fixed, body).into_response()
    }
}

/// A document, with an ETag of its bytes; 304 when the client has them already.
fn document(bytes: Option<Bytes>, headers: &HeaderMap, missing: String) -> Response {
    let Some(bytes) = bytes else {
        return problem(StatusCode::NOT_FOUND, missing);
    };
    let etag = format!("\"{}\"", channel::digest(&bytes).trim_start_matches("sha256:"));
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (StatusCode::OK, [(header::ETAG, etag), (header::CONTENT_TYPE, "application/json".to_string())], bytes)
        .into_response()
}

async fn get_keys(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match s.keys().await {
        Ok(keys) => document(keys, &headers, "no key list yet; publish one with `fleet channel publish --keys`".into()),
        Err(e) => store_failed(e),
    }
}

async fn get_channel(
    State(s): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    axum::Extension(caller): axum::Extension<Caller>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if !crate::skill::manifest::valid_name(&name) {
        return problem(StatusCode::BAD_REQUEST, format!("{name:?} is not a channel name"));
    }
    let view = match s.view(&name).await {
        Ok(v) => v,
        Err(e) => {
            return store_failed(e);
        }
    };
    let mut bytes = view.index.clone();
    // A robot's own token places it in its wave whatever the query says (which it may only
    // repeat); an operator may ask as any robot.
    let robot = match &caller {
        Caller::Robot(name) => Some(name.as_str()),
        Caller::Operator => robot_asked(&uri),
    };
    if let (Some(robot), Some(live)) = (robot, &view.rollout)
        && live.r.state == RolloutState::Running
        && channel::wave_bucket(&name, robot) < live.r.waves[live.r.stage]
    {
        bytes = Some(live.new.clone());
    }
    document(bytes, &headers, format!("no channel `{name}`; publish its index with `fleet channel publish --index`"))
}

/// The key list the store holds: 409 before one is published, 500 when it does not read.
async fn stored_keys(s: &Shared) -> Result<channel::Keys, (StatusCode, String)> {
    let Some((_, bytes)) = s.latest("keys").await.map_err(unavailable)? else {
        return Err((
            StatusCode::CONFLICT,
            "this server has no key list to check the index against; publish it first (`fleet channel publish --keys`)"
                .to_string(),
        ));
    };
    envelope(&bytes)
        .and_then(|e| channel::read_keys(&e).map_err(unprocessable))
        .map_err(|(_, message)| (StatusCode::INTERNAL_SERVER_ERROR, format!("the stored key list: {message}")))
}

/// Stores `bytes` as document `number` below `prefix` unless the highest stored one is the same
/// document, or has this number or a higher one (409 with `stale`'s message, given that number);
/// then forgets what this server read of `view`.
async fn store_document(
    s: &Shared,
    (prefix, view): (&str, &str),
    number: u64,
    bytes: Bytes,
    stale: impl FnOnce(u64) -> String,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let _one = s.adding.lock().await;
    let old = s.latest(prefix).await.map_err(unavailable)?;
    // The same document (however its JSON is laid out) is already the one served.
    let same = |b: &Bytes| *b == bytes || envelope(b).ok().is_some_and(|e| envelope(&bytes).ok() == Some(e));
    if old.as_ref().is_some_and(|(_, b)| same(b)) {
        return Ok(serde_json::json!({ "stored": false }));
    }
    if let Some((n, _)) = old
        && number <= n
    {
        return Err((StatusCode::CONFLICT, stale(n)));
    }
    let created = s.bucket.create(&numbered(prefix, number), bytes).await.map_err(unavailable)?;
    s.changed(view);
    if !created {
        return Err((
            StatusCode::CONFLICT,
            format!("another document with number {number} was stored at the same time; publish under a higher one"),
        ));
    }
    Ok(serde_json::json!({ "stored": true }))
}

fn envelope(bytes: &[u8]) -> Result<channel::Envelope, (StatusCode, String)> {
    serde_json::from_slice(bytes).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a signed document ({e}); write it with `fleet channel keys` or `sign`"),
        )
    })
}

fn unprocessable(e: channel::ChannelError) -> (StatusCode, String) {
    (StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

/// 201 when the document was stored, 200 when it was there already.
fn stored(v: Result<serde_json::Value, (StatusCode, String)>) -> Response {
    match v {
        Ok(v) if v["stored"] == true => reply(StatusCode::CREATED, v),
        Ok(v) => reply(StatusCode::OK, v),
        Err((status, message)) => problem(status, message),
    }
}

async fn put_keys(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let work = async {
        let e = envelope(&body)?;
        if let Some(root) = &s.channel_root {
            channel::read_root_signed(&e, root).map_err(unprocessable)?;
        }
        let new = channel::read_keys(&e).map_err(unprocessable)?;
        store_document(&s, ("keys", ""), new.version, body.clone(), |old| {
            format!("the stored key list has version {old}; publish a new one under a higher version")
        })
        .await
    };
    stored(work.await)
}

async fn put_channel(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>, body: Bytes) -> Response {
    if !crate::skill::manifest::valid_name(&name) {
        return problem(StatusCode::BAD_REQUEST, format!("{name:?} is not a channel name"));
    }
    let work = async {
        let keys = stored_keys(&s).await?;
        let new = channel::read_index(&keys, &envelope(&body)?, &name, std::time::SystemTime::now())
            .map_err(unprocessable)?;
        store_document(&s, (&format!("channels/{name}"), &name), new.serial, body.clone(), |old| {
            format!("channel `{name}` has serial {old}; publish changes under a higher serial")
        })
        .await
    };
    stored(work.await)
}
/// Where a staged rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Robots of the waves reached get the new index.
    Running,
    /// Every robot gets the `back` index.
    Halted,
    /// Every robot gets the new index; the channel's index is it.
    Done,
}

/// A staged rollout of one channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    /// The channel.
    pub channel: String,
    /// Per wave, the share of robots (%) that get the new index; the last is 100.
    pub waves: Vec<u8>,
    /// The wave reached.
    pub stage: usize,
    /// Where it stands.
    pub state: RolloutState,
    /// The new index's serial.
    pub new_serial: u64,
    /// The `back` index's serial.
    pub back_serial: u64,
    /// When it started, and when it last changed (RFC 3339).
    pub started: String,
    /// When it last changed.
    pub changed: String,
    /// When the wave reached began.
    pub wave_started: String,
    /// Advancing and halting on the robots' reports, when asked for.
    pub auto: Option<Auto>,
    /// Why it halted, or what moved it last.
    pub reason: Option<String>,
    /// Interventions per tick of the robots still on the old index when it last advanced: what
    /// the last wave, which leaves none on the old index, is judged against.
    pub baseline: Option<f64>,
    /// Their stale inputs per tick then.
    pub baseline_stale: Option<f64>,
}

/// How a rollout judges the robots' reports by itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Auto {
    /// Seconds each wave runs before it may advance.
    pub soak_s: u64,
    /// The wave's robots on the new index may have at most this many times the interventions
    /// per tick of the robots still on the old one; above it, the rollout halts.
    pub threshold: f64,
    /// Robots of the wave that must report on the new index before it advances.
    pub min_robots: usize,
}

/// Interventions per tick below which a wave is never judged worse (a quiet fleet's noise).
const RATE_FLOOR: f64 = 1e-3;

/// What starts a rollout, as stored (`start.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Started {
    waves: Vec<u8>,
    auto: Option<Auto>,
    new_serial: u64,
    back_serial: u64,
    at: String,
}

/// One step of a rollout, as stored (`stage-K.json`, `halted.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    at: String,
    reason: String,
    baseline: Option<f64>,
    /// Absent from steps stored before stale inputs were judged.
    #[serde(default)]
    baseline_stale: Option<f64>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Shared {
    /// The channel's rollouts, each by its folder (its new index's serial) with the names of
    /// its facts: the ones whose start is whole and that were not withdrawn.
    async fn rollouts(&self, channel: &str) -> Result<Vec<(String, Vec<String>)>, BucketError> {
        let mut dirs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for l in self.bucket.list(&format!("rollouts/{channel}")).await? {
            if let Some((dir, fact)) = l.name.split_once('/') {
                dirs.entry(dir.to_string()).or_default().push(fact.to_string());
            }
        }
        Ok(dirs
            .into_iter()
            .filter(|(d, f)| {
                d.parse::<u64>().is_ok()
                    && ["start.json", "new.json", "back.json"].iter().all(|n| f.iter().any(|x| x == n))
                    && !f.iter().any(|x| x == "withdrawn.json")
            })
            .collect())
    }

    /// The highest new-index serial any rollout of `channel` used, withdrawn ones included
    /// (robots may have fetched it): a new rollout signs above it.
    async fn serials_used(&self, channel: &str) -> Result<u64, BucketError> {
        let listed = self.bucket.list(&format!("rollouts/{channel}")).await?;
        Ok(listed.iter().filter_map(|l| l.name.split('/').next()?.parse::<u64>().ok()).max().unwrap_or(0))
    }

    /// The channel's latest rollout, read from its facts in the store.
    async fn rollout(&self, channel: &str) -> Result<Option<Live>, BucketError> {
        match self.rollouts(channel).await?.pop() {
            Some((dir, facts)) => self.rollout_in(channel, &dir, &facts).await,
            None => Ok(None),
        }
    }

    /// The rollout in folder `dir` of `channel`, whose facts are `facts`.
    async fn rollout_in(&self, channel: &str, dir: &str, facts: &[String]) -> Result<Option<Live>, BucketError> {
        let at = format!("rollouts/{channel}/{dir}");
        let (Some(start), Some(new), Some(back)) = (
            self.read_fixed(&format!("{at}/start.json")).await?,
            self.read_fixed(&format!("{at}/new.json")).await?,
            self.read_fixed(&format!("{at}/back.json")).await?,
        ) else {
            return Ok(None);
        };
        let Ok(start) = serde_json::from_slice::<Started>(&start) else {
            tracing::warn!("{at}/start.json does not read; the rollout is ignored");
            return Ok(None);
        };
        let reached =
            facts.iter().filter_map(|f| f.strip_prefix("stage-")?.strip_suffix(".json")?.parse::<usize>().ok()).max();
        let read_step = |bytes: Option<Bytes>| bytes.and_then(|b| serde_json::from_slice::<Step>(&b).ok());
        let last = match reached {
            Some(k) => read_step(self.read_fixed(&format!("{at}/stage-{k:03}.json")).await?),
            None => None,
        };
        let halted = match facts.iter().any(|f| f == "halted.json") {
            true => Some(read_step(self.read_fixed(&format!("{at}/halted.json")).await?)),
            false => None,
        };
        let n = start.waves.len();
        let k = reached.unwrap_or(0);
        let state = match (&halted, k >= n) {
            (Some(_), _) => RolloutState::Halted,
            (None, true) => RolloutState::Done,
            (None, false) => RolloutState::Running,
        };
        let wave_started = last.as_ref().map_or(start.at.clone(), |s| s.at.clone());
        let latest = halted.flatten().or(last.clone());
        let r = Rollout {
            channel: channel.to_string(),
            waves: start.waves.clone(),
            stage: k.min(n.saturating_sub(1)),
            state,
            new_serial: start.new_serial,
            back_serial: start.back_serial,
            started: start.at.clone(),
            changed: latest.as_ref().map_or(start.at.clone(), |s| s.at.clone()),
            wave_started,
            auto: start.auto,
            reason: latest.as_ref().map(|s| s.reason.clone()),
            baseline: last.as_ref().and_then(|s| s.baseline),
            baseline_stale: last.and_then(|s| s.baseline_stale),
        };
        Ok(Some(Live { r, new, back }))
    }
}

/// What starts a rollout: the new index, the index to go back to, and the waves.
#[derive(Deserialize)]
struct RolloutStart {
    new: channel::Envelope,
    back: channel::Envelope,
    waves: Vec<u8>,
    #[serde(default)]
    auto: Option<Auto>,
}

async fn rollout_start(
    State(s): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    axum::Json(start): axum::Json<RolloutStart>,
) -> Response {
    if !crate::skill::manifest::valid_name(&name) {
        return problem(StatusCode::BAD_REQUEST, format!("{name:?} is not a channel name"));
    }
    let work = async {
        let _one = s.adding.lock().await;
        let w = &start.waves;
        if w.is_empty() || w.last() != Some(&100) || w.windows(2).any(|p| p[0] >= p[1]) || w[0] == 0 {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("waves {w:?}: give rising shares of the robots, 1 to 100, ending at 100 (e.g. 1,10,50,100)"),
            ));
        }
        let busy = |r: &Rollout| {
            (
                StatusCode::CONFLICT,
                format!(
                    "a rollout of channel `{name}` is running (wave {} of {}); halt it or let it finish first",
                    r.stage + 1,
                    r.waves.len()
                ),
            )
        };
        if let Some(live) = s.rollout(&name).await.map_err(unavailable)?
            && live.r.state == RolloutState::Running
        {
            return Err(busy(&live.r));
        }
        let keys = stored_keys(&s).await?;
        let current: channel::Index = s
            .latest(&format!("channels/{name}"))
            .await
            .map_err(unavailable)?
            .and_then(|(_, b)| serde_json::from_slice::<channel::Envelope>(&b).ok())
            .and_then(|e| serde_json::from_str(&e.payload).ok())
            .ok_or((
                StatusCode::CONFLICT,
                format!("channel `{name}` has no index to roll out from; publish one first"),
            ))?;
        let now = std::time::SystemTime::now();
        let new = channel::read_index(&keys, &start.new, &name, now).map_err(unprocessable)?;
        let back = channel::read_index(&keys, &start.back, &name, now).map_err(unprocessable)?;
        if !(current.serial < new.serial && new.serial < back.serial) {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "serials must rise: the channel's {} < the new index's {} < the back index's {}",
                    current.serial, new.serial, back.serial
                ),
            ));
        }
        if back.skills != current.skills {
            return Err((StatusCode::CONFLICT, "the back index must offer what the channel offers now".into()));
        }
        let used = s.serials_used(&name).await.map_err(unavailable)?;
        if new.serial <= used {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "an earlier rollout of channel `{name}` used serial {used} (robots may have fetched it, even if it was withdrawn); sign the new and back indexes above {used}"
                ),
            ));
        }
        let at = format!("rollouts/{name}/{:020}", new.serial);
        let bytes = |e: &channel::Envelope| Bytes::from(serde_json::to_vec(e).expect("serialises"));
        s.bucket.put(&format!("{at}/new.json"), bytes(&start.new)).await.map_err(unavailable)?;
        s.bucket.put(&format!("{at}/back.json"), bytes(&start.back)).await.map_err(unavailable)?;
        let started = Started {
            waves: start.waves.clone(),
            auto: start.auto,
            new_serial: new.serial,
            back_serial: back.serial,
            at: now_rfc3339(),
        };
        let fact = Bytes::from(serde_json::to_vec_pretty(&started).expect("serialises"));
        if !s.bucket.create(&format!("{at}/start.json"), fact).await.map_err(unavailable)? {
            return Err((StatusCode::CONFLICT, format!("a rollout of index serial {} was started before", new.serial)));
        }
        s.changed(&name);
        // Another server may have started one at the same moment. Whichever of two starts reads
        // the store later sees the other; one that sees another running withdraws, so two never
        // both run (both may withdraw: then neither runs, and both starters hear it).
        let mut mine = None;
        for (dir, facts) in s.rollouts(&name).await.map_err(unavailable)? {
            let Some(live) = s.rollout_in(&name, &dir, &facts).await.map_err(unavailable)? else { continue };
            if live.r.new_serial == new.serial {
                mine = Some(live.r);
            } else if live.r.state == RolloutState::Running {
                let why = Step {
                    at: now_rfc3339(),
                    reason: format!("started with rollout {dir}"),
                    baseline: None,
                    baseline_stale: None,
                };
                let fact = Bytes::from(serde_json::to_vec_pretty(&why).expect("serialises"));
                s.bucket.put(&format!("{at}/withdrawn.json"), fact).await.map_err(unavailable)?;
                s.changed(&name);
                return Err(busy(&live.r));
            }
        }
        let r = mine.ok_or((
            StatusCode::SERVICE_UNAVAILABLE,
            "the rollout was stored but does not read back; try again".to_string(),
        ))?;
        tracing::info!(channel = %name, "rollout started: wave 1 of {} ({} %)", r.waves.len(), r.waves[0]);
        Ok(r)
    };
    answer(StatusCode::CREATED, work).await
}

/// Advances (`advance`) or halts (`halt`) the running rollout of `name`, for `why`.
async fn act_on(
    s: &Shared,
    name: &str,
    action: &str,
    why: &str,
    baseline: Option<Rates>,
) -> Result<Rollout, (StatusCode, String)> {
    let live = s
        .rollout(name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no rollout of channel `{name}`")))?;
    let r = &live.r;
    if r.state != RolloutState::Running {
        return Err((StatusCode::CONFLICT, format!("the rollout of channel `{name}` is {:?}, not running", r.state)));
    }
    let at = format!("rollouts/{name}/{:020}", r.new_serial);
    let step = Bytes::from(
        serde_json::to_vec_pretty(&Step {
            at: now_rfc3339(),
            reason: why.to_string(),
            baseline: baseline.map(|b| b.interventions),
            baseline_stale: baseline.and_then(|b| b.stale),
        })
        .expect("serialises"),
    );
    // The channel's index changes before the fact that says so, so that a crash between the
    // two leaves a rollout that can be moved again, never a fact without its index.
    let publish = |serial: u64, bytes: Bytes| {
        let key = numbered(&format!("channels/{name}"), serial);
        async move { s.bucket.create(&key, bytes).await.map_err(unavailable) }
    };
    match action {
        "advance" => {
            let next = r.stage + 1;
            if next == r.waves.len() {
                publish(r.new_serial, live.new.clone()).await?;
            }
            s.bucket.create(&format!("{at}/stage-{next:03}.json"), step).await.map_err(unavailable)?;
        }
        "halt" => {
            publish(r.back_serial, live.back.clone()).await?;
            s.bucket.create(&format!("{at}/halted.json"), step).await.map_err(unavailable)?;
        }
        other => return Err((StatusCode::NOT_FOUND, format!("{other:?}: a rollout can `advance` or `halt`"))),
    }
    s.changed(name);
    let r = s
        .rollout(name)
        .await
        .map_err(unavailable)?
        .map(|l| l.r)
        .ok_or((StatusCode::SERVICE_UNAVAILABLE, "the rollout does not read back; try again".to_string()))?;
    tracing::info!(channel = %name, state = ?r.state, "rollout at wave {} of {}: {why}", r.stage + 1, r.waves.len());
    Ok(r)
}

async fn rollout_act(State(s): State<Arc<Shared>>, UrlPath((name, action)): UrlPath<(String, String)>) -> Response {
    let work = async {
        let _one = s.adding.lock().await;
        act_on(&s, &name, &action, "by hand", None).await
    };
    answer(StatusCode::OK, work).await
}

async fn rollout_status(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    // The serials used so far come with every answer, a 404 too: a rollout made by
    // `rollout start SKILL VERSION` signs above them.
    let used = match s.serials_used(&name).await {
        Ok(u) => u,
        Err(e) => return store_failed(e),
    };
    let work = async {
        let r = s
            .rollout(&name)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no rollout of channel `{name}`")))?
            .r;
        let reports: Vec<serde_json::Value> =
            all_reports(&s).await.map_err(unavailable)?.into_iter().filter(|v| v["channel"] == name.as_str()).collect();
        let mut from = 0u8;
        let waves: Vec<serde_json::Value> = r
            .waves
            .iter()
            .map(|&to| {
                let of: Vec<&serde_json::Value> = reports
                    .iter()
                    .filter(|v| v["robot"].as_str().is_some_and(|id| (from..to).contains(&channel::wave_bucket(&name, id))))
                    .collect();
                let on_new = of.iter().filter(|v| v["serial"].as_u64() == Some(r.new_serial)).count();
                let failing = of.iter().filter(|v| !v["error"].is_null()).count();
                from = to;
                serde_json::json!({ "up_to_percent": to, "robots": of.len(), "on_new": on_new, "last_poll_failed": failing })
            })
            .collect();
        Ok(serde_json::json!({ "rollout": r, "waves": waves, "serials_used": used }))
    };
    match work.await {
        Ok(v) => reply(StatusCode::OK, v),
        Err((status, message)) => reply(status, serde_json::json!({ "error": message, "serials_used": used })),
    }
}

async fn put_report(
    State(s): State<Arc<Shared>>,
    UrlPath(robot): UrlPath<String>,
    axum::Json(mut report): axum::Json<serde_json::Value>,
) -> Response {
    if !crate::skill::manifest::valid_name(&robot)
        || report.get("robot").and_then(|r| r.as_str()) != Some(robot.as_str())
    {
        return problem(StatusCode::BAD_REQUEST, format!("a report for {robot:?} must name that robot, a valid name"));
    }
    // Health a rollout judges: counts of ticks, none more than the ticks.
    let h = &report["health"];
    let ticks = h["ticks"].as_u64().unwrap_or(0);
    if !h.is_null() && ["interventions", "stale_inputs"].iter().any(|k| h[*k].as_u64().is_some_and(|x| x > ticks)) {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("the health in {robot}'s report counts more interventions or stale inputs than ticks ({ticks})"),
        );
    }
    report["received"] = serde_json::json!(now_rfc3339());
    let bytes = serde_json::to_vec_pretty(&report).expect("serialises");
    if let Err(e) = s.bucket.put(&format!("reports/{robot}.json"), bytes).await {
        return store_failed(e);
    }
    // Each report may be the one that moves a rollout that advances by itself.
    if let Some(c) = report["channel"].as_str().filter(|c| crate::skill::manifest::valid_name(c)) {
        s.reported.lock().unwrap_or_else(|p| p.into_inner()).insert(c.to_string());
    }
    reply(StatusCode::OK, serde_json::json!({ "stored": true }))
}

/// Every robot's last report.
async fn all_reports(s: &Shared) -> Result<Vec<serde_json::Value>, BucketError> {
    Ok(s.read_all("reports").await?.into_iter().filter_map(|(_, b)| serde_json::from_slice(&b).ok()).collect())
}

async fn reports(State(s): State<Arc<Shared>>) -> Response {
    match all_reports(&s).await {
        Ok(mut out) => {
            out.sort_by(|a, b| a["robot"].as_str().cmp(&b["robot"].as_str()));
            reply(StatusCode::OK, serde_json::json!({ "reports": out }))
        }
        Err(e) => store_failed(e),
    }
}

/// How often the channels whose robots reported are judged.
const JUDGE_EVERY: Duration = Duration::from_millis(500);

/// Judges, twice a second, the rollouts of the channels whose robots reported since: reports
/// arrive at every server, so each judges what it heard of; two that judge one rollout at once
/// write the same step.
async fn judge_loop(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(JUDGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let channels: Vec<String> = s.reported.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for c in channels {
            // The cached view first: most reports are for channels with nothing to judge.
            let judged = s.view(&c).await.ok().and_then(|v| v.rollout.clone()).map(|l| l.r);
            if !judged.is_some_and(|r| r.state == RolloutState::Running && r.auto.is_some()) {
                continue;
            }
            let _one = s.adding.lock().await;
            if let Err(e) = judge_rollout(&s, &c).await {
                tracing::warn!(channel = %c, "the rollout could not be judged: {e}; it is judged again at the next report");
            }
        }
    }
}

/// What a group of robots did per tick under the version they run.
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    /// Interventions the skill's actions caused.
    interventions: f64,
    /// Ticks with a stale input; None when no robot of the group counts them (nodes before
    /// they were counted apart).
    stale: Option<f64>,
}

/// Rates over `reports`' health, each robot one voice however many ticks it claims (so one
/// robot's token cannot outweigh the rest of its group), and how many had any ticks.
fn rates(reports: &[&serde_json::Value]) -> (Rates, usize) {
    let (mut interventions, mut stale, mut n, mut counting) = (0.0, 0.0, 0usize, 0usize);
    for r in reports {
        let h = &r["health"];
        if let (Some(t), Some(i)) = (h["ticks"].as_u64(), h["interventions"].as_u64())
            && t > 0
        {
            interventions += i.min(t) as f64 / t as f64;
            n += 1;
            if let Some(x) = h["stale_inputs"].as_u64() {
                stale += x.min(t) as f64 / t as f64;
                counting += 1;
            }
        }
    }
    let interventions = if n > 0 { interventions / n as f64 } else { 0.0 };
    (Rates { interventions, stale: (counting > 0).then(|| stale / counting as f64) }, n)
}

/// Judges a running rollout of `name` that advances by itself on the reports received since its
/// wave began: halts when the wave's robots on the new index do worse than those on the old one,
/// advances when the wave has soaked and enough of its robots report on the new index.
async fn judge_rollout(s: &Shared, name: &str) -> Result<(), String> {
    let Some(live) = s.rollout(name).await.map_err(|e| e.to_string())? else { return Ok(()) };
    let r = live.r;
    let (Some(auto), RolloutState::Running) = (r.auto, r.state) else { return Ok(()) };
    let Ok(since) = humantime::parse_rfc3339(&r.wave_started) else { return Ok(()) };
    let reach = r.waves[r.stage];
    let reports = all_reports(s).await.map_err(|e| e.to_string())?;
    let fresh: Vec<&serde_json::Value> = reports
        .iter()
        .filter(|v| v["channel"] == name)
        .filter(|v| v["received"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok()).is_some_and(|t| t >= since))
        .collect();
    let in_wave = |v: &&serde_json::Value| v["robot"].as_str().is_some_and(|id| channel::wave_bucket(name, id) < reach);
    let on_new: Vec<&serde_json::Value> =
        fresh.iter().copied().filter(in_wave).filter(|v| v["serial"].as_u64() == Some(r.new_serial)).collect();
    let on_old: Vec<&serde_json::Value> = fresh.iter().copied().filter(|v| !in_wave(v)).collect();
    let (new, new_n) = rates(&on_new);
    let least = auto.min_robots.max(1);
    // What the wave is judged against: the robots still on the old index, or, in the last wave,
    // which leaves none there, their rates when the rollout reached it.
    let (old, base) = if reach < 100 {
        let (rates, n) = rates(&on_old);
        (rates, n >= least)
    } else {
        (Rates { interventions: r.baseline.unwrap_or(0.0), stale: r.baseline_stale }, r.baseline.is_some())
    };
    let failing = fresh.iter().copied().filter(in_wave).filter(|v| !v["error"].is_null()).count();
    let soaked = std::time::SystemTime::now().duration_since(since).unwrap_or_default().as_secs() >= auto.soak_s;
    let wave = r.stage + 1;
    let worse = |new: f64, old: f64| new_n > 0 && base && new > RATE_FLOOR.max(auto.threshold * old);
    let verdict = if failing > 0 && failing * 2 >= fresh.iter().copied().filter(in_wave).count() {
        Some(("halt", format!("{failing} robot(s) of wave {wave} failed to take the new index")))
    } else if worse(new.interventions, old.interventions) {
        Some((
            "halt",
            format!(
                "wave {wave}: {:.4} interventions per tick on the new index against {:.4} on the old (threshold {}x)",
                new.interventions, old.interventions, auto.threshold
            ),
        ))
    } else if let (Some(new_stale), Some(old_stale)) = (new.stale, old.stale)
        && worse(new_stale, old_stale)
    {
        Some((
            "halt",
            format!(
                "wave {wave}: a stale input on {:.2} % of ticks on the new index against {:.2} % on the old (threshold {}x): does the new version read a topic these robots do not publish, or want it fresher than it comes?",
                new_stale * 100.0,
                old_stale * 100.0,
                auto.threshold
            ),
        ))
    } else if base && new_n >= least && soaked {
        let share = |x: Option<f64>| x.map_or("not counted".to_string(), |x| format!("{:.2} %", x * 100.0));
        let why = format!(
            "wave {wave}: {new_n} robot(s) on the new index, {:.4} interventions per tick and a stale input on {} of ticks, against {:.4} and {}",
            new.interventions,
            share(new.stale),
            old.interventions,
            share(old.stale)
        );
        Some(("advance", why))
    } else {
        None
    };
    if let Some((action, why)) = verdict {
        act_on(s, name, action, &why, (reach < 100).then_some(old)).await.map_err(|(_, m)| m)?;
    }
    Ok(())
}

async fn robots(State(s): State<Arc<Shared>>) -> Response {
    let text = match s.bucket.get("robots.toml").await {
        Ok(None) => return reply(StatusCode::OK, serde_json::json!({ "robots": [] })),
        Ok(Some(o)) => String::from_utf8_lossy(&o.bytes).into_owned(),
        Err(e) => {
            return store_failed(e);
        }
    };
    match super::push::listed(&text) {
        Ok(r) => reply(
            StatusCode::OK,
            serde_json::json!({ "robots": r.iter().map(|(name, url)| serde_json::json!({"name": name, "url": url})).collect::<Vec<_>>() }),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn upload(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let turn = match tokio::time::timeout(s.http.queue, s.uploads.clone().acquire_owned()).await {
        Ok(Ok(turn)) => turn,
        _ => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} uploads are in progress; try again shortly", s.http.uploads),
            );
        }
    };
    // A task of its own, so an upload cut off by its client still cleans up after itself.
    let work = tokio::spawn(async move {
        let r = receive(s, headers, body).await;
        drop(turn);
        r
    });
    work.await.unwrap_or_else(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn receive(s: Arc<Shared>, headers: HeaderMap, body: Body) -> Response {
    let n = s.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = s.spool.join(format!("{}-upload-{n}.skill", s.owner));
    let bytes = match spool(&headers, body, &path, s.limits.max_bytes, &s.http).await {
        Ok(b) => b,
        Err(e) => {
            let (r, reason) = e.reply();
            tracing::warn!(reason, "catalog upload refused: {e}");
            return r;
        }
    };
    let outcome = add(&s, &path, bytes, n).await;
    let _ = tokio::fs::remove_file(&path).await;
    match outcome {
        Ok((entry, created)) => {
            tracing::info!(skill = %entry.name, version = %entry.version, signer = %entry.signer, "bundle added to the catalog");
            reply(
                if created { StatusCode::CREATED } else { StatusCode::OK },
                serde_json::to_value(&entry).unwrap_or_default(),
            )
        }
        Err((status, message)) => {
            let message = redact(&message, &s.spool);
            tracing::warn!("catalog upload refused: {message}");
            problem(status, message)
        }
    }
}

/// The answer to an upload of `entry` when the catalog has `old` under its version already.
fn same_or_conflict(old: CatalogEntry, entry: &CatalogEntry) -> Result<(CatalogEntry, bool), (StatusCode, String)> {
    if old.digest == entry.digest {
        Ok((old, false))
    } else {
        Err((
            StatusCode::CONFLICT,
            format!(
                "{} {} is already in the catalog with another digest ({}); bump the version",
                entry.name, entry.version, old.digest
            ),
        ))
    }
}

/// Verifies the spooled bundle (in a worker process) and stores it in the catalog; `false` when
/// the same bundle was already there. The bundle is stored before its entry, under its digest,
/// so an entry never names a bundle that is not whole in the store.
async fn add(s: &Shared, path: &Path, bytes: u64, n: u64) -> Result<(CatalogEntry, bool), (StatusCode, String)> {
    let _one = s.adding.lock().await;
    let scratch = s.spool.join(format!("{}-unpack-{n}", s.owner));
    let (sandbox, trusted, limits, bundle) = (s.sandbox.clone(), s.trusted.clone(), s.limits, path.to_path_buf());
    let verified = tokio::task::spawn_blocking(move || {
        let v = sandbox
            .unpack(&bundle, &trusted, &scratch, limits)
            .and_then(|v| crate::skill::read_manifest(&v.dir).map(|m| (v, m)).map_err(bundle::BundleError::Skill));
        let _ = std::fs::remove_dir_all(&scratch);
        v
    })
    .await
    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (v, manifest) = verified.map_err(|e| match e {
        bundle::BundleError::Rejected { problem, .. } => (StatusCode::UNPROCESSABLE_ENTITY, problem),
        e => {
            tracing::error!("catalog: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the fleet server could not check the bundle; its log says why".into())
        }
    })?;
    let c = &v.contents;
    let entry = CatalogEntry {
        name: c.name.clone(),
        version: c.version.clone(),
        digest: c.digest.clone(),
        signer: v.signer.clone(),
        bytes,
        added: now_rfc3339(),
        provenance: manifest.provenance,
    };
    if let Some(old) = self::entry(s, &c.name, &c.version).await.map_err(unavailable)? {
        return same_or_conflict(old, &entry);
    }
    s.bucket.upload(&bundle_key(&c.name, &c.version, &c.digest), path).await.map_err(unavailable)?;
    let text = Bytes::from(serde_json::to_vec_pretty(&entry).expect("serialises"));
    if !s.bucket.create(&entry_key(&c.name, &c.version), text).await.map_err(unavailable)? {
        // Another server catalogued this version in the meantime.
        let old = self::entry(s, &c.name, &c.version)
            .await
            .map_err(unavailable)?
            .ok_or((StatusCode::SERVICE_UNAVAILABLE, "the catalog entry does not read back; try again".to_string()))?;
        return same_or_conflict(old, &entry);
    }
    Ok((entry, true))
}
