//! Benchmarks the CLI exposes (`skillgraft bench ...`): each prints a table of medians, and ratios
//! taken within the same run, so figures from a shared, noisy machine can still be compared.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod adapt;
#[cfg(feature = "dds")]
pub mod adapt_latency;
pub mod bridge;
pub mod cases;
#[cfg(feature = "dds")]
pub mod control;
pub mod gpu;
#[cfg(feature = "dds")]
pub mod inbox_attack;
pub mod push;
#[cfg(feature = "dds")]
pub mod record;
#[cfg(feature = "dds")]
pub mod rig;
pub mod transfer;
pub mod vision;

pub use cases::{FEATURE_BATCH, inference_cases};

/// Polls `done` every 5 ms for at most `limit`; whether it came true.
pub fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Median wall time of `f` in microseconds, over `iters` runs after `iters / 10 + 1` warm-ups.
pub fn median_us(iters: usize, f: impl FnMut()) -> f64 {
    median_seconds(iters / 10 + 1, iters, f) * 1e6
}

/// Median wall time of `f` in seconds, over `runs` runs after `warmups` untimed ones.
pub fn median_seconds(warmups: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmups {
        f();
    }
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// One row of the inference table.
#[derive(Debug, Serialize)]
pub struct InferenceRow {
    /// Model.
    pub model: String,
    /// What was timed.
    pub measure: String,
    /// tract median, µs.
    pub tract_us: f64,
    /// onnxruntime median, µs, when it could be run.
    pub ort_us: Option<f64>,
}

/// The inference benchmark: rows, and what onnxruntime was (or why it is missing).
#[derive(Debug, Serialize)]
pub struct InferenceReport {
    /// Rows.
    pub rows: Vec<InferenceRow>,
    /// onnxruntime version, or the reason it could not be timed.
    pub onnxruntime: Result<String, String>,
    /// Whether this binary was built with optimisations.
    pub optimised: bool,
}

/// Times tract on every case, and onnxruntime (1 thread) on the same files through `python`.
pub fn inference(dir: &Path, python: &str, iters: usize) -> Result<InferenceReport, String> {
    let mut cases = inference_cases(dir)?;
    let mut rows = Vec::new();
    for case in &mut cases {
        let mut action = vec![0.0; case.model.control.output_width()];
        let step = median_us(iters, || case.step(&mut action));
        let features = median_us((iters / 50).max(5), || {
            std::hint::black_box(case.features());
        });
        rows.push(InferenceRow {
            model: case.name.clone(),
            measure: "control step, batch 1".into(),
            tract_us: step,
            ort_us: None,
        });
        rows.push(InferenceRow {
            model: case.name.clone(),
            measure: format!("features, batch {FEATURE_BATCH}"),
            tract_us: features,
            ort_us: None,
        });
    }
    let onnxruntime = run_ort(dir, python, iters).map(|(version, timings)| {
        for row in &mut rows {
            let key = if row.measure.starts_with("control") { "step_us" } else { "features_us" };
            row.ort_us = timings.get(&row.model).and_then(|t| t.get(key)).and_then(serde_json::Value::as_f64);
        }
        version
    });
    Ok(InferenceReport { rows, onnxruntime, optimised: !cfg!(debug_assertions) })
}

pub type OrtTimings = serde_json::Map<String, serde_json::Value>;

fn run_ort(dir: &Path, python: &str, iters: usize) -> Result<(String, OrtTimings), String> {
    let args = [OsStr::new("--dir"), dir.as_os_str()];
    bench_ort(python, &args, iters, FEATURE_BATCH, "models")
}

/// Runs tools/bench_ort.py with `args` and the iteration count and batch; returns onnxruntime's
/// version and the timings under `key` of its JSON.
pub fn bench_ort(
    python: &str,
    args: &[&OsStr],
    iters: usize,
    batch: usize,
    key: &str,
) -> Result<(String, OrtTimings), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_ort.py");
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .arg("--iters")
        .arg(iters.to_string())
        .arg("--batch")
        .arg(batch.to_string())
        .output()
        .map_err(|e| format!("cannot run {python}: {e}; pass --python a Python with onnxruntime"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!(
            "{} failed: {last}; install onnxruntime with `pip install -r tools/requirements-bench.txt`",
            script.display()
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bench_ort.py output: {e}"))?;
    let version = json["onnxruntime"].as_str().unwrap_or("?").to_string();
    Ok((version, json[key].as_object().cloned().unwrap_or_default()))
}

impl fmt::Display for InferenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.optimised {
            writeln!(
                f,
                "warning: this is a debug build; time a release build (cargo run --release -- bench inference)"
            )?;
        }
        let ort = match &self.onnxruntime {
            Ok(v) => format!("onnxruntime {v}, 1 thread"),
            Err(why) => {
                writeln!(f, "onnxruntime not timed: {why}")?;
                "onnxruntime".to_string()
            }
        };
        writeln!(
            f,
            "| model | measure | tract {}, 1 thread (µs, median) | {ort} (µs, median) | tract / onnxruntime |",
            skillgraft::model::TRACT_VERSION
        )?;
        writeln!(f, "|---|---|---:|---:|---:|")?;
        for r in &self.rows {
            let (o, ratio) = match r.ort_us {
                Some(o) => (format!("{o:.1}"), format!("{:.2}", r.tract_us / o)),
                None => ("n/a".into(), "n/a".into()),
            };
            writeln!(f, "| {} | {} | {:.1} | {o} | {ratio} |", r.model, r.measure, r.tract_us)?;
        }
        Ok(())
    }
}

/// Peak resident memory (`VmHWM`) of process `pid`, or of this one, MiB.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(|| "/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
