//! The running node in-process, fed over real DDS on loopback (inside `unshare -n`) by a second
//! node: steady-state ticks never call the system allocator, actions equal the skill's step,
//! /diagnostics reports, a skill swap happens between ticks and blends in, and the manifest's
//! rate limit holds on every published step and is counted.

use crate::common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use skillgraft::alloc;
use skillgraft::control::skills::SwapError;
use skillgraft::msg::cdr;
use skillgraft::msg::*;
use skillgraft::node::NodeError;
use skillgraft::ros::transport::{Qos, RawPublisher, Transport};
use skillgraft::skill::{self, Skill};

const JOINTS: [&str; 6] = ["base", "shoulder", "elbow", "wrist_1", "wrist_2", "wrist_3"];

use crate::common::example;

/// The example skill with another head: same topics, other actions.
fn variant(dir: &Path) -> Skill {
    common::changed_head(dir, "variant", |m, params| {
        m.version = semver::Version::new(0, 2, 0);
        params.iter_mut().for_each(|p| p.weight *= -2.0);
    })
}

struct Feeder {
    js: Box<dyn RawPublisher>,
    point: Box<dyn RawPublisher>,
    twist: Box<dyn RawPublisher>,
}

impl Feeder {
    /// Publishers of the example skill's three inputs.
    fn new(peer: &dyn Transport) -> Feeder {
        let publisher = |topic, ty| peer.publisher(topic, ty, Qos::RELIABLE).unwrap();
        Feeder {
            js: publisher("/joint_states", JointState::TYPE),
            point: publisher("/target", Point::TYPE),
            twist: publisher("/gripper/twist", Twist::TYPE),
        }
    }

    fn send(&mut self, obs: &[f64]) {
        let js = JointState {
            name: JOINTS.iter().rev().map(|s| s.to_string()).collect(),
            position: obs[0..6].iter().rev().copied().collect(),
            velocity: obs[6..12].iter().rev().copied().collect(),
            effort: obs[12..18].iter().rev().copied().collect(),
            ..Default::default()
        };
        self.js.publish(&cdr::encode(&js).unwrap()).unwrap();
        self.point.publish(&cdr::encode(&Point { x: obs[18], y: obs[19], z: obs[20] }).unwrap()).unwrap();
        let twist = Twist { linear: Vector3 { x: obs[21], y: obs[22], z: obs[23] }, ..Default::default() };
        self.twist.publish(&cdr::encode(&twist).unwrap()).unwrap();
    }

    /// Keeps publishing `obs` at about 200 Hz for `d`, collecting the actions that arrive.
    fn hold(&mut self, obs: &[f64], d: Duration, actions: &mpsc::Receiver<Float64MultiArray>) -> Vec<Vec<f64>> {
        let end = Instant::now() + d;
        let mut got = Vec::new();
        while Instant::now() < end {
            self.send(obs);
            std::thread::sleep(Duration::from_millis(5));
            got.extend(actions.try_iter().map(|a| a.data));
        }
        got
    }
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6 + 1e-5 * y.abs())
}

#[test]
fn a_running_node_ticks_without_malloc_reports_and_swaps_skills() {
    if !common::isolated("a_running_node_ticks_without_malloc_reports_and_swaps_skills") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut reference = example();
    let mut reference_b = variant(dir.path());
    let obs: Vec<f64> = skillgraft::rng::seeded(3, 24).iter().map(|&v| v as f64 * 0.5 + 0.1).collect();
    let want_a = reference.step(&obs, &[]).unwrap().1;
    let want_b = reference_b.step(&obs, &[]).unwrap().1;
    assert!(!close(&want_a, &want_b));

    let params =
        ["rate_hz:=200.0", "blend_s:=0.1", "action.max_delta:=[9.0, 9.0, 9.0, 9.0, 9.0, 9.0]", "estop_wait_s:=0.0"];
    let (node, peer) = common::node_with_peer(example(), &params);
    // A deep history: on a loaded machine this reader may lag, and the blend after the swap lasts
    // only 20 actions.
    let actions =
        common::collect::<Float64MultiArray>(&peer, "/arm/joint_velocity_cmd", Qos { depth: 1000, ..Qos::RELIABLE });
    let diagnostics = common::collect::<DiagnosticArray>(&peer, "/diagnostics", Qos::RELIABLE);
    let mut feed = Feeder::new(&peer);

    // Until the policy's action arrives (discovery, then the blend-in; after a pause, fresh inputs).
    // The newest action, not any queued one: actions of the policy from before the inputs went
    // stale may still wait in the reader's deep history.
    let policy_runs = |feed: &mut Feeder| {
        common::wait_until("the skill's action on /arm/joint_velocity_cmd", || {
            feed.hold(&obs, Duration::from_millis(100), &actions).last().is_some_and(|a| close(a, &want_a))
        })
    };
    policy_runs(&mut feed);
    let mallocs = || node.stats.control_malloc_calls.load(Ordering::Relaxed);
    let ticks = || node.stats.ticks.load(Ordering::Relaxed);
    let (s0, ticks0, m0) = (alloc::stats(), ticks(), mallocs());
    // A window of at least 100 ticks and 50 actions, however long a loaded machine takes.
    let mut got = Vec::new();
    common::wait_until("100 ticks and 50 actions", || {
        got.extend(feed.hold(&obs, Duration::from_millis(100), &actions));
        ticks() > ticks0 + 100 && got.len() > 50
    });
    let (s1, m1) = (alloc::stats(), mallocs());
    assert!(m0 > 0, "the control thread's own counter must be live (it allocated while starting)");
    assert_eq!(m1, m0, "the control thread called the system allocator in steady state");
    assert_eq!(s1.system, s0.system, "a steady-state tick called the system allocator");
    assert_eq!(s1.carved, s0.carved, "the tick pool grew in steady state");
    assert!(s1.pooled > s0.pooled);
    assert!(got.iter().all(|a| close(a, &want_a)), "actions must equal the skill's step");

    // A report made while the inputs flow (1 Hz): keep feeding until one comes.
    diagnostics.try_iter().for_each(drop);
    let mut report = common::wait_for("a report on /diagnostics", || {
        feed.hold(&obs, Duration::from_millis(50), &actions);
        diagnostics.try_iter().last()
    });
    let status = report.status.remove(0);
    let value = |k: &str| {
        status.values.iter().find(|kv| kv.key == k).map(|kv| kv.value.clone()).unwrap_or_else(|| panic!("{k} missing"))
    };
    assert_eq!(status.name, "skillgraft: /skillgraft");
    assert_eq!(value("skill"), "example-arm6 0.1.0");
    assert!(value("rate_hz").parse::<f64>().unwrap() > 0.0);
    assert!(value("tick_latency_p99_us").parse::<f64>().unwrap() > 0.0);
    assert!(value("input./joint_states.age_ms").parse::<f64>().unwrap() < 1000.0);
    assert_eq!(value("interventions.non_finite"), "0");

    let other = skill::skeleton(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/mlp_gemm.onnx"),
        "/backbone/backbone.3/Tanh_output_0",
        None,
    )
    .unwrap();
    let incompatible = skill::write_skill(&dir.path().join("other"), &other.0, &other.1).unwrap();
    assert!(matches!(node.swap_skill(incompatible), Err(NodeError::Swap(SwapError::Incompatible(..)))));

    // Making the skills above took long enough for the inputs to go stale (the safe action,
    // from which a swap does not blend): feed fresh ones first, so the swap meets the running
    // policy, as on a robot.
    let again = variant(&dir.path().join("again"));
    policy_runs(&mut feed);
    node.swap_skill(again).unwrap();
    let mut after = Vec::new();
    common::wait_until("the swapped skill's action, then 20 more", || {
        after.extend(feed.hold(&obs, Duration::from_millis(50), &actions));
        after.iter().position(|a| close(a, &want_b)).is_some_and(|i| after.len() > i + 20)
    });
    assert_eq!(node.stats.swaps.load(Ordering::Relaxed), 1);
    let first_b = after.iter().position(|a| close(a, &want_b)).expect("the swapped skill's action arrives");
    let between = |a: &Vec<f64>| {
        a.iter().zip(&want_a).zip(&want_b).all(|((x, p), q)| (x - p.min(*q)) > -1e-9 && (p.max(*q) - x) > -1e-9)
            && !close(a, &want_a)
            && !close(a, &want_b)
    };
    assert!(after[..first_b].iter().any(between), "the swap must blend from the old skill's action");
    assert!(after[first_b..].iter().all(|a| close(a, &want_b)));
    node.stop();
}

/// The manifest's own `max_delta` (no override), no blend: from the safe action (zero) the
/// published action ramps to the policy's, each change per tick within the limit, and
/// /diagnostics counts the ticks the limiter changed.
#[test]
fn the_manifests_rate_limit_holds_every_step_and_is_counted() {
    if !common::isolated("the_manifests_rate_limit_holds_every_step_and_is_counted") {
        return;
    }
    let obs: Vec<f64> = skillgraft::rng::seeded(6, 24).iter().map(|&v| v as f64 * 8.0).collect();
    let skill = example();
    let max_delta = skill.manifest.action.max_delta.clone();
    let want = example().step(&obs, &[]).unwrap().1;
    let ticks_needed = want.iter().zip(&max_delta).map(|(a, d)| (a.abs() / d).ceil() as usize).max().unwrap();
    assert!(ticks_needed >= 5, "the policy's action must be several steps from zero: {want:?} by {max_delta:?}");

    let (node, peer) = common::node_with_peer(skill, &["rate_hz:=100.0", "blend_s:=0.0", "estop_wait_s:=0.0"]);
    // Every action in order: a gap would look like a step over the limit.
    let actions =
        common::collect::<Float64MultiArray>(&peer, "/arm/joint_velocity_cmd", Qos { depth: 1000, ..Qos::RELIABLE });
    let diagnostics = common::collect::<DiagnosticArray>(&peer, "/diagnostics", Qos::RELIABLE);
    let mut feed = Feeder::new(&peer);

    // Without inputs the node publishes the safe action: once it arrives, the whole ramp will.
    let mut got: Vec<Vec<f64>> =
        vec![common::wait_for("the safe action (zero) before any input", || actions.try_iter().last()).data];
    assert!(got[0].iter().all(|&v| v == 0.0), "{:?}", got[0]);
    common::wait_until("the policy's action after the ramp", || {
        got.extend(feed.hold(&obs, Duration::from_millis(50), &actions));
        got.iter().any(|a| close(a, &want))
    });
    let mut limited_steps = 0;
    for (k, pair) in got.windows(2).enumerate() {
        let (from, to) = (&pair[0], &pair[1]);
        // The safe action takes effect at once (inputs gone stale on a loaded machine): the
        // limit holds on every step back toward the policy's action.
        if to.iter().all(|&v| v == 0.0) {
            continue;
        }
        for (i, ((a, b), d)) in from.iter().zip(to).zip(&max_delta).enumerate() {
            assert!((b - a).abs() <= d + 1e-12, "action {k}→{}: element {i} moved {} over max_delta {d}", k + 1, b - a);
        }
        limited_steps += usize::from(from.iter().zip(to).zip(&max_delta).any(|((a, b), d)| (b - a).abs() >= d - 1e-12));
    }
    assert!(
        limited_steps >= ticks_needed - 1,
        "the ramp took {limited_steps} full steps, at least {} needed",
        ticks_needed - 1
    );

    let limited = common::wait_for("a report on /diagnostics counting rate_limited", || {
        feed.hold(&obs, Duration::from_millis(50), &actions);
        let report = diagnostics.try_iter().last()?;
        let status = report.status.into_iter().next()?;
        let value =
            status.values.iter().find(|kv| kv.key == "interventions.rate_limited")?.value.parse::<u64>().unwrap();
        (value > 0).then_some(value)
    });
    assert!(limited >= (ticks_needed - 1) as u64, "rate_limited {limited}, the ramp alone needs {}", ticks_needed - 1);
    node.stop();
}
