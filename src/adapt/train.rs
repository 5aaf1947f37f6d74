//! Training a whole policy from scratch on demonstrations: an MLP with every layer trainable,
//! through the same training loop as `finetune`, exported as a new skill. This makes the source
//! skills of the simulated robots, and the from-scratch baseline adaptation is measured against.

use nalgebra::{DMatrix, DVector};

use super::compute::{ComputeError, Threads};
use super::device::{Backend, Device, DeviceError};
use super::finetune::{Data, Epoch, Settings, Shape};
use crate::model::export;
use crate::model::head::{Activation, LayerParams};
use crate::model::mlp::{self, MlpError};
use crate::record::dataset::Episode;
use crate::rng::SplitMix;
use crate::skill::manifest::Manifest;

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    /// Widths of the hidden layers (tanh).
    pub hidden: Vec<usize>,
    /// The hidden layer whose output is the `features` tensor (from 0): the layers after it are
    /// the head that adaptation re-fits.
    pub features_after: usize,
    /// Epochs, batch, learning rate, patience and the seed of the batch order (`pull` is unused:
    /// there are no source weights).
    pub settings: Settings,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Threads for the matrix products (1 keeps the result bit-for-bit reproducible everywhere).
    pub threads: usize,
    /// Where training runs (the CPU unless asked: only it gives the same bits on every machine).
    pub device: Device,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            hidden: vec![128, 128, 64],
            features_after: 1,
            settings: Settings { epochs: 300, batch: 256, lr: 3e-3, pull: 0.0, patience: 30, seed: 0 },
            init_seed: 0,
            threads: 1,
            device: Device::Cpu,
        }
    }
}

/// A trained policy, ready to be written as a skill.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The manifest: the template's, with the normalisation measured on the data.
    pub manifest: Manifest,
    /// The ONNX model.
    pub model: Vec<u8>,
    /// Losses per epoch.
    pub curve: Vec<Epoch>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Training samples.
    pub samples: usize,
}

fn moments(rows: &[&[f32]], width: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0; width];
    for r in rows {
        mean.iter_mut().zip(*r).for_each(|(m, v)| *m += *v as f64 / n);
    }
    let mut var = vec![0.0; width];
    for r in rows {
        var.iter_mut().zip(*r).zip(&mean).for_each(|((s, v), m)| *s += (*v as f64 - m).powi(2) / n);
    }
    // A constant input carries no information; a unit scale keeps it harmless.
    let std = var.iter().map(|v| if v.sqrt() > 1e-6 { v.sqrt() } else { 1.0 }).collect();
    (mean, std)
}

/// Why a policy could not be trained; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The template stacks frames.
    #[error("training from scratch takes skills with history = 1")]
    History,
    /// The features split is not after a hidden layer.
    #[error("the features must come after one of the {hidden} hidden layers (features_after = {features_after})")]
    FeaturesAfter {
        /// Hidden layers asked for.
        hidden: usize,
        /// The layer the features come after.
        features_after: usize,
    },
    /// Nothing to learn from.
    #[error("the episodes hold no samples; record demonstrations first")]
    NoSamples,
    /// The device asked for cannot be used.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Training failed on its device.
    #[error("training failed on {device}: {source}")]
    Compute {
        /// The backend, as reports name it.
        device: String,
        /// What failed.
        source: ComputeError,
    },
    /// The trained MLP cannot be written as a model.
    #[error(transparent)]
    Model(#[from] MlpError),
}

/// Trains an MLP for the skill described by `template` (topics, fields, limits; its
/// normalisation is replaced by the data's) on `episodes`, holding out the last tenth of them
/// (at least one, when there are three or more) for early stopping.
pub fn train(template: &Manifest, episodes: &[Episode], opts: &TrainOptions) -> Result<Trained, TrainError> {
    if template.control.history != 1 {
        return Err(TrainError::History);
    }
    if opts.hidden.is_empty() || opts.features_after >= opts.hidden.len() {
        return Err(TrainError::FeaturesAfter { hidden: opts.hidden.len(), features_after: opts.features_after });
    }
    let all: Vec<&crate::record::dataset::Sample> = episodes.iter().flat_map(|e| &e.samples).collect();
    if all.is_empty() {
        return Err(TrainError::NoSamples);
    }
    let (d_in, d_out) = (template.input_width(), template.action_width());
    let obs: Vec<&[f32]> = all.iter().map(|s| s.raw_observation.as_slice()).collect();
    let act: Vec<&[f32]> = all.iter().map(|s| s.raw_action.as_slice()).collect();
    let (obs_mean, obs_std) = moments(&obs, d_in);
    let (act_mean, act_std) = moments(&act, d_out);
    let mut manifest = template.clone();
    let mut at = 0;
    for o in &mut manifest.observations {
        let w = o.mean.len();
        o.mean = obs_mean[at..at + w].to_vec();
        o.std = obs_std[at..at + w].to_vec();
        at += w;
    }
    manifest.action.mean = act_mean.clone();
    manifest.action.std = act_std.clone();

    let data = |eps: &[Episode]| {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for s in eps.iter().flat_map(|e| &e.samples) {
            x.extend(
                s.raw_observation.iter().zip(&obs_mean).zip(&obs_std).map(|((v, m), sd)| ((*v as f64 - m) / sd) as f32),
            );
            y.extend(
                s.raw_action.iter().zip(&act_mean).zip(&act_std).map(|((v, m), sd)| ((*v as f64 - m) / sd) as f32),
            );
        }
        let rows = x.len() / d_in.max(1);
        Data { x, y, rows }
    };
    let held = if episodes.len() >= 3 { (episodes.len() / 10).max(1) } else { 0 };
    let (fit_on, check_on) = episodes.split_at(episodes.len() - held);
    let train_data = data(fit_on);
    let held_data = (held > 0).then(|| data(check_on));

    let widths: Vec<usize> = std::iter::once(d_in).chain(opts.hidden.iter().copied()).chain([d_out]).collect();
    let shapes: Vec<Shape> = widths
        .windows(2)
        .enumerate()
        .map(|(k, w)| Shape {
            inputs: w[0],
            outputs: w[1],
            activation: if k + 2 == widths.len() { Activation::Identity } else { Activation::Tanh },
            bias: true,
        })
        .collect();
    let mut rng = SplitMix(opts.init_seed ^ 0x1417_1A1E);
    let init: Vec<LayerParams> = shapes
        .iter()
        .map(|s| {
            // Glorot-uniform, the usual start for tanh layers.
            let a = (6.0 / (s.inputs + s.outputs) as f32).sqrt();
            LayerParams {
                weight: DMatrix::from_fn(s.outputs, s.inputs, |_, _| a * rng.symmetric_f32()),
                bias: Some(DVector::zeros(s.outputs)),
            }
        })
        .collect();
    let settings = Settings { pull: 0.0, ..opts.settings };
    let backend = Backend::select(opts.device, Threads::new(opts.threads))?;
    let t = backend
        .train(&shapes, &init, &init, &train_data, held_data.as_ref(), &settings, &mut |_| {})
        .map_err(|source| TrainError::Compute { device: backend.describe(), source })?;
    let layers: Vec<(LayerParams, Activation)> =
        t.params.iter().cloned().zip(shapes.iter().map(|s| s.activation)).collect();
    let metadata = vec![
        ("trained_on".to_string(), format!("{} episodes, {} samples", episodes.len(), all.len())),
        ("epochs".to_string(), t.best_epoch.to_string()),
    ];
    let proto = mlp::model(&layers, opts.features_after, &metadata)?;
    manifest.model.input = mlp::INPUT.into();
    manifest.model.output = mlp::OUTPUT.into();
    manifest.model.features = mlp::FEATURES.into();
    manifest.provenance.method = "trained".into();
    let d = &mut manifest.provenance.details;
    d.insert("episodes".into(), toml::Value::Integer(episodes.len() as i64));
    d.insert("samples".into(), toml::Value::Integer(all.len() as i64));
    d.insert("epochs".into(), toml::Value::Integer(t.best_epoch as i64));
    d.insert(
        "hidden".into(),
        toml::Value::Array(opts.hidden.iter().map(|h| toml::Value::Integer(*h as i64)).collect()),
    );
    if let Some(h) = t.curve.get(t.best_epoch.saturating_sub(1)).and_then(|e| e.held_out) {
        d.insert("heldout_mse".into(), toml::Value::Float(h));
    }
    Ok(Trained {
        manifest,
        model: export::encode(&proto),
        curve: t.curve.clone(),
        best_epoch: t.best_epoch,
        samples: all.len(),
    })
}
