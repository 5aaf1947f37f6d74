//! Scoring a skill on a simulated arm: each tick its action goes through the safety filter as the
//! node configures it, and a reach counts by its final distance. The reaches scored and the ones
//! demonstrated never overlap.

use std::sync::Arc;

use super::{JOINTS, Robot, Score, Task};
use crate::control::safety::{Counters, SafetyFilter};
use crate::node::NodeConfig;
use crate::ros::args::{ArgsError, RosArgs};
use crate::skill::Skill;

/// Scores `skill` on `robot`: each tick the skill's action goes through the safety filter
/// configured as the node configures it (without blend-in), as the node sends it.
pub fn score_skill(skill: &mut Skill, robot: &Robot, tasks: &[Task]) -> Result<Score, ArgsError> {
    let args = RosArgs::parse(&["--ros-args".into(), "-p".into(), "blend_s:=0.0".into()], &[], "score")?;
    let cfg = NodeConfig::new(&skill.manifest, &args)?.safety;
    let distances: Vec<f64> = tasks
        .iter()
        .map(|task| {
            // A fresh filter per reach: each starts with the robot at rest, as after a reset.
            let mut filter = SafetyFilter::new(cfg.clone(), Arc::new(Counters::default()));
            let mut out = vec![0.0; JOINTS];
            let mut controller = |obs: &[f64]| {
                match skill.step(obs) {
                    Ok((_, action)) => {
                        filter.filter(&action, &mut out);
                    }
                    Err(_) => out.iter_mut().for_each(|v| *v = 0.0),
                }
                out.clone()
            };
            super::reach(robot, task, &mut controller, &mut |_, _, _| {}).final_distance
        })
        .collect();
    Ok(Score::of(&distances))
}

/// Demonstration reaches for `seed`: never the scored ones (those come from seed 0).
pub fn demo_tasks(seed: u64, n: usize, home: [f64; JOINTS]) -> Vec<Task> {
    super::tasks(1000 + seed, n, home)
}

/// The reaches every policy is scored on.
pub fn scored_tasks(n: usize, home: [f64; JOINTS]) -> Vec<Task> {
    super::tasks(0, n, home)
}
