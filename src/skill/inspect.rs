//! `skillgraft inspect`: what a skill or an ONNX file is, as a serialisable report with a
//! plain-text rendering.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;

use serde::Serialize;

use super::manifest::{Manifest, Provenance, SafeAction};
use super::{Skill, SkillError};
use crate::model::head::{Head, Layout, LinearOp, SplitCandidate};
use crate::model::onnx::{OnnxFile, declared_shape};
use crate::model::{Model, ModelError, Subject};

/// Report on a skill folder.
#[derive(Debug, Serialize)]
pub struct SkillReport {
    /// Always "skill".
    pub kind: &'static str,
    /// The folder.
    pub path: String,
    /// Skill name.
    pub name: String,
    /// Skill version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Its digest.
    pub digest: String,
    /// Where it came from.
    pub provenance: Provenance,
    /// Control rate.
    pub rate_hz: f64,
    /// Stacked frames.
    pub history: usize,
    /// Inputs.
    pub observations: Vec<TopicReport>,
    /// Camera inputs, as the manifest declares them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::skill::manifest::ImageInput>,
    /// Output.
    pub action: ActionReport,
    /// The model.
    pub model: ModelReport,
}

/// One observation input.
#[derive(Debug, Serialize)]
pub struct TopicReport {
    /// Topic.
    pub topic: String,
    /// Message type.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// One label per value.
    pub values: Vec<String>,
    /// Staleness limit.
    pub max_age_ms: f64,
}

/// The action output.
#[derive(Debug, Serialize)]
pub struct ActionReport {
    /// Topic.
    pub topic: String,
    /// Message type.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// One label per value.
    pub values: Vec<String>,
    /// Lower limits.
    pub lower: Vec<f64>,
    /// Upper limits.
    pub upper: Vec<f64>,
    /// Rate limits.
    pub max_delta: Vec<f64>,
    /// Safe action.
    pub safe: SafeAction,
}

/// The model behind a skill, or a bare ONNX file split at a features tensor.
#[derive(Debug, Serialize)]
pub struct ModelReport {
    /// Model file.
    pub file: String,
    /// Producer and version recorded in the file.
    pub producer: String,
    /// Default-domain opset.
    pub opset: i64,
    /// Input name.
    pub input: String,
    /// Input shape as declared.
    pub input_shape: Vec<String>,
    /// The image inputs: name and shape as declared.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_inputs: Vec<(String, Vec<String>)>,
    /// Output name.
    pub output: String,
    /// Output width.
    pub output_width: usize,
    /// The backbone.
    pub backbone: BackboneReport,
    /// The head.
    pub head: HeadReport,
    /// skillgraft metadata recorded in the file.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The frozen backbone.
#[derive(Debug, Serialize)]
pub struct BackboneReport {
    /// The features tensor.
    pub features: String,
    /// Its width.
    pub features_width: usize,
    /// Its layout.
    pub features_layout: Layout,
    /// Number of ONNX ops (constants excluded).
    pub ops: usize,
    /// Ops by type.
    pub op_types: BTreeMap<String, usize>,
}

/// The adaptable head.
#[derive(Debug, Serialize)]
pub struct HeadReport {
    /// Layers, input to output.
    pub layers: Vec<LayerReport>,
    /// Trainable parameters.
    pub params: usize,
}

/// One head layer.
#[derive(Debug, Serialize)]
pub struct LayerReport {
    /// Linear node name.
    pub name: String,
    /// Construct.
    pub op: LinearOp,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Activation.
    pub activation: String,
    /// Ops making up the activation.
    pub activation_ops: Vec<String>,
    /// Weight tensor and its stored shape.
    pub weight: String,
    /// Bias tensor, if any.
    pub bias: Option<String>,
    /// Trainable parameters.
    pub params: usize,
}

/// Report on a bare ONNX file without a chosen split.
#[derive(Debug, Serialize)]
pub struct OnnxReport {
    /// Always "onnx".
    pub kind: &'static str,
    /// The file.
    pub path: String,
    /// Producer.
    pub producer: String,
    /// Opset.
    pub opset: i64,
    /// Feed inputs with declared shapes.
    pub inputs: Vec<(String, Vec<String>)>,
    /// Outputs.
    pub outputs: Vec<String>,
    /// The output the splits end in.
    pub output: String,
    /// Where the model can be split, nearest the output first.
    pub splits: Vec<SplitCandidate>,
    /// Why no deeper split is possible.
    pub stops_because: String,
}

/// The report for a skill.
pub fn skill_report(skill: &Skill) -> SkillReport {
    let m: &Manifest = &skill.manifest;
    let observations = m
        .observation_slots()
        .iter()
        .zip(&m.observations)
        .map(|(slot, o)| TopicReport {
            topic: o.topic.clone(),
            msg_type: o.msg_type.clone(),
            values: slot.labels(&o.joints),
            max_age_ms: o.max_age_ms,
        })
        .collect();
    let a = &m.action;
    SkillReport {
        kind: "skill",
        path: skill.dir.display().to_string(),
        name: m.name.clone(),
        version: m.version.to_string(),
        description: m.description.clone(),
        digest: skill.digest.clone(),
        provenance: m.provenance.clone(),
        rate_hz: m.control.rate_hz,
        history: m.control.history,
        observations,
        images: m.images.clone(),
        action: ActionReport {
            topic: a.topic.clone(),
            msg_type: a.msg_type.clone(),
            values: m.action_labels(),
            lower: a.lower.clone(),
            upper: a.upper.clone(),
            max_delta: a.max_delta.clone(),
            safe: a.safe,
        },
        model: model_report(&skill.model),
    }
}

/// The report for a loaded model.
pub fn model_report(model: &Model) -> ModelReport {
    let head: &Head = &model.head;
    let ops = model.backbone_ops();
    let mut op_types = BTreeMap::new();
    for op in &ops {
        *op_types.entry(op.clone()).or_insert(0) += 1;
    }
    let p = &model.file.proto;
    ModelReport {
        file: model.file.path.display().to_string(),
        producer: format!("{} {}", p.producer_name, p.producer_version).trim().to_string(),
        opset: model.file.opset(),
        input: model.input().name.clone(),
        input_shape: model.input().shape.declared.clone(),
        image_inputs: model.feeds[1..].iter().map(|f| (f.name.clone(), f.shape.declared.clone())).collect(),
        output: model.output.clone(),
        output_width: head.out_dim(),
        backbone: BackboneReport {
            features: head.features.clone(),
            features_width: head.in_dim(),
            features_layout: head.features_layout(),
            ops: ops.len(),
            op_types,
        },
        head: HeadReport {
            layers: head
                .layers
                .iter()
                .map(|l| LayerReport {
                    name: l.name.clone(),
                    op: l.op,
                    inputs: l.in_dim,
                    outputs: l.out_dim,
                    activation: l.activation.to_string(),
                    activation_ops: l.activation_ops.clone(),
                    weight: format!("{} {:?}", l.weight.name, l.weight.dims),
                    bias: l.bias.as_ref().map(|b| format!("{} {:?}", b.name, b.dims)),
                    params: l.param_count(),
                })
                .collect(),
            params: head.param_count(),
        },
        metadata: model.file.metadata().into_iter().filter(|(k, _)| k.starts_with("skillgraft.")).collect(),
    }
}

/// The report for a bare ONNX file: with `features`, the split there; without, every possible split.
pub fn onnx_report(
    path: &Path,
    features: Option<&str>,
    output: Option<&str>,
) -> Result<Result<ModelReport, OnnxReport>, SkillError> {
    let file = OnnxFile::read(path)?;
    let ix = file.index();
    let output = match output {
        Some(o) if ix.is_graph_output(o) => o.to_string(),
        Some(o) => {
            let outs: Vec<&str> = ix.graph.output.iter().map(|x| x.name.as_str()).collect();
            return Err(ModelError::Shape {
                path: path.to_path_buf(),
                subject: Subject::Output,
                problem: format!("`{o}` is not a graph output; the outputs are: {}", outs.join(", ")),
            }
            .into());
        }
        None => ix.graph.output[0].name.clone(),
    };
    let inputs: Vec<(String, Vec<String>)> = ix.inputs().iter().map(|i| (i.name.clone(), declared_shape(i))).collect();
    if let Some(features) = features {
        let (numeric, images) = super::split_inputs(&file)?;
        let feeds: Vec<&str> =
            std::iter::once(numeric.as_str()).chain(images.iter().map(|i| i.input.as_str())).collect();
        drop(ix);
        let model = Model::load(file, &feeds, &output, features)?;
        return Ok(Ok(model_report(&model)));
    }
    let (splits, stops_because) = Head::split_candidates(&ix, &output);
    let p = &file.proto;
    Ok(Err(OnnxReport {
        kind: "onnx",
        path: path.display().to_string(),
        producer: format!("{} {}", p.producer_name, p.producer_version).trim().to_string(),
        opset: file.opset(),
        inputs,
        outputs: ix.graph.output.iter().map(|o| o.name.clone()).collect(),
        output,
        splits,
        stops_because,
    }))
}

fn vec_text(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    format!("[{}]", items.join(", "))
}

impl fmt::Display for SkillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "skill     {} {}  ({})", self.name, self.version, self.path)?;
        writeln!(f, "about     {}", self.description)?;
        writeln!(f, "digest    {}", self.digest)?;
        let p = &self.provenance;
        write!(f, "origin    {} on robot {}", p.method, p.source_robot)?;
        if let Some(parent) = &p.parent {
            write!(f, ", parent {parent}")?;
        }
        if let Some(created) = &p.created {
            write!(f, ", {created}")?;
        }
        writeln!(f)?;
        for (k, v) in &p.details {
            writeln!(f, "          {k} = {v}")?;
        }
        writeln!(f, "control   {} Hz, history {} frame(s)", self.rate_hz, self.history)?;
        writeln!(f, "observations")?;
        for o in &self.observations {
            writeln!(f, "  {} ({}, max age {} ms): {} values", o.topic, o.msg_type, o.max_age_ms, o.values.len())?;
            writeln!(f, "    {}", o.values.join(", "))?;
        }
        for im in &self.images {
            writeln!(f, "  {} ({}, max age {} ms): image -> `{}`", im.topic, im.msg_type, im.max_age_ms, im.input)?;
            let encodings =
                if im.encodings.is_empty() { "any that converts".to_string() } else { im.encodings.join(", ") };
            writeln!(
                f,
                "    {:?} {}x{} {:?}, {:?} resize, crop {:?}, x{} then mean {} std {}; encodings: {encodings}",
                im.channels,
                im.width,
                im.height,
                im.layout,
                im.resize,
                im.crop,
                im.scale,
                vec_text(&im.mean),
                vec_text(&im.std)
            )?;
        }
        let a = &self.action;
        writeln!(f, "action")?;
        writeln!(f, "  {} ({}, safe action: {:?}): {} values", a.topic, a.msg_type, a.safe, a.values.len())?;
        writeln!(f, "    {}", a.values.join(", "))?;
        writeln!(
            f,
            "    lower {}  upper {}  max change/tick {}",
            vec_text(&a.lower),
            vec_text(&a.upper),
            vec_text(&a.max_delta)
        )?;
        write!(f, "{}", self.model)
    }
}

impl fmt::Display for ModelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "model     {} ({}, opset {})",
            self.file,
            if self.producer.is_empty() { "unknown producer" } else { &self.producer },
            self.opset
        )?;
        writeln!(f, "  input   {} {:?}", self.input, self.input_shape)?;
        for (name, shape) in &self.image_inputs {
            writeln!(f, "  input   {name} {shape:?} (image)")?;
        }
        writeln!(f, "  output  {} ({} values)", self.output, self.output_width)?;
        let b = &self.backbone;
        let mut ops = String::new();
        for (op, n) in &b.op_types {
            let _ = write!(ops, "{op} x{n}, ");
        }
        writeln!(
            f,
            "backbone  {} ops ({}) -> features `{}` ({} values, {:?})",
            b.ops,
            ops.trim_end_matches(", "),
            b.features,
            b.features_width,
            b.features_layout
        )?;
        writeln!(f, "head      {} layer(s), {} parameters", self.head.layers.len(), self.head.params)?;
        writeln!(f, "  {:<3} {:<28} {:<10} {:>12} {:<14} {:>9}", "#", "node", "op", "shape", "activation", "params")?;
        for (i, l) in self.head.layers.iter().enumerate() {
            let act = if l.activation_ops.len() > 1 {
                format!("{} ({} ops)", l.activation, l.activation_ops.len())
            } else {
                l.activation.clone()
            };
            writeln!(
                f,
                "  {:<3} {:<28} {:<10} {:>12} {:<14} {:>9}",
                i,
                truncate(&l.name, 28),
                format!("{:?}", l.op),
                format!("{} -> {}", l.inputs, l.outputs),
                act,
                l.params
            )?;
        }
        for (k, v) in &self.metadata {
            writeln!(f, "metadata  {k} = {v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for OnnxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "onnx      {} ({}, opset {})",
            self.path,
            if self.producer.is_empty() { "unknown producer" } else { &self.producer },
            self.opset
        )?;
        for (name, shape) in &self.inputs {
            writeln!(f, "  input   {name} {shape:?}")?;
        }
        writeln!(f, "  outputs {}", self.outputs.join(", "))?;
        if self.splits.is_empty() {
            writeln!(f, "no backbone/head split is possible before `{}`: {}", self.output, self.stops_because)?;
            return Ok(());
        }
        writeln!(f, "backbone/head splits before `{}` (pass one as --features):", self.output)?;
        writeln!(f, "  {:<48} {:>8} {:>12} {:>12}", "features tensor", "width", "head layers", "head params")?;
        for s in &self.splits {
            writeln!(f, "  {:<48} {:>8} {:>12} {:>12}", s.tensor, s.width, s.head_layers, s.head_params)?;
        }
        if !self.stops_because.is_empty() {
            writeln!(f, "no deeper split: {}", self.stops_because)?;
        }
        Ok(())
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s.chars().rev().take(n - 1).collect::<Vec<_>>().into_iter().rev().collect();
        format!("…{tail}")
    }
}
