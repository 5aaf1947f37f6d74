//! Shared helpers for the integration tests: fixtures, the CLI, and a small ONNX builder.
#![allow(dead_code)]

pub mod bundles;
pub mod garage;
pub mod onnx_builder;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a wait on a state gives before it fails: generous, so a loaded machine is slow, not
/// red; a state that never comes still fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `f` every 20 ms until it returns `Some`, and returns that; fails naming `what` (and the
/// last value `f` saw, through `last`) after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up after {PATIENCE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The calling test's DDS domain: the same on every call from the test's thread, another for each
/// test of this process, so tests that share one loopback (`SKILLGRAFT_NETNS=off`, where they run
/// in parallel threads) never hear each other; inside `unshare -n` each test has the network to
/// itself anyway.
pub fn dds_domain() -> u16 {
    static TESTS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let me = std::thread::current().name().unwrap_or("main").to_string();
    let mut tests = TESTS.lock().unwrap();
    let i = tests.iter().position(|t| *t == me).unwrap_or_else(|| {
        tests.push(me);
        tests.len() - 1
    });
    // RustDDS's ports (7400 + 250 per domain) allow domains up to 232.
    assert!(i < 200, "more DDS tests in one process than domains");
    20 + i as u16
}

/// Polls `ok` until it holds; fails naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    wait_for(what, || ok().then_some(()))
}

/// The committed ONNX fixtures (exported by tools/make_fixtures.py).
pub const FIXTURES: &[&str] = &["mlp_gemm", "mlp_matmul", "conv", "mlp_wide"];

/// Path of a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx").join(name)
}

/// onnxruntime's reference for one fixture.
#[derive(serde::Deserialize)]
pub struct Reference {
    pub input_shape: Vec<usize>,
    pub input: Vec<f32>,
    pub output: Vec<f32>,
    pub output_width: usize,
    pub features_tensor: String,
    pub features: Vec<f32>,
    pub features_width: usize,
    pub head_layers: usize,
}

impl Reference {
    pub fn load(name: &str) -> Reference {
        let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn batch(&self) -> usize {
        self.input_shape[0]
    }

    pub fn input_width(&self) -> usize {
        self.input.len() / self.batch()
    }
}

/// Asserts `|a - b| <= 1e-5 * max(|b|, 1)` element-wise (1e-5 relative, absolute near zero).
pub fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_close_tol(what, a, b, 1e-5);
}

/// As `assert_close` with another tolerance.
pub fn assert_close_tol(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * y.abs().max(1.0), "{what}[{i}]: {x} vs {y} (diff {})", (x - y).abs());
    }
}

/// Runs the `skillgraft` binary.
pub fn skillgraft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skillgraft")).args(args).output().expect("run skillgraft")
}

/// Runs the CLI expecting failure; returns stderr after checking it is an error, not a panic.
pub fn fails(args: &[&str]) -> String {
    let out = skillgraft(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "expected exit 1 for {args:?}; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "no error line for {args:?}: {stderr}");
    stderr
}

/// The peer's `record` report says every message it sent on each of the four topics (more than
/// 50 each) was recorded, with the values it sent.
pub fn every_message_recorded(check: &serde_json::Value) {
    for topic in ["joint_states", "target", "twist", "action"] {
        let c = &check[topic];
        assert!(c["sent"].as_u64().unwrap() > 50, "{topic}: {c}");
        assert_eq!(c["recorded"], c["sent"], "{topic}: every message sent must be recorded: {check}");
        assert_eq!(c["equal"], true, "{topic}: the recorded values differ from what was sent");
    }
}

/// A child process (a node, the simulated arm), stopped with SIGINT when dropped, as Ctrl-C
/// stops it.
pub struct Process(pub std::process::Child);

impl Process {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// Sends SIGINT and waits for it: how it exited.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        self.0.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// Runs the CLI expecting success; returns stdout.
pub fn succeeds(args: &[&str]) -> String {
    let out = skillgraft(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Arguments of `skillgraft skill init`.
pub fn init_args<'a>(onnx: &'a Path, features: &'a str, out: &'a Path) -> [&'a str; 8] {
    ["skill", "init", "--onnx", onnx.to_str().unwrap(), "--features", features, "--out", out.to_str().unwrap()]
}

/// Makes a skill from a fixture at its reference split with `skill init`; returns the folder.
pub fn init_fixture(out: &Path, name: &str) -> PathBuf {
    let r = Reference::load(name);
    let stdout = succeeds(&init_args(&fixture(&format!("{name}.onnx")), &r.features_tensor, out));
    assert!(stdout.contains("digest sha256:"), "{stdout}");
    out.to_path_buf()
}

/// A JSON array of numbers as f32.
pub fn json_f32(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("a JSON array").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

/// The Python with the ROS peers' packages (tools/requirements-ros.txt): `SKILLGRAFT_ROS_PYTHON`,
/// or the venv tools/test.sh makes in the target folder.
pub fn ros_python() -> PathBuf {
    let p = std::env::var_os("SKILLGRAFT_ROS_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target folder").join("venv-ros/bin/python")
    });
    assert!(
        p.exists(),
        "{} not found: these tests need the Python of the ROS 2 peers; tools/test.sh makes it (and runs every test)",
        p.display()
    );
    p
}

/// The environment a process needs to use the ROS 2 installed in the peers' venv (the ROS 2
/// wheels from PyPI install a whole ROS prefix at the venv's root): the prefix, its libraries
/// (and the `ros_*.libs` folders of libraries the wheels bundle), and Fast DDS as the RMW.
pub fn ros2_env() -> Vec<(&'static str, String)> {
    let py = ros_python();
    let venv = py.parent().and_then(Path::parent).expect("the venv of the peers' python");
    let mut libs = vec![venv.join("lib")];
    for lib in std::fs::read_dir(venv.join("lib")).unwrap().map(|e| e.unwrap().path()) {
        if lib.file_name().unwrap().to_string_lossy().starts_with("python3") {
            let site = lib.join("site-packages");
            for e in std::fs::read_dir(&site).into_iter().flatten().map(|e| e.unwrap().path()) {
                let name = e.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("ros_") && name.ends_with(".libs") {
                    libs.push(e);
                }
            }
        }
    }
    let mut path: Vec<String> = libs.iter().map(|p| p.display().to_string()).collect();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
        path.push(old);
    }
    vec![
        ("AMENT_PREFIX_PATH", venv.display().to_string()),
        ("LD_LIBRARY_PATH", path.join(":")),
        ("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp".into()),
    ]
}

/// Copies a file or folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// Every file under a folder with its bytes, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if dir.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                out.extend(snapshot(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Runs the calling test again inside a private network namespace (`unshare -n`, only loopback,
/// brought up first), so no DDS traffic can leave the machine, and a private mount namespace
/// (`-m`), so a test may mount a small tmpfs. Returns true in that child, where
/// the test body runs; in the parent it asserts the child passed and returns false.
/// `SKILLGRAFT_NETNS=off` runs the body directly with `ROS_LOCALHOST_ONLY=1` instead, for
/// machines where unprivileged namespaces are not allowed.
pub fn isolated(test: &str) -> bool {
    match std::env::var("SKILLGRAFT_NETNS").as_deref() {
        Ok("inside") => return true,
        Ok("off") => {
            // SAFETY: set before any thread of this test reads the environment.
            unsafe { std::env::set_var("ROS_LOCALHOST_ONLY", "1") };
            return true;
        }
        _ => {}
    }
    // The harness names each test's thread by its full path (`module::name` in the suite), which
    // `--exact` needs.
    let me = std::thread::current().name().filter(|n| n.ends_with(&format!("::{test}"))).unwrap_or(test).to_owned();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-n", "-m", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        // --include-ignored: an ignored test runs here only when it was asked for.
        .args([me.as_str(), "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env("SKILLGRAFT_NETNS", "inside")
        .env("ROS_LOCALHOST_ONLY", "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = if stdout.contains("running 1 test") {
        ""
    } else {
        " (could not enter a private network namespace: run as root, as CI does, or set SKILLGRAFT_NETNS=off to run on loopback without one)"
    };
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed inside `unshare -n`{hint}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    print!("{stdout}");
    false
}

/// The repository's example skill (skills/example-arm6).
pub fn example() -> skillgraft::skill::Skill {
    skillgraft::skill::Skill::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6")).unwrap()
}

/// The example skill with its head (and manifest) changed by `change`, written to `dir/name`.
pub fn changed_head(
    dir: &Path,
    name: &str,
    change: impl FnOnce(&mut skillgraft::skill::Manifest, &mut [skillgraft::model::head::LayerParams]),
) -> skillgraft::skill::Skill {
    use skillgraft::model::export;
    let s = example();
    let (mut manifest, mut params) = (s.manifest.clone(), s.model.head.params.clone());
    change(&mut manifest, &mut params);
    let proto = export::with_head_params(&s.model.file, &s.model.head, &params, &[]).unwrap();
    skillgraft::skill::write_skill(&dir.join(name), &manifest, &export::encode(&proto)).unwrap()
}

/// The example skill with its last layer changed, in `dir/teacher`: the expert of a target robot,
/// whose demonstrations adaptation must recover.
pub fn teacher(dir: &Path) -> skillgraft::skill::Skill {
    changed_head(dir, "teacher", |_, params| {
        let last = params.last_mut().unwrap();
        let (rows, cols) = last.weight.shape();
        let delta = nalgebra::DMatrix::from_row_slice(rows, cols, &skillgraft::rng::seeded(77, rows * cols));
        last.weight += delta * 0.15;
        last.bias = last.bias.as_ref().map(|b| b.map(|v| v + 0.02));
    })
}

/// A running node (`skillgraft` on this test's DDS domain) with `-p` parameters `params`, and a
/// peer on the same domain to feed and watch it.
pub fn node_with_peer(
    skill: skillgraft::skill::Skill,
    params: &[&str],
) -> (skillgraft::node::RunningNode, skillgraft::ros::dds::DdsTransport) {
    use skillgraft::ros::dds::{DdsConfig, DdsTransport};
    use skillgraft::ros::transport::NodeIdentity;
    let args: Vec<String> = std::iter::once("--ros-args".to_string())
        .chain(params.iter().flat_map(|p| ["-p".to_string(), p.to_string()]))
        .collect();
    let args = skillgraft::ros::args::RosArgs::parse(&args, &[], "skillgraft").unwrap();
    let cfg = skillgraft::node::NodeConfig::new(&skill.manifest, &args).unwrap();
    let dds = |name: &str| {
        let id = NodeIdentity { name: name.into(), namespace: "/".into() };
        DdsTransport::new(id, &DdsConfig::local(dds_domain()).unwrap()).unwrap()
    };
    let node = skillgraft::node::RunningNode::start(skill, cfg, std::sync::Arc::new(dds("skillgraft"))).unwrap();
    (node, dds("peer"))
}

/// Subscribes `peer` to `topic` and hands over each message, decoded as `M`, in order.
pub fn collect<M: skillgraft::msg::RosMessage>(
    peer: &dyn skillgraft::ros::transport::Transport,
    topic: &str,
    qos: skillgraft::ros::transport::Qos,
) -> std::sync::mpsc::Receiver<M> {
    let (tx, rx) = std::sync::mpsc::channel();
    let topic_name = topic.to_string();
    peer.subscribe(
        topic,
        M::TYPE,
        qos,
        Box::new(move |s| {
            let m = skillgraft::msg::cdr::decode::<M>(&s.cdr, M::TYPE)
                .unwrap_or_else(|e| panic!("{topic_name}: not a {}: {e}", M::TYPE));
            let _ = tx.send(m);
        }),
    )
    .unwrap();
    rx
}

/// Publishes `text` as a std_msgs/String.
pub fn say(publisher: &mut Box<dyn skillgraft::ros::transport::RawPublisher>, text: &str) {
    let msg = skillgraft::msg::StringMsg { data: text.into() };
    publisher.publish(&skillgraft::msg::cdr::encode(&msg).unwrap()).unwrap();
}
