//! `skillgraft demo`: the whole product on one machine. Over real DDS on this host, three nodes
//! run: the simulated target arm, the skillgraft node with a skill learnt on another arm, and
//! the expert as teleoperator. The demo scores the unadapted skill, records demonstrations
//! through `~/demo/control`, adapts live through `~/adapt`, and scores the swapped-in skill on
//! the same reaches.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use skillgraft::adapt::Report;
use skillgraft::msg::cdr;
use skillgraft::msg::{RosMessage, StringMsg};
use skillgraft::node::{NodeConfig, RunningNode};
use skillgraft::ros::args::RosArgs;
use skillgraft::ros::dds::{DdsConfig, DdsTransport};
use skillgraft::ros::transport::{NodeIdentity, Qos, RawPublisher, Transport};
use skillgraft::sim::node::{SimNode, Teleop};
use skillgraft::sim::{Expert, JOINTS, SUCCESS_M, Score, Task};
use skillgraft::skill::Skill;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The source skill.
    pub skill: PathBuf,
    /// The simulated target robot.
    pub robot: String,
    /// Demonstrations to record.
    pub demos: usize,
    /// Reaches scored before and after.
    pub reaches: usize,
    /// What is sent on `~/adapt`.
    pub request: String,
    /// DDS domain (kept on this host).
    pub domain: u16,
    /// Folder for the episodes and the adapted skill.
    pub dir: PathBuf,
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// `name version` of the source skill.
    pub skill: String,
    /// The target robot.
    pub robot: String,
    /// Final tip distance of each scored reach before adapting, m.
    pub before: Vec<f64>,
    /// The same after.
    pub after: Vec<f64>,
    /// The expert on the same reaches (simulated time).
    pub expert: Score,
    /// Demonstrations recorded.
    pub demos: usize,
    /// The adaptation's report.
    pub adaptation: Option<Report>,
    /// The adapted skill, when it was swapped in.
    pub adapted: Option<String>,
    /// Seconds from request to swap.
    pub adapt_s: f64,
    /// Seconds the whole demo took.
    pub total_s: f64,
}

fn say(p: &mut Box<dyn RawPublisher>, text: &str) -> Result<(), String> {
    p.publish(&cdr::encode(&StringMsg { data: text.into() }).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

fn wait(limit: Duration, what: &str, done: impl FnMut() -> bool) -> Result<(), String> {
    if crate::bench::rig::until(limit, done) {
        Ok(())
    } else {
        Err(format!("{what} did not happen within {} s", limit.as_secs()))
    }
}

/// The reaches scored before and after (never demonstrated).
pub fn scored(n: usize, home: [f64; JOINTS]) -> Vec<Task> {
    skillgraft::sim::score::scored_tasks(n, home)
}

/// Runs the demo; `progress` hears each step.
pub fn run(opts: &DemoOptions, progress: &mut dyn FnMut(&str)) -> Result<DemoReport, String> {
    let started = Instant::now();
    let robot = skillgraft::sim::robot(&opts.robot).map_err(|e| e.to_string())?;
    let skill = Skill::load(&opts.skill).map_err(|e| e.to_string())?;
    let label = format!("{} {}", skill.manifest.name, skill.manifest.version);
    let id = |name: &str| NodeIdentity { name: name.into(), namespace: "/".into() };
    let config = DdsConfig::local(opts.domain).map_err(|e| e.to_string())?;
    let dds = |name: &str| -> Result<Arc<dyn Transport>, String> {
        Ok(Arc::new(DdsTransport::new(id(name), &config).map_err(|e| e.to_string())?))
    };
    let args = |node: &str, params: &[String]| {
        let mut a = vec!["--ros-args".to_string()];
        for p in params {
            a.extend(["-p".to_string(), p.clone()]);
        }
        RosArgs::parse(&a, &[], node).map_err(|e| e.to_string())
    };
    progress(&format!("starting the simulated {}, the skillgraft node with {label}, and the expert", robot.name));
    let sim_args = args("sim", &[])?;
    let sim = SimNode::start(dds("sim")?, &sim_args, robot.clone(), 7).map_err(|e| e.to_string())?;
    let node_args = args(
        "skillgraft",
        &[
            format!("episodes_dir:={}", opts.dir.join("episodes").display()),
            format!("adapted_dir:={}", opts.dir.join("adapted").display()),
            "blend_s:=0.1".into(),
            // Nothing here publishes an e-stop: drive at once.
            "estop_wait_s:=0.0".into(),
        ],
    )?;
    let cfg = NodeConfig::new(&skill.manifest, &node_args).map_err(|e| e.to_string())?;
    let node_transport = dds("skillgraft")?;
    let (control_topic, adapt_topic) = (cfg.demo_control_topic.clone(), cfg.adapt_topic.clone());
    let node = RunningNode::start(skill, cfg, node_transport).map_err(|e| e.to_string())?;
    let operator = dds("operator")?;
    let teleop = Teleop::start(operator.clone(), &args("operator", &[])?, robot.clone()).map_err(|e| e.to_string())?;
    let mut control = operator.publisher(&control_topic, StringMsg::TYPE, Qos::RELIABLE).map_err(|e| e.to_string())?;
    let mut adapt = operator.publisher(&adapt_topic, StringMsg::TYPE, Qos::RELIABLE).map_err(|e| e.to_string())?;
    wait(Duration::from_secs(20), "discovery (the node commanding the arm)", || sim.commanded())?;

    let reach_s = skillgraft::sim::EPISODE_TICKS as f64 / skillgraft::sim::RATE_HZ;
    let tasks = scored(opts.reaches, robot.home);
    let score = |phase: &str, progress: &mut dyn FnMut(&str)| -> Vec<f64> {
        tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                progress(&format!("{phase}: reach {} of {}", i + 1, tasks.len()));
                sim.reset(t);
                std::thread::sleep(Duration::from_secs_f64(reach_s));
                sim.distance()
            })
            .collect()
    };
    let before = score(&format!("scoring {label} unadapted on {}", robot.name), progress);

    let demo_tasks = skillgraft::sim::score::demo_tasks(0, opts.demos, robot.home);
    for (k, t) in demo_tasks.iter().enumerate() {
        progress(&format!("recording demonstration {} of {} (the expert teleoperates)", k + 1, demo_tasks.len()));
        sim.reset(t);
        let status = || node.recorder_status();
        skillgraft::sim::teleop::demonstrate(&mut *control, &status, &teleop, &format!("demo-{k}"), reach_s)
            .map_err(|e| e.to_string())?;
    }

    progress(&format!("adapting live: `{}` on ~/adapt", opts.request));
    let asked = Instant::now();
    let before_status = serde_json::to_string(&node.adapt_status()).unwrap_or_default();
    let mut sent = Instant::now() - Duration::from_secs(1);
    wait(Duration::from_secs(120), "the adaptation finishing", || {
        let st = node.adapt_status();
        let changed = serde_json::to_string(&st).unwrap_or_default() != before_status;
        if !changed && sent.elapsed() > Duration::from_millis(500) {
            // Reliable, but the first message may precede discovery of the subscriber.
            let _ = say(&mut adapt, &opts.request);
            sent = Instant::now();
        }
        changed && st.is_some_and(|s| s.state != "adapting" && s.state != "idle")
    })?;
    let adapt_s = asked.elapsed().as_secs_f64();
    let status = node.adapt_status().ok_or("the node has no adaptation status")?;
    if status.state == "failed" {
        return Err(format!("adaptation failed: {}", status.error.unwrap_or_default()));
    }
    let adapted = status.swapped.then(|| status.adapted.as_ref().map(|a| a.label())).flatten();
    // Lets the blend-in finish before scoring.
    std::thread::sleep(Duration::from_millis(300));
    let after_label = adapted.clone().unwrap_or_else(|| format!("{label} (not swapped)"));
    let after = score(&format!("scoring {after_label} on {}", robot.name), progress);

    let expert = Expert::new(robot.clone());
    let expert_score =
        skillgraft::sim::score(&robot, &tasks, &mut |obs| expert.command(&obs[..JOINTS], [obs[6], obs[7]]).to_vec());
    drop(teleop);
    drop(sim);
    node.stop();
    Ok(DemoReport {
        skill: label,
        robot: robot.name,
        before,
        after,
        expert: expert_score,
        demos: demo_tasks.len(),
        adaptation: status.report,
        adapted,
        adapt_s,
        total_s: started.elapsed().as_secs_f64(),
    })
}

impl DemoReport {
    /// Final distance per reach, before and after, with the success threshold: `stem.png` and
    /// `stem.svg`.
    pub fn plot(&self, stem: &Path) -> Result<(PathBuf, PathBuf), String> {
        let line = |d: &[f64]| d.iter().enumerate().map(|(i, v)| ((i + 1) as f64, v * 100.0, 0.0)).collect();
        let n = self.before.len().max(1) as f64;
        let series = vec![
            ("unadapted".to_string(), line(&self.before)),
            ("adapted".to_string(), line(&self.after)),
            ("success threshold".to_string(), vec![(1.0, SUCCESS_M * 100.0, 0.0), (n, SUCCESS_M * 100.0, 0.0)]),
        ];
        let top = self.before.iter().chain(&self.after).fold(SUCCESS_M, |m, v| m.max(*v)) * 100.0 * 1.2;
        let title = format!("{} on {}: {} demonstrations", self.skill, self.robot, self.demos);
        skillgraft::adapt::plot::curves(&[(title, series)], stem, "reach", "final distance to the target (cm)", top)
            .map_err(|e| e.to_string())
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} on the simulated {}, {} scored reaches (success: tip within {} cm after {} s)",
            self.skill,
            self.robot,
            self.before.len(),
            SUCCESS_M * 100.0,
            skillgraft::sim::EPISODE_TICKS as f64 / skillgraft::sim::RATE_HZ
        )?;
        writeln!(f, "| policy | success | mean final distance (cm) |")?;
        writeln!(f, "|---|---:|---:|")?;
        let (before, after_score) = (Score::of(&self.before), Score::of(&self.after));
        writeln!(
            f,
            "| {} unadapted | {:.0} % | {:.1} |",
            self.skill,
            before.success_rate * 100.0,
            before.mean_distance * 100.0
        )?;
        let after = self.adapted.clone().unwrap_or_else(|| "not swapped in".into());
        writeln!(
            f,
            "| adapted on {} demonstrations ({after}) | {:.0} % | {:.1} |",
            self.demos,
            after_score.success_rate * 100.0,
            after_score.mean_distance * 100.0
        )?;
        writeln!(
            f,
            "| expert (reference) | {:.0} % | {:.1} |",
            self.expert.success_rate * 100.0,
            self.expert.mean_distance * 100.0
        )?;
        if let Some(r) = &self.adaptation {
            writeln!(
                f,
                "adaptation: {} on {} samples, held-out action error {:.1} % lower, {} ({:.2} s from request to swap)",
                r.method,
                r.samples,
                r.improvement * 100.0,
                if r.accepted { "accepted" } else { "rejected" },
                self.adapt_s
            )?;
        }
        writeln!(f, "the demo took {:.0} s", self.total_s)
    }
}
