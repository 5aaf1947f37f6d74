//! The simulated arms' topics and messages, the manifest of a skill that drives them, and
//! demonstrations recorded without ROS: the expert reaches in simulated time and every message is
//! written into an MCAP episode exactly as the node's recorder writes one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Expert, JOINT_NAMES, JOINTS, RATE_HZ, Robot, Task, reach};
use crate::msg::cdr;
use crate::msg::{Float64MultiArray, Header, Image, JointState, Point, RosMessage, Time};
use crate::record::episode::{ChannelSpec, Compression, EpisodeWriter};
use crate::rng::SplitMix;
use crate::skill::manifest::{ActionOutput, Control, Manifest, ModelSection, ObservationInput, Provenance, SafeAction};

/// Where a simulated arm publishes its joints.
pub const JOINT_TOPIC: &str = "/joint_states";
/// Where the target of the reach is published.
pub const TARGET_TOPIC: &str = "/target";
/// Where a simulated arm takes joint velocity commands.
pub const COMMAND_TOPIC: &str = "/arm/cmd";
/// Where the expert publishes its commands while demonstrating (the node records them).
pub const TELEOP_TOPIC: &str = "/teleop/cmd";
/// Where a simulated arm publishes what its camera sees (sensor_msgs/Image, rgb8).
pub const CAMERA_TOPIC: &str = "/camera/image_raw";

/// The joint state message of measured `positions` and `velocities` at `stamp_ns`.
pub fn joint_state(positions: &[f64], velocities: &[f64], stamp_ns: u64) -> JointState {
    JointState {
        header: Header { stamp: time(stamp_ns), frame_id: String::new() },
        name: JOINT_NAMES.iter().map(|s| s.to_string()).collect(),
        position: positions.to_vec(),
        velocity: velocities.to_vec(),
        effort: Vec::new(),
    }
}

/// An empty rgb8 frame of `camera`, stamped `stamp_ns`, to render into.
pub fn camera_image(camera: &super::camera::Camera, stamp_ns: u64) -> Image {
    Image {
        header: Header { stamp: time(stamp_ns), frame_id: super::camera::FRAME_ID.into() },
        height: camera.height,
        width: camera.width,
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: camera.width * 3,
        data: vec![0; camera.frame_len()],
    }
}

/// The header stamp of `ns` since the epoch.
pub fn time(ns: u64) -> Time {
    Time { sec: (ns / 1_000_000_000) as i32, nanosec: (ns % 1_000_000_000) as u32 }
}

/// The target message.
pub fn target(t: [f64; 2]) -> Point {
    Point { x: t[0], y: t[1], z: 0.0 }
}

/// The command message.
pub fn command(c: &[f64]) -> Float64MultiArray {
    Float64MultiArray { data: c.to_vec(), ..Default::default() }
}

/// Normalisation of a skill's inputs and outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// Mean of the observation (positions, velocities, target).
    pub obs_mean: Vec<f64>,
    /// Its standard deviation.
    pub obs_std: Vec<f64>,
    /// Mean of the commands.
    pub act_mean: Vec<f64>,
    /// Their standard deviation.
    pub act_std: Vec<f64>,
}

impl Scaling {
    /// No scaling: zero means, unit deviations.
    pub fn identity() -> Scaling {
        Scaling {
            obs_mean: vec![0.0; 2 * JOINTS + 2],
            obs_std: vec![1.0; 2 * JOINTS + 2],
            act_mean: vec![0.0; JOINTS],
            act_std: vec![1.0; JOINTS],
        }
    }
}

/// Why the manifest of a skill to train could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No such simulated robot.
    #[error(transparent)]
    Robot(#[from] super::UnknownRobot),
    /// The skill to take it from does not load.
    #[error(transparent)]
    Skill(#[from] crate::skill::SkillError),
    /// Neither was named.
    #[error("say what the skill drives: --robot SIM_ROBOT or --like SKILL")]
    Neither,
}

/// The manifest a skill trained from scratch takes, named `name`: the simulated `robot`'s topics
/// (unit scaling), or else those of the skill folder `like`.
pub fn template(robot: Option<&str>, like: Option<&Path>, name: &str) -> Result<Manifest, TemplateError> {
    match (robot, like) {
        (Some(r), _) => Ok(manifest(name, &super::robot(r)?.name, &Scaling::identity())),
        (None, Some(like)) => {
            let mut m = crate::skill::Skill::load(like)?.manifest;
            m.name = name.to_string();
            Ok(m)
        }
        (None, None) => Err(TemplateError::Neither),
    }
}

/// The manifest of a skill named `name` that drives the simulated arms, learnt on `source`.
pub fn manifest(name: &str, source: &str, s: &Scaling) -> Manifest {
    let joints: Vec<String> = JOINT_NAMES.iter().map(|j| j.to_string()).collect();
    Manifest {
        name: name.to_string(),
        version: semver::Version::new(1, 0, 0),
        description: format!("Reach a target with a {JOINTS}-joint planar arm (learnt on the simulated {source})"),
        provenance: Provenance {
            source_robot: source.to_string(),
            method: "trained".into(),
            parent: None,
            created: None,
            details: BTreeMap::new(),
        },
        model: ModelSection {
            file: "policy.onnx".into(),
            input: "obs".into(),
            output: "action".into(),
            features: "features".into(),
        },
        control: Control { rate_hz: RATE_HZ, history: 1 },
        images: vec![],
        observations: vec![
            ObservationInput {
                topic: JOINT_TOPIC.into(),
                msg_type: JointState::TYPE.into(),
                fields: vec!["position".into(), "velocity".into()],
                joints,
                mean: s.obs_mean[..2 * JOINTS].to_vec(),
                std: s.obs_std[..2 * JOINTS].to_vec(),
                max_age_ms: 100.0,
            },
            ObservationInput {
                topic: TARGET_TOPIC.into(),
                msg_type: Point::TYPE.into(),
                fields: vec!["x".into(), "y".into()],
                joints: Vec::new(),
                mean: s.obs_mean[2 * JOINTS..].to_vec(),
                std: s.obs_std[2 * JOINTS..].to_vec(),
                max_age_ms: 5000.0,
            },
        ],
        action: ActionOutput {
            topic: COMMAND_TOPIC.into(),
            msg_type: Float64MultiArray::TYPE.into(),
            fields: vec![format!("data[0..{JOINTS}]")],
            joints: Vec::new(),
            mean: s.act_mean.clone(),
            std: s.act_std.clone(),
            lower: vec![-super::MAX_COMMAND; JOINTS],
            upper: vec![super::MAX_COMMAND; JOINTS],
            max_delta: vec![1.0; JOINTS],
            safe: SafeAction::Zero,
        },
    }
}

/// The channels of a simulated demonstration: those of the simulated arms' skill manifest.
fn channels() -> Vec<ChannelSpec> {
    let m = manifest("sim", "sim", &Scaling::identity());
    let topics: Vec<String> = m.observations.iter().map(|o| o.topic.clone()).collect();
    ChannelSpec::for_skill(&m, &topics, &[], &m.action.topic)
}

/// Why a simulated demonstration could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The episode file could not be written.
    #[error("episode {id}: {source}")]
    Episode {
        /// The episode.
        id: String,
        /// What failed.
        source: crate::record::episode::EpisodeError,
    },
    /// A message could not be encoded.
    #[error("episode {id}: {source}")]
    Encode {
        /// The episode.
        id: String,
        /// What failed.
        source: cdr::CdrError,
    },
    /// The camera's frame could not be rendered.
    #[error("episode {id}: {source}")]
    Camera {
        /// The episode.
        id: String,
        /// What failed.
        source: super::camera::BufferSize,
    },
}

/// How simulated demonstrations are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecordOptions {
    /// Noise added to the executed commands, rad/s (see [`record`]).
    pub noise: f64,
    /// Also record the robot's camera each tick, on [`CAMERA_TOPIC`] with role `image.0`.
    pub camera: bool,
    /// How the episodes' chunks are compressed.
    pub compression: Compression,
}

/// Records the expert of `robot` doing each of `tasks` into `dir`, one episode per task named
/// `<label>-<n>`; returns the files. Messages carry simulated time from a fixed epoch, so the same
/// tasks give the same files. With `noise` above 0, the arm executes the expert's command plus
/// uniform noise of that many rad/s while the expert's own command is recorded: the
/// demonstrations then also show how to recover from being off course (DART). Chunks are
/// compressed with `compression`.
pub fn record(
    robot: &Robot,
    tasks: &[Task],
    dir: &Path,
    label: &str,
    noise: f64,
    compression: Compression,
) -> Result<Vec<PathBuf>, String> {
    record_with(robot, tasks, dir, label, &RecordOptions { noise, camera: false, compression })
        .map_err(|e| e.to_string())
}

/// [`record`] with options: the camera's images too when `options.camera`.
pub fn record_with(
    robot: &Robot,
    tasks: &[Task],
    dir: &Path,
    label: &str,
    options: &RecordOptions,
) -> Result<Vec<PathBuf>, RecordError> {
    let noise = options.noise;
    let expert = Expert::new(robot.clone());
    let mut meta = BTreeMap::new();
    meta.insert("robot".to_string(), robot.name.clone());
    meta.insert("label".to_string(), label.to_string());
    meta.insert("demonstrator".to_string(), "simulated expert".to_string());
    let t0 = 1_764_000_000_000_000_000u64;
    let period = (1e9 / RATE_HZ) as u64;
    let mut specs = channels();
    if options.camera {
        specs.push(ChannelSpec { topic: CAMERA_TOPIC.into(), type_name: Image::TYPE.into(), role: "image.0".into() });
    }
    let mut frame = camera_image(&robot.camera, 0);
    let lens = options.camera.then(|| super::camera::Renderer::new(robot.camera.clone()));
    let mut files = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        let id = format!("{label}-{i:03}");
        let episode = |source| RecordError::Episode { id: id.clone(), source };
        let mut w = EpisodeWriter::create(dir, &id, &specs, &meta, Duration::from_secs(3600), options.compression)
            .map_err(episode)?;
        let start = t0 + i as u64 * 10_000_000_000;
        let mut failure = None;
        let mut put = |ch: usize, at: u64, bytes: Result<Vec<u8>, cdr::CdrError>| -> Result<(), RecordError> {
            let bytes = bytes.map_err(|source| RecordError::Encode { id: id.clone(), source })?;
            w.write(ch, at, &bytes).map_err(|source| RecordError::Episode { id: id.clone(), source })
        };
        let clean = std::cell::Cell::new([0.0; JOINTS]);
        let mut rng = SplitMix(i as u64 ^ 0xDA27);
        reach(
            robot,
            task,
            &mut |obs| {
                let c = expert.command(&obs[..JOINTS], [obs[2 * JOINTS], obs[2 * JOINTS + 1]]);
                clean.set(c);
                c.iter().map(|v| v + noise * (rng.unit() * 2.0 - 1.0)).collect()
            },
            &mut |k, obs, _| {
                let cmd = clean.get();
                let at = start + k as u64 * period;
                let js = joint_state(&obs[..JOINTS], &obs[JOINTS..2 * JOINTS], at);
                let goal = [obs[2 * JOINTS], obs[2 * JOINTS + 1]];
                let mut written = put(0, at, cdr::encode(&js)).and_then(|_| put(1, at, cdr::encode(&target(goal))));
                if let Some(lens) = &lens {
                    // The camera sees the true angles: the measured ones less the encoders' bias.
                    let mut q = [0.0; JOINTS];
                    for (j, v) in q.iter_mut().enumerate() {
                        *v = obs[j] - robot.bias[j];
                    }
                    frame.header.stamp = time(at);
                    written = written.and_then(|_| {
                        lens.render(robot, &q, goal, &mut frame.data)
                            .map_err(|source| RecordError::Camera { id: id.clone(), source })?;
                        put(3, at, cdr::encode(&frame))
                    });
                }
                let written = written.and_then(|_| put(2, at + 2_000_000, cdr::encode(&command(&cmd))));
                if let Err(e) = written {
                    failure.get_or_insert(e);
                }
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        files.push(w.finish(&meta).map_err(episode)?);
    }
    Ok(files)
}
