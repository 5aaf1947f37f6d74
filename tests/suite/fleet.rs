//! The fleet over real HTTP on 127.0.0.1: the robot's inbox (on its own and inside a running
//! node), the fleet server's catalog, and `fleet push` to several robots. Every bad request is
//! refused with its reason and leaves the store as it was.

use crate::common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::bundles;
use serde_json::Value;

/// A `skillgraft` server process (inbox, fleet server or node), killed when dropped.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `skillgraft ARGS` and waits for the `http://ADDR` line it prints on stderr.
    fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// [`Server::start`] with `env` added to its environment.
    fn start_env(args: &[&str], env: &[(String, String)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("http://") {
                    let addr: String = line[at + 7..].chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{args:?} printed no address; its log:\n{}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The one file below `dir` whose name ends with `suffix`.
fn only_file(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "{}: {found:?}", dir.display());
    found[0].clone()
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the JSON body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    raw(addr, head.as_bytes(), body, false).expect("an answer")
}

/// [`http`] with a JSON body.
fn http_json(addr: &str, method: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    raw(addr, head.as_bytes(), body.as_bytes(), false).expect("an answer")
}

/// Sends `head` and `body` as they are (from another thread, so an early answer is read while
/// the body is still going out), and reads the answer; `hang_up` closes the sending side after
/// the body, as a client that dies does. None when the server closed without answering.
fn raw(addr: &str, head: &[u8], body: &[u8], hang_up: bool) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().ok()?;
    let mut out = head.to_vec();
    out.extend_from_slice(body);
    let writer = std::thread::spawn(move || {
        // The server may answer (and close) before the whole body is sent: that is the point of
        // early refusals, so a failed write is not an error here.
        let _ = w.write_all(&out);
        if hang_up {
            let _ = w.shutdown(std::net::Shutdown::Write);
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok())?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    Some((status, json))
}

/// A bundle upload, whole.
fn post_bundle(addr: &str, path: &str, token: &str, bundle: &Path) -> (u16, Value) {
    http(addr, "POST", path, Some(token), &std::fs::read(bundle).unwrap())
}

fn token(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    common::succeeds(&["keys", "token", path.to_str().unwrap()]);
    let t = std::fs::read_to_string(&path).unwrap().trim().to_string();
    (path, t)
}

/// The store's files, without the scratch folder's (which must be empty anyway).
fn store_files(store: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let incoming: Vec<_> = std::fs::read_dir(store.join(".incoming")).unwrap().collect();
    assert!(incoming.is_empty(), "the scratch folder keeps {incoming:?}");
    common::snapshot(store)
}

#[test]
fn the_inbox_refuses_every_bad_request_and_leaves_the_store_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = bundles::keys(d, "fleet");
    let (tokens, t) = token(d, "robot.token");
    let store = d.join("store");
    let inbox = Server::start(&[
        "inbox",
        "--store",
        store.to_str().unwrap(),
        "--trust",
        public.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--max-mib",
        "1",
    ]);
    let a = inbox.addr.as_str();
    let b1 = bundles::pack(d, &key, "0.1.0", &[]);
    let b2 = bundles::pack(d, &key, "0.2.0", &[]);
    let (status, body) = post_bundle(a, "/skills", &t, &b2);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["installed"]["state"]["active"], "0.2.0");
    assert_eq!(body["swapped"], false, "no node runs beside this inbox");
    let before = store_files(&store);
    let mut refused = 0;

    // Each bad bundle: refused with its reason, nothing installed.
    let bad_dir = d.join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad = bundles::bad(&bad_dir, &b1, &key);
    let invalid = bad.len();
    for (name, path, want) in bad {
        let (status, body) = post_bundle(a, "/skills", &t, &path);
        assert!((400..500).contains(&status), "{name}: {status} {body}");
        assert!(body["error"].as_str().unwrap().contains(want), "{name}: expected {want:?} in {body}");
        assert!(!body.to_string().contains(d.to_str().unwrap()), "{name}: the reply names the robot's files: {body}");
        assert_eq!(store_files(&store), before, "{name} changed the store");
        refused += 1;
    }
    assert!(!Path::new("/tmp/skillgraft-absolute").exists());

    // An older version, and the same version again.
    let want = "not above 0.2.0, the highest version installed here";
    for (b, want) in [(&b1, want), (&b2, want)] {
        let (status, body) = post_bundle(a, "/skills", &t, b);
        assert_eq!(status, 409, "{body}");
        assert!(body["error"].as_str().unwrap().contains(want), "{body}");
        refused += 1;
    }

    // Larger than the limit: refused from Content-Length before the body is read, and, sent
    // chunked with no length, refused as soon as it passes the limit.
    let big = vec![7u8; 3 << 20];
    let (status, body) = http(a, "POST", "/skills", Some(&t), &big);
    assert_eq!(status, 413, "{body}");
    let mut chunked = Vec::new();
    for piece in big.chunks(64 << 10) {
        chunked.extend(format!("{:x}\r\n", piece.len()).bytes());
        chunked.extend(piece);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let head = format!(
        "POST /skills HTTP/1.1\r\nHost: {a}\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    // The refusal may be lost to the connection reset that follows it (the client is still
    // sending); the inbox's counters say what it did.
    if let Some((status, body)) = raw(a, head.as_bytes(), &chunked, false) {
        assert_eq!(status, 413, "{body}");
        assert!(body["error"].as_str().unwrap().contains("larger than this server's limit of 1 MiB"), "{body}");
    }
    refused += 2;

    // A truncated upload: the connection ends before Content-Length bytes arrived.
    let whole = std::fs::read(&b2).unwrap();
    let head = format!(
        "POST /skills HTTP/1.1\r\nHost: {a}\r\nAuthorization: Bearer {t}\r\nContent-Length: {}\r\n\r\n",
        whole.len()
    );
    if let Some((status, body)) = raw(a, head.as_bytes(), &whole[..whole.len() / 2], true) {
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("ended early"), "{body}");
    }
    refused += 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(a, "GET", "/health", Some(&t), b"").1["bundles_rejected_by_reason"]["truncated"] != 1 {
        assert!(Instant::now() < deadline, "the truncated upload was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Wrong and missing tokens: refused before anything is read or counted as a bundle.
    let b3 = bundles::pack(d, &key, "0.3.0", &[]);
    for tok in [Some("not-the-token-not-the-token"), None] {
        let (status, body) = http(a, "POST", "/skills", tok, &std::fs::read(&b3).unwrap());
        assert_eq!(status, 401, "{body}");
        assert!(body["error"].as_str().unwrap().contains("bearer token"), "{body}");
        let (status, _) = http(a, "GET", "/skills", tok, b"");
        assert_eq!(status, 401);
        let (status, _) = http(a, "POST", "/skills/example-arm6/rollback", tok, b"");
        assert_eq!(status, 401);
    }
    assert_eq!(store_files(&store), before, "refused requests changed the store");

    // Concurrent pushes of one bundle: exactly one installs it, the others are told why not.
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| post_bundle(a, "/skills", &t, &b3))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(ok, 1, "{answers:?}");
    for (s, body) in answers.iter().filter(|(s, _)| *s != 201) {
        let e = body["error"].as_str().unwrap();
        match s {
            409 => assert!(e.contains("already installed") || e.contains("not above"), "{e}"),
            // Over the inbox's four uploads at once: told to come back, not counted as a bundle.
            503 => assert!(e.contains("uploads are in progress"), "{e}"),
            _ => panic!("{s}: {e}"),
        }
    }
    refused += answers.iter().filter(|(s, _)| *s == 409).count();

    // Activate and roll back over HTTP; a version that is not installed is refused.
    let (status, body) = http(a, "POST", "/skills/example-arm6/activate", Some(&t), br#"{"version": "0.2.0"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["installed"]["state"],
        serde_json::json!({"active": "0.2.0", "previous": "0.3.0", "highest": "0.3.0"})
    );
    let (status, body) = http(a, "POST", "/skills/example-arm6/rollback", Some(&t), b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["installed"]["state"]["active"], "0.3.0");
    let (status, body) = http(a, "POST", "/skills/example-arm6/activate", Some(&t), br#"{"version": "9.0.0"}"#);
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(a, "POST", "/skills/example-arm6/activate", Some(&t), b"0.2.0");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("{\"version\": \"X.Y.Z\"}"), "{body}");

    let (status, health) = http(a, "GET", "/health", Some(&t), b"");
    assert_eq!(status, 200);
    assert_eq!(health["bundles_accepted"], 2, "{health}");
    assert_eq!(health["bundles_rejected"], refused, "{health}");
    assert_eq!(
        health["bundles_rejected_by_reason"],
        serde_json::json!({"invalid": invalid, "refused": refused - invalid - 3, "too_large": 2, "truncated": 1}),
        "{health}"
    );
    assert_eq!(health["unauthorized_requests"], 6, "{health}");
    let (_, list) = http(a, "GET", "/skills", Some(&t), b"");
    assert_eq!(list["installed"][0]["versions"], serde_json::json!(["0.2.0", "0.3.0"]));
    let log = inbox.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

/// A robot registry in `dir` for these inbox URLs, each with the token in `token_file`.
fn registry(dir: &Path, robots: &[(&str, String)], token_file: &Path) -> PathBuf {
    let mut text = String::new();
    for (name, url) in robots {
        text.push_str(&format!(
            "[[robot]]\nname = \"{name}\"\nurl = \"{url}\"\ntoken_file = \"{}\"\n\n",
            token_file.display()
        ));
    }
    let path = dir.join("robots.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_fleet_server_catalogs_uploads_with_their_provenance_and_push_reaches_every_robot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (fleet_key, fleet_pub) = bundles::keys(d, "fleet");
    let (robot_key, robot_pub) = bundles::keys(d, "robot");
    let (fleet_tokens, ft) = token(d, "fleet.token");
    let (robot_tokens, _) = token(d, "robot.token");
    let fleet_dir = d.join("fleet");
    let server = Server::start(&[
        "fleet",
        "serve",
        "--store",
        fleet_dir.to_str().unwrap(),
        "--trust",
        fleet_pub.to_str().unwrap(),
        "--trust",
        robot_pub.to_str().unwrap(),
        "--tokens",
        fleet_tokens.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);

    // A robot uploads its adapted skill, signed with its own key: it appears with its provenance.
    let source = skillgraft::skill::Skill::load(&bundles::example()).unwrap();
    let adapted = bundles::version(d, "0.2.0");
    let toml = adapted.join("skill.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "source_robot = \"arm6-sim\"\nmethod = \"imported\"",
        &format!("source_robot = \"arm6-b-07\"\nmethod = \"adapted-ridge\"\nparent = \"{}\"", source.digest),
    );
    std::fs::write(&toml, text).unwrap();
    let up = bundles::pack_dir(&adapted, &robot_key, &d.join("adapted.skill"), &[]);
    let (url, ftf) = (server.url(), fleet_tokens.to_str().unwrap().to_string());
    let out = common::succeeds(&["fleet", "upload", up.to_str().unwrap(), "--fleet", &url, "--token-file", &ftf]);
    assert!(out.contains("example-arm6 0.2.0"), "{out}");
    let again = common::succeeds(&["fleet", "upload", up.to_str().unwrap(), "--fleet", &url, "--token-file", &ftf]);
    assert!(again.contains("example-arm6 0.2.0"), "uploading the same bundle again is harmless: {again}");
    let listing = common::succeeds(&["fleet", "catalog", "--fleet", &url, "--token-file", &ftf]);
    assert!(listing.contains("from arm6-b-07 (adapted-ridge, parent sha256:"), "{listing}");
    let (status, bytes) = {
        let (s, _) = http(&server.addr, "GET", "/catalog/example-arm6/0.2.0", Some(&ft), b"");
        (s, std::fs::read(only_file(&fleet_dir.join("catalog/example-arm6/0.2.0"), ".skill")).unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(bytes, std::fs::read(&up).unwrap(), "the catalog keeps the bundle as uploaded");

    // Refused: another bundle under a version the catalog has, an untrusted signer, no token.
    let other = bundles::pack(d, &fleet_key, "0.2.0", &[]);
    let err = common::fails(&["fleet", "upload", other.to_str().unwrap(), "--fleet", &url, "--token-file", &ftf]);
    assert!(err.contains("(409)") && err.contains("bump the version"), "{err}");
    let (stranger_key, _) = bundles::keys(d, "stranger");
    let strange = bundles::pack_dir(&bundles::version(d, "0.3.0"), &stranger_key, &d.join("s.skill"), &[]);
    let err = common::fails(&["fleet", "upload", strange.to_str().unwrap(), "--fleet", &url, "--token-file", &ftf]);
    assert!(err.contains("(422)") && err.contains("not a trusted key"), "{err}");
    let rtf = robot_tokens.to_str().unwrap();
    let err = common::fails(&["fleet", "upload", up.to_str().unwrap(), "--fleet", &url, "--token-file", rtf]);
    assert!(err.contains("(401)"), "{err}");
    let catalog: Value =
        serde_json::from_str(&common::succeeds(&["fleet", "catalog", "--fleet", &url, "--token-file", &ftf, "--json"]))
            .unwrap();
    assert_eq!(catalog["bundles"].as_array().unwrap().len(), 1, "{catalog}");

    // Push to two inboxes and a robot that is down: both installed, the third reported.
    let inboxes: Vec<(Server, PathBuf)> = (0..2)
        .map(|i| {
            let store = d.join(format!("store-{i}"));
            let s = Server::start(&[
                "inbox",
                "--store",
                store.to_str().unwrap(),
                "--trust",
                fleet_pub.to_str().unwrap(),
                "--tokens",
                rtf,
                "--listen",
                "127.0.0.1:0",
            ]);
            (s, store)
        })
        .collect();
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let robots = registry(
        d,
        &[("r0", inboxes[0].0.url()), ("r1", inboxes[1].0.url()), ("r2", format!("http://{down}"))],
        &robot_tokens,
    );
    let b1 = bundles::pack(d, &fleet_key, "0.1.0", &[]);
    let out = common::skillgraft(&[
        "fleet",
        "push",
        b1.to_str().unwrap(),
        "--robots",
        robots.to_str().unwrap(),
        "--retries",
        "1",
        "--connect-timeout-s",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "one robot is down: {}", String::from_utf8_lossy(&out.stderr));
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, r) in results.as_array().unwrap().iter().enumerate().take(2) {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["robot"], format!("r{i}"));
        assert!(r["install_ms"].as_f64().unwrap() > 0.0);
        let state = std::fs::read_to_string(inboxes[i].1.join("example-arm6/state.json")).unwrap();
        assert!(state.contains("\"active\": \"0.1.0\""), "{state}");
    }
    let r2 = &results[2];
    assert_eq!(r2["ok"], false);
    assert_eq!(r2["attempts"], 2, "a robot that does not answer is tried again: {r2}");
    assert!(r2["outcome"].as_str().unwrap().starts_with("unreachable"), "{r2}");

    // The table; pushing again is harmless where it is already active, and an older version is
    // refused.
    let push = |b: &Path| {
        let out = common::skillgraft(&[
            "fleet",
            "push",
            b.to_str().unwrap(),
            "--robots",
            robots.to_str().unwrap(),
            "--retries",
            "0",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = push(&b1);
    assert!(table.contains("| r0 | already active: example-arm6 0.1.0 | no | 1 |"), "{table}");
    assert!(table.contains("2 of 3 robots installed it"), "{table}");
    let table = push(&bundles::pack(d, &fleet_key, "0.0.9", &[]));
    assert!(
        table.contains(
            "| r1 | refused (409): example-arm6 0.0.9 is not above 0.1.0, the highest version installed here"
        ),
        "{table}"
    );
    let status = common::succeeds(&["fleet", "status", "--robots", robots.to_str().unwrap()]);
    assert!(status.contains("| r1 | ") && status.contains("example-arm6 0.1.0"), "{status}");
    assert!(status.contains("| r2 | ") && status.contains("unreachable"), "{status}");
    let (status, robots_list) = http(&server.addr, "GET", "/robots", Some(&ft), b"");
    assert_eq!(status, 200);
    assert_eq!(robots_list["robots"], serde_json::json!([]), "no registry in the fleet folder yet");
}

/// Where [`inbox_node`]'s inbox listens: the default port, free in the test's own network
/// namespace.
const NODE_INBOX: &str = "127.0.0.1:8740";

/// `skillgraft run SKILL` with its inbox on (these tokens, this trusted key, the store at
/// `store`) and diagnostics every 0.2 s, logging to `log`; returns once the inbox listens.
/// Killed when dropped: a node left running would hold the test's output open.
fn inbox_node(skill: &Path, store: &Path, tokens: &Path, public: &Path, log: &Path) -> Server {
    inbox_node_with(skill, store, tokens, public, log, &[])
}

/// A DDS participant on the test's domain, and the `/diagnostics` arrays it hears (keep the
/// participant while reading them).
fn diagnostics_watcher()
-> (skillgraft::ros::dds::DdsTransport, std::sync::mpsc::Receiver<skillgraft::msg::DiagnosticArray>) {
    use skillgraft::ros::dds::{DdsConfig, DdsTransport};
    use skillgraft::ros::transport::{NodeIdentity, Qos};
    let peer = DdsTransport::new(
        NodeIdentity { name: "watcher".into(), namespace: "/".into() },
        &DdsConfig::local(common::dds_domain()).unwrap(),
    )
    .unwrap();
    let diagnostics = common::collect(&peer, "/diagnostics", Qos::RELIABLE);
    (peer, diagnostics)
}

/// [`inbox_node`] with the parameters `extra` (`NAME:=VALUE`) too.
fn inbox_node_with(skill: &Path, store: &Path, tokens: &Path, public: &Path, log: &Path, extra: &[String]) -> Server {
    let mut args = vec!["run".to_string(), skill.display().to_string(), "--ros-args".into()];
    let base = [
        format!("store_dir:={}", store.display()),
        format!("inbox_tokens:={}", tokens.display()),
        format!("inbox_trust:=['{}']", public.display()),
        "diagnostics_period_s:=0.2".to_string(),
    ];
    for p in base.iter().chain(extra) {
        args.extend(["-p".to_string(), p.clone()]);
    }
    let node = Server {
        child: Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args(&args)
            .env("ROS_DOMAIN_ID", common::dds_domain().to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
        addr: NODE_INBOX.to_string(),
        log: Default::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(NODE_INBOX).is_err() {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        assert!(Instant::now() < deadline, "the node's inbox never listened on {NODE_INBOX}: {said}");
        std::thread::sleep(Duration::from_millis(100));
    }
    node
}

#[test]
fn the_node_inbox_swaps_pushed_skills_in_and_counts_bundles_on_diagnostics() {
    if !common::isolated("the_node_inbox_swaps_pushed_skills_in_and_counts_bundles_on_diagnostics") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = bundles::keys(d, "fleet");
    let (tokens, t) = token(d, "robot.token");
    let store = d.join("store");
    let skill = d.join("launched");
    common::copy_tree(&bundles::example(), &skill);
    let addr = NODE_INBOX;
    let log = d.join("node.log");
    let node = inbox_node(&skill, &store, &tokens, &public, &log);
    let (_peer, diagnostics) = diagnostics_watcher();
    let running = || http(addr, "GET", "/skills", Some(&t), b"").1["running"]["version"].clone();
    assert_eq!(running(), "0.1.0");

    // The store is empty, but the node runs 0.1.0: an older version is refused all the same.
    let b0 = bundles::pack(d, &key, "0.0.9", &[]);
    let (status, body) = post_bundle(addr, "/skills", &t, &b0);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("the node runs 0.1.0, which is newer"), "{body}");

    // The running version's bundle, so the store can return to it; then a newer version: both
    // installed, and the node swaps to each.
    let robots = registry(d, &[("arm", format!("http://{addr}"))], &tokens);
    let b1 = bundles::pack(d, &key, "0.1.0", &[]);
    let out = common::succeeds(&["fleet", "push", b1.to_str().unwrap(), "--robots", robots.to_str().unwrap()]);
    assert!(out.contains("| arm | installed example-arm6 0.1.0 | yes | 1 |"), "{out}");
    let b2 = bundles::pack(d, &key, "0.2.0", &[]);
    let out = common::succeeds(&["fleet", "push", b2.to_str().unwrap(), "--robots", robots.to_str().unwrap()]);
    assert!(out.contains("| arm | installed example-arm6 0.2.0 | yes | 1 |"), "{out}");
    assert_eq!(running(), "0.2.0");

    // Same name, but it drives another topic: refused before the store changes.
    let moved = bundles::version(d, "0.3.0");
    let toml = moved.join("skill.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace("/arm/joint_velocity_cmd", "/elsewhere/cmd");
    std::fs::write(&toml, text).unwrap();
    let b3 = bundles::pack_dir(&moved, &key, &d.join("moved.skill"), &[]);
    let before = store_files(&store);
    let (status, body) = post_bundle(addr, "/skills", &t, &b3);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("action output differs"), "{body}");
    assert_eq!(store_files(&store), before);
    // Other action limits: the node's safety filter was set up for the running ones.
    let wider = bundles::version(d, "0.3.1");
    let toml = wider.join("skill.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let line = text.lines().find(|l| l.starts_with("max_delta")).unwrap().to_string();
    std::fs::write(&toml, text.replace(&line, "max_delta = [9.0, 9.0, 9.0, 9.0, 9.0, 9.0]")).unwrap();
    let b31 = bundles::pack_dir(&wider, &key, &d.join("wider.skill"), &[]);
    let (status, body) = post_bundle(addr, "/skills", &t, &b31);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("action limits, safe action or control rate differ"), "{body}");
    assert_eq!(store_files(&store), before);
    assert_eq!(running(), "0.2.0");

    // Activate the first version on the robot, then roll back, through the registry.
    let r = robots.to_str().unwrap();
    let out = common::succeeds(&["fleet", "activate", "arm", "example-arm6", "0.1.0", "--robots", r]);
    assert!(out.contains("active 0.1.0, previous 0.2.0; running example-arm6 0.1.0"), "{out}");
    let out = common::succeeds(&["fleet", "rollback", "arm", "example-arm6", "--robots", r]);
    assert!(out.contains("active 0.2.0, previous 0.1.0; running example-arm6 0.2.0"), "{out}");

    // /diagnostics counts the accepted and the refused bundle, and shows the swaps applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = diagnostics.recv_timeout(Duration::from_secs(5)).ok();
        let values = got.map(|a| a.status[0].values.clone()).unwrap_or_default();
        let value = |k: &str| values.iter().find(|kv| kv.key == k).map(|kv| kv.value.clone());
        if value("inbox.bundles_accepted").as_deref() == Some("2")
            && value("inbox.bundles_rejected.refused").as_deref() == Some("3")
            && value("skill").as_deref() == Some("example-arm6 0.2.0")
            // Four swaps were asked for; two asked for between the same two ticks (a loaded
            // machine) are applied as one, the second.
            && value("skill_swaps").is_some_and(|n| n.parse::<u64>().unwrap() >= 2)
        {
            assert_eq!(value("inbox.address").as_deref(), Some(addr));
            assert!(value("inbox.last_rejection").unwrap().contains("control rate differ"));
            break;
        }
        assert!(Instant::now() < deadline, "/diagnostics never showed the inbox counters: {values:?}");
    }

    // Restarted with its first folder, the node runs what the store says is active.
    drop(node);
    let node = inbox_node(&skill, &store, &tokens, &public, &log);
    assert_eq!(running(), "0.2.0");
    drop(node);

    // A node told to run an inbox without tokens refuses to start, and says what is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(["run", skill.to_str().unwrap(), "--ros-args", "-p", &format!("store_dir:={}", store.display())])
        .env("ROS_DOMAIN_ID", common::dds_domain().to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs `inbox_tokens`"), "{err}");
}

/// Starts `skillgraft inbox` on a store in `d` with `extra` options; returns it, the store, the
/// fleet key and the token.
fn inbox(d: &Path, extra: &[&str]) -> (Server, PathBuf, PathBuf, String) {
    let (key, public) = bundles::keys(d, "fleet");
    let (tokens, t) = token(d, "robot.token");
    let store = d.join("store");
    let mut args = vec![
        "inbox",
        "--store",
        store.to_str().unwrap(),
        "--trust",
        public.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend(extra);
    (Server::start(&args), store, key, t)
}

/// Waits (with a deadline) until the inbox answers `/health`; returns its counters.
fn healthy(a: &str, t: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let head =
            format!("GET /health HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nAuthorization: Bearer {t}\r\n\r\n");
        if let Some((200, body)) = raw(a, head.as_bytes(), b"", false) {
            return body;
        }
        assert!(Instant::now() < deadline, "the inbox did not answer /health within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The HTTP attacks of a token holder and of a stranger: connections that never finish their
/// head, bodies sent without a token, uploads at 1 byte/s holding every slot. Each is cut off or
/// refused with its reason, the inbox keeps answering, a real upload gets through, and the store
/// is as it was until then.
#[test]
fn the_inbox_outlasts_slow_and_unauthenticated_clients() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server, store, key, t) =
        inbox(d, &["--header-timeout-s", "1", "--max-connections", "16", "--uploads", "2", "--min-rate-kib", "64"]);
    let a = server.addr.as_str();
    let b1 = bundles::pack(d, &key, "0.1.0", &[]);
    assert_eq!(post_bundle(a, "/skills", &t, &b1).0, 201);
    let before = store_files(&store);
    let skill_before = common::snapshot(&store.join("example-arm6"));

    // 40 connections that send half a request head and stop: 16 are held, the rest closed at
    // once; the held ones are closed when their head is 1 s late. /health answers through it.
    let partial: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            let _ = s.write_all(b"POST /skills HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    let counters = healthy(a, &t, Duration::from_secs(20));
    for mut s in partial {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the inbox: EOF, a reset, or a 408 answer and then EOF; never a hang.
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    let refused = healthy(a, &t, Duration::from_secs(20))["connections_refused"].as_u64().unwrap();
    assert!(refused >= 1, "connections over the cap are counted: {counters}");

    // A stranger's 2 MB bodies: answered 401 from the head alone, before any body byte is sent.
    for path in ["/skills", "/skills/example-arm6/activate"] {
        let head = format!("POST {path} HTTP/1.1\r\nHost: {a}\r\nContent-Length: 2000000\r\n\r\n");
        let mut s = TcpStream::connect(a).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 401"), "{path}: {text}");
    }
    assert_eq!(store_files(&store), before, "the refused requests changed the store");

    // Two token holders trickle 1 byte/s into both upload slots; a real push queues behind
    // them, and gets in when they are cut off for being too slow.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (a, t) = (a.to_string(), t.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&a).unwrap();
                let head = format!(
                    "POST /skills HTTP/1.1\r\nHost: {a}\r\nAuthorization: Bearer {t}\r\nContent-Length: 100000\r\n\r\n"
                );
                s.write_all(head.as_bytes()).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
                let mut answer = Vec::new();
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(60) {
                    if s.write_all(b"x").is_err() {
                        break;
                    }
                    let mut buf = [0u8; 4096];
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                    if !answer.is_empty() {
                        break;
                    }
                }
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while healthy(a, &t, Duration::from_secs(20))["bundles_rejected_by_reason"]["too_slow"].is_null()
        && Instant::now() < deadline
    {
        // The slow uploads hold both slots (their scratch files in .incoming); the skill is
        // untouched meanwhile.
        assert_eq!(common::snapshot(&store.join("example-arm6")), skill_before);
        std::thread::sleep(Duration::from_millis(100));
    }
    let b2 = bundles::pack(d, &key, "0.2.0", &[]);
    let (status, body) = post_bundle(a, "/skills", &t, &b2);
    assert_eq!(status, 201, "the real upload got through: {body}");
    for h in slow {
        let answer = h.join().unwrap();
        assert!(answer.is_empty() || answer.contains("408") && answer.contains("too slow"), "{answer}");
    }
    let health = healthy(a, &t, Duration::from_secs(20));
    assert_eq!(health["bundles_rejected_by_reason"]["too_slow"], 2, "{health}");
    assert_eq!(health["bundles_accepted"], 2, "{health}");
    let log = server.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

/// A signed bundle whose model needs 4 GiB: the worker that checks it runs out of its memory
/// cap, the bundle is refused with that reason, and neither the store command nor the inbox
/// that received it is harmed; a normal bundle installs under the same cap.
#[test]
fn a_bundle_needing_more_memory_than_the_worker_may_have_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (server, store, key, t) = inbox(d, &["--worker-mib", "1024"]);
    let a = server.addr.as_str();
    // Signed by hand: `bundle pack` would load the model here, outside any worker.
    let hog_dir = bundles::memory_hog(d);
    let hog = d.join("hog.skill");
    let (manifest, model) =
        (std::fs::read(hog_dir.join("skill.toml")).unwrap(), std::fs::read(hog_dir.join("policy.onnx")).unwrap());
    bundles::signed(&hog, &key, "example-arm6", "0.1.0", &[("skill.toml", &manifest), ("policy.onnx", &model)]);
    let (status, body) = post_bundle(a, "/skills", &t, &hog);
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("memory limit of 1024 MiB"), "{body}");
    let left: Vec<_> = store_files(&store).into_iter().map(|(p, _)| p).collect();
    assert_eq!(left, vec![store.join(".lock")], "nothing installed, nothing left behind");
    let b1 = bundles::pack(d, &key, "0.1.0", &[]);
    assert_eq!(post_bundle(a, "/skills", &t, &b1).0, 201, "a normal bundle fits the same cap");
    let out = common::skillgraft(&[
        "store",
        "install",
        hog.to_str().unwrap(),
        "--store",
        d.join("other").to_str().unwrap(),
        "--trust",
        d.join("fleet.pub").to_str().unwrap(),
        "--worker-mib",
        "1024",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("memory limit of 1024 MiB"), "{err}");
}

/// Every attack on a running node's inbox: the hostile archives, a signed bundle needing 4 GiB,
/// connections that never finish their head, a stranger's large bodies. Each is refused, the
/// store stays as it was, and the control loop ticks through all of it (every /diagnostics
/// period reports ticks, and the node is still running at the end).
#[test]
fn the_node_ticks_through_every_attack_on_its_inbox() {
    if !common::isolated("the_node_ticks_through_every_attack_on_its_inbox") {
        return;
    }
    use skillgraft::msg::cdr;
    use skillgraft::msg::{DiagnosticArray, RosMessage};
    use skillgraft::ros::dds::{DdsConfig, DdsTransport};
    use skillgraft::ros::transport::{NodeIdentity, Qos, Transport};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = bundles::keys(d, "fleet");
    let (tokens, t) = token(d, "robot.token");
    let store = d.join("store");
    let skill = d.join("launched");
    common::copy_tree(&bundles::example(), &skill);
    let addr = NODE_INBOX;
    let log = d.join("node.log");
    let mut node = inbox_node(&skill, &store, &tokens, &public, &log);
    let node_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let peer = DdsTransport::new(
        NodeIdentity { name: "watcher".into(), namespace: "/".into() },
        &DdsConfig::local(common::dds_domain()).unwrap(),
    )
    .unwrap();
    let rates: Arc<Mutex<Vec<f64>>> = Arc::default();
    let sink = rates.clone();
    peer.subscribe(
        "/diagnostics",
        DiagnosticArray::TYPE,
        Qos::RELIABLE,
        Box::new(move |s| {
            let a = cdr::decode::<DiagnosticArray>(&s.cdr, DiagnosticArray::TYPE).unwrap();
            if let Some(r) = a.status[0].values.iter().find(|kv| kv.key == "rate_hz") {
                sink.lock().unwrap().push(r.value.parse().unwrap());
            }
        }),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rates.lock().unwrap().iter().filter(|r| **r > 0.0).count() < 2 {
        assert!(Instant::now() < deadline, "no ticking reported on /diagnostics: {}", node_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let b1 = bundles::pack(d, &key, "0.1.0", &[]);
    assert_eq!(post_bundle(addr, "/skills", &t, &b1).0, 201);
    let before = store_files(&store);
    rates.lock().unwrap().clear();

    let bad_dir = d.join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let mut attacks = bundles::bad(&bad_dir, &b1, &key);
    let hog_dir = bundles::memory_hog(d);
    let hog = d.join("hog.skill");
    let (manifest, model) =
        (std::fs::read(hog_dir.join("skill.toml")).unwrap(), std::fs::read(hog_dir.join("policy.onnx")).unwrap());
    bundles::signed(&hog, &key, "example-arm6", "0.1.0", &[("skill.toml", &manifest), ("policy.onnx", &model)]);
    attacks.push(("4 GiB model", hog, "allocate"));
    for (name, path, want) in &attacks {
        let (status, body) = post_bundle(addr, "/skills", &t, path);
        assert_eq!(status, 422, "{name}: {body}");
        assert!(body["error"].as_str().unwrap().contains(want), "{name}: expected {want:?} in {body}");
        assert_eq!(store_files(&store), before, "{name} changed the store");
    }
    let partial: Vec<TcpStream> = (0..100)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            let _ = s.write_all(b"POST /skills HTTP/1.1\r\nHost: x\r\n");
            Some(s)
        })
        .collect();
    for path in ["/skills", "/skills/example-arm6/activate"] {
        let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2000000\r\n\r\n");
        if let Some((status, _)) = raw(addr, head.as_bytes(), b"", true) {
            assert_eq!(status, 401, "{path}");
        }
    }
    drop(partial);
    let health = healthy(addr, &t, Duration::from_secs(30));
    assert_eq!(health["bundles_rejected_by_reason"]["invalid"], attacks.len(), "{health}");
    // Two more periods after the last attack, so every period of it has been reported.
    let seen = rates.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rates.lock().unwrap().len() < seen + 2 {
        assert!(Instant::now() < deadline, "/diagnostics stopped: {}", node_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let rates = rates.lock().unwrap().clone();
    assert!(rates.len() >= 3 && rates.iter().all(|r| *r > 0.0), "a period without ticks during the attacks: {rates:?}");
    assert!(node.child.try_wait().unwrap().is_none(), "the node is still running: {}", node_log());
    assert_eq!(store_files(&store), before);
    assert!(!node_log().contains("panicked at"), "{}", node_log());
}

fn s(x: &Path) -> String {
    x.to_str().unwrap().to_string()
}

/// A fleet server for signed channels (given the root key), with the root and fleet keys, a token, and a key list
/// (version 1, listing the fleet key) signed but not yet published.
struct Channels {
    server: Option<Server>,
    url: String,
    root: PathBuf,
    root_pub: PathBuf,
    fleet_key: PathBuf,
    fleet_pub: PathBuf,
    tokens: PathBuf,
    token: String,
    keys: PathBuf,
    store: PathBuf,
}

fn channels(d: &Path) -> Channels {
    let store = d.join("fleet");
    channels_on(d, &s(&store), &[])
}

impl Channels {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("started")
    }
}

/// [`channels`] on the object store `store`, reached with `env`.
fn channels_on(d: &Path, store: &str, env: &[(String, String)]) -> Channels {
    let (root, root_pub) = bundles::keys(d, "root");
    let (fleet_key, fleet_pub) = bundles::keys(d, "fleet");
    let (tokens, token) = token(d, "fleet.token");
    let keys = d.join("keys.json");
    common::succeeds(&[
        "fleet",
        "channel",
        "keys",
        "--root",
        &s(&root),
        "--fleet-key",
        &s(&fleet_pub),
        "--version",
        "1",
        "--out",
        &s(&keys),
    ]);
    let mut c = Channels {
        url: String::new(),
        server: None,
        root,
        root_pub,
        fleet_key,
        fleet_pub,
        tokens,
        token,
        keys,
        store: PathBuf::from(store),
    };
    let server = serve(&c, store, env, &[]);
    c.url = server.url();
    c.server = Some(server);
    c
}

/// A fleet server on `store` with `c`'s keys and tokens, reading the store afresh on every poll,
/// with `extra` arguments.
fn serve(c: &Channels, store: &str, env: &[(String, String)], extra: &[&str]) -> Server {
    let (trust, tokens, root) = (s(&c.fleet_pub), s(&c.tokens), s(&c.root_pub));
    let mut args = vec!["fleet", "serve", "--store", store, "--trust", &trust, "--tokens", &tokens];
    args.extend(["--channel-root", &root, "--cache-s", "0", "--store-retry-s", "1", "--listen", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    Server::start_env(&args, env)
}

/// Signs `channel`'s index at `serial` with `key`, offering `bundle`; returns its file.
fn sign_index(d: &Path, key: &Path, channel: &str, serial: &str, bundle: &Path) -> PathBuf {
    let out = d.join(format!("{channel}-{serial}.json"));
    common::succeeds(&[
        "fleet",
        "channel",
        "sign",
        "--key",
        &s(key),
        "--channel",
        channel,
        "--serial",
        serial,
        "--out",
        &s(&out),
        &s(bundle),
    ]);
    out
}

/// `skillgraft agent --once` following `stable` on `c`'s server into `store`, with `extra`.
fn agent(c: &Channels, store: &Path, extra: &[&str]) -> std::process::Output {
    agent_at(c, &c.url, store, extra)
}

/// [`agent`] through the fleet server at `url`.
fn agent_at(c: &Channels, url: &str, store: &Path, extra: &[&str]) -> std::process::Output {
    agent_as(c, url, &c.tokens, store, extra)
}

/// [`agent_at`] sending the token in `token_file`.
fn agent_as(c: &Channels, url: &str, token_file: &Path, store: &Path, extra: &[&str]) -> std::process::Output {
    let (tokens, root, trust, store) = (s(token_file), s(&c.root_pub), s(&c.fleet_pub), s(store));
    let mut all = vec![
        "agent",
        "--fleet",
        url,
        "--token-file",
        &tokens,
        "--channel",
        "stable",
        "--root",
        &root,
        "--trust",
        &trust,
        "--store",
        &store,
        "--once",
    ];
    all.extend_from_slice(extra);
    common::skillgraft(&all)
}

/// Packs `version` of the example skill with the fleet key and adds it to `c`'s catalog.
fn catalogued(c: &Channels, d: &Path, version: &str) -> PathBuf {
    let b = bundles::pack(d, &c.fleet_key, version, &[]);
    assert!([200, 201].contains(&post_bundle(&c.server().addr, "/catalog", &c.token, &b).0));
    b
}

/// `fleet rollout ARGS` on channel `stable` of `c`'s server.
fn rollout(c: &Channels, args: &[&str]) -> std::process::Output {
    let mut all = vec!["fleet", "rollout"];
    all.extend_from_slice(args);
    all.extend(["--fleet", &c.url, "--token-file", c.tokens.to_str().unwrap(), "--channel", "stable"]);
    common::skillgraft(&all)
}

/// The index `c`'s server gives `robot` on channel `stable`.
fn index_for(c: &Channels, robot: &str) -> Value {
    let (status, _, body) = get_with(&c.server().addr, &format!("/channels/stable?robot={robot}"), &c.token, "");
    assert_eq!(status, 200);
    let env: Value = serde_json::from_slice(&body).unwrap();
    serde_json::from_str(env["payload"].as_str().unwrap()).unwrap()
}

/// `fleet channel publish` to `c`'s server with `args`.
fn publish(c: &Channels, args: &[&str]) -> std::process::Output {
    let mut all = vec!["fleet", "channel", "publish", "--fleet", &c.url, "--token-file", c.tokens.to_str().unwrap()];
    all.extend_from_slice(args);
    common::skillgraft(&all)
}

/// A GET with extra header lines; returns the status, the headers and the body bytes.
fn get_with(addr: &str, path: &str, token: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&answer[..split]).to_lowercase();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    (status, headers, answer[split + 4..].to_vec())
}

fn header<'a>(headers: &'a str, name: &str) -> &'a str {
    headers.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or("")
}

#[test]
fn the_fleet_server_serves_signed_channels_with_etags_refuses_older_ones_and_resumes_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let (p, t, fleet_key) = (s, c.token.clone(), c.fleet_key.clone());
    let (stranger, _) = bundles::keys(d, "stranger");
    let server = c.server();
    let bundle = bundles::pack(d, &fleet_key, "0.2.0", &[]);
    assert_eq!(post_bundle(&server.addr, "/catalog", &t, &bundle).0, 201);
    let keys = c.keys.clone();
    let root = c.root.clone();
    let fleet_pub = c.fleet_pub.clone();
    let sign = |serial: &str, with: &Path, channel: &str| sign_index(d, with, channel, serial, &bundle);
    let publish = |args: &[&str]| publish(&c, args);
    let refused = |args: &[&str], words: &str| {
        let out = publish(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(words), "should say {words:?}: {err}");
    };

    let s2 = sign("2", &fleet_key, "stable");
    refused(&["--index", &p(&s2)], "no key list");
    let ok = publish(&["--keys", &p(&keys), "--index", &p(&s2)]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && text.contains("now serves the key list") && text.contains("channel stable serial 2"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&publish(&["--index", &p(&s2)]).stdout).contains("already served"));
    refused(&["--index", &p(&sign("1", &fleet_key, "stable"))], "has serial 2; publish changes under a higher serial");
    refused(&["--index", &p(&sign("3", &stranger, "stable"))], "not signed by a fleet key");
    let older_keys = d.join("keys-0.json");
    common::succeeds(&[
        "fleet",
        "channel",
        "keys",
        "--root",
        &p(&root),
        "--fleet-key",
        &p(&fleet_pub),
        "--version",
        "0",
        "--out",
        &p(&older_keys),
    ]);
    refused(&["--keys", &p(&older_keys)], "has version 1; publish a new one under a higher version");
    let forged_keys = d.join("keys-forged.json");
    common::succeeds(&[
        "fleet",
        "channel",
        "keys",
        "--root",
        &p(&stranger),
        "--fleet-key",
        &p(&fleet_pub),
        "--version",
        "9",
        "--out",
        &p(&forged_keys),
    ]);
    refused(&["--keys", &p(&forged_keys)], "not signed by the root key");

    // Robots poll with the ETag they have: an unchanged index costs a 304 and no body.
    let (status, headers, body) = get_with(&server.addr, "/channels/stable", &t, "");
    assert_eq!(status, 200);
    let json = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
    assert_eq!(json(&body), json(&std::fs::read(&s2).unwrap()), "the index as published");
    let etag = header(&headers, "etag").to_string();
    assert!(etag.len() > 10, "{headers}");
    let (status, _, body) = get_with(&server.addr, "/channels/stable", &t, &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((status, body.len()), (304, 0));
    let s4 = sign("4", &fleet_key, "stable");
    assert!(publish(&["--index", &p(&s4)]).status.success());
    let (status, _, _) = get_with(&server.addr, "/channels/stable", &t, &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(status, 200, "a new index is served in full");
    assert_eq!(get_with(&server.addr, "/channels/canary", &t, "").0, 404);
    assert_eq!(get_with(&server.addr, "/keys", &t, "").0, 200);

    // A download cut off resumes where it stopped.
    let whole = std::fs::read(&bundle).unwrap();
    let half = whole.len() / 2;
    let (status, headers, rest) =
        get_with(&server.addr, "/catalog/example-arm6/0.2.0", &t, &format!("Range: bytes={half}-\r\n"));
    assert_eq!(status, 206, "{headers}");
    assert_eq!(header(&headers, "content-range"), format!("bytes {half}-{}/{}", whole.len() - 1, whole.len()));
    assert_eq!(rest, whole[half..]);
    let past = format!("Range: bytes={}-\r\n", whole.len());
    assert_eq!(get_with(&server.addr, "/catalog/example-arm6/0.2.0", &t, &past).0, 416);
}

#[test]
fn a_robot_pulls_its_channel_resumes_downloads_and_refuses_what_the_signed_index_does_not_vouch_for() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let (p, t, url, tokens) = (s, c.token.clone(), c.url.clone(), c.tokens.clone());
    let fleet_key = c.fleet_key.clone();
    let (server, server_dir) = (c.server(), c.store.clone());
    assert!(publish(&c, &["--keys", &s(&c.keys)]).status.success());
    let release = |serial: &str, version: &str| {
        let bundle = bundles::pack(d, &fleet_key, version, &[]);
        assert!([200, 201].contains(&post_bundle(&server.addr, "/catalog", &t, &bundle).0));
        let index = sign_index(d, &fleet_key, "stable", serial, &bundle);
        assert!(publish(&c, &["--index", &s(&index)]).status.success());
        (bundle, index)
    };
    let store = d.join("robot-store");
    let agent = || agent(&c, &store, &[]);
    let pulled = |words: &str| {
        let out = agent();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && text.contains(words),
            "should say {words:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let active = || {
        let out = common::succeeds(&["store", "list", "--store", &p(&store), "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["state"]["active"].as_str().unwrap().to_string()
    };
    let refused = |words: &str| {
        let before = active();
        let out = agent();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(words), "should say {words:?}: {err}");
        assert_eq!(active(), before, "a refusal leaves the running version");
    };

    let reports = || {
        let out = common::succeeds(&["fleet", "reports", "--fleet", &url, "--token-file", &p(&tokens), "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["reports"].as_array().unwrap().len(), 1, "one robot, its last report: {v}");
        v["reports"][0].clone()
    };

    release("1", "0.2.0");
    pulled("installed example-arm6 0.2.0");
    pulled("up to date");
    let r = reports();
    assert_eq!((r["channel"].as_str(), r["serial"].as_u64()), (Some("stable"), Some(1)), "{r}");
    assert_eq!(r["active"]["example-arm6"], "0.2.0");
    assert!(r["error"].is_null() && r["received"].is_string(), "{r}");

    // A download cut off halfway resumes from what arrived.
    let (b3, _) = release("2", "0.3.0");
    let whole = std::fs::read(&b3).unwrap();
    let downloads = store.join(".channel/downloads");
    std::fs::write(downloads.join("example-arm6-0.3.0.part"), &whole[..whole.len() / 2]).unwrap();
    pulled("installed example-arm6 0.3.0");
    assert!(!downloads.join("example-arm6-0.3.0.part").exists());

    // Bytes that do not hash to what the index says are discarded; the next poll starts afresh.
    let (b4, i3) = release("3", "0.4.0");
    std::fs::write(downloads.join("example-arm6-0.4.0.part"), vec![7u8; std::fs::read(&b4).unwrap().len() / 2])
        .unwrap();
    refused("signed index says");
    assert!(!downloads.join("example-arm6-0.4.0.part").exists());
    pulled("installed example-arm6 0.4.0");

    // What the server holds is changed behind the fleet's back, or rolled back to an older index.
    let served = server_dir.join("channels/stable/00000000000000000003.json");
    let good = std::fs::read_to_string(&served).unwrap();
    std::fs::write(&served, good.replacen("0.4.0", "0.2.0", 1)).unwrap();
    refused("not signed by a fleet key");
    let r = reports();
    assert!(r["error"].as_str().unwrap().contains("not signed by a fleet key"), "the fleet hears why: {r}");
    assert_eq!(r["active"]["example-arm6"], "0.4.0");
    let table = common::succeeds(&["fleet", "reports", "--fleet", &url, "--token-file", &p(&tokens)]);
    assert!(table.contains("| stable |") && table.contains("example-arm6 0.4.0"), "{table}");
    std::fs::write(&served, std::fs::read(d.join("stable-1.json")).unwrap()).unwrap();
    refused("already accepted serial 3");
    std::fs::write(&served, std::fs::read(&i3).unwrap()).unwrap();
    pulled("up to date");

    // The fleet rolls the channel back to a version the robot has: it is activated, not fetched.
    let index = sign_index(d, &fleet_key, "stable", "4", &d.join("arm6-0.2.0.skill"));
    assert!(publish(&c, &["--index", &s(&index)]).status.success());
    pulled("activated example-arm6 0.2.0");
    assert_eq!(active(), "0.2.0");
}

#[test]
fn a_node_follows_a_channel_through_its_inbox_with_the_agent_beside_it() {
    if !common::isolated("a_node_follows_a_channel_through_its_inbox_with_the_agent_beside_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let (p, ft) = (s, c.token.clone());
    let (fleet_key, fleet_pub) = (c.fleet_key.clone(), c.fleet_pub.clone());
    let server = c.server();
    let (robot_tokens, rt) = token(d, "robot.token");
    let publish = |serial: &str, bundle: &Path| {
        let index = sign_index(d, &fleet_key, "stable", serial, bundle);
        assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&index)]).status.success());
    };
    let store = d.join("store");
    let skill = d.join("launched");
    common::copy_tree(&bundles::example(), &skill);
    let _node = inbox_node(&skill, &store, &robot_tokens, &fleet_pub, &d.join("node.log"));
    let running = || http(NODE_INBOX, "GET", "/skills", Some(&rt), b"").1["running"]["version"].clone();
    assert_eq!(running(), "0.1.0");
    let node_url = format!("http://{NODE_INBOX}");
    let pulled = |words: &str| {
        let out = agent(&c, &store, &["--inbox", &node_url, "--inbox-token-file", &p(&robot_tokens)]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success() && text.contains(words),
            "should say {words:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // 0.3.0 was adapted on another robot: its gate's numbers travel in its manifest.
    let adapted = bundles::version(d, "0.3.0");
    let toml = adapted.join("skill.toml");
    let gate = "heldout_source_mse = 0.5\nheldout_adapted_mse = 0.2\nheldout_improvement = 0.6\n";
    let text = std::fs::read_to_string(&toml).unwrap().replace("method = \"imported\"", "method = \"adapted-ridge\"");
    std::fs::write(&toml, text.replace("[provenance.details]\n", &format!("[provenance.details]\n{gate}"))).unwrap();
    let b3 = bundles::pack_dir(&adapted, &fleet_key, &d.join("arm6-0.3.0.skill"), &[]);
    for (serial, version, bundle) in [("1", "0.2.0", bundles::pack(d, &fleet_key, "0.2.0", &[])), ("2", "0.3.0", b3)] {
        assert_eq!(post_bundle(&server.addr, "/catalog", &ft, &bundle).0, 201);
        publish(serial, &bundle);
        pulled(&format!("installed example-arm6 {version}"));
        assert_eq!(running(), version, "the node swapped the channel's version in");
    }
    let (_, v) = http(&server.addr, "GET", "/reports", Some(&ft), b"");
    let skill = &v["reports"][0]["node"]["node"]["skill"];
    assert_eq!(skill["version"], "0.3.0", "{v}");
    let g = &skill["gate"];
    assert_eq!((g["heldout_source_mse"].as_f64(), g["heldout_improvement"].as_f64()), (Some(0.5), Some(0.6)), "{v}");
    assert!(skill.get("dir").is_none(), "the report tells no path on the robot: {skill}");
    // The fleet rolls the channel back: the node's inbox activates the version its store has.
    publish("3", &d.join("arm6-0.2.0.skill"));
    pulled("activated example-arm6 0.2.0");
    assert_eq!(running(), "0.2.0");
    let (_, v) = http(&server.addr, "GET", "/reports", Some(&ft), b"");
    let r = &v["reports"][0];
    assert_eq!(r["node"]["running"]["version"], "0.2.0", "the report carries the node's own account: {r}");
    let node = &r["node"]["node"];
    assert!(node["ticks"].as_u64().unwrap() > 0 && node["skill_swaps"].as_u64().unwrap() >= 2, "{r}");
    let i = &node["interventions"];
    assert_eq!(i.as_object().unwrap().len(), 7, "every kind of intervention: {r}");
    let safe = i["estop"].as_u64().unwrap() + i["stale_input"].as_u64().unwrap();
    assert!(safe > 0, "no e-stop topic and no inputs: the node sent the safe action, and says so: {r}");
    assert!(r["health"]["ticks"].as_u64().is_some(), "the health a rollout judges, since the last swap: {r}");
    let stale = node["since_swap"]["stale_inputs"].as_u64().expect("stale inputs since the swap, counted apart");
    assert!(stale <= r["health"]["ticks"].as_u64().unwrap() && r["health"]["stale_inputs"] == stale, "{r}");
}

#[test]
fn a_staged_rollout_reaches_robots_wave_by_wave_and_a_halt_brings_every_robot_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let key = c.fleet_key.clone();
    let bundle = |v: &str| catalogued(&c, d, v);
    let (b2, b3) = (bundle("0.2.0"), bundle("0.3.0"));
    let first = sign_index(d, &key, "stable", "1", &b2);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&first)]).status.success());
    let rollout = |args: &[&str]| rollout(&c, args);
    let (new, back) = (sign_index(d, &key, "stable", "2", &b3), sign_index(d, &key, "stable", "3", &b2));
    let serial_for = |robot: &str| index_for(&c, robot)["serial"].as_u64().unwrap();
    let robots: Vec<String> = (0..40).map(|i| format!("arm-{i:03}")).collect();
    let in_first: Vec<&String> =
        robots.iter().filter(|r| skillgraft::fleet::channel::wave_bucket("stable", r) < 25).collect();
    assert!(!in_first.is_empty() && in_first.len() < robots.len(), "40 names spread over the waves");

    let started = rollout(&["start", "--new", &s(&new), "--back", &s(&back), "--waves", "25%,100%"]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    for r in &robots {
        let want = if in_first.contains(&r) { 2 } else { 1 };
        assert_eq!(serial_for(r), want, "{r}: the first wave (25 %) gets the new index, the others keep theirs");
    }
    let again = rollout(&["start", "--new", &s(&new), "--back", &s(&back), "--waves", "25,100"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is running"), "two rollouts of one channel at once");
    let bad = rollout(&["start", "--new", &s(&new), "--back", &s(&back), "--waves", "50,10"]);
    assert!(!bad.status.success());

    assert!(rollout(&["advance"]).status.success());
    assert!(robots.iter().all(|r| serial_for(r) == 2), "the last wave reaches every robot");
    let status = String::from_utf8_lossy(&rollout(&["status"]).stdout).to_string();
    assert!(status.contains("running at wave 2 of 2"), "{status}");
    assert!(rollout(&["advance"]).status.success());
    assert_eq!(serial_for("a-robot-that-never-said-its-name"), 2, "done: the new index is the channel's");
    assert!(
        String::from_utf8_lossy(&rollout(&["advance"]).stderr).contains("not running"),
        "a finished rollout stays finished"
    );

    // A second rollout that goes wrong: a halt sends every robot the back index, the first wave
    // included, under a serial above the new one.
    let b4 = bundle("0.4.0");
    let (new, back) = (sign_index(d, &key, "stable", "4", &b4), sign_index(d, &key, "stable", "5", &b3));
    let stale_back = sign_index(d, &key, "stable", "6", &b2);
    let wrong = rollout(&["start", "--new", &s(&new), "--back", &s(&stale_back), "--waves", "25,100"]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("must offer what the channel offers now"));
    assert!(rollout(&["start", "--new", &s(&new), "--back", &s(&back), "--waves", "25,100"]).status.success());
    assert!(in_first.iter().all(|r| serial_for(r) == 4));
    assert!(rollout(&["halt"]).status.success());
    assert!(robots.iter().all(|r| serial_for(r) == 5), "after a halt every robot gets the back index");
    let status = String::from_utf8_lossy(&rollout(&["status"]).stdout).to_string();
    assert!(status.contains("halted"), "{status}");
}

#[test]
fn an_automatic_rollout_halts_when_its_robots_do_worse_and_completes_when_they_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let (t, key) = (c.token.clone(), c.fleet_key.clone());
    let bundle = |v: &str| catalogued(&c, d, v);
    let (b2, b3, b4, b5) = (bundle("0.2.0"), bundle("0.3.0"), bundle("0.4.0"), bundle("0.5.0"));
    assert!(
        publish(&c, &["--keys", &s(&c.keys), "--index", &s(&sign_index(d, &key, "stable", "1", &b2))]).status.success()
    );
    let rollout = |args: &[&str]| rollout(&c, args);
    // Simulated robots: each polls its index, runs the version it names, and reports the
    // interventions per 1000 ticks that version causes on it; 0.5.0 causes none, but reads a
    // topic these robots publish too slowly, so half its ticks have a stale input.
    let robots: Vec<String> = (0..40).map(|i| format!("arm-{i:03}")).collect();
    let round = |bad: &str| {
        for r in &robots {
            let index = index_for(&c, r);
            let version = index["skills"][0]["version"].as_str().unwrap().to_string();
            let report = serde_json::json!({
                "robot": r, "channel": "stable", "time": "2026-12-02T00:00:00Z", "serial": index["serial"],
                "active": { "example-arm6": version }, "error": null, "node": null,
                "health": {
                    "ticks": 1000,
                    "interventions": if version == bad { 80 } else { 5 },
                    "stale_inputs": if version == "0.5.0" { 500 } else { 2 },
                },
            });
            let body = report.to_string();
            let head = format!(
                "PUT /reports/{r} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                c.server().addr,
                body.len()
            );
            assert_eq!(raw(&c.server().addr, head.as_bytes(), body.as_bytes(), false).unwrap().0, 200);
        }
    };
    let state = || {
        let v: Value = serde_json::from_str(&common::succeeds(&[
            "fleet",
            "rollout",
            "status",
            "--fleet",
            &c.url,
            "--token-file",
            c.tokens.to_str().unwrap(),
            "--channel",
            "stable",
            "--json",
        ]))
        .unwrap();
        v["rollout"].clone()
    };
    let auto = ["--waves", "25,100", "--auto", "--soak", "0s", "--threshold", "2", "--min-robots", "1"];

    // 0.3.0 is worse on these robots: the first wave's reports halt it, and every robot goes back.
    let (new, back) = (sign_index(d, &key, "stable", "2", &b3), sign_index(d, &key, "stable", "3", &b2));
    let mut args = vec!["start", "--new", new.to_str().unwrap(), "--back", back.to_str().unwrap()];
    args.extend(auto);
    assert!(rollout(&args).status.success());
    // The server judges the reports a moment after they arrive.
    let reached = |what: &str, ok: &dyn Fn(&Value) -> bool| common::wait_for(what, || Some(state()).filter(|r| ok(r)));
    round("0.3.0");
    let r = reached("the halt", &|r| r["state"] != "running");
    assert_eq!((r["state"].as_str(), r["stage"].as_u64()), (Some("halted"), Some(0)), "{r}");
    assert!(r["reason"].as_str().unwrap().contains("interventions per tick"), "{r}");
    round("0.3.0");
    let (_, _, body) = get_with(&c.server().addr, "/channels/stable?robot=arm-000", &t, "");
    assert!(String::from_utf8_lossy(&body).contains("\\\"serial\\\":3"), "every robot is back");

    // 0.4.0 does as well as 0.2.0: each round of reports moves it a wave on, then it is done.
    let (new, back) = (sign_index(d, &key, "stable", "4", &b4), sign_index(d, &key, "stable", "5", &b2));
    let mut args = vec!["start", "--new", new.to_str().unwrap(), "--back", back.to_str().unwrap()];
    args.extend(auto);
    assert!(rollout(&args).status.success());
    round("0.3.0");
    let r = reached("the next wave", &|r| r["stage"] != 0 || r["state"] != "running");
    assert_eq!(
        (&r["stage"], &r["state"]),
        (&Value::from(1), &Value::from("running")),
        "the first wave did as well: {r}"
    );
    round("0.3.0");
    assert_eq!(reached("the end", &|r| r["state"] != "running")["state"], "done");
    let (_, _, body) = get_with(&c.server().addr, "/channels/stable", &t, "");
    assert!(String::from_utf8_lossy(&body).contains("\\\"serial\\\":4"), "the new index is the channel's");

    // 0.5.0 causes no more interventions, but its robots' inputs go stale: that halts it too.
    let (new, back) = (sign_index(d, &key, "stable", "6", &b5), sign_index(d, &key, "stable", "7", &b4));
    let mut args = vec!["start", "--new", new.to_str().unwrap(), "--back", back.to_str().unwrap()];
    args.extend(auto);
    assert!(rollout(&args).status.success());
    round("0.3.0");
    let r = reached("the halt on stale inputs", &|r| r["state"] != "running");
    let why = r["reason"].as_str().unwrap();
    assert_eq!(r["state"], "halted", "{r}");
    assert!(why.contains("a stale input on 50.00 % of ticks on the new index against 0.20 %"), "{r}");
}

/// A TCP proxy to `upstream` that cuts each connection once `limit` bytes of the server's
/// answer have passed: a link that drops every large download partway.
fn cutting_proxy(upstream: String, limit: usize) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                let mut passed = 0;
                while passed < limit {
                    let Ok(n) = s_in.read(&mut buf) else { break };
                    if n == 0 {
                        break;
                    }
                    let n = n.min(limit - passed);
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    passed += n;
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
                let _ = s_in.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_download_cut_off_at_every_tenth_resumes_poll_after_poll_until_the_bundle_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let b = catalogued(&c, d, "0.2.0");
    let index = sign_index(d, &c.fleet_key, "stable", "1", &b);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&index)]).status.success());
    let size = std::fs::read(&b).unwrap().len();
    let proxy = format!("http://{}", cutting_proxy(c.server().addr.clone(), size / 10));
    let store = d.join("store");
    let part = store.join(".channel/downloads/example-arm6-0.2.0.part");
    let mut had = 0;
    let mut cuts = 0;
    loop {
        let out = common::skillgraft(&[
            "agent",
            "--fleet",
            &proxy,
            "--token-file",
            &s(&c.tokens),
            "--channel",
            "stable",
            "--root",
            &s(&c.root_pub),
            "--trust",
            &s(&c.fleet_pub),
            "--store",
            &s(&store),
            "--once",
        ]);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("installed example-arm6 0.2.0"));
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("the next poll resumes it"), "{err}");
        let have = std::fs::metadata(&part).unwrap().len();
        assert!(have > had, "each poll keeps what arrived and adds to it: {had} then {have}");
        had = have;
        cuts += 1;
        assert!(cuts < 20, "a tenth of the bundle per poll must finish in about ten polls");
    }
    assert!(cuts >= 9, "the link cut the download {cuts} times");
    assert!(!part.exists());
    let listed = common::succeeds(&["store", "list", "--store", &s(&store), "--json"]);
    assert!(listed.contains("\"active\": \"0.2.0\"") || listed.contains("\"active\":\"0.2.0\""), "{listed}");
}

#[test]
fn a_robot_refuses_an_index_held_back_past_its_expiry_and_keeps_running_what_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let b = catalogued(&c, d, "0.2.0");
    let index = d.join("brief.json");
    common::succeeds(&[
        "fleet",
        "channel",
        "sign",
        "--key",
        &s(&c.fleet_key),
        "--channel",
        "stable",
        "--serial",
        "1",
        "--valid",
        "2s",
        "--out",
        &s(&index),
        &s(&b),
    ]);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&index)]).status.success());
    let store = d.join("store");
    let first = agent(&c, &store, &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // Nothing new is published: the server keeps answering 304 with an index that runs out.
    std::thread::sleep(Duration::from_millis(2500));
    let later = agent(&c, &store, &[]);
    let err = String::from_utf8_lossy(&later.stderr);
    assert!(!later.status.success() && err.contains("expired at") && err.contains("the store is unchanged"), "{err}");
    let listed = common::succeeds(&["store", "list", "--store", &s(&store), "--json"]);
    let v: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v[0]["state"]["active"], "0.2.0", "what runs keeps running");
}

#[test]
fn two_fleet_servers_share_a_replicated_s3_store_through_node_failures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut g = common::garage::Garage::cluster(d, 3);
    let url = common::garage::Garage::url("fleet-a");
    // Server A reaches the cluster through node 0, server B through node 1.
    let c = channels_on(d, &url, &g.env(0));
    let b = serve(&c, &url, &g.env(1), &[]);
    let (a, t) = (c.server(), c.token.clone());
    let json = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
    // Garage takes `If-None-Match: *` on a put and overwrites all the same: the server finds out
    // at start and says what that leaves open.
    assert!(a.log.lock().unwrap().contains("does not refuse a conditional put"), "{}", a.log.lock().unwrap());

    // What one server takes, the other serves.
    let b2 = catalogued(&c, d, "0.2.0");
    let (status, listing) = http(&b.addr, "GET", "/catalog", Some(&t), b"");
    assert_eq!((status, listing["bundles"][0]["version"].as_str()), (200, Some("0.2.0")), "{listing}");
    let whole = std::fs::read(&b2).unwrap();
    let (status, _, body) = get_with(&b.addr, "/catalog/example-arm6/0.2.0", &t, "");
    assert_eq!((status, body == whole), (200, true));
    let half = whole.len() / 2;
    let (status, _, rest) = get_with(&b.addr, "/catalog/example-arm6/0.2.0", &t, &format!("Range: bytes={half}-\r\n"));
    assert_eq!((status, rest == whole[half..]), (206, true));
    let i1 = sign_index(d, &c.fleet_key, "stable", "1", &b2);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&i1)]).status.success());
    let (status, _, body) = get_with(&b.addr, "/channels/stable", &t, "");
    assert_eq!((status, json(&body)), (200, json(&std::fs::read(&i1).unwrap())));
    let (status, again) = http(&b.addr, "PUT", "/channels/stable", Some(&t), &std::fs::read(&i1).unwrap());
    assert_eq!((status, &again["stored"]), (200, &Value::Bool(false)), "the same index again: {again}");

    // A robot follows the channel through server B.
    let robot = d.join("robot");
    let b_url = b.url();
    let pull = |words: &str| {
        let out = agent_at(&c, &b_url, &robot, &[]);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(words), "should say {words:?}: {text}");
        out.status.success()
    };
    assert!(pull("installed example-arm6 0.2.0"));

    // Two rollouts of one channel started at once on the two servers: one runs, the other is
    // refused, and both servers report the same one.
    let b3 = catalogued(&c, d, "0.3.0");
    let (new_a, back_a) =
        (sign_index(d, &c.fleet_key, "stable", "2", &b3), sign_index(d, &c.fleet_key, "stable", "3", &b2));
    let (new_b, back_b) =
        (sign_index(d, &c.fleet_key, "stable", "4", &b3), sign_index(d, &c.fleet_key, "stable", "5", &b2));
    let start = |addr: &str, new: &Path, back: &Path| {
        let body = serde_json::json!({
            "new": json(&std::fs::read(new).unwrap()),
            "back": json(&std::fs::read(back).unwrap()),
            "waves": [50, 100],
        });
        http_json(addr, "POST", "/rollouts/stable", &t, &body)
    };
    let (ra, rb) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| start(&a.addr, &new_a, &back_a));
        let hb = sc.spawn(|| start(&b.addr, &new_b, &back_b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let serial = match (ra.0, rb.0) {
        (201, 409) => 2,
        (409, 201) => 4,
        // Each saw the other and withdrew: neither runs, and a start after them does.
        (409, 409) => {
            let (new, back) =
                (sign_index(d, &c.fleet_key, "stable", "6", &b3), sign_index(d, &c.fleet_key, "stable", "7", &b2));
            assert_eq!(start(&a.addr, &new, &back).0, 201);
            6
        }
        _ => panic!("two rollouts of one channel must not both run: {ra:?} {rb:?}"),
    };
    for server in [a, &b] {
        let (status, v) = http(&server.addr, "GET", "/rollouts/stable", Some(&t), b"");
        assert_eq!((status, v["rollout"]["new_serial"].as_u64()), (200, Some(serial)), "{v}");
    }
    // Halted through B, every robot gets the index to go back to from A.
    let (status, v) = http(&b.addr, "POST", "/rollouts/stable/halt", Some(&t), b"");
    assert_eq!((status, v["state"].as_str()), (200, Some("halted")), "{v}");
    let index: Value = {
        let (_, _, body) = get_with(&a.addr, "/channels/stable?robot=arm-1", &t, "");
        serde_json::from_str(json(&body)["payload"].as_str().unwrap()).unwrap()
    };
    assert_eq!(index["serial"].as_u64(), Some(serial + 1), "{index}");

    // One storage node down: uploads, publishing and polls go on.
    g.stop(2);
    let b4 = catalogued(&c, d, "0.4.0");
    let i10 = sign_index(d, &c.fleet_key, "stable", "10", &b4);
    assert!(publish(&c, &["--index", &s(&i10)]).status.success());
    assert!(pull("installed example-arm6 0.4.0"));

    // Two down: the store has no quorum. Each server says so, the robot keeps what it runs and
    // nothing half-arrives; once the nodes are back, the robot catches up.
    g.stop(1);
    let b5 = bundles::pack(d, &c.fleet_key, "0.5.0", &[]);
    let (status, v) = post_bundle(&a.addr, "/catalog", &t, &b5);
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("try again later"), "{v}");
    assert!(!pull("answered 503"), "the poll fails, with the store's reason");
    let active = || {
        let out = common::succeeds(&["store", "list", "--store", &s(&robot), "--json"]);
        serde_json::from_str::<Value>(&out).unwrap()[0]["state"]["active"].as_str().unwrap().to_string()
    };
    assert_eq!(active(), "0.4.0");
    g.start(1);
    g.start(2);
    common::wait_until("the store to answer both servers again", || {
        [&a.addr, &b.addr].iter().all(|s| http(s, "GET", "/keys", Some(&t), b"").0 == 200)
    });
    let (_, listing) = http(&a.addr, "GET", "/catalog", Some(&t), b"");
    let versions: Vec<&str> =
        listing["bundles"].as_array().unwrap().iter().filter_map(|e| e["version"].as_str()).collect();
    assert_eq!(versions, ["0.2.0", "0.3.0", "0.4.0"], "the refused upload left nothing: {listing}");
    assert_eq!(post_bundle(&a.addr, "/catalog", &t, &b5).0, 201);
    let i11 = sign_index(d, &c.fleet_key, "stable", "11", &b5);
    assert!(publish(&c, &["--index", &s(&i11)]).status.success());
    assert!(pull("installed example-arm6 0.5.0"));
}

#[test]
fn fleet_serve_names_a_store_it_cannot_use_and_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, fleet_pub) = bundles::keys(d, "fleet");
    let (tokens, _) = token(d, "fleet.token");
    let serve = |store: &str, env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args(["fleet", "serve", "--store", store, "--trust", &s(&fleet_pub), "--tokens", &s(&tokens)])
            .args(["--store-retry-s", "1", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = serve("gs://fleet/prod", &[]);
    assert!(err.contains("give s3://BUCKET[/PREFIX], file:///PATH or a folder's path"), "{err}");
    let err = serve("s3:///prod", &[]);
    assert!(err.contains("name the bucket"), "{err}");
    // A store nobody answers at: refused at start, with the store's error, not at a robot's poll.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let env = [
        ("AWS_ACCESS_KEY_ID", "GK0123456789abcdef01234567"),
        ("AWS_SECRET_ACCESS_KEY", "00"),
        ("AWS_REGION", "garage"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let err = serve("s3://fleet/prod", &env);
    assert!(err.contains("the fleet store s3://fleet/prod failed to list keys"), "{err}");
}

#[test]
fn a_running_agent_reports_a_change_at_once_and_an_unchanged_poll_only_every_report_every() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let t = c.token.clone();
    let b2 = catalogued(&c, d, "0.2.0");
    let i1 = sign_index(d, &c.fleet_key, "stable", "1", &b2);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&i1)]).status.success());
    let robot = d.join("robot");
    let (tokens, root, trust, store) = (s(&c.tokens), s(&c.root_pub), s(&c.fleet_pub), s(&robot));
    let agent = Server {
        child: Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args(["agent", "--fleet", &c.url, "--token-file", &tokens, "--channel", "stable", "--root", &root])
            .args(["--trust", &trust, "--store", &store, "--interval", "200ms", "--report-every", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        addr: String::new(),
        log: Default::default(),
    };
    let report = || {
        let (status, v) = http(&c.server().addr, "GET", "/reports", Some(&t), b"");
        assert_eq!(status, 200);
        v["reports"].as_array().and_then(|r| r.first().cloned())
    };
    let first = common::wait_for("the first report", || report().filter(|r| r["serial"] == 1));
    // Ten polls or so that change nothing: no report (each would be a write to the store).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(report(), Some(first), "an unchanged poll is not reported again within --report-every");
    // A new index: the poll that takes it reports it.
    let b3 = catalogued(&c, d, "0.3.0");
    let i2 = sign_index(d, &c.fleet_key, "stable", "2", &b3);
    assert!(publish(&c, &["--index", &s(&i2)]).status.success());
    let r = common::wait_for("the new serial reported", || report().filter(|r| r["serial"] == 2));
    assert_eq!(r["active"]["example-arm6"], "0.3.0", "{r}");
    drop(agent);
}

#[test]
fn an_agent_polling_slower_than_the_server_keeps_connections_polls_without_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let b2 = catalogued(&c, d, "0.2.0");
    let i1 = sign_index(d, &c.fleet_key, "stable", "1", &b2);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&i1)]).status.success());
    // A second server on the same store that closes a connection idle for a second, as many
    // proxies do after a while: the agent polls every 1.5 s, so each poll finds its last
    // connection closed.
    let quick = serve(&c, &s(&c.store), &[], &["--header-timeout-s", "1"]);
    let (tokens, root, trust, store) = (s(&c.tokens), s(&c.root_pub), s(&c.fleet_pub), s(&d.join("robot")));
    let mut agent = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(["agent", "--fleet", &quick.url(), "--token-file", &tokens, "--channel", "stable", "--root", &root])
        .args(["--trust", &trust, "--store", &store, "--interval", "1500ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let _ = agent.kill();
    let out = agent.wait_with_output().unwrap();
    let (polls, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = polls.lines().collect();
    assert!(lines.len() >= 4, "polls: {polls}\n{err}");
    assert!(lines[0].contains("installed example-arm6 0.2.0"), "{polls}");
    assert!(lines[1..].iter().all(|l| l.ends_with("up to date")), "every later poll succeeds: {polls}\n{err}");
    assert!(!err.contains("ERROR") && !err.contains("WARN"), "{err}");
}

#[test]
fn a_robots_own_token_polls_in_its_wave_and_reports_as_itself_and_can_do_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let key = c.fleet_key.clone();
    let (b2, b3) = (catalogued(&c, d, "0.2.0"), catalogued(&c, d, "0.3.0"));
    let first = sign_index(d, &key, "stable", "1", &b2);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&first)]).status.success());
    // One robot in the first wave of a 50 % rollout, one after it.
    let names: Vec<String> = (0..100).map(|i| format!("arm-{i}")).collect();
    let bucket = |r: &String| skillgraft::fleet::channel::wave_bucket("stable", r);
    let early = names.iter().find(|r| bucket(r) < 50).unwrap().clone();
    let late = names.iter().find(|r| bucket(r) >= 50).unwrap().clone();
    let (new, back) = (sign_index(d, &key, "stable", "2", &b3), sign_index(d, &key, "stable", "3", &b2));
    let started = rollout(&c, &["start", "--new", &s(&new), "--back", &s(&back), "--waves", "50%,100%"]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    // The operator makes the robot's token and adds the line the server accepts it by: the
    // running server takes it up, no restart.
    let robot_token = d.join(format!("{early}.token"));
    let out = common::skillgraft(&["keys", "token", &s(&robot_token), "--robot", &early]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with(&format!("robot {early} sha256:")) && line.lines().count() == 1, "{line}");
    let t = std::fs::read_to_string(&robot_token).unwrap().trim().to_string();
    assert!(!line.contains(&t), "the server's file holds the token's digest, not the token");
    let (server, a) = (c.server(), c.server().addr.clone());
    assert_eq!(http(&a, "GET", "/keys", Some(&t), b"").0, 401, "not yet added");
    let before_robot = std::fs::read_to_string(&c.tokens).unwrap();
    let mut file = std::fs::OpenOptions::new().append(true).open(&c.tokens).unwrap();
    file.write_all(line.as_bytes()).unwrap();
    common::wait_until("the server taking the robot's line up", || http(&a, "GET", "/keys", Some(&t), b"").0 == 200);
    let serial = |token: &str, query: &str| {
        let (status, _, body) = get_with(&a, &format!("/channels/stable{query}"), token, "");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let env: Value = serde_json::from_slice(&body).unwrap();
        serde_json::from_str::<Value>(env["payload"].as_str().unwrap()).unwrap()["serial"].as_u64().unwrap()
    };
    assert_eq!(serial(&c.token, ""), 1, "an operator asking as nobody gets the channel's index");
    assert_eq!(serial(&t, ""), 2, "the robot's token places it in its wave without asking");
    assert_eq!(serial(&t, &format!("?robot={early}")), 2);

    // The robot's agent pulls its wave's version and reports as itself.
    let store = d.join("robot-store");
    common::succeeds(&["store", "identify", "--store", &s(&store), "--robot", &early]);
    let out = agent_as(&c, &server.url(), &robot_token, &store, &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("installed example-arm6 0.3.0"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, reports) = http(&a, "GET", "/reports", Some(&c.token), b"");
    assert_eq!(status, 200);
    assert_eq!(reports["reports"][0]["robot"], early.as_str(), "{reports}");
    assert_eq!(reports["reports"][0]["active"]["example-arm6"], "0.3.0", "{reports}");

    // Everything else is refused with what the token may do, and changes nothing.
    let before = store_objects(&c.store);
    let report = |robot: &str| serde_json::json!({ "robot": robot, "channel": "stable" });
    for (method, path, body, says) in [
        ("POST", "/catalog".to_string(), std::fs::read(&b3).unwrap(), "needs an operator's token"),
        ("PUT", "/channels/stable".to_string(), std::fs::read(&new).unwrap(), "needs an operator's token"),
        ("PUT", "/keys".to_string(), std::fs::read(&c.keys).unwrap(), "needs an operator's token"),
        ("POST", "/rollouts/stable/halt".to_string(), vec![], "needs an operator's token"),
        ("POST", "/rollouts/stable/advance".to_string(), vec![], "needs an operator's token"),
        ("GET", "/rollouts/stable".to_string(), vec![], "needs an operator's token"),
        ("GET", "/reports".to_string(), vec![], "needs an operator's token"),
        ("GET", "/robots".to_string(), vec![], "needs an operator's token"),
        ("PUT", format!("/reports/{late}"), report(&late).to_string().into_bytes(), "reports as"),
        ("GET", format!("/channels/stable?robot={late}"), vec![], "polls as"),
    ] {
        let (status, answer) = http(&a, method, &path, Some(&t), &body);
        let e = answer["error"].as_str().unwrap_or_default();
        assert!(status == 403 && e.contains(says) && e.contains(early.as_str()), "{method} {path}: {status} {answer}");
    }
    assert_eq!(store_objects(&c.store), before, "a refused robot changed the store");
    // Its own report, but health no node counts: more interventions than ticks.
    let forged =
        serde_json::json!({ "robot": early, "channel": "stable", "health": { "ticks": 10, "interventions": 5000 } });
    let (status, answer) = http_json(&a, "PUT", &format!("/reports/{early}"), &t, &forged);
    assert!(status == 400 && answer["error"].as_str().unwrap().contains("than ticks"), "{answer}");
    assert_eq!(http(&a, "GET", "/rollouts/stable", Some(&c.token), b"").1["rollout"]["state"], "running");

    // Another robot's store with this token: the agent says so, and installs nothing.
    let other = d.join("other-store");
    common::succeeds(&["store", "identify", "--store", &s(&other), "--robot", &late]);
    let out = agent_as(&c, &server.url(), &robot_token, &other, &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("polls as") && e.contains(&late), "{e}");
    assert!(common::succeeds(&["store", "list", "--store", &s(&other), "--json"]).trim() == "[]");

    // A file broken by an edit is logged, and the tokens accepted before stay; deleting the
    // robot's line revokes its token, again without a restart.
    std::fs::write(&c.tokens, format!("{before_robot}{line}robot {late}\n")).unwrap();
    common::wait_until("the server saying why the file does not read", || {
        let _ = http(&a, "GET", "/health", Some(&c.token), b"");
        server.log.lock().unwrap().contains("the tokens accepted before stay")
    });
    assert_eq!(http(&a, "GET", "/keys", Some(&t), b"").0, 200);
    assert_eq!(http(&a, "GET", "/keys", Some(&c.token), b"").0, 200);
    std::fs::write(&c.tokens, &before_robot).unwrap();
    common::wait_until("the robot's token revoked", || http(&a, "GET", "/keys", Some(&t), b"").0 == 401);
    assert_eq!(http(&a, "GET", "/keys", Some(&c.token), b"").0, 200);
    std::fs::write(&c.tokens, format!("{before_robot}{line}")).unwrap();

    // An inbox takes no robot lines: a robot's token has nothing to ask of another robot.
    let e = common::fails(&[
        "inbox",
        "--store",
        &s(&d.join("inbox-store")),
        "--trust",
        &s(&c.fleet_pub),
        "--tokens",
        &s(&c.tokens),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(e.contains("`robot NAME` lines are for the fleet server"), "{e}");
}

/// Every object of a folder store with its bytes (the reports aside: a robot may write its own).
fn store_objects(store: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    common::snapshot(store).into_iter().filter(|(p, _)| !p.starts_with(store.join("reports"))).collect()
}

/// An upload whose first half is sent; `finish` sends the rest and reads the answer.
struct HalfUpload {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HalfUpload {
    fn start(addr: &str, token: &str, bundle: &[u8]) -> HalfUpload {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let head = format!(
            "POST /catalog HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
            bundle.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&bundle[..bundle.len() / 2]).unwrap();
        HalfUpload { stream, rest: bundle[bundle.len() / 2..].to_vec() }
    }

    fn finish(mut self) -> u16 {
        self.stream.write_all(&self.rest).unwrap();
        let mut answer = String::new();
        let _ = self.stream.read_to_string(&mut answer);
        answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }
}

#[test]
fn a_fleet_server_killed_mid_upload_leaves_nothing_half_stored_and_spares_the_upload_of_another_on_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = channels(d);
    // A second server on the same folder store, as two on one machine share it.
    let other = serve(&c, &s(&c.store), &[], &["--min-rate-kib", "1"]);
    let bundle = bundles::pack(d, &c.fleet_key, "0.2.0", &[]);
    let bytes = std::fs::read(&bundle).unwrap();
    let spool = c.store.join(".incoming");
    let spooled = || -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    };
    let to_killed = HalfUpload::start(&c.server().addr, &c.token, &bytes);
    let to_other = HalfUpload::start(&other.addr, &c.token, &bytes);
    common::wait_until("both half uploads spooled", || {
        let v = spooled();
        v.len() == 2 && v.iter().all(|(_, n)| *n as usize == bytes.len() / 2)
    });
    let theirs = spooled();

    drop(c.server.take());
    let restarted = serve(&c, &s(&c.store), &[], &[]);
    let left = spooled();
    assert_eq!(left.len(), 1, "the killed server's half upload is cleared at the restart: {left:?} of {theirs:?}");
    assert!(theirs.contains(&left[0]), "the live server's upload stays as it was: {left:?} of {theirs:?}");
    let (status, listed) = http(&restarted.addr, "GET", "/catalog", Some(&c.token), b"");
    assert_eq!((status, listed["bundles"].as_array().map(Vec::len)), (200, Some(0)), "{listed}");
    assert!(common::snapshot(&c.store.join("catalog")).is_empty(), "no bundle and no entry stored");
    drop(to_killed);

    assert_eq!(to_other.finish(), 201, "the other server's upload completes");
    assert_eq!(post_bundle(&restarted.addr, "/catalog", &c.token, &bundle).0, 200, "the same bundle again");
    let (status, _, got) = get_with(&restarted.addr, "/catalog/example-arm6/0.2.0", &c.token, "");
    assert_eq!((status, got == bytes), (200, true), "the bundle reads back whole");
    common::wait_until("nothing left in the spool", || spooled().is_empty());
    c.server = Some(restarted);
}

#[test]
fn a_rollout_of_a_skill_version_signs_its_indexes_here_and_refuses_what_it_cannot_vouch_for() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = channels(d);
    let (b2, b3) = (catalogued(&c, d, "0.2.0"), catalogued(&c, d, "0.3.0"));
    let first = sign_index(d, &c.fleet_key, "stable", "1", &b2);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&first)]).status.success());
    let robots: Vec<String> = (0..40).map(|i| format!("arm-{i:03}")).collect();
    let in_first: Vec<&String> =
        robots.iter().filter(|r| skillgraft::fleet::channel::wave_bucket("stable", r) < 25).collect();
    let offered = |robot: &str| {
        let i = index_for(&c, robot);
        let e = &i["skills"][0];
        (
            i["serial"].as_u64().unwrap(),
            e["version"].as_str().unwrap().to_string(),
            e["digest"].as_str().unwrap().to_string(),
        )
    };
    let digest = |b: &Path| skillgraft::fleet::channel::digest(&std::fs::read(b).unwrap());
    let (key, root, trust) = (s(&c.fleet_key), s(&c.root_pub), s(&c.fleet_pub));
    let start_trusting = |version: &str, key: &str, root: &str, trust: &str| {
        let args = ["start", "example-arm6", version, "--key", key, "--root", root, "--trust", trust];
        rollout(&c, &[&args[..], &["--waves", "25%,100%"]].concat())
    };
    let start = |version: &str, key: &str, root: &str| start_trusting(version, key, root, &trust);

    let started = start("0.3.0", &key, &root);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    for r in &robots {
        let want = match in_first.contains(&r) {
            true => (2, "0.3.0".to_string(), digest(&b3)),
            false => (1, "0.2.0".to_string(), digest(&b2)),
        };
        assert_eq!(offered(r), want, "{r}: the first wave gets the index made here, with the bundle's own digest");
    }
    assert!(rollout(&c, &["halt"]).status.success());
    assert!(robots.iter().all(|r| offered(r) == (3, "0.2.0".to_string(), digest(&b2))), "back: the channel as it was");

    // Refused, each with its reason, and the channel and the halted rollout stay as they were.
    let (stray, _) = bundles::keys(d, "stray");
    let (_, other_root) = bundles::keys(d, "other-root");
    for (version, key, root, says) in [
        ("0.9.0", key.clone(), root.clone(), "upload it first"),
        ("0.2.0", key.clone(), root.clone(), "offers example-arm6 0.2.0 already"),
        ("0.3.0", s(&stray), root.clone(), "not in the fleet's key list"),
        ("0.3.0", key.clone(), s(&other_root), "root key"),
    ] {
        let out = start(version, &key, &root);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && e.contains(says) && !e.contains("panicked"), "{version} {key}: {e}");
        assert_eq!(offered("arm-000").0, 3);
    }
    let tokens = s(&c.tokens);
    let no_root = ["fleet", "rollout", "start", "example-arm6", "0.3.0", "--key", &key, "--fleet", &c.url];
    let out = common::skillgraft(&[&no_root[..], &["--token-file", &tokens, "--channel", "stable"]].concat());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && e.contains("--root <ROOT>"), "the usage names what is missing: {e}");
    // A bundle its robots would not trust is not signed into an index.
    let (_, stray_pub) = bundles::keys(d, "stray-trust");
    let out = start_trusting("0.3.0", &key, &root, &s(&stray_pub));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("not a trusted key"), "{e}");
    assert_eq!(offered("arm-000").0, 3);
    let status = String::from_utf8_lossy(&rollout(&c, &["status"]).stdout).to_string();
    assert!(status.contains("halted"), "{status}");

    // Once halted, the same version again: a fresh rollout above the halt's serial, to done.
    assert!(start("0.3.0", &key, &root).status.success());
    assert!(rollout(&c, &["advance"]).status.success() && rollout(&c, &["advance"]).status.success());
    assert_eq!(offered("a-robot-that-never-said-its-name"), (4, "0.3.0".to_string(), digest(&b3)));

    // A rollout at serial 5 that another server withdrew (two started at once): robots may have
    // fetched 5, so no later rollout may sign it again, by hand or here.
    let withdrawn = c.store.join("rollouts/stable/00000000000000000005");
    std::fs::create_dir_all(&withdrawn).unwrap();
    std::fs::write(withdrawn.join("withdrawn.json"), b"{}").unwrap();
    let (again, again_back) =
        (sign_index(d, &c.fleet_key, "stable", "5", &b2), sign_index(d, &c.fleet_key, "stable", "6", &b3));
    let by_hand = rollout(&c, &["start", "--new", &s(&again), "--back", &s(&again_back), "--waves", "25,100"]);
    let e = String::from_utf8_lossy(&by_hand.stderr);
    assert!(!by_hand.status.success() && e.contains("used serial 5"), "{e}");
    let here = start("0.2.0", &key, &root);
    assert!(here.status.success(), "{}", String::from_utf8_lossy(&here.stderr));
    assert!(String::from_utf8_lossy(&here.stderr).contains("new index serial 6"));
    let first_wave = in_first[0].as_str();
    assert_eq!(offered(first_wave), (6, "0.2.0".to_string(), digest(&b2)));
}

#[test]
fn a_node_launched_with_a_fleet_url_follows_its_channel_by_itself_and_says_so_on_diagnostics() {
    if !common::isolated("a_node_launched_with_a_fleet_url_follows_its_channel_by_itself_and_says_so_on_diagnostics") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = channels(d);
    let (inbox_tokens, it) = token(d, "inbox.token");
    // The robot's own fleet token, added to the running server's file.
    let robot_token = d.join("arm-node.token");
    let line = common::succeeds(&["keys", "token", &s(&robot_token), "--robot", "arm-node"]);
    let mut file = std::fs::OpenOptions::new().append(true).open(&c.tokens).unwrap();
    file.write_all(line.as_bytes()).unwrap();
    let b2 = catalogued(&c, d, "0.2.0");
    let first = sign_index(d, &c.fleet_key, "stable", "1", &b2);
    assert!(publish(&c, &["--keys", &s(&c.keys), "--index", &s(&first)]).status.success());

    let store = d.join("store");
    common::succeeds(&["store", "identify", "--store", &s(&store), "--robot", "arm-node"]);
    let skill = d.join("launched");
    common::copy_tree(&bundles::example(), &skill);
    let log = d.join("node.log");
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let fleet = [
        format!("fleet_url:={}", c.url),
        format!("fleet_token_file:={}", robot_token.display()),
        format!("fleet_root:={}", c.root_pub.display()),
        "fleet_interval_s:=1.0".to_string(),
        "fleet_report_every_s:=1.0".to_string(),
    ];
    let mut node = inbox_node_with(&skill, &store, &inbox_tokens, &c.fleet_pub, &log, &fleet);
    let (_peer, diagnostics) = diagnostics_watcher();
    let fleet_value = |key: &str| {
        let mut last = None;
        for a in diagnostics.try_iter() {
            for st in a.status {
                if let Some(v) = st.values.iter().find(|v| v.key == key) {
                    last = Some(v.value.clone());
                }
            }
        }
        last
    };
    let running = || http(NODE_INBOX, "GET", "/skills", Some(&it), b"").1["running"]["version"].clone();
    common::wait_until("the node running the channel's 0.2.0", || running() == "0.2.0");

    // A new index: the node takes it up at its next poll, and swaps the version in.
    let b3 = catalogued(&c, d, "0.3.0");
    let second = sign_index(d, &c.fleet_key, "stable", "2", &b3);
    assert!(publish(&c, &["--index", &s(&second)]).status.success());
    common::wait_until("the node running the channel's 0.3.0", || running() == "0.3.0");
    let report = common::wait_for("the node's report of serial 2", || {
        let (_, v) = http(&c.server().addr, "GET", "/reports", Some(&c.token), b"");
        v["reports"].as_array()?.iter().find(|r| r["robot"] == "arm-node" && r["serial"] == 2).cloned()
    });
    assert_eq!(report["node"]["node"]["skill"]["version"], "0.3.0", "the report carries the node's health: {report}");
    assert!(report["health"]["ticks"].as_u64().is_some(), "{report}");
    common::wait_until("fleet.serial 2 on /diagnostics", || fleet_value("fleet.serial").as_deref() == Some("2"));

    // The fleet server goes away: polls fail and say why, the node runs on what it runs.
    drop(c.server.take());
    common::wait_until("a failed poll on /diagnostics", || {
        fleet_value("fleet.last_error").is_some_and(|e| !e.is_empty())
    });
    assert_eq!(running(), "0.3.0");
    assert!(node.child.try_wait().unwrap().is_none(), "the node is still running: {}", said());
    assert!(!said().contains("panicked"), "{}", said());
    drop(node);

    // What is missing or wrong stops the node at start, with the reason, and the store as it was.
    let before = common::snapshot(&store);
    let inbox = [
        format!("store_dir:={}", store.display()),
        format!("inbox_tokens:={}", inbox_tokens.display()),
        format!("inbox_trust:=['{}']", c.fleet_pub.display()),
    ];
    let refused = |params: &[String], says: &str| {
        let mut args = vec!["run".to_string(), s(&skill), "--ros-args".into()];
        for p in params {
            args.extend(["-p".to_string(), p.clone()]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args(&args)
            .env("ROS_DOMAIN_ID", common::dds_domain().to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(1) && err.contains(says) && !err.contains("panicked"), "{params:?}: {err}");
    };
    refused(&fleet[..1], "needs `store_dir`");
    refused(&["fleet_channel:=canary".to_string()], "`fleet_channel` needs `fleet_url`");
    refused(&[&inbox[..], &fleet[..1]].concat(), "needs `fleet_token_file`");
    let missing = format!("fleet_root:={}", d.join("no-root.pub").display());
    refused(&[&inbox[..], &fleet[..2], &[missing]].concat(), "no-root.pub");
    refused(
        &[&inbox[..], &fleet[..1], &fleet[2..3], &[format!("fleet_token_file:={}", s(&c.root_pub))]].concat(),
        "anyone can read it",
    );
    assert_eq!(common::snapshot(&store), before);
}
