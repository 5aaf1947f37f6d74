//! skillgraft in a real ROS 2 graph: an rclpy node (rclpy 9.1.2 on rmw_fastrtps_cpp, the ROS 2
//! Kilted wheels from PyPI) against `skillgraft run`, over the transport this build has: the
//! RustDDS one by default, rcl (r2r) with `--features rcl`. Each test runs inside `unshare -n`.
//! The rclpy peer sees the node in the graph by name, drives observations in and reads actions
//! out (onnxruntime says what they must be), records and adapts through the node's topics, and
//! reads and sets its parameters with rclpy's own parameter client.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Process;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn skill() -> PathBuf {
    repo().join("skills/example-arm6")
}

/// The graph layout the node's DDS transport uses in these tests: Kilted's, as the peer runs.
const DISTRO: &str = "kilted";

/// `skillgraft run|record` as a process in the ROS 2 environment, stopped with SIGINT when dropped.
fn start_node(command: &str, params: &[String], distro: &str) -> Process {
    let mut args = vec![command.to_string(), skill().display().to_string(), "--ros-args".into()];
    for p in params {
        if let Some(rule) = p.strip_prefix("-r ") {
            args.extend(["-r".to_string(), rule.to_string()]);
        } else {
            args.extend(["-p".to_string(), p.clone()]);
        }
    }
    let child = Command::new(env!("CARGO_BIN_EXE_skillgraft"))
        .args(&args)
        .envs(common::ros2_env())
        .env("ROS_DISTRO", distro)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start skillgraft");
    Process(child)
}

fn rclpy(mode: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(common::ros_python());
    c.arg(repo().join("tests/peers/dds_peer.py"))
        .args([mode, "--via", "rclpy", "--skill", skill().to_str().unwrap()])
        .args(extra)
        .envs(common::ros2_env());
    c
}

fn report(out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("rclpy peer output is not JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(r.get("error").is_none(), "rclpy peer: {r}");
    r
}

fn peer(mode: &str, extra: &[&str]) -> Value {
    report(rclpy(mode, extra).output().expect("run the rclpy peer"))
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

fn strings(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v} is not a list of strings: {e}"))
}

fn params(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Fast enough to follow a new observation within a hold, with no rate limit in the way, and
/// driving at once (no e-stop publisher here to wait for).
const FREE: [&str; 3] = ["blend_s:=0.0", "action.max_delta:=[10.0, 10.0, 10.0, 10.0, 10.0, 10.0]", "estop_wait_s:=0.0"];

#[test]
fn the_ros_graph_shows_the_node_its_topics_and_its_services() {
    if !common::isolated("the_ros_graph_shows_the_node_its_topics_and_its_services") {
        return;
    }
    let _node = start_node("run", &params(&FREE), DISTRO);
    let r = peer("graph", &[]);
    let nodes: Vec<(String, String)> = serde_json::from_value(r["nodes"].clone()).unwrap();
    assert!(nodes.contains(&("/".into(), "skillgraft".into())), "rclpy does not see /skillgraft: {nodes:?}");
    let by_node = &r["by_node"];
    let publishers = strings(&by_node["publishers"]);
    for topic in [
        "/arm/joint_velocity_cmd",
        "/diagnostics",
        "/skillgraft/demo/status",
        "/skillgraft/adapt/status",
        "/parameter_events",
    ] {
        assert!(publishers.contains(&topic.to_string()), "{topic} is not among the node's publishers: {publishers:?}");
    }
    let subscriptions = strings(&by_node["subscriptions"]);
    for topic in
        ["/joint_states", "/target", "/gripper/twist", "/estop", "/skillgraft/demo/control", "/skillgraft/adapt"]
    {
        assert!(
            subscriptions.contains(&topic.to_string()),
            "{topic} is not among the node's subscriptions: {subscriptions:?}"
        );
    }
    let services = strings(&by_node["services"]);
    for s in [
        "list_parameters",
        "describe_parameters",
        "get_parameters",
        "get_parameter_types",
        "set_parameters",
        "set_parameters_atomically",
    ] {
        assert!(services.contains(&format!("/skillgraft/{s}")), "no /skillgraft/{s}: {services:?}");
    }
}

/// One binary for Humble and Jazzy robots: the layout of the node's graph entry follows
/// `ROS_DISTRO` (or `-p ros_distro`) at run time. A Kilted node cannot read Humble's.
#[cfg(not(feature = "rcl"))]
#[test]
fn the_graph_layout_follows_the_robots_distro_at_run_time() {
    if !common::isolated("the_graph_layout_follows_the_robots_distro_at_run_time") {
        return;
    }
    {
        let _humble = start_node("run", &params(&FREE), "humble");
        let r = peer("graph", &["--wait", "4"]);
        let nodes: Vec<(String, String)> = serde_json::from_value(r["nodes"].clone()).unwrap();
        assert!(!nodes.contains(&("/".into(), "skillgraft".into())), "a Kilted peer read Humble's layout: {nodes:?}");
    }
    let mut with_param = params(&FREE);
    with_param.push("ros_distro:=jazzy".into());
    let _jazzy = start_node("run", &with_param, "humble");
    let r = peer("graph", &[]);
    let nodes: Vec<(String, String)> = serde_json::from_value(r["nodes"].clone()).unwrap();
    assert!(nodes.contains(&("/".into(), "skillgraft".into())), "-p ros_distro:=jazzy overrides ROS_DISTRO: {nodes:?}");
}

#[test]
fn actions_follow_best_effort_observations_from_rclpy() {
    if !common::isolated("actions_follow_best_effort_observations_from_rclpy") {
        return;
    }
    let (lower, upper) = ("[-0.03, -0.03, -0.03, -0.04, -0.04, -0.04]", "[0.03, 0.03, 0.03, 0.04, 0.04, 0.04]");
    let mut p = params(&FREE);
    p.push(format!("action.lower:={lower}"));
    p.push(format!("action.upper:={upper}"));
    let _node = start_node("run", &p, DISTRO);
    let r = peer("follow", &["--obs-qos", "sensor", "--lower", lower, "--upper", upper]);
    let cases = r["cases"].as_array().unwrap();
    let mut clamped = 0;
    for (i, c) in cases.iter().enumerate() {
        let (got, want) = (vec(&c["received"]), vec(&c["expected"]));
        assert!(close(&got, &want), "case {i}: the node published {got:?}, onnxruntime says {want:?}");
        clamped += (vec(&c["unclamped"]) != want) as usize;
    }
    assert!(clamped > 0, "no case exercised the limits: {r}");
}

#[test]
fn bad_observations_and_the_estop_from_rclpy_give_the_safe_action() {
    if !common::isolated("bad_observations_and_the_estop_from_rclpy_give_the_safe_action") {
        return;
    }
    let mut node = start_node("run", &params(&FREE), DISTRO);
    let r = peer("safety", &[]);
    let expected = vec(&r["expected"]);
    assert!(close(&vec(&r["good"]), &expected), "{r}");
    for kind in ["unknown_joint", "wrong_length", "not_finite", "decode", "estop_engaged"] {
        assert!(zeros(&vec(&r[kind])), "{kind}: expected the safe action, got {}", r[kind]);
    }
    assert!(close(&vec(&r["recovered"]), &expected), "after bad input: {r}");
    assert!(close(&vec(&r["estop_released"]), &expected), "after the e-stop: {r}");
    let values = &r["diagnostics"]["values"];
    for key in ["input./joint_states.rejected.decode", "interventions.estop", "input./joint_states.rejected.not_finite"]
    {
        let n: u64 = values[key].as_str().unwrap_or_else(|| panic!("{key} missing: {values}")).parse().unwrap();
        assert!(n > 0, "{key} = {n}");
    }
    assert!(node.running(), "the node must keep running");
}

#[test]
fn an_estop_engaged_before_the_node_starts_reaches_it() {
    if !common::isolated("an_estop_engaged_before_the_node_starts_reaches_it") {
        return;
    }
    let peer = rclpy("latched", &[]).stdout(Stdio::piped()).spawn().unwrap();
    // The peer has latched the e-stop when its node is up; the node joins later, and waits for
    // the e-stop topic as it does by default (Fast DDS resends the latched value within 3 s).
    std::thread::sleep(Duration::from_millis(1500));
    let _node = start_node("run", &params(&FREE[..2]), DISTRO);
    let r = report(peer.wait_with_output().unwrap());
    let engaged: Vec<Vec<f64>> = r["engaged"].as_array().unwrap().iter().map(vec).collect();
    assert!(!engaged.is_empty() && engaged.iter().all(|a| zeros(a)), "the node drove under a latched e-stop: {r}");
    assert!(close(&vec(&r["released"]), &vec(&r["expected"])), "{r}");
}

#[test]
fn an_episode_driven_by_rclpy_reads_back_in_the_python_mcap_readers() {
    if !common::isolated("an_episode_driven_by_rclpy_reads_back_in_the_python_mcap_readers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = vec![
        format!("episodes_dir:={}", dir.path().display()),
        "record_chunk_s:=0.2".into(),
        "observation_reliability:=reliable".into(),
    ];
    let mut node = start_node("record", &p, DISTRO);
    let r = peer("record", &["--seconds", "2"]);
    assert!(node.interrupt().success());
    let check = &r["check"];
    common::every_message_recorded(check);
    assert_eq!(check["metadata"]["status"], "complete");
}

#[test]
fn demonstrations_from_rclpy_adapt_the_running_skill_which_then_says_how_sure_it_is() {
    if !common::isolated("demonstrations_from_rclpy_adapt_the_running_skill_which_then_says_how_sure_it_is") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    common::teacher(dir.path());
    // No blend-in after the swap: the peer samples the adapted skill's action once, and on a
    // loaded machine that sample can fall inside the blend (it then reads 90 % of the teacher).
    let p = vec![
        "rate_hz:=100.0".into(),
        "blend_s:=0.0".into(),
        "action.max_delta:=[9.0, 9.0, 9.0, 9.0, 9.0, 9.0]".into(),
        "demo_action_topic:=/teleop/cmd".into(),
        format!("episodes_dir:={}", dir.path().join("episodes").display()),
        format!("adapted_dir:={}", dir.path().join("adapted").display()),
    ];
    let _node = start_node("run", &p, DISTRO);
    let teacher = dir.path().join("teacher");
    let r = peer("adapt", &["--teacher", teacher.to_str().unwrap(), "--method", "bayes"]);
    let status = &r["status"];
    assert_eq!(status["state"], "accepted", "{status}");
    assert_eq!(status["swapped"], true, "{status}");
    assert_eq!(status["report"]["episodes"].as_array().unwrap().len(), 3, "{status}");
    let (after, teacher, source) = (vec(&r["after"]), vec(&r["teacher"]), vec(&r["source"]));
    let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(dist(&after, &teacher) < 2e-3, "the adapted skill acts as the teacher: {after:?} vs {teacher:?}");
    assert!(dist(&after, &source) > 5e-3, "the source and the teacher must differ for this to mean anything");
    let doubt = vec(&r["uncertainty"]);
    assert_eq!(doubt.len(), 7, "the ratio, then a std per action, on ~/uncertainty: {doubt:?}");
    assert!(doubt[0] >= 1.0 && doubt[1..].iter().all(|s| *s > 0.0), "{doubt:?}");
}

#[test]
fn rclpy_lists_describes_and_sets_the_node_parameters() {
    if !common::isolated("rclpy_lists_describes_and_sets_the_node_parameters") {
        return;
    }
    let mut node = start_node("run", &params(&FREE), DISTRO);
    let r = peer("params", &[]);
    let names = strings(&r["list"]["names"]);
    for n in
        ["rate_hz", "blend_s", "action.lower", "action.upper", "action.max_delta", "estop_timeout_s", "adapt_device"]
    {
        assert!(names.contains(&n.to_string()), "{n} not listed: {names:?}");
    }
    assert!(strings(&r["list"]["prefixes"]).contains(&"action".to_string()));
    let d = &r["describe"];
    assert_eq!(d["rate_hz"]["read_only"], true, "{d}");
    assert_eq!(d["blend_s"]["read_only"], false);
    assert_eq!(d["blend_s"]["float_range"], serde_json::json!([[0.0, 60.0]]));
    assert_eq!(d["action.upper"]["type"], 8, "a double array");
    assert!(d["action.upper"]["constraints"].as_str().unwrap().contains("only within the limits it started with"));
    assert_eq!(d["rt_priority"]["int_range"], serde_json::json!([[0, 99]]));
    assert_eq!(d["no_such_parameter"]["type"], 0, "unknown names are NOT_SET");
    assert_eq!(r["types"], serde_json::json!([3, 8, 1, 0]));
    assert_eq!(r["get"]["rate_hz"], 50.0);
    assert_eq!(r["get"]["use_sim_time"], false);
    assert_eq!(vec(&r["get"]["action.upper"]), vec![1.0, 1.0, 1.0, 1.5, 1.5, 1.5]);

    assert_eq!(r["set_limits"]["successful"], true, "{}", r["set_limits"]);
    let (after, expected) = (vec(&r["after"]), vec(&r["expected_after"]));
    assert!(close(&after, &expected), "the next actions are clamped to the new limits: {after:?} vs {expected:?}");
    assert!(!close(&vec(&r["before"]), &expected), "the new limits must change the action for this to mean anything");
    let refused = &r["refused"];
    for (kind, words) in [
        ("read_only", "read-only"),
        ("wider_than_at_launch", "can only tighten"),
        ("out_of_range", "within [0, 60]"),
        ("wrong_type", "is a double; got a string"),
        ("unknown", "no parameter `colour`"),
        ("wrong_length", "has 5 values; the action has 6"),
        ("lower_above_upper", "is not below"),
    ] {
        assert_eq!(refused[kind]["successful"], false, "{kind}: {}", refused[kind]);
        let reason = refused[kind]["reason"].as_str().unwrap();
        assert!(reason.contains(words), "{kind}: {reason:?} should say {words:?}");
    }
    let kept = &r["get_after_refused"];
    assert_eq!(vec(&kept["action.upper"]), vec![0.02, 0.02, 0.02, 0.03, 0.03, 0.03], "refused sets change nothing");
    assert_eq!(kept["blend_s"], 0.0);
    assert_eq!(kept["rate_hz"], 50.0);
    assert!(close(&vec(&r["after_refused"]), &expected), "refused sets leave the actions as they were");
    assert_eq!(r["integer_for_double"]["successful"], true, "{}", r["integer_for_double"]);
    assert_eq!(r["integer_for_double"]["value"], 1.0);
    let events = r["events"].as_array().unwrap();
    let changed: Vec<String> = events.iter().flat_map(|e| strings(&e["changed"])).collect();
    assert!(changed.contains(&"action.upper".into()) && changed.contains(&"blend_s".into()), "{events:?}");
    assert!(events.iter().all(|e| e["node"] == "/skillgraft"), "{events:?}");
    assert!(!changed.contains(&"rate_hz".into()), "a refused set is no event");
    assert!(node.running());
}

/// Names resolve once, on every transport: with rules that swap two names, the node publishes
/// on the swapped name (rcl applies the process's rules itself; handing it an already remapped
/// name would swap it back).
#[test]
fn remapping_rules_apply_once_even_when_they_swap_names() {
    use skillgraft::msg::cdr;
    use skillgraft::msg::{Float64MultiArray, RosMessage};
    use skillgraft::ros::dds::{DdsConfig, DdsTransport};
    use skillgraft::ros::transport::{NodeIdentity, Qos, Transport};
    use std::sync::mpsc;

    if !common::isolated("remapping_rules_apply_once_even_when_they_swap_names") {
        return;
    }
    let mut p = params(&FREE);
    p.push("-r /arm/joint_velocity_cmd:=/cmd".into());
    p.push("-r /cmd:=/arm/joint_velocity_cmd".into());
    let _node = start_node("run", &p, DISTRO);
    let config = DdsConfig { distro: DISTRO.parse().unwrap(), ..DdsConfig::local(0).unwrap() };
    let watcher = DdsTransport::new(NodeIdentity { name: "watcher".into(), namespace: "/".into() }, &config).unwrap();
    let (tx, rx) = mpsc::channel();
    for topic in ["/cmd", "/arm/joint_velocity_cmd"] {
        let tx = tx.clone();
        watcher
            .subscribe(
                topic,
                Float64MultiArray::TYPE,
                Qos::RELIABLE,
                Box::new(move |s| {
                    let _ = tx.send((topic, cdr::decode::<Float64MultiArray>(&s.cdr, Float64MultiArray::TYPE).is_ok()));
                }),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut on_cmd = 0;
    while on_cmd < 20 {
        let (topic, ok) =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no action on /cmd");
        assert!(ok);
        assert_eq!(topic, "/cmd", "the rules were applied twice: actions on {topic}");
        on_cmd += 1;
    }
}

/// The rcl transport against the RustDDS one, both ways, with the QoS the node uses: a latched
/// e-stop engaged before the node starts reaches it, its latched status reaches a late reader,
/// reliable observations go in and reliable actions come out.
#[cfg(feature = "rcl")]
#[test]
fn the_rcl_node_and_a_rustdds_participant_talk_both_ways() {
    use skillgraft::msg::cdr;
    use skillgraft::msg::{Bool, Float64MultiArray, JointState, Point, RosMessage, StringMsg, Twist, Vector3};
    use skillgraft::ros::dds::{DdsConfig, DdsTransport};
    use skillgraft::ros::transport::{NodeIdentity, Qos, Transport};
    use std::sync::mpsc;

    if !common::isolated("the_rcl_node_and_a_rustdds_participant_talk_both_ways") {
        return;
    }
    let config = DdsConfig { distro: DISTRO.parse().unwrap(), ..DdsConfig::local(0).unwrap() };
    let dds = DdsTransport::new(NodeIdentity { name: "rustdds_peer".into(), namespace: "/".into() }, &config).unwrap();
    let mut estop = dds.publisher("/estop", Bool::TYPE, Qos::LATCHED).unwrap();
    estop.publish(&cdr::encode(&Bool { data: true }).unwrap()).unwrap();
    let mut js = dds.publisher("/joint_states", JointState::TYPE, Qos::RELIABLE).unwrap();
    let mut point = dds.publisher("/target", Point::TYPE, Qos::RELIABLE).unwrap();
    let mut twist = dds.publisher("/gripper/twist", Twist::TYPE, Qos::RELIABLE).unwrap();
    let (tx, actions) = mpsc::channel();
    dds.subscribe(
        "/arm/joint_velocity_cmd",
        Float64MultiArray::TYPE,
        Qos::RELIABLE,
        Box::new(move |s| {
            let _ = tx.send(cdr::decode::<Float64MultiArray>(&s.cdr, Float64MultiArray::TYPE).unwrap().data);
        }),
    )
    .unwrap();

    let _node = start_node("run", &params(&FREE[..2]), DISTRO);
    let (stx, status) = mpsc::channel();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut example = skillgraft::skill::Skill::load(&skill()).unwrap();
    let obs: Vec<f64> = (0..24).map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.05).collect();
    let (_, want) = example.step(&obs, &[]).unwrap();
    let want: Vec<f64> = want
        .iter()
        .enumerate()
        .map(|(i, v)| v.clamp(example.manifest.action.lower[i], example.manifest.action.upper[i]))
        .collect();
    let mut feed = |n: usize| -> Vec<Vec<f64>> {
        let mut got = Vec::new();
        for _ in 0..n {
            let m = JointState {
                name: example.manifest.observations[0].joints.clone(),
                position: obs[0..6].to_vec(),
                velocity: obs[6..12].to_vec(),
                effort: obs[12..18].to_vec(),
                ..Default::default()
            };
            js.publish(&cdr::encode(&m).unwrap()).unwrap();
            point.publish(&cdr::encode(&Point { x: obs[18], y: obs[19], z: obs[20] }).unwrap()).unwrap();
            let t = Twist { linear: Vector3 { x: obs[21], y: obs[22], z: obs[23] }, ..Default::default() };
            twist.publish(&cdr::encode(&t).unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            got.extend(actions.try_iter());
        }
        got
    };
    while feed(5).is_empty() {
        assert!(Instant::now() < deadline, "no action from the rcl node");
    }
    // A reader that joins late gets the node's latched status.
    dds.subscribe(
        "/skillgraft/demo/status",
        StringMsg::TYPE,
        Qos::LATCHED,
        Box::new(move |s| {
            let _ = stx.send(cdr::decode::<StringMsg>(&s.cdr, StringMsg::TYPE).unwrap().data);
        }),
    )
    .unwrap();
    let engaged = feed(50);
    assert!(!engaged.is_empty() && engaged.iter().all(|a| zeros(a)), "the rcl node drove under a latched e-stop");
    let text = status.recv_timeout(Duration::from_secs(10)).expect("no latched status from the rcl node");
    assert!(text.contains("\"state\":\"idle\""), "{text}");
    estop.publish(&cdr::encode(&Bool { data: false }).unwrap()).unwrap();
    let released = feed(50);
    assert!(released.last().is_some_and(|a| close(a, &want)), "{:?} vs {want:?}", released.last());
}
