//! Vision skills end to end: the committed vision source skill runs in tract as onnxruntime runs it
//! (tools/train_vision.py recorded onnxruntime's outputs), skillgraft's preprocessing of a raw
//! camera frame gives the tensor PyTorch trained on, `eval` and `step --image` drive it through
//! the CLI, it adapts to arm-b from camera demonstrations, and a running node refuses every kind
//! of bad camera frame, counts it, and keeps its control loop going without allocating.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use skillgraft::msg::cdr;
use skillgraft::msg::*;
use skillgraft::observe::image::ImagePipeline;
use skillgraft::ros::transport::{Qos, Transport};
use skillgraft::skill::Skill;

fn vision_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/reach-arm-a-vision")
}

fn probe() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision/probe.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn the_vision_skill_runs_in_tract_as_in_onnxruntime_on_skillgraft_preprocessed_frames() {
    let mut skill = Skill::load(&vision_dir()).unwrap();
    let p = probe();
    let camera = &skill.manifest.images[0];
    let (h, w) = (p["camera"]["height"].as_u64().unwrap() as u32, p["camera"]["width"].as_u64().unwrap() as u32);
    let mut pipeline = ImagePipeline::new(camera);
    for (k, hex_frame) in p["camera"]["rgb8"].as_array().unwrap().iter().enumerate() {
        let frame = Image {
            header: Header::default(),
            height: h,
            width: w,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: w * 3,
            data: hex::decode(hex_frame.as_str().unwrap()).unwrap(),
        };
        let mut tensor = vec![0.0; camera.tensor_len()];
        pipeline.process_cdr(&cdr::encode(&frame).unwrap(), &mut tensor).unwrap();
        let torch = floats(&p["image"][k]);
        assert!(
            max_diff(&tensor, &torch) < 1e-4,
            "frame {k}: preprocessing differs from torch's by {}",
            max_diff(&tensor, &torch)
        );

        let state = floats(&p["state"][k]);
        let mut action = vec![0.0; 3];
        skill.model.control.step(&[&state, &torch], &mut action).unwrap();
        let ort = floats(&p["action"][k]);
        assert!(max_diff(&action, &ort) < 1e-4, "sample {k}: tract {action:?}, onnxruntime {ort:?}");
        let features = skill.model.backbone.features(&[&state, &torch], 1, 1).unwrap();
        assert!(max_diff(&features, &floats(&p["features"][k])) < 1e-4, "sample {k}: features differ");
    }
}

#[test]
fn eval_scores_the_vision_skill_on_its_own_arm_and_reports_interventions() {
    let out = common::succeeds(&[
        "eval",
        vision_dir().to_str().unwrap(),
        "--robot",
        "arm-a",
        "--reaches",
        "5",
        "--seed",
        "3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v["evaluation"];
    assert_eq!(e["score"]["reaches"], 5);
    assert!(e["score"]["success_rate"].as_f64().unwrap() >= 0.6, "the source skill must reach on arm-a: {v}");
    assert_eq!(e["rejected"]["/camera/image_raw"], 0, "{v}");
    assert!(e["interventions"].get("stale_input").is_some(), "{v}");

    let text = common::succeeds(&["eval", vision_dir().to_str().unwrap(), "--robot", "arm-c", "--reaches", "2"]);
    assert!(
        text.contains("on the simulated arm-c, 2 reaches") && text.contains("safety filter interventions"),
        "{text}"
    );
    let err = common::fails(&["eval", vision_dir().to_str().unwrap(), "--robot", "arm-z"]);
    assert!(err.contains("arm-a, arm-b, arm-c"), "{err}");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6");
    let err = common::fails(&["eval", example.to_str().unwrap()]);
    assert!(err.contains("the simulated arms do not publish") || err.contains("joint velocities"), "{err}");
}

#[test]
fn step_takes_one_picture_per_camera_input() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("arm-a.png");
    common::succeeds(&["sim", "camera", "--robot", "arm-a", "--out", png.to_str().unwrap()]);
    let skill = vision_dir();
    let obs = "-0.6,1.2,0.8,0,0,0";
    let out =
        common::succeeds(&["step", skill.to_str().unwrap(), "--obs", obs, "--image", png.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["action"].as_array().unwrap().len(), 3);
    let err = common::fails(&["step", skill.to_str().unwrap(), "--obs", obs]);
    assert!(err.contains("give one --image"), "{err}");
    std::fs::write(dir.path().join("broken.png"), &std::fs::read(&png).unwrap()[..40]).unwrap();
    let err = common::fails(&[
        "step",
        skill.to_str().unwrap(),
        "--obs",
        obs,
        "--image",
        dir.path().join("broken.png").to_str().unwrap(),
    ]);
    assert!(err.contains("broken.png"), "{err}");
}

#[test]
fn the_vision_skill_adapts_to_arm_b_from_camera_demonstrations() {
    let dir = tempfile::tempdir().unwrap();
    let demos = dir.path().join("demos");
    common::succeeds(&[
        "sim",
        "--robot",
        "arm-b",
        "--demos",
        "4",
        "--seed",
        "2000",
        "--camera",
        "--out",
        demos.to_str().unwrap(),
    ]);
    let shown = common::succeeds(&["episodes", "show", demos.join("sim-arm-b-000.mcap").to_str().unwrap()]);
    assert!(shown.contains("/camera/image_raw"), "{shown}");
    let adapted = dir.path().join("adapted");
    let out = common::skillgraft(&[
        "adapt",
        vision_dir().to_str().unwrap(),
        demos.to_str().unwrap(),
        "--out",
        adapted.to_str().unwrap(),
        "--method",
        "finetune",
    ]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let skill = Skill::load(&adapted).unwrap();
    assert_eq!(skill.manifest.images, Skill::load(&vision_dir()).unwrap().manifest.images, "the camera input is kept");
    assert!(skill.manifest.provenance.method.starts_with("adapted-"), "{:?}", skill.manifest.provenance);
}

/// A running node fed a camera stream over DDS with every kind of bad frame among good ones.
#[test]
fn a_node_refuses_bad_camera_frames_counts_them_and_keeps_its_loop() {
    if !common::isolated("a_node_refuses_bad_camera_frames_counts_them_and_keeps_its_loop") {
        return;
    }
    let skill = Skill::load(&vision_dir()).unwrap();
    let (node, peer) = common::node_with_peer(skill, &["estop_wait_s:=0.0", "diagnostics_period_s:=0.2"]);
    let actions = common::collect::<Float64MultiArray>(&peer, "/arm/cmd", Qos { depth: 1000, ..Qos::RELIABLE });
    let diagnostics = common::collect::<DiagnosticArray>(&peer, "/diagnostics", Qos::RELIABLE);
    let mut joints = peer.publisher("/joint_states", JointState::TYPE, Qos::SENSOR_DATA).unwrap();
    let mut camera = peer.publisher("/camera/image_raw", Image::TYPE, Qos::SENSOR_DATA).unwrap();
    let robot = skillgraft::sim::robot("arm-a").unwrap();
    let q = robot.home;
    let good = {
        let mut frame = skillgraft::sim::episodes::camera_image(&robot.camera, 0);
        robot.camera.render(&robot, &q, [0.6, 0.1], &mut frame.data).unwrap();
        frame
    };
    let js = skillgraft::sim::episodes::joint_state(&q, &[0.0; 3], 0);
    let mut send = |frame: &Image| {
        joints.publish(&cdr::encode(&js).unwrap()).unwrap();
        camera.publish(&cdr::encode(frame).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    };
    common::wait_until("the policy's actions", || {
        send(&good);
        actions.try_iter().count() > 0 && node.stats.ticks.load(Ordering::Relaxed) > 0
    });
    let bad: Vec<(&str, Image)> = vec![
        ("resolution_changed", Image { width: 48, height: 48, step: 144, data: vec![0; 48 * 144], ..good.clone() }),
        ("encoding", Image { encoding: "mono16".into(), step: 192, data: vec![0; 96 * 192], ..good.clone() }),
        ("encoding", Image { encoding: "yuv422".into(), ..good.clone() }),
        ("size", Image { width: 0, height: 0, step: 0, data: vec![], ..good.clone() }),
        ("size", Image { data: good.data[..good.data.len() / 2].to_vec(), ..good.clone() }),
        ("too_big", Image { width: 10_000, height: 10_000, step: 30_000, data: vec![0; 64], ..good.clone() }),
    ];
    let published_before = node.stats.published.load(Ordering::Relaxed);
    let mallocs = || node.stats.control_malloc_calls.load(Ordering::Relaxed);
    let mallocs_before = mallocs();
    for (_, frame) in &bad {
        for _ in 0..3 {
            send(&good);
        }
        send(frame);
    }
    let value = |status: &DiagnosticStatus, k: &str| -> u64 {
        status.values.iter().find(|kv| kv.key == k).map(|kv| kv.value.parse().unwrap()).unwrap_or(0)
    };
    let counted = common::wait_for("every bad frame counted on /diagnostics", || {
        send(&good);
        let report = diagnostics.try_iter().last()?;
        let status = report.status.first()?.clone();
        let all = ["resolution_changed", "encoding", "size", "too_big"]
            .iter()
            .all(|k| value(&status, &format!("input./camera/image_raw.rejected.{k}")) > 0);
        all.then_some(status)
    });
    assert!(value(&counted, "input./camera/image_raw.accepted") > 10);
    // The loop kept going and the node still answers: the good frame after the bad ones is used.
    let published_after = node.stats.published.load(Ordering::Relaxed);
    assert_eq!(mallocs(), mallocs_before, "a tick of the vision skill called the system allocator");
    assert!(published_after > published_before + 10, "{published_before} -> {published_after}");
    common::wait_until("actions still flowing", || {
        send(&good);
        actions.try_iter().count() > 0
    });
    drop(node);
}

/// `bench vision --quick` on the committed vision skill: every table's rows are there, both
/// engines timed (onnxruntime through the peers' Python), and the node ran at both camera rates.
#[test]
fn the_vision_bench_prints_every_row() {
    if !common::isolated("the_vision_bench_prints_every_row") {
        return;
    }
    let python = common::ros_python().display().to_string();
    let skill = vision_dir().display().to_string();
    let text = common::succeeds(&["bench", "vision", "--skill", &skill, "--python", &python, "--quick", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<&str> = v["preprocess"].as_array().unwrap().iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(cases.len(), 4, "{v}");
    assert!(cases[0].starts_with("skill camera 96x96 rgb8 -> 64x64"), "{cases:?}");
    assert!(cases[3].contains("JPEG"), "{cases:?}");
    let inference = v["inference"].as_array().unwrap();
    let batches: Vec<u64> = inference.iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 1, 64], "{v}");
    assert!(v["onnxruntime"]["Ok"].is_string(), "onnxruntime ran: {}", v["onnxruntime"]);
    assert!(inference.iter().all(|r| r["tract_us"].as_f64().unwrap() > 0.0 && r["ort_us"].as_f64().is_some()), "{v}");
    let rates: Vec<f64> =
        v["control"]["rows"].as_array().unwrap().iter().map(|r| r["rate_hz"].as_f64().unwrap()).collect();
    assert_eq!(rates, [30.0, 100.0], "{v}");
    assert!(v["control"]["rows"].as_array().unwrap().iter().all(|r| r["published"].as_u64().unwrap() > 0), "{v}");
}
