//! The fleet server (`skillgraft fleet serve --store DIR`): a catalog of signed bundles that
//! robots and people upload and download, and the registry of robots that `fleet push` reads.
//!
//! ```text
//! DIR/catalog/NAME/VERSION.skill   bundles, verified on upload, never changed afterwards
//! DIR/catalog/NAME/VERSION.json    what the catalog says of it: digest, signer, provenance
//! DIR/robots.toml                  the registry: [[robot]] name, url, token_file
//! DIR/keys.json                    the root-signed list of fleet keys (fleet channel keys)
//! DIR/channels/CHANNEL.json        each channel's signed index (fleet channel sign)
//! DIR/reports/ROBOT.json           each robot's last report
//! DIR/rollouts/CHANNEL.json        a staged rollout's state; .new.json and .back.json its indexes
//! DIR/.incoming/                   uploads being received
//! ```
//!
//! ```text
//! GET  /health
//! GET  /catalog                    {"bundles": [entries]}
//! GET  /catalog/{name}/{version}   the bundle file
//! POST /catalog                    body: a .skill bundle; 201 entry (200 when already there)
//! GET  /robots                     {"robots": [{"name", "url"}]}
//! GET  /keys                       the key list; ETag, If-None-Match gives 304
//! PUT  /keys                       body: a key list; 201, 200 when the same, 409 when older
//! GET  /reports                    {"reports": [each robot's last report, with "received"]}
//! PUT  /reports/{robot}            body: the robot's report after a poll (skillgraft agent)
//! GET  /channels/{channel}[?robot=ID]  the channel's index (during a staged rollout, the
//!                                  robot's wave decides which); ETag, If-None-Match gives 304
//! POST /rollouts/{channel}         {"new": index, "back": index, "waves": [1, 10, 50, 100]}
//! POST /rollouts/{channel}/advance the next wave (after the last: the rollout is done)
//! POST /rollouts/{channel}/halt    every robot gets the `back` index
//! GET  /rollouts/{channel}         the rollout's state, and per wave its robots' reports
//! PUT  /channels/{channel}         body: an index signed by a listed fleet key; 201, 200, 409
//! ```
//!
//! The server keeps no root key: a robot checks the key list against the root it pins. What the
//! server checks on a PUT is what keeps a mistake from reaching the robots: an index signed by a
//! key of the stored list, for this channel, not expired, and never a serial (or key-list
//! version) below the stored one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::FleetError;
use super::auth::Tokens;
use super::channel;
use super::http::{HttpLimits, problem, redact, reply, spool, unauthorized, within};
use super::push::Robots;
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
    /// The fleet folder.
    pub store: PathBuf,
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
}

struct Shared {
    root: PathBuf,
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
    /// One check and catalog change at a time: two uploads of one version must not both pass
    /// the check, and checks (each a worker process) do not pile up.
    adding: std::sync::Mutex<()>,
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
    let tokens = Tokens::load(&settings.tokens)?;
    let root = settings.store.clone();
    for d in [
        root.join("catalog"),
        root.join("channels"),
        root.join("reports"),
        root.join("rollouts"),
        root.join(".incoming"),
    ] {
        std::fs::create_dir_all(&d).map_err(FileError::at("create", &d))?;
    }
    let incoming = root.join(".incoming");
    for e in std::fs::read_dir(&incoming).map_err(FileError::at("read", &incoming))?.filter_map(|e| e.ok()) {
        let _ = std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
    }
    let registry = root.join("robots.toml");
    if registry.exists() {
        Robots::load(&registry)?;
    }
    let sandbox = Sandbox::current(settings.max_mib).map_err(|e| FleetError::Config(e.to_string()))?;
    let shared = Arc::new(Shared {
        root,
        trusted,
        tokens,
        limits: Limits::mib(settings.max_mib),
        http: settings.http,
        sandbox,
        seq: Default::default(),
        channel_root,
        uploads: Arc::new(tokio::sync::Semaphore::new(settings.http.uploads.max(1))),
        adding: Default::default(),
    });
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
    Ok(())
}

/// Every request, before its handler reads anything of its body: the token, then the
/// request-wide deadline for all but uploads and downloads (which carry their own).
async fn authorize(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(r) = unauthorized(&s.tokens, req.headers()) {
        tracing::warn!("fleet server: request without an accepted token refused");
        return r;
    }
    let streams = (req.method() == Method::POST && req.uri().path() == "/catalog")
        || (req.method() == Method::GET && req.uri().path().starts_with("/catalog/"));
    if streams { next.run(req).await } else { within(s.http.request_timeout, next.run(req)).await }
}

async fn health() -> Response {
    reply(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

/// Every entry of the catalog, by name then version.
pub fn entries(root: &Path) -> Result<Vec<CatalogEntry>, FleetError> {
    let dir = root.join("catalog");
    let mut out = Vec::new();
    for name in std::fs::read_dir(&dir).map_err(FileError::at("read", &dir))?.filter_map(|e| e.ok()) {
        for f in std::fs::read_dir(name.path()).map_err(FileError::at("read", &name.path()))?.filter_map(|e| e.ok()) {
            let p = f.path();
            if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read(&p).map_err(FileError::at("read", &p))?;
                // One damaged entry must not hide the rest of the catalog.
                match serde_json::from_slice(&text) {
                    Ok(e) => out.push(e),
                    Err(e) => tracing::warn!("{}: {e}; remove it and upload its bundle again", p.display()),
                }
            }
        }
    }
    out.sort_by(|a: &CatalogEntry, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

async fn catalog(State(s): State<Arc<Shared>>) -> Response {
    let root = s.root.clone();
    match tokio::task::spawn_blocking(move || entries(&root)).await {
        Ok(Ok(list)) => reply(StatusCode::OK, serde_json::json!({ "bundles": list })),
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn bundle_path(root: &Path, name: &str, version: &semver::Version) -> PathBuf {
    root.join("catalog").join(name).join(format!("{version}.skill"))
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
    use tokio::io::AsyncSeekExt;
    let Ok(version) = version.parse::<semver::Version>() else {
        return problem(StatusCode::BAD_REQUEST, format!("{version:?} is not a version (X.Y.Z)"));
    };
    if !crate::skill::manifest::valid_name(&name) {
        return problem(StatusCode::BAD_REQUEST, format!("{name:?} is not a skill name"));
    }
    let path = bundle_path(&s.root, &name, &version);
    match tokio::fs::File::open(&path).await {
        Ok(mut f) => {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            let Some(start) = range_start(&headers, len) else {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    "this server resumes downloads with `Range: bytes=N-`, N below the bundle's size",
                )
                    .into_response();
            };
            if f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
                return problem(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the bundle");
            }
            let rest = len - start;
            // A reader slower than the minimum rate loses the rest: it must not hold a connection.
            let allowed =
                s.http.grace + std::time::Duration::from_secs_f64(rest as f64 / s.http.min_rate.max(1) as f64);
            let stream =
                tokio_util::io::ReaderStream::with_capacity(f, 256 << 10).take_until(tokio::time::sleep(allowed));
            let body = Body::from_stream(stream);
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
        Err(_) => {
            problem(StatusCode::NOT_FOUND, format!("{name} {version} is not in the catalog; GET /catalog lists it"))
        }
    }
}

fn keys_path(root: &Path) -> PathBuf {
    root.join("keys.json")
}

fn channel_path(root: &Path, channel: &str) -> PathBuf {
    root.join("channels").join(format!("{channel}.json"))
}

/// A stored document, with an ETag of its bytes; 304 when the client has them already.
async fn document(path: PathBuf, headers: &HeaderMap, missing: String) -> Response {
    let Ok(bytes) = tokio::fs::read(&path).await else {
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
    document(keys_path(&s.root), &headers, "no key list yet; publish one with `fleet channel publish --keys`".into())
        .await
}

async fn get_channel(
    State(s): State<Arc<Shared>>,
    UrlPath(channel): UrlPath<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if !crate::skill::manifest::valid_name(&channel) {
        return problem(StatusCode::BAD_REQUEST, format!("{channel:?} is not a channel name"));
    }
    let mut path = channel_path(&s.root, &channel);
    // `?robot=ID`: robot names are plain (letters, digits, `-`, `_`), so no decoding is needed.
    let robot = uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("robot=")));
    if let (Some(robot), Ok(r)) = (robot, read_rollout(&s.root, &channel)) {
        let bucket = channel::wave_bucket(&channel, robot);
        if r.state == RolloutState::Running && bucket < r.waves[r.stage] {
            path = rollout_path(&s.root, &channel, "new");
        }
    }
    let missing = format!("no channel `{channel}`; publish its index with `fleet channel publish --index`");
    document(path, &headers, missing).await
}

/// Runs `work` off the async threads and answers with its value (as JSON, with `ok`) or its
/// refusal.
async fn answer<T: Serialize + Send + 'static>(
    ok: StatusCode,
    work: impl FnOnce() -> Result<T, (StatusCode, String)> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => reply(ok, serde_json::to_value(&v).unwrap_or_default()),
        Ok(Err((status, message))) => problem(status, message),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The key list the server holds: 409 before one is published, 500 when it does not read.
fn stored_keys(root: &Path) -> Result<channel::Keys, (StatusCode, String)> {
    let bytes = std::fs::read(keys_path(root)).map_err(|_| {
        (
            StatusCode::CONFLICT,
            "this server has no key list to check the index against; publish it first (`fleet channel publish --keys`)"
                .to_string(),
        )
    })?;
    envelope(&bytes)
        .and_then(|e| channel::read_keys(&e).map_err(unprocessable))
        .map_err(|(_, message)| (StatusCode::INTERNAL_SERVER_ERROR, format!("the stored key list: {message}")))
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

fn rollout_path(root: &Path, channel: &str, part: &str) -> PathBuf {
    let name = if part.is_empty() { format!("{channel}.json") } else { format!("{channel}.{part}.json") };
    root.join("rollouts").join(name)
}

fn read_rollout(root: &Path, channel: &str) -> Result<Rollout, String> {
    let bytes =
        std::fs::read(rollout_path(root, channel, "")).map_err(|_| format!("no rollout of channel `{channel}`"))?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
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
    let work = move || -> Result<Rollout, (StatusCode, String)> {
        let _one = s.adding.lock().unwrap_or_else(|p| p.into_inner());
        let w = &start.waves;
        if w.is_empty() || w.last() != Some(&100) || w.windows(2).any(|p| p[0] >= p[1]) || w[0] == 0 {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("waves {w:?}: give rising shares of the robots, 1 to 100, ending at 100 (e.g. 1,10,50,100)"),
            ));
        }
        if let Ok(r) = read_rollout(&s.root, &name)
            && r.state == RolloutState::Running
        {
            return Err((
                StatusCode::CONFLICT,
                format!(
                    "a rollout of channel `{name}` is running (wave {} of {}); halt it or let it finish first",
                    r.stage + 1,
                    r.waves.len()
                ),
            ));
        }
        let keys = stored_keys(&s.root)?;
        let current: channel::Index = std::fs::read(channel_path(&s.root, &name))
            .ok()
            .and_then(|b| serde_json::from_slice::<channel::Envelope>(&b).ok())
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
        let internal = |e: FileError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        let bytes = |e: &channel::Envelope| serde_json::to_vec(e).expect("serialises");
        crate::file::write_atomic(&rollout_path(&s.root, &name, "new"), &bytes(&start.new)).map_err(internal)?;
        crate::file::write_atomic(&rollout_path(&s.root, &name, "back"), &bytes(&start.back)).map_err(internal)?;
        let r = Rollout {
            channel: name.clone(),
            waves: start.waves.clone(),
            stage: 0,
            state: RolloutState::Running,
            new_serial: new.serial,
            back_serial: back.serial,
            started: now_rfc3339(),
            changed: now_rfc3339(),
            wave_started: now_rfc3339(),
            auto: start.auto,
            reason: None,
            baseline: None,
        };
        write_rollout(&s.root, &r).map_err(internal)?;
        tracing::info!(channel = %name, "rollout started: wave 1 of {} ({} %)", r.waves.len(), r.waves[0]);
        Ok(r)
    };
    answer(StatusCode::CREATED, work).await
}

fn write_rollout(root: &Path, r: &Rollout) -> Result<(), FileError> {
    crate::file::write_atomic(&rollout_path(root, &r.channel, ""), &serde_json::to_vec_pretty(r).expect("serialises"))
}

/// Advances (`advance`) or halts (`halt`) the running rollout of `name`, for `why`; the caller
/// holds the catalog lock.
fn act_on(
    root: &Path,
    name: &str,
    action: &str,
    why: &str,
    baseline: Option<f64>,
) -> Result<Rollout, (StatusCode, String)> {
    let mut r = read_rollout(root, name).map_err(|e| (StatusCode::NOT_FOUND, e))?;
    if r.state != RolloutState::Running {
        return Err((StatusCode::CONFLICT, format!("the rollout of channel `{name}` is {:?}, not running", r.state)));
    }
    let internal = |e: FileError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let promote = |part: &str| -> Result<(), (StatusCode, String)> {
        let bytes = std::fs::read(rollout_path(root, name, part))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        crate::file::write_atomic(&channel_path(root, name), &bytes).map_err(internal)
    };
    match action {
        "advance" if r.stage + 1 < r.waves.len() => {
            r.stage += 1;
            r.wave_started = now_rfc3339();
        }
        "advance" => {
            promote("new")?;
            r.state = RolloutState::Done;
        }
        "halt" => {
            promote("back")?;
            r.state = RolloutState::Halted;
        }
        other => return Err((StatusCode::NOT_FOUND, format!("{other:?}: a rollout can `advance` or `halt`"))),
    }
    r.changed = now_rfc3339();
    r.reason = Some(why.to_string());
    r.baseline = baseline.or(r.baseline);
    write_rollout(root, &r).map_err(internal)?;
    tracing::info!(channel = %name, state = ?r.state, "rollout at wave {} of {}: {why}", r.stage + 1, r.waves.len());
    Ok(r)
}

async fn rollout_act(State(s): State<Arc<Shared>>, UrlPath((name, action)): UrlPath<(String, String)>) -> Response {
    let work = move || {
        let _one = s.adding.lock().unwrap_or_else(|p| p.into_inner());
        act_on(&s.root, &name, &action, "by hand", None)
    };
    answer(StatusCode::OK, work).await
}

/// Every robot's last report.
fn all_reports(root: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(root.join("reports"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// Interventions per tick over `reports`' health, and how many had any ticks.
fn rate(reports: &[&serde_json::Value]) -> (f64, usize) {
    let (mut ticks, mut interventions, mut n) = (0u64, 0u64, 0usize);
    for r in reports {
        let h = &r["health"];
        if let (Some(t), Some(i)) = (h["ticks"].as_u64(), h["interventions"].as_u64())
            && t > 0
        {
            ticks += t;
            interventions += i;
            n += 1;
        }
    }
    (if ticks > 0 { interventions as f64 / ticks as f64 } else { 0.0 }, n)
}

/// Judges a running rollout of `name` that advances by itself on the reports received since its
/// wave began: halts when the wave's robots on the new index do worse than those on the old one,
/// advances when the wave has soaked and enough of its robots report on the new index.
fn judge_rollout(root: &Path, name: &str) {
    let Ok(r) = read_rollout(root, name) else { return };
    let (Some(auto), RolloutState::Running) = (r.auto, r.state) else { return };
    let Ok(since) = humantime::parse_rfc3339(&r.wave_started) else { return };
    let reach = r.waves[r.stage];
    let reports = all_reports(root);
    let fresh: Vec<&serde_json::Value> = reports
        .iter()
        .filter(|v| v["channel"] == name)
        .filter(|v| v["received"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok()).is_some_and(|t| t >= since))
        .collect();
    let in_wave = |v: &&serde_json::Value| v["robot"].as_str().is_some_and(|id| channel::wave_bucket(name, id) < reach);
    let on_new: Vec<&serde_json::Value> =
        fresh.iter().copied().filter(in_wave).filter(|v| v["serial"].as_u64() == Some(r.new_serial)).collect();
    let on_old: Vec<&serde_json::Value> = fresh.iter().copied().filter(|v| !in_wave(v)).collect();
    let (new_rate, new_n) = rate(&on_new);
    let least = auto.min_robots.max(1);
    // What the wave is judged against: the robots still on the old index, or, in the last wave,
    // which leaves none there, their rate when the rollout reached it.
    let (old_rate, base) = if reach < 100 {
        let (rate, n) = rate(&on_old);
        (rate, n >= least)
    } else {
        (r.baseline.unwrap_or(0.0), r.baseline.is_some())
    };
    let failing = fresh.iter().copied().filter(in_wave).filter(|v| !v["error"].is_null()).count();
    let soaked = std::time::SystemTime::now().duration_since(since).unwrap_or_default().as_secs() >= auto.soak_s;
    let wave = r.stage + 1;
    let verdict = if failing > 0 && failing * 2 >= fresh.iter().copied().filter(in_wave).count() {
        Some(("halt", format!("{failing} robot(s) of wave {wave} failed to take the new index")))
    } else if new_n > 0 && base && new_rate > RATE_FLOOR.max(auto.threshold * old_rate) {
        Some((
            "halt",
            format!(
                "wave {wave}: {new_rate:.4} interventions per tick on the new index against {old_rate:.4} on the old (threshold {}x)",
                auto.threshold
            ),
        ))
    } else if base && new_n >= least && soaked {
        let why = format!(
            "wave {wave}: {new_n} robot(s) on the new index, {new_rate:.4} interventions per tick against {old_rate:.4}"
        );
        Some(("advance", why))
    } else {
        None
    };
    if let Some((action, why)) = verdict {
        let _ = act_on(root, name, action, &why, (reach < 100).then_some(old_rate));
    }
}

async fn rollout_status(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    let work = move || -> Result<serde_json::Value, (StatusCode, String)> {
        let r = read_rollout(&s.root, &name).map_err(|e| (StatusCode::NOT_FOUND, e))?;
        let reports: Vec<serde_json::Value> =
            all_reports(&s.root).into_iter().filter(|v| v["channel"] == name.as_str()).collect();
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
        Ok(serde_json::json!({ "rollout": r, "waves": waves }))
    };
    answer(StatusCode::OK, work).await
}

/// Stores `bytes` at `path` unless the stored document is newer: `order` compares the new
/// document with the stored one (None: no stored one).
fn store_document(
    s: &Shared,
    path: &Path,
    bytes: &[u8],
    order: impl FnOnce(Option<&[u8]>) -> Result<(), (StatusCode, String)>,
) -> Response {
    let _one = s.adding.lock().unwrap_or_else(|p| p.into_inner());
    let old = std::fs::read(path).ok();
    if old.as_deref() == Some(bytes) {
        return reply(StatusCode::OK, serde_json::json!({ "stored": false }));
    }
    if let Err((status, message)) = order(old.as_deref()) {
        return problem(status, message);
    }
    match crate::file::write_atomic(path, bytes) {
        Ok(()) => reply(StatusCode::CREATED, serde_json::json!({ "stored": true })),
        Err(e) => {
            tracing::error!("channels: {e}");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the fleet server could not store the document; its log says why",
            )
        }
    }
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

async fn put_keys(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let work = move || {
        let checked = envelope(&body).and_then(|e| {
            if let Some(root) = &s.channel_root {
                channel::read_root_signed(&e, root).map_err(unprocessable)?;
            }
            channel::read_keys(&e).map_err(unprocessable)
        });
        let new = match checked {
            Ok(k) => k,
            Err((status, message)) => return problem(status, message),
        };
        store_document(&s, &keys_path(&s.root), &body, |old| {
            let Some(old) = old else { return Ok(()) };
            let old = envelope(old).and_then(|e| channel::read_keys(&e).map_err(unprocessable))?;
            if new.version <= old.version {
                return Err((
                    StatusCode::CONFLICT,
                    format!(
                        "the stored key list has version {}; publish a new one under a higher version",
                        old.version
                    ),
                ));
            }
            Ok(())
        })
    };
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn put_channel(
    State(s): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    if !crate::skill::manifest::valid_name(&name) {
        return problem(StatusCode::BAD_REQUEST, format!("{name:?} is not a channel name"));
    }
    let work = move || {
        let keys = match stored_keys(&s.root) {
            Ok(k) => k,
            Err((status, message)) => return problem(status, message),
        };
        let now = std::time::SystemTime::now();
        let new = match envelope(&body).and_then(|e| channel::read_index(&keys, &e, &name, now).map_err(unprocessable))
        {
            Ok(i) => i,
            Err((status, message)) => return problem(status, message),
        };
        store_document(&s, &channel_path(&s.root, &name), &body, |old| {
            let Some(old) = old else { return Ok(()) };
            let old: channel::Index = envelope(old).and_then(|e| {
                serde_json::from_str(&e.payload).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
            })?;
            if new.serial <= old.serial {
                return Err((
                    StatusCode::CONFLICT,
                    format!("channel `{name}` has serial {}; publish changes under a higher serial", old.serial),
                ));
            }
            Ok(())
        })
    };
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
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
    report["received"] = serde_json::json!(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
    let path = s.root.join("reports").join(format!("{robot}.json"));
    let bytes = serde_json::to_vec_pretty(&report).expect("serialises");
    let channel = report["channel"].as_str().filter(|c| crate::skill::manifest::valid_name(c)).map(str::to_string);
    let work = move || {
        crate::file::write_atomic(&path, &bytes)?;
        // Each report may be the one that moves a rollout that advances by itself.
        if let Some(c) = channel {
            let _one = s.adding.lock().unwrap_or_else(|p| p.into_inner());
            judge_rollout(&s.root, &c);
        }
        Ok::<(), FileError>(())
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => reply(StatusCode::OK, serde_json::json!({ "stored": true })),
        _ => {
            problem(StatusCode::INTERNAL_SERVER_ERROR, "the fleet server could not store the report; its log says why")
        }
    }
}

async fn reports(State(s): State<Arc<Shared>>) -> Response {
    let root = s.root.clone();
    let work = move || {
        let mut out = all_reports(&root);
        out.sort_by(|a, b| a["robot"].as_str().cmp(&b["robot"].as_str()));
        out
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(list) => reply(StatusCode::OK, serde_json::json!({ "reports": list })),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn robots(State(s): State<Arc<Shared>>) -> Response {
    let path = s.root.join("robots.toml");
    if !path.exists() {
        return reply(StatusCode::OK, serde_json::json!({ "robots": [] }));
    }
    match Robots::load(&path) {
        Ok(r) => reply(
            StatusCode::OK,
            serde_json::json!({ "robots": r.robots.iter().map(|r| serde_json::json!({"name": r.name, "url": r.url})).collect::<Vec<_>>() }),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
    let path = s.root.join(".incoming").join(format!("upload-{n}.skill"));
    let bytes = match spool(&headers, body, &path, s.limits.max_bytes, &s.http).await {
        Ok(b) => b,
        Err(e) => {
            let (r, reason) = e.reply();
            tracing::warn!(reason, "catalog upload refused: {e}");
            return r;
        }
    };
    let s2 = s.clone();
    let p2 = path.clone();
    let outcome = tokio::task::spawn_blocking(move || add(&s2, &p2, bytes, n)).await;
    let _ = tokio::fs::remove_file(&path).await;
    match outcome {
        Ok(Ok((entry, created))) => {
            tracing::info!(skill = %entry.name, version = %entry.version, signer = %entry.signer, "bundle added to the catalog");
            reply(
                if created { StatusCode::CREATED } else { StatusCode::OK },
                serde_json::to_value(&entry).unwrap_or_default(),
            )
        }
        Ok(Err((status, message))) => {
            let message = redact(&message, &s.root);
            tracing::warn!("catalog upload refused: {message}");
            problem(status, message)
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Verifies the spooled bundle (in a worker process) and moves it into the catalog; `false` when
/// the same bundle was already there. The check and the move hold one lock, and every rename is
/// followed by a sync of its folder, so a power cut leaves an entry whole or absent.
fn add(s: &Shared, path: &Path, bytes: u64, n: u64) -> Result<(CatalogEntry, bool), (StatusCode, String)> {
    let _one = s.adding.lock().unwrap_or_else(|p| p.into_inner());
    let scratch = s.root.join(".incoming").join(format!("unpack-{n}"));
    let verified = s
        .sandbox
        .unpack(path, &s.trusted, &scratch, s.limits)
        .and_then(|v| crate::skill::read_manifest(&v.dir).map(|m| (v, m)).map_err(bundle::BundleError::Skill));
    let _ = std::fs::remove_dir_all(&scratch);
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
        added: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        provenance: manifest.provenance,
    };
    let target = bundle_path(&s.root, &c.name, &c.version);
    let meta = target.with_extension("json");
    let internal = |e: std::io::Error| {
        tracing::error!("catalog: {e}");
        (StatusCode::INTERNAL_SERVER_ERROR, "the fleet server could not store the bundle; its log says why".to_string())
    };
    if let Ok(text) = std::fs::read(&meta)
        && let Ok(old) = serde_json::from_slice::<CatalogEntry>(&text)
    {
        return if old.digest == entry.digest {
            Ok((old, false))
        } else {
            Err((
                StatusCode::CONFLICT,
                format!(
                    "{} {} is already in the catalog with another digest ({}); bump the version",
                    c.name, c.version, old.digest
                ),
            ))
        };
    }
    let folder = target.parent().expect("a folder");
    let new_folder = !folder.exists();
    std::fs::create_dir_all(folder).map_err(internal)?;
    let sync = |dir: &Path| std::fs::File::open(dir).and_then(|f| f.sync_all());
    if new_folder {
        sync(&s.root.join("catalog")).map_err(internal)?;
    }
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(internal)?;
    std::fs::rename(path, &target).map_err(internal)?;
    sync(folder).map_err(internal)?;
    let part = meta.with_extension("json.part");
    std::fs::write(&part, serde_json::to_vec_pretty(&entry).expect("serialises")).map_err(internal)?;
    std::fs::File::open(&part).and_then(|f| f.sync_all()).map_err(internal)?;
    std::fs::rename(&part, &meta).map_err(internal)?;
    sync(folder).map_err(internal)?;
    Ok((entry, true))
}
