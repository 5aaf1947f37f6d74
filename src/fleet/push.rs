//! `fleet push`, `fleet upload` and `fleet status`: the fleet side of moving skills. A push
//! streams one bundle file to many robot inboxes at once (memory does not grow with the bundle
//! or the fleet), retries what may succeed on a second try, and reports each robot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::client::{Client, ClientError, Reply, Upload, beside, join};
use super::server::CatalogEntry;
use super::{FleetError, auth};
use crate::file::FileError;
use crate::skill::bundle;
use crate::skill::store::Entry;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotsFile {
    #[serde(rename = "robot", default)]
    robots: Vec<RobotLine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotLine {
    name: String,
    url: String,
    token_file: PathBuf,
}

/// One robot of the registry.
#[derive(Debug, Clone)]
pub struct Robot {
    /// Its name.
    pub name: String,
    /// Its inbox, `http://host:port`.
    pub url: String,
    /// The token its inbox accepts.
    pub token: String,
}

/// The robot registry: a TOML file of `[[robot]]` tables (`name`, `url`, `token_file`,
/// relative to the file).
#[derive(Debug, Clone)]
pub struct Robots {
    /// The robots, in file order.
    pub robots: Vec<Robot>,
}

impl Robots {
    /// Reads and checks a registry file, and each robot's token.
    pub fn load(path: &Path) -> Result<Robots, FleetError> {
        let text = std::fs::read_to_string(path).map_err(FileError::at("read", path))?;
        let file: RobotsFile = toml::from_str(&text).map_err(|e| {
            FleetError::Config(format!(
                "{}: {e}; each robot is a [[robot]] table with name, url and token_file",
                path.display()
            ))
        })?;
        if file.robots.is_empty() {
            return Err(FleetError::Config(format!("{} lists no [[robot]]", path.display())));
        }
        let mut robots = Vec::new();
        for r in file.robots {
            if robots.iter().any(|o: &Robot| o.name == r.name) {
                return Err(FleetError::Config(format!("{}: robot {:?} is listed twice", path.display(), r.name)));
            }
            join(&r.url, "/").map_err(|e| FleetError::Config(format!("{}: robot {}: {e}", path.display(), r.name)))?;
            let token = auth::read_token(&beside(path, &r.token_file))?;
            robots.push(Robot { name: r.name, url: r.url, token });
        }
        Ok(Robots { robots })
    }
}

/// The robots a registry's text lists, by name and inbox URL (its tokens are not read: the
/// fleet server lists robots, `fleet push` is what reaches them).
pub fn listed(text: &str) -> Result<Vec<(String, String)>, String> {
    let file: RobotsFile = toml::from_str(text)
        .map_err(|e| format!("robots.toml: {e}; each robot is a [[robot]] table with name, url and token_file"))?;
    Ok(file.robots.into_iter().map(|r| (r.name, r.url)).collect())
}

/// How a push behaves.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Longest a whole request (upload and install) may take.
    pub timeout: Duration,
    /// Longest a connection may take to open.
    pub connect_timeout: Duration,
    /// Further tries after a failure that may pass on another try.
    pub retries: u32,
    /// Robots pushed to at once.
    pub parallel: usize,
}

/// What became of the push to one robot.
#[derive(Debug, Clone, Serialize)]
pub struct PushResult {
    /// The robot.
    pub robot: String,
    /// Its inbox.
    pub url: String,
    /// Whether the bundle is installed and active there.
    pub ok: bool,
    /// The last HTTP status, if any answer came.
    pub status: Option<u16>,
    /// What happened, for people.
    pub outcome: String,
    /// Whether the running node swapped to it.
    pub swapped: bool,
    /// Tries made.
    pub attempts: u32,
    /// Seconds from the first try to the result.
    pub seconds: f64,
    /// The robot's own install time (verify, smoke test, commit, swap), ms.
    pub install_ms: Option<f64>,
}

/// Whether a failure may pass on another try: no answer, or a server that is overloaded or
/// restarting. A refusal (4xx) is final.
fn retryable(r: &Result<Reply, ClientError>) -> bool {
    match r {
        Err(ClientError::Transport(_) | ClientError::Timeout(_)) => true,
        Err(_) => false,
        Ok(reply) => matches!(
            reply.status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
    }
}

/// Pushes `bundle` to every robot, `opts.parallel` at a time; one result per robot, in order.
pub async fn push(bundle_path: &Path, robots: &Robots, opts: &PushOptions) -> Result<Vec<PushResult>, FleetError> {
    let contents = bundle::peek(bundle_path).map_err(|e| FleetError::Config(e.to_string()))?;
    let client = Client::new(opts.connect_timeout);
    let gate = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, robot) in robots.robots.iter().cloned().enumerate() {
        let (client, gate, opts, path) = (client.clone(), gate.clone(), opts.clone(), bundle_path.to_path_buf());
        let (name, version) = (contents.name.clone(), contents.version.clone());
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await;
            (i, push_one(&client, &robot, &path, &name, &version, &opts).await)
        });
    }
    let mut out: Vec<Option<PushResult>> = vec![None; robots.robots.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.map_err(|e| FleetError::Remote(format!("a push task failed: {e}")))?;
        out[i] = Some(r);
    }
    Ok(out.into_iter().map(|r| r.expect("every robot answered")).collect())
}

async fn push_one(
    client: &Client,
    robot: &Robot,
    bundle: &Path,
    name: &str,
    version: &semver::Version,
    opts: &PushOptions,
) -> PushResult {
    let started = Instant::now();
    let mut result = PushResult {
        robot: robot.name.clone(),
        url: robot.url.clone(),
        ok: false,
        status: None,
        outcome: String::new(),
        swapped: false,
        attempts: 0,
        seconds: 0.0,
        install_ms: None,
    };
    let uri = match join(&robot.url, "/skills") {
        Ok(u) => u,
        Err(e) => {
            result.outcome = e.to_string();
            return result;
        }
    };
    loop {
        result.attempts += 1;
        let r =
            client.request(Method::POST, uri.clone(), &robot.token, &Upload::File(bundle.into()), opts.timeout).await;
        let again = retryable(&r) && result.attempts <= opts.retries;
        match &r {
            Ok(reply) => {
                result.status = Some(reply.status.as_u16());
                if reply.status == StatusCode::CREATED {
                    result.ok = true;
                    result.swapped = reply.body["swapped"].as_bool().unwrap_or(false);
                    result.install_ms = reply.body["install_ms"].as_f64();
                    result.outcome = format!("installed {name} {version}");
                } else if reply.status == StatusCode::CONFLICT
                    && active_version(client, robot, name, opts).await.as_ref() == Some(version)
                {
                    // Pushing again is harmless: the robot already runs it (an earlier push, or an
                    // earlier try whose answer was lost).
                    result.ok = true;
                    result.outcome = format!("already active: {name} {version}");
                } else {
                    result.outcome = format!("refused ({}): {}", reply.status.as_u16(), reply.error());
                }
            }
            Err(e) => result.outcome = format!("unreachable: {e}"),
        }
        if !again {
            break;
        }
        let wait = Duration::from_millis(500u64 << (result.attempts - 1).min(4));
        tracing::info!(robot = %robot.name, "push failed ({}); trying again in {wait:?}", result.outcome);
        tokio::time::sleep(wait).await;
    }
    result.seconds = started.elapsed().as_secs_f64();
    result
}

async fn active_version(client: &Client, robot: &Robot, name: &str, opts: &PushOptions) -> Option<semver::Version> {
    let r = client
        .request(Method::GET, join(&robot.url, "/skills").ok()?, &robot.token, &Upload::Empty, opts.timeout)
        .await
        .ok()?;
    r.body["installed"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["state"]["active"].as_str())
        .and_then(|v| v.parse().ok())
}

/// One robot's state, as `fleet status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RobotStatus {
    /// The robot.
    pub robot: String,
    /// Its inbox.
    pub url: String,
    /// Whether it answered.
    pub reachable: bool,
    /// The skill its node runs (`name version`), if a node runs.
    pub running: Option<String>,
    /// Installed skills: `name active (previous)`.
    pub installed: Vec<String>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// Asks every robot what it has and runs.
pub async fn status(robots: &Robots, timeout: Duration) -> Vec<RobotStatus> {
    let client = Client::new(timeout);
    let asks = robots.robots.iter().map(|robot| {
        let client = client.clone();
        async move {
            let mut s = RobotStatus {
                robot: robot.name.clone(),
                url: robot.url.clone(),
                reachable: false,
                running: None,
                installed: vec![],
                error: None,
            };
            let r = match join(&robot.url, "/skills") {
                Ok(uri) => client.request(Method::GET, uri, &robot.token, &Upload::Empty, timeout).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(reply) if reply.status == StatusCode::OK => {
                    s.reachable = true;
                    let b = &reply.body;
                    if let (Some(n), Some(v)) = (b["running"]["name"].as_str(), b["running"]["version"].as_str()) {
                        s.running = Some(format!("{n} {v}"));
                    }
                    for e in b["installed"].as_array().into_iter().flatten() {
                        let prev =
                            e["state"]["previous"].as_str().map(|p| format!(" (previous {p})")).unwrap_or_default();
                        s.installed.push(format!(
                            "{} {}{prev}",
                            e["name"].as_str().unwrap_or("?"),
                            e["state"]["active"].as_str().unwrap_or("?")
                        ));
                    }
                }
                Ok(reply) => {
                    s.reachable = true;
                    s.error = Some(reply.error());
                }
                Err(e) => s.error = Some(e.to_string()),
            }
            s
        }
    });
    futures::future::join_all(asks).await
}

/// One request to `base` (named `who` in errors): the reply, or why none came.
pub async fn call(
    who: &str,
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    upload: &Upload,
    timeout: Duration,
) -> Result<Reply, FleetError> {
    let uri = join(base, path).map_err(|e| FleetError::Config(e.to_string()))?;
    Client::new(timeout)
        .request(method, uri, token, upload, timeout)
        .await
        .map_err(|e| FleetError::Remote(format!("{who}: {e}")))
}

/// Sends a request to one robot of the registry (activate, rollback): the reply, or why none.
pub async fn ask(
    robot: &Robot,
    method: Method,
    path: &str,
    upload: Upload,
    timeout: Duration,
) -> Result<Reply, FleetError> {
    call(&robot.name, &robot.url, method, path, &robot.token, &upload, timeout).await
}

/// A successful reply's body as `T`, or why it does not read as one.
fn typed<T: serde::de::DeserializeOwned>(who: &str, r: Reply) -> Result<T, FleetError> {
    serde_json::from_value(r.body).map_err(|e| {
        FleetError::Remote(format!(
            "{who} answered something this skillgraft cannot read ({e}); are both the same version?"
        ))
    })
}

/// Uploads a bundle to the fleet server's catalog; returns the catalog entry.
pub async fn upload(bundle: &Path, fleet: &str, token: &str, timeout: Duration) -> Result<CatalogEntry, FleetError> {
    let r = call(fleet, fleet, Method::POST, "/catalog", token, &Upload::File(bundle.into()), timeout).await?;
    if r.status.is_success() {
        typed(fleet, r)
    } else {
        Err(FleetError::Remote(format!("{fleet} refused the bundle ({}): {}", r.status.as_u16(), r.error())))
    }
}

/// The fleet server's catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Every bundle in it.
    pub bundles: Vec<CatalogEntry>,
}

impl std::fmt::Display for Catalog {
    /// One line per bundle: name, version, digest, where it came from, size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.bundles {
            let p = &b.provenance;
            let parent = p.parent.as_ref().map(|x| format!(", parent {x}")).unwrap_or_default();
            writeln!(
                f,
                "{} {}  {}  from {} ({}{parent})  {} bytes",
                b.name, b.version, b.digest, p.source_robot, p.method, b.bytes
            )?;
        }
        Ok(())
    }
}

/// Reads the fleet server's catalog.
pub async fn catalog(fleet: &str, token: &str, timeout: Duration) -> Result<Catalog, FleetError> {
    let r = call(fleet, fleet, Method::GET, "/catalog", token, &Upload::Empty, timeout).await?;
    if r.status.is_success() {
        typed(fleet, r)
    } else {
        Err(FleetError::Remote(format!("{fleet} ({}): {}", r.status.as_u16(), r.error())))
    }
}

/// The skill a robot's node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// Skill name.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A robot's answer to an activation or a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// The skill's store entry after the change.
    pub installed: Entry,
    /// What the robot's node runs now (None: no node runs the store).
    pub running: Option<Running>,
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.installed;
        let previous = e.state.previous.as_ref().map_or("none".to_string(), |p| p.to_string());
        let running = self.running.as_ref().map_or("no node".to_string(), |r| format!("{} {}", r.name, r.version));
        write!(f, "{}: active {}, previous {previous}; running {running}", e.name, e.state.active)
    }
}

/// Makes `version` of skill `name` active on `robot` (None: returns it to the version before).
pub async fn change(
    robot: &Robot,
    name: &str,
    version: Option<&semver::Version>,
    timeout: Duration,
) -> Result<Changed, FleetError> {
    let r = match version {
        Some(v) => {
            let body = Upload::Json(serde_json::json!({ "version": v.to_string() }));
            ask(robot, Method::POST, &format!("/skills/{name}/activate"), body, timeout).await?
        }
        None => ask(robot, Method::POST, &format!("/skills/{name}/rollback"), Upload::Empty, timeout).await?,
    };
    if !r.status.is_success() {
        return Err(FleetError::Refused { status: r.status.as_u16(), message: r.error() });
    }
    typed(&robot.name, r)
}

impl Robots {
    /// The robot called `name`, or an error listing the ones there are.
    pub fn find(&self, name: &str) -> Result<&Robot, FleetError> {
        self.robots.iter().find(|r| r.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.robots.iter().map(|r| r.name.as_str()).collect();
            FleetError::Config(format!("no robot {name:?} in the registry; it lists {}", names.join(", ")))
        })
    }
}
