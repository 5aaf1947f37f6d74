//! Writing new head weights into a copy of the ModelProto, so an adapted skill is again a plain
//! ONNX file that any runtime can load.

use nalgebra::DMatrix;
use prost::Message;
use tract_onnx::pb::{ModelProto, StringStringEntryProto, TensorProto, tensor_proto::DataType};

use super::ModelError;
use super::head::{Head, LayerParams, Layout, ParamSlot, TensorRef};
use super::onnx::OnnxFile;

/// Metadata key prefix for what skillgraft records in an ONNX file.
pub const METADATA_PREFIX: &str = "skillgraft.";

/// A copy of the model with the head's parameters replaced and `metadata` recorded in
/// `metadata_props` (keys are prefixed with `skillgraft.`).
pub fn with_head_params(
    file: &OnnxFile,
    head: &Head,
    params: &[LayerParams],
    metadata: &[(String, String)],
) -> Result<ModelProto, ModelError> {
    head.check_params(params).map_err(|e| ModelError::Export(e.to_string()))?;
    let mut proto = file.proto.clone();
    for (k, (spec, p)) in head.layers.iter().zip(params).enumerate() {
        let w = if spec.weight.transposed { p.weight.transpose() } else { p.weight.clone() } / spec.weight.scale;
        write_param(&mut proto, &spec.weight, &format!("{}.skillgraft.w{k}", spec.weight.name), w)?;
        if let (Some(slot), Some(b)) = (&spec.bias, &p.bias) {
            let column = spec.output_layout == Layout::FeatureMajor;
            let m = if column {
                DMatrix::from_column_slice(b.len(), 1, b.as_slice())
            } else {
                DMatrix::from_row_slice(1, b.len(), b.as_slice())
            };
            write_param(&mut proto, slot, &format!("{}.skillgraft.b{k}", slot.name), m / slot.scale)?;
        }
    }
    for (key, value) in metadata {
        let key = format!("{METADATA_PREFIX}{key}");
        match proto.metadata_props.iter_mut().find(|e| e.key == key) {
            Some(e) => e.value = value.clone(),
            None => proto.metadata_props.push(StringStringEntryProto { key, value: value.clone() }),
        }
    }
    Ok(proto)
}

/// The protobuf encoding of a model.
pub fn encode(proto: &ModelProto) -> Vec<u8> {
    proto.encode_to_vec()
}

/// Writes `stored` (already in the stored orientation and scale) into the parameter's tensor.
fn write_param(
    proto: &mut ModelProto,
    slot: &ParamSlot,
    private_name: &str,
    stored: DMatrix<f32>,
) -> Result<(), ModelError> {
    let graph = proto.graph.as_mut().ok_or_else(|| ModelError::Export("the model has no graph".into()))?;
    let is_vector = stored.nrows() == 1 || stored.ncols() == 1;
    // A broadcast scalar bias becomes a full vector laid out like the layer's output.
    let dims: Vec<i64> = if is_vector && slot.dims.iter().product::<usize>() != stored.len() {
        if stored.ncols() == 1 { vec![stored.nrows() as i64, 1] } else { vec![stored.len() as i64] }
    } else if is_vector {
        slot.dims.iter().map(|&d| d as i64).collect()
    } else {
        vec![stored.nrows() as i64, stored.ncols() as i64]
    };
    if !is_vector && slot.dims != [stored.nrows(), stored.ncols()] {
        return Err(ModelError::Export(format!(
            "`{}` is stored as {:?} but the new values are {}x{}",
            slot.name,
            slot.dims,
            stored.nrows(),
            stored.ncols()
        )));
    }
    let raw: Vec<u8> = stored.transpose().iter().flat_map(|v| v.to_le_bytes()).collect();
    if slot.shared {
        // Other nodes read the same tensor: give this layer its own copy so the backbone keeps its
        // weights. The consumer is rewired past any Transpose, so the copy is stored unflipped.
        let values = if slot.via_transpose { stored.transpose() } else { stored };
        let raw: Vec<u8> = values.transpose().iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = if slot.via_transpose && dims.len() == 2 { vec![dims[1], dims[0]] } else { dims };
        graph.initializer.push(TensorProto {
            name: private_name.to_string(),
            dims,
            data_type: DataType::Float as i32,
            raw_data: raw,
            ..Default::default()
        });
        let (node, input) = slot.consumer;
        graph.node[node].input[input] = private_name.to_string();
        return Ok(());
    }
    let tensor = match &slot.tensor {
        TensorRef::Initializer(name) => graph.initializer.iter_mut().find(|t| &t.name == name),
        TensorRef::ConstantNode(i) => {
            graph.node[*i].attribute.iter_mut().find(|a| a.name == "value").and_then(|a| a.t.as_mut())
        }
    }
    .ok_or_else(|| ModelError::Export(format!("`{}` is no longer in the model", slot.name)))?;
    tensor.dims = dims;
    tensor.data_type = DataType::Float as i32;
    tensor.raw_data = raw;
    tensor.float_data.clear();
    tensor.data_location = None;
    tensor.external_data.clear();
    Ok(())
}
