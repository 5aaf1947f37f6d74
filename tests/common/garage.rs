//! A real replicated S3 store for the tests: a Garage 2.5.0 cluster on 127.0.0.1, its nodes
//! started and stopped by the test. tools/test.sh builds Garage (once, outside the clone);
//! SKILLGRAFT_GARAGE names another binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key the tests import (Garage's format: GK and 24 hex digits).
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "5d3b6e0a9c1f4e2d8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f";
/// The bucket the fleet stores in.
pub const BUCKET: &str = "fleet";

/// The Garage binary: SKILLGRAFT_GARAGE, or where tools/test.sh installs it (beside a
/// CARGO_TARGET_DIR, else in ~/.cache).
pub fn binary() -> PathBuf {
    let path = std::env::var_os("SKILLGRAFT_GARAGE").map(PathBuf::from).unwrap_or_else(|| {
        let tools = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) => PathBuf::from(t).join("ci-tools"),
            None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/skillgraft"),
        };
        tools.join("garage-2.5.0/bin/garage")
    });
    assert!(
        path.is_file(),
        "no Garage at {}: run tools/test.sh (it builds Garage 2.5.0 once) or set SKILLGRAFT_GARAGE",
        path.display()
    );
    path
}

struct Node {
    config: PathBuf,
    child: Option<Child>,
    s3: u16,
}

/// A Garage cluster whose nodes are stopped when it is dropped.
pub struct Garage {
    bin: PathBuf,
    nodes: Vec<Node>,
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Garage {
    /// Starts `n` nodes under `dir`, each in its own zone, every object on each of them (or on
    /// all three of three), with one bucket and one key.
    pub fn cluster(dir: &Path, n: usize) -> Garage {
        let bin = binary();
        let secret: String = (0..32).map(|i| format!("{:02x}", (i * 37 + 11) % 256)).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let d = dir.join(format!("garage-{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let (s3, rpc, admin) = (free_port(), free_port(), free_port());
            let config = d.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{0}/meta\"\ndata_dir = \"{0}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = {1}\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    d.display(),
                    n.min(3)
                ),
            )
            .unwrap();
            nodes.push(Node { config, child: None, s3 });
        }
        let mut g = Garage { bin, nodes };
        for i in 0..n {
            g.start(i);
        }
        let ids: Vec<String> = (0..n).map(|i| g.cli(i, &["node", "id", "-q"]).trim().to_string()).collect();
        for id in &ids[1..] {
            g.cli(0, &["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            g.cli(0, &["layout", "assign", "-z", &format!("dc{}", i + 1), "-c", "1G", short]);
        }
        g.cli(0, &["layout", "apply", "--version", "1"]);
        g.cli(0, &["key", "import", "--yes", "-n", "tests", KEY_ID, SECRET]);
        g.cli(0, &["bucket", "create", BUCKET]);
        g.cli(0, &["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "tests"]);
        g
    }

    /// Runs `garage ARGS` against node `i`, retried while the cluster settles; its stdout.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(&self.bin).arg("-c").arg(&self.nodes[i].config).args(args).output().unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(Instant::now() < deadline, "garage {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts node `i` (again), and waits until it answers.
    pub fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return;
        }
        let log = std::fs::File::create(node.config.with_file_name("log")).unwrap();
        node.child = Some(
            Command::new(&self.bin)
                .arg("-c")
                .arg(&node.config)
                .arg("server")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        self.cli(i, &["status"]);
    }

    /// Stops node `i`, as a power cut would.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3)
    }

    /// What a fleet server needs in its environment to reach the cluster through node `i`.
    pub fn env(&self, i: usize) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "garage".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint(i)),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The store URL of `prefix` in the bucket.
    pub fn url(prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }
}
