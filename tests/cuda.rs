//! The CUDA backend against the CPU one: every primitive, one training step's gradients and a
//! whole fine-tune. They need a CUDA GPU, so they are `#[ignore]`d and the runner reports them as
//! not run; a GPU machine runs them with `cargo test --features cuda --test cuda -- --ignored`
//! (and the GPU test of tests/suite/adapt.rs with `--test suite -- --ignored adapt::`), where a
//! missing GPU fails.
//!
//! Tolerances come from the length of each reduction. A sum of k f32 products computed in any
//! order is within γ_k·Σ|aᵢbᵢ| of the exact value, γ_k ≈ k·ε (ε = 2⁻²⁴), so two such sums are
//! within 2·k·ε·Σ|aᵢbᵢ| of each other: the GEMM bound, element by element. Element-wise kernels
//! (k = 1) evaluate in f64 as the CPU does and round once to f32, so they may differ by the last
//! bit the f64 functions of the two libraries leave: 2·ε relative. Column sums and the loss sum
//! in f64, so ε_f64 times their length bounds the difference before the final rounding.
#![cfg(feature = "cuda")]

use skillgraft::adapt::compute::{AdamStep, Compute, Cpu};
use skillgraft::adapt::cuda::CudaCompute;
use skillgraft::adapt::device::{Backend, Device};
use skillgraft::adapt::finetune::{self, Data, Settings, Shape};
use skillgraft::model::head::{Activation, LayerParams};
use skillgraft::rng::seeded;

const EPS: f64 = f32::EPSILON as f64;

/// The GPU, with its own kernel cache (a fresh folder, so no test reads another's files); fails
/// saying why when CUDA cannot be used, since these tests only run when asked for.
fn gpu() -> (CudaCompute, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let g = CudaCompute::new(0, Some(cache.path()))
        .unwrap_or_else(|why| panic!("these tests need a usable CUDA GPU: {why}"));
    eprintln!("running on {}", g.describe());
    (g, cache)
}

fn down(g: &CudaCompute, b: &<CudaCompute as Compute>::Buf, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    g.download(b, &mut out).unwrap();
    out
}

/// Asserts |gpu − cpu| ≤ bound(i) element by element; returns the largest ratio to the bound.
fn within(what: &str, gpu: &[f32], cpu: &[f32], bound: impl Fn(usize) -> f64) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst: f64 = 0.0;
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let d = (*a as f64 - *b as f64).abs();
        let tol = bound(i).max(f64::MIN_POSITIVE);
        assert!(d <= tol, "{what}[{i}]: GPU {a} vs CPU {b}, |Δ| {d:e} above the bound {tol:e}");
        worst = worst.max(d / tol);
    }
    worst
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda --test cuda -- --ignored; --test suite -- --ignored adapt::"]
fn every_primitive_equals_the_cpu_within_its_reduction_bound() {
    let (g, _cache) = gpu();
    let c = Cpu::<f32>::new();
    // Odd sizes, so no kernel or tile happens to divide them.
    let (m, n, k) = (37, 53, 301);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a = seeded(1, m * k);
        let b = seeded(2, k * n);
        let c0 = seeded(3, m * n);
        let mut want = c0.clone();
        c.gemm(ta, tb, m, n, k, 1.5, &a, &b, 0.5, &mut want).unwrap();
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        let mut mag = abs(&c0);
        Cpu::<f32>::new().gemm(ta, tb, m, n, k, 1.5, &abs(&a), &abs(&b), 0.5, &mut mag).unwrap();
        let mut got = g.upload(&c0).unwrap();
        g.gemm(ta, tb, m, n, k, 1.5, &g.upload(&a).unwrap(), &g.upload(&b).unwrap(), 0.5, &mut got).unwrap();
        let r = within(&format!("gemm ta={ta} tb={tb}"), &down(&g, &got, m * n), &want, |i| {
            2.0 * (k + 2) as f64 * EPS * mag[i] as f64
        });
        eprintln!("gemm ta={ta} tb={tb}: worst |Δ| is {r:.3} of the bound 2·(k+2)·ε·Σ|a||b|");
    }

    let (rows, cols) = (67, 45);
    let z0: Vec<f32> = seeded(4, rows * cols).iter().map(|v| v * 4.0).collect();
    let bias = seeded(5, cols);
    let up = seeded(6, rows * cols);
    for act in Activation::EVERY_KIND {
        let (mut zc, mut oc) = (z0.clone(), vec![0.0; rows * cols]);
        c.bias_act_forward(&mut zc, &bias, rows, cols, act, &mut oc).unwrap();
        let (mut zg, mut og) = (g.upload(&z0).unwrap(), g.zeros(rows * cols).unwrap());
        g.bias_act_forward(&mut zg, &g.upload(&bias).unwrap(), rows, cols, act, &mut og).unwrap();
        let rel = |v: &[f32]| {
            let v = v.to_vec();
            move |i: usize| 2.0 * EPS * v[i].abs() as f64
        };
        within(&format!("{act} z + bias"), &down(&g, &zg, rows * cols), &zc, rel(&zc));
        within(&format!("{act} forward"), &down(&g, &og, rows * cols), &oc, rel(&oc));
        let mut gc = up.clone();
        c.act_backward(&mut gc, &zc, act, rows * cols).unwrap();
        let mut gg = g.upload(&up).unwrap();
        g.act_backward(&mut gg, &zg, act, rows * cols).unwrap();
        within(&format!("{act} backward"), &down(&g, &gg, rows * cols), &gc, rel(&gc));
    }

    let x = seeded(7, rows * cols);
    let mut sc = vec![0.0; cols];
    c.column_sums(&x, rows, cols, &mut sc).unwrap();
    let mut sg = g.zeros(cols).unwrap();
    g.column_sums(&g.upload(&x).unwrap(), rows, cols, &mut sg).unwrap();
    let mags: Vec<f64> = (0..cols).map(|j| (0..rows).map(|r| x[r * cols + j].abs() as f64).sum()).collect();
    within("column sums", &down(&g, &sg, cols), &sc, |j| EPS * sc[j].abs() as f64 + rows as f64 * 1e-16 * mags[j]);

    let (p, t) = (seeded(8, rows * cols), seeded(9, rows * cols));
    let mut dc = vec![0.0; rows * cols];
    let lc = c.mse(&p, &t, rows * cols, &mut dc).unwrap();
    let mut dg = g.zeros(rows * cols).unwrap();
    let lg = g.mse(&g.upload(&p).unwrap(), &g.upload(&t).unwrap(), rows * cols, &mut dg).unwrap();
    assert!((lc - lg).abs() <= (rows * cols) as f64 * f64::EPSILON * lc, "loss: CPU {lc} vs GPU {lg}");
    within("mse gradient", &down(&g, &dg, rows * cols), &dc, |i| EPS * dc[i].abs() as f64);

    let np = 1000;
    let s = AdamStep { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, pull: 0.1, t: 7 };
    let (p0, gr, m0, src) = (seeded(10, np), seeded(11, np), seeded(12, np), seeded(13, np));
    let v0: Vec<f32> = seeded(14, np).iter().map(|v| v * v).collect();
    let (mut pc, mut mc, mut vc) = (p0.clone(), m0.clone(), v0.clone());
    c.adamw(&mut pc, &gr, &mut mc, &mut vc, &src, np, s).unwrap();
    let (mut pg, mut mg, mut vg) = (g.upload(&p0).unwrap(), g.upload(&m0).unwrap(), g.upload(&v0).unwrap());
    g.adamw(&mut pg, &g.upload(&gr).unwrap(), &mut mg, &mut vg, &g.upload(&src).unwrap(), np, s).unwrap();
    for (what, gv, cv) in [("p", &pg, &pc), ("m", &mg, &mc), ("v", &vg, &vc)] {
        within(&format!("AdamW {what}"), &down(&g, gv, np), cv, |i| 2.0 * EPS * cv[i].abs() as f64);
    }

    let idx = [5usize, 0, 66, 5, 31];
    let mut oc = vec![0.0; idx.len() * cols];
    c.gather_rows(&x, &idx, cols, &mut oc).unwrap();
    let mut og = g.zeros(idx.len() * cols).unwrap();
    g.gather_rows(&g.upload(&x).unwrap(), &idx, cols, &mut og).unwrap();
    assert_eq!(down(&g, &og, idx.len() * cols), oc, "gathered rows");
    let e = g.gather_rows(&g.upload(&x).unwrap(), &[rows], cols, &mut og).unwrap_err();
    assert!(e.to_string().contains("smaller than the sizes"), "a row past the end is refused: {e}");
}

/// A 512→256 (ReLU)→6 head and a batch of 256 rows, as the adaptation benchmark has them.
fn problem() -> (Vec<Shape>, Vec<LayerParams>, Data) {
    let p = skillgraft::adapt::synthetic::Problem::new(2000);
    let rows = 256;
    let data = Data {
        x: p.train.x[..rows * p.shapes[0].inputs].to_vec(),
        y: p.train.y[..rows * p.shapes[1].outputs].to_vec(),
        rows,
    };
    (p.shapes, p.source, data)
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda --test cuda -- --ignored; --test suite -- --ignored adapt::"]
fn one_training_step_gives_the_cpus_gradients_within_1e_5_relative() {
    let (g, _cache) = gpu();
    let (shapes, params, data) = problem();
    let (lc, gc) = finetune::gradients(&Cpu::<f32>::new(), &shapes, &params, &data).unwrap();
    let (lg, gg) = finetune::gradients(&g, &shapes, &params, &data).unwrap();
    assert!((lc - lg).abs() <= 1e-6 * lc, "loss: CPU {lc} vs GPU {lg}");
    for (k, (a, b)) in gg.iter().zip(&gc).enumerate() {
        // Relative to the largest gradient of the tensor (max-norm), so that entries near zero
        // are held to the same absolute standard as the rest.
        let scale = b.weight.abs().max();
        let dw = (&a.weight - &b.weight).abs().max() / scale;
        let (ab, bb) = (&a.bias, &b.bias);
        let db = (ab - bb).abs().max() / bb.abs().max();
        eprintln!("layer {k}: max |ΔdW| / max |dW| = {dw:.2e}, max |Δdb| / max |db| = {db:.2e}");
        assert!(dw <= 1e-5 && db <= 1e-5, "layer {k}: gradients differ by {dw:e} (weights), {db:e} (biases)");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: cargo test --features cuda --test cuda -- --ignored; --test suite -- --ignored adapt::"]
fn a_whole_fine_tune_gives_the_cpus_loss_curve_within_1e_3() {
    let (g, _cache) = gpu();
    let p = skillgraft::adapt::synthetic::Problem::new(4000);
    let s = Settings { epochs: 10, batch: 256, lr: 1e-3, pull: 1e-2, patience: 10, seed: 3 };
    let cpu = Backend::select(Device::Cpu, Default::default()).unwrap();
    let gpu = Backend::Cuda(Box::new(g));
    let run = |b: &Backend| b.train(&p.shapes, &p.source, &p.source, &p.train, Some(&p.held_out), &s, &mut |_| {});
    let (a, b) = (run(&cpu).unwrap(), run(&gpu).unwrap());
    assert_eq!(a.curve.len(), b.curve.len());
    for (x, y) in a.curve.iter().zip(&b.curve) {
        let (hx, hy) = (x.held_out.unwrap(), y.held_out.unwrap());
        eprintln!("epoch {:2}: train CPU {:.6} GPU {:.6}, held-out CPU {hx:.6} GPU {hy:.6}", x.epoch, x.train, y.train);
        assert!((x.train - y.train).abs() <= 1e-3 * x.train, "epoch {}: train loss", x.epoch);
        assert!((hx - hy).abs() <= 1e-3 * hx, "epoch {}: held-out loss", x.epoch);
    }
    assert_eq!(a.best_epoch, b.best_epoch, "the same epoch is kept");
}
