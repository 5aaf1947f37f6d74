//! The head: the chain of linear layers and activations from the `features` tensor to the policy
//! output. It is found by walking the ONNX graph back from the output, its weights are read from
//! the protobuf (not from tract's constants, which merge equal values), and it runs natively on
//! nalgebra so adapted weights can be evaluated without rebuilding a tract plan.

use std::collections::BTreeSet;
use std::fmt;

use nalgebra::{DMatrix, DVector};
use serde::Serialize;

use super::onnx::{GraphIndex, node_label};

/// An element-wise activation that may follow a linear layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// No activation.
    Identity,
    /// max(x, 0).
    Relu,
    /// x for x ≥ 0, alpha·x below.
    LeakyRelu(f32),
    /// tanh(x).
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// x for x ≥ 0, alpha·(e^x − 1) below.
    Elu(f32),
    /// x·Φ(x) with the exact normal CDF.
    GeluErf,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// x·sigmoid(x) (also called swish).
    Silu,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

impl Activation {
    /// One activation of every kind, parameterised ones with a typical parameter: what the
    /// gradient checks and the GPU tests run through.
    pub const EVERY_KIND: [Activation; 9] = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.1),
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Elu(0.7),
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::Silu,
    ];

    /// Applies the activation to one value.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => sigmoid32(x),
            Activation::Elu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            Activation::GeluErf => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
            Activation::GeluTanh => {
                let k = SQRT_2_OVER_PI as f32;
                0.5 * x * (1.0 + (k * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Silu => x * sigmoid32(x),
        }
    }

    /// Applies the activation in f64.
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a as f64 * x
                }
            }
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Elu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a as f64 * x.exp_m1()
                }
            }
            Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::GeluTanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh()),
            Activation::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

impl Activation {
    /// The derivative at `x`, in f64 (training back-propagates through it).
    pub fn derivative_f64(self, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu(a) => {
                if x >= 0.0 {
                    1.0
                } else {
                    a as f64
                }
            }
            Activation::Tanh => 1.0 - x.tanh().powi(2),
            Activation::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Activation::Elu(a) => {
                if x >= 0.0 {
                    1.0
                } else {
                    a as f64 * x.exp()
                }
            }
            Activation::GeluErf => {
                let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
                let t = u.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
            }
            Activation::Silu => {
                let s = sigmoid(x);
                s + x * s * (1.0 - s)
            }
        }
    }
}

fn sigmoid32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Identity => f.write_str("none"),
            Activation::Relu => f.write_str("relu"),
            Activation::LeakyRelu(a) => write!(f, "leaky_relu({a})"),
            Activation::Tanh => f.write_str("tanh"),
            Activation::Sigmoid => f.write_str("sigmoid"),
            Activation::Elu(a) => write!(f, "elu({a})"),
            Activation::GeluErf => f.write_str("gelu"),
            Activation::GeluTanh => f.write_str("gelu_tanh"),
            Activation::Silu => f.write_str("silu"),
        }
    }
}

impl Serialize for Activation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a 2-D tensor in the head holds a batch: one sample per row, or one per column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `[batch, features]`.
    SampleMajor,
    /// `[features, batch]`.
    FeatureMajor,
}

/// Which ONNX construct a linear layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LinearOp {
    /// One `Gemm` node.
    Gemm,
    /// `MatMul` followed by `Add` of a stored bias.
    MatMulAdd,
    /// `MatMul` alone (no bias).
    MatMul,
}

/// Where a stored parameter tensor lives in the protobuf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorRef {
    /// A graph initializer, by name.
    Initializer(String),
    /// The `value` attribute of a `Constant` node, by node index.
    ConstantNode(usize),
}

/// A parameter tensor of a layer and how its stored values relate to the effective ones.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSlot {
    /// Where the values are stored.
    pub tensor: TensorRef,
    /// The stored tensor's name, for messages.
    pub name: String,
    /// Stored dims.
    pub dims: Vec<usize>,
    /// Weights: stored matrix is the effective `[out, in]` matrix transposed.
    pub transposed: bool,
    /// The consumer reads it through a `Transpose` node.
    pub via_transpose: bool,
    /// Effective = scale · stored (Gemm alpha for weights, beta for biases).
    pub scale: f32,
    /// Other nodes read the same stored tensor, so writing it needs a private copy.
    pub shared: bool,
    /// Node index and input position that read this parameter (or its Transpose).
    pub consumer: (usize, usize),
}

/// One linear layer of the head and the activation after it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// Name of the linear node.
    pub name: String,
    /// Which construct it is.
    pub op: LinearOp,
    /// Tensor the layer reads.
    pub input: String,
    /// Tensor after the activation (the layer's output).
    pub output: String,
    /// The activation.
    pub activation: Activation,
    /// Op types of the nodes that make up the activation (several when decomposed).
    pub activation_ops: Vec<String>,
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// Layout of the input tensor.
    pub input_layout: Layout,
    /// Layout of the output tensor.
    pub output_layout: Layout,
    /// The weight matrix.
    pub weight: ParamSlot,
    /// The bias, if the layer has one.
    pub bias: Option<ParamSlot>,
    /// Indices of every node of the layer (linear, bias add, activation).
    pub nodes: Vec<usize>,
}

impl LayerSpec {
    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        self.in_dim * self.out_dim + if self.bias.is_some() { self.out_dim } else { 0 }
    }
}

/// Effective parameters of one layer: `y = act(W x + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams {
    /// `[out, in]`.
    pub weight: DMatrix<f32>,
    /// `[out]`, when the layer has a bias.
    pub bias: Option<DVector<f32>>,
}

impl LayerParams {
    /// `act(x Wᵀ + b)` for inputs `x`, one sample per row.
    pub fn forward(&self, act: Activation, x: &DMatrix<f32>) -> DMatrix<f32> {
        let mut z = x * self.weight.transpose();
        if let Some(b) = &self.bias {
            for mut row in z.row_iter_mut() {
                row += b.transpose();
            }
        }
        z.apply(|v| *v = act.apply(*v));
        z
    }
}

/// The adaptable head of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Tensor the head starts from.
    pub features: String,
    /// Tensor the head ends in (the policy output).
    pub output: String,
    /// Layers, input to output.
    pub layers: Vec<LayerSpec>,
    /// Their parameters as stored in the model.
    pub params: Vec<LayerParams>,
}

/// A tensor where a backbone/head split is possible.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitCandidate {
    /// The tensor name to give as `features`.
    pub tensor: String,
    /// Width of the features.
    pub width: usize,
    /// Linear layers in the head if split there.
    pub head_layers: usize,
    /// Trainable parameters in that head.
    pub head_params: usize,
}

/// Why a head could not be read; the message names the tensor or node and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeadError {
    /// The features tensor is missing, is the output, or is not on the path to the output.
    #[error("{0}")]
    Split(String),
    /// A node in the head is not a form skillgraft can adapt.
    #[error("{0}")]
    Unsupported(String),
    /// Stored weights or biases, or the shapes between layers, do not fit a head.
    #[error("{0}")]
    Weights(String),
}

const UNARY: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "Elu",
    "Gelu",
    "Erf",
    "Sqrt",
    "Exp",
    "Neg",
    "Abs",
    "Reciprocal",
    "Identity",
    "Softplus",
];
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow"];

impl Head {
    /// Reads the head between `features` and `output`.
    pub fn discover(ix: &GraphIndex<'_>, output: &str, features: &str) -> Result<Head, HeadError> {
        if !ix.has_tensor(features) {
            return Err(HeadError::Split(format!(
                "there is no tensor `{features}` in the graph; give a tensor name (`skillgraft inspect MODEL.onnx` lists the tensors where a backbone/head split is possible)"
            )));
        }
        let feeds_output = ix.ancestors(output).iter().any(|&i| ix.graph.node[i].input.iter().any(|t| t == features));
        if !feeds_output && features != output {
            return Err(HeadError::Split(format!(
                "`{features}` does not feed the output `{output}`; choose a tensor on the path from the input to the output"
            )));
        }
        let (layers, stopped) = walk(ix, output, Some(features));
        stopped?;
        Ok(from_walk(features, output, layers))
    }

    /// Every tensor where the graph could be split into a backbone and a head, nearest to the
    /// output first, and why the walk stopped where it did.
    pub fn split_candidates(ix: &GraphIndex<'_>, output: &str) -> (Vec<SplitCandidate>, String) {
        let (layers, stopped) = walk(ix, output, None);
        let mut out = Vec::new();
        let mut params = 0;
        for (k, (spec, _)) in layers.iter().enumerate() {
            params += spec.param_count();
            out.push(SplitCandidate {
                tensor: spec.input.clone(),
                width: spec.in_dim,
                head_layers: k + 1,
                head_params: params,
            });
        }
        (out, stopped.err().map(|e| e.to_string()).unwrap_or_default())
    }

    /// Layout of the features tensor.
    pub fn features_layout(&self) -> Layout {
        self.layers[0].input_layout
    }

    /// Features width.
    pub fn in_dim(&self) -> usize {
        self.layers[0].in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.layers.last().map(|l| l.out_dim).unwrap_or(0)
    }

    /// Trainable parameters in the head.
    pub fn param_count(&self) -> usize {
        self.layers.iter().map(LayerSpec::param_count).sum()
    }

    /// Runs the head on features, one sample per row, with the stored parameters.
    pub fn forward(&self, features: &DMatrix<f32>) -> DMatrix<f32> {
        self.forward_with(&self.params, features)
    }

    /// Runs the head on features (one sample per row) with other parameters of the same shapes.
    pub fn forward_with(&self, params: &[LayerParams], features: &DMatrix<f32>) -> DMatrix<f32> {
        self.forward_layers(params, features, 0..self.layers.len())
    }

    /// Runs layers `range` of the head (with their parameters in `params`, indexed like the
    /// head's layers) on `input`, one sample per row: what layer `range.start` reads in, what
    /// layer `range.end - 1` puts out.
    pub fn forward_layers(
        &self,
        params: &[LayerParams],
        input: &DMatrix<f32>,
        range: std::ops::Range<usize>,
    ) -> DMatrix<f32> {
        let mut h = input.clone();
        for (spec, p) in self.layers[range.clone()].iter().zip(&params[range]) {
            h = p.forward(spec.activation, &h);
        }
        h
    }

    /// Checks that `params` fit this head's layers (same count and shapes).
    pub fn check_params(&self, params: &[LayerParams]) -> Result<(), HeadError> {
        if params.len() != self.layers.len() {
            return Err(HeadError::Weights(format!(
                "{} parameter sets given for a head of {} layers",
                params.len(),
                self.layers.len()
            )));
        }
        for (k, (spec, p)) in self.layers.iter().zip(params).enumerate() {
            if p.weight.shape() != (spec.out_dim, spec.in_dim) {
                return Err(HeadError::Weights(format!(
                    "layer {k} (`{}`) weight is {:?}, the head needs {:?}",
                    spec.name,
                    p.weight.shape(),
                    (spec.out_dim, spec.in_dim)
                )));
            }
            if p.bias.as_ref().map(|b| b.len()) != spec.bias.as_ref().map(|_| spec.out_dim) {
                return Err(HeadError::Weights(format!("layer {k} (`{}`) bias does not match the head's", spec.name)));
            }
            let finite = p.weight.iter().chain(p.bias.iter().flat_map(|b| b.iter())).all(|v| v.is_finite());
            if !finite {
                return Err(HeadError::Weights(format!("layer {k} (`{}`) has a value that is not finite", spec.name)));
            }
        }
        Ok(())
    }
}

fn from_walk(features: &str, output: &str, mut layers: Vec<(LayerSpec, LayerParams)>) -> Head {
    layers.reverse();
    let (layers, params) = layers.into_iter().unzip();
    Head { features: features.to_string(), output: output.to_string(), layers, params }
}

/// Walks back from `output`, one layer at a time, until `stop` (or, without one, as far as it can).
fn walk(
    ix: &GraphIndex<'_>,
    output: &str,
    stop: Option<&str>,
) -> (Vec<(LayerSpec, LayerParams)>, Result<(), HeadError>) {
    let mut layers: Vec<(LayerSpec, LayerParams)> = Vec::new();
    let mut t = output.to_string();
    let mut expected = Layout::SampleMajor;
    let boundary = stop.unwrap_or("");
    loop {
        if Some(t.as_str()) == stop {
            if layers.is_empty() {
                return (
                    layers,
                    Err(HeadError::Split(format!(
                        "`{t}` is the output itself, so the head would be empty; choose a tensor before the last linear layer"
                    ))),
                );
            }
            return (layers, Ok(()));
        }
        let step = match_layer(ix, &t, boundary).and_then(|(spec, params)| {
            if spec.output_layout != expected {
                let problem = if layers.is_empty() {
                    format!(
                        "the policy output `{output}` comes out as [actions, batch] from `{}`; skillgraft needs [batch, actions]",
                        spec.name
                    )
                } else {
                    format!("layer `{}` produces a {:?} tensor but the next layer reads it as {:?}", spec.name, spec.output_layout, expected)
                };
                return Err(HeadError::Weights(problem));
            }
            if let Some((next, _)) = layers.last()
                && next.in_dim != spec.out_dim
            {
                return Err(HeadError::Weights(format!(
                    "layer `{}` outputs {} values but `{}` reads {}",
                    spec.name, spec.out_dim, next.name, next.in_dim
                )));
            }
            Ok((spec, params))
        });
        match step {
            Ok((spec, params)) => {
                expected = spec.input_layout;
                t = spec.input.clone();
                layers.push((spec, params));
            }
            Err(e) => return (layers, Err(e)),
        }
        if stop.is_some() && ix.producer(&t).is_none() && Some(t.as_str()) != stop {
            return (
                layers,
                Err(HeadError::Split(format!(
                    "walking back from `{output}` reached the graph input `{t}` without passing `{}`; the features tensor must lie on the path from the input to the output",
                    boundary
                ))),
            );
        }
    }
}

/// Matches one linear layer (and its activation) that ends in tensor `t`.
fn match_layer(ix: &GraphIndex<'_>, t: &str, features: &str) -> Result<(LayerSpec, LayerParams), HeadError> {
    let (activation, activation_ops, act_nodes, linear_out) = match activation_at(ix, t, features)? {
        Some((act, x, nodes)) => {
            let ops = nodes.iter().map(|&i| ix.graph.node[i].op_type.clone()).collect();
            (act, ops, nodes, x)
        }
        None => (Activation::Identity, vec![], vec![], t.to_string()),
    };
    let Some((_, node)) = ix.producer(&linear_out) else {
        return Err(HeadError::Unsupported(format!(
            "`{linear_out}` is a graph input, not the output of a linear layer; choose a features tensor after the first linear layer"
        )));
    };
    let mut layer = match node.op_type.as_str() {
        "Gemm" => match_gemm(ix, &linear_out)?,
        "MatMul" => match_matmul(ix, &linear_out, None)?,
        "Add" if is_bias_add(ix, &linear_out) => {
            let mm = node.input.iter().find(|i| ix.producer(i).is_some_and(|(_, n)| n.op_type == "MatMul"));
            match_matmul(ix, mm.expect("is_bias_add found the MatMul"), Some(&linear_out))?
        }
        other => {
            return Err(HeadError::Unsupported(format!(
                "node `{}` ({other}) is in the head, which may hold only Gemm, MatMul (+ Add) and element-wise activations; choose a features tensor after it (`skillgraft inspect MODEL.onnx` lists the valid splits)",
                node_label(node)
            )));
        }
    };
    layer.0.output = t.to_string();
    layer.0.activation = activation;
    layer.0.activation_ops = activation_ops;
    layer.0.nodes.extend(act_nodes);
    Ok(layer)
}

/// Whether `t` is `MatMul(..) + stored bias` (either operand order).
fn is_bias_add(ix: &GraphIndex<'_>, t: &str) -> bool {
    let Some((_, node)) = ix.producer(t) else {
        return false;
    };
    if node.op_type != "Add" || node.input.len() != 2 {
        return false;
    }
    let from_matmul = |s: &str| ix.producer(s).is_some_and(|(_, n)| n.op_type == "MatMul");
    let (a, b) = (&node.input[0], &node.input[1]);
    (from_matmul(a) && ix.is_constant(b)) || (from_matmul(b) && ix.is_constant(a))
}

/// Whether `t` is the end of a linear layer (so an activation search stops there).
fn is_linear_end(ix: &GraphIndex<'_>, t: &str) -> bool {
    ix.producer(t).is_some_and(|(_, n)| n.op_type == "Gemm" || n.op_type == "MatMul") || is_bias_add(ix, t)
}

/// Finds the element-wise subgraph ending in `t` and names the activation it computes.
/// Returns None when `t` is produced directly by a linear layer, or by something that is not a
/// single-input element-wise subgraph (the caller then reports that node).
fn activation_at(
    ix: &GraphIndex<'_>,
    t: &str,
    features: &str,
) -> Result<Option<(Activation, String, Vec<usize>)>, HeadError> {
    if is_linear_end(ix, t) {
        return Ok(None);
    }
    let mut nodes: BTreeSet<usize> = BTreeSet::new();
    let mut leaves: BTreeSet<String> = BTreeSet::new();
    let mut stack = vec![t.to_string()];
    while let Some(u) = stack.pop() {
        if u == features || is_linear_end(ix, &u) {
            leaves.insert(u);
            continue;
        }
        if ix.is_constant(&u) {
            match ix.constant_f32(&u) {
                Ok(Some((_, v))) if v.len() == 1 => continue,
                _ => return Ok(None),
            }
        }
        match ix.producer(&u) {
            Some((i, node)) if UNARY.contains(&node.op_type.as_str()) || BINARY.contains(&node.op_type.as_str()) => {
                if nodes.insert(i) {
                    stack.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
                }
            }
            _ => {
                leaves.insert(u);
            }
        }
    }
    if nodes.is_empty() || leaves.len() != 1 {
        return Ok(None);
    }
    let x = leaves.into_iter().next().expect("one leaf");
    for &i in &nodes {
        for o in &ix.graph.node[i].output {
            if o != t && (ix.is_graph_output(o) || ix.consumers(o).iter().any(|c| !nodes.contains(c))) {
                return Ok(None);
            }
        }
    }
    let order: Vec<usize> = nodes.iter().copied().collect();
    let probe: Vec<f64> = (-160..=160).map(|k| k as f64 * 0.05).collect();
    let Some(y) = evaluate(ix, &order, &x, t, &probe) else {
        return Ok(None);
    };
    let mut candidates = vec![
        Activation::Identity,
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::Silu,
    ];
    for &i in &order {
        let n = &ix.graph.node[i];
        match n.op_type.as_str() {
            "LeakyRelu" => candidates.push(Activation::LeakyRelu(GraphIndex::attr_f(n, "alpha", 0.01))),
            "Elu" => candidates.push(Activation::Elu(GraphIndex::attr_f(n, "alpha", 1.0))),
            _ => {}
        }
    }
    let matches = |a: Activation| {
        probe.iter().zip(&y).all(|(&xv, &yv)| {
            let want = a.apply_f64(xv);
            (yv - want).abs() <= 1e-6 + 1e-5 * want.abs()
        })
    };
    match candidates.into_iter().find(|&a| matches(a)) {
        Some(a) => Ok(Some((a, x, order))),
        None => {
            let ops: Vec<&str> = order.iter().map(|&i| ix.graph.node[i].op_type.as_str()).collect();
            Err(HeadError::Unsupported(format!(
                "the element-wise nodes [{}] between `{x}` and `{t}` do not compute an activation skillgraft knows (relu, leaky_relu, tanh, sigmoid, elu, gelu, gelu_tanh, silu); choose a features tensor after them",
                ops.join(", ")
            )))
        }
    }
}

/// Evaluates an element-wise subgraph on probe values of its one variable input.
fn evaluate(ix: &GraphIndex<'_>, order: &[usize], x: &str, t: &str, probe: &[f64]) -> Option<Vec<f64>> {
    let mut values: std::collections::HashMap<String, Vec<f64>> = std::collections::HashMap::new();
    values.insert(x.to_string(), probe.to_vec());
    let n = probe.len();
    let get = |values: &std::collections::HashMap<String, Vec<f64>>, name: &str| -> Option<Vec<f64>> {
        if let Some(v) = values.get(name) {
            return Some(v.clone());
        }
        match ix.constant_f32(name) {
            Ok(Some((_, c))) if c.len() == 1 => Some(vec![c[0] as f64; n]),
            _ => None,
        }
    };
    for &i in order {
        let node = &ix.graph.node[i];
        let a = get(&values, node.input.first()?)?;
        let op = node.op_type.as_str();
        let out: Vec<f64> = if BINARY.contains(&op) {
            let b = get(&values, node.input.get(1)?)?;
            a.iter()
                .zip(&b)
                .map(|(&p, &q)| match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    "Div" => p / q,
                    _ => p.powf(q),
                })
                .collect()
        } else {
            let alpha = |d: f32| GraphIndex::attr_f(node, "alpha", d) as f64;
            let gelu_tanh = GraphIndex::attr_s(node, "approximate").as_deref() == Some("tanh");
            a.iter()
                .map(|&p| match op {
                    "Relu" => p.max(0.0),
                    "LeakyRelu" => {
                        if p >= 0.0 {
                            p
                        } else {
                            alpha(0.01) * p
                        }
                    }
                    "Tanh" => p.tanh(),
                    "Sigmoid" => 1.0 / (1.0 + (-p).exp()),
                    "Elu" => {
                        if p >= 0.0 {
                            p
                        } else {
                            alpha(1.0) * p.exp_m1()
                        }
                    }
                    "Gelu" if gelu_tanh => Activation::GeluTanh.apply_f64(p),
                    "Gelu" => Activation::GeluErf.apply_f64(p),
                    "Erf" => libm::erf(p),
                    "Sqrt" => p.sqrt(),
                    "Exp" => p.exp(),
                    "Neg" => -p,
                    "Abs" => p.abs(),
                    "Reciprocal" => 1.0 / p,
                    "Softplus" => p.exp().ln_1p(),
                    _ => p,
                })
                .collect()
        };
        values.insert(node.output.first()?.clone(), out);
    }
    values.remove(t)
}

/// A stored matrix or vector reached from a node input: directly, or through a 2-D Transpose.
struct Stored {
    tensor: TensorRef,
    name: String,
    via_transpose: bool,
    shared: bool,
}

fn stored(ix: &GraphIndex<'_>, input: &str) -> Option<Stored> {
    let shared_at = |name: &str| ix.consumers(name).len() > 1;
    if ix.initializer(input).is_some() {
        return Some(Stored {
            tensor: TensorRef::Initializer(input.into()),
            name: input.into(),
            via_transpose: false,
            shared: shared_at(input),
        });
    }
    let (i, node) = ix.producer(input)?;
    match node.op_type.as_str() {
        "Constant" => Some(Stored {
            tensor: TensorRef::ConstantNode(i),
            name: input.into(),
            via_transpose: false,
            shared: shared_at(input),
        }),
        "Transpose" => {
            let perm = GraphIndex::attr_ints(node, "perm");
            if !(perm.is_none() || perm.as_deref() == Some(&[1, 0])) {
                return None;
            }
            let inner = stored(ix, node.input.first()?)?;
            if inner.via_transpose {
                return None;
            }
            Some(Stored { via_transpose: true, shared: inner.shared || shared_at(input), ..inner })
        }
        _ => None,
    }
}

fn read_matrix(ix: &GraphIndex<'_>, s: &Stored, layer: &str) -> Result<(Vec<usize>, DMatrix<f32>), HeadError> {
    let (dims, values) = read_stored(ix, s, layer)?;
    if dims.len() != 2 {
        return Err(HeadError::Weights(format!(
            "weights `{}` of `{layer}` have shape {dims:?}; a head layer needs a 2-D weight matrix",
            s.name
        )));
    }
    Ok((dims.clone(), DMatrix::from_row_slice(dims[0], dims[1], &values)))
}

fn read_stored(ix: &GraphIndex<'_>, s: &Stored, layer: &str) -> Result<(Vec<usize>, Vec<f32>), HeadError> {
    let probe_name = match &s.tensor {
        TensorRef::Initializer(n) => n.clone(),
        TensorRef::ConstantNode(i) => ix.graph.node[*i].output[0].clone(),
    };
    if let TensorRef::Initializer(n) = &s.tensor {
        let dt = ix.initializer(n).map(|t| t.data_type).unwrap_or(0);
        if dt != tract_onnx::pb::tensor_proto::DataType::Float as i32 {
            return Err(HeadError::Weights(format!(
                "`{n}` of `{layer}` is not float32 (ONNX data type {dt}); skillgraft adapts float32 heads"
            )));
        }
    }
    match ix.constant_f32(&probe_name) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(HeadError::Weights(format!("`{}` of `{layer}` is not a stored tensor", s.name))),
        Err(e) => Err(HeadError::Weights(e)),
    }
}

fn slot(s: Stored, dims: Vec<usize>, transposed: bool, scale: f32, consumer: (usize, usize)) -> ParamSlot {
    ParamSlot {
        tensor: s.tensor,
        name: s.name,
        dims,
        transposed,
        via_transpose: s.via_transpose,
        scale,
        shared: s.shared,
        consumer,
    }
}

fn computed_weight(node: &tract_onnx::pb::NodeProto) -> HeadError {
    HeadError::Unsupported(format!(
        "`{}` ({}) needs one input computed from the features and one stored weight matrix (an initializer, optionally through a Transpose); skillgraft cannot adapt weights that are computed",
        node_label(node),
        node.op_type
    ))
}

fn match_gemm(ix: &GraphIndex<'_>, out: &str) -> Result<(LayerSpec, LayerParams), HeadError> {
    let (idx, node) = ix.producer(out).expect("caller checked");
    let name = node_label(node);
    let alpha = GraphIndex::attr_f(node, "alpha", 1.0);
    let beta = GraphIndex::attr_f(node, "beta", 1.0);
    let ta = GraphIndex::attr_i(node, "transA", 0) != 0;
    let tb = GraphIndex::attr_i(node, "transB", 0) != 0;
    if alpha == 0.0 || !alpha.is_finite() {
        return Err(HeadError::Unsupported(format!(
            "`{name}` (Gemm) has alpha = {alpha}, so it ignores its weights; re-export the model"
        )));
    }
    let (a, b) = (node.input.first().cloned().unwrap_or_default(), node.input.get(1).cloned().unwrap_or_default());
    let (data, w, w_pos, in_layout, out_layout, base_parity) = match (stored(ix, &a), stored(ix, &b)) {
        (None, Some(w)) => {
            (a, w, 1, if ta { Layout::FeatureMajor } else { Layout::SampleMajor }, Layout::SampleMajor, 1 + tb as u8)
        }
        (Some(w), None) => {
            (b, w, 0, if tb { Layout::SampleMajor } else { Layout::FeatureMajor }, Layout::FeatureMajor, ta as u8)
        }
        _ => return Err(computed_weight(node)),
    };
    let transposed = (base_parity + w.via_transpose as u8) % 2 == 1;
    let (wdims, m) = read_matrix(ix, &w, &name)?;
    let weight = if transposed { m.transpose() } else { m } * alpha;
    let (out_dim, in_dim) = weight.shape();
    let mut spec_nodes = vec![idx];
    let bias_input = node.input.get(2).filter(|s| !s.is_empty()).cloned();
    let (bias, bias_slot) = match bias_input {
        Some(c) if beta != 0.0 => {
            let s = stored(ix, &c).filter(|s| !s.via_transpose).ok_or_else(|| computed_weight(node))?;
            let (dims, values) = read_stored(ix, &s, &name)?;
            let b = bias_vector(&dims, &values, out_dim, out_layout, &name, &s.name)?;
            if let Some((ci, _)) = ix.producer(&c) {
                spec_nodes.push(ci);
            }
            (Some(b * beta), Some(slot(s, dims, false, beta, (idx, 2))))
        }
        _ => (None, None),
    };
    if let Some((ti, n)) = ix.producer(node.input[w_pos].as_str())
        && (n.op_type == "Transpose" || n.op_type == "Constant")
    {
        spec_nodes.push(ti);
    }
    let spec = LayerSpec {
        name,
        op: LinearOp::Gemm,
        input: data,
        output: out.to_string(),
        activation: Activation::Identity,
        activation_ops: vec![],
        in_dim,
        out_dim,
        input_layout: in_layout,
        output_layout: out_layout,
        weight: slot(w, wdims, transposed, alpha, (idx, w_pos)),
        bias: bias_slot,
        nodes: spec_nodes,
    };
    Ok((spec, LayerParams { weight, bias }))
}

fn match_matmul(
    ix: &GraphIndex<'_>,
    mm_out: &str,
    add_out: Option<&str>,
) -> Result<(LayerSpec, LayerParams), HeadError> {
    let (idx, node) = ix.producer(mm_out).expect("caller checked");
    let name = node_label(node);
    let (u, v) = (node.input.first().cloned().unwrap_or_default(), node.input.get(1).cloned().unwrap_or_default());
    let (data, w, w_pos, layout, parity) = match (stored(ix, &u), stored(ix, &v)) {
        (None, Some(w)) => (u, w, 1, Layout::SampleMajor, 1u8),
        (Some(w), None) => (v, w, 0, Layout::FeatureMajor, 0u8),
        _ => return Err(computed_weight(node)),
    };
    let transposed = (parity + w.via_transpose as u8) % 2 == 1;
    let (wdims, m) = read_matrix(ix, &w, &name)?;
    let weight = if transposed { m.transpose() } else { m };
    let (out_dim, in_dim) = weight.shape();
    let mut nodes = vec![idx];
    if let Some((ti, n)) = ix.producer(node.input[w_pos].as_str())
        && (n.op_type == "Transpose" || n.op_type == "Constant")
    {
        nodes.push(ti);
    }
    let (op, out, bias, bias_slot) = match add_out {
        Some(add_out) => {
            let (ai, add) = ix.producer(add_out).expect("caller checked");
            let pos = if add.input[0] == mm_out { 1 } else { 0 };
            let b_name = add.input[pos].clone();
            let s = stored(ix, &b_name).filter(|s| !s.via_transpose).ok_or_else(|| computed_weight(add))?;
            let (dims, values) = read_stored(ix, &s, &name)?;
            let b = bias_vector(&dims, &values, out_dim, layout, &name, &s.name)?;
            nodes.push(ai);
            if let Some((ci, _)) = ix.producer(&b_name) {
                nodes.push(ci);
            }
            (LinearOp::MatMulAdd, add_out.to_string(), Some(b), Some(slot(s, dims, false, 1.0, (ai, pos))))
        }
        None => (LinearOp::MatMul, mm_out.to_string(), None, None),
    };
    let spec = LayerSpec {
        name,
        op,
        input: data,
        output: out,
        activation: Activation::Identity,
        activation_ops: vec![],
        in_dim,
        out_dim,
        input_layout: layout,
        output_layout: layout,
        weight: slot(w, wdims, transposed, 1.0, (idx, w_pos)),
        bias: bias_slot,
        nodes,
    };
    Ok((spec, LayerParams { weight, bias }))
}

/// Expands a stored bias that broadcasts over the layer's output into one value per output.
fn bias_vector(
    dims: &[usize],
    values: &[f32],
    out: usize,
    layout: Layout,
    layer: &str,
    name: &str,
) -> Result<DVector<f32>, HeadError> {
    let fits = match (dims, layout) {
        (_, _) if values.len() == 1 => true,
        ([n], Layout::SampleMajor) | ([1, n], Layout::SampleMajor) | ([n, 1], Layout::FeatureMajor) => *n == out,
        _ => false,
    };
    if !fits {
        return Err(HeadError::Weights(format!(
            "bias `{name}` of `{layer}` has shape {dims:?}, which does not add one value per output ({out}); skillgraft adapts biases of shape [{out}] or a scalar"
        )));
    }
    Ok(if values.len() == 1 { DVector::from_element(out, values[0]) } else { DVector::from_column_slice(values) })
}
