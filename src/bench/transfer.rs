//! `skillgraft bench transfer`: learning curves of skill transfer on the simulated arms. For each
//! target robot, number of demonstrations and seed, the expert demonstrates that many reaches;
//! the source skill is adapted on them (ridge, finetune), the same MLP is trained from scratch on
//! them, and every policy is scored in closed loop on a fixed set of reaches the demonstrations
//! did not include, next to the unadapted source and the expert. A vision source skill (one with
//! `[[image]]` inputs) is demonstrated with the camera recorded; its baseline from scratch is its
//! head re-initialised and trained on the frozen backbone's features (the runtime does not train
//! conv nets), so every method sees exactly the same features. The `continual` row adapts as the
//! node's continual mode does: the demonstrations arrive one at a time, each updates the saved
//! per-demonstration statistics (`--method bayes --merge`), and the head the gate last accepted is
//! the one scored; its CPU time is per update.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use nalgebra::{DMatrix, DVector};
use skillgraft::adapt::finetune::Settings;
use skillgraft::adapt::train::{self, TrainOptions};
use skillgraft::adapt::{self, Method, Options, Quiet};
use skillgraft::model::export::{encode, with_head_params};
use skillgraft::model::head::LayerParams;
use skillgraft::record::dataset;
use skillgraft::rng::SplitMix;
use skillgraft::sim::episodes::RecordOptions;
use skillgraft::sim::score::{demo_tasks, score_skill, scored_tasks};
use skillgraft::sim::{self, Expert, JOINTS, Score};
use skillgraft::skill::{self, Skill};

/// What to run.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// The source skill.
    pub source: PathBuf,
    /// Target robots.
    pub robots: Vec<String>,
    /// Numbers of demonstrations.
    pub demos: Vec<usize>,
    /// Seeds per point (which reaches are demonstrated).
    pub seeds: usize,
    /// Reaches each policy is scored on.
    pub reaches: usize,
    /// Noise added to the demonstrator's commands while demonstrating, rad/s (DART).
    pub dart: f64,
}

/// One point of a learning curve: a method with some demonstrations on a robot, over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Target robot.
    pub robot: String,
    /// `source`, `ridge`, `finetune`, `continual` or `from scratch`.
    pub method: String,
    /// Demonstrations.
    pub demos: usize,
    /// Success rate per seed.
    pub success: Vec<f64>,
    /// Mean final distance per seed, m.
    pub distance: Vec<f64>,
    /// Seeds whose adapted skill the gate accepted (adaptation only).
    pub accepted: Option<usize>,
    /// CPU seconds of each fit (adaptation and training; continual: of each update).
    pub cpu_s: Vec<f64>,
    /// Why the method could not run, when it could not.
    pub skipped: Option<String>,
    /// Why the gate rejected adapted skills, per rejection.
    pub rejections: Vec<String>,
    /// Forgetting, per seed: the adapted head's action error on held-out demonstrations of the
    /// source's own robot, as a multiple of the source head's (adapted methods only).
    pub forgetting: Vec<f64>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn spread(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// The benchmark's results.
#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    /// `name version` of the source skill.
    pub source: String,
    /// The expert's score per robot.
    pub expert: Vec<(String, Score)>,
    /// Every point.
    pub points: Vec<Point>,
    /// Reaches scored per policy.
    pub reaches: usize,
    /// Seeds per point.
    pub seeds: usize,
    /// DART noise of the demonstrations, rad/s.
    pub dart: f64,
}

/// Process CPU time, s (the fitting threads included).
fn cpu_s() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the calling process's CPU clock into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// How adaptation runs in the benchmark: ridge, and finetune of the whole head.
pub fn methods() -> Vec<(&'static str, Method)> {
    vec![
        ("ridge", Method::Ridge),
        ("finetune", Method::Finetune { layers: None, settings: Settings::default(), ridge_init: true }),
    ]
}

/// Runs the benchmark in `dir` (demonstrations and skills are written there); `progress` is told
/// each point as it starts.
pub fn transfer(opts: &TransferOptions, dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<TransferReport, String> {
    let mut source = Skill::load(&opts.source).map_err(|e| e.to_string())?;
    let vision = !source.manifest.images.is_empty();
    let label = format!("{} {}", source.manifest.name, source.manifest.version);
    let template = sim::episodes::manifest("scratch", "demonstrations", &sim::episodes::Scaling::identity());
    let mut expert_scores = Vec::new();
    let mut points = Vec::new();
    let source_held_out = held_out_source(&source, vision, &dir.join("source-robot"))?;
    for name in &opts.robots {
        let robot = sim::robot(name).map_err(|e| e.to_string())?;
        let scored = scored_tasks(opts.reaches, robot.home);
        let expert = Expert::new(robot.clone());
        let e = sim::score(&robot, &scored, &mut |obs| expert.command(&obs[..JOINTS], [obs[6], obs[7]]).to_vec());
        expert_scores.push((name.clone(), e));
        progress(&format!("{name}: source"));
        let zero = score_skill(&mut source, &robot, &scored).map_err(|e| e.to_string())?;
        for &n in &opts.demos {
            let mut rows: Vec<Point> = ROWS
                .iter()
                .map(|m| Point {
                    robot: name.clone(),
                    method: m.to_string(),
                    demos: n,
                    success: Vec::new(),
                    distance: Vec::new(),
                    accepted: ["ridge", "finetune", "continual"].contains(m).then_some(0),
                    cpu_s: Vec::new(),
                    skipped: None,
                    rejections: Vec::new(),
                    forgetting: Vec::new(),
                })
                .collect();
            for seed in 0..opts.seeds as u64 {
                progress(&format!("{name}: {n} demonstration(s), seed {seed}"));
                let folder = dir.join(format!("{name}-{n}-{seed}"));
                let files = sim::episodes::record_with(
                    &robot,
                    &demo_tasks(seed, n, robot.home),
                    &folder.join("episodes"),
                    "demo",
                    &RecordOptions { noise: opts.dart, camera: vision, compression: Default::default() },
                )
                .map_err(|e| e.to_string())?;
                rows[0].success.push(zero.success_rate);
                rows[0].distance.push(zero.mean_distance);
                let episodes = dataset::load(&files, &source.manifest).map_err(|e| e.to_string())?;
                for (i, (mname, method)) in methods().into_iter().enumerate() {
                    let row = &mut rows[1 + i];
                    if episodes.len() < 2 {
                        row.skipped = Some(NEEDS_TWO.into());
                        continue;
                    }
                    let o = Options { method, threads: 1, ..Options::default() };
                    let t = cpu_s();
                    let adapted = match adapt::adapt(&source, &episodes, &o, &Quiet) {
                        Ok(a) => a,
                        Err(e) => {
                            row.skipped = Some(e.to_string());
                            continue;
                        }
                    };
                    row.cpu_s.push(cpu_s() - t);
                    if adapted.report.accepted {
                        *row.accepted.get_or_insert(0) += 1;
                    } else {
                        row.rejections.push(adapted.report.reasons.join("; "));
                    }
                    // Scored whatever the gate said: the curve shows what the fit achieves; the
                    // table says how often the gate let it through.
                    let out = folder.join(mname);
                    let mut skill =
                        adapt::write(&source, &adapted, &out, None, Some(name)).map_err(|e| e.to_string())?;
                    let s = score_skill(&mut skill, &robot, &scored).map_err(|e| e.to_string())?;
                    row.success.push(s.success_rate);
                    row.distance.push(s.mean_distance);
                    row.forgetting.extend(forgetting(&source, &skill, source_held_out.as_ref()));
                }
                let (mut skill, updates, accepted) = continual(&source, &episodes, &folder.join("continual"), name)?;
                rows[3].cpu_s.extend(updates);
                *rows[3].accepted.get_or_insert(0) += usize::from(accepted);
                let s = score_skill(&mut skill, &robot, &scored).map_err(|e| e.to_string())?;
                rows[3].success.push(s.success_rate);
                rows[3].distance.push(s.mean_distance);
                rows[3].forgetting.extend(forgetting(&source, &skill, source_held_out.as_ref()));
                if episodes.len() < 2 {
                    rows[4].skipped = Some(NEEDS_TWO.into());
                    continue;
                }
                let t = cpu_s();
                let scratch = if vision {
                    scratch_head(&source, &episodes, &folder.join("scratch"), seed)
                } else {
                    let scratch_eps = dataset::load(&files, &template).map_err(|e| e.to_string())?;
                    train::train(&template, &scratch_eps, &TrainOptions::default()).map_err(|e| e.to_string()).and_then(
                        |trained| {
                            skill::write_skill(&folder.join("scratch"), &trained.manifest, &trained.model)
                                .map_err(|e| e.to_string())
                        },
                    )
                };
                let mut skill = match scratch {
                    Ok(skill) => skill,
                    Err(e) => {
                        rows[4].skipped = Some(e);
                        continue;
                    }
                };
                rows[4].cpu_s.push(cpu_s() - t);
                let s = score_skill(&mut skill, &robot, &scored).map_err(|e| e.to_string())?;
                rows[4].success.push(s.success_rate);
                rows[4].distance.push(s.mean_distance);
            }
            points.extend(rows);
        }
    }
    Ok(TransferReport {
        source: label,
        expert: expert_scores,
        points,
        reaches: opts.reaches,
        seeds: opts.seeds,
        dart: opts.dart,
    })
}

/// Held-out demonstrations of the source's own robot (when it is a simulated arm): the features
/// of 10 expert reaches no scored or demonstrated set includes, and their targets.
fn held_out_source(source: &Skill, vision: bool, dir: &Path) -> Result<Option<HeldOut>, String> {
    let Ok(robot) = sim::robot(&source.manifest.provenance.source_robot) else {
        return Ok(None);
    };
    let tasks = sim::tasks(SOURCE_HELD_OUT_SEED, 10, robot.home);
    let options = RecordOptions { noise: 0.0, camera: vision, compression: Default::default() };
    let files = sim::episodes::record_with(&robot, &tasks, dir, "source", &options).map_err(|e| e.to_string())?;
    let episodes = dataset::load(&files, &source.manifest).map_err(|e| e.to_string())?;
    let feats = adapt::features::features(source, &episodes, None, &mut |_| {}).map_err(|e| e.to_string())?;
    let features: Vec<&DMatrix<f32>> = feats.iter().map(|e| &e.features).collect();
    let targets: Vec<&DMatrix<f32>> = feats.iter().map(|e| &e.targets).collect();
    Ok(Some((adapt::stack(&features), adapt::stack(&targets))))
}

/// Features and targets of held-out demonstrations, one sample per row.
type HeldOut = (DMatrix<f32>, DMatrix<f32>);

/// Seed of the source robot's held-out reaches (no seed below 1000 is demonstrated).
const SOURCE_HELD_OUT_SEED: u64 = 777;

/// The adapted head's action error on the source robot's held-out demonstrations, as a multiple of
/// the source head's (the backbones are the same, so the source's features serve both).
fn forgetting(source: &Skill, adapted: &Skill, home: Option<&HeldOut>) -> Option<f64> {
    let (features, targets) = home?;
    let err = |s: &Skill| (s.model.head.forward(features) - targets).norm_squared() as f64;
    let base = err(source);
    (base > 0.0).then(|| err(adapted) / base)
}

/// Why ridge, finetune and training from scratch do not run on one demonstration: they hold
/// whole episodes out.
const NEEDS_TWO: &str = "needs 2 episodes";

/// The rows of each point, in table order.
const ROWS: [&str; 5] = ["source", "ridge", "finetune", "continual", "from scratch"];

/// Continual adaptation over `episodes` arriving one at a time, in `dir`: each one is adapted
/// with `bayes` on top of the statistics saved by the update before, and the head the gate last
/// accepted is kept (the source until one is). Returns that skill, the CPU seconds of each update
/// (features of the new demonstration, the statistics, the solve, the gate and the save), and
/// whether any update was accepted.
fn continual(
    source: &Skill,
    episodes: &[dataset::Episode],
    dir: &Path,
    robot: &str,
) -> Result<(Skill, Vec<f64>, bool), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut stats: Option<PathBuf> = None;
    let mut kept: Option<adapt::Adapted> = None;
    let mut updates = Vec::new();
    for (k, episode) in episodes.iter().enumerate() {
        let o =
            Options { method: Method::Bayes, threads: 1, merge: stats.iter().cloned().collect(), ..Options::default() };
        let t = cpu_s();
        let adapted = adapt::adapt(source, std::slice::from_ref(episode), &o, &Quiet).map_err(|e| e.to_string())?;
        let path = dir.join(format!("after-{}.stats", k + 1));
        adapted.stats.as_ref().expect("bayes keeps statistics").save(&path).map_err(|e| e.to_string())?;
        updates.push(cpu_s() - t);
        stats = Some(path);
        if adapted.report.accepted {
            kept = Some(adapted);
        }
    }
    match kept {
        Some(a) => {
            let skill = adapt::write(source, &a, &dir.join("skill"), None, Some(robot)).map_err(|e| e.to_string())?;
            Ok((skill, updates, true))
        }
        None => Ok((Skill::load(&source.dir).map_err(|e| e.to_string())?, updates, false)),
    }
}

/// The source skill with its head re-initialised (Glorot-uniform weights, zero biases, seeded) and
/// fine-tuned on `episodes` with no pull toward any weights: a head learnt from scratch on the
/// frozen backbone's features.
fn scratch_head(source: &Skill, episodes: &[dataset::Episode], out: &Path, seed: u64) -> Result<Skill, String> {
    let mut rng = SplitMix(0x05C2_A7C4 ^ seed);
    let head = &source.model.head;
    let params: Vec<LayerParams> = head
        .params
        .iter()
        .map(|p| {
            let (rows, cols) = p.weight.shape();
            let limit = (6.0 / (rows + cols) as f64).sqrt();
            LayerParams {
                weight: DMatrix::from_fn(rows, cols, |_, _| ((rng.unit() * 2.0 - 1.0) * limit) as f32),
                bias: p.bias.as_ref().map(|b| DVector::zeros(b.len())),
            }
        })
        .collect();
    let proto = with_head_params(&source.model.file, head, &params, &[]).map_err(|e| e.to_string())?;
    let mut m = source.manifest.clone();
    m.name = format!("{}-scratch", m.name);
    let fresh = skill::write_skill(&out.with_extension("init"), &m, &encode(&proto)).map_err(|e| e.to_string())?;
    let settings = Settings { pull: 0.0, seed, ..Settings::default() };
    let o = Options {
        method: Method::Finetune { layers: None, settings, ridge_init: false },
        threads: 1,
        margin: f64::NEG_INFINITY,
        ..Options::default()
    };
    let trained = adapt::adapt(&fresh, episodes, &o, &Quiet).map_err(|e| e.to_string())?;
    adapt::write(&fresh, &trained, out, None, None).map_err(|e| e.to_string())
}

impl TransferReport {
    /// Success rate against demonstrations, a panel per robot, a line per method with the
    /// spread over seeds, and the expert's level: `stem.png` and `stem.svg`.
    pub fn plot(&self, stem: &Path) -> Result<(PathBuf, PathBuf), String> {
        let mut panels = Vec::new();
        for (robot, expert) in &self.expert {
            let points: Vec<&Point> = self.points.iter().filter(|p| &p.robot == robot).collect();
            let xs: Vec<f64> = points.iter().map(|p| p.demos as f64).collect();
            let mut series: Vec<skillgraft::adapt::plot::Series> = vec![(
                "expert".into(),
                [xs.iter().cloned().fold(f64::INFINITY, f64::min), xs.iter().cloned().fold(0.0, f64::max)]
                    .iter()
                    .map(|&x| (x, expert.success_rate * 100.0, 0.0))
                    .collect(),
            )];
            for method in ROWS {
                let line: Vec<(f64, f64, f64)> = points
                    .iter()
                    .filter(|p| p.method == method && !p.success.is_empty())
                    .map(|p| (p.demos as f64, mean(&p.success) * 100.0, spread(&p.success) * 100.0))
                    .collect();
                series.push((method.into(), line));
            }
            panels.push((robot.clone(), series));
        }
        skillgraft::adapt::plot::curves(&panels, stem, "demonstrations", "success (%)", 105.0)
            .map_err(|e| e.to_string())
    }
}

impl fmt::Display for TransferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "source skill {}; success = tip within {} m after {} s; {} scored reaches, {} seed(s) per point (mean ± spread over seeds){}",
            self.source,
            sim::SUCCESS_M,
            sim::EPISODE_TICKS as f64 / sim::RATE_HZ,
            self.reaches,
            self.seeds,
            if self.dart > 0.0 {
                format!("; demonstrations with DART noise {} rad/s", self.dart)
            } else {
                String::new()
            }
        )?;
        for (robot, e) in &self.expert {
            writeln!(
                f,
                "\n{robot}: expert {:.0} % success, final distance {:.3} m",
                e.success_rate * 100.0,
                e.mean_distance
            )?;
            writeln!(
                f,
                "| demos | method | success (%) | final distance (m) | gate accepted | fit CPU (s) | source-robot error (× source's) |"
            )?;
            // continual's CPU is per update (one demonstration each), the others' per fit.
            writeln!(f, "|---:|---|---:|---:|---:|---:|---:|")?;
            for p in self.points.iter().filter(|p| &p.robot == robot) {
                if let Some(why) = &p.skipped
                    && p.success.is_empty()
                {
                    writeln!(f, "| {} | {} | n/a | n/a | n/a | {why} | - |", p.demos, p.method)?;
                    continue;
                }
                let accepted = p.accepted.map_or("-".into(), |a| format!("{a}/{}", p.success.len()));
                let cpu = match (p.cpu_s.is_empty(), p.method == "continual") {
                    (true, _) => "-".into(),
                    (false, true) => format!("{:.3} per update", mean(&p.cpu_s)),
                    (false, false) => format!("{:.2}", mean(&p.cpu_s)),
                };
                let forgot = if p.forgetting.is_empty() { "-".into() } else { format!("{:.2}", mean(&p.forgetting)) };
                writeln!(
                    f,
                    "| {} | {} | {:.0} ± {:.0} | {:.3} ± {:.3} | {accepted} | {cpu} | {forgot} |",
                    p.demos,
                    p.method,
                    mean(&p.success) * 100.0,
                    spread(&p.success) * 100.0,
                    mean(&p.distance),
                    spread(&p.distance)
                )?;
            }
        }
        Ok(())
    }
}
