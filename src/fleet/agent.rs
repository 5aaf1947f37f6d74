//! `skillgraft agent`: a robot that pulls. Each poll fetches the key list and the channel's
//! index from the fleet server with the ETags it has (an unchanged document costs a 304), checks
//! them against the pinned root key, their expiries and what it accepted before
//! ([`super::channel::verify`]), then brings the skill store to what the index says: a version
//! already installed is activated, another is downloaded (resuming a cut download where it
//! stopped, never reading past the size the index gives), checked against the index's SHA-256,
//! and installed, which checks the bundle's own signature and test-runs it. A refusal at any step
//! leaves the store, and so the running skill, as it was. Beside a running node, installs and
//! activations go through the node's inbox, which swaps the new version in between two ticks.
//!
//! ```text
//! STORE/.channel/keys.json, index.json   the documents last accepted (their ETags: SHA-256)
//! STORE/.channel/seen.json               the key-list version and serials accepted
//! STORE/.channel/downloads/*.part        downloads under way
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;

use super::FleetError;
use super::channel::{self, Envelope, Seen};
use super::client::{Client, Upload, join};
use super::push::Robot;
use crate::file::FileError;
use crate::skill::bundle::Limits;
use crate::skill::store::Store;

/// Largest key list or index a poll reads.
const MAX_DOCUMENT: usize = 1 << 20;

/// What a robot follows, and how it checks it.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The fleet server, `http://host:port`.
    pub fleet: String,
    /// The bearer token.
    pub token: String,
    /// The channel followed.
    pub channel: String,
    /// This robot's name (the store's identity): its place in a staged rollout, its reports.
    pub robot: String,
    /// The pinned root key.
    pub root: VerifyingKey,
    /// Keys whose bundles the store installs.
    pub trusted: Vec<VerifyingKey>,
    /// Largest bundle, and largest unpacked skill.
    pub limits: Limits,
    /// Seconds a request (a whole download) may take.
    pub timeout: Duration,
    /// The running node's inbox: installs and activations go through it, so the node swaps the
    /// new version in; None installs into the store directly (a node picks the active version
    /// up when it starts).
    pub inbox: Option<Robot>,
}

/// What one poll did to one skill.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Skill name.
    pub name: String,
    /// The version the index names.
    pub version: semver::Version,
    /// `unchanged`, `activated` (installed before) or `installed`.
    pub action: &'static str,
}

/// One poll's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Polled {
    /// The channel's serial.
    pub serial: u64,
    /// Whether either document changed since the last poll.
    pub fetched: bool,
    /// One per skill of the index.
    pub changes: Vec<Change>,
}

/// What a robot tells the fleet server after each poll (`PUT /reports/ROBOT`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The robot (the store's identity: its host name unless named).
    pub robot: String,
    /// The channel it follows.
    pub channel: String,
    /// When the poll ended, RFC 3339.
    pub time: String,
    /// The serial it accepted, when the poll did.
    pub serial: Option<u64>,
    /// Each installed skill and its active version.
    pub active: std::collections::BTreeMap<String, semver::Version>,
    /// Why the poll failed, when it did.
    pub error: Option<String>,
    /// The node's inbox health, when the agent works through it.
    pub node: Option<serde_json::Value>,
    /// What a staged rollout judges: the node's ticks and the interventions its skill caused
    /// since it started running the version it runs (from `node`).
    pub health: Option<Health>,
}

/// A robot's health under the version it runs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// Control ticks.
    pub ticks: u64,
    /// Safety-filter interventions the skill's actions caused (not stale inputs or the e-stop).
    pub interventions: u64,
    /// Ticks with an input older than the skill's manifest allows (0 from a node that does not
    /// count them apart).
    #[serde(default)]
    pub stale_inputs: u64,
}

/// Reports the outcome of a poll to the fleet server.
pub async fn report(
    client: &Client,
    s: &AgentSettings,
    store: &Store,
    polled: &Result<Polled, FleetError>,
) -> Result<(), FleetError> {
    let config = |e: &dyn std::fmt::Display| FleetError::Config(e.to_string());
    let active = store.list().map_err(|e| config(&e))?.into_iter().map(|e| (e.name, e.state.active)).collect();
    let node = match &s.inbox {
        Some(inbox) => {
            super::push::ask(inbox, hyper::Method::GET, "/health", Upload::Empty, s.timeout).await.ok().map(|r| r.body)
        }
        None => None,
    };
    let r = Report {
        robot: s.robot.clone(),
        channel: s.channel.clone(),
        time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        serial: polled.as_ref().ok().map(|p| p.serial),
        active,
        error: polled.as_ref().err().map(|e| e.to_string()),
        health: node.as_ref().and_then(|n| serde_json::from_value(n["node"]["since_swap"].clone()).ok()),
        node,
    };
    let uri = join(&s.fleet, &format!("/reports/{}", s.robot)).map_err(|e| config(&e))?;
    let body = Upload::Json(serde_json::to_value(&r).expect("serialises"));
    let answer = client
        .request(hyper::Method::PUT, uri, &s.token, &body, s.timeout)
        .await
        .map_err(|e| FleetError::Remote(format!("{}: the report: {e}", s.fleet)))?;
    if !answer.status.is_success() {
        return Err(FleetError::Refused { status: answer.status.as_u16(), message: answer.error() });
    }
    Ok(())
}

fn channel_dir(store: &Path) -> PathBuf {
    store.join(".channel")
}

/// The server's ETag of a document: its SHA-256, quoted.
fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", channel::digest(bytes).trim_start_matches("sha256:"))
}

/// Fetches `path`, or keeps `cached` when the server says it has not changed.
async fn fetch(
    client: &Client,
    s: &AgentSettings,
    path: &str,
    cached: Option<Vec<u8>>,
) -> Result<(Vec<u8>, bool), FleetError> {
    let tag = cached.as_deref().map(etag);
    let got = client
        .fetch(
            join(&s.fleet, path).map_err(|e| FleetError::Config(e.to_string()))?,
            &s.token,
            tag.as_deref(),
            MAX_DOCUMENT,
            s.timeout,
        )
        .await
        .map_err(|e| FleetError::Remote(format!("{}{path}: {e}", s.fleet)))?;
    match (got.status.as_u16(), cached) {
        (304, Some(old)) => Ok((old, false)),
        (200, _) => Ok((got.body.to_vec(), true)),
        (status, _) => Err(FleetError::Remote(format!(
            "{}{path} answered {status}: {}",
            s.fleet,
            String::from_utf8_lossy(&got.body).trim()
        ))),
    }
}

fn envelope(bytes: &[u8], what: &str) -> Result<Envelope, FleetError> {
    serde_json::from_slice(bytes)
        .map_err(|e| FleetError::Remote(format!("the server's {what} is not a signed document: {e}")))
}

fn read_cached(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// How often a robot polls, and reports a poll that changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    /// Between polls, moved by up to ±20 % so a fleet does not poll in step.
    pub poll: Duration,
    /// An unchanged poll is reported again after this (each report is a write to the fleet's
    /// store); zero reports every poll.
    pub report: Duration,
}

/// Follows the channel until `stop` fires (or its sender is gone) or `seen` says no more: each
/// round polls ([`poll`]), reports a changed outcome at once and an unchanged one every
/// `every.report`, hands the outcome to `seen`, then waits `every.poll`. A stop also ends a poll
/// or report under way: a download left part-way resumes at the next start, and an install cut
/// off is refused whole by the inbox.
pub fn follow(
    s: &AgentSettings,
    store: &Store,
    every: Every,
    stop: std::sync::mpsc::Receiver<()>,
    mut seen: impl FnMut(&Result<Polled, FleetError>) -> bool,
) -> Result<(), FleetError> {
    let rt = super::http::runtime(1).map_err(|e| FleetError::Config(format!("no runtime for the agent: {e}")))?;
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    std::thread::Builder::new()
        .name("agent-stop".into())
        .spawn(move || {
            let _ = stop.recv();
            let _ = cancel.send(true);
        })
        .map_err(|e| FleetError::Config(format!("cannot start the agent's stop thread: {e}")))?;
    let client = Client::new(Duration::from_secs(5));
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut rng = crate::rng::SplitMix(std::process::id() as u64 ^ nanos);
    // What the last report said, and when it went: an unchanged poll is reported again only
    // after `every.report`, since each report is a write to the fleet's store.
    let mut reported: Option<(String, std::time::Instant)> = None;
    loop {
        let Some(polled) = unless_stopped(&rt, &cancelled, poll(&client, s, store)) else { return Ok(()) };
        let outcome = match &polled {
            Ok(p) => format!("serial {}", p.serial),
            Err(e) => e.to_string(),
        };
        let due = reported.as_ref().is_none_or(|(last, at)| *last != outcome || at.elapsed() >= every.report)
            || polled.as_ref().is_ok_and(|p| p.changes.iter().any(|c| c.action != "unchanged"));
        if due {
            match unless_stopped(&rt, &cancelled, report(&client, s, store, &polled)) {
                None => return Ok(()),
                Some(Ok(())) => reported = Some((outcome, std::time::Instant::now())),
                Some(Err(e)) => tracing::warn!("the report did not reach the fleet server: {e}"),
            }
        }
        if !seen(&polled) {
            return Ok(());
        }
        let wait = every.poll.mul_f64(0.8 + 0.4 * rng.unit());
        // The timer is made inside the runtime, which it needs.
        if unless_stopped(&rt, &cancelled, async move { tokio::time::sleep(wait).await }).is_none() {
            return Ok(());
        }
    }
}

/// Runs `work` on `rt` unless a stop comes first (None).
fn unless_stopped<T>(
    rt: &tokio::runtime::Runtime,
    cancelled: &tokio::sync::watch::Receiver<bool>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut cancelled = cancelled.clone();
    rt.block_on(async move {
        tokio::select! {
            out = work => Some(out),
            _ = cancelled.wait_for(|c| *c) => None,
        }
    })
}

/// One poll: fetch, verify, and bring `store` to what the channel's index says.
pub async fn poll(client: &Client, s: &AgentSettings, store: &Store) -> Result<Polled, FleetError> {
    let dir = channel_dir(store.root());
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(FileError::at("create", &downloads))?;
    let (keys_file, index_file, seen_file) = (dir.join("keys.json"), dir.join("index.json"), dir.join("seen.json"));
    let (keys, keys_new) = fetch(client, s, "/keys", read_cached(&keys_file)).await?;
    // The robot's name places it in a staged rollout's waves.
    let path = format!("/channels/{}?robot={}", s.channel, s.robot);
    let (index, index_new) = fetch(client, s, &path, read_cached(&index_file)).await?;
    let seen = Seen::load(&seen_file)?;
    // Checked on every poll, unchanged or not: an index held back past its expiry is refused.
    let accepted = channel::verify(
        &s.root,
        &envelope(&keys, "key list")?,
        &envelope(&index, "channel index")?,
        &s.channel,
        &seen,
        SystemTime::now(),
    )
    .map_err(|e| FleetError::Remote(format!("refused: {e}; the store is unchanged")))?;
    crate::file::write_atomic(&keys_file, &keys)?;
    crate::file::write_atomic(&index_file, &index)?;
    accepted.seen.save(&seen_file)?;
    let mut changes = Vec::new();
    for e in &accepted.index.skills {
        let state = store.state(&e.name).map_err(|e| FleetError::Config(e.to_string()))?;
        let installed = store.dir(&e.name, &e.version).exists();
        let action = match state {
            Some(st) if st.active == e.version && installed => "unchanged",
            _ if installed => {
                match &s.inbox {
                    Some(robot) => {
                        super::push::change(robot, &e.name, Some(&e.version), s.timeout).await?;
                    }
                    None => {
                        store.activate(&e.name, &e.version).map_err(|x| FleetError::Config(x.to_string()))?;
                    }
                }
                "activated"
            }
            _ => {
                install(client, s, store, &downloads, e).await?;
                "installed"
            }
        };
        changes.push(Change { name: e.name.clone(), version: e.version.clone(), action });
    }
    Ok(Polled { serial: accepted.index.serial, fetched: keys_new || index_new, changes })
}

/// Downloads (or resumes) the bundle of `e`, checks its digest and installs it.
async fn install(
    client: &Client,
    s: &AgentSettings,
    store: &Store,
    downloads: &Path,
    e: &channel::Entry,
) -> Result<(), FleetError> {
    if e.bytes > s.limits.max_bytes {
        return Err(FleetError::Remote(format!(
            "{} {} is {} bytes, over this robot's limit of {} MiB",
            e.name,
            e.version,
            e.bytes,
            s.limits.max_bytes >> 20
        )));
    }
    let part = downloads.join(format!("{}-{}.part", e.name, e.version));
    let uri =
        join(&s.fleet, &format!("/catalog/{}/{}", e.name, e.version)).map_err(|x| FleetError::Config(x.to_string()))?;
    if let Some(status) = client.resume(uri, &s.token, &part, e.bytes, s.timeout).await.map_err(|x| {
        FleetError::Remote(format!("download of {} {}: {x}; the next poll resumes it", e.name, e.version))
    })? {
        return Err(FleetError::Remote(format!("download of {} {}: the server answered {status}", e.name, e.version)));
    }
    let bytes = std::fs::read(&part).map_err(FileError::at("read", &part))?;
    let got = channel::digest(&bytes);
    if bytes.len() as u64 != e.bytes || got != e.digest {
        // Not what the index vouches for: a fresh download next time, nothing installed.
        let _ = std::fs::remove_file(&part);
        return Err(FleetError::Remote(format!(
            "the bundle of {} {} is {} bytes with {got}, but the signed index says {} bytes with {}; it was discarded",
            e.name,
            e.version,
            bytes.len(),
            e.bytes,
            e.digest
        )));
    }
    let result = match &s.inbox {
        Some(robot) => {
            let r =
                super::push::ask(robot, hyper::Method::POST, "/skills", Upload::File(part.clone()), s.timeout).await;
            match r {
                Ok(r) if r.status.is_success() => Ok(()),
                Ok(r) => Err(FleetError::Refused { status: r.status.as_u16(), message: r.error() }),
                Err(e) => Err(e),
            }
        }
        None => store.install(&part, &s.trusted, s.limits).map(|_| ()).map_err(|x| FleetError::Config(x.to_string())),
    };
    let _ = std::fs::remove_file(&part);
    result
}
