//! A multilayer perceptron written as a fresh ONNX model: what `skillgraft train` exports.
//! Each layer is a `Gemm` (weights `[out, in]`, `transB = 1`, as PyTorch exports `nn.Linear`)
//! and, unless it is the identity, an activation node; the activation output of one chosen
//! layer is named `features`, so the model splits into backbone and head there.

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{Tensor, Value};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::export::METADATA_PREFIX;
use super::head::{Activation, LayerParams};

/// Name of the model's input.
pub const INPUT: &str = "obs";
/// Name of the model's output.
pub const OUTPUT: &str = "action";
/// Name of the tensor between backbone and head.
pub const FEATURES: &str = "features";

fn value_info(name: &str, width: usize) -> ValueInfoProto {
    let dim = |v: dimension::Value| Dimension { value: Some(v), ..Default::default() };
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(Value::TensorType(Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(dimension::Value::DimParam("batch".into())),
                        dim(dimension::Value::DimValue(width as i64)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tensor(name: String, dims: Vec<i64>, values: Vec<f32>) -> TensorProto {
    TensorProto { name, dims, data_type: DataType::Float as i32, float_data: values, ..Default::default() }
}

/// An MLP that cannot be written as a skill's model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MlpError {
    /// The activation has no single ONNX op here.
    #[error("an MLP layer with {0} cannot be written; use identity, relu, tanh or sigmoid")]
    Activation(Activation),
    /// The split leaves no layer for the head.
    #[error("the features come after layer {features_after} of {layers}, which leaves no head")]
    NoHead {
        /// The layer the features come after.
        features_after: usize,
        /// Layers in the MLP.
        layers: usize,
    },
}

fn activation_op(a: Activation) -> Result<&'static str, MlpError> {
    match a {
        Activation::Identity => Ok(""),
        Activation::Relu => Ok("Relu"),
        Activation::Tanh => Ok("Tanh"),
        Activation::Sigmoid => Ok("Sigmoid"),
        other => Err(MlpError::Activation(other)),
    }
}

/// The MLP `layers` (each `act(W x + b)`) as an ONNX model whose layer `features_after`
/// (counted from 0) puts out the tensor `features`; `metadata` goes into `metadata_props`
/// under the `skillgraft.` prefix.
pub fn model(
    layers: &[(LayerParams, Activation)],
    features_after: usize,
    metadata: &[(String, String)],
) -> Result<ModelProto, MlpError> {
    if features_after + 1 >= layers.len() {
        return Err(MlpError::NoHead { features_after, layers: layers.len() });
    }
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let mut input = INPUT.to_string();
    for (k, (p, act)) in layers.iter().enumerate() {
        let (out, inp) = p.weight.shape();
        let w = format!("layer{k}.weight");
        let b = format!("layer{k}.bias");
        initializers.push(tensor(w.clone(), vec![out as i64, inp as i64], p.weight.transpose().as_slice().to_vec()));
        let mut gemm_in = vec![input.clone(), w];
        if let Some(bias) = &p.bias {
            initializers.push(tensor(b.clone(), vec![out as i64], bias.as_slice().to_vec()));
            gemm_in.push(b);
        }
        let op = activation_op(*act)?;
        let name = |last: &str| match k {
            _ if k + 1 == layers.len() => OUTPUT.to_string(),
            _ if k == features_after => FEATURES.to_string(),
            _ => last.to_string(),
        };
        let linear = if op.is_empty() { name(&format!("layer{k}.out")) } else { format!("layer{k}.linear") };
        nodes.push(NodeProto {
            name: format!("layer{k}/Gemm"),
            op_type: "Gemm".into(),
            input: gemm_in,
            output: vec![linear.clone()],
            attribute: vec![AttributeProto {
                name: "transB".into(),
                i: 1,
                r#type: AttributeType::Int as i32,
                ..Default::default()
            }],
            ..Default::default()
        });
        input = linear;
        if !op.is_empty() {
            let out_name = name(&format!("layer{k}.out"));
            nodes.push(NodeProto {
                name: format!("layer{k}/{op}"),
                op_type: op.into(),
                input: vec![input.clone()],
                output: vec![out_name.clone()],
                ..Default::default()
            });
            input = out_name;
        }
    }
    let width_in = layers[0].0.weight.ncols();
    let width_out = layers[layers.len() - 1].0.weight.nrows();
    Ok(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "skillgraft".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: "mlp".into(),
            node: nodes,
            initializer: initializers,
            input: vec![value_info(INPUT, width_in)],
            output: vec![value_info(OUTPUT, width_out)],
            ..Default::default()
        }),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: format!("{METADATA_PREFIX}{k}"), value: v.clone() })
            .collect(),
        ..Default::default()
    })
}
