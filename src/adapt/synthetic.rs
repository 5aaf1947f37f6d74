//! A synthetic head-fitting problem, the same on every machine: features from a random
//! 512-wide backbone, targets from a teacher head, and a source head that is a perturbed copy of
//! the teacher, so there is something to learn. The adaptation benchmark and the GPU tests fit
//! it.

use nalgebra::{DMatrix, DVector};

use super::finetune::{Data, Settings, Shape};
use crate::model::head::{Activation, LayerParams};
use crate::rng::seeded;

/// Training rows of the comparison (`--rows`).
pub const ROWS: usize = 10_000;
/// Features in (the head's input).
pub const FEATURES: usize = 512;
/// Hidden width of the head.
pub const HIDDEN: usize = 256;
/// Action width.
pub const ACTIONS: usize = 6;
/// Episodes the training rows are split into, for the cross-validated ridge.
pub const EPISODES: usize = 20;
/// Cross-validation folds (whole episodes).
pub const FOLDS: usize = 5;
/// The fixed λ of the one-solve ridge row.
pub const ALPHA: f64 = 10.0;

/// Finetune settings of the comparison (the issue's: 20 epochs, batch 256).
pub fn settings() -> Settings {
    Settings { epochs: 20, batch: 256, lr: 1e-3, pull: 1e-2, patience: usize::MAX, seed: 0 }
}

/// The benchmark problem: a 512→256 ReLU→6 head whose source weights are a perturbed copy of
/// the teacher that made the targets, so there is something to learn.
pub struct Problem {
    /// Layer shapes.
    pub shapes: Vec<Shape>,
    /// Source (and initial) parameters.
    pub source: Vec<LayerParams>,
    /// Training rows.
    pub train: Data,
    /// Held-out rows.
    pub held_out: Data,
    /// The source's hidden activations of the training rows (what the last layer reads), f64.
    pub hidden: DMatrix<f64>,
    /// Training targets, f64.
    pub targets: DMatrix<f64>,
}

/// Training rows for `rows` asked: whole episodes of equal length, at least one row each.
pub fn training_rows(rows: usize) -> usize {
    (rows / EPISODES).max(1) * EPISODES
}

fn layer(seed: u64, out: usize, inp: usize, scale: f32) -> LayerParams {
    let w = seeded(seed, out * inp).iter().map(|v| v * scale).collect::<Vec<_>>();
    let b = seeded(seed + 100, out).iter().map(|v| v * 0.1).collect::<Vec<_>>();
    LayerParams { weight: DMatrix::from_row_slice(out, inp, &w), bias: Some(DVector::from_vec(b)) }
}

fn nudged(p: &LayerParams, seed: u64, by: f32) -> LayerParams {
    let n = seeded(seed, p.weight.len());
    let scale = p.weight.abs().max();
    LayerParams {
        weight: DMatrix::from_fn(p.weight.nrows(), p.weight.ncols(), |i, j| {
            p.weight[(i, j)] + by * scale * n[i * p.weight.ncols() + j]
        }),
        bias: p.bias.clone(),
    }
}

/// A matrix as row-major values.
pub fn row_major(m: &DMatrix<f32>) -> Vec<f32> {
    m.transpose().as_slice().to_vec()
}

impl Problem {
    /// The problem with `rows` training rows (see [`training_rows`]) and a fifth as many
    /// held out, the same on every machine.
    pub fn new(rows: usize) -> Problem {
        let rows = training_rows(rows);
        let held = rows / 5;
        let shapes = vec![
            Shape { inputs: FEATURES, outputs: HIDDEN, activation: Activation::Relu, bias: true },
            Shape { inputs: HIDDEN, outputs: ACTIONS, activation: Activation::Identity, bias: true },
        ];
        let teacher = [
            layer(3, HIDDEN, FEATURES, (6.0 / FEATURES as f32).sqrt()),
            layer(5, ACTIONS, HIDDEN, (3.0 / HIDDEN as f32).sqrt()),
        ];
        let source = vec![nudged(&teacher[0], 7, 0.3), nudged(&teacher[1], 8, 0.5)];
        let data = |seed: u64, n: usize| {
            let x = DMatrix::from_row_slice(n, FEATURES, &seeded(seed, n * FEATURES));
            let noise = seeded(seed + 1, n * ACTIONS);
            let mut y = teacher[1].forward(Activation::Identity, &teacher[0].forward(Activation::Relu, &x));
            y.iter_mut().zip(&noise).for_each(|(v, e)| *v += 0.05 * e);
            Data { x: row_major(&x), y: row_major(&y), rows: n }
        };
        let train = data(1, rows);
        let held_out = data(11, held);
        let x = DMatrix::from_row_slice(rows, FEATURES, &train.x);
        let hidden = source[0].forward(Activation::Relu, &x).map(f64::from);
        let targets = DMatrix::from_row_slice(rows, ACTIONS, &train.y).map(f64::from);
        Problem { shapes, source, train, held_out, hidden, targets }
    }

    /// Mean squared error of a trained head on the held-out rows.
    pub fn held_out_mse(&self, params: &[LayerParams]) -> f64 {
        let n = self.held_out.rows;
        let x = DMatrix::from_row_slice(n, FEATURES, &self.held_out.x);
        let y = DMatrix::from_row_slice(n, ACTIONS, &self.held_out.y);
        let pred = params[1].forward(Activation::Identity, &params[0].forward(Activation::Relu, &x));
        (pred - y).map(f64::from).norm_squared() / (n * ACTIONS) as f64
    }

    /// Row blocks of the training data, one per episode.
    pub fn episodes(&self) -> Vec<(DMatrix<f64>, DMatrix<f64>)> {
        let per = self.train.rows / EPISODES;
        (0..EPISODES)
            .map(|e| (self.hidden.rows(e * per, per).into_owned(), self.targets.rows(e * per, per).into_owned()))
            .collect()
    }
}
