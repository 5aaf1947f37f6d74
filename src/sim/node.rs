//! The simulated arm as a ROS 2 node, and its expert as a teleoperator node, over any
//! [`Transport`]: what `skillgraft sim`, `skillgraft teleop` and `skillgraft demo` run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::episodes::{
    CAMERA_TOPIC, COMMAND_TOPIC, JOINT_TOPIC, TARGET_TOPIC, camera_image, command, joint_state, target, time,
};
use super::{Arm, Expert, JOINTS, RATE_HZ, Robot, Task};
use crate::msg::cdr;
use crate::msg::{Float64MultiArray, Image, JointState, Point, RosMessage, StringMsg};
use crate::rng::SplitMix;
use crate::ros::args::RosArgs;
use crate::ros::transport::{Qos, Transport, TransportError};

/// A command older than this stops the arm, as a motor controller's watchdog does.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);

fn err(e: impl std::fmt::Display) -> TransportError {
    TransportError(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct SimState {
    arm: Arm,
    target: [f64; 2],
    command: [f64; JOINTS],
    command_at: Option<Instant>,
    tasks: SplitMix,
    resets: u64,
}

/// Parses a `~/reset` request: empty for the next task of the seeded sequence, or
/// `q1 q2 q3 x y` (start angles, target).
pub fn parse_reset(text: &str) -> Result<Option<Task>, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Ok(None);
    }
    let v: Vec<f64> = words.iter().map(|w| w.parse::<f64>()).collect::<Result<_, _>>().map_err(|_| {
        format!("reset {text:?}: send nothing (the next task) or {JOINTS} start angles and the target x y, as numbers")
    })?;
    if v.len() != JOINTS + 2 || v.iter().any(|x| !x.is_finite()) {
        return Err(format!("reset {text:?}: give {} finite numbers ({JOINTS} start angles, target x y)", JOINTS + 2));
    }
    let mut start = [0.0; JOINTS];
    start.copy_from_slice(&v[..JOINTS]);
    Ok(Some(Task { start, target: [v[JOINTS], v[JOINTS + 1]] }))
}

/// The request that resets a simulated arm to `task`.
pub fn reset_request(task: &Task) -> String {
    let mut words: Vec<String> = task.start.iter().map(|v| format!("{v}")).collect();
    words.extend(task.target.iter().map(|v| format!("{v}")));
    words.join(" ")
}

/// A simulated arm running in real time: it publishes its joints, the target and what its camera
/// sees at the control rate, follows velocity commands, and starts a new reach on `~/reset`.
pub struct SimNode {
    state: Arc<Mutex<SimState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SimNode {
    /// Starts the arm `robot` on `transport`, with topic names resolved by `args`; reaches
    /// without an explicit task come from `seed`.
    pub fn start(
        transport: Arc<dyn Transport>,
        args: &RosArgs,
        robot: Robot,
        seed: u64,
    ) -> Result<SimNode, TransportError> {
        let topic = |t: &str| args.resolve_topic(t).map_err(err);
        let first = super::tasks(seed, 1, robot.home)[0];
        let state = Arc::new(Mutex::new(SimState {
            arm: Arm::new(robot.clone(), first.start),
            target: first.target,
            command: [0.0; JOINTS],
            command_at: None,
            tasks: SplitMix(seed),
            resets: 0,
        }));
        let s = state.clone();
        transport.subscribe(
            &topic(COMMAND_TOPIC)?,
            Float64MultiArray::TYPE,
            Qos::SENSOR_DATA,
            Box::new(move |sample| match cdr::decode::<Float64MultiArray>(&sample.cdr, Float64MultiArray::TYPE) {
                Ok(m) if m.data.len() == JOINTS && m.data.iter().all(|v| v.is_finite()) => {
                    let mut st = lock(&s);
                    st.command.copy_from_slice(&m.data);
                    st.command_at = Some(sample.arrived);
                }
                Ok(m) => {
                    tracing::warn!("command of {} values ignored; the arm takes {JOINTS} finite ones", m.data.len())
                }
                Err(e) => tracing::warn!("undecodable command ignored: {e}"),
            }),
        )?;
        let s = state.clone();
        let home = robot.home;
        transport.subscribe(
            &topic("~/reset")?,
            StringMsg::TYPE,
            Qos::RELIABLE,
            Box::new(move |sample| {
                let text = cdr::decode::<StringMsg>(&sample.cdr, StringMsg::TYPE).map(|m| m.data);
                match text.map_err(|e| e.to_string()).and_then(|t| parse_reset(&t)) {
                    Ok(task) => {
                        let mut st = lock(&s);
                        let task = task.unwrap_or_else(|| {
                            let seed = st.tasks.next_u64();
                            super::tasks(seed, 1, home)[0]
                        });
                        st.reset(&task);
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }),
        )?;
        let mut joints = transport.publisher(&topic(JOINT_TOPIC)?, JointState::TYPE, Qos::SENSOR_DATA)?;
        let mut targets = transport.publisher(&topic(TARGET_TOPIC)?, Point::TYPE, Qos::RELIABLE)?;
        let mut tips = transport.publisher(&topic("~/tip")?, Point::TYPE, Qos::SENSOR_DATA)?;
        let mut camera = transport.publisher(&topic(CAMERA_TOPIC)?, Image::TYPE, Qos::SENSOR_DATA)?;
        let mut frame = camera_image(&robot.camera, 0);
        let lens = super::camera::Renderer::new(robot.camera.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, s) = (stop.clone(), state.clone());
        let clock = transport.clone();
        let thread = std::thread::Builder::new()
            .name("skillgraft-sim".into())
            .spawn(move || {
                let period = Duration::from_secs_f64(1.0 / RATE_HZ);
                let mut next = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    let (js, tg, tip, q, goal) = {
                        let mut st = lock(&s);
                        let fresh = st.command_at.is_some_and(|t| t.elapsed() < COMMAND_TIMEOUT);
                        let cmd = if fresh { st.command } else { [0.0; JOINTS] };
                        st.arm.step(&cmd, period.as_secs_f64());
                        let (p, v) = st.arm.measured();
                        let now = clock.now();
                        let ns = now.sec as u64 * 1_000_000_000 + now.nanosec as u64;
                        frame.header.stamp = time(ns);
                        (joint_state(&p, &v, ns), target(st.target), target(st.arm.tip()), st.arm.q, st.target)
                    };
                    for (p, bytes) in [
                        (&mut joints, cdr::encode(&js)),
                        (&mut targets, cdr::encode(&tg)),
                        (&mut tips, cdr::encode(&tip)),
                    ] {
                        if let Err(e) = bytes.map_err(err).and_then(|b| p.publish(&b)) {
                            tracing::warn!("cannot publish: {e}");
                        }
                    }
                    // Rendered outside the lock: commands and resets need not wait for the picture.
                    let image = lens.render(&robot, &q, goal, &mut frame.data).map_err(err);
                    if let Err(e) =
                        image.and_then(|()| cdr::encode(&frame).map_err(err)).and_then(|b| camera.publish(&b))
                    {
                        tracing::warn!("cannot publish the camera's image: {e}");
                    }
                    next += period;
                    match next.checked_duration_since(Instant::now()) {
                        Some(wait) => std::thread::sleep(wait),
                        None => next = Instant::now(),
                    }
                }
            })
            .map_err(err)?;
        Ok(SimNode { state, stop, thread: Some(thread) })
    }

    /// Starts a new reach now.
    pub fn reset(&self, task: &Task) {
        lock(&self.state).reset(task);
    }

    /// Distance from the tip to the target, m.
    pub fn distance(&self) -> f64 {
        let st = lock(&self.state);
        let tip = st.arm.tip();
        ((tip[0] - st.target[0]).powi(2) + (tip[1] - st.target[1]).powi(2)).sqrt()
    }

    /// Resets so far.
    pub fn resets(&self) -> u64 {
        lock(&self.state).resets
    }

    /// Whether a command arrived within the watchdog time.
    pub fn commanded(&self) -> bool {
        lock(&self.state).command_at.is_some_and(|t| t.elapsed() < COMMAND_TIMEOUT)
    }
}

impl SimState {
    fn reset(&mut self, task: &Task) {
        self.arm = Arm::new(self.arm.robot.clone(), task.start);
        self.target = task.target;
        self.command = [0.0; JOINTS];
        self.command_at = None;
        self.resets += 1;
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The latest joint positions and target the expert has heard.
type Seen = (Option<[f64; JOINTS]>, Option<[f64; 2]>);

/// The expert as a teleoperator: while enabled, it reads the arm's joints and target and
/// publishes its commands at the control rate.
pub struct Teleop {
    seen: Arc<Mutex<Seen>>,
    enabled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Teleop {
    /// Starts the expert of `robot` on `transport` (topics resolved by `args`), disabled.
    pub fn start(transport: Arc<dyn Transport>, args: &RosArgs, robot: Robot) -> Result<Teleop, TransportError> {
        let topic = |t: &str| args.resolve_topic(t).map_err(err);
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let s = seen.clone();
        transport.subscribe(
            &topic(JOINT_TOPIC)?,
            JointState::TYPE,
            Qos::SENSOR_DATA,
            Box::new(move |sample| {
                if let Ok(m) = cdr::decode::<JointState>(&sample.cdr, JointState::TYPE)
                    && m.position.len() == JOINTS
                {
                    let mut p = [0.0; JOINTS];
                    p.copy_from_slice(&m.position);
                    lock(&s).0 = Some(p);
                }
            }),
        )?;
        let s = seen.clone();
        transport.subscribe(
            &topic(TARGET_TOPIC)?,
            Point::TYPE,
            Qos::RELIABLE,
            Box::new(move |sample| {
                if let Ok(p) = cdr::decode::<Point>(&sample.cdr, Point::TYPE) {
                    lock(&s).1 = Some([p.x, p.y]);
                }
            }),
        )?;
        let mut out = transport.publisher(&topic(COMMAND_TOPIC)?, Float64MultiArray::TYPE, Qos::SENSOR_DATA)?;
        let expert = Expert::new(robot);
        let s_ready = seen.clone();
        let enabled = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (on, flag) = (enabled.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("skillgraft-teleop".into())
            .spawn(move || {
                let period = Duration::from_secs_f64(1.0 / RATE_HZ);
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    if !on.load(Ordering::Relaxed) {
                        continue;
                    }
                    let (joints, goal) = *lock(&seen);
                    if let (Some(j), Some(g)) = (joints, goal) {
                        let c = expert.command(&j, g);
                        if let Err(e) = cdr::encode(&command(&c)).map_err(err).and_then(|b| out.publish(&b)) {
                            tracing::warn!("cannot publish the expert's command: {e}");
                        }
                    }
                }
            })
            .map_err(err)?;
        Ok(Teleop { seen: s_ready, enabled, stop, thread: Some(thread) })
    }

    /// Whether the arm's joint states and target have both been heard.
    pub fn ready(&self) -> bool {
        matches!(*lock(&self.seen), (Some(_), Some(_)))
    }

    /// Starts or stops commanding.
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }
}

impl Drop for Teleop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_requests_round_trip_and_bad_ones_say_what_to_send() {
        let t = Task { start: [0.1, -0.2, 0.3], target: [0.5, -0.25] };
        assert_eq!(parse_reset(&reset_request(&t)).unwrap(), Some(t));
        assert_eq!(parse_reset("  ").unwrap(), None);
        assert!(parse_reset("1 2").unwrap_err().contains("5 finite numbers"));
        assert!(parse_reset("a b c d e").unwrap_err().contains("as numbers"));
        assert!(parse_reset("1 2 3 NaN 4").unwrap_err().contains("finite"));
    }
}
