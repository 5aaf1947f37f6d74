//! The few primitives head training needs, behind one trait so the training loop is written once:
//! the CPU implementation here (matrixmultiply and plain loops), the CUDA one in `cuda` (cargo
//! feature `cuda`). Matrices are row-major buffers.

use std::borrow::Cow;

use crate::model::head::Activation;

pub use super::threads::Threads;

/// Floating-point types the CPU backend runs in: f32 for training, f64 for gradient checks.
pub trait Real: nalgebra::RealField + Copy + Default + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    /// From f64.
    fn of_f64(v: f64) -> Self;
    /// To f64.
    fn as_f64(self) -> f64;
    /// Host values kept in f32 (data, weights) in this type: borrowed when it is f32.
    fn of_f32s(v: &[f32]) -> Cow<'_, [Self]>;
    /// Row-major `C = alpha·op(A)·op(B) + beta·C` with matrixmultiply; `lda` and `ldb` are
    /// the row lengths of A and B as stored (so a block of rows of op(A) can be passed).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: &[Self],
        lda: usize,
        b: &[Self],
        ldb: usize,
        beta: Self,
        c: &mut [Self],
    );
}

/// Index one past the last element a stored operand of `rows` × `cols` with row length `ld`
/// touches.
fn extent(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols }
}

macro_rules! real {
    ($t:ty, $gemm:path, $of_f32s:expr) => {
        impl Real for $t {
            fn of_f64(v: f64) -> Self {
                v as $t
            }
            fn as_f64(self) -> f64 {
                self as f64
            }
            fn of_f32s(v: &[f32]) -> Cow<'_, [Self]> {
                $of_f32s(v)
            }
            fn gemm(
                ta: bool,
                tb: bool,
                m: usize,
                n: usize,
                k: usize,
                alpha: Self,
                a: &[Self],
                lda: usize,
                b: &[Self],
                ldb: usize,
                beta: Self,
                c: &mut [Self],
            ) {
                // op(A) is m x k, op(B) is k x n; strides say how each is laid out in memory.
                let (rsa, csa) = if ta { (1, lda as isize) } else { (lda as isize, 1) };
                let (rsb, csb) = if tb { (1, ldb as isize) } else { (ldb as isize, 1) };
                let a_need = if ta { extent(k, m, lda) } else { extent(m, k, lda) };
                let b_need = if tb { extent(n, k, ldb) } else { extent(k, n, ldb) };
                assert!(a.len() >= a_need && b.len() >= b_need && c.len() >= m * n, "gemm operand too small");
                // SAFETY: the asserts above keep every access inside the slices.
                unsafe {
                    $gemm(
                        m,
                        k,
                        n,
                        alpha,
                        a.as_ptr(),
                        rsa,
                        csa,
                        b.as_ptr(),
                        rsb,
                        csb,
                        beta,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
            }
        }
    };
}

real!(f32, matrixmultiply::sgemm, Cow::Borrowed);
real!(f64, matrixmultiply::dgemm, |v: &[f32]| Cow::Owned(v.iter().map(|&x| f64::from(x)).collect()));

/// One AdamW step's settings. The decoupled decay pulls toward the source weights (L2-SP), not
/// toward zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled pull toward the source weights, per unit of learning rate.
    pub pull: f64,
    /// Step number, from 1.
    pub t: u64,
}

/// A primitive failed on its device (an allocation, a copy or a kernel launch); the CPU backend
/// never fails.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ComputeError(pub String);

/// The primitives of head training. Each can fail on a device, so each returns a result.
pub trait Compute {
    /// Element type.
    type Elem: Real;
    /// A buffer on the device.
    type Buf;
    /// Copies host values to the device.
    fn upload(&self, host: &[Self::Elem]) -> Result<Self::Buf, ComputeError>;
    /// Copies device values to the host.
    fn download(&self, buf: &Self::Buf, out: &mut [Self::Elem]) -> Result<(), ComputeError>;
    /// A buffer of `n` zeros.
    fn zeros(&self, n: usize) -> Result<Self::Buf, ComputeError>;
    /// Row-major `C = alpha·op(A)·op(B) + beta·C`, `op(A)` m×k, `op(B)` k×n.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &Self::Buf,
        b: &Self::Buf,
        beta: f64,
        c: &mut Self::Buf,
    ) -> Result<(), ComputeError>;
    /// Adds `bias` to every row of `z` (rows×cols), then writes `act(z)` into `out`.
    fn bias_act_forward(
        &self,
        z: &mut Self::Buf,
        bias: &Self::Buf,
        rows: usize,
        cols: usize,
        act: Activation,
        out: &mut Self::Buf,
    ) -> Result<(), ComputeError>;
    /// Turns `grad` (dL/dA) into dL/dZ in place: `grad *= act'(z)`, over `n` elements.
    fn act_backward(&self, grad: &mut Self::Buf, z: &Self::Buf, act: Activation, n: usize) -> Result<(), ComputeError>;
    /// Sums the columns of `x` (rows×cols) into `out` (cols).
    fn column_sums(&self, x: &Self::Buf, rows: usize, cols: usize, out: &mut Self::Buf) -> Result<(), ComputeError>;
    /// Mean squared error over all rows×cols elements; writes its gradient into `grad`.
    fn mse(&self, pred: &Self::Buf, target: &Self::Buf, n: usize, grad: &mut Self::Buf) -> Result<f64, ComputeError>;
    /// One AdamW step on `n` parameters `p` with gradient `g`, moments `m`, `v`, pulled
    /// toward `src`.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        src: &Self::Buf,
        n: usize,
        s: AdamStep,
    ) -> Result<(), ComputeError>;
    /// Copies rows `idx` of `x` (cols wide) into `out`, in that order.
    fn gather_rows(&self, x: &Self::Buf, idx: &[usize], cols: usize, out: &mut Self::Buf) -> Result<(), ComputeError>;
}

/// Row-major `C = alpha·op(A)·op(B) + beta·C` for densely stored A and B, `op(A)` m×k and
/// `op(B)` k×n, with the rows of C split over the threads when the product is large enough to
/// pay for them. The split can move the last bits of an element (matrixmultiply's tiles fall
/// differently), so results are reproducible for the same thread count.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    threads: &Threads,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let lda = if ta { m } else { k };
    let ldb = if tb { k } else { n };
    // Below about a million multiply-adds, starting a thread costs more than it saves.
    let parts = if m * n * k < 1 << 20 { 1 } else { threads.count().clamp(1, m.div_ceil(16)) };
    if parts == 1 {
        T::gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c);
        return;
    }
    let per = m.div_ceil(parts);
    threads.each(c[..m * n].chunks_mut(per * n).enumerate(), |(i, block)| {
        let rows = block.len() / n;
        let a = if ta { &a[i * per..] } else { &a[i * per * lda..] };
        T::gemm(ta, tb, rows, n, k, alpha, a, lda, b, ldb, beta, block)
    });
}

/// One AdamW step over slices of the same length (see [`Compute::adamw`]).
fn adamw_slice<T: Real>(p: &mut [T], m: &mut [T], v: &mut [T], g: &[T], src: &[T], s: AdamStep) {
    // In the element type, as PyTorch does: f32 keeps the loop in vector registers.
    let t = |v: f64| T::of_f64(v);
    let (b1, b2, nb1, nb2) = (t(s.beta1), t(s.beta2), t(1.0 - s.beta1), t(1.0 - s.beta2));
    let step = t(s.lr / (1.0 - s.beta1.powi(s.t as i32)));
    let unbias_v = t(1.0 / (1.0 - s.beta2.powi(s.t as i32)));
    let (decay, eps) = (t(s.lr * s.pull), t(s.eps));
    for ((((p, m), v), &g), &src) in p.iter_mut().zip(m).zip(v).zip(g).zip(src) {
        let mi = b1 * *m + nb1 * g;
        let vi = b2 * *v + nb2 * g * g;
        *m = mi;
        *v = vi;
        *p = *p - decay * (*p - src) - step * mi / ((vi * unbias_v).sqrt() + eps);
    }
}

/// The CPU backend.
#[derive(Debug, Clone)]
pub struct Cpu<T> {
    threads: Threads,
    elem: std::marker::PhantomData<T>,
}

impl<T> Cpu<T> {
    /// The CPU backend on the calling thread alone.
    pub fn new() -> Cpu<T> {
        Cpu::with_threads(Threads::default())
    }

    /// The CPU backend with its work spread over `threads`.
    pub fn with_threads(threads: Threads) -> Cpu<T> {
        Cpu { threads, elem: std::marker::PhantomData }
    }
}

impl<T> Default for Cpu<T> {
    fn default() -> Self {
        Cpu::new()
    }
}

/// `z += bias` row by row, then `out = f(z)`; generic over `f` so that each activation gets a
/// loop of its own (identity and ReLU become vector code).
fn add_bias_then<T: Real>(z: &mut [T], bias: &[T], cols: usize, out: &mut [T], f: impl Fn(f64) -> f64) {
    for (zr, or) in z.chunks_mut(cols).zip(out.chunks_mut(cols)) {
        for ((zv, ov), b) in zr.iter_mut().zip(or).zip(bias) {
            let v = zv.as_f64() + b.as_f64();
            *zv = T::of_f64(v);
            *ov = T::of_f64(f(v));
        }
    }
}

/// `grad *= d(z)`, generic over `d` for the same reason.
fn scale_by<T: Real>(grad: &mut [T], z: &[T], d: impl Fn(f64) -> f64) {
    for (g, zv) in grad.iter_mut().zip(z) {
        *g = T::of_f64(g.as_f64() * d(zv.as_f64()));
    }
}

impl<T: Real> Compute for Cpu<T> {
    type Elem = T;
    type Buf = Vec<T>;

    fn upload(&self, host: &[T]) -> Result<Vec<T>, ComputeError> {
        Ok(host.to_vec())
    }

    fn download(&self, buf: &Vec<T>, out: &mut [T]) -> Result<(), ComputeError> {
        out.copy_from_slice(&buf[..out.len()]);
        Ok(())
    }

    fn zeros(&self, n: usize) -> Result<Vec<T>, ComputeError> {
        Ok(vec![T::default(); n])
    }

    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        a: &Vec<T>,
        b: &Vec<T>,
        beta: f64,
        c: &mut Vec<T>,
    ) -> Result<(), ComputeError> {
        gemm(&self.threads, ta, tb, m, n, k, T::of_f64(alpha), a, b, T::of_f64(beta), c);
        Ok(())
    }

    fn bias_act_forward(
        &self,
        z: &mut Vec<T>,
        bias: &Vec<T>,
        rows: usize,
        cols: usize,
        act: Activation,
        out: &mut Vec<T>,
    ) -> Result<(), ComputeError> {
        let (z, out) = (&mut z[..rows * cols], &mut out[..rows * cols]);
        match act {
            Activation::Identity => add_bias_then(z, bias, cols, out, |v| v),
            Activation::Relu => add_bias_then(z, bias, cols, out, |v| v.max(0.0)),
            other => add_bias_then(z, bias, cols, out, |v| other.apply_f64(v)),
        }
        Ok(())
    }

    fn act_backward(&self, grad: &mut Vec<T>, z: &Vec<T>, act: Activation, n: usize) -> Result<(), ComputeError> {
        let (grad, z) = (&mut grad[..n], &z[..n]);
        match act {
            Activation::Identity => {}
            Activation::Relu => scale_by(grad, z, |v| if v > 0.0 { 1.0 } else { 0.0 }),
            other => scale_by(grad, z, |v| other.derivative_f64(v)),
        }
        Ok(())
    }

    fn column_sums(&self, x: &Vec<T>, rows: usize, cols: usize, out: &mut Vec<T>) -> Result<(), ComputeError> {
        let mut acc = vec![0.0f64; cols];
        for r in 0..rows {
            for (c, a) in acc.iter_mut().enumerate() {
                *a += x[r * cols + c].as_f64();
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = T::of_f64(a);
        }
        Ok(())
    }

    fn mse(&self, pred: &Vec<T>, target: &Vec<T>, n: usize, grad: &mut Vec<T>) -> Result<f64, ComputeError> {
        let mut sum = 0.0;
        let scale = 2.0 / n as f64;
        for i in 0..n {
            let d = pred[i].as_f64() - target[i].as_f64();
            sum += d * d;
            grad[i] = T::of_f64(scale * d);
        }
        Ok(sum / n as f64)
    }

    fn adamw(
        &self,
        p: &mut Vec<T>,
        g: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        src: &Vec<T>,
        n: usize,
        s: AdamStep,
    ) -> Result<(), ComputeError> {
        // Below this many parameters, starting a thread costs more than it saves.
        let parts = if n >= 1 << 16 { self.threads.count() } else { 1 };
        let per = n.div_ceil(parts).max(1);
        let slices = p[..n].chunks_mut(per).zip(m[..n].chunks_mut(per)).zip(v[..n].chunks_mut(per));
        let slices = slices.zip(g[..n].chunks(per)).zip(src[..n].chunks(per));
        self.threads.each(slices, |((((p, m), v), g), src)| adamw_slice(p, m, v, g, src, s));
        Ok(())
    }

    fn gather_rows(&self, x: &Vec<T>, idx: &[usize], cols: usize, out: &mut Vec<T>) -> Result<(), ComputeError> {
        for (r, &i) in idx.iter().enumerate() {
            out[r * cols..(r + 1) * cols].copy_from_slice(&x[i * cols..(i + 1) * cols]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u64, n: usize) -> Vec<f64> {
        crate::rng::seeded(seed, n).iter().map(|&v| v as f64).collect()
    }

    /// Central finite difference of `f` at `x` along coordinate `i`.
    fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize) -> f64 {
        let h = 1e-6;
        let (mut a, mut b) = (x.to_vec(), x.to_vec());
        a[i] += h;
        b[i] -= h;
        (f(&a) - f(&b)) / (2.0 * h)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 + 1e-5 * b.abs()
    }

    #[test]
    fn gemm_in_every_transpose_form_matches_the_definition() {
        let c = Cpu::<f64>::new();
        let (m, n, k) = (3, 4, 5);
        let a = values(1, m * k);
        let b = values(2, k * n);
        let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want: Vec<f64> = (0..m * n)
            .map(|i| (0..k).map(|j| a[(i / n) * k + j] * b[j * n + i % n]).sum::<f64>() * 2.0 + 1.0)
            .collect();
        for (ta, tb, aa, bb) in
            [(false, false, &a, &b), (true, false, &at, &b), (false, true, &a, &bt), (true, true, &at, &bt)]
        {
            let mut out = vec![1.0; m * n];
            c.gemm(ta, tb, m, n, k, 2.0, aa, bb, 1.0, &mut out).unwrap();
            assert!(out.iter().zip(&want).all(|(x, y)| close(*x, *y)), "ta={ta} tb={tb}");
        }
    }

    #[test]
    fn work_split_over_threads_equals_the_single_thread_work() {
        let (m, n, k) = (150, 70, 130);
        let a: Vec<f32> = crate::rng::seeded(4, m * k);
        let b: Vec<f32> = crate::rng::seeded(5, k * n);
        let team = Threads::new(3);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut one = vec![0.5f32; m * n];
            let mut three = one.clone();
            gemm(&Threads::default(), ta, tb, m, n, k, 1.5, &a, &b, 0.5, &mut one);
            gemm(&team, ta, tb, m, n, k, 1.5, &a, &b, 0.5, &mut three);
            let worst = one.iter().zip(&three).map(|(x, y)| (x - y).abs() / x.abs().max(1.0)).fold(0.0, f32::max);
            assert!(worst < 1e-5, "ta={ta} tb={tb}: split products differ by {worst} relative");
        }
        let s = AdamStep { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, pull: 0.1, t: 3 };
        let n = 1 << 17;
        let g: Vec<f32> = crate::rng::seeded(6, n);
        let run = |c: &Cpu<f32>| {
            let (mut p, mut m, mut v) = (crate::rng::seeded(7, n), vec![0.1f32; n], vec![0.2f32; n]);
            c.adamw(&mut p, &g, &mut m, &mut v, &vec![0.0; n], n, s).unwrap();
            (p, m, v)
        };
        assert_eq!(run(&Cpu::new()), run(&Cpu::with_threads(team)), "AdamW split over threads");
    }

    #[test]
    fn activation_gradients_match_finite_differences() {
        let c = Cpu::<f64>::new();
        let z = values(3, 40).iter().map(|v| v * 3.0 + 0.013).collect::<Vec<_>>();
        for act in Activation::EVERY_KIND {
            let mut g = vec![1.0; z.len()];
            c.act_backward(&mut g, &z, act, z.len()).unwrap();
            for i in 0..z.len() {
                let f = |x: &[f64]| act.apply_f64(x[i]);
                assert!(close(g[i], fd(&f, &z, i)), "{act} at {}: {} vs {}", z[i], g[i], fd(&f, &z, i));
            }
        }
    }

    #[test]
    fn a_layer_and_its_loss_backpropagate_like_finite_differences() {
        // loss(W, b) = mse(act(X Wᵀ + b), Y): the gradients the training loop builds from the
        // primitives must equal finite differences of the forward primitives.
        let c = Cpu::<f64>::new();
        let (n, d, o) = (6, 4, 3);
        let x = values(4, n * d);
        let y = values(5, n * o);
        for act in Activation::EVERY_KIND {
            let forward = |w: &[f64], b: &[f64]| -> f64 {
                let mut z = vec![0.0; n * o];
                c.gemm(false, true, n, o, d, 1.0, &x, &w.to_vec(), 0.0, &mut z).unwrap();
                let mut a = vec![0.0; n * o];
                c.bias_act_forward(&mut z, &b.to_vec(), n, o, act, &mut a).unwrap();
                c.mse(&a, &y, n * o, &mut vec![0.0; n * o]).unwrap()
            };
            let w = values(6, o * d);
            let b = values(7, o);
            let mut z = vec![0.0; n * o];
            c.gemm(false, true, n, o, d, 1.0, &x, &w, 0.0, &mut z).unwrap();
            let mut a = vec![0.0; n * o];
            c.bias_act_forward(&mut z, &b, n, o, act, &mut a).unwrap();
            let mut g = vec![0.0; n * o];
            c.mse(&a, &y, n * o, &mut g).unwrap();
            c.act_backward(&mut g, &z, act, n * o).unwrap();
            let mut gw = vec![0.0; o * d];
            c.gemm(true, false, o, d, n, 1.0, &g, &x, 0.0, &mut gw).unwrap();
            let mut gb = vec![0.0; o];
            c.column_sums(&g, n, o, &mut gb).unwrap();
            for (i, &g) in gw.iter().enumerate() {
                let f = |w: &[f64]| forward(w, &b);
                assert!(close(g, fd(&f, &w, i)), "{act}: dW[{i}] {g} vs {}", fd(&f, &w, i));
            }
            for (i, &g) in gb.iter().enumerate() {
                let f = |bb: &[f64]| forward(&w, bb);
                assert!(close(g, fd(&f, &b, i)), "{act}: db[{i}]");
            }
            // and the input gradient, which flows to the layer below
            let mut gx = vec![0.0; n * d];
            c.gemm(false, false, n, d, o, 1.0, &g, &w, 0.0, &mut gx).unwrap();
            let fx = |xx: &[f64]| {
                let mut z = vec![0.0; n * o];
                c.gemm(false, true, n, o, d, 1.0, &xx.to_vec(), &w, 0.0, &mut z).unwrap();
                let mut a = vec![0.0; n * o];
                c.bias_act_forward(&mut z, &b, n, o, act, &mut a).unwrap();
                c.mse(&a, &y, n * o, &mut vec![0.0; n * o]).unwrap()
            };
            for (i, &g) in gx.iter().enumerate() {
                assert!(close(g, fd(&fx, &x, i)), "{act}: dX[{i}]");
            }
        }
    }

    #[test]
    fn adamw_follows_its_update_rule_and_pulls_toward_the_source() {
        let c = Cpu::<f64>::new();
        let mut p = vec![1.0, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        let src = vec![0.0, 0.0];
        let s = AdamStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, pull: 0.5, t: 1 };
        c.adamw(&mut p, &vec![0.2, -0.4], &mut m, &mut v, &src, 2, s).unwrap();
        // First step: m̂ = g, v̂ = g², so the Adam step is lr·sign(g); the pull first moves
        // each weight lr·pull of the way to the source.
        assert!(close(p[0], 1.0 - 0.1 * 0.5 * 1.0 - 0.1));
        assert!(close(p[1], -2.0 + 0.1 * 0.5 * 2.0 + 0.1));
        let mut q = vec![3.0];
        let (mut m, mut v) = (vec![0.0], vec![0.0]);
        for t in 1..=2000 {
            c.adamw(&mut q, &vec![0.0], &mut m, &mut v, &vec![1.0], 1, AdamStep { t, ..s }).unwrap();
        }
        assert!((q[0] - 1.0).abs() < 1e-6, "with no gradient the weight settles on the source: {}", q[0]);
    }

    #[test]
    fn f32_matches_f64() {
        let (c32, c64) = (Cpu::<f32>::new(), Cpu::<f64>::new());
        let (m, n, k) = (7, 5, 9);
        let a = values(8, m * k);
        let b = values(9, k * n);
        let mut o64 = vec![0.0; m * n];
        c64.gemm(false, true, m, n, k, 1.0, &a, &b, 0.0, &mut o64).unwrap();
        let mut o32 = vec![0.0f32; m * n];
        let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
        c32.gemm(false, true, m, n, k, 1.0, &a32, &b32, 0.0, &mut o32).unwrap();
        assert!(o32.iter().zip(&o64).all(|(x, y)| (*x as f64 - y).abs() < 1e-5));
        let mut out = vec![0.0f32; 2 * n];
        c32.gather_rows(&o32, &[3, 1], n, &mut out).unwrap();
        assert_eq!(out[..n], o32[3 * n..4 * n]);
    }
}
