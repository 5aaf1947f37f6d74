//! `skillgraft bench adapt`: the adaptation maths side by side with the references it must
//! match, in one run on the same data (ridge against scikit-learn, finetune against PyTorch, both
//! through `tools/bench_adapt.py`), and the control loop's tick latency while the node adapts.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use nalgebra::DMatrix;
use serde::Serialize;

use skillgraft::adapt::compute::{Cpu, Threads};
use skillgraft::adapt::finetune::{self, BatchOrder};
use skillgraft::adapt::ridge;

use skillgraft::adapt::synthetic::{ACTIONS, ALPHA, EPISODES, FEATURES, FOLDS, HIDDEN, Problem, row_major, settings};

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct Row {
    /// What was timed.
    pub task: String,
    /// skillgraft, median ms.
    pub ours_ms: f64,
    /// The reference, median ms, when it ran.
    pub reference_ms: Option<f64>,
    /// skillgraft's time over the reference's, each pair run back to back: the median pair,
    /// then the lowest and the highest.
    pub ratio: Option<[f64; 3]>,
    /// The reference's name and version, or why it did not run.
    pub reference: String,
    /// How far the results agree, in words.
    pub agreement: String,
    /// The same as a number: the largest weight difference relative to the largest weight
    /// (ridge), or the relative difference of the held-out MSE (finetune).
    pub difference: Option<f64>,
}

/// The adaptation benchmark.
#[derive(Debug, Serialize)]
pub struct AdaptReport {
    /// Rows.
    pub rows: Vec<Row>,
    /// Threads each side was given.
    pub threads: usize,
    /// Timed runs per row.
    pub repeats: usize,
    /// Whether this binary was built with optimisations.
    pub optimised: bool,
    /// The tick latency while adapting, when measured.
    #[cfg(feature = "dds")]
    pub latency: Option<super::adapt_latency::LatencyReport>,
}

fn err(e: impl fmt::Display) -> String {
    e.to_string()
}

fn write_f32(path: &Path, v: &[f32]) -> Result<(), String> {
    std::fs::write(path, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()).map_err(err)
}

fn write_f64(path: &Path, m: &DMatrix<f64>) -> Result<(), String> {
    let row_major = m.transpose();
    std::fs::write(path, row_major.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()).map_err(err)
}

/// Writes what `tools/bench_adapt.py` reads: the data, the source head, the λ grid and folds,
/// and every epoch's batch order.
fn write_inputs(dir: &Path, p: &Problem, grid: &[f64], folds: &[usize], threads: usize) -> Result<(), String> {
    write_f32(&dir.join("x.f32"), &p.train.x)?;
    write_f32(&dir.join("y.f32"), &p.train.y)?;
    write_f32(&dir.join("xh.f32"), &p.held_out.x)?;
    write_f32(&dir.join("yh.f32"), &p.held_out.y)?;
    write_f64(&dir.join("hidden.f64"), &p.hidden)?;
    for (k, l) in p.source.iter().enumerate() {
        write_f32(&dir.join(format!("w{k}.f32")), &row_major(&l.weight))?;
        write_f32(&dir.join(format!("b{k}.f32")), l.bias.as_ref().map_or(&[][..], |b| b.as_slice()))?;
    }
    let s = settings();
    let mut order = BatchOrder::new(p.train.rows, s.seed);
    let orders: Vec<u8> = (0..s.epochs)
        .flat_map(|_| order.next_epoch().iter().flat_map(|&i| (i as u32).to_le_bytes()).collect::<Vec<_>>())
        .collect();
    std::fs::write(dir.join("orders.u32"), orders).map_err(err)?;
    let meta = serde_json::json!({
        "rows": p.train.rows, "held_out": p.held_out.rows, "features": FEATURES, "hidden": HIDDEN, "actions": ACTIONS,
        "episodes": EPISODES, "folds": folds, "grid": grid, "alpha": ALPHA,
        "epochs": s.epochs, "batch": s.batch, "lr": s.lr, "pull": s.pull,
        "threads": threads,
    });
    std::fs::write(dir.join("meta.json"), meta.to_string()).map_err(err)
}

/// `tools/bench_adapt.py` as a worker: started once, then asked for one timed run at a time.
struct Reference {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    log: PathBuf,
    /// Its first line: versions, and why a package is missing.
    about: serde_json::Value,
}

impl Reference {
    fn start(python: &str, dir: &Path) -> Result<Reference, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_adapt.py");
        let log = dir.join("reference.log");
        let mut child = Command::new(python)
            .arg(&script)
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(err)?)
            .spawn()
            .map_err(|e| format!("cannot run {python}: {e}; pass --python or set SKILLGRAFT_PYTHON"))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the reference's pipes did not open".into());
        };
        let mut r = Reference { child, input, output: BufReader::new(output), log, about: serde_json::Value::Null };
        r.about = r.line()?;
        Ok(r)
    }

    fn line(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        if self.output.read_line(&mut line).map_err(err)? == 0 {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let last = log.lines().last().unwrap_or("").to_string();
            return Err(format!(
                "tools/bench_adapt.py failed: {last}; install its packages with `pip install -r tools/requirements-bench.txt`"
            ));
        }
        serde_json::from_str(&line).map_err(|e| format!("bench_adapt.py output: {e}"))
    }

    /// One timed run of `task`: its time and result.
    fn run(&mut self, task: &str) -> Result<serde_json::Value, String> {
        writeln!(self.input, "{task}").and_then(|()| self.input.flush()).map_err(err)?;
        self.line()
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One task timed on both sides.
struct Paired {
    ours_ms: f64,
    theirs_ms: Option<f64>,
    ratio: Option<[f64; 3]>,
    /// The reference's last result.
    result: serde_json::Value,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `ours` and the reference's `task` in pairs, back to back, the first of each pair
/// alternating, after one untimed run of each: on a shared machine both sides of a pair run
/// under the same load, so the ratio of a pair is steadier than the ratio of two medians taken
/// minutes apart. A reference that fails leaves the rest without it.
fn paired(repeats: usize, mut ours: impl FnMut(), reference: Option<&mut Reference>, task: &str) -> Paired {
    let mut time_ours = || {
        let t = Instant::now();
        ours();
        t.elapsed().as_secs_f64() * 1e3
    };
    let mut reference = reference.filter(|r| r.about.get(task_package(task)).is_some());
    let theirs = |r: &mut Option<&mut Reference>, last: &mut serde_json::Value| -> Option<f64> {
        let result = r.as_mut()?.run(task);
        match result {
            Ok(v) => {
                let ms = v["ms"].as_f64();
                *last = v;
                ms
            }
            Err(e) => {
                tracing::warn!("{task}: the reference stopped: {e}");
                *r = None;
                None
            }
        }
    };
    let mut result = serde_json::Value::Null;
    time_ours();
    theirs(&mut reference, &mut result);
    let (mut o, mut t, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..repeats.max(1) {
        let (a, b) = if k % 2 == 0 {
            let a = time_ours();
            (a, theirs(&mut reference, &mut result))
        } else {
            let b = theirs(&mut reference, &mut result);
            (time_ours(), b)
        };
        o.push(a);
        if let Some(b) = b {
            t.push(b);
            ratios.push(a / b);
        }
    }
    let complete = reference.is_some() && ratios.len() == o.len();
    let ratio = complete.then(|| {
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
        [median(ratios.clone()), lo, hi]
    });
    Paired { ours_ms: median(o), theirs_ms: complete.then(|| median(t)), ratio, result }
}

/// The package a reference task needs (a key of the worker's first line when present).
fn task_package(task: &str) -> &'static str {
    if task == "finetune" { "torch" } else { "sklearn" }
}

fn relative(ours: &DMatrix<f64>, theirs: &serde_json::Value) -> Option<f64> {
    let v: Vec<f64> = theirs.as_array()?.iter().filter_map(serde_json::Value::as_f64).collect();
    (v.len() == ours.len()).then(|| {
        let t = DMatrix::from_row_slice(ours.nrows(), ours.ncols(), &v);
        (ours - &t).abs().max() / t.abs().max().max(1e-300)
    })
}

/// Runs both sides on `rows` training rows: ours here, the references through `python` running
/// `tools/bench_adapt.py` with `threads` threads; `repeats` timed runs per row; `dir` receives
/// what the script reads.
pub fn compute(python: &str, threads: usize, repeats: usize, rows: usize, dir: &Path) -> Result<Vec<Row>, String> {
    let p = Problem::new(rows);
    let rows = p.train.rows;
    let pool = Threads::new(threads);
    let w0 = DMatrix::zeros(ACTIONS, HIDDEN);
    let episodes = p.episodes();
    let groups: Vec<(&DMatrix<f64>, &DMatrix<f64>)> = episodes.iter().map(|(h, y)| (h, y)).collect();
    let folds: Vec<usize> = (0..EPISODES).map(|e| e % FOLDS).collect();
    let grid = ridge::grid(&ridge::Stats::of(&p.hidden, &p.targets, &pool));
    write_inputs(dir, &p, &grid, &folds, threads)?;
    let mut reference = Reference::start(python, dir);
    let why = reference.as_ref().err().cloned().unwrap_or_default();
    let mut r = reference.as_mut().ok();

    let mut one = None;
    let ridge = paired(
        repeats,
        || one = Some(ridge::fit(&ridge::Stats::of(&p.hidden, &p.targets, &pool), &w0, ALPHA)),
        r.as_deref_mut(),
        "ridge",
    );
    let mut cv = None;
    let ridge_cv =
        paired(repeats, || cv = Some(ridge::fit_cv(&groups, &folds, &w0, &pool)), r.as_deref_mut(), "ridge_cv");
    let c = Cpu::<f32>::with_threads(pool.clone());
    let mut trained = None;
    let ft = paired(
        repeats,
        || {
            trained =
                Some(finetune::train(&c, &p.shapes, &p.source, &p.source, &p.train, None, &settings(), &mut |_| {}))
        },
        r,
        "finetune",
    );
    let (one, cv, trained) = (one.expect("ran"), cv.expect("ran"), trained.expect("ran").map_err(err)?);
    let ours_mse = p.held_out_mse(&trained.params);
    let json = reference.as_ref().map_or(serde_json::Value::Null, |r| r.about.clone());
    let name = |key: &str, label: &str| match json.get(key).and_then(|v| v.as_str()) {
        Some(v) => format!("{label} {v}"),
        None => {
            let reason = json.get(format!("{key}_error")).and_then(|v| v.as_str()).unwrap_or(&why);
            format!("{label}: not run ({reason})")
        }
    };
    let sklearn = name("sklearn", "scikit-learn");
    let torch = name("torch", "PyTorch");
    let diff_w = |theirs: &Paired, fit: &ridge::Fit| relative(&fit.weight, &theirs.result["coef"]);
    let agree_w = |theirs: &Paired, fit: &ridge::Fit| match diff_w(theirs, fit) {
        Some(r) => format!("max weight difference {r:.1e} relative"),
        None => "n/a".into(),
    };
    let theirs_mse = ft.result["held_out_mse"].as_f64();
    let cv_agree = match ridge_cv.result["alpha"].as_f64() {
        Some(a) => format!(
            "λ {:.4e} (scikit-learn {a:.4e}, {}); {}",
            cv.lambda,
            if (a - cv.lambda).abs() <= 1e-9 * a.abs() { "the same" } else { "different" },
            agree_w(&ridge_cv, &cv)
        ),
        None => format!("λ {:.4e}", cv.lambda),
    };
    let ft_agree = match theirs_mse {
        Some(theirs) => {
            format!("held-out MSE {ours_mse:.5} (PyTorch {theirs:.5}, {:+.2} %)", (ours_mse / theirs - 1.0) * 100.0)
        }
        None => format!("held-out MSE {ours_mse:.5} (source {:.5})", p.held_out_mse(&p.source)),
    };
    Ok(vec![
        Row {
            task: format!("ridge, one λ ({rows}×{HIDDEN} → {ACTIONS})"),
            ours_ms: ridge.ours_ms,
            reference_ms: ridge.theirs_ms,
            ratio: ridge.ratio,
            reference: format!("{sklearn}: Ridge(solver=\"cholesky\")"),
            agreement: agree_w(&ridge, &one),
            difference: diff_w(&ridge, &one),
        },
        Row {
            task: format!("ridge, λ by {FOLDS}-fold CV over {EPISODES} episodes, {} λ", grid.len()),
            ours_ms: ridge_cv.ours_ms,
            reference_ms: ridge_cv.theirs_ms,
            ratio: ridge_cv.ratio,
            reference: format!("{sklearn}: RidgeCV(cv=episode folds)"),
            agreement: cv_agree,
            difference: diff_w(&ridge_cv, &cv),
        },
        Row {
            task: format!(
                "finetune {FEATURES}→{HIDDEN}→{ACTIONS}, {rows} rows, {} epochs, batch {}",
                settings().epochs,
                settings().batch
            ),
            ours_ms: ft.ours_ms,
            reference_ms: ft.theirs_ms,
            ratio: ft.ratio,
            reference: format!("{torch}: Adam + the same pull, same batches"),
            agreement: ft_agree,
            difference: theirs_mse.map(|t| (ours_mse - t).abs() / t),
        },
    ])
}

impl fmt::Display for AdaptReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.optimised {
            writeln!(f, "warning: this is a debug build; time a release build (cargo run --release -- bench adapt)")?;
        }
        writeln!(
            f,
            "{} threads each side; {} runs each, in pairs back to back (after one untimed run of each)",
            self.threads, self.repeats
        )?;
        writeln!(
            f,
            "| task | skillgraft (ms, median) | reference | reference (ms, median) | skillgraft / reference (median pair; lowest-highest) | agreement |"
        )?;
        writeln!(f, "|---|---:|---|---:|---:|---|")?;
        for r in &self.rows {
            let theirs = r.reference_ms.map_or("n/a".into(), |t| format!("{t:.1}"));
            let ratio = r.ratio.map_or("n/a".into(), |[m, lo, hi]| format!("{m:.2} ({lo:.2}-{hi:.2})"));
            writeln!(f, "| {} | {:.1} | {} | {theirs} | {ratio} | {} |", r.task, r.ours_ms, r.reference, r.agreement)?;
        }
        #[cfg(feature = "dds")]
        if let Some(l) = &self.latency {
            writeln!(f)?;
            write!(f, "{l}")?;
        }
        Ok(())
    }
}
