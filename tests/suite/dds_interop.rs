//! `skillgraft run` as a ROS 2 node, against a peer nobody here wrote: CycloneDDS (Python)
//! publishes the example skill's observations over real DDS on loopback, inside a private network
//! namespace, and onnxruntime computes what the actions must be.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Process;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn skill() -> PathBuf {
    repo().join("skills/example-arm6")
}

/// The node, stopped with SIGINT when dropped.
fn start_node(params: &[&str]) -> Process {
    start_node_with(params, &[])
}

/// The node with `env` added to its environment, stopped with SIGINT when dropped.
fn start_node_with(params: &[&str], env: &[(&str, &str)]) -> Process {
    let mut args = vec!["run".to_string(), skill().display().to_string(), "--ros-args".into()];
    for p in params {
        args.push("-p".into());
        args.push(p.to_string());
    }
    let child = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(&args)
        .env("ROS_DOMAIN_ID", common::dds_domain().to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start skillgraft run");
    Process(child)
}

fn peer(mode: &str, extra: &[&str]) -> Value {
    let out = Command::new(common::ros_python())
        .arg(repo().join("tests/peers/dds_peer.py"))
        .args([mode, "--skill", skill().to_str().unwrap(), "--domain"])
        .arg(common::dds_domain().to_string())
        .args(extra)
        .env("CYCLONEDDS_URI", format!("file://{}", repo().join("tests/peers/cyclone-loopback.xml").display()))
        .output()
        .expect("run the CycloneDDS peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("peer output is not JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(report.get("error").is_none(), "peer: {report}");
    report
}

fn vec(v: &Value) -> Vec<f64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 + 1e-4 * y.abs())
}

fn zeros(a: &[f64]) -> bool {
    a.iter().all(|&x| x == 0.0)
}

#[test]
fn actions_follow_observations_from_a_cyclonedds_peer() {
    if !common::isolated("actions_follow_observations_from_a_cyclonedds_peer") {
        return;
    }
    let (lower, upper) = ("[-0.03, -0.03, -0.03, -0.04, -0.04, -0.04]", "[0.03, 0.03, 0.03, 0.04, 0.04, 0.04]");
    let _node = start_node(&[
        "blend_s:=0.0",
        "estop_wait_s:=0.0",
        "action.max_delta:=[10.0, 10.0, 10.0, 10.0, 10.0, 10.0]",
        &format!("action.lower:={lower}"),
        &format!("action.upper:={upper}"),
    ]);
    let report = peer("follow", &["--lower", lower, "--upper", upper]);
    let (lo, hi) = (vec(&serde_json::from_str(lower).unwrap()), vec(&serde_json::from_str(upper).unwrap()));
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    let mut clamped = 0;
    for (i, c) in cases.iter().enumerate() {
        let (got, want) = (vec(&c["received"]), vec(&c["expected"]));
        assert!(close(&got, &want), "case {i}: the node published {got:?}, onnxruntime says {want:?}");
        assert!(
            got.iter().enumerate().all(|(j, v)| (lo[j]..=hi[j]).contains(v)),
            "case {i}: {got:?} is outside the limits"
        );
        clamped += (vec(&c["unclamped"]) != want) as usize;
    }
    assert!(clamped > 0, "no case exercised the limits: {report}");
    let nodes: Vec<(String, String)> = serde_json::from_value(report["nodes"].clone()).unwrap();
    assert!(
        nodes.contains(&("/".into(), "skillgraft".into())),
        "the peer did not see the node in ros_discovery_info: {nodes:?}"
    );
}

#[test]
fn the_safe_action_follows_within_the_max_age_when_observations_stop() {
    if !common::isolated("the_safe_action_follows_within_the_max_age_when_observations_stop") {
        return;
    }
    let _node =
        start_node(&["blend_s:=0.0", "estop_wait_s:=0.0", "action.max_delta:=[10.0, 10.0, 10.0, 10.0, 10.0, 10.0]"]);
    let report = peer("stale", &[]);
    assert!(close(&vec(&report["before"]), &vec(&report["expected"])), "{report}");
    let after: Vec<(f64, Vec<f64>)> =
        report["after"].as_array().unwrap().iter().map(|p| (p[0].as_f64().unwrap(), vec(&p[1]))).collect();
    let first_safe = after
        .iter()
        .position(|(_, a)| zeros(a))
        .unwrap_or_else(|| panic!("no safe action after the stream stopped: {report}"));
    assert!(after[first_safe..].iter().all(|(_, a)| zeros(a)), "the safe action must hold until fresh data: {report}");
    let latency = after[first_safe].0;
    // Joint states may be 60 ms old; a 50 Hz tick notices within 20 ms more; allow for delivery.
    println!("safe action {:.0} ms after the last observation was sent", latency * 1000.0);
    assert!(latency <= 0.060 + 0.040 + 0.060, "the safe action came {latency:.3} s after the last observation");
}

#[test]
fn bad_observations_and_the_estop_give_the_safe_action_and_the_node_keeps_running() {
    if !common::isolated("bad_observations_and_the_estop_give_the_safe_action_and_the_node_keeps_running") {
        return;
    }
    let mut node =
        start_node(&["blend_s:=0.0", "estop_wait_s:=0.0", "action.max_delta:=[10.0, 10.0, 10.0, 10.0, 10.0, 10.0]"]);
    let r = peer("safety", &[]);
    let expected = vec(&r["expected"]);
    assert!(close(&vec(&r["good"]), &expected), "{r}");
    for kind in ["unknown_joint", "wrong_length", "not_finite", "decode", "estop_engaged"] {
        assert!(zeros(&vec(&r[kind])), "{kind}: expected the safe action, got {}", r[kind]);
    }
    assert!(close(&vec(&r["recovered"]), &expected), "after bad input: {r}");
    assert!(close(&vec(&r["estop_released"]), &expected), "after the e-stop: {r}");
    let values = &r["diagnostics"]["values"];
    for key in [
        "input./joint_states.rejected.unknown_joint",
        "input./joint_states.rejected.wrong_length",
        "input./joint_states.rejected.not_finite",
        "input./joint_states.rejected.decode",
        "interventions.estop",
        "interventions.stale_input",
    ] {
        let n: u64 = values[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing from /diagnostics: {values}"))
            .parse()
            .unwrap();
        assert!(n > 0, "{key} = {n}");
    }
    assert_eq!(r["diagnostics"]["name"], "skillgraft: /skillgraft");
    assert!(node.running(), "the node must keep running");
}

/// On a CycloneDDS robot (`RMW_IMPLEMENTATION=rmw_cyclonedds_cpp`), the parameter services answer
/// requests laid out the way rmw_cyclonedds sends them (a request header before the fields) and
/// echo the header, which is how the client pairs the reply with its request.
#[test]
fn parameter_services_answer_requests_laid_out_as_rmw_cyclonedds_sends_them() {
    if !common::isolated("parameter_services_answer_requests_laid_out_as_rmw_cyclonedds_sends_them") {
        return;
    }
    let _node = start_node_with(&["estop_wait_s:=0.0"], &[("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")]);
    let r = peer("service", &[]);
    assert_eq!(r["client"], true, "the request header is echoed: {r}");
    assert!(r["seq"].as_i64().unwrap() >= 42, "{r}");
    let names: Vec<String> = serde_json::from_value(r["names"].clone()).unwrap();
    assert_eq!(names, ["action.lower", "action.upper", "action.max_delta"], "{r}");
    assert_eq!(r["prefixes"], serde_json::json!(["action"]));
}

/// With `ROS_DISTRO=jazzy` the node announces itself with Iron's 16-byte ids, which a peer
/// decoding that layout reads.
#[test]
fn a_jazzy_robot_gets_the_16_byte_graph_layout() {
    if !common::isolated("a_jazzy_robot_gets_the_16_byte_graph_layout") {
        return;
    }
    let _node = start_node_with(&["estop_wait_s:=0.0"], &[("ROS_DISTRO", "jazzy")]);
    let r = peer("graph", &["--gid-len", "16"]);
    let nodes: Vec<(String, String)> = serde_json::from_value(r["nodes"].clone()).unwrap();
    assert!(nodes.contains(&("/".into(), "skillgraft".into())), "{nodes:?}");
}
