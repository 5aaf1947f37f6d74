//! The simulated arms, training from scratch, the committed source skill and the transfer
//! benchmark, driven through the CLI the way a user runs them.

use crate::common;

use std::path::Path;

use skillgraft::record::dataset;
use skillgraft::sim;
use skillgraft::sim::score::{score_skill, scored_tasks};
use skillgraft::skill::Skill;

fn source_skill() -> Skill {
    Skill::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/reach-arm-a")).unwrap()
}

#[test]
fn simulated_demonstrations_are_episodes_the_skill_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demos");
    common::succeeds(&["sim", "--robot", "arm-b", "--demos", "3", "--seed", "7", "--out", out.to_str().unwrap()]);
    let skill = source_skill();
    let eps = dataset::load(std::slice::from_ref(&out), &skill.manifest).unwrap();
    assert_eq!(eps.len(), 3);
    for e in &eps {
        assert_eq!(e.samples.len(), sim::EPISODE_TICKS, "one sample per tick: {}", e.id);
        assert_eq!(e.stale, 0);
    }
    let shown = common::succeeds(&["episodes", "show", eps[0].path.to_str().unwrap()]);
    assert!(shown.contains("/joint_states") && shown.contains("/arm/cmd"), "{shown}");
    // The same seed gives the same reaches, so the same files.
    let again = dir.path().join("again");
    common::succeeds(&["sim", "--robot", "arm-b", "--demos", "3", "--seed", "7", "--out", again.to_str().unwrap()]);
    for e in &eps {
        let twin = again.join(e.path.file_name().unwrap());
        assert_eq!(std::fs::read(&e.path).unwrap(), std::fs::read(twin).unwrap());
    }
    let err = common::fails(&["sim", "--robot", "arm-z", "--demos", "1", "--out", out.to_str().unwrap()]);
    assert!(err.contains("arm-a, arm-b, arm-c"), "{err}");
}

#[test]
fn training_from_scratch_is_reproducible_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let demos = dir.path().join("demos");
    common::succeeds(&["sim", "--robot", "arm-a", "--demos", "6", "--noise", "0.3", "--out", demos.to_str().unwrap()]);
    let train = |out: &str, seed: &str| {
        let out = dir.path().join(out);
        let mut args = vec!["train", demos.to_str().unwrap(), "--robot", "arm-a", "--out", out.to_str().unwrap()];
        args.extend(["--hidden", "32,32,16", "--epochs", "5", "--seed", seed]);
        (common::skillgraft(&args), out)
    };
    let (first, a) = train("a", "3");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let (_, b) = train("b", "3");
    let (sa, sb) = (Skill::load(&a).unwrap(), Skill::load(&b).unwrap());
    assert_eq!(std::fs::read(a.join("policy.onnx")).unwrap(), std::fs::read(b.join("policy.onnx")).unwrap());
    assert_eq!(sa.manifest.provenance.method, "trained");
    assert_eq!(sa.manifest.provenance.source_robot, "arm-a");
    assert_eq!(sa.model.head.layers.len(), 2, "the layers after the features are the head");
    assert_eq!(sb.manifest.observations[0].mean, sa.manifest.observations[0].mean, "normalisation from the data");

    let (other_seed, c) = train("c", "4");
    assert!(other_seed.status.success());
    assert_ne!(std::fs::read(a.join("policy.onnx")).unwrap(), std::fs::read(c.join("policy.onnx")).unwrap());

    let out = dir.path().join("x");
    let err = common::fails(&["train", demos.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(err.contains("--robot SIM_ROBOT or --like SKILL"), "{err}");
    let err = common::fails(&[
        "train",
        demos.to_str().unwrap(),
        "--robot",
        "arm-a",
        "--features-after",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("features must come after one of the 3 hidden layers"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = common::fails(&["train", empty.to_str().unwrap(), "--robot", "arm-a", "--out", out.to_str().unwrap()]);
    assert!(err.contains("no samples"), "{err}");
    assert!(!out.exists(), "a refused training writes nothing");
    let err = common::fails(&["train", demos.to_str().unwrap(), "--robot", "arm-a", "--out", a.to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn the_committed_source_skill_reaches_on_its_own_robot_and_misses_on_arm_b() {
    let mut skill = source_skill();
    assert_eq!(skill.manifest.provenance.source_robot, "arm-a");
    let a = sim::robot("arm-a").unwrap();
    let tasks = scored_tasks(20, a.home);
    let own = score_skill(&mut skill, &a, &tasks).unwrap();
    assert!(own.success_rate >= 0.9, "on arm-a: {own:?}");
    let b = sim::robot("arm-b").unwrap();
    let other = score_skill(&mut skill, &b, &tasks).unwrap();
    assert!(other.success_rate < 0.5, "arm-b differs enough to need adapting: {other:?}");
}

#[test]
fn the_transfer_bench_adapts_beyond_the_source_and_plots_the_curves() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("curves");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/reach-arm-a");
    let text = common::succeeds(&[
        "bench",
        "transfer",
        "--source",
        source.to_str().unwrap(),
        "--robots",
        "arm-b",
        "--demos",
        "5",
        "--seeds",
        "1",
        "--reaches",
        "10",
        "--plot",
        stem.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rate = |m: &str| {
        let p = v["points"].as_array().unwrap().iter().find(|p| p["method"] == m).unwrap();
        p["success"][0].as_f64().unwrap()
    };
    assert!(rate("ridge") > rate("source") + 0.5, "{v}");
    assert!(rate("finetune") > rate("source") + 0.5, "{v}");
    assert!(rate("from scratch") < rate("ridge"), "{v}");
    assert_eq!(v["expert"][0][1]["success_rate"], 1.0);
    assert_eq!(&std::fs::read(dir.path().join("curves.png")).unwrap()[1..4], b"PNG");
    assert!(std::fs::read_to_string(dir.path().join("curves.svg")).unwrap().contains("from scratch"));
}
