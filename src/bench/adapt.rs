//! `skillgraft bench adapt`: the adaptation maths side by side with the references it must
//! match, in one run on the same data (ridge against scikit-learn, finetune against PyTorch, both
//! through `tools/bench_adapt.py`), and the control loop's tick latency while the node adapts.

use std::fmt;
use std::path::Path;
use std::process::Command;

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
fn write_inputs(
    dir: &Path,
    p: &Problem,
    grid: &[f64],
    folds: &[usize],
    threads: usize,
    repeats: usize,
) -> Result<(), String> {
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
        "threads": threads, "repeats": repeats,
    });
    std::fs::write(dir.join("meta.json"), meta.to_string()).map_err(err)
}

fn median_ms(repeats: usize, f: impl FnMut()) -> f64 {
    super::median_seconds(0, repeats, f) * 1e3
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
    write_inputs(dir, &p, &grid, &folds, threads, repeats)?;

    let mut one = None;
    let ridge_ms =
        median_ms(repeats, || one = Some(ridge::fit(&ridge::Stats::of(&p.hidden, &p.targets, &pool), &w0, ALPHA)));
    let mut cv = None;
    let cv_ms = median_ms(repeats, || cv = Some(ridge::fit_cv(&groups, &folds, &w0, &pool)));
    let c = Cpu::<f32>::with_threads(pool.clone());
    let mut trained = None;
    let ft_ms = median_ms(repeats, || {
        trained = Some(finetune::train(&c, &p.shapes, &p.source, &p.source, &p.train, None, &settings(), &mut |_| {}))
    });
    let (one, cv, trained) = (one.expect("ran"), cv.expect("ran"), trained.expect("ran").map_err(err)?);
    let ours_mse = p.held_out_mse(&trained.params);

    let reference = run_reference(python, dir);
    let (json, why) = match reference {
        Ok(j) => (j, String::new()),
        Err(e) => (serde_json::Value::Null, e),
    };
    let name = |key: &str, label: &str| match json.get(key).and_then(|v| v.as_str()) {
        Some(v) => format!("{label} {v}"),
        None => {
            let reason = json.get(format!("{key}_error")).and_then(|v| v.as_str()).unwrap_or(&why);
            format!("{label}: not run ({reason})")
        }
    };
    let ms = |task: &str| json.get(task).and_then(|t| t.get("ms")).and_then(serde_json::Value::as_f64);
    let sklearn = name("sklearn", "scikit-learn");
    let torch = name("torch", "PyTorch");
    let diff_w = |task: &str, fit: &ridge::Fit| json.get(task).and_then(|t| relative(&fit.weight, &t["coef"]));
    let agree_w = |task: &str, fit: &ridge::Fit| match diff_w(task, fit) {
        Some(r) => format!("max weight difference {r:.1e} relative"),
        None => "n/a".into(),
    };
    let theirs_mse = json.get("finetune").and_then(|t| t["held_out_mse"].as_f64());
    let cv_agree = match json.get("ridge_cv").and_then(|t| t["alpha"].as_f64()) {
        Some(a) => format!(
            "λ {:.4e} (scikit-learn {a:.4e}, {}); {}",
            cv.lambda,
            if (a - cv.lambda).abs() <= 1e-9 * a.abs() { "the same" } else { "different" },
            agree_w("ridge_cv", &cv)
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
            ours_ms: ridge_ms,
            reference_ms: ms("ridge"),
            reference: format!("{sklearn}: Ridge(solver=\"cholesky\")"),
            agreement: agree_w("ridge", &one),
            difference: diff_w("ridge", &one),
        },
        Row {
            task: format!("ridge, λ by {FOLDS}-fold CV over {EPISODES} episodes, {} λ", grid.len()),
            ours_ms: cv_ms,
            reference_ms: ms("ridge_cv"),
            reference: format!("{sklearn}: RidgeCV(cv=episode folds)"),
            agreement: cv_agree,
            difference: diff_w("ridge_cv", &cv),
        },
        Row {
            task: format!(
                "finetune {FEATURES}→{HIDDEN}→{ACTIONS}, {rows} rows, {} epochs, batch {}",
                settings().epochs,
                settings().batch
            ),
            ours_ms: ft_ms,
            reference_ms: ms("finetune"),
            reference: format!("{torch}: Adam + the same pull, same batches"),
            agreement: ft_agree,
            difference: theirs_mse.map(|t| (ours_mse - t).abs() / t),
        },
    ])
}

fn run_reference(python: &str, dir: &Path) -> Result<serde_json::Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_adapt.py");
    let out = Command::new(python)
        .arg(&script)
        .arg("--dir")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run {python}: {e}; pass --python or set SKILLGRAFT_PYTHON"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").to_string();
        return Err(format!(
            "{} failed: {last}; install its packages with `pip install -r tools/requirements-bench.txt`",
            script.display()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bench_adapt.py output: {e}"))
}

impl fmt::Display for AdaptReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.optimised {
            writeln!(f, "warning: this is a debug build; time a release build (cargo run --release -- bench adapt)")?;
        }
        writeln!(f, "{} threads each side, median of {} runs", self.threads, self.repeats)?;
        writeln!(
            f,
            "| task | skillgraft (ms, median) | reference | reference (ms, median) | skillgraft / reference | agreement |"
        )?;
        writeln!(f, "|---|---:|---|---:|---:|---|")?;
        for r in &self.rows {
            let (theirs, ratio) = match r.reference_ms {
                Some(t) => (format!("{t:.1}"), format!("{:.2}", r.ours_ms / t)),
                None => ("n/a".into(), "n/a".into()),
            };
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
