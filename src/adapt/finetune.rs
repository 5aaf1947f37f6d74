//! Fine-tuning the last K layers of a head with AdamW, written once against [`Compute`]:
//! mini-batches in an order shuffled on the host from a seed (same seed, same result), mean
//! squared error, a decoupled pull of every weight toward its source value (L2-SP), and early
//! stopping on held-out data.

use super::compute::{AdamStep, Compute, ComputeError, Real};
use crate::model::head::{Activation, LayerParams};
use crate::rng::SplitMix;
use nalgebra::{DMatrix, DVector};

/// The shape of one trainable layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Activation after it.
    pub activation: Activation,
    /// Whether it has a bias.
    pub bias: bool,
}

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Most epochs.
    pub epochs: usize,
    /// Samples per mini-batch.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Decoupled pull toward the source weights, per unit of learning rate.
    pub pull: f64,
    /// Epochs without a better held-out loss before stopping.
    pub patience: usize,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { epochs: 50, batch: 256, lr: 1e-3, pull: 1e-2, patience: 5, seed: 0 }
    }
}

/// Rows of inputs (to the first trainable layer) and targets, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    /// Inputs, rows × input width.
    pub x: Vec<f32>,
    /// Targets, rows × output width.
    pub y: Vec<f32>,
    /// Rows.
    pub rows: usize,
}

/// One epoch's losses.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Epoch {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train: f64,
    /// Held-out loss after the epoch, when there is held-out data.
    pub held_out: Option<f64>,
}

/// What training produced.
#[derive(Debug, Clone)]
pub struct Trained {
    /// Parameters of the trainable layers (the best epoch's when there is held-out data).
    pub params: Vec<LayerParams>,
    /// Losses per epoch.
    pub curve: Vec<Epoch>,
    /// The epoch whose parameters were kept.
    pub best_epoch: usize,
}

/// The order in which training visits its rows, epoch after epoch: each epoch's order is a
/// Fisher-Yates shuffle of the one before, driven by SplitMix64 from the seed. Public so that a
/// reference implementation (`tools/bench_adapt.py`) can be fed the very same batches.
pub struct BatchOrder {
    order: Vec<usize>,
    rng: SplitMix,
}

impl BatchOrder {
    /// The order over `rows` rows for `seed`, before the first epoch.
    pub fn new(rows: usize, seed: u64) -> BatchOrder {
        BatchOrder { order: (0..rows).collect(), rng: SplitMix(seed) }
    }

    /// Shuffles for the next epoch and returns its order.
    pub fn next_epoch(&mut self) -> &[usize] {
        for i in (1..self.order.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
        &self.order
    }
}

struct Layer<B> {
    w: B,
    b: B,
    mw: B,
    vw: B,
    mb: B,
    vb: B,
    src_w: B,
    src_b: B,
    gw: B,
    gb: B,
    z: B,
    a: B,
    g: B,
    /// dL/d(input), swapped into the layer below as its `g`.
    gx: B,
    shape: Shape,
}

fn flat_w(p: &LayerParams) -> Vec<f32> {
    p.weight.transpose().as_slice().to_vec()
}

/// Uploads values the host keeps in f32 (data, weights) in the backend's element type.
fn put<C: Compute>(c: &C, host: &[f32]) -> Result<C::Buf, ComputeError> {
    c.upload(&C::Elem::of_f32s(host))
}

/// Downloads `n` values.
fn take<C: Compute>(c: &C, buf: &C::Buf, n: usize) -> Result<Vec<C::Elem>, ComputeError> {
    let mut out = vec![C::Elem::default(); n];
    c.download(buf, &mut out)?;
    Ok(out)
}

/// The gradient of the loss with respect to one layer's parameters, in the backend's element
/// type (f64 on `Cpu<f64>`, where the gradient checks run).
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient<T: Real> {
    /// With respect to the weight, outputs × inputs.
    pub weight: DMatrix<T>,
    /// With respect to the bias (whether or not the layer has one).
    pub bias: DVector<T>,
}

/// The loss on a batch and each layer's [`Gradient`] there.
pub type LossAndGradients<T> = (f64, Vec<Gradient<T>>);

/// Trains layers of `shapes` from `init`, pulled toward `source`, on `train`; with `held_out`,
/// keeps the best epoch and stops after `patience` epochs without improvement. `on_epoch` is
/// called after every epoch. Fails only when the backend's device does. Any element type
/// trains (f32 on the devices; f64 on the CPU for the gradient checks); parameters come back in
/// f32.
#[allow(clippy::too_many_arguments)]
pub fn train<C: Compute>(
    c: &C,
    shapes: &[Shape],
    init: &[LayerParams],
    source: &[LayerParams],
    train: &Data,
    held_out: Option<&Data>,
    s: &Settings,
    on_epoch: &mut dyn FnMut(&Epoch),
) -> Result<Trained, ComputeError> {
    let batch = s.batch.max(1).min(train.rows.max(1));
    let d_in = shapes[0].inputs;
    let d_out = shapes.last().map_or(0, |l| l.outputs);
    let mut layers = build(c, shapes, init, source, batch)?;
    let x_all = put(c, &train.x)?;
    let y_all = put(c, &train.y)?;
    let mut xb = c.zeros(batch * d_in)?;
    let mut yb = c.zeros(batch * d_out)?;
    let mut order = BatchOrder::new(train.rows, s.seed);
    let mut curve = Vec::new();
    let mut best: Option<(f64, usize, Vec<LayerParams>)> = None;
    let mut step = 0u64;
    for epoch in 1..=s.epochs {
        let mut loss_sum = 0.0;
        let mut batches = 0;
        for idx in order.next_epoch().chunks(batch) {
            let rows = idx.len();
            c.gather_rows(&x_all, idx, d_in, &mut xb)?;
            c.gather_rows(&y_all, idx, d_out, &mut yb)?;
            forward(c, &mut layers, &xb, rows)?;
            let out = layers.last_mut().expect("at least one layer");
            loss_sum += c.mse(&out.a, &yb, rows * d_out, &mut out.g)?;
            batches += 1;
            step += 1;
            backward(c, &mut layers, &xb, rows)?;
            let a = AdamStep { lr: s.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, pull: s.pull, t: step };
            for l in &mut layers {
                let (out, inp) = (l.shape.outputs, l.shape.inputs);
                c.adamw(&mut l.w, &l.gw, &mut l.mw, &mut l.vw, &l.src_w, out * inp, a)?;
                if l.shape.bias {
                    c.adamw(&mut l.b, &l.gb, &mut l.mb, &mut l.vb, &l.src_b, out, a)?;
                }
            }
        }
        let held = held_out.map(|h| evaluate(c, &mut layers, h, batch)).transpose()?;
        let e = Epoch { epoch, train: loss_sum / batches.max(1) as f64, held_out: held };
        on_epoch(&e);
        curve.push(e);
        match held {
            Some(loss) if best.as_ref().is_none_or(|(b, _, _)| loss < *b) => {
                best = Some((loss, epoch, download(c, &layers)?))
            }
            Some(_) if best.as_ref().is_some_and(|(_, at, _)| epoch - at >= s.patience) => break,
            _ => {}
        }
    }
    Ok(match best {
        Some((_, epoch, params)) => Trained { params, curve, best_epoch: epoch },
        None => Trained { params: download(c, &layers)?, best_epoch: curve.len(), curve },
    })
}

/// The layers on the device, with moments and scratch for batches of up to `batch` rows.
fn build<C: Compute>(
    c: &C,
    shapes: &[Shape],
    init: &[LayerParams],
    source: &[LayerParams],
    batch: usize,
) -> Result<Vec<Layer<C::Buf>>, ComputeError> {
    shapes
        .iter()
        .zip(init)
        .zip(source)
        .enumerate()
        .map(|(k, ((shape, p), src))| {
            let bias =
                |p: &LayerParams| p.bias.as_ref().map(|b| b.as_slice().to_vec()).unwrap_or(vec![0.0; shape.outputs]);
            Ok(Layer {
                w: put(c, &flat_w(p))?,
                b: put(c, &bias(p))?,
                mw: c.zeros(shape.inputs * shape.outputs)?,
                vw: c.zeros(shape.inputs * shape.outputs)?,
                mb: c.zeros(shape.outputs)?,
                vb: c.zeros(shape.outputs)?,
                src_w: put(c, &flat_w(src))?,
                src_b: put(c, &bias(src))?,
                gw: c.zeros(shape.inputs * shape.outputs)?,
                gb: c.zeros(shape.outputs)?,
                z: c.zeros(batch * shape.outputs)?,
                a: c.zeros(batch * shape.outputs)?,
                g: c.zeros(batch * shape.outputs)?,
                // Nothing flows below the first trained layer.
                gx: c.zeros(if k == 0 { 0 } else { batch * shape.inputs })?,
                shape: *shape,
            })
        })
        .collect()
}

/// From dL/d(output) in the last layer's `g`, the gradients `gw` and `gb` of every layer
/// (after a [`forward`] of the same `rows` rows of `x`).
fn backward<C: Compute>(c: &C, layers: &mut [Layer<C::Buf>], x: &C::Buf, rows: usize) -> Result<(), ComputeError> {
    for k in (0..layers.len()).rev() {
        let (below, rest) = layers.split_at_mut(k);
        let l = &mut rest[0];
        let out = l.shape.outputs;
        c.act_backward(&mut l.g, &l.z, l.shape.activation, rows * out)?;
        let input = if k == 0 { x } else { &below[k - 1].a };
        c.gemm(true, false, out, l.shape.inputs, rows, 1.0, &l.g, input, 0.0, &mut l.gw)?;
        c.column_sums(&l.g, rows, out, &mut l.gb)?;
        if k > 0 {
            c.gemm(false, false, rows, l.shape.inputs, out, 1.0, &l.g, &l.w, 0.0, &mut l.gx)?;
            std::mem::swap(&mut below[k - 1].g, &mut l.gx);
        }
    }
    Ok(())
}

/// The loss and the gradients of every layer's weights and biases for `params` on all rows of
/// `data` as one batch: what a training step computes before its AdamW update, on backend `c`.
/// The backends are held to each other with it, and to finite differences in f64 on `Cpu<f64>`.
pub fn gradients<C: Compute>(
    c: &C,
    shapes: &[Shape],
    params: &[LayerParams],
    data: &Data,
) -> Result<LossAndGradients<C::Elem>, ComputeError> {
    let rows = data.rows;
    let d_out = shapes.last().map_or(0, |l| l.outputs);
    let mut layers = build(c, shapes, params, params, rows.max(1))?;
    let x = put(c, &data.x)?;
    let y = put(c, &data.y)?;
    forward(c, &mut layers, &x, rows)?;
    let out = layers.last_mut().expect("at least one layer");
    let loss = c.mse(&out.a, &y, rows * d_out, &mut out.g)?;
    backward(c, &mut layers, &x, rows)?;
    let grads = layers
        .iter()
        .map(|l| {
            let (o, i) = (l.shape.outputs, l.shape.inputs);
            let weight = DMatrix::from_row_slice(o, i, &take(c, &l.gw, o * i)?);
            Ok(Gradient { weight, bias: DVector::from_vec(take(c, &l.gb, o)?) })
        })
        .collect::<Result<_, ComputeError>>()?;
    Ok((loss, grads))
}

fn forward<C: Compute>(c: &C, layers: &mut [Layer<C::Buf>], x: &C::Buf, rows: usize) -> Result<(), ComputeError> {
    for k in 0..layers.len() {
        let (below, rest) = layers.split_at_mut(k);
        let l = &mut rest[0];
        let input = if k == 0 { x } else { &below[k - 1].a };
        c.gemm(false, true, rows, l.shape.outputs, l.shape.inputs, 1.0, input, &l.w, 0.0, &mut l.z)?;
        c.bias_act_forward(&mut l.z, &l.b, rows, l.shape.outputs, l.shape.activation, &mut l.a)?;
    }
    Ok(())
}

/// Mean squared error of the current layers on `data`.
fn evaluate<C: Compute>(c: &C, layers: &mut [Layer<C::Buf>], data: &Data, batch: usize) -> Result<f64, ComputeError> {
    let d_in = layers[0].shape.inputs;
    let d_out = layers.last().map_or(0, |l| l.shape.outputs);
    let x = put(c, &data.x)?;
    let y = put(c, &data.y)?;
    let mut xb = c.zeros(batch * d_in)?;
    let mut yb = c.zeros(batch * d_out)?;
    let mut sum = 0.0;
    let idx: Vec<usize> = (0..data.rows).collect();
    for chunk in idx.chunks(batch) {
        let rows = chunk.len();
        c.gather_rows(&x, chunk, d_in, &mut xb)?;
        c.gather_rows(&y, chunk, d_out, &mut yb)?;
        forward(c, layers, &xb, rows)?;
        let last = layers.last_mut().expect("at least one layer");
        let mut scratch = c.zeros(rows * d_out)?;
        sum += c.mse(&last.a, &yb, rows * d_out, &mut scratch)? * (rows * d_out) as f64;
    }
    Ok(sum / (data.rows * d_out).max(1) as f64)
}

fn download<C: Compute>(c: &C, layers: &[Layer<C::Buf>]) -> Result<Vec<LayerParams>, ComputeError> {
    let f32s = |v: Vec<C::Elem>| v.into_iter().map(|x| x.as_f64() as f32).collect::<Vec<_>>();
    layers
        .iter()
        .map(|l| {
            let (o, i) = (l.shape.outputs, l.shape.inputs);
            let weight = DMatrix::from_row_slice(o, i, &f32s(take(c, &l.w, o * i)?));
            let bias = match l.shape.bias {
                true => Some(DVector::from_vec(f32s(take(c, &l.b, o)?))),
                false => None,
            };
            Ok(LayerParams { weight, bias })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::compute::Cpu;
    use super::*;

    fn problem() -> (Vec<Shape>, Vec<LayerParams>, Data) {
        let shapes = vec![
            Shape { inputs: 4, outputs: 8, activation: Activation::Tanh, bias: true },
            Shape { inputs: 8, outputs: 2, activation: Activation::Identity, bias: true },
        ];
        let v = crate::rng::seeded(1, 200 * 4);
        let x: Vec<f32> = v.clone();
        let y: Vec<f32> = (0..200).flat_map(|r| [x[r * 4] * 0.5 - x[r * 4 + 1], (x[r * 4 + 2] * 2.0).tanh()]).collect();
        let init = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let w = crate::rng::seeded(10 + k as u64, s.inputs * s.outputs);
                LayerParams {
                    weight: DMatrix::from_row_slice(s.outputs, s.inputs, &w).map(|v| v * 0.5),
                    bias: Some(DVector::zeros(s.outputs)),
                }
            })
            .collect();
        (shapes, init, Data { x, y, rows: 200 })
    }

    #[test]
    fn training_lowers_the_loss_and_the_same_seed_gives_the_same_result() {
        let (shapes, init, data) = problem();
        let s = Settings { epochs: 60, batch: 32, lr: 1e-2, pull: 0.0, patience: 100, seed: 4 };
        let c = Cpu::<f32>::new();
        let a = train(&c, &shapes, &init, &init, &data, Some(&data), &s, &mut |_| {}).unwrap();
        let b = train(&c, &shapes, &init, &init, &data, Some(&data), &s, &mut |_| {}).unwrap();
        assert_eq!(a.params, b.params, "same seed, same weights");
        let first = a.curve[0].held_out.unwrap();
        let best = a.curve.iter().filter_map(|e| e.held_out).fold(f64::INFINITY, f64::min);
        assert!(best < first * 0.2, "the loss fell only from {first} to {best}");
        let other =
            train(&c, &shapes, &init, &init, &data, Some(&data), &Settings { seed: 5, ..s }, &mut |_| {}).unwrap();
        assert_ne!(other.params, a.params, "another seed, another batch order");
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch() {
        let (shapes, init, data) = problem();
        let held =
            Data { x: data.x[..40 * 4].to_vec(), y: data.y[..40 * 2].iter().map(|v| v + 3.0).collect(), rows: 40 };
        let s = Settings { epochs: 200, batch: 16, lr: 3e-2, pull: 0.0, patience: 3, seed: 1 };
        let t = train(&Cpu::<f32>::new(), &shapes, &init, &init, &data, Some(&held), &s, &mut |_| {}).unwrap();
        assert!(t.curve.len() < 200, "stopped early");
        let best = t.curve.iter().min_by(|a, b| a.held_out.unwrap().total_cmp(&b.held_out.unwrap())).unwrap();
        assert_eq!(t.best_epoch, best.epoch);
        assert_eq!(t.curve.len(), t.best_epoch + 3);
    }

    #[test]
    fn a_strong_pull_keeps_the_source_weights() {
        let (shapes, init, data) = problem();
        let s = Settings { epochs: 30, batch: 32, lr: 1e-2, pull: 50.0, patience: 100, seed: 2 };
        let t = train(&Cpu::<f32>::new(), &shapes, &init, &init, &data, None, &s, &mut |_| {}).unwrap();
        for (p, q) in t.params.iter().zip(&init) {
            assert!((&p.weight - &q.weight).abs().max() < 0.05, "the pull held the weights near the source");
        }
    }
}
