//! `skillgraft bench gpu`: the same fine-tune (the one training loop) on the CPU and on the GPU,
//! for heads from 100k to 10M parameters and 1k to 100k samples, in one run: medians, the ratio,
//! and how far the final losses agree. The CPU figures come always; the GPU ones where this
//! build has the `cuda` feature and a GPU works.

use std::fmt;
use std::time::Instant;

use nalgebra::{DMatrix, DVector};
use serde::Serialize;

use skillgraft::adapt::compute::Threads;
use skillgraft::adapt::device::{Backend, Device};
use skillgraft::adapt::finetune::{Data, Settings, Shape};
use skillgraft::model::head::{Activation, LayerParams};

/// Action width of every benchmark head.
const ACTIONS: usize = 6;

/// Heads (input → hidden (ReLU) → 6) of about 100k, 1M and 10M parameters.
pub const HEADS: [(usize, usize); 3] = [(256, 384), (1024, 960), (4096, 2432)];
/// Training samples.
pub const SAMPLES: [usize; 3] = [1_000, 10_000, 100_000];
/// The `--quick` grid: the two smaller heads and sample counts.
pub const QUICK: (usize, usize) = (2, 2);
/// A run longer than this many seconds is not repeated (the grid must fit a short lease).
const LONG_S: f64 = 5.0;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuOptions {
    /// The smaller grid.
    pub quick: bool,
    /// CPU threads.
    pub threads: usize,
    /// Timed runs per cell (fewer for runs over 5 s).
    pub repeats: usize,
    /// Epochs per fine-tune.
    pub epochs: usize,
}

/// One cell of the grid.
#[derive(Debug, Serialize)]
pub struct Cell {
    /// Head shape, `IN→HIDDEN→6`.
    pub head: String,
    /// Trainable parameters.
    pub params: usize,
    /// Training samples.
    pub samples: usize,
    /// CPU fine-tune, median ms.
    pub cpu_ms: f64,
    /// CPU runs timed.
    pub cpu_runs: usize,
    /// GPU fine-tune, median ms (data upload included), when a GPU ran.
    pub gpu_ms: Option<f64>,
    /// GPU runs timed.
    pub gpu_runs: usize,
    /// Mean training loss of the last epoch, CPU.
    pub cpu_loss: f64,
    /// The same on the GPU.
    pub gpu_loss: Option<f64>,
}

/// The benchmark's result.
#[derive(Debug, Serialize)]
pub struct GpuReport {
    /// The cells, smallest first.
    pub cells: Vec<Cell>,
    /// CPU threads.
    pub threads: usize,
    /// Epochs per fine-tune.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// The GPU (`cuda: NAME (compute_XY)`), or why none ran.
    pub gpu: String,
    /// Whether a GPU ran.
    pub gpu_ran: bool,
    /// Seconds to start the GPU backend (context, cuBLAS, kernels from NVRTC or the cache).
    pub gpu_start_s: Option<f64>,
    /// Whether this binary was built with optimisations.
    pub optimised: bool,
}

fn settings(epochs: usize) -> Settings {
    Settings { epochs, batch: 256, lr: 1e-3, pull: 1e-2, patience: usize::MAX, seed: 0 }
}

fn layer(seed: u64, out: usize, inp: usize) -> LayerParams {
    let scale = (3.0 / inp as f32).sqrt();
    let w: Vec<f32> = skillgraft::rng::seeded(seed, out * inp).iter().map(|v| v * scale).collect();
    LayerParams { weight: DMatrix::from_row_slice(out, inp, &w), bias: Some(DVector::zeros(out)) }
}

/// The head `d_in → hidden (ReLU) → ACTIONS` the benchmark trains: its shapes and starting layers.
fn head(d_in: usize, hidden: usize) -> ([Shape; 2], [LayerParams; 2]) {
    let shapes = [
        Shape { inputs: d_in, outputs: hidden, activation: Activation::Relu, bias: true },
        Shape { inputs: hidden, outputs: ACTIONS, activation: Activation::Identity, bias: true },
    ];
    (shapes, [layer(1, hidden, d_in), layer(2, ACTIONS, hidden)])
}

/// Trainable parameters of `layers`: every weight and bias entry.
fn parameters(layers: &[LayerParams]) -> usize {
    layers.iter().map(|l| l.weight.len() + l.bias.as_ref().map_or(0, |b| b.len())).sum()
}

/// Inputs and targets for `rows` samples of width `d_in`: the targets are a cheap fixed
/// function of a few inputs, since only the timing and the two backends' agreement matter here.
fn data(d_in: usize, rows: usize) -> Data {
    let x = skillgraft::rng::seeded(d_in as u64, rows * d_in);
    let y = (0..rows)
        .flat_map(|r| {
            let xr = &x[r * d_in..(r + 1) * d_in];
            (0..ACTIONS).map(move |j| 0.5 * xr[j] - 0.25 * xr[j + ACTIONS] + 0.1 * xr[j * 7 % d_in])
        })
        .collect();
    Data { x, y, rows }
}

/// Median ms of `f` over `repeats` runs, or one run when the first is long; also the runs
/// timed and the last result.
fn time<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, usize, T) {
    let start = Instant::now();
    let mut last = f();
    let mut t = vec![start.elapsed().as_secs_f64()];
    if t[0] < LONG_S {
        for _ in 1..repeats {
            let start = Instant::now();
            last = f();
            t.push(start.elapsed().as_secs_f64());
        }
    }
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2] * 1e3, t.len(), last)
}

/// Runs the grid; `row` is called with each cell as it is done (a long run shows progress).
pub fn gpu(o: &GpuOptions, row: &mut dyn FnMut(&Cell)) -> Result<GpuReport, String> {
    let s = settings(o.epochs);
    let cpu = Backend::select(Device::Cpu, Threads::new(o.threads)).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let (gpu, why) = match Backend::select(Device::Cuda, Threads::default()) {
        Ok(g) => (Some(g), String::new()),
        Err(e) => (None, e.to_string()),
    };
    let gpu_start_s = gpu.as_ref().map(|_| t0.elapsed().as_secs_f64());
    let (heads, samples) = if o.quick { (&HEADS[..QUICK.0], &SAMPLES[..QUICK.1]) } else { (&HEADS[..], &SAMPLES[..]) };
    let mut cells = Vec::new();
    for &(d_in, hidden) in heads {
        let (shapes, source) = head(d_in, hidden);
        let params = parameters(&source);
        let all = data(d_in, *samples.last().unwrap_or(&0));
        for &n in samples {
            let d = Data { x: all.x[..n * d_in].to_vec(), y: all.y[..n * ACTIONS].to_vec(), rows: n };
            let run = |b: &Backend| b.train(&shapes, &source, &source, &d, None, &s, &mut |_| {});
            let last_loss = |t: Result<skillgraft::adapt::finetune::Trained, _>| -> Result<f64, String> {
                let t = t.map_err(|e: skillgraft::adapt::compute::ComputeError| e.to_string())?;
                Ok(t.curve.last().map_or(f64::NAN, |e| e.train))
            };
            if let Some(g) = &gpu
                && cells.is_empty()
            {
                // The first launches load cuBLAS's kernels; keep that out of the figures.
                last_loss(run(g))?;
            }
            let (cpu_ms, cpu_runs, c) = time(o.repeats, || run(&cpu));
            let cpu_loss = last_loss(c)?;
            let (gpu_ms, gpu_runs, gpu_loss) = match &gpu {
                Some(g) => {
                    let (ms, runs, r) = time(o.repeats, || run(g));
                    (Some(ms), runs, Some(last_loss(r)?))
                }
                None => (None, 0, None),
            };
            let cell = Cell {
                head: format!("{d_in}→{hidden}→{ACTIONS}"),
                params,
                samples: n,
                cpu_ms,
                cpu_runs,
                gpu_ms,
                gpu_runs,
                cpu_loss,
                gpu_loss,
            };
            row(&cell);
            cells.push(cell);
        }
    }
    Ok(GpuReport {
        cells,
        threads: o.threads,
        epochs: o.epochs,
        batch: s.batch,
        gpu_ran: gpu.is_some(),
        gpu: match &gpu {
            Some(g) => g.describe(),
            None => format!("not run: {why}"),
        },
        gpu_start_s,
        optimised: !cfg!(debug_assertions),
    })
}

/// `1.0M`, `100k`.
fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

impl Cell {
    /// The table row.
    pub fn line(&self) -> String {
        let runs = |r: usize| if r == 1 { " (1 run)" } else { "" };
        let (gpu, ratio, agree) = match (self.gpu_ms, self.gpu_loss) {
            (Some(ms), Some(l)) => (
                format!("{ms:.1}{}", runs(self.gpu_runs)),
                format!("{:.1}×", self.cpu_ms / ms),
                format!("{:.6} vs {l:.6} ({:.1e} relative)", self.cpu_loss, (l - self.cpu_loss).abs() / self.cpu_loss),
            ),
            _ => ("n/a".into(), "n/a".into(), format!("{:.6} (CPU)", self.cpu_loss)),
        };
        format!(
            "| {} ({}) | {} | {:.1}{} | {gpu} | {ratio} | {agree} |",
            self.head,
            count(self.params),
            count(self.samples),
            self.cpu_ms,
            runs(self.cpu_runs)
        )
    }
}

/// The table's header.
pub const HEADER: &str = "| head (parameters) | samples | CPU ms (median) | GPU ms (median) | CPU / GPU | final training loss, CPU vs GPU |\n|---|---:|---:|---:|---:|---|";

impl fmt::Display for GpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.optimised {
            writeln!(f, "warning: this is a debug build; time a release build (cargo run --release -- bench gpu)")?;
        }
        writeln!(
            f,
            "fine-tune of the whole head, {} epoch(s), batch {}, AdamW; CPU: {} thread(s); GPU: {}{}",
            self.epochs,
            self.batch,
            self.threads,
            self.gpu,
            self.gpu_start_s.map(|s| format!(", started in {s:.2} s")).unwrap_or_default()
        )?;
        writeln!(f, "{HEADER}")?;
        for c in &self.cells {
            writeln!(f, "{}", c.line())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's labels come from the layers the benchmark trains, counted entry by entry.
    #[test]
    fn the_heads_span_100k_to_10m_parameters() {
        let labels: Vec<String> = HEADS
            .iter()
            .map(|&(d_in, hidden)| {
                let (shapes, layers) = head(d_in, hidden);
                for (s, l) in shapes.iter().zip(&layers) {
                    assert_eq!(l.weight.shape(), (s.outputs, s.inputs), "the layer has its shape's size");
                }
                count(parameters(&layers))
            })
            .collect();
        assert_eq!(labels, ["100k", "989k", "10.0M"]);
        assert_eq!([count(999), count(1_000), count(999_999), count(1_000_000)], ["999", "1k", "999k", "1.0M"]);
    }
}
