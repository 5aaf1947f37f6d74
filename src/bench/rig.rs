//! A node under test with a second node feeding it over DDS on this host, for the benchmarks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skillgraft::msg::cdr;
use skillgraft::msg::{CompressedImage, Image, RosMessage};
use skillgraft::node::{NodeConfig, RunningNode};
use skillgraft::observe::Extractor;
use skillgraft::ros::args::RosArgs;
use skillgraft::ros::dds::{DdsConfig, DdsTransport};
use skillgraft::ros::transport::{NodeIdentity, Qos, RawPublisher, Transport};
use skillgraft::skill::Skill;
use skillgraft::skill::manifest::ImageInput;

/// The node and its feeder's transport.
pub struct Rig {
    /// The node under test.
    pub node: RunningNode,
    /// The feeder's node.
    pub feeder: DdsTransport,
    /// `name version` of the skill.
    pub skill: String,
    /// The node's transport, described.
    pub backend: String,
    /// The node's resolved configuration.
    pub cfg: NodeConfig,
    /// The skill's observation field maps, with their resolved topics.
    pub inputs: Vec<(Extractor, String)>,
    /// The skill's action field map.
    pub action: Extractor,
    /// The skill's camera inputs, with their resolved topics.
    pub cameras: Vec<(ImageInput, String)>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Rig {
    /// Starts the skill's node with `-p` parameters `params`, and a feeder, on a DDS `domain`
    /// kept on this host.
    pub fn start(skill_dir: &Path, params: &[String], domain: u16) -> Result<Rig, String> {
        let skill = Skill::load(skill_dir).map_err(err)?;
        // The rig publishes no e-stop: the node drives at once unless `params` say otherwise.
        let mut args = vec!["--ros-args".to_string(), "-p".into(), "estop_wait_s:=0.0".into()];
        for p in params {
            args.push("-p".into());
            args.push(p.clone());
        }
        let args = RosArgs::parse(&args, &[], "skillgraft_bench").map_err(err)?;
        let cfg = NodeConfig::new(&skill.manifest, &args).map_err(err)?;
        let id = |name: &str| NodeIdentity { name: name.into(), namespace: "/".into() };
        let dds = DdsConfig::local(domain).map_err(err)?;
        let transport: Arc<dyn Transport> = Arc::new(DdsTransport::new(id("skillgraft_bench"), &dds).map_err(err)?);
        let backend = transport.backend();
        let inputs = skill
            .manifest
            .observations
            .iter()
            .zip(&cfg.observation_topics)
            .map(|(o, t)| (Extractor::new(o), t.clone()))
            .collect();
        let action = Extractor::for_action(&skill.manifest.action);
        let cameras = skill.manifest.images.iter().cloned().zip(cfg.image_topics.iter().cloned()).collect();
        let label = format!("{} {}", skill.manifest.name, skill.manifest.version);
        let node = RunningNode::start(skill, cfg.clone(), transport).map_err(err)?;
        let feeder = DdsTransport::new(id("bench_feeder"), &dds).map_err(err)?;
        Ok(Rig { node, feeder, skill: label, backend, cfg, inputs, action, cameras })
    }

    /// A stream of messages on `topic`, published every `every`-th feeder tick. The first value
    /// of message `n` is `n` (its sequence number, so a reader can count gaps); the rest are
    /// fixed.
    pub fn stream(&self, topic: &str, fields: &Extractor, every: u32) -> Result<Stream, String> {
        let mut values: Vec<f64> = (0..fields.width).map(|k| 0.1 * (k % 5) as f64).collect();
        let fields = fields.clone();
        let publisher = self.feeder.publisher(topic, &fields.type_name, Qos::RELIABLE).map_err(err)?;
        let make = Box::new(move |n: u64| {
            values[0] = n as f64;
            fields.compose(&values).encode().unwrap_or_default()
        });
        Ok(Stream { publisher, make, every: every.max(1), sent: Arc::default() })
    }
}

impl Rig {
    /// A stream of camera frames on `topic`: arm-a at home, as its simulated camera sees it (the
    /// rendering is done once), published every `every`-th feeder tick, for raw image inputs; a
    /// compressed input gets the same frame as a PNG.
    pub fn camera_stream(&self, camera: &ImageInput, topic: &str, every: u32) -> Result<Stream, String> {
        let robot = skillgraft::sim::robot("arm-a").map_err(err)?;
        let mut frame = skillgraft::sim::episodes::camera_image(&robot.camera, 0);
        robot.camera.render(&robot, &robot.home, [0.6, 0.1], &mut frame.data).map_err(err)?;
        let compressed = skillgraft::msg::schema::full_type_name(&camera.msg_type) == CompressedImage::TYPE;
        let bytes = if compressed {
            let png = robot.camera.png(&frame.data, 1).map_err(err)?;
            cdr::encode(&CompressedImage { header: frame.header.clone(), format: "png".into(), data: png })
        } else {
            cdr::encode(&frame)
        }
        .map_err(err)?;
        let type_name = if compressed { CompressedImage::TYPE } else { Image::TYPE };
        let publisher = self.feeder.publisher(topic, type_name, Qos::SENSOR_DATA).map_err(err)?;
        Ok(Stream { publisher, make: Box::new(move |_| bytes.clone()), every: every.max(1), sent: Arc::default() })
    }
}

/// Messages published at a fixed rate.
pub struct Stream {
    publisher: Box<dyn RawPublisher>,
    make: Box<dyn FnMut(u64) -> Vec<u8> + Send>,
    every: u32,
    /// Messages published.
    pub sent: Arc<AtomicU64>,
}

/// Publishes streams at a base rate on a thread of its own, until dropped.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Feeder {
    /// Starts publishing: stream `i` every `streams[i].every` ticks of `base_hz`.
    pub fn start(mut streams: Vec<Stream>, base_hz: f64) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let period = Duration::from_secs_f64(1.0 / base_hz);
            let start = Instant::now();
            let mut k = 0u32;
            while !flag.load(Ordering::Relaxed) {
                for s in streams.iter_mut().filter(|s| k.is_multiple_of(s.every)) {
                    let n = s.sent.load(Ordering::Relaxed);
                    if s.publisher.publish(&(s.make)(n)).is_ok() {
                        s.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                k += 1;
                if let Some(wait) = (start + period * k).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Feeder { stop, thread: Some(thread) }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub use super::until;
