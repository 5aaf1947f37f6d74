//! Simulated robots and their scripted expert, for the transfer demo, the tests and the
//! benchmarks: planar arms that reach a target, differing in the ways real robots of one model
//! differ (link lengths, joint zero offsets, actuator gains and lag, sensor bias), so a policy
//! learnt on one does not simply work on another.

pub mod camera;
pub mod episodes;
pub mod node;
pub mod score;
pub mod teleop;

use nalgebra::{DMatrix, DVector};

use crate::rng::SplitMix;

/// Joints of every simulated arm.
pub const JOINTS: usize = 3;
/// Control rate the arms are driven at, Hz.
pub const RATE_HZ: f64 = 50.0;
/// Integration steps per control tick.
pub const SUBSTEPS: usize = 10;
/// Largest joint velocity command, rad/s.
pub const MAX_COMMAND: f64 = 2.0;
/// Ticks in one reach (3 s).
pub const EPISODE_TICKS: usize = 150;
/// A reach succeeds when the tip ends this close to the target, m.
pub const SUCCESS_M: f64 = 0.03;
/// The simulated robots: the source and two targets, one near it and one far from it.
pub const ROBOTS: [&str; 3] = ["arm-a", "arm-b", "arm-c"];
/// Joint names, as the arms publish them.
pub const JOINT_NAMES: [&str; JOINTS] = ["shoulder", "elbow", "wrist"];

/// The parameters of one simulated arm.
#[derive(Debug, Clone, PartialEq)]
pub struct Robot {
    /// `arm-a`, `arm-b` or `arm-c`.
    pub name: String,
    /// Link lengths, m.
    pub links: [f64; JOINTS],
    /// Joint zero offsets: the link angle is the joint angle plus this, rad.
    pub offsets: [f64; JOINTS],
    /// Actuator gains: the velocity a joint settles at per unit of command.
    pub gains: [f64; JOINTS],
    /// First-order actuator time constant, s.
    pub lag_s: f64,
    /// What the joint encoders add to the true angle, rad.
    pub bias: [f64; JOINTS],
    /// Joint limits, rad.
    pub lower: [f64; JOINTS],
    /// Joint limits, rad.
    pub upper: [f64; JOINTS],
    /// The pose every reach starts near, rad.
    pub home: [f64; JOINTS],
    /// What its camera sees the arm with.
    pub camera: camera::Camera,
}

/// A robot name the simulator does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no simulated robot {0:?}; choose one of {robots}", robots = ROBOTS.join(", "))]
pub struct UnknownRobot(pub String);

/// The simulated robot called `name`.
pub fn robot(name: &str) -> Result<Robot, UnknownRobot> {
    let base = Robot {
        name: name.to_string(),
        links: [0.40, 0.35, 0.25],
        offsets: [0.0; JOINTS],
        gains: [1.0; JOINTS],
        lag_s: 0.04,
        bias: [0.0; JOINTS],
        lower: [-2.6, -2.6, -2.6],
        upper: [2.6, 2.6, 2.6],
        home: [-0.6, 1.2, 0.8],
        camera: camera::Camera::reference(),
    };
    match name {
        "arm-a" => Ok(base),
        "arm-b" => Ok(Robot {
            links: [0.42, 0.33, 0.26],
            offsets: [0.05, 0.03, 0.03],
            gains: [0.85, 1.15, 0.95],
            lag_s: 0.06,
            bias: [0.01, -0.01, 0.0],
            camera: camera::Camera::near(),
            ..base
        }),
        "arm-c" => Ok(Robot {
            links: [0.48, 0.30, 0.22],
            offsets: [0.20, -0.15, 0.12],
            gains: [0.65, 1.35, 0.75],
            lag_s: 0.09,
            bias: [0.08, -0.06, 0.05],
            camera: camera::Camera::far(),
            ..base
        }),
        other => Err(UnknownRobot(other.to_string())),
    }
}

impl Robot {
    /// The tip position for true joint angles `q`.
    pub fn tip(&self, q: &[f64]) -> [f64; 2] {
        let (mut x, mut y, mut angle) = (0.0, 0.0, 0.0);
        for ((qj, offset), link) in q.iter().zip(&self.offsets).zip(&self.links) {
            angle += qj + offset;
            x += link * angle.cos();
            y += link * angle.sin();
        }
        [x, y]
    }

    /// The base, the elbow, the wrist and the tip for true joint angles `q`.
    pub fn points(&self, q: &[f64]) -> [[f64; 2]; JOINTS + 1] {
        let mut out = [[0.0; 2]; JOINTS + 1];
        let mut angle = 0.0;
        for j in 0..JOINTS {
            angle += q[j] + self.offsets[j];
            out[j + 1] = [out[j][0] + self.links[j] * angle.cos(), out[j][1] + self.links[j] * angle.sin()];
        }
        out
    }

    /// d tip / d q at `q` (2 × JOINTS).
    pub fn jacobian(&self, q: &[f64]) -> DMatrix<f64> {
        let mut angles = [0.0; JOINTS];
        let mut angle = 0.0;
        for j in 0..JOINTS {
            angle += q[j] + self.offsets[j];
            angles[j] = angle;
        }
        DMatrix::from_fn(2, JOINTS, |row, j| {
            (j..JOINTS)
                .map(|k| if row == 0 { -self.links[k] * angles[k].sin() } else { self.links[k] * angles[k].cos() })
                .sum()
        })
    }
}

/// A simulated arm: true joint angles and velocities, integrated at a fixed step.
#[derive(Debug, Clone)]
pub struct Arm {
    /// Its parameters.
    pub robot: Robot,
    q: [f64; JOINTS],
    qd: [f64; JOINTS],
}

impl Arm {
    /// The arm at rest at true angles `q`.
    pub fn new(robot: Robot, q: [f64; JOINTS]) -> Arm {
        Arm { robot, q, qd: [0.0; JOINTS] }
    }

    /// Applies joint velocity `command` for `dt` seconds: each joint's velocity follows
    /// gain × command with the actuator lag, and stops at its limits.
    pub fn step(&mut self, command: &[f64], dt: f64) {
        let h = dt / SUBSTEPS as f64;
        let r = &self.robot;
        for _ in 0..SUBSTEPS {
            for j in 0..JOINTS {
                let c =
                    command.get(j).copied().filter(|c| c.is_finite()).unwrap_or(0.0).clamp(-MAX_COMMAND, MAX_COMMAND);
                self.qd[j] += (r.gains[j] * c - self.qd[j]) * (h / r.lag_s).min(1.0);
                self.q[j] += self.qd[j] * h;
                if self.q[j] <= r.lower[j] || self.q[j] >= r.upper[j] {
                    self.q[j] = self.q[j].clamp(r.lower[j], r.upper[j]);
                    self.qd[j] = 0.0;
                }
            }
        }
    }

    /// What the encoders report: positions (true angle plus bias) and velocities.
    pub fn measured(&self) -> ([f64; JOINTS], [f64; JOINTS]) {
        let mut p = self.q;
        for (v, b) in p.iter_mut().zip(&self.robot.bias) {
            *v += b;
        }
        (p, self.qd)
    }

    /// The true joint angles (what a camera sees, unlike the encoders).
    pub fn angles(&self) -> [f64; JOINTS] {
        self.q
    }

    /// Where the tip is.
    pub fn tip(&self) -> [f64; 2] {
        self.robot.tip(&self.q)
    }
}

/// The scripted expert: damped-least-squares inverse kinematics with the robot's true
/// parameters, commanding joint velocities that move the tip straight toward the target.
#[derive(Debug, Clone)]
pub struct Expert {
    robot: Robot,
}

/// Tip speed per metre of error, 1/s.
const GAIN: f64 = 4.0;
/// Fastest tip speed the expert asks for, m/s.
const TIP_SPEED: f64 = 0.8;
/// Damping of the least-squares inverse, m.
const DAMPING: f64 = 0.04;

impl Expert {
    /// The expert of `robot`.
    pub fn new(robot: Robot) -> Expert {
        Expert { robot }
    }

    /// Joint velocity commands for measured `positions` and a `target`.
    pub fn command(&self, positions: &[f64], target: [f64; 2]) -> [f64; JOINTS] {
        let r = &self.robot;
        let q: Vec<f64> = positions.iter().zip(&r.bias).map(|(p, b)| p - b).collect();
        let tip = r.tip(&q);
        let mut v = DVector::from_vec(vec![target[0] - tip[0], target[1] - tip[1]]) * GAIN;
        let speed = v.norm();
        if speed > TIP_SPEED {
            v *= TIP_SPEED / speed;
        }
        let j = r.jacobian(&q);
        let jjt = &j * j.transpose() + DMatrix::identity(2, 2) * (DAMPING * DAMPING);
        let dq = j.transpose() * jjt.lu().solve(&v).unwrap_or_else(|| DVector::zeros(2));
        let mut out = [0.0; JOINTS];
        for k in 0..JOINTS {
            out[k] = (dq[k] / r.gains[k]).clamp(-MAX_COMMAND, MAX_COMMAND);
        }
        out
    }
}

/// One reach: where it starts (true angles, near home) and its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Task {
    /// Start, true joint angles.
    pub start: [f64; JOINTS],
    /// Target tip position.
    pub target: [f64; 2],
}

/// `n` reaches from `seed`, the same for every robot: targets in the part of the workspace
/// every arm reaches (0.35 to 0.85 m out, within 60° of straight ahead), starts within 0.2 rad
/// of home.
pub fn tasks(seed: u64, n: usize, home: [f64; JOINTS]) -> Vec<Task> {
    let mut s = SplitMix(seed ^ 0x005E_ED0F_7A5C);
    (0..n)
        .map(|_| {
            let radius = 0.35 + 0.5 * s.unit();
            let angle = (s.unit() * 2.0 - 1.0) * std::f64::consts::FRAC_PI_3;
            let mut start = home;
            for v in &mut start {
                *v += (s.unit() * 2.0 - 1.0) * 0.2;
            }
            Task { start, target: [radius * angle.cos(), radius * angle.sin()] }
        })
        .collect()
}

/// The observation a policy sees, in the order of the simulated skills' manifests: joint
/// positions, joint velocities, target x and y.
pub fn observation(arm: &Arm, target: [f64; 2]) -> Vec<f64> {
    let (p, v) = arm.measured();
    let mut obs = Vec::with_capacity(2 * JOINTS + 2);
    obs.extend(p);
    obs.extend(v);
    obs.extend(target);
    obs
}

/// Called every tick of a reach with the tick number, the observation and the command applied.
pub type TickHook<'a> = dyn FnMut(usize, &[f64], &[f64]) + 'a;

/// How one reach ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Tip distance to the target at the end, m.
    pub final_distance: f64,
    /// Whether that is within [`SUCCESS_M`].
    pub success: bool,
}

/// Runs one reach of `task` on `robot`, `controller` choosing each tick's command from the
/// observation; `on_tick` sees each observation and the command applied.
pub fn reach(
    robot: &Robot,
    task: &Task,
    controller: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    on_tick: &mut TickHook<'_>,
) -> Outcome {
    let mut arm = Arm::new(robot.clone(), task.start);
    let dt = 1.0 / RATE_HZ;
    for k in 0..EPISODE_TICKS {
        let obs = observation(&arm, task.target);
        let cmd = controller(&obs);
        on_tick(k, &obs, &cmd);
        arm.step(&cmd, dt);
    }
    let tip = arm.tip();
    let d = ((tip[0] - task.target[0]).powi(2) + (tip[1] - task.target[1]).powi(2)).sqrt();
    Outcome { final_distance: d, success: d < SUCCESS_M }
}

/// Success rate and final distance over a set of reaches.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Score {
    /// Reaches that ended within [`SUCCESS_M`], as a fraction.
    pub success_rate: f64,
    /// Mean final tip distance, m.
    pub mean_distance: f64,
    /// Reaches.
    pub reaches: usize,
}

/// Scores `controller` on every task.
pub fn score(robot: &Robot, tasks: &[Task], controller: &mut dyn FnMut(&[f64]) -> Vec<f64>) -> Score {
    let distances: Vec<f64> =
        tasks.iter().map(|t| reach(robot, t, controller, &mut |_, _, _| {}).final_distance).collect();
    Score::of(&distances)
}

impl Score {
    /// The score of reaches that ended `distances` from their targets.
    pub fn of(distances: &[f64]) -> Score {
        let n = distances.len().max(1) as f64;
        Score {
            success_rate: distances.iter().filter(|d| **d < SUCCESS_M).count() as f64 / n,
            mean_distance: distances.iter().sum::<f64>() / n,
            reaches: distances.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jacobian_matches_finite_differences() {
        for name in ROBOTS {
            let r = robot(name).unwrap();
            let q = [0.3, -0.7, 1.1];
            let j = r.jacobian(&q);
            for k in 0..JOINTS {
                let (mut a, mut b) = (q, q);
                a[k] += 1e-6;
                b[k] -= 1e-6;
                let (ta, tb) = (r.tip(&a), r.tip(&b));
                for row in 0..2 {
                    let fd = (ta[row] - tb[row]) / 2e-6;
                    assert!((fd - j[(row, k)]).abs() < 1e-6, "{name} d{row}/dq{k}: {fd} vs {}", j[(row, k)]);
                }
            }
        }
    }

    #[test]
    fn each_expert_reaches_on_its_own_robot_and_not_on_another() {
        let tasks = tasks(1, 40, robot("arm-a").unwrap().home);
        for name in ROBOTS {
            let r = robot(name).unwrap();
            let e = Expert::new(r.clone());
            let s = score(&r, &tasks, &mut |obs| e.command(&obs[..JOINTS], [obs[6], obs[7]]).to_vec());
            assert!(s.success_rate >= 0.95, "{name}'s expert: {s:?}");
        }
        let a = Expert::new(robot("arm-a").unwrap());
        for other in ["arm-b", "arm-c"] {
            let r = robot(other).unwrap();
            let s = score(&r, &tasks, &mut |obs| a.command(&obs[..JOINTS], [obs[6], obs[7]]).to_vec());
            assert!(s.success_rate < 0.5, "arm-a's expert on {other} should miss: {s:?}");
        }
    }

    #[test]
    fn the_arm_stops_at_its_limits_and_ignores_non_finite_commands() {
        let r = robot("arm-b").unwrap();
        let mut arm = Arm::new(r.clone(), [2.5, 0.0, 0.0]);
        for _ in 0..50 {
            arm.step(&[MAX_COMMAND * 10.0, f64::NAN, 0.0], 0.02);
        }
        let (p, v) = arm.measured();
        assert!((p[0] - r.bias[0] - r.upper[0]).abs() < 1e-9 && v[0] == 0.0);
        assert_eq!((p[1] - r.bias[1], v[1]), (0.0, 0.0));
        assert!(robot("arm-z").unwrap_err().to_string().contains("arm-a, arm-b, arm-c"));
    }
}
