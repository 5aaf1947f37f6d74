//! The robot's inbox: an HTTP server (in the node, or on its own with `skillgraft inbox`) that
//! takes signed bundles into the skill store and, when a bundle or an activated version is of
//! the skill the node runs, swaps it in between two ticks (blend-in applies).
//!
//! ```text
//! GET  /health                    {"status": "ok", "running": ..., counters}
//! GET  /skills                    {"running": {...} | null, "installed": [store entries]}
//! POST /skills                    body: a .skill bundle; 201 {"installed": entry, "swapped": bool, ...}
//! POST /skills/{name}/activate    body: {"version": "1.2.0"}
//! POST /skills/{name}/rollback    back to the version active before
//! ```
//!
//! Every request needs a bearer token (see `auth`), checked before any body is read. Bundles are
//! unpacked and checked in a worker process under its own limits (`skill::sandbox`), so no bundle
//! can take the node's control loop down. Connections, request heads, uploads (how many at once,
//! how slow) and whole requests are limited (`http::HttpLimits`). A refused request changes
//! nothing, and replies never name the robot's files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use ed25519_dalek::VerifyingKey;

use super::FleetError;
use super::auth::Tokens;
use super::http::{HttpLimits, caller, problem, redact, reply, small_body, spool, unauthorized, within};
use crate::file::FileError;
use crate::skill::bundle::{self, BundleError, Limits};
use crate::skill::sandbox::Sandbox;
use crate::skill::store::{Store, StoreError};
use crate::skill::{Manifest, Skill};

/// Default address: loopback only, so a robot is reachable from elsewhere only when its
/// operator says so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8740";

/// What an inbox allows its clients, and the memory of its bundle check worker.
#[derive(Debug, Clone, Default)]
pub struct InboxLimits {
    /// Connections, request deadlines, uploads.
    pub http: HttpLimits,
    /// The worker's memory cap, MiB (None: `sandbox::default_memory_mib` of the bundle limit).
    pub worker_mib: Option<u64>,
}

/// What the inbox is configured with, as paths (the node's parameters, or `skillgraft inbox`).
#[derive(Debug, Clone, PartialEq)]
pub struct InboxSettings {
    /// Address to listen on.
    pub listen: String,
    /// The skill store folder.
    pub store: PathBuf,
    /// Public keys (.pub) whose bundles are trusted.
    pub trust: Vec<PathBuf>,
    /// File of accepted bearer tokens.
    pub tokens: PathBuf,
    /// Largest bundle, and largest unpacked skill, in MiB.
    pub max_mib: u64,
}

/// What the inbox drives besides the store: the skill a node runs.
pub trait Runner: Send + Sync {
    /// Name and version of the running skill.
    fn running(&self) -> (String, String);
    /// Why a skill with this manifest could not replace the running one, if it could not.
    fn check(&self, manifest: &Manifest) -> Result<(), RunnerError>;
    /// Hands `skill` to the control loop, which swaps it in between two ticks.
    fn swap(&self, skill: Skill) -> Result<(), RunnerError>;
    /// The node's own counters since it started (ticks, safety-filter interventions by kind,
    /// actions published), for the fleet's health checks.
    fn health(&self) -> serde_json::Value;
}

/// Why the node would not take a skill the inbox offered it.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The skill does not fit the node (its topics, its action); the node's reason says what would.
    #[error(transparent)]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// The node runs a newer version and the bundle is no downgrade for this robot.
    #[error(
        "the node runs {0}, which is newer; a fleet that means it signs a downgrade for this robot (`bundle pack --downgrade --for ROBOT --expires-in 1d`)"
    )]
    Newer(semver::Version),
    /// The installed version does not load.
    #[error(transparent)]
    Load(#[from] crate::skill::SkillError),
    /// The control loop could not take it (it has stopped, say).
    #[error(transparent)]
    Swap(Box<dyn std::error::Error + Send + Sync>),
}

/// Counters of the inbox, also reported on `/diagnostics`.
#[derive(Debug, Default)]
pub struct InboxStats {
    /// Bundles installed.
    pub accepted: AtomicU64,
    /// Bundles refused, by reason.
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests without an accepted token.
    pub unauthorized: AtomicU64,
    /// Connections closed on arrival because the connection cap was reached.
    pub connections_refused: Arc<AtomicU64>,
    /// The last refusal, for people.
    pub last_rejection: Mutex<Option<String>>,
    /// The address the inbox listens on.
    pub address: Mutex<String>,
}

impl InboxStats {
    fn reject(&self, reason: &'static str, message: &str) {
        // Messages quote names from the bundle shortened already; this bounds everything else.
        let message = clipped(message, 2048);
        tracing::warn!(reason, "bundle rejected: {message}");
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
        *self.last_rejection.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    /// Bundles refused, all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }
}

impl crate::stats::Counted for InboxStats {
    fn values(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("inbox.address".to_string(), self.address.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            ("inbox.bundles_accepted".to_string(), self.accepted.load(Ordering::Relaxed).to_string()),
            ("inbox.bundles_rejected".to_string(), self.rejected_total().to_string()),
        ];
        for (reason, n) in self.rejected.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            v.push((format!("inbox.bundles_rejected.{reason}"), n.to_string()));
        }
        v.push(("inbox.unauthorized_requests".to_string(), self.unauthorized.load(Ordering::Relaxed).to_string()));
        v.push(("inbox.connections_refused".to_string(), self.connections_refused.load(Ordering::Relaxed).to_string()));
        if let Some(last) = self.last_rejection.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            v.push(("inbox.last_rejection".to_string(), last.clone()));
        }
        v
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), marked when cut.
pub(crate) fn clipped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

struct Shared {
    /// Held from a change's check through the store write to the swap, so the store and the
    /// running node never end up naming different versions when requests overlap.
    commit: Mutex<()>,
    /// Uploads received at once; more wait their turn a little and are then answered 503 (which
    /// `fleet push` retries), so stalled clients cannot fill the robot's disk.
    uploads: Arc<tokio::sync::Semaphore>,
    http: HttpLimits,
    store: Store,
    trusted: Vec<VerifyingKey>,
    tokens: Tokens,
    limits: Limits,
    runner: Option<Arc<dyn Runner>>,
    stats: Arc<InboxStats>,
}

/// A running inbox.
pub struct Inbox {
    addr: SocketAddr,
    stats: Arc<InboxStats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Inbox {
    /// Reads the keys and tokens, opens the store, binds the address and serves on a thread of
    /// its own, with the default limits. Installs run in worker processes, never in this one.
    pub fn start(settings: &InboxSettings, runner: Option<Arc<dyn Runner>>) -> Result<Inbox, FleetError> {
        Inbox::start_with(settings, &InboxLimits::default(), runner)
    }

    /// As [`Inbox::start`], under `limits`.
    pub fn start_with(
        settings: &InboxSettings,
        limits: &InboxLimits,
        runner: Option<Arc<dyn Runner>>,
    ) -> Result<Inbox, FleetError> {
        if settings.trust.is_empty() {
            return Err(FleetError::Config(
                "the inbox trusts no key, so it could install nothing; give the fleet's public key (.pub)".into(),
            ));
        }
        let trusted = bundle::read_trusted(&settings.trust).map_err(|e| FleetError::Config(e.to_string()))?;
        let tokens = Tokens::load(&settings.tokens)?;
        let mut sandbox = Sandbox::current(settings.max_mib).map_err(|e| FleetError::Config(e.to_string()))?;
        if let Some(mib) = limits.worker_mib {
            sandbox.memory_mib = mib;
        }
        let store = Store::open(&settings.store).map_err(|e| FleetError::Config(e.to_string()))?.sandboxed(sandbox);
        let listener = std::net::TcpListener::bind(&settings.listen)
            .map_err(|source| FleetError::Listen { addr: settings.listen.clone(), source })?;
        listener.set_nonblocking(true).map_err(FileError::at("configure", Path::new(&settings.listen)))?;
        let addr = listener.local_addr().map_err(FileError::at("configure", Path::new(&settings.listen)))?;
        let stats = Arc::new(InboxStats::default());
        *stats.address.lock().unwrap_or_else(|p| p.into_inner()) = addr.to_string();
        let shared = Arc::new(Shared {
            commit: Mutex::new(()),
            uploads: Arc::new(tokio::sync::Semaphore::new(limits.http.uploads.max(1))),
            http: limits.http,
            store,
            trusted,
            tokens,
            limits: Limits::mib(settings.max_mib),
            runner,
            stats: stats.clone(),
        });
        let app = axum::Router::new()
            .route("/health", get(health))
            .route("/skills", get(list).post(install))
            .route("/skills/{name}/activate", post(activate))
            .route("/skills/{name}/rollback", post(rollback))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), authorize))
            .with_state(shared);
        let (http, refused) = (limits.http, stats.connections_refused.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let rt = super::http::runtime(1).map_err(FileError::at("start the runtime of", Path::new(&settings.listen)))?;
        std::thread::Builder::new()
            .name("skillgraft-inbox".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!("inbox: {e}"),
                    };
                    super::http::serve(listener, app, http, refused, async {
                        let _ = rx.await;
                    })
                    .await;
                });
                let _ = done_tx.send(());
            })
            .map_err(FileError::at("start a thread for", Path::new(&settings.listen)))?;
        tracing::info!(address = %addr, store = %settings.store.display(), "inbox listening");
        Ok(Inbox { addr, stats, shutdown: Some(tx), done })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<InboxStats> {
        self.stats.clone()
    }

    /// Stops taking requests; waits a little for those in flight.
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.done.recv_timeout(std::time::Duration::from_secs(3));
    }
}

fn running_json(s: &Shared) -> serde_json::Value {
    match &s.runner {
        Some(r) => {
            let (name, version) = r.running();
            serde_json::json!({ "name": name, "version": version })
        }
        None => serde_json::Value::Null,
    }
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    reply(
        StatusCode::OK,
        serde_json::json!({
            "status": "ok",
            "running": running_json(&s),
            "node": s.runner.as_ref().map(|r| r.health()),
            "bundles_accepted": s.stats.accepted.load(Ordering::Relaxed),
            "bundles_rejected": s.stats.rejected_total(),
            "bundles_rejected_by_reason": s.stats.rejected.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "unauthorized_requests": s.stats.unauthorized.load(Ordering::Relaxed),
            "connections_refused": s.stats.connections_refused.load(Ordering::Relaxed),
        }),
    )
}

/// Every request, before its handler reads anything of its body: a 401 (counted and logged)
/// unless it carries an accepted token; then the request-wide deadline for all but uploads.
async fn authorize(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if caller(&s.tokens, req.headers()).is_none() {
        s.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("inbox: request without an accepted token refused");
        return unauthorized(req.headers());
    }
    if req.method() == Method::POST && req.uri().path() == "/skills" {
        next.run(req).await
    } else {
        within(s.http.request_timeout, next.run(req)).await
    }
}

async fn list(State(s): State<Arc<Shared>>) -> Response {
    let s2 = s.clone();
    match tokio::task::spawn_blocking(move || s2.store.list()).await {
        Ok(Ok(entries)) => {
            reply(StatusCode::OK, serde_json::json!({ "running": running_json(&s), "installed": entries }))
        }
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A store error as a refusal: the reply's status, the reason it is counted under, the message.
/// A refused bundle is described without the scratch path it was spooled to, and a failure of
/// the robot's own disk without its paths (the log has them).
fn refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::Bundle(BundleError::Rejected { problem, .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid", problem)
        }
        StoreError::Bundle(e @ (BundleError::File(_) | BundleError::Key { .. } | BundleError::Skill(_))) => {
            tracing::error!("inbox: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "io", "the robot could not store the bundle; its log says why".into())
        }
        StoreError::File(_) => {
            tracing::error!("inbox: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "io", "the robot could not store the bundle; its log says why".into())
        }
        StoreError::Refused(m) => (StatusCode::CONFLICT, "refused", m),
    }
}

async fn install(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let turn = match tokio::time::timeout(s.http.queue, s.uploads.clone().acquire_owned()).await {
        Ok(Ok(turn)) => turn,
        _ => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} uploads are in progress; try again shortly", s.http.uploads),
            );
        }
    };
    // A task of its own: when the client goes away mid-upload, hyper drops this handler, but the
    // upload still ends (as truncated), is counted and its scratch file removed.
    let work = tokio::spawn(async move {
        let r = receive(s, headers, body).await;
        drop(turn);
        r
    });
    work.await.unwrap_or_else(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn receive(s: Arc<Shared>, headers: HeaderMap, body: Body) -> Response {
    let upload_started = Instant::now();
    let path = s.store.scratch("upload.skill");
    let bytes = match spool(&headers, body, &path, s.limits.max_bytes, &s.http).await {
        Ok(n) => n,
        Err(e) => {
            let (r, reason) = e.reply();
            s.stats.reject(reason, &format!("upload refused: {e}"));
            return r;
        }
    };
    let upload_ms = upload_started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let s2 = s.clone();
    let p2 = path.clone();
    let outcome = tokio::task::spawn_blocking(move || install_blocking(&s2, &p2)).await;
    let _ = tokio::fs::remove_file(&path).await;
    let install_ms = started.elapsed().as_secs_f64() * 1e3;
    match outcome {
        Ok(Ok((entry, swapped))) => {
            s.stats.accepted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(skill = %entry.name, version = %entry.state.active, swapped, "bundle installed");
            reply(
                StatusCode::CREATED,
                serde_json::json!({
                    "installed": entry, "swapped": swapped, "running": running_json(&s),
                    "bytes": bytes, "upload_ms": upload_ms, "install_ms": install_ms,
                }),
            )
        }
        Ok(Err((status, reason, message))) => {
            let message = redact(&message, s.store.root());
            s.stats.reject(reason, &message);
            problem(status, message)
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

type Refusal = (StatusCode, &'static str, String);

/// After a change the node could not follow, the store is put back to `before`; the refusal
/// says both what failed and whether the store is back, so nobody is left guessing.
fn undo(s: &Shared, name: &str, before: Option<&crate::skill::store::State>, what: &str, e: RunnerError) -> Refusal {
    let message = match s.store.restore(name, before) {
        Ok(()) => format!("{what}, but the node could not swap it in: {e}; the store is back as it was"),
        Err(r) => {
            tracing::error!("inbox: the store could not be put back after a failed swap: {r}");
            format!(
                "{what}, but the node could not swap it in: {e}; and the store could not be put back ({r}): it names another version than the node runs until the next change"
            )
        }
    };
    (StatusCode::INTERNAL_SERVER_ERROR, "swap", message)
}

fn install_blocking(s: &Shared, path: &Path) -> Result<(crate::skill::store::Entry, bool), Refusal> {
    let _one = s.commit.lock().unwrap_or_else(|p| p.into_inner());
    let running = s.runner.as_ref().map(|r| (r.clone(), r.running()));
    let check = |manifest: &Manifest, downgrade: bool| match &running {
        Some((r, (name, version))) if manifest.name == *name => {
            r.check(manifest)?;
            // The node may run a version the store never had (the folder it was launched
            // with): the version rule holds against it too.
            match version.parse::<semver::Version>() {
                Ok(v) if manifest.version < v && !downgrade => Err(RunnerError::Newer(v).into()),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    };
    let name = bundle::peek(path).ok().map(|c| c.name).filter(|n| crate::skill::manifest::valid_name(n));
    let before = match &name {
        Some(n) => s.store.state(n).map_err(refusal)?,
        None => None,
    };
    let entry = s.store.install_checked(path, &s.trusted, s.limits, &check).map_err(refusal)?;
    let Some((runner, (name, _))) = running.filter(|(_, (n, _))| *n == entry.name) else { return Ok((entry, false)) };
    match swap(&*runner, &s.store, &name, &entry.state.active) {
        Ok(()) => Ok((entry, true)),
        Err(e) => Err(undo(s, &name, before.as_ref(), &format!("installed {name} {}", entry.state.active), e)),
    }
}

fn swap(runner: &dyn Runner, store: &Store, name: &str, version: &semver::Version) -> Result<(), RunnerError> {
    let skill = Skill::load(&store.dir(name, version))?;
    runner.swap(skill)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateRequest {
    version: semver::Version,
}

async fn activate(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>, body: Body) -> Response {
    let body = match small_body(body, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: ActivateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("the body must be {{\"version\": \"X.Y.Z\"}}: {e}")),
    };
    change(s, name, Some(req.version)).await
}

async fn rollback(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    change(s, name, None).await
}

/// Activates `version` of `name` (None: the previous one): the node checks the skill before the
/// store changes, so a version it cannot run is refused with the store untouched, and swaps to
/// it after.
async fn change(s: Arc<Shared>, name: String, version: Option<semver::Version>) -> Response {
    if !crate::skill::manifest::valid_name(&name) {
        return problem(StatusCode::BAD_REQUEST, format!("{name:?} is not a skill name"));
    }
    let s2 = s.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<_, Refusal> {
        let _one = s2.commit.lock().unwrap_or_else(|p| p.into_inner());
        let version = match version {
            Some(v) => v,
            None => s2.store.rollback_target(&name).map_err(refusal)?,
        };
        let dir = s2.store.dir(&name, &version);
        if !dir.is_dir() {
            return Err(refusal(StoreError::Refused(format!(
                "{name} {version} is not installed; install its bundle first"
            ))));
        }
        let runner = s2.runner.as_ref().filter(|r| r.running().0 == name);
        let skill = match runner {
            Some(r) => {
                let skill = Skill::load(&dir).map_err(|e| (StatusCode::CONFLICT, "refused", e.to_string()))?;
                r.check(&skill.manifest).map_err(|e| (StatusCode::CONFLICT, "refused", e.to_string()))?;
                Some(skill)
            }
            None => None,
        };
        let before = s2.store.state(&name).map_err(refusal)?;
        let entry = s2.store.activate(&name, &version).map_err(refusal)?;
        if let (Some(r), Some(skill)) = (runner, skill) {
            r.swap(skill).map_err(|e| undo(&s2, &name, before.as_ref(), &format!("activated {name} {version}"), e))?;
        }
        Ok(entry)
    })
    .await;
    match outcome {
        Ok(Ok(entry)) => {
            tracing::info!(skill = %entry.name, version = %entry.state.active, "skill version activated");
            reply(StatusCode::OK, serde_json::json!({ "installed": entry, "running": running_json(&s) }))
        }
        Ok(Err((status, _, message))) => {
            let message = redact(&message, s.store.root());
            tracing::warn!("activation refused: {message}");
            problem(status, message)
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose control thread refuses every swap (it has stopped, say).
    struct Stopped;

    impl Runner for Stopped {
        fn running(&self) -> (String, String) {
            ("example-arm6".into(), "0.0.1".into())
        }
        fn check(&self, _: &Manifest) -> Result<(), RunnerError> {
            Ok(())
        }
        fn swap(&self, _: Skill) -> Result<(), RunnerError> {
            Err(RunnerError::Swap("the control thread has stopped".into()))
        }
        fn health(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    #[test]
    fn an_install_the_node_cannot_swap_in_is_undone_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = bundle::new_key(&dir.path().join("fleet")).unwrap();
        let key = bundle::read_secret(&secret).unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6");
        let file = dir.path().join("b.skill");
        bundle::pack(&example, &key, &file, None).unwrap();
        let tokens = dir.path().join("tokens");
        super::super::auth::new_token(&tokens).unwrap();
        let shared = Shared {
            commit: Mutex::new(()),
            uploads: Arc::new(tokio::sync::Semaphore::new(1)),
            http: HttpLimits::default(),
            store: Store::open(&dir.path().join("store")).unwrap(),
            trusted: vec![key.verifying_key()],
            tokens: Tokens::load(&tokens).unwrap(),
            limits: Limits::default(),
            runner: Some(Arc::new(Stopped)),
            stats: Arc::default(),
        };
        let (status, reason, message) = install_blocking(&shared, &file).unwrap_err();
        assert_eq!((status, reason), (StatusCode::INTERNAL_SERVER_ERROR, "swap"));
        assert!(message.contains("installed example-arm6 0.1.0, but the node could not swap it in"), "{message}");
        assert!(message.contains("the store is back as it was"), "{message}");
        assert_eq!(shared.store.state("example-arm6").unwrap(), None);
        assert!(shared.store.list().unwrap().is_empty(), "the first install is removed");
    }
}
