//! Adaptation inside the running node, driven over real DDS on loopback (inside `unshare -n`) the
//! way an operator drives it: demonstrations of a target-robot expert are recorded through
//! `~/demo/control`, `~/adapt` adapts the running skill on them, the accepted skill is swapped in
//! (the node's actions become the expert's) and `~/skill/rollback` returns to the source.

use crate::common;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use skillgraft::msg::cdr;
use skillgraft::msg::*;
use skillgraft::ros::dds::DdsTransport;
use skillgraft::ros::transport::{Qos, RawPublisher, Transport};
use skillgraft::skill::Skill;

const JOINTS: [&str; 6] = ["base", "shoulder", "elbow", "wrist_1", "wrist_2", "wrist_3"];

use crate::common::example;

struct Operator {
    js: Box<dyn RawPublisher>,
    point: Box<dyn RawPublisher>,
    twist: Box<dyn RawPublisher>,
    teleop: Box<dyn RawPublisher>,
    demo: Box<dyn RawPublisher>,
    adapt: Box<dyn RawPublisher>,
    rollback: Box<dyn RawPublisher>,
    actions: mpsc::Receiver<Float64MultiArray>,
    status: mpsc::Receiver<StringMsg>,
    doubt: mpsc::Receiver<Float64MultiArray>,
    _peer: DdsTransport,
}

impl Operator {
    fn observe(&mut self, obs: &[f64]) {
        let js = JointState {
            name: JOINTS.iter().map(|s| s.to_string()).collect(),
            position: obs[0..6].to_vec(),
            velocity: obs[6..12].to_vec(),
            effort: obs[12..18].to_vec(),
            ..Default::default()
        };
        self.js.publish(&cdr::encode(&js).unwrap()).unwrap();
        self.point.publish(&cdr::encode(&Point { x: obs[18], y: obs[19], z: obs[20] }).unwrap()).unwrap();
        let twist = Twist { linear: Vector3 { x: obs[21], y: obs[22], z: obs[23] }, ..Default::default() };
        self.twist.publish(&cdr::encode(&twist).unwrap()).unwrap();
    }

    /// Teleoperates like the expert: each observation is held for 30 ms and the expert's action
    /// for it is sent twice on the teleop topic while it holds.
    fn demonstrate(&mut self, expert: &mut Skill, seed: u64, steps: usize) {
        let m = expert.manifest.clone();
        let noise = skillgraft::rng::seeded(seed, steps * 24);
        for k in 0..steps {
            let obs: Vec<f64> = m
                .observations
                .iter()
                .flat_map(|o| o.mean.iter().zip(&o.std).map(|(mu, sd)| (*mu, *sd)).collect::<Vec<_>>())
                .enumerate()
                .map(|(j, (mu, sd))| mu + 0.5 * sd * noise[k * 24 + j] as f64)
                .collect();
            let (_, action) = expert.step(&obs, &[]).unwrap();
            let msg = Float64MultiArray { data: action, ..Default::default() };
            self.observe(&obs);
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(10));
                self.teleop.publish(&cdr::encode(&msg).unwrap()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Keeps publishing `obs` for `d`; returns the actions that arrived.
    fn hold(&mut self, obs: &[f64], d: Duration) -> Vec<Vec<f64>> {
        let end = Instant::now() + d;
        let mut got = Vec::new();
        while Instant::now() < end {
            self.observe(obs);
            std::thread::sleep(Duration::from_millis(5));
            got.extend(self.actions.try_iter().map(|a| a.data));
        }
        got
    }

    /// Holds `obs` until a status matches; returns it.
    fn until(&mut self, obs: &[f64], what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        common::wait_for(&format!("a status with {what}"), || {
            self.hold(obs, Duration::from_millis(20));
            self.status.try_iter().map(|s| serde_json::from_str::<Value>(&s.data).unwrap()).find(&pred)
        })
    }
}

/// The operator's topics on `peer`, as the node under test names them.
fn operator(peer: DdsTransport) -> Operator {
    Operator {
        js: peer.publisher("/joint_states", JointState::TYPE, Qos::RELIABLE).unwrap(),
        point: peer.publisher("/target", Point::TYPE, Qos::RELIABLE).unwrap(),
        twist: peer.publisher("/gripper/twist", Twist::TYPE, Qos::RELIABLE).unwrap(),
        teleop: peer.publisher("/teleop/cmd", Float64MultiArray::TYPE, Qos::RELIABLE).unwrap(),
        demo: peer.publisher("/skillgraft/demo/control", StringMsg::TYPE, Qos::RELIABLE).unwrap(),
        adapt: peer.publisher("/skillgraft/adapt", StringMsg::TYPE, Qos::RELIABLE).unwrap(),
        rollback: peer.publisher("/skillgraft/skill/rollback", StringMsg::TYPE, Qos::RELIABLE).unwrap(),
        actions: common::collect(&peer, "/arm/joint_velocity_cmd", Qos::RELIABLE),
        status: common::collect(&peer, "/skillgraft/adapt/status", Qos::LATCHED),
        doubt: common::collect(&peer, "/skillgraft/uncertainty", Qos::RELIABLE),
        _peer: peer,
    }
}

/// The node's parameters for these tests: a fast loop, no e-stop wait, teleoperation on
/// /teleop/cmd, episodes and adapted skills under `dir`, and `blend`.
fn node_params(dir: &Path, blend: &str) -> Vec<String> {
    [
        "rate_hz:=200.0",
        blend,
        "action.max_delta:=[9.0, 9.0, 9.0, 9.0, 9.0, 9.0]",
        "estop_wait_s:=0.0",
        "demo_action_topic:=/teleop/cmd",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        format!("episodes_dir:={}", dir.join("episodes").display()),
        format!("adapted_dir:={}", dir.join("adapted").display()),
    ])
    .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn a_running_node_adapts_on_request_swaps_the_skill_in_and_rolls_back() {
    if !common::isolated("a_running_node_adapts_on_request_swaps_the_skill_in_and_rolls_back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut expert = common::teacher(dir.path());
    let adapted = dir.path().join("adapted");
    let params = node_params(dir.path(), "blend_s:=0.1");
    let skill = example();
    let source_digest = skill.digest.clone();
    let (node, peer) = common::node_with_peer(skill, &params.iter().map(String::as_str).collect::<Vec<_>>());
    let mut op = operator(peer);
    let obs: Vec<f64> = skillgraft::rng::seeded(3, 24).iter().map(|&v| v as f64 * 0.3 + 0.1).collect();
    let want_source = example().step(&obs, &[]).unwrap().1;
    let want_expert = expert.step(&obs, &[]).unwrap().1;
    assert!(!close(&want_source, &want_expert, 5e-3));
    let idle = op.until(&obs, "the idle state", |s| s["state"] == "idle");
    assert_eq!(idle["skill"]["digest"], source_digest.as_str());

    // Asking before there is anything to learn from fails with the way out.
    common::say(&mut op.adapt, "ridge");
    let failed = op.until(&obs, "a failed adaptation", |s| s["state"] == "failed");
    assert!(failed["error"].as_str().unwrap().contains("record at least 2"), "{failed}");

    common::wait_until("the source skill's action", || {
        op.hold(&obs, Duration::from_millis(100)).iter().any(|a| close(a, &want_source, 1e-6))
    });
    for seed in [11, 12, 13] {
        record_one(&node, &mut op, &mut expert, &obs, seed);
    }

    common::say(&mut op.adapt, "ridge nonsense");
    let refused = op.until(&obs, "a refused request", |s| s["error"].as_str().is_some_and(|e| e.contains("key=value")));
    assert_eq!(refused["skill"]["digest"], source_digest.as_str(), "a bad request changes nothing");

    common::say(&mut op.adapt, "ridge");
    let done = op.until(&obs, "the adaptation's result", |s| {
        ["accepted", "rejected", "failed"].contains(&s["state"].as_str().unwrap())
    });
    assert_eq!(done["state"], "accepted", "{done}");
    assert_eq!(done["swapped"], true);
    assert_eq!(done["report"]["episodes"].as_array().unwrap().len(), 3);
    assert!(done["report"]["improvement"].as_f64().unwrap() > 0.9, "{done}");
    let new_dir = done["adapted"]["dir"].as_str().unwrap();
    assert!(new_dir.starts_with(adapted.to_str().unwrap()), "{new_dir}");
    let written = Skill::load(Path::new(new_dir)).unwrap();
    assert_eq!(written.manifest.provenance.parent.as_deref(), Some(source_digest.as_str()));
    assert_eq!(done["skill"]["digest"], written.digest.as_str());
    assert_eq!(done["earlier"][0]["digest"], source_digest.as_str());

    // The fit is as good as the demonstrations recorded over DDS, which a loaded machine times
    // less evenly: the adapted action must come at least 10 times closer to the expert's than the
    // source's is (a skill that was not swapped in stays at 1 time).
    let gap = |a: &[f64]| a.iter().zip(&want_expert).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let source_gap = gap(&want_source);
    common::wait_until("the adapted skill's action, 10 times closer to the expert's than the source's", || {
        op.hold(&obs, Duration::from_millis(100)).last().is_some_and(|a| gap(a) * 10.0 <= source_gap)
    });
    common::say(&mut op.rollback, "");
    let back = op.until(&obs, "the rollback", |s| s["state"] == "rolled_back");
    assert_eq!(back["skill"]["digest"], source_digest.as_str());
    common::wait_until("the source skill's action again", || {
        op.hold(&obs, Duration::from_millis(100)).last().is_some_and(|a| close(a, &want_source, 1e-6))
    });

    common::say(&mut op.rollback, "");
    let nothing =
        op.until(&obs, "a refused rollback", |s| s["error"].as_str().is_some_and(|e| e.contains("no earlier skill")));
    assert_eq!(nothing["skill"]["digest"], source_digest.as_str());
    node.stop();
}

/// Records one demonstration through `~/demo/control` and waits until it is written.
fn record_one(node: &skillgraft::node::RunningNode, op: &mut Operator, expert: &mut Skill, obs: &[f64], seed: u64) {
    let before = node.recorder_status().unwrap().episodes_written;
    let label = format!("reach-{seed}");
    common::wait_until(&format!("episode {label} to start"), || {
        if node.recorder_status().unwrap().state == "recording" {
            return true;
        }
        common::say(&mut op.demo, &format!("start {label}"));
        op.hold(obs, Duration::from_millis(200));
        false
    });
    op.demonstrate(expert, seed, 40);
    common::say(&mut op.demo, "stop");
    common::wait_until(&format!("episode {label} written"), || {
        op.hold(obs, Duration::from_millis(50));
        node.recorder_status().unwrap().episodes_written > before
    });
}

#[test]
fn a_node_in_continual_mode_adapts_live_restarts_and_slows_and_marks_where_it_is_unsure() {
    if !common::isolated("a_node_in_continual_mode_adapts_live_restarts_and_slows_and_marks_where_it_is_unsure") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut expert = common::teacher(dir.path());
    let adapted = dir.path().join("adapted");
    let params = node_params(dir.path(), "blend_s:=0.0");
    let mut args: Vec<&str> = params.iter().map(String::as_str).collect();
    args.push("continual:=true");

    let source_digest = example().digest.clone();
    let (node, peer) = common::node_with_peer(example(), &args);
    let mut op = operator(peer);
    let obs: Vec<f64> = skillgraft::rng::seeded(3, 24).iter().map(|&v| v as f64 * 0.3 + 0.1).collect();
    let want_source = example().step(&obs, &[]).unwrap().1;
    let want_expert = expert.step(&obs, &[]).unwrap().1;
    let gap = |a: &[f64]| a.iter().zip(&want_expert).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    op.until(&obs, "the idle state", |s| s["state"] == "idle");
    op.hold(&obs, Duration::from_millis(300));
    assert_eq!(op.doubt.try_iter().count(), 0, "the source has no posterior: no uncertainty is published");

    let updated = |op: &mut Operator, n: usize| {
        op.until(&obs, &format!("a continual update on {n} demonstration(s)"), |s| {
            s["request"] == "continual"
                && ["accepted", "rejected", "failed"].contains(&s["state"].as_str().unwrap())
                && s["report"]["episodes"].as_array().is_some_and(|e| e.len() == n)
        })
    };
    // The first demonstration is enough: this teacher differs from the source in the last layer.
    record_one(&node, &mut op, &mut expert, &obs, 11);
    let first = updated(&mut op, 1);
    assert_eq!(first["state"], "accepted", "{first}");
    assert_eq!(first["swapped"], true, "{first}");
    assert_eq!(first["report"]["method"], "bayes");
    let stats: Vec<_> = std::fs::read_dir(&adapted)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".continual.stats"))
        .collect();
    assert_eq!(stats.len(), 1, "the node keeps its statistics in adapted_dir: {stats:?}");
    let source_gap = gap(&want_source);
    common::wait_until("the adapted skill's action, 10 times closer to the expert's than the source's", || {
        op.hold(&obs, Duration::from_millis(100)).last().is_some_and(|a| gap(a) * 10.0 <= source_gap)
    });
    let doubt = common::wait_for("the swapped-in skill's uncertainty on ~/uncertainty", || {
        op.hold(&obs, Duration::from_millis(50));
        op.doubt.try_iter().last()
    });
    assert_eq!(doubt.data.len(), 7, "the ratio, then one std per action element: {doubt:?}");

    record_one(&node, &mut op, &mut expert, &obs, 12);
    let second = updated(&mut op, 2);
    assert_eq!(second["state"], "accepted", "{second}");
    // The second demonstration ran under the skill the first one swapped in, and says so.
    let episodes = skillgraft::record::episode::list(&dir.path().join("episodes")).unwrap();
    let reach_12 = episodes
        .iter()
        .map(|p| skillgraft::record::episode::read(p).unwrap())
        .find(|f| f.metadata.get("label").map(String::as_str) == Some("reach-12"))
        .unwrap();
    assert_eq!(reach_12.metadata["skill_digest"], first["adapted"]["digest"].as_str().unwrap());
    let running = second["adapted"]["dir"].as_str().unwrap().to_string();
    let written = Skill::load(Path::new(&running)).unwrap();
    assert_eq!(written.manifest.provenance.method, "adapted-bayes");
    assert_ne!(written.digest, source_digest);
    node.stop();

    // A restart on the adapted skill continues the same statistics (the next update holds all
    // three), and the skill brings its posterior: the node says how sure it is at every action,
    // slows where it is unsure and marks where.
    // A damaged statistics file (a power cut mid-write, a bad disk) is moved aside and the
    // statistics start again from the episodes the node recorded: nothing is lost.
    std::fs::write(&stats[0], b"SGSTATS1 torn").unwrap();
    let mut unsure = args.clone();
    unsure.extend(["uncertainty.limit:=5.0", "uncertainty.slow:=0.0", "uncertainty.mark:=5.0"]);
    let (node, peer) = common::node_with_peer(written, &unsure);
    let diagnostics = common::collect::<DiagnosticArray>(&peer, "/diagnostics", Qos::RELIABLE);
    let mut op = operator(peer);
    op.until(&obs, "the idle state", |s| s["state"] == "idle");
    let latest = |op: &mut Operator, obs: &[f64], what: &str| {
        common::wait_for(what, || {
            op.hold(obs, Duration::from_millis(100));
            op.doubt.try_iter().last()
        })
    };
    let near = latest(&mut op, &obs, "the uncertainty near the demonstrations");
    let (ratio, std) = (near.data[0], &near.data[1..]);
    assert!((1.0..3.0).contains(&ratio), "near the demonstrations the ratio is small: {near:?}");
    assert!(std.iter().all(|s| *s > 0.0 && s.is_finite()), "{near:?}");
    let mallocs = || node.stats.control_malloc_calls.load(std::sync::atomic::Ordering::Relaxed);
    let m0 = mallocs();
    op.hold(&obs, Duration::from_millis(500));
    assert_eq!(mallocs(), m0, "a tick with the posterior called the system allocator");
    let unsure_now = || node.stats.interventions.get(skillgraft::control::safety::Intervention::Uncertain);
    assert_eq!(unsure_now(), 0, "nothing is slowed near the demonstrations");

    let far: Vec<f64> = obs.iter().map(|v| v * 40.0 + 3.0).collect();
    let away = common::wait_for("a ratio above the limit (5) far from the demonstrations", || {
        op.hold(&far, Duration::from_millis(100));
        op.doubt.try_iter().find(|m| m.data[0] > 5.0)
    });
    assert!(away.data[1..].iter().zip(std).all(|(f, n)| f > n), "far {away:?} near {near:?}");
    common::wait_until("the unsure policy slowed to the safe action (uncertainty.slow 0)", || {
        op.hold(&far, Duration::from_millis(100)).last().is_some_and(|a| a.iter().all(|v| v.abs() < 1e-9))
    });
    assert!(unsure_now() > 0);
    let report = common::wait_for("/diagnostics saying the policy is unsure", || {
        op.hold(&far, Duration::from_millis(100));
        diagnostics.try_iter().flat_map(|d| d.status).find(|s| s.message.contains("unsure"))
    });
    let value = |k: &str| report.values.iter().find(|v| v.key == k).map(|v| v.value.clone()).unwrap();
    assert!(value("uncertainty.ratio_max").parse::<f64>().unwrap() > 5.0, "{report:?}");
    assert_eq!(report.level, DiagnosticStatus::WARN, "{report:?}");

    // Back near the demonstrations, the stretch ends and the recorder marks where it was.
    let marks = dir.path().join("episodes/uncertain.jsonl");
    common::wait_until("the unsure stretch marked in uncertain.jsonl", || {
        op.hold(&obs, Duration::from_millis(100));
        marks.is_file()
    });
    let text = std::fs::read_to_string(&marks).unwrap();
    let mark: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(mark["peak_ratio"].as_f64().unwrap() > 5.0, "{mark}");
    assert!(mark["seconds"].as_f64().unwrap() > 0.0 && mark["actions"].as_u64().unwrap() > 1, "{mark}");
    assert_eq!(mark["skill_digest"], node.skills().current().digest.as_str());
    let seen = mark["observation"].as_object().unwrap();
    assert_eq!(seen.len(), 24, "every observation value, by label: {mark}");
    // The three observation topics arrive one at a time, so under load the peak may fall on a
    // tick that holds far values on some topics only (such a mixed frame lies further still from
    // the demonstrations): some value is far, not necessarily the first.
    let is_far = |v: &Value| far.iter().any(|f| (v.as_f64().unwrap() - f).abs() < 1e-3);
    assert!(seen.values().any(is_far), "the observation at the peak: {mark}");
    assert_eq!(node.recorder_status().unwrap().uncertain_stretches, 1);

    record_one(&node, &mut op, &mut expert, &obs, 13);
    let third = updated(&mut op, 3);
    assert!(["accepted", "rejected"].contains(&third["state"].as_str().unwrap()), "{third}");
    assert!(stats[0].with_extension("stats.damaged").is_file(), "the damaged file is kept aside for a person");
    assert_eq!(skillgraft::adapt::continual::Continual::load(&stats[0]).unwrap().episodes.len(), 3);
    node.stop();
}
