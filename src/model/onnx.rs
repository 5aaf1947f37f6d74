//! The decoded ONNX protobuf: reading it safely, indexing its graph (who produces and consumes
//! each tensor, which tensors are constants) and reading constant tensors as f32.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;

use super::ModelError;

/// An ONNX model file, decoded.
#[derive(Debug, Clone)]
pub struct OnnxFile {
    /// Where it was read from (for messages, and to resolve external weight files).
    pub path: PathBuf,
    /// The decoded protobuf.
    pub proto: ModelProto,
}

impl OnnxFile {
    /// Reads and decodes an ONNX file, and checks that tract implements every op in it.
    pub fn read(path: &Path) -> Result<OnnxFile, ModelError> {
        let bytes = std::fs::read(path).map_err(crate::file::FileError::at("read", path))?;
        OnnxFile::decode(path, &bytes)
    }

    /// Decodes ONNX bytes; `path` names them in messages and locates external data.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<OnnxFile, ModelError> {
        let not_onnx = |reason: String| ModelError::NotOnnx { path: path.to_path_buf(), reason };
        let proto = ModelProto::decode(bytes).map_err(|e| not_onnx(format!("protobuf decoding failed ({e})")))?;
        match &proto.graph {
            Some(g) if !g.node.is_empty() && !g.output.is_empty() => {}
            _ => return Err(not_onnx("it holds no graph with nodes and outputs".into())),
        }
        let file = OnnxFile { path: path.to_path_buf(), proto };
        file.check_ops()?;
        Ok(file)
    }

    /// The graph (present: checked when decoding).
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("decode checked the graph")
    }

    /// Folder that external weight files are resolved against.
    pub fn dir(&self) -> Option<String> {
        self.path.parent().and_then(|p| p.to_str()).map(str::to_string)
    }

    /// An index of the graph for walking it.
    pub fn index(&self) -> GraphIndex<'_> {
        GraphIndex::new(self.graph(), self.dir())
    }

    /// The model's bytes with every externally stored tensor moved inside, so the file stands alone.
    pub fn inlined(&self) -> Result<Vec<u8>, ModelError> {
        let mut proto = self.proto.clone();
        let dir = self.dir();
        let external = Some(pb::tensor_proto::DataLocation::External as i32);
        if let Some(g) = proto.graph.as_mut() {
            for t in g.initializer.iter_mut().filter(|t| t.data_location == external) {
                let tensor =
                    tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, t, dir.as_deref())
                        .map_err(|e| ModelError::NotOnnx {
                            path: self.path.clone(),
                            reason: format!("its external data for `{}` cannot be read ({e})", t.name),
                        })?;
                t.raw_data = tensor.as_bytes().to_vec();
                t.external_data.clear();
                t.data_location = None;
            }
        }
        Ok(proto.encode_to_vec())
    }

    /// The opset of the default domain, 0 when absent.
    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .unwrap_or(0)
    }

    /// The file's metadata properties.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect()
    }

    fn check_ops(&self) -> Result<(), ModelError> {
        let register = tract_onnx::onnx().op_register;
        let mut stack = vec![self.graph()];
        while let Some(g) = stack.pop() {
            for node in &g.node {
                if !register.0.contains_key(&node.op_type) {
                    return Err(ModelError::UnsupportedOp {
                        path: self.path.clone(),
                        node: node_label(node),
                        op: node.op_type.clone(),
                    });
                }
                for a in &node.attribute {
                    stack.extend(a.g.iter());
                    stack.extend(a.graphs.iter());
                }
            }
        }
        Ok(())
    }
}

/// A node's name, or its op and first output when it has none.
pub fn node_label(node: &NodeProto) -> String {
    if node.name.is_empty() {
        format!("{} -> {}", node.op_type, node.output.first().map(String::as_str).unwrap_or("?"))
    } else {
        node.name.clone()
    }
}

/// A constant's shape and its values as f32, row-major.
pub type ShapedValues = (Vec<usize>, Vec<f32>);

/// Producers, consumers and constants of one graph.
pub struct GraphIndex<'a> {
    /// The graph.
    pub graph: &'a GraphProto,
    producers: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    initializers: HashMap<&'a str, usize>,
    dir: Option<String>,
}

impl<'a> GraphIndex<'a> {
    fn new(graph: &'a GraphProto, dir: Option<String>) -> GraphIndex<'a> {
        let mut producers = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for o in &node.output {
                producers.insert(o.as_str(), i);
            }
            for inp in node.input.iter().filter(|s| !s.is_empty()) {
                consumers.entry(inp.as_str()).or_default().push(i);
            }
        }
        let initializers = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        GraphIndex { graph, producers, consumers, initializers, dir }
    }

    /// The node that produces a tensor, with its index.
    pub fn producer(&self, tensor: &str) -> Option<(usize, &'a NodeProto)> {
        self.producers.get(tensor).map(|&i| (i, &self.graph.node[i]))
    }

    /// Indices of the nodes that read a tensor.
    pub fn consumers(&self, tensor: &str) -> &[usize] {
        self.consumers.get(tensor).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether the graph's outputs include this tensor.
    pub fn is_graph_output(&self, tensor: &str) -> bool {
        self.graph.output.iter().any(|o| o.name == tensor)
    }

    /// The initializer of that name.
    pub fn initializer(&self, name: &str) -> Option<&'a TensorProto> {
        self.initializers.get(name).map(|&i| &self.graph.initializer[i])
    }

    /// Graph inputs that are not initializers (the values a caller must feed).
    pub fn inputs(&self) -> Vec<&'a pb::ValueInfoProto> {
        self.graph.input.iter().filter(|i| !self.initializers.contains_key(i.name.as_str())).collect()
    }

    /// Whether the tensor exists: a feed input, an initializer or a node output.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.producers.contains_key(name)
            || self.initializers.contains_key(name)
            || self.graph.input.iter().any(|i| i.name == name)
    }

    /// Whether the tensor is a constant: an initializer or a `Constant` node's output.
    pub fn is_constant(&self, tensor: &str) -> bool {
        self.initializers.contains_key(tensor) || self.producer(tensor).is_some_and(|(_, n)| n.op_type == "Constant")
    }

    /// Reads a constant tensor (initializer or `Constant` node) as f32 with its shape.
    pub fn constant_f32(&self, tensor: &str) -> Result<Option<ShapedValues>, String> {
        let t = if let Some(init) = self.initializer(tensor) {
            tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, init, self.dir.as_deref())
                .map_err(|e| format!("cannot read initializer `{tensor}`: {e}"))?
        } else if let Some((_, node)) = self.producer(tensor).filter(|(_, n)| n.op_type == "Constant") {
            constant_node_value(node).map_err(|e| format!("cannot read Constant `{tensor}`: {e}"))?
        } else {
            return Ok(None);
        };
        let shape = t.shape().to_vec();
        let t = t.cast_to::<f32>().map_err(|e| format!("constant `{tensor}` is not numeric: {e}"))?;
        let values = t
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
            .map_err(|e| format!("constant `{tensor}`: {e}"))?;
        Ok(Some((shape, values)))
    }

    /// A float attribute, or its default.
    pub fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
        node.attribute.iter().find(|a| a.name == name).map(|a| a.f).unwrap_or(default)
    }

    /// An integer attribute, or its default.
    pub fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
        node.attribute.iter().find(|a| a.name == name).map(|a| a.i).unwrap_or(default)
    }

    /// An integer-list attribute, if present.
    pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
        node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
    }

    /// A string attribute, if present.
    pub fn attr_s(node: &NodeProto, name: &str) -> Option<String> {
        node.attribute.iter().find(|a| a.name == name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// Nodes that `tensor` depends on (its ancestors), as indices.
    pub fn ancestors(&self, tensor: &str) -> Vec<usize> {
        let mut seen = vec![false; self.graph.node.len()];
        let mut stack: Vec<&str> = vec![tensor];
        while let Some(t) = stack.pop() {
            if let Some((i, node)) = self.producer(t)
                && !seen[i]
            {
                seen[i] = true;
                stack.extend(node.input.iter().filter(|s| !s.is_empty()).map(String::as_str));
            }
        }
        seen.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i).collect()
    }
}

fn constant_node_value(node: &NodeProto) -> TractResult<Tensor> {
    for a in &node.attribute {
        match a.name.as_str() {
            "value" => {
                let t = a.t.as_ref().ok_or_else(|| TractError::msg("`value` attribute holds no tensor"))?;
                return tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::MmapDataResolver, t, None);
            }
            "value_float" => return Ok(tensor0(a.f)),
            "value_floats" => return Ok(tensor1(&a.floats)),
            "value_int" => return Ok(tensor0(a.i as f32)),
            "value_ints" => {
                return Ok(tensor1(&a.ints.iter().map(|&i| i as f32).collect::<Vec<_>>()));
            }
            _ => {}
        }
    }
    Err(TractError::msg("Constant node has no value attribute"))
}

/// Shape of a graph input or output as declared in the file: numbers, or names for symbolic dims.
pub fn declared_shape(info: &pb::ValueInfoProto) -> Vec<String> {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as TypeValue;
    let Some(pb::TypeProto { value: Some(TypeValue::TensorType(t)), .. }) = &info.r#type else {
        return vec![];
    };
    t.shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(v)) => v.to_string(),
                    Some(Value::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default()
}
