//! The policy model: an ONNX file loaded with tract, split at the `features` tensor into a frozen
//! backbone and an adaptable head whose weights are read from and written back into the protobuf.

pub mod export;
pub mod head;
pub mod mlp;
pub mod onnx;
pub mod plan;

use std::path::PathBuf;

use head::Head;
use onnx::{OnnxFile, declared_shape};
use plan::{BackbonePlan, ControlPlan, Feed, input_shape};

/// The tract release skillgraft is built and tested with.
pub const TRACT_VERSION: &str = "0.23.9";

/// What went wrong with a model file, where, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// The bytes are not an ONNX model.
    #[error("{} is not an ONNX model: {reason}; pass the .onnx file your exporter wrote (e.g. torch.onnx.export)", path.display())]
    NotOnnx {
        /// The file.
        path: PathBuf,
        /// What decoding found.
        reason: String,
    },
    /// The graph uses an op tract does not implement.
    #[error("{}: node `{node}` uses op `{op}`, which tract {TRACT_VERSION} does not implement; re-export the model without it (unroll loops, use opset 13 to 18)", path.display())]
    UnsupportedOp {
        /// The file.
        path: PathBuf,
        /// The node.
        node: String,
        /// The op type.
        op: String,
    },
    /// Inputs, outputs or shapes do not fit what skillgraft runs.
    #[error("{}: {problem}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// Which tensor the problem is about.
        subject: Subject,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The head between `features` and the output cannot be adapted.
    #[error("{}: cannot split at features `{features}`: {problem}", path.display())]
    Head {
        /// The file.
        path: PathBuf,
        /// The features tensor asked for.
        features: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// tract failed to analyse or optimise the graph.
    #[error("{}: tract could not {stage}: {message}", path.display())]
    Tract {
        /// The file.
        path: PathBuf,
        /// What tract was doing.
        stage: &'static str,
        /// tract's message.
        message: String,
    },
    /// Running a plan failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// New head weights could not be written into the model.
    #[error("cannot write the head weights: {0}")]
    Export(String),
}

/// The tensor a shape problem concerns, so a skill can point at the manifest field that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The graph input.
    Input,
    /// The graph output.
    Output,
    /// The features tensor.
    Features,
    /// A graph input other than the numeric observation (an image).
    Image,
}

impl ModelError {
    /// The manifest field that names what this error is about.
    pub fn manifest_field(&self) -> &'static str {
        match self {
            ModelError::Shape { subject: Subject::Input, .. } => "model.input",
            ModelError::Shape { subject: Subject::Image, .. } => "image.input",
            ModelError::Shape { subject: Subject::Output, .. } => "model.output",
            ModelError::Shape { subject: Subject::Features, .. } | ModelError::Head { .. } => "model.features",
            _ => "model.file",
        }
    }
}

/// A policy model ready to run: its file, its head and both tract plans.
pub struct Model {
    /// The decoded file.
    pub file: OnnxFile,
    /// The graph inputs in the order the caller named them (the numeric observation first, then
    /// each image), with their shapes.
    pub feeds: Vec<Feed>,
    /// Name of the graph output used as the action.
    pub output: String,
    /// The adaptable head.
    pub head: Head,
    /// Batch-1 plan for the control loop.
    pub control: ControlPlan,
    /// Input-to-features plan for feature extraction.
    pub backbone: BackbonePlan,
}

impl Model {
    /// Loads a model fed through `inputs` (every graph input, each named once; the first is the
    /// numeric observation), finds the head between `features` and `output`, and builds both
    /// plans.
    pub fn load(file: OnnxFile, inputs: &[&str], output: &str, features: &str) -> Result<Model, ModelError> {
        let path = file.path.clone();
        let shape_err = |subject, problem: String| ModelError::Shape { path: path.clone(), subject, problem };
        let ix = file.index();
        let graph_inputs = ix.inputs();
        let names: Vec<&str> = graph_inputs.iter().map(|i| i.name.as_str()).collect();
        let mut feeds = Vec::with_capacity(inputs.len());
        for (k, &input) in inputs.iter().enumerate() {
            let subject = if k == 0 { Subject::Input } else { Subject::Image };
            let Some(feed) = graph_inputs.iter().find(|g| g.name == input) else {
                let fix = match (k, names.as_slice()) {
                    (0, [one]) => format!("set model.input = \"{one}\""),
                    _ => format!("the graph's inputs are: {}", names.join(", ")),
                };
                return Err(shape_err(subject, format!("`{input}` is not an input of the graph; {fix}")));
            };
            let elem = match &feed.r#type {
                Some(tract_onnx::pb::TypeProto {
                    value: Some(tract_onnx::pb::type_proto::Value::TensorType(t)),
                    ..
                }) => t.elem_type,
                _ => 0,
            };
            if elem != tract_onnx::pb::tensor_proto::DataType::Float as i32 {
                return Err(shape_err(
                    subject,
                    format!("input `{input}` is not float32 (ONNX type {elem}); export the policy with float32 inputs"),
                ));
            }
            feeds.push(Feed { name: input.to_string(), shape: input_shape(&file, declared_shape(feed))? });
        }
        if let Some(unfed) = names.iter().find(|n| !inputs.contains(n)) {
            return Err(shape_err(
                Subject::Image,
                format!(
                    "the graph input `{unfed}` is fed by nothing; feed it from an [[image]] table (`input = \"{unfed}\"`) or export the policy without it (the graph's inputs: {})",
                    names.join(", ")
                ),
            ));
        }
        if !ix.is_graph_output(output) {
            let outs: Vec<&str> = ix.graph.output.iter().map(|o| o.name.as_str()).collect();
            return Err(shape_err(
                Subject::Output,
                format!("`{output}` is not a graph output; the outputs are: {}", outs.join(", ")),
            ));
        }
        let head = Head::discover(&ix, output, features).map_err(|e| ModelError::Head {
            path: path.clone(),
            features: features.to_string(),
            problem: e.to_string(),
        })?;
        let control = ControlPlan::build(&file, &feeds, output, None)?;
        if control.output_width() != head.out_dim() {
            return Err(shape_err(
                Subject::Output,
                format!(
                    "output `{output}` has {} values per sample but the head's last layer gives {}",
                    control.output_width(),
                    head.out_dim()
                ),
            ));
        }
        let backbone = BackbonePlan::build(&file, &feeds, features, head.features_layout(), head.in_dim())?;
        Ok(Model { feeds, output: output.to_string(), head, control, backbone, file })
    }

    /// A control plan that also gives, at each step, the input of the head's last layer (the
    /// features the posterior over that layer reads).
    pub fn probed_control(&self) -> Result<ControlPlan, ModelError> {
        let last = &self.head.layers[self.head.layers.len() - 1];
        let plan = ControlPlan::build(&self.file, &self.feeds, &self.output, Some(&last.input))?;
        if plan.probe().len() != last.in_dim {
            return Err(ModelError::Shape {
                path: self.file.path.clone(),
                subject: Subject::Features,
                problem: format!(
                    "the last layer's input `{}` has {} values at batch 1, not the {} the layer reads",
                    last.input,
                    plan.probe().len(),
                    last.in_dim
                ),
            });
        }
        Ok(plan)
    }

    /// The numeric observation's input (the first feed).
    pub fn input(&self) -> &Feed {
        &self.feeds[0]
    }

    /// ONNX nodes in the backbone (ancestors of `features`), excluding constants.
    pub fn backbone_ops(&self) -> Vec<String> {
        let ix = self.file.index();
        ix.ancestors(&self.head.features)
            .into_iter()
            .map(|i| ix.graph.node[i].op_type.clone())
            .filter(|op| op != "Constant")
            .collect()
    }
}
