//! Bad input gives a clear error naming the problem and the fix, never a panic, and changes nothing.

use std::path::{Path, PathBuf};

use crate::common::onnx_builder::{GraphBuilder, attr_i, values};
use crate::common::{Reference, fails, fixture, init_args, init_fixture, snapshot, succeeds};

/// A valid skill made from a fixture, in a fresh folder.
fn skill(dir: &Path, name: &str) -> PathBuf {
    init_fixture(&dir.join("skill"), name)
}

/// Edits the manifest, then checks `inspect` fails with every expected fragment and that the
/// folder is exactly as the edit left it.
fn manifest_fails(edit: impl Fn(String) -> String, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let skill = skill(dir.path(), "mlp_gemm");
    let path = skill.join("skill.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&path, edited).unwrap();
    let before = snapshot(dir.path());
    for cmd in [vec!["inspect", skill.to_str().unwrap()], vec!["step", skill.to_str().unwrap(), "--obs", "0"]] {
        let err = fails(&cmd);
        for e in expected {
            assert!(err.contains(e), "missing {e:?} in: {err}");
        }
        assert!(err.contains("skill.toml"), "the error must name the file: {err}");
    }
    assert_eq!(snapshot(dir.path()), before);
}

fn onnx_fails(bytes: &[u8], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, bytes).unwrap();
    let err = fails(&["inspect", path.to_str().unwrap()]);
    for e in expected {
        assert!(err.contains(e), "missing {e:?} in: {err}");
    }
    let out = dir.path().join("made");
    let err = fails(&init_args(&path, "feat", &out));
    assert!(err.contains("model.onnx"), "{err}");
    assert!(!out.exists(), "a failed init must not leave a folder");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing but the input may remain");
}

#[test]
fn truncated_onnx_file() {
    let bytes = std::fs::read(fixture("mlp_gemm.onnx")).unwrap();
    onnx_fails(&bytes[..bytes.len() / 2], &["is not an ONNX model", "protobuf decoding failed", "torch.onnx.export"]);
}

#[test]
fn file_that_is_not_onnx() {
    onnx_fails(b"name = \"not a model\"\n", &["is not an ONNX model"]);
    onnx_fails(&[], &["is not an ONNX model", "no graph"]);
}

#[test]
fn truncated_model_inside_a_skill() {
    let dir = tempfile::tempdir().unwrap();
    let skill = skill(dir.path(), "conv");
    let bytes = std::fs::read(skill.join("policy.onnx")).unwrap();
    std::fs::write(skill.join("policy.onnx"), &bytes[..1000]).unwrap();
    let err = fails(&["inspect", skill.to_str().unwrap()]);
    assert!(err.contains("skill.toml") && err.contains("`model.file`") && err.contains("not an ONNX model"), "{err}");
}

#[test]
fn op_that_tract_lacks() {
    let bytes = GraphBuilder::new(17)
        .input("x", &["N", "4"])
        .output("out")
        .node("Loop", &["", "", "x"], &["out"], vec![])
        .bytes();
    onnx_fails(&bytes, &["node `Loop_0` uses op `Loop`", "tract 0.23.9 does not implement", "re-export"]);
}

#[test]
fn manifest_missing_field() {
    manifest_fails(|t| t.replace("max_age_ms = 100.0\n", ""), &["`max_age_ms`", "missing field", "add it"]);
}

#[test]
fn manifest_unknown_field() {
    manifest_fails(
        |t| t.replace("history = 1\n", "history = 1\nhistroy = 2\n"),
        &["`histroy`", "unknown field", "line 23"],
    );
}

#[test]
fn manifest_widths_that_do_not_match_the_model() {
    let zeros = |n: usize| vec!["0.0"; n].join(", ");
    let ones = |n: usize| vec!["1.0"; n].join(", ");
    manifest_fails(
        |t| {
            t.replace("data[0..24]", "data[0..23]")
                .replace(&format!("mean = [{}]", zeros(24)), &format!("mean = [{}]", zeros(23)))
                .replace(&format!("std = [{}]", ones(24)), &format!("std = [{}]", ones(23)))
        },
        &["`observation`", "takes 24 values per sample", "give 23", "select 24 values per frame"],
    );
    manifest_fails(
        |t| t.replace("data[0..6]", "data[0..5]"),
        &["`action.mean`", "has 6 values but the fields select 5"],
    );
    manifest_fails(|t| t.replace("history = 1", "history = 2"), &["`observation`", "history 2"]);
}

#[test]
fn features_that_are_not_in_the_graph() {
    manifest_fails(
        |t| t.replace("features = \"/backbone/backbone.3/Tanh_output_0\"", "features = \"/backbone/nope\""),
        &["`model.features`", "no tensor `/backbone/nope`", "skillgraft inspect MODEL.onnx"],
    );
}

#[test]
fn head_with_an_unsupported_op() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = fixture("mlp_layernorm.onnx");
    let out = dir.path().join("ln");
    let err = fails(&init_args(&onnx, "/backbone/backbone.1/Relu_output_0", &out));
    assert!(
        err.contains("`/norm/LayerNormalization` (LayerNormalization) is in the head")
            && err.contains("choose a features tensor after it"),
        "{err}"
    );
    assert!(!out.exists());
    let r = Reference::load("mlp_layernorm");
    succeeds(&init_args(&onnx, &r.features_tensor, &out));
}

#[test]
fn nan_in_normalisation() {
    manifest_fails(
        |t| t.replacen("std = [1.0, 1.0, 1.0, 1.0,", "std = [1.0, 1.0, 1.0, nan,", 1),
        &["`observation[0].std[3]`", "is NaN", "finite number above 0"],
    );
    manifest_fails(
        |t| t.replacen("mean = [0.0, 0.0,", "mean = [0.0, nan,", 1),
        &["`observation[0].mean[1]`", "is NaN"],
    );
}

#[test]
fn other_manifest_mistakes_name_field_and_fix() {
    manifest_fails(
        |t| t.replace("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float65MultiArray"),
        &["`observation[0].type`", "not a supported message type"],
    );
    manifest_fails(
        |t| t.replace("topic = \"~/action\"", "topic = \"/bad topic\""),
        &["`action.topic`", "not a valid ROS 2 topic name"],
    );
    manifest_fails(|t| t.replace("version = \"0.1.0\"", "version = \"one\""), &["(syntax)", "line 3"]);
    manifest_fails(|t| t.replace("rate_hz = 50.0", "rate_hz = -5.0"), &["`control.rate_hz`", "Hz"]);
    manifest_fails(|t| t.replacen("upper = [inf,", "upper = [-inf,", 1), &["`action.lower[0]`", "not below upper"]);
    manifest_fails(
        |t| t.replace("file = \"policy.onnx\"", "file = \"../policy.onnx\""),
        &["`model.file`", "leaves the skill folder"],
    );
    manifest_fails(
        |t| t.replace("output = \"action\"", "output = \"logits\""),
        &["`model.output`", "not a graph output", "action"],
    );
}

#[test]
fn path_that_is_not_a_skill() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["inspect", dir.path().to_str().unwrap()]);
    assert!(err.contains("is not a skill folder") && err.contains("skillgraft skill init"), "{err}");
    let err = fails(&["inspect", "/nonexistent/skill"]);
    assert!(err.contains("is not a skill folder"), "{err}");
}

#[test]
fn head_weights_that_are_computed() {
    let bytes = GraphBuilder::new(17)
        .input("x", &["N", "4"])
        .output("out")
        .init("w", &[4, 4], &values(1, 16))
        .node("Gemm", &["x", "w"], &["feat"], vec![attr_i("transB", 1)])
        .node("MatMul", &["feat", "feat"], &["out"], vec![])
        .bytes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, bytes).unwrap();
    let err = fails(&["inspect", path.to_str().unwrap(), "--features", "feat"]);
    assert!(err.contains("stored weight") && err.contains("cannot split at features `feat`"), "{err}");
}
