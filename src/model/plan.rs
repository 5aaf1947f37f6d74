//! tract plans built from one ONNX file: the control plan (batch 1, state reused every tick) and
//! the backbone plan (input to `features`, any batch) for feature extraction. The leading axis of
//! an input of rank 2 or more is the batch axis whatever it is declared as: a symbol, 1, or the
//! fixed batch an exporter saw (the dynamo exporter writes fixed shapes unless told otherwise).
//! Both plans pin it again: 1 for control, a symbol for the backbone.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::head::Layout;
use super::onnx::OnnxFile;
use super::{ModelError, Subject};

/// The shape of the policy's input tensor, as far as skillgraft needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InputShape {
    /// Dims as declared (numbers, or the symbol's name).
    pub declared: Vec<String>,
    /// Whether dim 0 is a batch axis (any dim 0 of a tensor of rank 2 or more).
    pub batched: bool,
    /// The batch the file fixes, when dim 0 is a number: the plans re-pin it, and the shapes the
    /// exporter recorded at that batch (outputs, intermediate values) are not used.
    pub fixed_batch: Option<usize>,
    /// Dims of one sample (without the batch axis).
    pub sample: Vec<usize>,
    /// Name of the batch symbol: the declared one, so the file's own shape annotations agree.
    pub batch_symbol: String,
}

impl InputShape {
    /// Values in one sample.
    pub fn width(&self) -> usize {
        self.sample.iter().product()
    }

    fn with_batch(&self, batch: TDim) -> Vec<TDim> {
        let mut dims: Vec<TDim> = self.sample.iter().map(|&d| d.to_dim()).collect();
        if self.batched {
            dims.insert(0, batch);
        }
        dims
    }
}

/// Most values one sample of the input may have (64 MiB of f32): it sizes the tick's buffers.
pub const MAX_SAMPLE: usize = 1 << 24;

/// Reads the declared shape of the feed input and decides which axis is the batch.
pub fn input_shape(file: &OnnxFile, declared: Vec<String>) -> Result<InputShape, ModelError> {
    let bad = |problem: String| ModelError::Shape { path: file.path.clone(), subject: Subject::Input, problem };
    if declared.is_empty() {
        return Err(bad("the input has no declared shape; re-export the model with input shapes".into()));
    }
    let batched = declared.len() >= 2;
    let fixed_batch = if batched { declared[0].parse::<usize>().ok() } else { None };
    let rest = if batched { &declared[1..] } else { &declared[..] };
    let sample = rest
        .iter()
        .map(|d| {
            d.parse::<usize>().map_err(|_| {
                bad(format!(
                    "input dim `{d}` is symbolic; skillgraft needs every dim but the batch fixed (declared shape {declared:?})"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let width = sample.iter().try_fold(1usize, |w, &d| w.checked_mul(d));
    if width.is_none_or(|w| w == 0 || w > MAX_SAMPLE) {
        return Err(bad(format!(
            "one sample of the input is {declared:?} without the batch: not 1 to {MAX_SAMPLE} values; export the policy with a smaller input"
        )));
    }
    let batch_symbol = match declared.first() {
        Some(d) if batched && d.parse::<usize>().is_err() && d.chars().all(|c| c.is_alphanumeric() || c == '_') => {
            d.clone()
        }
        _ => "N".to_string(),
    };
    Ok(InputShape { declared, batched, fixed_batch, sample, batch_symbol })
}

fn tract_err<'a>(path: &'a Path, stage: &'static str) -> impl Fn(TractError) -> ModelError + 'a {
    move |e| ModelError::Tract { path: path.to_path_buf(), stage, message: format!("{e:#}") }
}

/// Runs tract on untrusted model data; a panic inside tract becomes an error, not a crash.
fn guarded<T>(path: &Path, stage: &'static str, f: impl FnOnce() -> TractResult<T>) -> Result<T, ModelError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(tract_err(path, stage)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "tract panicked".into());
            Err(ModelError::Tract { path: path.to_path_buf(), stage, message: format!("tract panicked: {message}") })
        }
    }
}

/// Parses the graph; with a fixed batch, without the output and intermediate shapes the exporter
/// recorded at that batch, which would contradict the batch the plan pins.
fn parse(file: &OnnxFile, feeds: &[Feed]) -> Result<InferenceModel, ModelError> {
    guarded(&file.path, "parse the graph", || {
        let repinned = feeds.iter().any(|f| f.shape.fixed_batch.is_some());
        let onnx = tract_onnx::onnx().with_ignore_output_shapes(repinned).with_ignore_value_info(repinned);
        let dir = file.dir();
        let result = onnx.parse(&file.proto, dir.as_deref())?;
        if !result.unresolved_inputs.is_empty() {
            return Err(TractError::msg(format!(
                "inputs that no node or initializer provides: {:?}",
                result.unresolved_inputs
            )));
        }
        Ok(result.model)
    })
}

/// One input of the graph: its name and shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feed {
    /// Name of the graph input.
    pub name: String,
    /// Its shape.
    pub shape: InputShape,
}

/// Where each feed sits among the graph's inputs (tract numbers inputs in graph order, the caller
/// passes them in the manifest's order).
fn graph_order(file: &OnnxFile, feeds: &[Feed]) -> Vec<usize> {
    let ix = file.index();
    ix.inputs().iter().filter_map(|g| feeds.iter().position(|f| f.name == g.name)).collect()
}

/// Parses the graph and fixes every feed's shape with `batch` as the batch dim.
fn with_feeds(file: &OnnxFile, feeds: &[Feed], order: &[usize]) -> Result<(InferenceModel, Symbol), ModelError> {
    let model = parse(file, feeds)?;
    guarded(&file.path, "set the input shapes", || {
        let n = model.symbols.sym(&feeds[0].shape.batch_symbol);
        let mut model = model;
        for (k, &f) in order.iter().enumerate() {
            let fact = InferenceFact::dt_shape(f32::datum_type(), feeds[f].shape.with_batch(n.to_dim()));
            model = model.with_input_fact(k, fact)?;
        }
        Ok((model, n))
    })
}

/// The control plan: the observation tensors in, one action out, state reused across ticks.
pub struct ControlPlan {
    state: TypedSimpleState,
    /// Input tensors in graph order.
    inputs: Vec<Arc<Tensor>>,
    /// Graph position of each feed, in the caller's order.
    slot: Vec<usize>,
    output_width: usize,
    /// The probed tensor's values at the last step (empty without a probe).
    probe: Vec<f32>,
}

impl ControlPlan {
    /// Builds and optimises the batch-1 plan from the inputs to `output`; with `probe`, each
    /// step also keeps that intermediate tensor's values (the input of the head's last layer,
    /// which the posterior's variance reads).
    pub fn build(
        file: &OnnxFile,
        feeds: &[Feed],
        output: &str,
        probe: Option<&str>,
    ) -> Result<ControlPlan, ModelError> {
        let order = graph_order(file, feeds);
        let (model, n) = with_feeds(file, feeds, &order)?;
        let path = &file.path;
        let plan = guarded(path, "optimise the control plan", || {
            let outputs: Vec<&str> = std::iter::once(output).chain(probe).collect();
            let typed = model.with_outputs_by_name(outputs)?.into_typed()?;
            let batch_one = std::collections::HashMap::from([(n, 1.to_dim())]);
            typed.set_symbols(&batch_one)?.into_optimized()?.into_runnable()
        })
        .map_err(|e| match feeds.iter().find_map(|f| f.shape.fixed_batch.filter(|&b| b != 1)) {
            Some(b) => ModelError::Shape {
                path: path.clone(),
                subject: Subject::Input,
                problem: format!(
                    "the model was exported with a fixed batch of {b} and does not run at batch 1 ({e}); its graph hard-codes the batch (a Reshape to [{b}, ...]): export it again with a dynamic batch (torch.onnx.export(..., dynamic_shapes=({{0: torch.export.Dim(\"N\")}},))) or with batch 1"
                ),
            },
            _ => e,
        })?;
        let out_fact = guarded(path, "read the output shape", || Ok(plan.model().output_fact(0)?.clone()))?;
        let dims: Option<Vec<usize>> = out_fact.shape.as_concrete().map(<[usize]>::to_vec);
        let dims = dims.ok_or_else(|| ModelError::Shape {
            path: path.clone(),
            subject: Subject::Output,
            problem: format!("output `{output}` has no fixed shape at batch 1"),
        })?;
        if out_fact.datum_type != f32::datum_type() {
            return Err(ModelError::Shape {
                path: path.clone(),
                subject: Subject::Output,
                problem: format!("output `{output}` is {:?}, not float32", out_fact.datum_type),
            });
        }
        let output_width =
            if dims.len() >= 2 && dims[0] == 1 { dims[1..].iter().product() } else { dims.iter().product() };
        let probe = match probe {
            None => Vec::new(),
            Some(name) => {
                let fact = guarded(path, "read the probe's shape", || Ok(plan.model().output_fact(1)?.clone()))?;
                match fact.shape.as_concrete() {
                    Some(dims) if fact.datum_type == f32::datum_type() => vec![0.0; dims.iter().product()],
                    _ => {
                        return Err(ModelError::Shape {
                            path: path.clone(),
                            subject: Subject::Features,
                            problem: format!("tensor `{name}` is not float32 of a fixed shape at batch 1"),
                        });
                    }
                }
            }
        };
        let mut inputs = Vec::with_capacity(order.len());
        for &f in &order {
            let shape = &feeds[f].shape;
            let dims: Vec<usize> = if shape.batched {
                std::iter::once(1).chain(shape.sample.iter().copied()).collect()
            } else {
                shape.sample.clone()
            };
            inputs.push(Arc::new(Tensor::zero::<f32>(&dims).map_err(tract_err(path, "allocate the input"))?));
        }
        let slot = (0..feeds.len()).map(|f| order.iter().position(|&o| o == f).unwrap_or(0)).collect();
        let state = guarded(path, "create the plan state", || TypedSimpleState::new(&plan))?;
        Ok(ControlPlan { state, inputs, slot, output_width, probe })
    }

    /// Width of the action the plan produces.
    pub fn output_width(&self) -> usize {
        self.output_width
    }

    /// The probed tensor at the last step (empty when built without a probe).
    pub fn probe(&self) -> &[f32] {
        &self.probe
    }

    /// Values one tick feeds into input `feed` (in the caller's order).
    pub fn input_width(&self, feed: usize) -> usize {
        self.inputs[self.slot[feed]].len()
    }

    /// Runs one step: every feed (normalised, row-major, in the caller's order) in, raw action
    /// out.
    pub fn step(&mut self, feeds: &[&[f32]], action: &mut [f32]) -> Result<(), ModelError> {
        if feeds.len() != self.slot.len() || action.len() != self.output_width {
            return Err(ModelError::Run(format!(
                "step called with {} inputs and {} action values; the plan takes {} and gives {}",
                feeds.len(),
                action.len(),
                self.slot.len(),
                self.output_width
            )));
        }
        for (f, values) in feeds.iter().enumerate() {
            // Each input tensor is shared with tract only during `run`, so this never copies in
            // steady state; tract's per-op outputs come from the tick pool (crate::alloc).
            let input = Arc::make_mut(&mut self.inputs[self.slot[f]]);
            if input.len() != values.len() {
                return Err(ModelError::Run(format!(
                    "input {f} got {} values; the plan takes {}",
                    values.len(),
                    input.len()
                )));
            }
            let mut view = input.try_as_plain_ram_mut().map_err(|e| ModelError::Run(format!("{e:#}")))?;
            view.as_slice_mut::<f32>().map_err(|e| ModelError::Run(format!("{e:#}")))?.copy_from_slice(values);
        }
        let (state, inputs, probe) = (&mut self.state, &self.inputs, &mut self.probe);
        crate::alloc::in_tick(|| {
            let values: TVec<TValue> = inputs.iter().map(|t| TValue::from_const(t.clone())).collect();
            let outputs = state.run(values).map_err(|e| ModelError::Run(format!("{e:#}")))?;
            copy_out(&outputs[0], action)?;
            if !probe.is_empty() {
                copy_out(&outputs[1], probe)?;
            }
            Ok(())
        })
    }
}

/// Copies a plan output of `out.len()` f32 values into `out`.
fn copy_out(value: &TValue, out: &mut [f32]) -> Result<(), ModelError> {
    let view = value.try_as_plain_ram().map_err(|e| ModelError::Run(format!("{e:#}")))?;
    let values = view.as_slice::<f32>().map_err(|e| ModelError::Run(format!("{e:#}")))?;
    if values.len() != out.len() {
        return Err(ModelError::Run(format!(
            "the plan gave {} values where {} were expected",
            values.len(),
            out.len()
        )));
    }
    out.copy_from_slice(values);
    Ok(())
}

/// The backbone plan: inputs to `features`, for any batch size.
pub struct BackbonePlan {
    plan: Arc<TypedRunnableModel>,
    feeds: Vec<Feed>,
    order: Vec<usize>,
    batch_axis: bool,
    /// The plan's batch is pinned to 1 (image backbones).
    one_at_a_time: bool,
    features_width: usize,
    layout: Layout,
}

impl BackbonePlan {
    /// Builds the plan from the inputs to `features`, with a symbolic batch when the inputs have
    /// one.
    pub fn build(
        file: &OnnxFile,
        feeds: &[Feed],
        features: &str,
        layout: Layout,
        width: usize,
    ) -> Result<BackbonePlan, ModelError> {
        let order = graph_order(file, feeds);
        let (model, n) = with_feeds(file, feeds, &order)?;
        let path = &file.path;
        let batch_axis = feeds.iter().all(|f| f.shape.batched);
        // tract runs a convolution about 4x faster per sample at a fixed batch of 1 than at any
        // larger batch, and a symbolic batch costs another 1.9x (measured on the vision skill;
        // README, bench vision): image backbones go one sample at a time on a pinned plan.
        let one_at_a_time = feeds.iter().any(|f| f.shape.sample.len() >= 3);
        let plan = guarded(path, "optimise the backbone plan", || {
            let typed = model.with_outputs_by_name([features])?.into_typed()?;
            let typed = if one_at_a_time {
                typed.set_symbols(&std::collections::HashMap::from([(n, 1.to_dim())]))?
            } else {
                typed
            };
            typed.into_optimized()?.into_runnable()
        })?;
        let fact = guarded(path, "read the features shape", || Ok(plan.model().output_fact(0)?.clone()))?;
        let rank = fact.shape.rank();
        let per_sample: Option<usize> = match (rank, layout) {
            (2, Layout::SampleMajor) => fact.shape[1].as_i64().map(|d| d as usize),
            (2, Layout::FeatureMajor) => fact.shape[0].as_i64().map(|d| d as usize),
            _ => None,
        };
        if per_sample != Some(width) {
            return Err(ModelError::Shape {
                path: path.clone(),
                subject: Subject::Features,
                problem: format!(
                    "features `{features}` has shape {:?}, but the head reads {width} values per sample from a 2-D tensor; choose a 2-D features tensor (after Flatten)",
                    fact.shape
                ),
            });
        }
        Ok(BackbonePlan {
            plan,
            feeds: feeds.to_vec(),
            order,
            batch_axis,
            one_at_a_time,
            features_width: width,
            layout,
        })
    }

    /// Width of the features of one sample.
    pub fn features_width(&self) -> usize {
        self.features_width
    }

    /// Features for `n` samples, in batches of at most `batch`: `inputs[f]` holds feed `f`'s
    /// values for every sample (row-major, `n × its width`, in the caller's order of feeds);
    /// returns `n × features width`, one sample per row.
    pub fn features(&self, inputs: &[&[f32]], n: usize, batch: usize) -> Result<Vec<f32>, ModelError> {
        if inputs.len() != self.feeds.len() {
            return Err(ModelError::Run(format!("{} inputs for a model of {}", inputs.len(), self.feeds.len())));
        }
        for (f, values) in inputs.iter().enumerate() {
            let w = self.feeds[f].shape.width();
            if values.len() != n * w {
                return Err(ModelError::Run(format!(
                    "{} values of input `{}` for {n} samples of width {w}",
                    values.len(),
                    self.feeds[f].name
                )));
            }
        }
        let batch = if self.batch_axis && !self.one_at_a_time { batch.max(1) } else { 1 };
        let f = self.features_width;
        let mut out = Vec::with_capacity(n * f);
        for start in (0..n).step_by(batch) {
            let b = batch.min(n - start);
            let mut values = TVec::new();
            for &g in &self.order {
                let shape = &self.feeds[g].shape;
                let w = shape.width();
                let mut dims = shape.sample.clone();
                if self.batch_axis {
                    dims.insert(0, b);
                }
                let x = Tensor::from_shape(&dims, &inputs[g][start * w..(start + b) * w])
                    .map_err(|e| ModelError::Run(format!("{e:#}")))?;
                values.push(x.into());
            }
            let y = self.plan.run(values).map_err(|e| ModelError::Run(format!("{e:#}")))?;
            let view = y[0].try_as_plain_ram().map_err(|e| ModelError::Run(format!("{e:#}")))?;
            let y = view.as_slice::<f32>().map_err(|e| ModelError::Run(format!("{e:#}")))?;
            match self.layout {
                Layout::SampleMajor => out.extend_from_slice(y),
                Layout::FeatureMajor => {
                    for s in 0..b {
                        out.extend((0..f).map(|k| y[k * b + s]));
                    }
                }
            }
        }
        Ok(out)
    }
}

// The control loop owns its plan on its own thread, and feature extraction may run on a worker.
const _: () = {
    const fn send<T: Send>() {}
    send::<ControlPlan>();
    send::<BackbonePlan>();
};
