//! The command line as a user drives it: `skill init` on exported models, `step`, `inspect`.

use crate::common;

use crate::common::{
    FIXTURES, Reference, assert_close, fails, fixture, init_args, init_fixture, json_f32, snapshot, succeeds,
};

fn init(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    init_fixture(&dir.join(name), name)
}

#[test]
fn skill_init_then_step_reproduces_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let r = Reference::load(name);
        let skill = init(dir.path(), name);
        let w = r.input_width();
        for i in 0..r.batch() {
            let obs: Vec<String> = r.input[i * w..(i + 1) * w].iter().map(|v| format!("{v:e}")).collect();
            let stdout = succeeds(&["step", skill.to_str().unwrap(), "--obs", &obs.join(","), "--json"]);
            let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            let action = json_f32(&json["action"]);
            let raw = json_f32(&json["raw_action"]);
            let expected = &r.output[i * r.output_width..(i + 1) * r.output_width];
            assert_close(&format!("{name} sample {i} action"), &action, expected);
            assert_close(&format!("{name} sample {i} raw"), &raw, expected);
        }
    }
}

#[test]
fn step_applies_the_manifest_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let r = Reference::load("mlp_gemm");
    let skill = init(dir.path(), "mlp_gemm");
    // The observation is given raw; with mean m and std s the policy must see (v - m) / s,
    // and the action comes back as raw * std + mean.
    let toml_path = skill.join("skill.toml");
    let text = std::fs::read_to_string(&toml_path).unwrap();
    let obs_mean = format!("mean = [{}]", vec!["1.0"; 24].join(", "));
    let obs_std = format!("std = [{}]", vec!["2.0"; 24].join(", "));
    let act_mean = format!("mean = [{}]", ["0.5"; 6].join(", "));
    let act_std = format!("std = [{}]", ["10.0"; 6].join(", "));
    let text = text
        .replacen(&format!("mean = [{}]", vec!["0.0"; 24].join(", ")), &obs_mean, 1)
        .replacen(&format!("std = [{}]", vec!["1.0"; 24].join(", ")), &obs_std, 1)
        .replacen(&format!("mean = [{}]", ["0.0"; 6].join(", ")), &act_mean, 1)
        .replacen(&format!("std = [{}]", ["1.0"; 6].join(", ")), &act_std, 1);
    std::fs::write(&toml_path, text).unwrap();
    let obs: Vec<String> = r.input[..24].iter().map(|v| format!("{:e}", v * 2.0 + 1.0)).collect();
    let stdout = succeeds(&["step", skill.to_str().unwrap(), "--obs", &obs.join(","), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let action = json_f32(&json["action"]);
    let expected: Vec<f32> = r.output[..6].iter().map(|v| v * 10.0 + 0.5).collect();
    assert_close("de-normalised action", &action, &expected);
    let text = succeeds(&["step", skill.to_str().unwrap(), "--obs", &obs.join(",")]);
    assert!(text.contains("data[5]") && text.contains("de-normalised"), "{text}");
}

#[test]
fn inspect_shows_the_skill_and_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let skill = init(dir.path(), "mlp_matmul");
    let text = succeeds(&["inspect", skill.to_str().unwrap()]);
    for want in [
        "skill     mlp_matmul 0.1.0",
        "digest    sha256:",
        "head      3 layer(s), 2756 parameters",
        "MatMulAdd",
        "silu",
        "gelu_tanh",
        "backbone  4 ops",
        "~/observation",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&succeeds(&["inspect", skill.to_str().unwrap(), "--json"])).unwrap();
    let layers = json["model"]["head"]["layers"].as_array().unwrap();
    let dims: Vec<(u64, u64)> =
        layers.iter().map(|l| (l["inputs"].as_u64().unwrap(), l["outputs"].as_u64().unwrap())).collect();
    assert_eq!(dims, vec![(48, 32), (32, 32), (32, 4)]);
    assert_eq!(json["model"]["input_shape"], serde_json::json!(["N", "3", "10"]));
    assert_eq!(json["observations"][0]["values"].as_array().unwrap().len(), 30);
    let via_toml = succeeds(&["inspect", skill.join("skill.toml").to_str().unwrap(), "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&via_toml).unwrap()["digest"], json["digest"]);
}

#[test]
fn inspect_lists_the_splits_of_a_bare_onnx_file() {
    for name in FIXTURES {
        let r = Reference::load(name);
        let onnx = fixture(&format!("{name}.onnx"));
        let json: serde_json::Value =
            serde_json::from_str(&succeeds(&["inspect", onnx.to_str().unwrap(), "--json"])).unwrap();
        let splits = json["splits"].as_array().unwrap();
        let at = splits
            .iter()
            .find(|s| s["tensor"] == r.features_tensor.as_str())
            .unwrap_or_else(|| panic!("{name}: {json}"));
        assert_eq!(at["head_layers"].as_u64(), Some(r.head_layers as u64), "{name}");
        assert_eq!(at["width"].as_u64(), Some(r.features_width as u64), "{name}");
        let text = succeeds(&["inspect", onnx.to_str().unwrap(), "--features", &r.features_tensor]);
        assert!(text.contains(&format!("head      {} layer(s)", r.head_layers)), "{name}: {text}");
    }
}

#[test]
fn skill_init_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let skill = init(dir.path(), "conv");
    let before = snapshot(dir.path());
    let onnx = fixture("mlp_gemm.onnx");
    let err = fails(&init_args(&onnx, "/backbone/backbone.3/Tanh_output_0", &skill));
    assert!(err.contains("already exists") && err.contains("--out"), "{err}");
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn step_rejects_bad_observations() {
    let dir = tempfile::tempdir().unwrap();
    let skill = init(dir.path(), "mlp_gemm");
    let err = fails(&["step", skill.to_str().unwrap(), "--obs", "1,2,3"]);
    assert!(err.contains("takes 24 observation values") && err.contains("got 3"), "{err}");
    let mut obs = vec!["0.5"; 24];
    obs[7] = "nan";
    let err = fails(&["step", skill.to_str().unwrap(), "--obs", &obs.join(",")]);
    assert!(err.contains("observation value 7 is NaN"), "{err}");
    let out = common::skillgraft(&["step", skill.to_str().unwrap(), "--obs", "1,x,3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'x'"));
}

#[test]
fn the_readme_main_command_inspects_the_example_skill() {
    let skill = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("skills/example-arm6");
    let text = succeeds(&["inspect", skill.to_str().unwrap()]);
    assert!(text.contains("skill     example-arm6 0.1.0"), "{text}");
    assert!(text.contains("position[wrist_3]") && text.contains("/arm/joint_velocity_cmd"), "{text}");
    let obs = vec!["0.1"; 24].join(",");
    let json: serde_json::Value =
        serde_json::from_str(&succeeds(&["step", skill.to_str().unwrap(), "--obs", &obs, "--json"])).unwrap();
    assert_eq!(json["action"].as_array().unwrap().len(), 6);
}

/// `skillgraft inspect SKILL | head -1`: the reader closes the pipe and the command ends quietly,
/// with no panic and no error (the read end is closed before the program starts, so every write
/// meets the closed pipe).
#[test]
fn a_closed_stdout_ends_each_command_quietly() {
    let skill = concat!(env!("CARGO_MANIFEST_DIR"), "/skills/example-arm6");
    let store = tempfile::tempdir().unwrap();
    let store = store.path().to_str().unwrap();
    let commands: [&[&str]; 5] = [
        &["inspect", skill],
        &["inspect", skill, "--json"],
        &["step", skill, "--obs", &["0"; 24].join(",")],
        &["store", "list", "--store", store],
        &["--help"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skillgraft"))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.is_empty(), "{args:?}: {:?}, stderr: {stderr}", out.status);
    }
}
