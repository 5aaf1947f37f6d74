//! The inference core against onnxruntime: tract's control and backbone plans, the native head,
//! and ONNX export of new head weights, on models exported by torch.onnx.export.

use crate::common;

use crate::common::{FIXTURES, Reference, assert_close, fixture};
use nalgebra::DMatrix;
use skillgraft::model::head::LayerParams;
use skillgraft::model::onnx::OnnxFile;
use skillgraft::model::{Model, export};
use skillgraft::skill::{self, Skill};

fn load(name: &str) -> (Model, Reference) {
    let r = Reference::load(name);
    let file = OnnxFile::read(&fixture(&format!("{name}.onnx"))).unwrap();
    let model = Model::load(file, &["obs"], "action", &r.features_tensor).unwrap();
    (model, r)
}

fn control_outputs(model: &mut Model, inputs: &[f32], n: usize) -> Vec<f32> {
    let w = inputs.len() / n;
    let out_w = model.control.output_width();
    let mut out = vec![0.0; n * out_w];
    for i in 0..n {
        model.control.step(&[&inputs[i * w..(i + 1) * w]], &mut out[i * out_w..(i + 1) * out_w]).unwrap();
    }
    out
}

#[test]
fn tract_plans_and_native_head_match_onnxruntime() {
    for name in FIXTURES {
        let (mut model, r) = load(name);
        let n = r.batch();
        assert_eq!(model.head.layers.len(), r.head_layers, "{name}");
        assert_eq!(model.input().shape.width(), r.input_width(), "{name}");
        let out = control_outputs(&mut model, &r.input, n);
        assert_close(&format!("{name} control plan"), &out, &r.output);
        for batch in [1, 2, 256] {
            let feats = model.backbone.features(&[&r.input], n, batch).unwrap();
            assert_close(&format!("{name} backbone plan, batch {batch}"), &feats, &r.features);
        }
        let ort_feats = DMatrix::from_row_slice(n, r.features_width, &r.features);
        let native = model.head.forward(&ort_feats);
        assert_close(&format!("{name} native head on onnxruntime's features"), &row_major(&native), &r.output);
        let tract_feats = model.backbone.features(&[&r.input], n, 256).unwrap();
        let native = model.head.forward(&DMatrix::from_row_slice(n, r.features_width, &tract_feats));
        assert_close(&format!("{name} native head vs tract"), &row_major(&native), &out);
    }
}

fn row_major(m: &DMatrix<f32>) -> Vec<f32> {
    m.transpose().as_slice().to_vec()
}

/// New parameters of the same shapes, far enough from the old ones to change every output.
fn perturbed(params: &[LayerParams], seed: u64) -> Vec<LayerParams> {
    params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let w = common::onnx_builder::values(seed + k as u64, p.weight.len());
            let b = p.bias.as_ref().map(|b| common::onnx_builder::values(seed + 100 + k as u64, b.len()));
            LayerParams {
                weight: p.weight.map(|v| v * 0.5)
                    + DMatrix::from_row_slice(p.weight.nrows(), p.weight.ncols(), &w) * 0.3,
                bias: p.bias.as_ref().zip(b).map(|(old, b)| old + nalgebra::DVector::from_vec(b) * 0.3),
            }
        })
        .collect()
}

#[test]
fn exported_head_reloads_and_equals_backbone_plus_native_head() {
    for name in FIXTURES {
        let (model, r) = load(name);
        let n = r.batch();
        let original = model.file.proto.clone();
        let params = perturbed(&model.head.params, 3);
        let meta = vec![("parent".to_string(), "sha256:00".to_string()), ("method".to_string(), "test".to_string())];
        let proto = export::with_head_params(&model.file, &model.head, &params, &meta).unwrap();
        assert_eq!(model.file.proto, original, "{name}: export must not change the source model");
        let bytes = export::encode(&proto);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapted.onnx");
        std::fs::write(&path, &bytes).unwrap();
        let mut adapted = Model::load(OnnxFile::read(&path).unwrap(), &["obs"], "action", &r.features_tensor).unwrap();
        let md = adapted.file.metadata();
        assert_eq!(md.get("skillgraft.parent").map(String::as_str), Some("sha256:00"), "{name}");
        assert_eq!(md.get("skillgraft.method").map(String::as_str), Some("test"), "{name}");
        for (a, b) in adapted.head.params.iter().zip(&params) {
            assert_close(&format!("{name} weights read back"), a.weight.as_slice(), b.weight.as_slice());
        }
        let feats = model.backbone.features(&[&r.input], n, 256).unwrap();
        assert_close(
            &format!("{name} backbone unchanged"),
            &adapted.backbone.features(&[&r.input], n, 256).unwrap(),
            &feats,
        );
        let expected =
            row_major(&model.head.forward_with(&params, &DMatrix::from_row_slice(n, r.features_width, &feats)));
        let got = control_outputs(&mut adapted, &r.input, n);
        assert_close(&format!("{name} reloaded adapted model"), &got, &expected);
        let before = control_outputs(&mut load(name).0, &r.input, n);
        assert!(got.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-3), "{name}: new weights changed nothing");
    }
}

#[test]
fn export_refuses_parameters_of_the_wrong_shape() {
    let (model, _) = load("mlp_gemm");
    let mut params = model.head.params.clone();
    params[0].weight = DMatrix::zeros(3, 3);
    let err = export::with_head_params(&model.file, &model.head, &params, &[]).unwrap_err().to_string();
    assert!(err.contains("layer 0") && err.contains("weight"), "{err}");
    let mut params = model.head.params.clone();
    params[1].weight[(0, 0)] = f32::NAN;
    let err = export::with_head_params(&model.file, &model.head, &params, &[]).unwrap_err().to_string();
    assert!(err.contains("not finite"), "{err}");
}

#[test]
fn skill_folder_is_written_whole_with_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let r = Reference::load("mlp_matmul");
    let (manifest, bytes) = skill::skeleton(&fixture("mlp_matmul.onnx"), &r.features_tensor, None).unwrap();
    let source = skill::write_skill(&dir.path().join("source"), &manifest, &bytes).unwrap();
    let params = perturbed(&source.model.head.params, 9);
    let proto = export::with_head_params(
        &source.model.file,
        &source.model.head,
        &params,
        &[("parent".into(), source.digest.clone())],
    )
    .unwrap();
    let mut next = source.manifest.clone();
    next.version = semver::Version::new(0, 2, 0);
    next.provenance.parent = Some(source.digest.clone());
    next.provenance.method = "adapted-test".into();
    let out = dir.path().join("adapted");
    let written = skill::write_skill(&out, &next, &export::encode(&proto)).unwrap();
    let loaded = Skill::load(&out).unwrap();
    assert_eq!(loaded.digest, written.digest);
    assert_ne!(loaded.digest, source.digest);
    assert_eq!(loaded.manifest.version, semver::Version::new(0, 2, 0));
    assert_eq!(loaded.manifest.provenance.parent.as_deref(), Some(source.digest.as_str()));
    for (a, b) in loaded.model.head.params.iter().zip(&params) {
        assert_close("weights in the written skill", a.weight.as_slice(), b.weight.as_slice());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "temporary folders left behind: {leftovers:?}");
    let err = skill::write_skill(&out, &next, &export::encode(&proto)).err().unwrap().to_string();
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn control_plan_reuses_its_input_tensor_and_state() {
    let (mut model, r) = load("mlp_gemm");
    let w = r.input_width();
    let mut a = vec![0.0; r.output_width];
    let mut b = vec![0.0; r.output_width];
    model.control.step(&[&r.input[..w]], &mut a).unwrap();
    for _ in 0..10 {
        model.control.step(&[&r.input[w..2 * w]], &mut b).unwrap();
    }
    model.control.step(&[&r.input[..w]], &mut b).unwrap();
    assert_eq!(a, b, "the plan state must not carry anything between steps");
    let err = model.control.step(&[&r.input[..w - 1]], &mut b).unwrap_err().to_string();
    assert!(err.contains(&format!("got {} values; the plan takes {w}", w - 1)), "{err}");
}

/// A policy exported by the dynamo exporter with no dynamic shapes (its default since PyTorch
/// 2.9): input [2, 8], output [2, 2], every intermediate shape fixed at batch 2. The leading axis
/// is still the batch axis: the control plan runs it at 1, the backbone at any batch, and both
/// match onnxruntime; `skill init` makes a skill of it.
#[test]
fn a_static_batch_dynamo_export_runs_at_any_batch() {
    let r = Reference::load("mlp_static2");
    let path = fixture("mlp_static2.onnx");
    let model = Model::load(OnnxFile::read(&path).unwrap(), &["obs"], "linear_2", &r.features_tensor).unwrap();
    assert_eq!(model.input().shape.fixed_batch, Some(2));
    assert_eq!((model.input().shape.width(), model.control.output_width()), (8, 2));
    let mut model = model;
    let out = control_outputs(&mut model, &r.input, r.batch());
    assert_close("static batch: control plan at batch 1", &out, &r.output);
    for batch in [1, 2, 3] {
        let feats = model.backbone.features(&[&r.input], r.batch(), batch).unwrap();
        assert_close(&format!("static batch: backbone plan, batch {batch}"), &feats, &r.features);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("static");
    let stdout = common::succeeds(&common::init_args(&path, &r.features_tensor, &out));
    assert!(stdout.contains("wrote skill"), "{stdout}");
    let mut s = Skill::load(&out).unwrap();
    s.smoke_test().unwrap();
}
