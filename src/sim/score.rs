//! Scoring a skill on a simulated arm, the way the node runs it: each tick the arm's messages (joint
//! states, the target, the camera's image) go through the skill's observer as a subscription would
//! hand them over (extraction, image preprocessing, staleness), the policy runs, its action goes
//! through the safety filter as the node configures it, and a reach counts by its final distance.
//! The reaches scored and the ones demonstrated never overlap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::episodes::{CAMERA_TOPIC, JOINT_TOPIC, TARGET_TOPIC, camera_image, joint_state, target};
use super::{Arm, EPISODE_TICKS, JOINTS, RATE_HZ, Robot, Score, Task};
use crate::control::safety::{Counters, INTERVENTIONS, Intervention, SafetyFilter};
use crate::control::uncertainty::Posterior;
use crate::msg::cdr;
use crate::node::NodeConfig;
use crate::observe::{self, Observer};
use crate::ros::args::{ArgsError, RosArgs};
use crate::skill::Skill;
use crate::skill::manifest::MAX_IMAGES;

/// Why a skill cannot be scored on a simulated arm.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The node's settings for the skill do not parse.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The skill reads a topic the simulated arms do not publish.
    #[error(
        "the skill reads `{topic}`, which the simulated arms do not publish; they publish {JOINT_TOPIC} (JointState), {TARGET_TOPIC} (Point) and {CAMERA_TOPIC} (Image, rgb8): remap the skill's inputs onto them"
    )]
    Topic {
        /// The topic.
        topic: String,
    },
    /// The skill's action is not the arms' joint velocity command.
    #[error("the skill's action has {width} values; the simulated arms take {JOINTS} joint velocities")]
    Action {
        /// The skill's action width.
        width: usize,
    },
    /// A message could not be encoded.
    #[error("cannot encode a simulated message: {0}")]
    Encode(#[from] cdr::CdrError),
    /// The plan that reads a bayes head's uncertainty could not be built.
    #[error("cannot read the uncertainty of the bayes head: {0}")]
    Model(#[from] crate::model::ModelError),
}

/// What a closed-loop evaluation measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Success and final distance.
    pub score: Score,
    /// Final tip distance of each reach, m.
    pub distances: Vec<f64>,
    /// Interventions of the safety filter over all reaches, by kind.
    pub interventions: BTreeMap<String, u64>,
    /// Messages the skill's observer refused, by input topic.
    pub rejected: BTreeMap<String, u64>,
    /// For a skill adapted by bayes (statistics beside it): how unsure its head was.
    pub uncertainty: Option<Uncertainty>,
}

/// What the posterior of a bayes-adapted head said during the reaches.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Uncertainty {
    /// Per reach, the predicted error over the held-out error (the ratio the node publishes on
    /// `~/uncertainty`), averaged over the reach's ticks.
    pub ratio: Vec<f64>,
    /// Spearman rank correlation between `ratio` and the final distances (1: the reaches the head
    /// was least sure of ended farthest).
    pub correlation: f64,
}

/// Spearman's rank correlation of `a` and `b` (ties share their mean rank).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(v: &[f64]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            for &k in &order[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let (va, vb): (f64, f64) = (ra.iter().map(|x| (x - ma).powi(2)).sum(), rb.iter().map(|y| (y - mb).powi(2)).sum());
    if va > 0.0 && vb > 0.0 { cov / (va * vb).sqrt() } else { 0.0 }
}

/// Which simulated topic feeds each numeric input, then each camera.
enum Source {
    Joints,
    Target,
    Camera,
}

fn source(topic: &str) -> Result<Source, EvalError> {
    match topic {
        JOINT_TOPIC => Ok(Source::Joints),
        TARGET_TOPIC => Ok(Source::Target),
        CAMERA_TOPIC => Ok(Source::Camera),
        other => Err(EvalError::Topic { topic: other.to_string() }),
    }
}

/// Scores `skill` on `robot` over `tasks`, closed loop, as the node would run it (see the module
/// documentation); the safety filter is configured as the node configures it, without blend-in.
pub fn evaluate(skill: &mut Skill, robot: &Robot, tasks: &[Task]) -> Result<Evaluation, EvalError> {
    let args = RosArgs::parse(&["--ros-args".into(), "-p".into(), "blend_s:=0.0".into()], &[], "eval")?;
    let cfg = NodeConfig::new(&skill.manifest, &args)?.safety;
    let m = skill.manifest.clone();
    if m.action_width() != JOINTS {
        return Err(EvalError::Action { width: m.action_width() });
    }
    let numeric: Vec<Source> = m.observations.iter().map(|o| source(&o.topic)).collect::<Result<_, _>>()?;
    for im in &m.images {
        if !matches!(source(&im.topic)?, Source::Camera) {
            return Err(EvalError::Topic { topic: im.topic.clone() });
        }
    }
    let norm = m.normaliser();
    let counters = Arc::new(Counters::default());
    let period = Duration::from_secs_f64(1.0 / RATE_HZ);
    let mut distances = Vec::with_capacity(tasks.len());
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut frame = camera_image(&robot.camera, 0);
    let mut input = vec![0.0f32; m.input_width()];
    let mut raw = vec![0.0f32; m.action_width()];
    let mut proposal = vec![0.0f64; m.action_width()];
    let mut out = vec![0.0f64; m.action_width()];
    // A bayes-adapted skill runs the plan that also hands over its last layer's input, as the
    // node runs it, and its posterior reads that input every tick.
    let mut doubt = match crate::adapt::continual::Continual::posterior(skill).ok().flatten() {
        Some(solved) => Some((skill.model.probed_control()?, Posterior::new(&solved, &vec![1.0; m.action_width()]))),
        None => None,
    };
    let mut unsure = Vec::new();
    for task in tasks {
        let mut reach_ratio = 0.0;
        // A fresh observer and filter per reach: each starts with the robot at rest, as after a
        // reset, and nothing of the last reach is fresh.
        let epoch = Instant::now();
        let Observer { mut writers, mut image_writers, mut assembler } =
            observe::observer(&m.observations, &m.images, m.control.history, epoch);
        let mut filter = SafetyFilter::new(cfg.clone(), counters.clone());
        let mut arm = Arm::new(robot.clone(), task.start);
        for k in 0..EPISODE_TICKS {
            let now = epoch + period * k as u32;
            let stamp = (now - epoch).as_nanos() as u64;
            let (p, v) = arm.measured();
            let joints = cdr::encode(&joint_state(&p, &v, stamp))?;
            let goal = cdr::encode(&target(task.target))?;
            for (w, src) in writers.iter_mut().zip(&numeric) {
                let bytes = if matches!(src, Source::Joints) { &joints } else { &goal };
                let _ = w.on_message(bytes, now);
            }
            if !image_writers.is_empty() {
                frame.header.stamp = super::episodes::time(stamp);
                robot
                    .camera
                    .render(robot, &arm.angles(), task.target, &mut frame.data)
                    .map_err(|e| cdr::CdrError::Encode(format!("the camera frame does not fit its buffer: {e}")))?;
                let bytes = cdr::encode(&frame)?;
                for w in &mut image_writers {
                    let _ = w.on_message(&bytes, now);
                }
            }
            let publish = match assembler.tick(now + Duration::from_micros(100)) {
                Err(_) => filter.safe(Intervention::Stale, &mut out),
                Ok(obs) => {
                    norm.input(obs, &mut input);
                    let mut feeds: [&[f32]; 1 + MAX_IMAGES] = [&[]; 1 + MAX_IMAGES];
                    feeds[0] = &input;
                    let n = 1 + assembler.image_count();
                    for (i, feed) in feeds[1..n].iter_mut().enumerate() {
                        *feed = assembler.image(i);
                    }
                    let plan = match &mut doubt {
                        Some((plan, _)) => plan,
                        None => &mut skill.model.control,
                    };
                    match plan.step(&feeds[..n], &mut raw) {
                        Err(_) => filter.safe(Intervention::Failure, &mut out),
                        Ok(()) => {
                            if let Some((plan, posterior)) = &mut doubt {
                                reach_ratio += posterior.ratio(plan.probe());
                            }
                            norm.action_to_robot(&raw, &mut proposal);
                            filter.filter(&proposal, &mut out)
                        }
                    }
                }
            };
            // Nothing published: the arm's controller keeps no command (zero velocity).
            let command: [f64; JOINTS] = if publish { [out[0], out[1], out[2]] } else { [0.0; JOINTS] };
            arm.step(&command, period.as_secs_f64());
        }
        unsure.push(reach_ratio / EPISODE_TICKS as f64);
        let tip = arm.tip();
        distances.push(((tip[0] - task.target[0]).powi(2) + (tip[1] - task.target[1]).powi(2)).sqrt());
        for (stats, topic) in writers
            .iter()
            .map(|w| &w.stats)
            .zip(m.observations.iter().map(|o| &o.topic))
            .chain(image_writers.iter().map(|w| &w.stats).zip(m.images.iter().map(|o| &o.topic)))
        {
            let n: u64 = stats.rejected.iter().map(|r| r.load(std::sync::atomic::Ordering::Relaxed)).sum();
            *rejected.entry(topic.clone()).or_default() += n;
        }
    }
    let interventions = INTERVENTIONS
        .iter()
        .enumerate()
        .map(|(k, name)| (name.to_string(), counters.0[k].load(std::sync::atomic::Ordering::Relaxed)))
        .collect();
    let uncertainty = doubt.map(|_| Uncertainty { correlation: spearman(&unsure, &distances), ratio: unsure });
    Ok(Evaluation { score: Score::of(&distances), distances, interventions, rejected, uncertainty })
}

/// The success and final distance of `skill` on `robot` over `tasks` (see [`evaluate`]).
pub fn score_skill(skill: &mut Skill, robot: &Robot, tasks: &[Task]) -> Result<Score, EvalError> {
    Ok(evaluate(skill, robot, tasks)?.score)
}

/// Demonstration reaches for `seed`: never the scored ones (those come from seed 0).
pub fn demo_tasks(seed: u64, n: usize, home: [f64; JOINTS]) -> Vec<Task> {
    super::tasks(1000 + seed, n, home)
}

/// The reaches every policy is scored on.
pub fn scored_tasks(n: usize, home: [f64; JOINTS]) -> Vec<Task> {
    super::tasks(0, n, home)
}
