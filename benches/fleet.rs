//! The fleet at scale (issue 20): a Garage cluster of three nodes on 127.0.0.1, one
//! `skillgraft fleet serve` on it, and simulated robots that follow channel `stable` as the
//! agent does (conditional GETs of the key list and the index with their ETags, each new bundle
//! downloaded with resume, a report when something changed or every `--report-every-s`), in a
//! few worker processes. A bundle of `--mib` rolls out in `--waves`, each advanced once all its
//! robots run it; storage node 3 stops when the second wave begins and stays down.
//!
//! ```sh
//! cargo bench --bench fleet -- --robots 1000 --mib 50 --waves 1,10,50,100 --interval-s 10
//! ```
//!
//! The simulated robots count bytes instead of keeping them, and do not check digests or
//! signatures (the agent's checks are the integration tests'): what is measured is the fleet
//! side. Needs Garage (tools/test.sh builds it; SKILLGRAFT_GARAGE names another).

#[path = "../tests/common/garage.rs"]
mod garage;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const SKILLGRAFT: &str = env!("CARGO_BIN_EXE_skillgraft");
const CHANNEL: &str = "stable";
/// The kinds of store requests the server counts (GET /health).
const KINDS: [&str; 5] = ["get", "head", "put", "list", "delete"];
/// Environment variable that makes this binary a worker running the robots it names.
const WORKER: &str = "SKILLGRAFT_BENCH_FLEET_WORKER";

struct Opts {
    robots: usize,
    mib: u64,
    waves: Vec<u8>,
    interval: Duration,
    report_every: Duration,
    workers: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        robots: 1000,
        mib: 50,
        waves: vec![1, 10, 50, 100],
        interval: Duration::from_secs(10),
        report_every: Duration::from_secs(60),
        workers: 4,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_else(|| panic!("{} needs a value", args[i]));
        let secs = |v: String| Duration::from_secs_f64(v.parse().expect("seconds"));
        match args[i].as_str() {
            "--robots" => o.robots = value().parse().expect("a number of robots"),
            "--mib" => o.mib = value().parse().expect("MiB"),
            "--waves" => o.waves = value().split(',').map(|w| w.parse().expect("a percentage")).collect(),
            "--interval-s" => o.interval = secs(value()),
            "--report-every-s" => o.report_every = secs(value()),
            "--workers" => o.workers = value().parse().expect("a number of workers"),
            // What cargo bench passes to every bench.
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}; see the top of benches/fleet.rs"),
        }
        i += 2;
    }
    o
}

/// What a worker is told: the server, its token, its robots and their pace.
#[derive(Serialize, Deserialize)]
struct Assignment {
    url: String,
    token: String,
    robots: Vec<String>,
    interval_ms: u64,
    report_every_ms: u64,
}

/// A line a worker prints: a robot that reached a serial, or its running totals.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Event {
    Reached { robot: String, serial: u64 },
    Totals { requests: u64, failed: u64, bytes: Vec<(String, u64)>, why: Vec<(String, u64)> },
}

/// A worker's latest totals.
struct Totals {
    requests: u64,
    failed: u64,
    bytes: Vec<(String, u64)>,
    /// Failed polls by what failed.
    why: Vec<(String, u64)>,
}

fn main() {
    if let Ok(spec) = std::env::var(WORKER) {
        worker(serde_json::from_str(&spec).expect("an assignment"));
        return;
    }
    let o = opts();
    let dir = tempfile::tempdir().expect("a scratch folder");
    let d = dir.path();
    eprintln!("fleet bench: {} robots, a {} MiB bundle, waves {:?}", o.robots, o.mib, o.waves);
    let mut g = garage::Garage::cluster(d, 3);

    let cli = |args: &[&str]| {
        let out = Command::new(SKILLGRAFT).args(args).output().expect("skillgraft runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let p = |p: &Path| p.to_str().expect("UTF-8").to_string();
    let (root, fleet, tokens) = (d.join("root"), d.join("fleet"), d.join("fleet.token"));
    cli(&["keys", "new", &p(&root)]);
    cli(&["keys", "new", &p(&fleet)]);
    cli(&["keys", "token", &p(&tokens)]);
    let token = std::fs::read_to_string(&tokens).expect("the token").trim().to_string();
    let keys = d.join("keys.json");
    cli(&["fleet", "channel", "keys", "--root", &p(&root.with_extension("key"))]
        .into_iter()
        .chain(["--fleet-key", &p(&fleet.with_extension("pub")), "--version", "1", "--out", &p(&keys)])
        .collect::<Vec<_>>());

    // The fleet server, with room for every robot's connection.
    let mut server = Command::new(SKILLGRAFT)
        .args(["fleet", "serve", "--store", &garage::Garage::url("bench"), "--listen", "127.0.0.1:0"])
        .args(["--trust", &p(&fleet.with_extension("pub")), "--tokens", &p(&tokens)])
        .args(["--channel-root", &p(&root.with_extension("pub")), "--max-connections", "4096", "--uploads", "2"])
        .envs(g.env(0))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleet serve starts");
    let url = {
        let stderr = server.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("http://") {
                    let _ = tx.send(line[at..].split_whitespace().next().unwrap_or_default().to_string());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("fleet serve printed its address")
    };

    // Two versions of the example skill: the one the robots start on, and the large one.
    let skill = |version: &str, pad: u64| -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6");
        let at = d.join(format!("skill-{version}"));
        std::fs::create_dir_all(at.join("assets")).expect("a folder");
        for f in ["policy.onnx", "skill.toml"] {
            std::fs::copy(src.join(f), at.join(f)).expect("a copy");
        }
        let toml = std::fs::read_to_string(at.join("skill.toml")).expect("skill.toml");
        std::fs::write(
            at.join("skill.toml"),
            toml.replacen("version = \"0.1.0\"", &format!("version = \"{version}\""), 1),
        )
        .expect("skill.toml");
        // Incompressible, so the bundle is as large as asked.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let pad: Vec<u8> = (0..pad)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(at.join("assets/pad.bin"), pad).expect("the padding");
        let out = d.join(format!("example-arm6-{version}.skill"));
        cli(&["bundle", "pack", &p(&at), "--key", &p(&fleet.with_extension("key")), "--out", &p(&out)]);
        cli(&["fleet", "upload", &p(&out), "--fleet", &url, "--token-file", &p(&tokens)]);
        out
    };
    let small = skill("0.1.0", 0);
    let large = skill("0.2.0", o.mib << 20);
    let large_bytes = std::fs::metadata(&large).expect("the bundle").len();
    let sign = |serial: u64, bundle: &Path| {
        let out = d.join(format!("index-{serial}.json"));
        cli(&["fleet", "channel", "sign", "--key", &p(&fleet.with_extension("key")), "--channel", CHANNEL]
            .into_iter()
            .chain(["--serial", &serial.to_string(), "--out", &p(&out), &p(bundle)])
            .collect::<Vec<_>>());
        out
    };
    let first = sign(1, &small);
    cli(&["fleet", "channel", "publish", "--fleet", &url, "--token-file", &p(&tokens), "--keys", &p(&keys)]
        .into_iter()
        .chain(["--index", &p(&first)])
        .collect::<Vec<_>>());

    // The robots, in workers.
    let names: Vec<String> = (0..o.robots).map(|i| format!("robot-{i:05}")).collect();
    let reached: Arc<Mutex<HashMap<String, (u64, Instant)>>> = Default::default();
    let totals: Arc<Mutex<HashMap<usize, Totals>>> = Default::default();
    let mut workers: Vec<Child> = Vec::new();
    for w in 0..o.workers {
        let robots: Vec<String> = names.iter().skip(w).step_by(o.workers).cloned().collect();
        let a = Assignment {
            url: url.clone(),
            token: token.clone(),
            robots,
            interval_ms: o.interval.as_millis() as u64,
            report_every_ms: o.report_every.as_millis() as u64,
        };
        let mut child = Command::new(std::env::current_exe().expect("this bench"))
            .env(WORKER, serde_json::to_string(&a).expect("serialises"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("a worker starts");
        let out = child.stdout.take().expect("stdout");
        let (reached, totals) = (reached.clone(), totals.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(Event::Reached { robot, serial }) => {
                        reached.lock().unwrap().insert(robot, (serial, Instant::now()));
                    }
                    Ok(Event::Totals { requests, failed, bytes, why }) => {
                        totals.lock().unwrap().insert(w, Totals { requests, failed, bytes, why });
                    }
                    Err(_) => {}
                }
            }
        });
        workers.push(child);
    }
    let on = |serial: u64, of: &dyn Fn(&str) -> bool| {
        let r = reached.lock().unwrap();
        names.iter().filter(|n| of(n)).all(|n| r.get(n).is_some_and(|(s, _)| *s == serial))
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(3600);
        while !ok() {
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let all = |_: &str| true;
    wait("every robot on serial 1", &|| on(1, &all));
    eprintln!("fleet bench: every robot runs 0.1.0");

    let pid = server.id();
    // The coordinator's runtime runs only while it waits for an answer, so it would not see the
    // server close an idle connection: each of its requests opens its own.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let store_requests = || -> [u64; 5] {
        let (_, body) = rt.block_on(Client::new().send(Method::GET, &format!("{url}/health"), &token, None, None));
        let r = &serde_json::from_slice::<Value>(&body).unwrap_or_default()["store_requests"];
        KINDS.map(|k| r[k].as_u64().unwrap_or(0))
    };
    let poll_requests = || -> u64 { totals.lock().unwrap().values().map(|t| t.requests).sum() };
    let failed_polls = || -> u64 { totals.lock().unwrap().values().map(|t| t.failed).sum() };
    // One idle stretch: requests to the server and to the store per robot per hour, and the
    // server's CPU, while nothing changes.
    let idle = |what: &str| -> (f64, [f64; 5], f64) {
        let span = (o.interval * 4).max(o.report_every + o.interval);
        std::thread::sleep(o.interval * 2);
        let (p0, s0, c0, t0) = (poll_requests(), store_requests(), cpu_s(pid), Instant::now());
        eprintln!("fleet bench: idle ({what}) for {:.0} s", span.as_secs_f64());
        std::thread::sleep(span);
        let (p1, s1, c1, t) = (poll_requests(), store_requests(), cpu_s(pid), t0.elapsed().as_secs_f64());
        let per_hour = |n: u64| n as f64 / o.robots as f64 * 3600.0 / t;
        let store = std::array::from_fn(|k| per_hour(s1[k].saturating_sub(s0[k])));
        (per_hour(p1 - p0), store, (c1 - c0) / t * 100.0)
    };
    let idle_up = idle("three storage nodes");

    // The rollout: the large bundle in waves, each advanced once its robots all run it.
    let (new, back) = (sign(2, &large), sign(3, &small));
    let read = |p: &Path| serde_json::from_slice::<Value>(&std::fs::read(p).expect("an index")).expect("JSON");
    let start = serde_json::json!({ "new": read(&new), "back": read(&back), "waves": o.waves });
    let cpu0 = cpu_s(pid);
    let t0 = Instant::now();
    let failed0 = failed_polls();
    let (status, body) =
        rt.block_on(Client::new().send(Method::POST, &format!("{url}/rollouts/{CHANNEL}"), &token, Some(start), None));
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let mut waves = Vec::new();
    let mut node_down_at = None;
    for (k, &reach) in o.waves.iter().enumerate() {
        if k == 1 {
            g.stop(2);
            node_down_at = Some(t0.elapsed().as_secs_f64());
            eprintln!("fleet bench: storage node 3 stopped");
        }
        let in_wave = |n: &str| skillgraft::fleet::channel::wave_bucket(CHANNEL, n) < reach;
        wait(&format!("wave {}", k + 1), &|| on(2, &in_wave));
        let robots = names.iter().filter(|n| in_wave(n)).count();
        waves.push((reach, robots, t0.elapsed().as_secs_f64()));
        eprintln!("fleet bench: wave {} ({reach} %, {robots} robots) at {:.1} s", k + 1, t0.elapsed().as_secs_f64());
        let (status, body) = rt.block_on(Client::new().send(
            Method::POST,
            &format!("{url}/rollouts/{CHANNEL}/advance"),
            &token,
            None,
            None,
        ));
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    let to_all = t0.elapsed().as_secs_f64();
    let rollout_cpu = cpu_s(pid) - cpu0;
    let failed_in_rollout = failed_polls() - failed0;
    let rss_peak = status_kib(pid, "VmHWM");
    let idle_down = idle("one storage node down");

    // The robots' own totals, then the table.
    for w in &mut workers {
        drop(w.stdin.take());
    }
    for w in &mut workers {
        let _ = w.wait();
    }
    let _ = server.kill();
    let _ = server.wait();
    let mut bytes: Vec<u64> = totals.lock().unwrap().values().flat_map(|t| t.bytes.iter().map(|(_, n)| *n)).collect();
    bytes.sort_unstable();
    let median = bytes.get(bytes.len() / 2).copied().unwrap_or(0);
    let most = bytes.last().copied().unwrap_or(0);
    let mib = |n: u64| n as f64 / (1u64 << 20) as f64;

    println!(
        "\nfleet bench: {} robots in {} workers, polling every {:?} (±20 %), reporting on change or every {:?}",
        o.robots, o.workers, o.interval, o.report_every
    );
    println!(
        "a {:.1} MiB bundle rolled out over a 3-node Garage cluster on 127.0.0.1; node 3 stopped at {:.1} s\n",
        mib(large_bytes),
        node_down_at.unwrap_or(0.0)
    );
    println!("| wave | robots | all on the new version at (s) |");
    println!("|---:|---:|---:|");
    for (reach, robots, at) in &waves {
        println!("| {reach} % | {robots} | {at:.1} |");
    }
    println!("\n| measure | value |");
    println!("|---|---:|");
    println!("| time to 100 % (s) | {to_all:.1} |");
    println!("| fleet throughput during the rollout (MiB/s) | {:.1} |", mib(large_bytes) * o.robots as f64 / to_all);
    println!("| bytes served per robot, median (MiB) | {:.2} |", mib(median));
    println!("| bytes served per robot, most (MiB) | {:.2} |", mib(most));
    println!(
        "| median bytes per robot / the two bundles' size | {:.3} |",
        median as f64 / (large_bytes + std::fs::metadata(&small).map_or(0, |m| m.len())) as f64
    );
    println!("| polls that failed during the rollout | {failed_in_rollout} |");
    let mut why: HashMap<String, u64> = HashMap::new();
    for t in totals.lock().unwrap().values() {
        for (k, v) in &t.why {
            *why.entry(k.clone()).or_default() += v;
        }
    }
    let mut why: Vec<(String, u64)> = why.into_iter().collect();
    why.sort_by_key(|w| std::cmp::Reverse(w.1));
    for (k, v) in why.iter().take(4) {
        println!("| failed polls, whole run: {} | {v} |", k.replace('|', "/"));
    }
    println!("| requests to the server per robot per hour, idle | {:.1} |", idle_up.0);
    let kinds = |r: [f64; 5]| {
        let each: Vec<String> = KINDS.iter().zip(r).map(|(k, n)| format!("{k} {n:.1}")).collect();
        format!("{:.1} ({})", r.iter().sum::<f64>(), each.join(", "))
    };
    println!("| store requests per robot per hour, idle | {} |", kinds(idle_up.1));
    println!("| store requests per robot per hour, idle, one node down | {} |", kinds(idle_down.1));
    println!("| server CPU, idle (% of one core) | {:.1} |", idle_up.2);
    println!(
        "| server CPU during the rollout (s; % of one core) | {rollout_cpu:.1}; {:.0} |",
        rollout_cpu / to_all * 100.0
    );
    println!("| server peak RSS (MiB) | {:.1} |", rss_peak as f64 / 1024.0);
}

/// The process's CPU time, user and system, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / ticks
}

/// A `/proc/PID/status` figure in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:"))?.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// A keep-alive HTTP/1 client.
#[derive(Clone)]
struct Client {
    inner: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Client {
    fn new() -> Client {
        let inner = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            // As the agent's client (src/fleet/client.rs): a connection idle for longer may
            // have been closed by the server, and reusing it fails the poll.
            .pool_idle_timeout(Duration::from_secs(1))
            .build_http();
        Client { inner }
    }

    /// One request; the status and the whole body (status 0 when no answer came).
    async fn send(
        &self,
        method: Method,
        uri: &str,
        token: &str,
        json: Option<Value>,
        headers: Option<(&str, &str)>,
    ) -> (StatusCode, Bytes) {
        let mut req =
            Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some((k, v)) = headers {
            req = req.header(k, v);
        }
        let body = match json {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let Ok(resp) = self.inner.request(req.body(body).expect("a request")).await else {
            return (StatusCode::from_u16(599).expect("a status"), Bytes::new());
        };
        let status = resp.status();
        match resp.into_body().collect().await {
            Ok(b) => (status, b.to_bytes()),
            Err(_) => (StatusCode::from_u16(599).expect("a status"), Bytes::new()),
        }
    }

    /// Downloads `uri` from byte `from` on, counting what arrives without keeping it; the bytes
    /// that arrived, and whether the answer was whole (or what went wrong).
    async fn drain(&self, uri: &str, token: &str, from: u64) -> (u64, Result<(), String>) {
        let req = Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::RANGE, format!("bytes={from}-"))
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let resp = match self.inner.request(req).await {
            Ok(r) => r,
            Err(e) => return (0, Err(format!("download: no answer ({e})"))),
        };
        if !resp.status().is_success() {
            return (0, Err(format!("download: {}", resp.status())));
        }
        let mut body = resp.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return (n, Err(format!("download: cut ({e})"))),
            }
        }
        (n, Ok(()))
    }
}

/// One simulated robot's state.
#[derive(Default)]
struct Robot {
    name: String,
    keys_tag: Option<String>,
    index_tag: Option<String>,
    serial: u64,
    /// Bytes of each bundle that arrived, by "name version".
    have: HashMap<String, u64>,
    reported: Option<(u64, Instant)>,
    bytes: u64,
}

/// A worker: its robots poll until stdin closes, then it prints their totals.
fn worker(a: Assignment) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = move |e: &Event| {
        let mut o = out.lock().unwrap();
        let _ = writeln!(o, "{}", serde_json::to_string(e).expect("serialises"));
        let _ = o.flush();
    };
    rt.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bytes: Arc<Mutex<HashMap<String, u64>>> = Default::default();
        let why: Arc<Mutex<HashMap<String, u64>>> = Default::default();
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stop2.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let client = Client::new();
        let a = Arc::new(a);
        let mut tasks = Vec::new();
        for (i, name) in a.robots.iter().enumerate() {
            let (a, client, stop, say) = (a.clone(), client.clone(), stop.clone(), say.clone());
            let (requests, failed, bytes, why) = (requests.clone(), failed.clone(), bytes.clone(), why.clone());
            let mut r = Robot { name: name.clone(), ..Default::default() };
            tasks.push(tokio::spawn(async move {
                // Spread over the first interval, then every interval ±20 %.
                let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut unit = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng >> 11) as f64 / (1u64 << 53) as f64
                };
                let interval = Duration::from_millis(a.interval_ms);
                tokio::time::sleep(interval.mul_f64(unit())).await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (n, outcome) = poll(&client, &a, &mut r).await;
                    requests.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    let ok = outcome.is_ok();
                    if let Err(e) = outcome {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        *why.lock().unwrap().entry(e).or_default() += 1;
                    }
                    if ok && r.reported.is_none_or(|(s, _)| s != r.serial) {
                        say(&Event::Reached { robot: r.name.clone(), serial: r.serial });
                    }
                    let due = r.reported.is_none_or(|(s, at)| {
                        s != r.serial || at.elapsed() >= Duration::from_millis(a.report_every_ms)
                    });
                    if ok && due {
                        let report = serde_json::json!({
                            "robot": r.name, "channel": CHANNEL, "serial": r.serial, "time": "", "active": {},
                            "error": null, "health": { "ticks": 1000, "interventions": 0 },
                        });
                        let uri = format!("{}/reports/{}", a.url, r.name);
                        let (status, _) = client.send(Method::PUT, &uri, &a.token, Some(report), None).await;
                        requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if status.is_success() {
                            r.reported = Some((r.serial, Instant::now()));
                        }
                    }
                    bytes.lock().unwrap().insert(r.name.clone(), r.bytes);
                    tokio::time::sleep(interval.mul_f64(0.8 + 0.4 * unit())).await;
                }
            }));
        }
        // The worker's totals, told every half second and once more at the end.
        let tell = {
            let (requests, failed, bytes, why, say) =
                (requests.clone(), failed.clone(), bytes.clone(), why.clone(), say.clone());
            move || {
                let listed = |m: &Mutex<HashMap<String, u64>>| -> Vec<(String, u64)> {
                    m.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect()
                };
                say(&Event::Totals {
                    requests: requests.load(std::sync::atomic::Ordering::Relaxed),
                    failed: failed.load(std::sync::atomic::Ordering::Relaxed),
                    bytes: listed(&bytes),
                    why: listed(&why),
                });
            }
        };
        let totals = {
            let (tell, stop) = (tell.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tell();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        for t in tasks {
            let _ = t.await;
        }
        let _ = totals.await;
        tell();
    });
}

/// One poll, as the agent makes it: the key list and the index with the ETags the robot has,
/// then each bundle it lacks (resumed from what arrived before). Requests sent, and whether the
/// robot now runs what its index names.
async fn poll(client: &Client, a: &Assignment, r: &mut Robot) -> (u64, Result<(), String>) {
    let mut n = 0;
    let etag = |b: &Bytes| {
        use sha2::Digest;
        format!("\"{}\"", hex::encode(sha2::Sha256::digest(b)))
    };
    let tag = r.keys_tag.clone();
    let (status, body) = client
        .send(Method::GET, &format!("{}/keys", a.url), &a.token, None, tag.as_deref().map(|t| ("if-none-match", t)))
        .await;
    n += 1;
    r.bytes += body.len() as u64;
    match status {
        StatusCode::OK => r.keys_tag = Some(etag(&body)),
        StatusCode::NOT_MODIFIED => {}
        other => return (n, Err(format!("key list: {other}"))),
    }
    let tag = r.index_tag.clone();
    let uri = format!("{}/channels/{CHANNEL}?robot={}", a.url, r.name);
    let (status, body) =
        client.send(Method::GET, &uri, &a.token, None, tag.as_deref().map(|t| ("if-none-match", t))).await;
    n += 1;
    r.bytes += body.len() as u64;
    let index: skillgraft::fleet::channel::Index = match status {
        StatusCode::NOT_MODIFIED => return (n, Ok(())),
        StatusCode::OK => {
            let envelope: Value = serde_json::from_slice(&body).unwrap_or_default();
            match serde_json::from_str(envelope["payload"].as_str().unwrap_or_default()) {
                Ok(i) => i,
                Err(_) => return (n, Err("index: not an index".into())),
            }
        }
        other => return (n, Err(format!("index: {other}"))),
    };
    for s in &index.skills {
        let key = format!("{} {}", s.name, s.version);
        let have = r.have.get(&key).copied().unwrap_or(0);
        if have >= s.bytes {
            continue;
        }
        let uri = format!("{}/catalog/{}/{}", a.url, s.name, s.version);
        let (got, whole) = client.drain(&uri, &a.token, have).await;
        n += 1;
        r.bytes += got;
        r.have.insert(key, have + got);
        if whole.is_err() {
            return (n, whole);
        }
    }
    r.index_tag = Some(etag(&body));
    r.serial = index.serial;
    (n, Ok(()))
}
