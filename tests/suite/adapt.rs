//! Adaptation end to end on recorded episodes: demonstrations come from a "teacher", the example
//! skill with another head (what the target robot needs); ridge and fine-tuning must recover it,
//! pass the gate, and export a skill that reproduces the trained head. Demonstrations of the
//! source itself must be rejected. Ridge is held to scikit-learn.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nalgebra::DMatrix;
use skillgraft::adapt::finetune::Settings;
use skillgraft::adapt::{self, AdaptError, Method, Options, Quiet, ridge};
use skillgraft::observe::Extractor;
use skillgraft::record::dataset;
use skillgraft::record::episode::{ChannelSpec, EpisodeWriter};
use skillgraft::skill::Skill;

use crate::common::{example, teacher};

/// An episode of `n` demonstrations by `expert` on random observations; returns its file.
fn episode(dir: &Path, id: &str, expert: &mut Skill, seed: u64, n: usize) -> PathBuf {
    let m = expert.manifest.clone();
    let topics: Vec<String> = m.observations.iter().map(|o| o.topic.clone()).collect();
    let channels = ChannelSpec::for_skill(&m, &topics, &[], &m.action.topic);
    let mut meta = BTreeMap::new();
    meta.insert("robot".to_string(), "arm-b".to_string());
    let mut w = EpisodeWriter::create(dir, id, &channels, &meta, Duration::from_secs(1), Default::default()).unwrap();
    let fields: Vec<Extractor> = m.observations.iter().map(Extractor::new).collect();
    let act = Extractor::for_action(&m.action);
    let noise = skillgraft::rng::seeded(seed, n * 30);
    let t0 = 1_764_000_000_000_000_000u64;
    for k in 0..n {
        let mut obs = Vec::new();
        for (i, (e, o)) in fields.iter().zip(&m.observations).enumerate() {
            let v: Vec<f64> =
                (0..e.width).map(|j| o.mean[j] + o.std[j] * noise[k * 30 + (i * 7 + j) % 30] as f64).collect();
            w.write(i, t0 + k as u64 * 20_000_000, &e.compose(&v).encode().unwrap()).unwrap();
            obs.extend(v);
        }
        let (_, a) = expert.step(&obs, &[]).unwrap();
        w.write(fields.len(), t0 + k as u64 * 20_000_000 + 5_000_000, &act.compose(&a).encode().unwrap()).unwrap();
    }
    w.finish(&meta).unwrap()
}

fn episodes(dir: &Path, expert: &mut Skill, count: usize) -> Vec<dataset::Episode> {
    let paths: Vec<PathBuf> =
        (0..count).map(|i| episode(dir, &format!("ep{i}"), expert, 100 + i as u64, 120)).collect();
    dataset::load(&paths, &example().manifest).unwrap()
}

fn max_diff(a: &DMatrix<f32>, b: &DMatrix<f32>) -> f32 {
    (a - b).abs().max()
}

#[test]
fn ridge_recovers_the_teachers_last_layer_passes_the_gate_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = teacher(dir.path());
    let eps = episodes(dir.path(), &mut t, 4);
    assert!(eps.iter().all(|e| e.samples.len() == 120 && e.stale == 0));
    let source = example();
    let opts = Options { cache: Some(dir.path().join("cache")), ..Options::default() };
    let out = adapt::adapt(&source, &eps, &opts, &Quiet).unwrap();
    let r = &out.report;
    assert!(r.accepted, "{:?}", r.reasons);
    assert!(r.improvement > 0.99, "the teacher is linear in the same features: {}", r.improvement);
    assert_eq!((r.folds, r.layers, r.samples, r.cached), (4, 1, 480, 0));
    assert!(r.lambda.unwrap() > 0.0);
    let want = t.model.head.params.last().unwrap();
    assert!(max_diff(&out.params.last().unwrap().weight, &want.weight) < 1e-3, "the last layer is the teacher's");
    assert_eq!(out.params[0], source.model.head.params[0], "the layer before stays frozen");

    let again = adapt::adapt(&source, &eps, &opts, &Quiet).unwrap();
    assert_eq!(again.report.cached, 4, "features come from the cache the second time");
    assert_eq!(again.params, out.params);

    let written = adapt::write(&source, &out, &dir.path().join("adapted"), None, Some("arm-b")).unwrap();
    let loaded = Skill::load(&dir.path().join("adapted")).unwrap();
    assert_eq!(loaded.digest, written.digest);
    assert_eq!(loaded.manifest.version, semver::Version::new(0, 2, 0));
    assert_eq!(loaded.manifest.provenance.parent.as_deref(), Some(source.digest.as_str()));
    assert_eq!(loaded.manifest.provenance.method, "adapted-ridge");
    assert_eq!(loaded.manifest.provenance.source_robot, "arm-b");
    assert!(loaded.manifest.provenance.details.contains_key("lambda"));
    assert_eq!(loaded.model.file.metadata()["skillgraft.parent"], source.digest);
    for (a, b) in loaded.model.head.params.iter().zip(&out.params) {
        assert!(max_diff(&a.weight, &b.weight) < 1e-5, "the exported head reproduces the trained one");
    }
    let obs: Vec<f64> = eps[0].samples[0].raw_observation.iter().map(|&v| v as f64).collect();
    let mut loaded = loaded;
    let (_, got) = loaded.step(&obs, &[]).unwrap();
    let (_, want) = t.step(&obs, &[]).unwrap();
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-3), "{got:?} vs {want:?}");
}

#[test]
fn finetune_is_deterministic_and_beats_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = teacher(dir.path());
    let eps = episodes(dir.path(), &mut t, 3);
    let source = example();
    let settings = Settings { epochs: 40, batch: 64, lr: 3e-3, pull: 1e-3, patience: 5, seed: 9 };
    let opts =
        Options { method: Method::Finetune { layers: Some(2), settings, ridge_init: true }, ..Options::default() };
    let a = adapt::adapt(&source, &eps, &opts, &Quiet).unwrap();
    let b = adapt::adapt(&source, &eps, &opts, &Quiet).unwrap();
    assert_eq!(a.params, b.params, "same seed, same head");
    assert!(a.report.accepted, "{:?}", a.report.reasons);
    assert!(a.report.improvement > 0.5, "{}", a.report.improvement);
    assert_eq!(a.report.layers, 2);
    assert!(!a.report.curve.is_empty() && a.report.epochs.is_some());
    let out = dir.path().join("ft");
    adapt::write(&source, &a, &out, Some(semver::Version::new(1, 0, 0)), None).unwrap();
    let loaded = Skill::load(&out).unwrap();
    assert_eq!(loaded.manifest.version, semver::Version::new(1, 0, 0));
    assert_eq!(loaded.manifest.provenance.method, "adapted-finetune");
    for (x, y) in loaded.model.head.params.iter().zip(&a.params) {
        assert!(max_diff(&x.weight, &y.weight) < 1e-5);
    }
}

#[test]
fn demonstrations_of_the_source_itself_are_rejected_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut same = example();
    let eps = episodes(dir.path(), &mut same, 3);
    let out = adapt::adapt(&example(), &eps, &Options::default(), &Quiet).unwrap();
    assert!(!out.report.accepted);
    assert!(out.report.reasons[0].contains("not 5 % below the source's"), "{:?}", out.report.reasons);
}

#[test]
fn too_little_data_and_unsupported_heads_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = teacher(dir.path());
    let eps = episodes(dir.path(), &mut t, 1);
    let err = adapt::adapt(&example(), &eps, &Options::default(), &Quiet).unwrap_err();
    assert!(matches!(err, AdaptError::Data(_)) && err.to_string().contains("at least 2"), "{err}");
    let conv = common::init_fixture(&dir.path().join("conv"), "conv");
    let conv = Skill::load(&conv).unwrap();
    let err = adapt::adapt(&conv, &[eps[0].clone(), eps[0].clone()], &Options::default(), &Quiet).unwrap_err();
    assert!(err.to_string().contains("use --method finetune"), "{err}");
}

#[test]
fn ridge_equals_scikit_learn() {
    let (n, d, a) = (300, 12, 3);
    let h = DMatrix::from_row_slice(n, d, &skillgraft::rng::seeded(5, n * d)).map(|v| v as f64 * 2.0 + 0.3);
    let y = DMatrix::from_row_slice(n, a, &skillgraft::rng::seeded(6, n * a)).map(|v| v as f64);
    let dir = tempfile::tempdir().unwrap();
    let data = serde_json::json!({
        "h": h.row_iter().map(|r| r.iter().copied().collect::<Vec<f64>>()).collect::<Vec<_>>(),
        "y": y.row_iter().map(|r| r.iter().copied().collect::<Vec<f64>>()).collect::<Vec<_>>(),
        "alphas": [0.01, 1.0, 100.0],
    });
    let file = dir.path().join("data.json");
    std::fs::write(&file, data.to_string()).unwrap();
    let script = r#"
import json, sys
import numpy as np
from sklearn.linear_model import Ridge
d = json.load(open(sys.argv[1]))
out = []
for a in d["alphas"]:
    m = Ridge(alpha=a, fit_intercept=True, solver="cholesky").fit(np.array(d["h"]), np.array(d["y"]))
    out.append({"coef": m.coef_.tolist(), "intercept": m.intercept_.tolist()})
print(json.dumps(out))
"#;
    let run = Command::new(common::ros_python()).arg("-c").arg(script).arg(&file).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let sk: Vec<serde_json::Value> = serde_json::from_slice(&run.stdout).unwrap();
    let stats = ridge::Stats::of(&h, &y, &skillgraft::adapt::compute::Threads::new(2));
    for (fit_sk, lambda) in sk.iter().zip([0.01, 1.0, 100.0]) {
        let ours = ridge::fit(&stats, &DMatrix::zeros(a, d), lambda);
        for i in 0..a {
            for j in 0..d {
                let want = fit_sk["coef"][i][j].as_f64().unwrap();
                assert!((ours.weight[(i, j)] - want).abs() <= 1e-6 * want.abs().max(1e-3), "λ={lambda} W[{i},{j}]");
            }
            let want = fit_sk["intercept"][i].as_f64().unwrap();
            assert!((ours.bias[i] - want).abs() <= 1e-6 * want.abs().max(1e-3), "λ={lambda} b[{i}]");
        }
    }
}

#[test]
fn the_cli_adapts_prints_the_table_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = teacher(dir.path());
    let paths: Vec<String> =
        (0..3).map(|i| episode(dir.path(), &format!("ep{i}"), &mut t, 200 + i, 100).display().to_string()).collect();
    let skill = Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6");
    let out = dir.path().join("adapted");
    let mut args = vec!["adapt", skill.to_str().unwrap()];
    args.extend(paths.iter().map(String::as_str));
    args.extend(["--method", "ridge", "--out", out.to_str().unwrap()]);
    let text = common::succeeds(&args);
    for want in ["source RMSE", "adapted RMSE", "data[5]", "accepted", "wrote"] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    assert!(Skill::load(&out).is_ok());
    let err = common::fails(&args);
    assert!(err.contains("already exists"), "{err}");
    let mut one = vec!["adapt", skill.to_str().unwrap(), paths[0].as_str()];
    one.extend(["--method", "ridge"]);
    let err = common::fails(&one);
    assert!(err.contains("at least 2"), "{err}");
    let mut bad = args[..args.len() - 4].to_vec();
    bad.extend(["--method", "finetune", "--device", "gpu"]);
    let out = common::skillgraft(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("auto, cpu or cuda"), "{err}");
}

/// `--device cuda` where CUDA cannot be used fails before the backbone runs, with the reason and
/// the way out: without the `cuda` feature, to rebuild with it; with it, what is missing.
#[test]
fn the_cli_says_why_it_cannot_fine_tune_on_cuda() {
    use skillgraft::adapt::device::{Backend, Device};
    if Backend::select(Device::Cuda, Default::default()).is_ok() {
        eprintln!("skipped: CUDA works here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = teacher(dir.path());
    let paths: Vec<String> =
        (0..2).map(|i| episode(dir.path(), &format!("ep{i}"), &mut t, 300 + i, 50).display().to_string()).collect();
    let skill = Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6");
    let out = dir.path().join("adapted");
    let mut args = vec!["adapt", skill.to_str().unwrap()];
    args.extend(paths.iter().map(String::as_str));
    args.extend(["--method", "finetune", "--epochs", "2", "--out", out.to_str().unwrap(), "--device", "cuda"]);
    let err = common::fails(&args);
    let why = if cfg!(feature = "cuda") { "use device auto or cpu" } else { "--features cuda" };
    assert!(err.contains("device cuda") && err.contains(why), "{err}");
    assert!(!out.exists(), "nothing written");
    assert!(!dir.path().join(".features").exists(), "the backbone did not run");
    let n = args.len();
    args[n - 1] = "auto";
    // Accepted (exit 0) or not (exit 3), the report names the device the fit ran on.
    let out = common::skillgraft(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("on cpu"), "auto falls back to the CPU:\n{text}");
}

#[test]
fn the_cli_finetunes_with_a_loss_plot_and_a_rejection_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = teacher(dir.path());
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    for i in 0..3 {
        episode(&good, &format!("ep{i}"), &mut t, 300 + i, 100);
    }
    let skill = Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6");
    let out = dir.path().join("ft");
    let args = [
        "adapt",
        skill.to_str().unwrap(),
        good.to_str().unwrap(),
        "--method",
        "finetune",
        "--layers",
        "1",
        "--epochs",
        "30",
        "--batch",
        "32",
        "--lr",
        "3e-3",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let v: serde_json::Value = serde_json::from_str(&common::succeeds(&args)).unwrap();
    assert_eq!(v["report"]["accepted"], true, "{v}");
    assert_eq!(v["report"]["layers"], 1);
    assert!(good.join(".features").is_dir(), "features are cached beside the episodes by default");
    let png = std::fs::read(dir.path().join("ft-loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let svg = std::fs::read_to_string(dir.path().join("ft-loss.svg")).unwrap();
    assert!(svg.contains("epoch") && svg.contains("training"));
    assert_eq!(Skill::load(&out).unwrap().digest, v["digest"].as_str().unwrap());

    let err = common::fails(&["adapt", skill.to_str().unwrap(), good.to_str().unwrap(), "--layers", "1"]);
    assert!(err.contains("--layers applies to --method finetune"), "{err}");

    // Demonstrations of the source itself: nothing to gain, so nothing is written.
    let mut same = example();
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    for i in 0..3 {
        episode(&plain, &format!("ep{i}"), &mut same, 400 + i, 100);
    }
    let rejected = dir.path().join("rejected");
    let run = common::skillgraft(&[
        "adapt",
        skill.to_str().unwrap(),
        plain.to_str().unwrap(),
        "--out",
        rejected.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stdout.contains("source RMSE") && stderr.starts_with("rejected: "), "{stdout}{stderr}");
    assert!(!rejected.exists());
}

/// `bench adapt` on a small problem: both sides run on the same data and agree (the PyTorch row
/// runs where the Python has torch, which CI's does not; it must then say why).
#[test]
fn the_adaptation_bench_runs_both_sides_and_they_agree() {
    let python = common::ros_python().display().to_string();
    let text = common::succeeds(&[
        "bench",
        "adapt",
        "--python",
        &python,
        "--rows",
        "200",
        "--repeats",
        "1",
        "--seconds",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    for row in &rows[..2] {
        assert!(row["reference"].as_str().unwrap().starts_with("scikit-learn 1.8.0"), "{row}");
        assert!(row["reference_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["difference"].as_f64().unwrap() < 1e-6, "ridge equals scikit-learn: {row}");
        let r: Vec<f64> = row["ratio"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(r.len() == 3 && r[1] <= r[0] && r[0] <= r[2] && r[1] > 0.0, "median pair, lowest, highest: {row}");
    }
    assert!(rows[1]["agreement"].as_str().unwrap().contains("the same"), "the same λ: {}", rows[1]);
    let ft = &rows[2];
    match ft["difference"].as_f64() {
        Some(d) => assert!(d < 0.02, "finetune within 2 % of PyTorch: {ft}"),
        None => assert!(ft["reference"].as_str().unwrap().contains("not run ("), "{ft}"),
    }
}

/// The gate on the GPU. The loss curves themselves are compared in tests/cuda.rs, on a problem
/// that stays above f32 rounding: these demonstrations are fitted to that level (losses of 1e-8,
/// a source that is exact for its own demonstrations), where AdamW, which divides by √v, turns
/// gradients of pure rounding noise into full ±lr steps and each backend follows its own noise.
/// What must not move is the decision and the held-out improvement it rests on.
#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda --test cuda -- --ignored; --test suite -- --ignored adapt::"]
fn finetune_on_the_gpu_reaches_the_cpus_gate_decision() {
    use skillgraft::adapt::device::{Backend, Device};
    if let Err(why) = Backend::select(Device::Cuda, Default::default()) {
        panic!("this test needs a usable CUDA GPU and a build with `--features cuda`: {why}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut t = teacher(dir.path());
    let mut same = example();
    let settings = Settings { epochs: 40, batch: 64, lr: 3e-3, pull: 1e-3, patience: 5, seed: 9 };
    let method = Method::Finetune { layers: Some(2), settings, ridge_init: true };
    let (dt, ds) = (dir.path().join("demos-teacher"), dir.path().join("demos-source"));
    std::fs::create_dir_all(&dt).unwrap();
    std::fs::create_dir_all(&ds).unwrap();
    // Demonstrations of a teacher (accepted) and of the source itself (rejected).
    for (name, eps) in [("teacher", episodes(&dt, &mut t, 3)), ("source", episodes(&ds, &mut same, 3))] {
        let run = |device| adapt::adapt(&example(), &eps, &Options { method, device, ..Options::default() }, &Quiet);
        let (cpu, gpu) = (run(Device::Cpu).unwrap().report, run(Device::Cuda).unwrap().report);
        eprintln!(
            "{name}: CPU {} (held-out MSE {:.4e}, improvement {:.4}, {:?} epochs); GPU ({}) {} (held-out MSE {:.4e}, \
             improvement {:.4}, {:?} epochs); source held-out MSE {:.4e}",
            if cpu.accepted { "accepted" } else { "rejected" },
            cpu.adapted_mse,
            cpu.improvement,
            cpu.epochs,
            gpu.device,
            if gpu.accepted { "accepted" } else { "rejected" },
            gpu.adapted_mse,
            gpu.improvement,
            gpu.epochs,
            cpu.source_mse
        );
        assert_eq!(cpu.device, "cpu");
        assert!(gpu.device.starts_with("cuda: "), "{}", gpu.device);
        assert_eq!(cpu.accepted, gpu.accepted, "{name}: the same gate decision");
        assert_eq!(cpu.accepted, name == "teacher", "{name}: {:?}", cpu.reasons);
        assert_eq!(cpu.source_mse, gpu.source_mse, "{name}: the source is scored on the CPU either way");
        if cpu.accepted {
            assert!((cpu.improvement - gpu.improvement).abs() < 1e-2, "{name}: improvement");
        }
    }
}
