//! On-device adaptation: from a few demonstration episodes, re-fit the head of a skill made on
//! another robot (the backbone stays frozen), keep the result only if it beats the source on
//! held-out episodes, and write it as a new skill whose parent is the source.
//!
//! The gate holds out whole episodes (k-fold when there are few): each fold fits on the other
//! episodes (choosing λ, or the early-stopping epoch, from those alone) and predicts the held-out
//! one; the exported skill is then fitted on every episode.

pub mod args;
pub mod compute;
pub mod continual;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod features;
pub mod finetune;
#[cfg(test)]
mod gradcheck;
pub mod plot;
pub mod ridge;
pub mod synthetic;
pub mod threads;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nalgebra::{DMatrix, DVector};
use serde::Serialize;

use crate::model::head::{Activation, LayerParams};
use crate::model::{ModelError, export};
use crate::record::dataset::Episode;
use crate::skill::{self, Skill, SkillError};
use compute::ComputeError;
use device::{Backend, Device};
use features::EpisodeFeatures;
use finetune::{Data, Epoch, Settings, Shape};

/// How to re-fit the head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Closed-form re-fit of the last linear layer, λ by cross-validation.
    Ridge,
    /// AdamW on the last `layers` layers (None: all of them).
    Finetune {
        /// Trainable layers, counted from the output.
        layers: Option<usize>,
        /// Optimiser settings.
        settings: Settings,
        /// Start the last layer from the ridge solution.
        ridge_init: bool,
    },
    /// The last layer as Bayesian linear regression kept as per-demonstration statistics
    /// ([`continual`]): works from one demonstration, continues and merges earlier statistics.
    Bayes,
}

impl Method {
    /// `ridge` or `finetune`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ridge => "ridge",
            Method::Finetune { .. } => "finetune",
            Method::Bayes => "bayes",
        }
    }
}

/// Adaptation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The method.
    pub method: Method,
    /// The adapted skill must cut the held-out error by at least this fraction (0.05: 5 %).
    pub margin: f64,
    /// Most folds of the held-out evaluation.
    pub folds: usize,
    /// Folder of cached features (None: no cache).
    pub cache: Option<PathBuf>,
    /// Threads the fitting may use (matrix products and cross-validation folds).
    pub threads: usize,
    /// Where fine-tuning runs.
    pub device: Device,
    /// bayes: statistics of earlier adaptations of the same source to start from (this robot's,
    /// to continue; other robots', to merge).
    pub merge: Vec<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            method: Method::Ridge,
            margin: 0.05,
            folds: 5,
            cache: None,
            threads: 1,
            device: Device::Auto,
            merge: Vec::new(),
        }
    }
}

/// Reports progress of long phases.
pub trait Progress {
    /// A phase of `total` steps starts.
    fn phase(&self, _name: &str, _total: u64) {}
    /// One step of the phase is done.
    fn step(&self, _message: &str) {}
    /// The phase ended.
    fn done(&self) {}
    /// Whether to give up (checked between folds).
    fn cancelled(&self) -> bool {
        false
    }
}

/// Progress that goes nowhere.
pub struct Quiet;

impl Progress for Quiet {}

/// Why adaptation could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    /// Not enough data to fit and to hold out.
    #[error("{0}")]
    Data(String),
    /// The method cannot adapt this head.
    #[error("{0}")]
    Unsupported(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Writing the adapted skill failed.
    #[error(transparent)]
    Skill(#[from] SkillError),
    /// Stopped before the end (the node is stopping).
    #[error("adaptation cancelled: the node is stopping")]
    Cancelled,
    /// The device asked for cannot be used.
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    /// Training failed on its device.
    #[error("fine-tuning failed on the device: {0}")]
    Compute(#[from] ComputeError),
    /// Earlier statistics could not be used.
    #[error(transparent)]
    Stats(#[from] continual::StatsError),
}

/// What adaptation found, in numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ridge` or `finetune`.
    pub method: String,
    /// Episodes used.
    pub episodes: Vec<String>,
    /// Samples used.
    pub samples: usize,
    /// Folds of the held-out evaluation.
    pub folds: usize,
    /// Layers re-fitted, counted from the output.
    pub layers: usize,
    /// λ of the exported fit (ridge).
    pub lambda: Option<f64>,
    /// Epochs of the exported fit (finetune).
    pub epochs: Option<usize>,
    /// Action labels.
    pub labels: Vec<String>,
    /// Held-out RMSE per action element, robot units: the source skill.
    pub source_rmse: Vec<f64>,
    /// The same for the adapted skill.
    pub adapted_rmse: Vec<f64>,
    /// Held-out mean squared error over all elements, policy units: the source skill.
    pub source_mse: f64,
    /// The same for the adapted skill.
    pub adapted_mse: f64,
    /// `1 - adapted / source`, both raised by the f32 rounding level of the targets (mean square
    /// target × (last layer's input width × f32 epsilon)²), so noise counts as no gain.
    pub improvement: f64,
    /// Improvement required.
    pub margin: f64,
    /// Whether the adapted skill passed the gate.
    pub accepted: bool,
    /// Why it did not.
    pub reasons: Vec<String>,
    /// Predictions of the adapted skill on the data that fall outside the action limits by more
    /// than 5 % of their range.
    pub outside_limits: usize,
    /// Training losses per epoch of the exported fit's validation run (finetune).
    pub curve: Vec<Epoch>,
    /// Seconds spent on features.
    pub features_s: f64,
    /// Features read from the cache, of all episodes.
    pub cached: usize,
    /// Seconds spent fitting and evaluating.
    pub fit_s: f64,
    /// Where the fitting ran: `cpu` or `cuda: GPU (compute_XY)` (ridge: always `cpu`).
    pub device: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fitted = match (self.lambda, self.epochs) {
            (Some(l), _) => format!("λ = {l:.3e}"),
            (_, Some(e)) => format!("{e} epochs, last {} layer(s)", self.layers),
            _ => String::new(),
        };
        writeln!(
            f,
            "{} on {} episodes ({} samples), {}-fold held-out evaluation over whole episodes; {fitted}",
            self.method,
            self.episodes.len(),
            self.samples,
            self.folds
        )?;
        const ALL: &str = "all (MSE, policy units)";
        let w = self.labels.iter().map(|l| l.len()).max().unwrap_or(0).max(ALL.len());
        writeln!(f, "{:<w$}  {:>13}  {:>13}  {:>8}", "action", "source RMSE", "adapted RMSE", "change")?;
        for ((l, s), a) in self.labels.iter().zip(&self.source_rmse).zip(&self.adapted_rmse) {
            let change = if *s > 0.0 { format!("{:+.1} %", (a / s - 1.0) * 100.0) } else { "-".into() };
            writeln!(f, "{l:<w$}  {:>13}  {:>13}  {change:>8}", sig(*s), sig(*a))?;
        }
        writeln!(
            f,
            "{:<w$}  {:>13}  {:>13}  {:>8}",
            ALL,
            sig(self.source_mse),
            sig(self.adapted_mse),
            format!("{:+.1} %", -self.improvement * 100.0)
        )?;
        writeln!(
            f,
            "features {:.2} s ({} of {} episodes cached), fit and evaluation {:.2} s on {}",
            self.features_s,
            self.cached,
            self.episodes.len(),
            self.fit_s,
            self.device
        )?;
        if self.accepted {
            writeln!(
                f,
                "accepted: held-out error {:.1} % below the source's (margin {:.0} %)",
                self.improvement * 100.0,
                self.margin * 100.0
            )
        } else {
            writeln!(f, "rejected: {}", self.reasons.join("; "))
        }
    }
}

/// Four significant digits, in scientific notation where fixed would hide them (errors of a
/// well-fitted head are far below 1e-3).
fn sig(v: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) { format!("{v:.4}") } else { format!("{v:.3e}") }
}

/// The result: numbers and, for every head layer, the adapted parameters.
#[derive(Debug, Clone)]
pub struct Adapted {
    /// The numbers.
    pub report: Report,
    /// Parameters of every head layer (the frozen ones are the source's).
    pub params: Vec<LayerParams>,
    /// bayes: the statistics of every demonstration, saved beside the adapted skill.
    pub stats: Option<continual::Continual>,
}

fn to_f64(m: &DMatrix<f32>) -> DMatrix<f64> {
    m.map(|v| v as f64)
}

/// The rows of `parts`, one under the other.
pub fn stack(parts: &[&DMatrix<f32>]) -> DMatrix<f32> {
    let cols = parts.first().map_or(0, |p| p.ncols());
    let rows: usize = parts.iter().map(|p| p.nrows()).sum();
    let mut out = DMatrix::zeros(rows, cols);
    let mut r = 0;
    for p in parts {
        out.rows_mut(r, p.nrows()).copy_from(p);
        r += p.nrows();
    }
    out
}

fn data(x: &DMatrix<f32>, y: &DMatrix<f32>) -> Data {
    Data { x: x.transpose().as_slice().to_vec(), y: y.transpose().as_slice().to_vec(), rows: x.nrows() }
}

/// What one fit gives: the re-fitted layers' parameters, λ (ridge) or the best epoch
/// (finetune), and the loss curve.
type Fit = (Vec<LayerParams>, Option<f64>, Option<usize>, Vec<Epoch>);

/// The fitting problem: the input each episode gives the first re-fitted layer, and targets.
struct Problem<'a> {
    skill: &'a Skill,
    inputs: Vec<DMatrix<f32>>,
    targets: Vec<&'a DMatrix<f32>>,
    first: usize,
    method: Method,
    threads: compute::Threads,
    backend: Backend,
}

impl Problem<'_> {
    fn source(&self) -> &[LayerParams] {
        &self.skill.model.head.params
    }

    fn shapes(&self) -> Vec<Shape> {
        self.skill.model.head.layers[self.first..]
            .iter()
            .map(|l| Shape { inputs: l.in_dim, outputs: l.out_dim, activation: l.activation, bias: l.bias.is_some() })
            .collect()
    }

    /// Fits the re-fitted layers on episodes `train`; returns their parameters, λ or the best
    /// epoch, and the curve.
    fn fit(&self, train: &[usize], fixed_epochs: Option<usize>) -> Result<Fit, AdaptError> {
        let head = &self.skill.model.head;
        let last = head.layers.len() - 1;
        match self.method {
            Method::Ridge | Method::Bayes => {
                let (p, lambda) = self.ridge(train);
                Ok((vec![p], Some(lambda), None, Vec::new()))
            }
            Method::Finetune { settings, ridge_init, .. } => {
                let mut init: Vec<LayerParams> = self.source()[self.first..].to_vec();
                if ridge_init
                    && head.layers[last].activation == Activation::Identity
                    && head.layers[last].bias.is_some()
                {
                    // The last layer reads the output of the layers before it, as the source has them.
                    let (p, _) = self.ridge(train);
                    *init.last_mut().expect("a layer") = p;
                }
                let shapes = self.shapes();
                let source = &self.source()[self.first..];
                let (fit_on, held): (Vec<usize>, Option<Data>) = match fixed_epochs {
                    Some(_) => (train.to_vec(), None),
                    None if train.len() >= 2 => {
                        let (v, rest) = train.split_last().expect("two or more");
                        (rest.to_vec(), Some(data(&self.inputs[*v], self.targets[*v])))
                    }
                    None => (train.to_vec(), None),
                };
                let x = stack(&fit_on.iter().map(|&i| &self.inputs[i]).collect::<Vec<_>>());
                let y = stack(&fit_on.iter().map(|&i| self.targets[i]).collect::<Vec<_>>());
                let s = Settings { epochs: fixed_epochs.unwrap_or(settings.epochs), ..settings };
                let t = self.backend.train(&shapes, &init, source, &data(&x, &y), held.as_ref(), &s, &mut |_| {})?;
                Ok((t.params, None, Some(t.best_epoch), t.curve))
            }
        }
    }

    /// Ridge on the last layer over episodes `train`, λ by cross-validation over them.
    fn ridge(&self, train: &[usize]) -> (LayerParams, f64) {
        let head = &self.skill.model.head;
        let last = head.layers.len() - 1;
        // Activations feeding the last layer: the re-fitted inputs through the layers before it.
        let h: Vec<DMatrix<f64>> = train
            .iter()
            .map(|&i| to_f64(&head.forward_layers(self.source(), &self.inputs[i], self.first..last)))
            .collect();
        let y: Vec<DMatrix<f64>> = train.iter().map(|&i| to_f64(self.targets[i])).collect();
        let mut groups: Vec<(DMatrix<f64>, DMatrix<f64>)> = h.into_iter().zip(y).collect();
        if groups.len() == 1 {
            // One episode: cross-validate over its two halves.
            let (h0, y0) = groups.pop().expect("one group");
            let mid = h0.nrows() / 2;
            let rest = h0.nrows() - mid;
            groups.push((h0.rows(0, mid).into_owned(), y0.rows(0, mid).into_owned()));
            groups.push((h0.rows(mid, rest).into_owned(), y0.rows(mid, rest).into_owned()));
        }
        let folds: Vec<usize> = (0..groups.len()).map(|i| i % groups.len().min(10)).collect();
        let refs: Vec<(&DMatrix<f64>, &DMatrix<f64>)> = groups.iter().map(|(h, y)| (h, y)).collect();
        let w0 = head.params[last].weight.map(|v| v as f64);
        let fit = ridge::fit_cv(&refs, &folds, &w0, &self.threads);
        let p = LayerParams { weight: fit.weight.map(|v| v as f32), bias: Some(fit.bias.map(|v| v as f32)) };
        (p, fit.lambda)
    }

    /// Predictions of the head with `fitted` layers on episode `i`, in policy units.
    fn predict(&self, fitted: &[LayerParams], i: usize) -> DMatrix<f32> {
        let head = &self.skill.model.head;
        let mut params: Vec<LayerParams> = self.source().to_vec();
        let n = params.len();
        params[n - fitted.len()..].clone_from_slice(fitted);
        head.forward_layers(&params, &self.inputs[i], self.first..n)
    }
}

/// Adapts `skill` to the demonstrations in `episodes`.
pub fn adapt(
    skill: &Skill,
    episodes: &[Episode],
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Adapted, AdaptError> {
    let head = &skill.model.head;
    let n_layers = head.layers.len();
    let last = &head.layers[n_layers - 1];
    let used: Vec<&Episode> = episodes.iter().filter(|e| !e.samples.is_empty()).collect();
    let bayes = opts.method == Method::Bayes;
    if bayes && used.is_empty() && opts.merge.is_empty() {
        return Err(AdaptError::Data(
            "no episode with samples and no statistics to merge; bayes needs at least one demonstration".into(),
        ));
    }
    if !bayes && !opts.merge.is_empty() {
        return Err(AdaptError::Data("--merge applies to --method bayes: only it keeps statistics".into()));
    }
    if !bayes && used.len() < 2 {
        return Err(AdaptError::Data(format!(
            "{} episode(s) with samples; adaptation needs at least 2, so a whole episode can be held out to judge the result",
            used.len()
        )));
    }
    let k = match opts.method {
        Method::Ridge | Method::Bayes => {
            if last.activation != Activation::Identity || last.bias.is_none() {
                return Err(AdaptError::Unsupported(format!(
                    "{} re-fits a linear last layer with a bias; this head's last layer (`{}`) has activation {} and {}; use --method finetune",
                    opts.method.name(),
                    last.name,
                    last.activation,
                    if last.bias.is_some() { "a bias" } else { "no bias" }
                )));
            }
            1
        }
        Method::Finetune { layers, .. } => match layers {
            Some(0) => return Err(AdaptError::Data("--layers must be at least 1".into())),
            Some(k) if k > n_layers => {
                return Err(AdaptError::Data(format!("--layers {k}: the head has {n_layers} layer(s)")));
            }
            Some(k) => k,
            None => n_layers,
        },
    };
    let first = n_layers - k;
    // Before the backbone runs, so that a device that cannot be used costs nothing.
    let threads = compute::Threads::new(opts.threads);
    let backend = match opts.method {
        Method::Ridge | Method::Bayes => Backend::select(Device::Cpu, threads.clone()),
        Method::Finetune { .. } => Backend::select(opts.device, threads.clone()),
    }?;
    let t0 = Instant::now();
    progress.phase("features", used.len() as u64);
    let owned: Vec<Episode> = used.iter().map(|e| (*e).clone()).collect();
    let feats: Vec<EpisodeFeatures> = features::features(skill, &owned, opts.cache.as_deref(), &mut |e| {
        progress.step(&format!("{} ({} samples{})", e.id, e.features.nrows(), if e.cached { ", cached" } else { "" }));
    })?;
    progress.done();
    let features_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    if bayes {
        return adapt_bayes(skill, &feats, opts, features_s);
    }
    let inputs: Vec<DMatrix<f32>> =
        feats.iter().map(|e| head.forward_layers(&head.params, &e.features, 0..first)).collect();
    let problem = Problem {
        skill,
        inputs,
        targets: feats.iter().map(|e| &e.targets).collect(),
        first,
        method: opts.method,
        threads,
        backend,
    };
    let n_ep = feats.len();
    let folds = opts.folds.clamp(2, n_ep);
    let a = skill.manifest.action_width();
    let mut sse_src = vec![0.0f64; a];
    let mut sse_new = vec![0.0f64; a];
    let mut ss_targets = 0.0f64;
    let mut rows = 0usize;
    progress.phase("held-out folds", folds as u64 + 1);
    let mut best_epochs = Vec::new();
    for f in 0..folds {
        if progress.cancelled() {
            return Err(AdaptError::Cancelled);
        }
        let train: Vec<usize> = (0..n_ep).filter(|i| i % folds != f).collect();
        let test: Vec<usize> = (0..n_ep).filter(|i| i % folds == f).collect();
        let (fitted, _, epochs, _) = problem.fit(&train, None)?;
        best_epochs.extend(epochs);
        for &i in &test {
            let y = problem.targets[i];
            let new = problem.predict(&fitted, i);
            let src = head.forward(&feats[i].features);
            for r in 0..y.nrows() {
                for c in 0..a {
                    sse_new[c] += ((new[(r, c)] - y[(r, c)]) as f64).powi(2);
                    sse_src[c] += ((src[(r, c)] - y[(r, c)]) as f64).powi(2);
                    ss_targets += (y[(r, c)] as f64).powi(2);
                }
            }
            rows += y.nrows();
        }
        progress.step(&format!("fold {} of {folds}", f + 1));
    }
    let all: Vec<usize> = (0..n_ep).collect();
    let (final_layers, lambda, epochs, curve) = match opts.method {
        Method::Ridge | Method::Bayes => problem.fit(&all, None)?,
        Method::Finetune { .. } => {
            // The curve and the epoch count come from a run that holds the last episode out;
            // the exported head then trains on every episode for that many epochs.
            let (_, _, best, curve) = problem.fit(&all, None)?;
            let epochs = best.unwrap_or(1).max(1);
            let (params, ..) = problem.fit(&all, Some(epochs))?;
            (params, None, Some(epochs), curve)
        }
    };
    progress.step("final fit");
    progress.done();
    let mut params = head.params.clone();
    params[first..].clone_from_slice(&final_layers);
    let held_out = HeldOut { source: sse_src, adapted: sse_new, targets: ss_targets, rows: rows as f64 };
    let judged = judge(skill, &params, &feats, &held_out, opts.margin);
    let report = Report {
        method: opts.method.name().into(),
        episodes: feats.iter().map(|e| e.id.clone()).collect(),
        samples: feats.iter().map(|e| e.features.nrows()).sum(),
        folds,
        layers: k,
        lambda,
        epochs,
        labels: skill.manifest.action_labels(),
        curve,
        features_s,
        cached: feats.iter().filter(|e| e.cached).count(),
        fit_s: t1.elapsed().as_secs_f64(),
        device: problem.backend.describe(),
        ..judged
    };
    Ok(Adapted { report, params, stats: None })
}

/// Held-out squared errors per action element (policy units), over `rows` rows whose targets'
/// squares sum to `targets`.
struct HeldOut {
    source: Vec<f64>,
    adapted: Vec<f64>,
    targets: f64,
    rows: f64,
}

/// The gate: the held-out numbers, and the adapted head `params` checked on every
/// demonstration (finite, within the action limits). Returns the report's judging fields; the
/// caller fills in the rest.
fn judge(skill: &Skill, params: &[LayerParams], feats: &[EpisodeFeatures], e: &HeldOut, margin: f64) -> Report {
    let head = &skill.model.head;
    let n_layers = head.layers.len();
    let a = skill.manifest.action_width();
    let rows = e.rows.max(1.0);
    let (sse_src, sse_new, ss_targets) = (&e.source, &e.adapted, e.targets);
    let norm_std = &skill.manifest.action.std;
    let source_mse = sse_src.iter().sum::<f64>() / (rows * a as f64);
    let adapted_mse = sse_new.iter().sum::<f64>() / (rows * a as f64);
    let rmse = |sse: &[f64]| sse.iter().zip(norm_std).map(|(s, sd)| (s / rows).sqrt() * sd).collect::<Vec<_>>();
    // Source and adapted outputs are f32 sums over the last layer's inputs, computed in another
    // order (and with or without fused multiply-adds) than the demonstrations were: errors below
    // that rounding level are noise, and a "gain" within it is none. Without this floor,
    // demonstrations of the source itself were accepted or rejected by the CPU's rounding
    // (a 4.9 % gain on x86-64, 5.4 % on aarch64, against a 5 % margin).
    let width = head.params[n_layers - 1].weight.ncols() as f64;
    let floor = ss_targets / (rows * a as f64) * (width * f64::from(f32::EPSILON)).powi(2);
    let improvement = if source_mse + floor > 0.0 { 1.0 - (adapted_mse + floor) / (source_mse + floor) } else { 0.0 };
    let mut reasons = Vec::new();
    if !(adapted_mse.is_finite() && improvement >= margin) {
        reasons.push(format!(
            "held-out error {adapted_mse:.6} is not {:.0} % below the source's {source_mse:.6} (improvement {:.1} %)",
            margin * 100.0,
            improvement * 100.0
        ));
    }
    let finite =
        params.iter().all(|p| p.weight.iter().chain(p.bias.iter().flat_map(|b| b.iter())).all(|v| v.is_finite()));
    let act = &skill.manifest.action;
    let mut outside = 0;
    let mut non_finite = !finite;
    for e in feats {
        let pred = head.forward_with(params, &e.features);
        for r in 0..pred.nrows() {
            for c in 0..a {
                let v = pred[(r, c)] as f64 * act.std[c] + act.mean[c];
                non_finite |= !v.is_finite();
                // Demonstrations that ride a limit make any fit overshoot it a little, and the
                // safety filter clamps that; beyond 5 % of the range the head is off.
                let slack = 0.05 * (act.upper[c] - act.lower[c]);
                if v < act.lower[c] - slack || v > act.upper[c] + slack {
                    outside += 1;
                }
            }
        }
    }
    if non_finite {
        reasons.push("the adapted head gives values that are not finite".into());
    }
    if outside > 0 {
        reasons.push(format!(
            "{outside} predictions on the demonstrations fall outside the action limits (by more than 5 % of their range)"
        ));
    }
    Report {
        method: String::new(),
        episodes: Vec::new(),
        samples: 0,
        folds: 0,
        layers: 1,
        lambda: None,
        epochs: None,
        labels: Vec::new(),
        source_rmse: rmse(sse_src),
        adapted_rmse: rmse(sse_new),
        source_mse,
        adapted_mse,
        improvement,
        margin,
        accepted: reasons.is_empty(),
        reasons,
        outside_limits: outside,
        curve: Vec::new(),
        features_s: 0.0,
        cached: 0,
        fit_s: 0.0,
        device: String::new(),
    }
}

/// The bayes method: every demonstration (and every merged statistics file) as sufficient
/// statistics of the last layer, the head solved from them, the gate on their leave-one-out
/// errors.
fn adapt_bayes(
    skill: &Skill,
    feats: &[EpisodeFeatures],
    opts: &Options,
    features_s: f64,
) -> Result<Adapted, AdaptError> {
    let t1 = Instant::now();
    let head = &skill.model.head;
    let last = head.layers.len() - 1;
    let w0 = to_f64(&head.params[last].weight);
    let b0 = head.params[last].bias.as_ref().map_or_else(|| DVector::zeros(w0.nrows()), |b| b.map(|v| v as f64));
    let key = continual::Key::of(skill);
    // The prior is the source's last layer: this skill's, or, continuing statistics gathered on
    // an earlier version of it (this skill's own source, when it was adapted by bayes), theirs.
    let mut stats = continual::Continual::new(key.clone(), w0, b0);
    for (i, path) in opts.merge.iter().enumerate() {
        let loaded = continual::Continual::load(path)?;
        if i == 0 && loaded.key == key {
            stats = continual::Continual::new(key.clone(), loaded.w0.clone(), loaded.b0.clone());
        }
        stats.merge(loaded)?;
    }
    for e in feats {
        let h = to_f64(&head.forward_layers(&head.params, &e.features, 0..last));
        stats.add(continual::EpisodeStats::of(&e.id, &h, &to_f64(&e.targets)));
    }
    let solved = stats.solve().ok_or_else(|| {
        AdaptError::Data("the demonstrations hold too few samples to hold any out (need at least 4)".into())
    })?;
    let mut params = head.params.clone();
    params[last] = LayerParams { weight: solved.weight.map(|v| v as f32), bias: Some(solved.bias.map(|v| v as f32)) };
    let held_out = HeldOut {
        source: solved.source_sse.clone(),
        adapted: solved.held_out_sse.clone(),
        targets: solved.target_energy,
        rows: solved.rows,
    };
    let margin = if stats.episodes.len() == 1 { opts.margin.max(continual::ONE_DEMO_MARGIN) } else { opts.margin };
    let judged = judge(skill, &params, feats, &held_out, margin);
    let report = Report {
        method: opts.method.name().into(),
        episodes: stats.episodes.iter().map(|e| e.id.clone()).collect(),
        samples: solved.rows as usize,
        folds: solved.groups,
        layers: 1,
        lambda: Some(solved.lambda),
        epochs: None,
        labels: skill.manifest.action_labels(),
        features_s,
        cached: feats.iter().filter(|e| e.cached).count(),
        fit_s: t1.elapsed().as_secs_f64(),
        device: "cpu".into(),
        ..judged
    };
    Ok(Adapted { report, params, stats: Some(stats) })
}

/// The version an adapted skill gets: the source's with the minor number raised.
pub fn next_version(v: &semver::Version) -> semver::Version {
    semver::Version::new(v.major, v.minor + 1, 0)
}

/// Where an adapted skill goes unless told: beside the source folder, named FOLDER-VERSION.
pub fn default_out(source: &Skill, version: &semver::Version) -> PathBuf {
    let name = source.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(source.manifest.name.clone());
    source.dir.with_file_name(format!("{name}-{version}"))
}

/// Plots the fine-tuning loss curve of `report` beside `out` (OUT-loss.png and OUT-loss.svg);
/// None when the method has no curve (ridge).
pub fn plot_loss(
    source: &Skill,
    version: &semver::Version,
    report: &Report,
    out: &Path,
) -> Option<Result<(PathBuf, PathBuf), plot::PlotError>> {
    if report.curve.is_empty() {
        return None;
    }
    let mut stem = out.as_os_str().to_os_string();
    stem.push("-loss");
    let title = format!("{} {}: fine-tuning loss", source.manifest.name, version);
    Some(plot::loss_curve(&report.curve, &PathBuf::from(stem), &title))
}

/// Writes the adapted skill as a new folder `out`: the source's ONNX with the new head weights,
/// and its manifest with a new version, `parent` = the source digest and the provenance.
pub fn write(
    source: &Skill,
    adapted: &Adapted,
    out: &Path,
    version: Option<semver::Version>,
    robot: Option<&str>,
) -> Result<Skill, AdaptError> {
    let r = &adapted.report;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut m = source.manifest.clone();
    m.version = version.unwrap_or_else(|| next_version(&source.manifest.version));
    if let Some(robot) = robot.filter(|r| !r.is_empty()) {
        m.provenance.source_robot = robot.to_string();
    }
    m.provenance.method = format!("adapted-{}", r.method);
    m.provenance.parent = Some(source.digest.clone());
    m.provenance.created = Some(created.clone());
    let mut d: BTreeMap<String, toml::Value> = BTreeMap::new();
    d.insert(
        "parent_skill".into(),
        toml::Value::String(format!("{} {}", source.manifest.name, source.manifest.version)),
    );
    d.insert(
        "episodes".into(),
        toml::Value::Array(r.episodes.iter().map(|e| toml::Value::String(e.clone())).collect()),
    );
    d.insert("samples".into(), toml::Value::Integer(r.samples as i64));
    d.insert("layers".into(), toml::Value::Integer(r.layers as i64));
    d.insert("folds".into(), toml::Value::Integer(r.folds as i64));
    if let Some(l) = r.lambda {
        d.insert("lambda".into(), toml::Value::Float(l));
    }
    if let Some(e) = r.epochs {
        d.insert("epochs".into(), toml::Value::Integer(e as i64));
    }
    d.insert("heldout_source_mse".into(), toml::Value::Float(r.source_mse));
    d.insert("heldout_adapted_mse".into(), toml::Value::Float(r.adapted_mse));
    d.insert("heldout_improvement".into(), toml::Value::Float(r.improvement));
    m.provenance.details = d;
    let mut meta = vec![
        ("parent".to_string(), source.digest.clone()),
        ("method".to_string(), m.provenance.method.clone()),
        ("episodes".to_string(), r.episodes.join(",")),
        ("created".to_string(), created),
        ("heldout_improvement".to_string(), format!("{:.6}", r.improvement)),
    ];
    if let Some(l) = r.lambda {
        meta.push(("lambda".into(), l.to_string()));
    }
    if let Some(e) = r.epochs {
        meta.push(("epochs".into(), e.to_string()));
    }
    let proto = export::with_head_params(&source.model.file, &source.model.head, &adapted.params, &meta)?;
    let stats = adapted.stats.as_ref().map(|s| s.to_bytes());
    let extra: Vec<(&str, &[u8])> = stats.iter().map(|b| (continual::STATS_FILE, b.as_slice())).collect();
    Ok(skill::write_skill_with(out, &m, &export::encode(&proto), &extra)?)
}

/// The robot the episodes were recorded on, when they all say the same.
pub fn robot_of(episodes: &[Episode]) -> Option<String> {
    let robots: Vec<String> = episodes
        .iter()
        .filter_map(|e| crate::record::episode::read(&e.path).ok().and_then(|f| f.metadata.get("robot").cloned()))
        .collect();
    let first = robots.first()?.clone();
    robots.iter().all(|r| *r == first).then_some(first)
}
