//! Fine-tuning checked against finite differences in f64, through three trained layers and
//! every activation a head supports. The reference is written here in plain loops: a forward
//! pass, its mean squared error, gradients by central differences of that loss (a four-point
//! stencil) and the AdamW step with the decoupled pull toward the source weights built on them.
//! It shares nothing with `finetune` but the activations' values (`apply_f64`) and the batch order.
//! What it is held against is the code every backend runs: the generic backward and training
//! loop of `finetune` (on `Cpu<f64>` to 1e-8, on `Cpu<f32>` and, on a machine with a GPU, the
//! CUDA backend, to 1e-5: f32 rounding).

use nalgebra::DMatrix;

use super::compute::{AdamStep, Compute, ComputeError, Cpu, Real};
use super::finetune::{self, BatchOrder, Data, Gradient, Settings, Shape};
use crate::model::head::{Activation, LayerParams};
use crate::rng::seeded;

/// Widths of the head: three trained layers, none square, so a transposed weight cannot pass.
const WIDTHS: [usize; 4] = [5, 7, 6, 4];
const ROWS: usize = 12;
/// Step of the finite differences: the stencil's truncation error (h⁴) and its rounding error
/// (ε/h) are both near 1e-12 here.
const H: f64 = 1e-4;

/// One check problem: a head whose every layer has activation `act` (the middle layer has no
/// bias for every other activation, as heads exported from MatMul without Add have), data,
/// initial parameters and source parameters apart from them, so the pull has work to do.
struct Problem {
    shapes: Vec<Shape>,
    init: Vec<LayerParams>,
    source: Vec<LayerParams>,
    data: Data,
}

fn problem(k: usize, act: Activation) -> Problem {
    let seed = 1000 * k as u64;
    let shapes: Vec<Shape> = (0..3)
        .map(|l| Shape {
            inputs: WIDTHS[l],
            outputs: WIDTHS[l + 1],
            activation: act,
            bias: l != 1 || k.is_multiple_of(2),
        })
        .collect();
    let layer = |s: &Shape, seed: u64| {
        let scale = 1.5 / (s.inputs as f32).sqrt();
        let w = seeded(seed, s.inputs * s.outputs).iter().map(|v| v * scale).collect::<Vec<_>>();
        let b = seeded(seed + 1, s.outputs).iter().map(|v| v * 0.5).collect::<Vec<_>>();
        LayerParams { weight: DMatrix::from_row_slice(s.outputs, s.inputs, &w), bias: s.bias.then(|| b.into()) }
    };
    let init: Vec<LayerParams> = shapes.iter().enumerate().map(|(l, s)| layer(s, seed + 10 * l as u64)).collect();
    let source = shapes.iter().enumerate().map(|(l, s)| layer(s, seed + 100 + 10 * l as u64)).collect();
    let x = seeded(seed + 7, ROWS * WIDTHS[0]).iter().map(|v| v * 2.0).collect();
    let y = seeded(seed + 8, ROWS * WIDTHS[3]);
    Problem { shapes, init, source, data: Data { x, y, rows: ROWS } }
}

/// The reference head: every parameter in one f64 vector, layer by layer, weight (row-major,
/// outputs × inputs) then bias; a layer without a bias keeps zeros there, which never train.
struct Reference<'a> {
    shapes: &'a [Shape],
    x: Vec<f64>,
    y: Vec<f64>,
}

/// Where a layer's weight and bias sit in the parameter vector.
fn offsets(shapes: &[Shape]) -> Vec<(usize, usize)> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let w = at;
            at += s.inputs * s.outputs + s.outputs;
            (w, w + s.inputs * s.outputs)
        })
        .collect()
}

fn flatten(shapes: &[Shape], params: &[LayerParams]) -> Vec<f64> {
    let mut theta = Vec::new();
    for (s, p) in shapes.iter().zip(params) {
        theta.extend((0..s.outputs).flat_map(|o| (0..s.inputs).map(move |i| f64::from(p.weight[(o, i)]))));
        match &p.bias {
            Some(b) => theta.extend(b.iter().map(|&v| f64::from(v))),
            None => theta.extend(std::iter::repeat_n(0.0, s.outputs)),
        }
    }
    theta
}

/// Whether `act` has a kink at 0 (where a finite difference must not cross).
fn kinked(act: Activation) -> bool {
    matches!(act, Activation::Relu | Activation::LeakyRelu(_) | Activation::Elu(_))
}

impl Reference<'_> {
    fn new<'a>(shapes: &'a [Shape], data: &Data) -> Reference<'a> {
        let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect();
        Reference { shapes, x: f64s(&data.x), y: f64s(&data.y) }
    }

    /// Mean squared error over `rows`, and on which side of its kink each pre-activation of a
    /// kinked activation fell.
    fn loss(&self, theta: &[f64], rows: &[usize]) -> (f64, Vec<bool>) {
        let mut sides = Vec::new();
        let mut sum = 0.0;
        let d_out = WIDTHS[3];
        for &r in rows {
            let mut a = self.x[r * WIDTHS[0]..(r + 1) * WIDTHS[0]].to_vec();
            for (s, &(w, b)) in self.shapes.iter().zip(&offsets(self.shapes)) {
                a = (0..s.outputs)
                    .map(|o| {
                        let z = theta[b + o] + (0..s.inputs).map(|i| theta[w + o * s.inputs + i] * a[i]).sum::<f64>();
                        if kinked(s.activation) {
                            sides.push(z >= 0.0);
                        }
                        s.activation.apply_f64(z)
                    })
                    .collect();
            }
            sum += a.iter().zip(&self.y[r * d_out..(r + 1) * d_out]).map(|(p, t)| (p - t) * (p - t)).sum::<f64>();
        }
        (sum / (rows.len() * d_out) as f64, sides)
    }

    /// ∂loss/∂θ over `rows` by the four-point central difference, coordinate by coordinate.
    /// Panics if a step crosses a kink, where a difference says nothing about the derivative.
    fn gradient(&self, theta: &[f64], rows: &[usize]) -> Vec<f64> {
        let (_, sides) = self.loss(theta, rows);
        let mut t = theta.to_vec();
        (0..theta.len())
            .map(|i| {
                let mut at = |h: f64| {
                    t[i] = theta[i] + h;
                    let (l, s) = self.loss(&t, rows);
                    assert!(s == sides, "a difference step at parameter {i} crosses a kink: choose other seeds");
                    l
                };
                let d = (at(-2.0 * H) - 8.0 * at(-H) + 8.0 * at(H) - at(2.0 * H)) / (12.0 * H);
                t[i] = theta[i];
                d
            })
            .collect()
    }
}

fn flatten_gradient<T: Real>(g: &[Gradient<T>]) -> Vec<f64> {
    g.iter()
        .flat_map(|l| {
            let w = (0..l.weight.nrows()).flat_map(|o| (0..l.weight.ncols()).map(move |i| l.weight[(o, i)].as_f64()));
            w.chain(l.bias.iter().map(|v| v.as_f64())).collect::<Vec<_>>()
        })
        .collect()
}

/// Largest |got − want| over each layer's weight and bias, relative to the largest |want| of that
/// tensor, so that entries near zero are held to the same absolute standard as the rest.
fn worst_relative(shapes: &[Shape], got: &[f64], want: &[f64]) -> f64 {
    offsets(shapes)
        .iter()
        .zip(shapes)
        .flat_map(|(&(w, b), s)| [w..b, b..b + s.outputs])
        .map(|r| {
            let scale = want[r.clone()].iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
            got[r.clone()].iter().zip(&want[r]).map(|(g, w)| (g - w).abs() / scale).fold(0.0, f64::max)
        })
        .fold(0.0, f64::max)
}

/// For each problem, the loss and the gradients of backend `c` at the initial parameters, with
/// how far they are from the reference's: the loss relatively, the gradients relative to the
/// largest entry of each tensor.
fn gradient_errors<C: Compute>(c: &C) -> Vec<(Activation, f64, f64)> {
    Activation::EVERY_KIND
        .into_iter()
        .enumerate()
        .map(|(k, act)| {
            let p = problem(k, act);
            let r = Reference::new(&p.shapes, &p.data);
            let all: Vec<usize> = (0..ROWS).collect();
            let theta = flatten(&p.shapes, &p.init);
            let (loss, grads) = finetune::gradients(c, &p.shapes, &p.init, &p.data).unwrap();
            let want_loss = r.loss(&theta, &all).0;
            let d = worst_relative(&p.shapes, &flatten_gradient(&grads), &r.gradient(&theta, &all));
            (act, (loss - want_loss).abs() / want_loss, d)
        })
        .collect()
}

fn worst_gradient_error<C: Compute>(c: &C) -> f64 {
    gradient_errors(c).iter().map(|e| e.2).fold(0.0, f64::max)
}

/// Asserts every problem's loss and gradients on backend `c` within `tol`; returns the worst.
fn gradients_match<C: Compute>(c: &C, tol: f64) -> f64 {
    let errors = gradient_errors(c);
    for &(act, loss, grad) in &errors {
        eprintln!("{act}: loss within {loss:.1e}, gradients within {grad:.1e} relative");
        assert!(loss <= tol, "{act}: the loss differs from the reference's by {loss:e} relative");
        assert!(
            grad <= tol,
            "{act}: gradients differ from finite differences by {grad:e} relative (tolerance {tol:e})"
        );
    }
    errors.iter().map(|e| e.2).fold(0.0, f64::max)
}

#[test]
fn the_f64_backward_equals_finite_differences_through_three_layers_and_every_activation() {
    // Measured: 6e-10 at worst (the differences' rounding, relative to a tensor whose largest
    // entry is small); a missing or wrong activation derivative, a transposed weight or a
    // missing bias gradient is off by 1e-2 or more.
    let worst = gradients_match(&Cpu::<f64>::new(), 1e-8);
    eprintln!("f64 backward vs finite differences: worst {worst:.1e} relative");
}

#[test]
fn the_f32_backward_training_runs_equals_finite_differences_within_f32_rounding() {
    let worst = gradients_match(&Cpu::<f32>::new(), 1e-5);
    eprintln!("f32 backward vs finite differences: worst {worst:.1e} relative");
}

/// The parameters after `s.epochs` epochs of the reference AdamW: the gradient of the mean
/// squared error by finite differences drives the moments, and the gradient of the pull,
/// (pull/2)·‖θ − θ_source‖² by finite differences too, is applied decoupled, at the learning
/// rate, as AdamW applies weight decay. Also the mean batch loss of each epoch.
fn reference_training(p: &Problem, s: &Settings) -> (Vec<f64>, Vec<f64>) {
    let r = Reference::new(&p.shapes, &p.data);
    let mut theta = flatten(&p.shapes, &p.init);
    let source = flatten(&p.shapes, &p.source);
    let trains: Vec<bool> = p
        .shapes
        .iter()
        .flat_map(|sh| {
            std::iter::repeat_n(true, sh.inputs * sh.outputs).chain(std::iter::repeat_n(sh.bias, sh.outputs))
        })
        .collect();
    let pull = |t: &[f64]| t.iter().zip(&source).map(|(a, b)| 0.5 * s.pull * (a - b) * (a - b)).sum::<f64>();
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let (mut m, mut v) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
    let mut order = BatchOrder::new(p.data.rows, s.seed);
    let mut curve = Vec::new();
    let mut t = 0;
    for _ in 0..s.epochs {
        let (mut sum, mut batches) = (0.0, 0);
        for rows in order.next_epoch().to_vec().chunks(s.batch) {
            t += 1;
            sum += r.loss(&theta, rows).0;
            batches += 1;
            let g = r.gradient(&theta, rows);
            let mut probe = theta.clone();
            for i in (0..theta.len()).filter(|&i| trains[i]) {
                probe[i] = theta[i] + H;
                let up = pull(&probe);
                probe[i] = theta[i] - H;
                let decay = (up - pull(&probe)) / (2.0 * H);
                probe[i] = theta[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - b1.powi(t));
                let v_hat = v[i] / (1.0 - b2.powi(t));
                theta[i] -= s.lr * decay + s.lr * m_hat / (v_hat.sqrt() + eps);
            }
        }
        curve.push(sum / batches as f64);
    }
    (theta, curve)
}

#[test]
fn training_steps_are_adamw_with_the_pull_on_finite_difference_gradients() {
    // Batches of 5 over 12 rows (the last one short), three epochs: nine steps, each with other
    // rows; a pull strong enough to move every weight lr·pull·|θ − θ_source| per step.
    let s = Settings { epochs: 3, batch: 5, lr: 0.05, pull: 0.5, patience: usize::MAX, seed: 7 };
    // Adam divides by √v̂ + ε: where a gradient is near ε = 1e-8 (a ReLU unit alive on one row),
    // the differences' ~1e-12 error moves a step by up to lr·1e-12/ε, and the steps after it
    // inherit that. A wrong step (no bias correction, a pull toward zero, another batch) is off
    // by a good part of lr.
    let tol = 1e-3 * s.lr;
    let mut worst = (0.0f64, 0.0f64);
    for (k, act) in Activation::EVERY_KIND.into_iter().enumerate() {
        let p = problem(k, act);
        let trained =
            finetune::train(&Cpu::<f64>::new(), &p.shapes, &p.init, &p.source, &p.data, None, &s, &mut |_| {}).unwrap();
        let (want, curve) = reference_training(&p, &s);
        let got = flatten(&p.shapes, &trained.params);
        let (i, d) = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
        assert!(d <= tol, "{act}: parameter {i} is {}, the reference's {}", got[i], want[i]);
        assert_eq!(trained.curve.len(), curve.len());
        let dl = trained.curve.iter().zip(&curve).map(|(e, w)| (e.train - w).abs() / w).fold(0.0, f64::max);
        assert!(dl <= 1e-6, "{act}: epoch losses {:?}, the reference's {curve:?}", trained.curve);
        assert!(trained.params[1].bias.is_some() == p.shapes[1].bias, "a layer without a bias stays without one");
        eprintln!("{act}: parameters within {d:.1e}, epoch losses within {dl:.1e} relative");
        worst = (worst.0.max(d), worst.1.max(dl));
    }
    eprintln!("training vs the reference AdamW: parameters within {:.1e}, losses within {:.1e}", worst.0, worst.1);
}

/// The CUDA backend's gradients against the same finite differences, without the CPU backend in
/// between. Needs a CUDA GPU: `cargo test --features cuda --lib adapt::gradcheck -- --ignored`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn the_cuda_backward_equals_finite_differences_within_f32_rounding() {
    let g = super::cuda::CudaCompute::new(0, None).unwrap_or_else(|e| panic!("no usable CUDA GPU: {e}"));
    let worst = gradients_match(&g, 1e-5);
    eprintln!("CUDA backward vs finite differences on {}: worst {worst:.1e} relative", g.describe());
}

/// A backward gone wrong in one known way, to show that the check above fails on it.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// act'(z) left out of dL/dZ.
    NoActivationDerivative,
    /// The gradient toward the layer below reads the weight transposed.
    TransposedWeight,
    /// The bias gradient left at zero.
    NoBiasGradient,
}

/// `Cpu<f64>` with one fault in its backward primitives.
struct Faulty(Cpu<f64>, Fault);

impl Compute for Faulty {
    type Elem = f64;
    type Buf = Vec<f64>;

    fn upload(&self, host: &[f64]) -> Result<Vec<f64>, ComputeError> {
        self.0.upload(host)
    }

    fn download(&self, buf: &Vec<f64>, out: &mut [f64]) -> Result<(), ComputeError> {
        self.0.download(buf, out)
    }

    fn zeros(&self, n: usize) -> Result<Vec<f64>, ComputeError> {
        self.0.zeros(n)
    }

    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &Vec<f64>,
        b: &Vec<f64>,
        beta: f64,
        c: &mut Vec<f64>,
    ) -> Result<(), ComputeError> {
        // Only the backward's dL/dX = dL/dZ·W multiplies untransposed operands.
        let tb = tb || (!ta && matches!(self.1, Fault::TransposedWeight));
        self.0.gemm(ta, tb, m, n, k, alpha, a, b, beta, c)
    }

    fn bias_act_forward(
        &self,
        z: &mut Vec<f64>,
        bias: &Vec<f64>,
        rows: usize,
        cols: usize,
        act: Activation,
        out: &mut Vec<f64>,
    ) -> Result<(), ComputeError> {
        self.0.bias_act_forward(z, bias, rows, cols, act, out)
    }

    fn act_backward(&self, grad: &mut Vec<f64>, z: &Vec<f64>, act: Activation, n: usize) -> Result<(), ComputeError> {
        match self.1 {
            Fault::NoActivationDerivative => Ok(()),
            _ => self.0.act_backward(grad, z, act, n),
        }
    }

    fn column_sums(&self, x: &Vec<f64>, rows: usize, cols: usize, out: &mut Vec<f64>) -> Result<(), ComputeError> {
        match self.1 {
            Fault::NoBiasGradient => Ok(()),
            _ => self.0.column_sums(x, rows, cols, out),
        }
    }

    fn mse(&self, pred: &Vec<f64>, target: &Vec<f64>, n: usize, grad: &mut Vec<f64>) -> Result<f64, ComputeError> {
        self.0.mse(pred, target, n, grad)
    }

    fn adamw(
        &self,
        p: &mut Vec<f64>,
        g: &Vec<f64>,
        m: &mut Vec<f64>,
        v: &mut Vec<f64>,
        src: &Vec<f64>,
        n: usize,
        s: AdamStep,
    ) -> Result<(), ComputeError> {
        self.0.adamw(p, g, m, v, src, n, s)
    }

    fn gather_rows(&self, x: &Vec<f64>, idx: &[usize], cols: usize, out: &mut Vec<f64>) -> Result<(), ComputeError> {
        self.0.gather_rows(x, idx, cols, out)
    }
}

#[test]
fn the_check_fails_a_backward_with_a_missing_derivative_a_transposed_weight_or_no_bias_gradient() {
    for fault in [Fault::NoActivationDerivative, Fault::TransposedWeight, Fault::NoBiasGradient] {
        let worst = worst_gradient_error(&Faulty(Cpu::new(), fault));
        eprintln!("{fault:?}: worst {worst:.1e} relative");
        assert!(worst > 1e-2, "{fault:?} went unnoticed: {worst:e}");
    }
}
