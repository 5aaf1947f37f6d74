//! Head forms the exporter fixtures do not cover, built directly as ONNX: Gemm with every
//! transA/transB/alpha/beta, weights as the left operand, weights through a Transpose, scalar
//! biases, weights in Constant nodes, weights shared with the backbone, and each activation.
//! For each, tract's output must equal backbone + native head, before and after export.

use crate::common;

use crate::common::onnx_builder::{GraphBuilder, attr_f, attr_i, attr_ints, attr_s, attr_t, tensor, values};
use crate::common::{assert_close, fixture};
use nalgebra::DMatrix;
use skillgraft::model::head::{Activation, LayerParams, Layout};
use skillgraft::model::onnx::OnnxFile;
use skillgraft::model::{Model, export};

const N: usize = 4;

fn load_bytes(bytes: &[u8], features: &str) -> Result<Model, String> {
    let file = OnnxFile::decode(std::path::Path::new("synthetic.onnx"), bytes).map_err(|e| e.to_string())?;
    Model::load(file, &["x"], "out", features).map_err(|e| e.to_string())
}

fn outputs(model: &mut Model, inputs: &[f32]) -> Vec<f32> {
    let w = model.control.input_width(0);
    let ow = model.control.output_width();
    let mut out = vec![0.0; N * ow];
    for i in 0..N {
        model.control.step(&[&inputs[i * w..(i + 1) * w]], &mut out[i * ow..(i + 1) * ow]).unwrap();
    }
    out
}

fn native(model: &Model, params: &[LayerParams], inputs: &[f32]) -> Vec<f32> {
    let f = model.backbone.features(&[inputs], N, 8).unwrap();
    let y = model.head.forward_with(params, &DMatrix::from_row_slice(N, model.head.in_dim(), &f));
    y.transpose().as_slice().to_vec()
}

/// Checks tract == backbone + native head, then exports new weights and checks again.
fn check(name: &str, bytes: Vec<u8>, features: &str) -> Model {
    let mut model = load_bytes(&bytes, features).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inputs = values(42, N * model.control.input_width(0));
    let got = outputs(&mut model, &inputs);
    assert_close(&format!("{name}: tract vs native head"), &native(&model, &model.head.params, &inputs), &got);
    let params: Vec<LayerParams> = model
        .head
        .params
        .iter()
        .enumerate()
        .map(|(k, p)| LayerParams {
            weight: p.weight.map(|v| v * -0.7 + 0.05 * k as f32),
            bias: p.bias.as_ref().map(|b| b.map(|v| v * 0.5 - 0.1)),
        })
        .collect();
    let proto = export::with_head_params(&model.file, &model.head, &params, &[]).unwrap();
    let mut adapted = load_bytes(&export::encode(&proto), features).unwrap_or_else(|e| panic!("{name} exported: {e}"));
    assert_close(
        &format!("{name}: backbone unchanged by export"),
        &adapted.backbone.features(&[&inputs], N, 8).unwrap(),
        &model.backbone.features(&[&inputs], N, 8).unwrap(),
    );
    let expected = native(&model, &params, &inputs);
    assert_close(&format!("{name}: exported model vs native head"), &outputs(&mut adapted, &inputs), &expected);
    for (a, b) in adapted.head.params.iter().zip(&params) {
        assert_close(&format!("{name}: weights read back"), a.weight.as_slice(), b.weight.as_slice());
    }
    model
}

/// x [N, 6] -> Gemm(6->6) -> Relu -> "feat" [N, 6].
fn backbone(g: GraphBuilder) -> GraphBuilder {
    g.input("x", &["N", "6"])
        .output("out")
        .init("w0", &[6, 6], &values(1, 36))
        .init("b0", &[6], &values(2, 6))
        .node("Gemm", &["x", "w0", "b0"], &["h0"], vec![attr_i("transB", 1)])
        .node("Relu", &["h0"], &["feat"], vec![])
}

#[test]
fn features_laid_out_feature_major_feed_a_gemm_with_trans_a() {
    let bytes = backbone(GraphBuilder::new(17))
        .node("Transpose", &["feat"], &["featT"], vec![attr_ints("perm", &[1, 0])])
        .init("w1", &[6, 4], &values(3, 24))
        .init("b1", &[4], &values(4, 4))
        .node("Gemm", &["featT", "w1", "b1"], &["y"], vec![attr_i("transA", 1)])
        .node("Tanh", &["y"], &["out"], vec![])
        .bytes();
    let m = check("transA", bytes, "featT");
    assert_eq!(m.head.features_layout(), Layout::FeatureMajor);
    assert_eq!(m.head.layers[0].activation, Activation::Tanh);
}

#[test]
fn weights_as_left_operand_with_alpha_and_beta() {
    let bytes = backbone(GraphBuilder::new(17))
        .init("w1", &[5, 6], &values(3, 30))
        .init("b1", &[5, 1], &values(4, 5))
        .node(
            "Gemm",
            &["w1", "feat", "b1"],
            &["h"],
            vec![attr_i("transB", 1), attr_f("alpha", 2.0), attr_f("beta", 0.5)],
        )
        .node("Sigmoid", &["h"], &["hs"], vec![])
        .init("w2", &[5, 3], &values(5, 15))
        .init("b2", &[3], &values(6, 3))
        .node(
            "Gemm",
            &["hs", "w2", "b2"],
            &["out"],
            vec![attr_i("transA", 1), attr_f("alpha", 0.5), attr_f("beta", 2.0)],
        )
        .bytes();
    let m = check("weights as A", bytes, "feat");
    assert_eq!(m.head.layers[0].output_layout, Layout::FeatureMajor);
    assert_eq!(m.head.layers[1].input_layout, Layout::FeatureMajor);
    assert_eq!(m.head.layers[1].output_layout, Layout::SampleMajor);
}

#[test]
fn weights_through_transpose_scalar_bias_and_reversed_add() {
    let bytes = backbone(GraphBuilder::new(17))
        .init("w1", &[5, 6], &values(3, 30))
        .node("Transpose", &["w1"], &["w1t"], vec![])
        .init("bs", &[1], &[0.25])
        .node("Gemm", &["feat", "w1t", "bs"], &["h"], vec![])
        .node("LeakyRelu", &["h"], &["ha"], vec![attr_f("alpha", 0.2)])
        .init("w2", &[5, 3], &values(5, 15))
        .init("b2", &[1, 3], &values(6, 3))
        .node("MatMul", &["ha", "w2"], &["mm"], vec![])
        .node("Add", &["b2", "mm"], &["z"], vec![])
        .node("Elu", &["z"], &["out"], vec![attr_f("alpha", 0.5)])
        .bytes();
    let m = check("transpose", bytes, "feat");
    assert!(m.head.layers[0].weight.via_transpose);
    assert_eq!(m.head.layers[0].activation, Activation::LeakyRelu(0.2));
    assert_eq!(m.head.layers[1].activation, Activation::Elu(0.5));
    assert_eq!(m.head.layers[0].bias.as_ref().unwrap().dims, vec![1]);
}

#[test]
fn matmul_with_weights_on_the_left_and_column_bias() {
    let bytes = backbone(GraphBuilder::new(17))
        .node("Transpose", &["feat"], &["featT"], vec![attr_ints("perm", &[1, 0])])
        .init("w1", &[4, 6], &values(3, 24))
        .init("b1", &[4, 1], &values(4, 4))
        .node("MatMul", &["w1", "featT"], &["mm"], vec![])
        .node("Add", &["mm", "b1"], &["z"], vec![])
        .node("Relu", &["z"], &["h"], vec![])
        .init("w2", &[4, 3], &values(5, 12))
        .node("Gemm", &["h", "w2"], &["out"], vec![attr_i("transA", 1)])
        .bytes();
    let m = check("matmul left", bytes, "featT");
    assert_eq!(m.head.layers[1].bias, None);
}

#[test]
fn weights_shared_with_the_backbone_get_a_private_copy_on_export() {
    let bytes = GraphBuilder::new(17)
        .input("x", &["N", "6"])
        .output("out")
        .init("tied", &[6, 6], &values(1, 36))
        .node("Gemm", &["x", "tied"], &["h0"], vec![attr_i("transB", 1)])
        .node("Tanh", &["h0"], &["feat"], vec![])
        .node("Gemm", &["feat", "tied"], &["h1"], vec![attr_i("transB", 1)])
        .node("Relu", &["h1"], &["h1r"], vec![])
        .init("w2", &[3, 6], &values(5, 18))
        .node("Gemm", &["h1r", "w2"], &["out"], vec![attr_i("transB", 1)])
        .bytes();
    let m = check("tied", bytes, "feat");
    assert!(m.head.layers[0].weight.shared);
}

#[test]
fn weights_in_a_constant_node() {
    let bytes = backbone(GraphBuilder::new(17))
        .node("Constant", &[], &["wc"], vec![attr_t("value", tensor("wc", &[3, 6], &values(7, 18)))])
        .node("Constant", &[], &["bc"], vec![attr_t("value", tensor("bc", &[3], &values(8, 3)))])
        .node("Gemm", &["feat", "wc", "bc"], &["out"], vec![attr_i("transB", 1)])
        .bytes();
    check("constant", bytes, "feat");
}

#[test]
fn gelu_op_in_both_forms_and_silu() {
    for (approximate, act) in [("none", Activation::GeluErf), ("tanh", Activation::GeluTanh)] {
        let bytes = backbone(GraphBuilder::new(20))
            .init("w1", &[5, 6], &values(3, 30))
            .node("Gemm", &["feat", "w1"], &["h"], vec![attr_i("transB", 1)])
            .node("Gelu", &["h"], &["g"], vec![attr_s("approximate", approximate)])
            .init("w2", &[3, 5], &values(5, 15))
            .node("Gemm", &["g", "w2"], &["z"], vec![attr_i("transB", 1)])
            .node("Sigmoid", &["z"], &["s"], vec![])
            .node("Mul", &["z", "s"], &["out"], vec![])
            .bytes();
        let m = check(&format!("gelu {approximate}"), bytes, "feat");
        assert_eq!(m.head.layers[0].activation, act);
        assert_eq!(m.head.layers[1].activation, Activation::Silu);
    }
}

#[test]
fn the_whole_network_can_be_the_head() {
    let r = common::Reference::load("mlp_gemm");
    let file = OnnxFile::read(&fixture("mlp_gemm.onnx")).unwrap();
    let mut model = Model::load(file, &["obs"], "action", "obs").unwrap();
    assert_eq!(model.head.layers.len(), 4);
    let mut out = vec![0.0; r.output_width];
    model.control.step(&[&r.input[..24]], &mut out).unwrap();
    assert_close("empty backbone", &out, &r.output[..r.output_width]);
    let feats = model.backbone.features(&[&r.input], r.batch(), 8).unwrap();
    assert_eq!(feats, r.input, "an empty backbone passes the input through");
}

#[test]
fn ops_outside_the_head_vocabulary_are_named() {
    let hard_sigmoid = backbone(GraphBuilder::new(17))
        .init("w1", &[3, 6], &values(3, 18))
        .node("Gemm", &["feat", "w1"], &["h"], vec![attr_i("transB", 1)])
        .node("HardSigmoid", &["h"], &["out"], vec![])
        .bytes();
    let err = load_bytes(&hard_sigmoid, "feat").err().unwrap();
    assert!(err.contains("HardSigmoid") && err.contains("choose a features tensor after it"), "{err}");

    let scaled = backbone(GraphBuilder::new(17))
        .init("w1", &[3, 6], &values(3, 18))
        .node("Gemm", &["feat", "w1"], &["h"], vec![attr_i("transB", 1)])
        .init("two", &[], &[2.0])
        .node("Mul", &["h", "two"], &["out"], vec![])
        .bytes();
    let err = load_bytes(&scaled, "feat").err().unwrap();
    assert!(err.contains("[Mul]") && err.contains("do not compute an activation"), "{err}");

    let computed_weight = backbone(GraphBuilder::new(17)).node("MatMul", &["feat", "feat"], &["out"], vec![]).bytes();
    let err = load_bytes(&computed_weight, "feat").err().unwrap();
    assert!(err.contains("stored weight"), "{err}");

    let side_branch = backbone(GraphBuilder::new(17))
        .node("Sigmoid", &["x"], &["side"], vec![])
        .init("w1", &[3, 6], &values(3, 18))
        .node("Gemm", &["feat", "w1"], &["out"], vec![attr_i("transB", 1)])
        .bytes();
    let err = load_bytes(&side_branch, "side").err().unwrap();
    assert!(err.contains("`side` does not feed the output `out`"), "{err}");
    let err = load_bytes(&side_branch, "out").err().unwrap();
    assert!(err.contains("is the output itself"), "{err}");

    let wrong_layout = backbone(GraphBuilder::new(17))
        .init("w1", &[3, 6], &values(3, 18))
        .node("Gemm", &["w1", "feat"], &["out"], vec![attr_i("transB", 1)])
        .bytes();
    let err = load_bytes(&wrong_layout, "feat").err().unwrap();
    assert!(err.contains("[batch, actions]"), "{err}");
}
