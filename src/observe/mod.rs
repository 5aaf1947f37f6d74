//! From messages to the policy input: field extraction (joints by name, arrays by index), the
//! latest value of each input in a cell the control thread reads without waiting, staleness,
//! and history stacking. Extraction and assembly are plain code, so the recorder pairs
//! demonstrations through exactly what the control loop uses.

pub mod image;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use triple_buffer::{Input, Output, triple_buffer};

use crate::msg::cdr::{self, CdrError};
use crate::msg::schema::{self, Selector};
use crate::msg::*;
use crate::skill::manifest::{ActionOutput, ImageInput, ObservationInput};
use image::{IMAGE_KINDS, ImageError, ImagePipeline};

/// Why a message gave no observation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExtractError {
    /// The bytes are not the topic's type.
    #[error("undecodable message: {0}")]
    Decode(#[from] CdrError),
    /// A joint the manifest lists is not in the message.
    #[error("joint `{0}` is not in the message's names")]
    UnknownJoint(String),
    /// An array is shorter than the selection needs.
    #[error("`{field}` has {len} values, the selection needs {need}")]
    WrongLength {
        /// The field.
        field: String,
        /// Its length.
        len: usize,
        /// Length needed.
        need: usize,
    },
    /// A selected value is NaN or infinite.
    #[error("`{0}` is not finite")]
    NotFinite(String),
}

/// Kinds of extraction failure, for counting.
pub const EXTRACT_KINDS: [&str; 4] = ["decode", "unknown_joint", "wrong_length", "not_finite"];

impl ExtractError {
    /// Index into [`EXTRACT_KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            ExtractError::Decode(_) => 0,
            ExtractError::UnknownJoint(_) => 1,
            ExtractError::WrongLength { .. } => 2,
            ExtractError::NotFinite(_) => 3,
        }
    }
}

/// A decoded message of any type a manifest may name.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyMessage {
    /// std_msgs/msg/Float32MultiArray.
    F32Array(Float32MultiArray),
    /// std_msgs/msg/Float64MultiArray.
    F64Array(Float64MultiArray),
    /// sensor_msgs/msg/JointState.
    JointState(JointState),
    /// sensor_msgs/msg/Imu.
    Imu(Imu),
    /// geometry_msgs/msg/Twist.
    Twist(Twist),
    /// geometry_msgs/msg/Vector3.
    Vector3(Vector3),
    /// geometry_msgs/msg/Point.
    Point(Point),
    /// trajectory_msgs/msg/JointTrajectory.
    JointTrajectory(JointTrajectory),
}

impl AnyMessage {
    /// Decodes CDR bytes as `type_name` (`pkg/msg/Name`).
    pub fn decode(type_name: &str, bytes: &[u8]) -> Result<AnyMessage, CdrError> {
        Ok(match schema::full_type_name(type_name).as_str() {
            Float32MultiArray::TYPE => AnyMessage::F32Array(cdr::decode(bytes, Float32MultiArray::TYPE)?),
            Float64MultiArray::TYPE => AnyMessage::F64Array(cdr::decode(bytes, Float64MultiArray::TYPE)?),
            JointState::TYPE => AnyMessage::JointState(cdr::decode(bytes, JointState::TYPE)?),
            Imu::TYPE => AnyMessage::Imu(cdr::decode(bytes, Imu::TYPE)?),
            Twist::TYPE => AnyMessage::Twist(cdr::decode(bytes, Twist::TYPE)?),
            Vector3::TYPE => AnyMessage::Vector3(cdr::decode(bytes, Vector3::TYPE)?),
            Point::TYPE => AnyMessage::Point(cdr::decode(bytes, Point::TYPE)?),
            JointTrajectory::TYPE => AnyMessage::JointTrajectory(cdr::decode(bytes, JointTrajectory::TYPE)?),
            other => {
                return Err(CdrError::Body { type_name: "a supported type", message: format!("{other} is not one") });
            }
        })
    }

    /// The message as CDR.
    pub fn encode(&self) -> Result<Vec<u8>, CdrError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the message as CDR to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CdrError> {
        match self {
            AnyMessage::F32Array(m) => cdr::encode_into(m, out),
            AnyMessage::F64Array(m) => cdr::encode_into(m, out),
            AnyMessage::JointState(m) => cdr::encode_into(m, out),
            AnyMessage::Imu(m) => cdr::encode_into(m, out),
            AnyMessage::Twist(m) => cdr::encode_into(m, out),
            AnyMessage::Vector3(m) => cdr::encode_into(m, out),
            AnyMessage::Point(m) => cdr::encode_into(m, out),
            AnyMessage::JointTrajectory(m) => cdr::encode_into(m, out),
        }
    }

    fn set_scalar(&mut self, path: &str, v: f64) {
        fn axis(vec: &mut Vector3, a: &str, v: f64) {
            match a {
                "x" => vec.x = v,
                "y" => vec.y = v,
                _ => vec.z = v,
            }
        }
        match self {
            AnyMessage::Point(p) => match path {
                "x" => p.x = v,
                "y" => p.y = v,
                _ => p.z = v,
            },
            AnyMessage::Vector3(m) => axis(m, path, v),
            AnyMessage::Twist(t) => match path.split_once('.') {
                Some(("angular", a)) => axis(&mut t.angular, a, v),
                Some((_, a)) => axis(&mut t.linear, a, v),
                None => {}
            },
            AnyMessage::Imu(m) => match path.split_once('.') {
                Some(("orientation", "x")) => m.orientation.x = v,
                Some(("orientation", "y")) => m.orientation.y = v,
                Some(("orientation", "z")) => m.orientation.z = v,
                Some(("orientation", "w")) => m.orientation.w = v,
                Some(("angular_velocity", a)) => axis(&mut m.angular_velocity, a, v),
                Some(("linear_acceleration", a)) => axis(&mut m.linear_acceleration, a, v),
                _ => {}
            },
            _ => {}
        }
    }

    fn scalar(&self, path: &str) -> Option<f64> {
        let v3 = |v: &Vector3, axis: &str| match axis {
            "x" => Some(v.x),
            "y" => Some(v.y),
            "z" => Some(v.z),
            _ => None,
        };
        match self {
            AnyMessage::Point(p) => v3(&Vector3 { x: p.x, y: p.y, z: p.z }, path),
            AnyMessage::Vector3(v) => v3(v, path),
            AnyMessage::Twist(t) => match path.split_once('.')? {
                ("linear", a) => v3(&t.linear, a),
                ("angular", a) => v3(&t.angular, a),
                _ => None,
            },
            AnyMessage::Imu(m) => match path.split_once('.')? {
                ("orientation", "x") => Some(m.orientation.x),
                ("orientation", "y") => Some(m.orientation.y),
                ("orientation", "z") => Some(m.orientation.z),
                ("orientation", "w") => Some(m.orientation.w),
                ("angular_velocity", a) => v3(&m.angular_velocity, a),
                ("linear_acceleration", a) => v3(&m.linear_acceleration, a),
                _ => None,
            },
            _ => None,
        }
    }
}

/// How to read one observation input's values out of its messages (raw, not normalised).
#[derive(Debug, Clone)]
pub struct Extractor {
    /// The topic's type.
    pub type_name: String,
    selectors: Vec<Selector>,
    joints: Vec<String>,
    /// Number of values.
    pub width: usize,
}

impl Extractor {
    /// The extractor for a (validated) manifest input.
    pub fn new(input: &ObservationInput) -> Extractor {
        Extractor::from_fields(&input.msg_type, &input.fields, &input.joints)
    }

    /// The field map of a (validated) manifest action, to compose action messages.
    pub fn for_action(action: &ActionOutput) -> Extractor {
        Extractor::from_fields(&action.msg_type, &action.fields, &action.joints)
    }

    fn from_fields(msg_type: &str, fields: &[String], joints: &[String]) -> Extractor {
        let schema = schema::schema(msg_type).expect("validated manifests name known types");
        let selectors: Vec<Selector> =
            fields.iter().map(|f| schema.selector(f).expect("validated manifests have valid selectors")).collect();
        let width = selectors.iter().map(|s| s.width(joints.len())).sum();
        Extractor { type_name: schema.name.to_string(), selectors, joints: joints.to_vec(), width }
    }

    /// A message of the input's type that carries `values` (raw, `width` long) where the fields
    /// say: the inverse of [`Extractor::extract`], for simulated robots, peers and benchmarks.
    pub fn compose(&self, values: &[f64]) -> AnyMessage {
        let array_len = self
            .selectors
            .iter()
            .map(|s| if let Selector::Slice { end, .. } = s { *end } else { 0 })
            .max()
            .unwrap_or(0);
        let mut msg = match self.type_name.as_str() {
            Float32MultiArray::TYPE => {
                AnyMessage::F32Array(Float32MultiArray { data: vec![0.0; array_len], ..Default::default() })
            }
            Float64MultiArray::TYPE => {
                AnyMessage::F64Array(Float64MultiArray { data: vec![0.0; array_len], ..Default::default() })
            }
            JointState::TYPE => AnyMessage::JointState(JointState { name: self.joints.clone(), ..Default::default() }),
            JointTrajectory::TYPE => AnyMessage::JointTrajectory(JointTrajectory {
                joint_names: self.joints.clone(),
                points: vec![JointTrajectoryPoint::default()],
                ..Default::default()
            }),
            Imu::TYPE => AnyMessage::Imu(Imu::default()),
            Twist::TYPE => AnyMessage::Twist(Twist::default()),
            Vector3::TYPE => AnyMessage::Vector3(Vector3::default()),
            _ => AnyMessage::Point(Point::default()),
        };
        let mut k = 0;
        for sel in &self.selectors {
            match sel {
                Selector::Scalar(path) => {
                    msg.set_scalar(path, values[k]);
                    k += 1;
                }
                Selector::Slice { start, end, .. } => {
                    for i in *start..*end {
                        match &mut msg {
                            AnyMessage::F64Array(m) => m.data[i] = values[k],
                            AnyMessage::F32Array(m) => m.data[i] = values[k] as f32,
                            _ => {}
                        }
                        k += 1;
                    }
                }
                Selector::PerJoint(field) => {
                    let n = self.joints.len();
                    let target = match &mut msg {
                        AnyMessage::JointState(m) => Some(match field.as_str() {
                            "position" => &mut m.position,
                            "velocity" => &mut m.velocity,
                            _ => &mut m.effort,
                        }),
                        AnyMessage::JointTrajectory(m) => {
                            let p = &mut m.points[0];
                            Some(match field.as_str() {
                                "positions" => &mut p.positions,
                                "velocities" => &mut p.velocities,
                                "accelerations" => &mut p.accelerations,
                                _ => &mut p.effort,
                            })
                        }
                        _ => None,
                    };
                    if let Some(target) = target {
                        target.extend_from_slice(&values[k..k + n]);
                    }
                    k += n;
                }
            }
        }
        msg
    }

    /// Decodes a message and writes its values into `out` (`width` long).
    pub fn extract_cdr(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), ExtractError> {
        let msg = AnyMessage::decode(&self.type_name, bytes)?;
        self.extract(&msg, out)
    }

    /// Writes the selected values of `msg` into `out` (`width` long).
    pub fn extract(&self, msg: &AnyMessage, out: &mut [f32]) -> Result<(), ExtractError> {
        let mut k = 0;
        for sel in &self.selectors {
            match sel {
                Selector::Scalar(path) => {
                    let v = msg.scalar(path).unwrap_or(f64::NAN);
                    out[k] = finite(v, || path.clone())?;
                    k += 1;
                }
                Selector::Slice { field, start, end } => {
                    let len = array_len(msg);
                    if *end > len {
                        return Err(ExtractError::WrongLength { field: field.clone(), len, need: *end });
                    }
                    for i in *start..*end {
                        let v = match msg {
                            AnyMessage::F64Array(m) => m.data[i],
                            AnyMessage::F32Array(m) => m.data[i] as f64,
                            _ => f64::NAN,
                        };
                        out[k] = finite(v, || format!("{field}[{i}]"))?;
                        k += 1;
                    }
                }
                Selector::PerJoint(field) => {
                    let (names, values) = per_joint(msg, field);
                    if values.len() != names.len() {
                        return Err(ExtractError::WrongLength {
                            field: field.clone(),
                            len: values.len(),
                            need: names.len(),
                        });
                    }
                    for j in &self.joints {
                        let i =
                            names.iter().position(|n| n == j).ok_or_else(|| ExtractError::UnknownJoint(j.clone()))?;
                        out[k] = finite(values[i], || format!("{field}[{j}]"))?;
                        k += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

fn finite(v: f64, label: impl FnOnce() -> String) -> Result<f32, ExtractError> {
    let x = v as f32;
    if x.is_finite() { Ok(x) } else { Err(ExtractError::NotFinite(label())) }
}

fn array_len(msg: &AnyMessage) -> usize {
    match msg {
        AnyMessage::F64Array(m) => m.data.len(),
        AnyMessage::F32Array(m) => m.data.len(),
        _ => 0,
    }
}

fn per_joint<'a>(msg: &'a AnyMessage, field: &str) -> (&'a [String], &'a [f64]) {
    match msg {
        AnyMessage::JointState(m) => {
            let v = match field {
                "position" => &m.position,
                "velocity" => &m.velocity,
                _ => &m.effort,
            };
            (&m.name, v)
        }
        AnyMessage::JointTrajectory(m) => {
            let Some(p) = m.points.first() else {
                return (&m.joint_names, &[]);
            };
            let v = match field {
                "positions" => &p.positions,
                "velocities" => &p.velocities,
                "accelerations" => &p.accelerations,
                _ => &p.effort,
            };
            (&m.joint_names, v)
        }
        _ => (&[], &[]),
    }
}

/// The latest values of one input and when they arrived.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Raw values.
    pub values: Vec<f32>,
    /// Arrival time; None until the first message.
    pub arrived: Option<Instant>,
}

/// Counters of one input, shared with diagnostics.
#[derive(Debug)]
pub struct InputStats {
    /// Messages that gave values.
    pub accepted: AtomicU64,
    /// Names of the kinds of rejection ([`EXTRACT_KINDS`] or, for images, [`IMAGE_KINDS`]).
    pub kinds: &'static [&'static str],
    /// Messages rejected, by kind.
    pub rejected: Box<[AtomicU64]>,
    /// Arrival of the last accepted message, ns since the node's epoch (0: none yet).
    pub last_ns: AtomicU64,
}

impl InputStats {
    /// Zeroed counters for these kinds of rejection.
    pub fn new(kinds: &'static [&'static str]) -> InputStats {
        InputStats {
            accepted: AtomicU64::new(0),
            kinds,
            rejected: kinds.iter().map(|_| AtomicU64::new(0)).collect(),
            last_ns: AtomicU64::new(0),
        }
    }

    fn accept(&self, arrived: Instant, epoch: Instant) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let ns = arrived.saturating_duration_since(epoch).as_nanos() as u64;
        self.last_ns.store(ns.max(1), Ordering::Relaxed);
    }

    fn reject(&self, kind: usize, topic: &str, e: &dyn std::fmt::Display) {
        if self.rejected[kind].fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(topic = %topic, "observation rejected ({}): {e}; further ones of this kind are only counted", self.kinds[kind]);
        }
    }
}

/// What turns one message of an input into its values: field extraction for numbers, decoding and
/// preprocessing for a camera.
pub trait Decode: Send {
    /// Why a message gave no values.
    type Error: std::fmt::Display;
    /// Writes the message's values into `out` (the input's width), or leaves it untouched.
    fn decode(&mut self, bytes: &[u8], out: &mut [f32]) -> Result<(), Self::Error>;
    /// Index of the error's kind among the input's [`InputStats::kinds`].
    fn kind(e: &Self::Error) -> usize;
}

impl Decode for Extractor {
    type Error = ExtractError;
    fn decode(&mut self, bytes: &[u8], out: &mut [f32]) -> Result<(), ExtractError> {
        self.extract_cdr(bytes, out)
    }
    fn kind(e: &ExtractError) -> usize {
        e.kind()
    }
}

impl Decode for ImagePipeline {
    type Error = ImageError;
    fn decode(&mut self, bytes: &[u8], out: &mut [f32]) -> Result<(), ImageError> {
        self.process_cdr(bytes, out)
    }
    fn kind(e: &ImageError) -> usize {
        e.kind()
    }
}

/// The subscription side of one input: decodes each message and publishes it to the cell.
pub struct Writer<D> {
    decoder: D,
    cell: Input<Reading>,
    /// Counters.
    pub stats: Arc<InputStats>,
    epoch: Instant,
    topic: String,
}

/// The subscription side of a numeric input.
pub type InputWriter = Writer<Extractor>;
/// The subscription side of a camera input: frames are decoded and preprocessed into the model's
/// tensor here, off the control thread.
pub type ImageWriter = Writer<ImagePipeline>;

impl<D: Decode> Writer<D> {
    /// Handles one message: on success the control thread sees it at its next tick; on failure
    /// the cell keeps its previous value (which goes stale) and the failure is counted and, the
    /// first time of each kind, logged with the topic.
    pub fn on_message(&mut self, bytes: &[u8], arrived: Instant) -> Result<(), D::Error> {
        let buf = self.cell.input_buffer_mut();
        match self.decoder.decode(bytes, &mut buf.values) {
            Ok(()) => {
                buf.arrived = Some(arrived);
                self.cell.publish();
                self.stats.accept(arrived, self.epoch);
                Ok(())
            }
            Err(e) => {
                self.stats.reject(D::kind(&e), &self.topic, &e);
                Err(e)
            }
        }
    }
}

/// Why the inputs cannot form an observation this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NotReady {
    /// Input `input` has no message younger than its max age (`age` None: none ever).
    Stale {
        /// Index of the input.
        input: usize,
        /// Age of its last message.
        age: Option<Duration>,
    },
    /// Fresh, but fewer frames than the history needs since the inputs became fresh.
    Filling,
}

/// The control-thread side: latest values of every input, stacked into the policy input.
pub struct Assembler {
    readers: Vec<Output<Reading>>,
    images: Vec<Output<Reading>>,
    image_max_age: Vec<Duration>,
    offsets: Vec<usize>,
    max_age: Vec<Duration>,
    frame_width: usize,
    history: usize,
    frames: Vec<f32>,
    peeked: Vec<f32>,
    filled: usize,
}

impl Assembler {
    /// The policy input width (frames times history).
    pub fn width(&self) -> usize {
        self.frames.len()
    }

    /// Ages of every input's last message at `now`, the numeric inputs then the images (None:
    /// none yet).
    pub fn ages(&mut self, now: Instant) -> impl Iterator<Item = Option<Duration>> + '_ {
        self.readers
            .iter_mut()
            .chain(self.images.iter_mut())
            .map(move |r| r.read().arrived.map(|t| now.saturating_duration_since(t)))
    }

    /// The latest tensor of image input `i`, as the last `tick` or `peek` checked it.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i].output_buffer().values
    }

    /// When the latest tensor of image input `i` arrived.
    pub fn image_arrived(&self, i: usize) -> Option<Instant> {
        self.images[i].output_buffer().arrived
    }

    /// Number of image inputs.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Takes each image's latest tensor; the first stale one is the error. Images are not stacked
    /// into the history: a policy sees the latest frame.
    fn fresh_images(&mut self, now: Instant) -> Result<(), NotReady> {
        let n = self.readers.len();
        for (i, r) in self.images.iter_mut().enumerate() {
            let age = r.read().arrived.map(|t| now.saturating_duration_since(t));
            if age.is_none_or(|a| a > self.image_max_age[i]) {
                return Err(NotReady::Stale { input: n + i, age });
            }
        }
        Ok(())
    }

    /// The stacked input as a tick at `now` would see it, without committing a frame: the last
    /// `history - 1` ticks' frames and every input's latest values at `now`. Pairs a
    /// demonstration action with the observation current when it arrived.
    pub fn peek(&mut self, now: Instant) -> Result<&[f32], NotReady> {
        let w = self.frame_width;
        let newest = self.frames.len() - w;
        for (i, r) in self.readers.iter_mut().enumerate() {
            let reading = r.read();
            let age = reading.arrived.map(|t| now.saturating_duration_since(t));
            if age.is_none_or(|a| a > self.max_age[i]) {
                return Err(NotReady::Stale { input: i, age });
            }
            let at = newest + self.offsets[i];
            self.peeked[at..at + reading.values.len()].copy_from_slice(&reading.values);
        }
        self.fresh_images(now)?;
        if self.filled + 1 < self.history {
            return Err(NotReady::Filling);
        }
        self.peeked[..newest].copy_from_slice(&self.frames[w..]);
        Ok(&self.peeked)
    }

    /// Reads every input's latest values as the newest frame and returns the stacked input
    /// (oldest frame first), raw (not normalised). Allocates nothing.
    pub fn tick(&mut self, now: Instant) -> Result<&[f32], NotReady> {
        let w = self.frame_width;
        self.frames.copy_within(w.., 0);
        let newest = self.frames.len() - w;
        for (i, r) in self.readers.iter_mut().enumerate() {
            let reading = r.read();
            let age = reading.arrived.map(|t| now.saturating_duration_since(t));
            if age.is_none_or(|a| a > self.max_age[i]) {
                self.filled = 0;
                return Err(NotReady::Stale { input: i, age });
            }
            let at = newest + self.offsets[i];
            self.frames[at..at + reading.values.len()].copy_from_slice(&reading.values);
        }
        if let Err(e) = self.fresh_images(now) {
            self.filled = 0;
            return Err(e);
        }
        self.filled = (self.filled + 1).min(self.history);
        if self.filled < self.history {
            return Err(NotReady::Filling);
        }
        Ok(&self.frames)
    }
}

/// The subscription side and the control-thread side of a manifest's inputs.
pub struct Observer {
    /// One per numeric input, for its subscription.
    pub writers: Vec<InputWriter>,
    /// One per camera input, for its subscription.
    pub image_writers: Vec<ImageWriter>,
    /// For the control thread (or the dataset's replay).
    pub assembler: Assembler,
}

/// Writers (one per input, for the subscriptions) and the assembler (for the control thread)
/// of a manifest's numeric and camera inputs. `epoch` is the node's clock origin for the
/// counters.
pub fn observer(inputs: &[ObservationInput], cameras: &[ImageInput], history: usize, epoch: Instant) -> Observer {
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut offsets = Vec::new();
    let mut max_age = Vec::new();
    let mut offset = 0;
    for input in inputs {
        let extractor = Extractor::new(input);
        let (cell, reader) = triple_buffer(&Reading { values: vec![0.0; extractor.width], arrived: None });
        offsets.push(offset);
        offset += extractor.width;
        max_age.push(Duration::from_secs_f64(input.max_age_ms / 1000.0));
        let stats = Arc::new(InputStats::new(&EXTRACT_KINDS));
        writers.push(Writer { decoder: extractor, cell, stats, epoch, topic: input.topic.clone() });
        readers.push(reader);
    }
    let mut image_writers = Vec::new();
    let mut images = Vec::new();
    for camera in cameras {
        let (cell, reader) = triple_buffer(&Reading { values: vec![0.0; camera.tensor_len()], arrived: None });
        let stats = Arc::new(InputStats::new(&IMAGE_KINDS));
        let pipeline = ImagePipeline::new(camera);
        image_writers.push(Writer { decoder: pipeline, cell, stats, epoch, topic: camera.topic.clone() });
        images.push(reader);
    }
    let assembler = Assembler {
        readers,
        images,
        image_max_age: cameras.iter().map(|c| Duration::from_secs_f64(c.max_age_ms / 1000.0)).collect(),
        offsets,
        max_age,
        frame_width: offset,
        history,
        frames: vec![0.0; offset * history],
        peeked: vec![0.0; offset * history],
        filled: 0,
    };
    Observer { writers, image_writers, assembler }
}

/// Why an image file gave no tensor for `skillgraft step --image`.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// The file could not be read.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// The file is not a PNG or JPEG the decoder reads.
    #[error("{}: not a PNG or JPEG image: {message}", path.display())]
    Decode {
        /// The file.
        path: std::path::PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The image does not fit the camera input (encoding, size).
    #[error("{}: {source}", path.display())]
    Image {
        /// The file.
        path: std::path::PathBuf,
        /// What the preprocessing refused.
        source: ImageError,
    },
}

/// The tensor a camera input would give for the picture in a PNG or JPEG file: decoded to rgb8,
/// mono8 or 16UC1 as the file holds, then through the input's preprocessing as a camera frame.
pub fn image_file_tensor(input: &ImageInput, path: &std::path::Path) -> Result<Vec<f32>, ImageFileError> {
    use ::image::DynamicImage;
    let bytes = std::fs::read(path).map_err(crate::file::FileError::at("read the image", path))?;
    let decoded = ::image::load_from_memory(&bytes)
        .map_err(|e| ImageFileError::Decode { path: path.to_path_buf(), message: e.to_string() })?;
    let (width, height) = (decoded.width(), decoded.height());
    let (encoding, data, bpp) = match decoded {
        DynamicImage::ImageLuma8(g) => ("mono8", g.into_raw(), 1),
        DynamicImage::ImageLuma16(g) => ("16UC1", g.into_raw().iter().flat_map(|v| v.to_le_bytes()).collect(), 2),
        other => ("rgb8", other.into_rgb8().into_raw(), 3),
    };
    let msg = crate::msg::Image {
        header: Default::default(),
        height,
        width,
        encoding: encoding.into(),
        is_bigendian: 0,
        step: width * bpp,
        data,
    };
    let camera = ImageInput { msg_type: crate::msg::Image::TYPE.into(), encodings: vec![], ..input.clone() };
    let mut out = vec![0.0; camera.tensor_len()];
    let cdr = cdr::encode(&msg)
        .map_err(|e| ImageFileError::Image { path: path.to_path_buf(), source: ImageError::Decode(e) })?;
    ImagePipeline::new(&camera)
        .process_cdr(&cdr, &mut out)
        .map_err(|source| ImageFileError::Image { path: path.to_path_buf(), source })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skill::manifest::ObservationInput;

    fn input(msg_type: &str, fields: &[&str], joints: &[&str], max_age_ms: f64) -> ObservationInput {
        let schema = schema::schema(msg_type).unwrap();
        let width: usize = fields.iter().map(|f| schema.selector(f).unwrap().width(joints.len())).sum();
        ObservationInput {
            topic: "/t".into(),
            msg_type: msg_type.into(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
            joints: joints.iter().map(|s| s.to_string()).collect(),
            mean: vec![0.0; width],
            std: vec![1.0; width],
            max_age_ms,
        }
    }

    fn js(names: &[&str], position: &[f64], velocity: &[f64]) -> Vec<u8> {
        cdr::encode(&JointState {
            name: names.iter().map(|s| s.to_string()).collect(),
            position: position.to_vec(),
            velocity: velocity.to_vec(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn joints_are_taken_by_name_in_manifest_order() {
        let e = Extractor::new(&input(JointState::TYPE, &["position", "velocity"], &["elbow", "shoulder"], 50.0));
        let mut out = [0.0; 4];
        e.extract_cdr(&js(&["shoulder", "wrist", "elbow"], &[1.0, 2.0, 3.0], &[0.1, 0.2, 0.3]), &mut out).unwrap();
        assert_eq!(out, [3.0, 1.0, 0.3, 0.1]);
        let err = e.extract_cdr(&js(&["shoulder"], &[1.0], &[0.1]), &mut out).unwrap_err();
        assert_eq!(err, ExtractError::UnknownJoint("elbow".into()));
        let err = e.extract_cdr(&js(&["shoulder", "elbow"], &[1.0, 2.0], &[0.1]), &mut out).unwrap_err();
        assert!(matches!(err, ExtractError::WrongLength { .. }), "{err}");
        let err = e.extract_cdr(&js(&["shoulder", "elbow"], &[1.0, f64::NAN], &[0.1, 0.2]), &mut out).unwrap_err();
        assert_eq!(err, ExtractError::NotFinite("position[elbow]".into()));
        assert_eq!(e.extract_cdr(&[0, 1, 0, 0, 1], &mut out).unwrap_err().kind(), 0);
    }

    #[test]
    fn compose_is_the_inverse_of_extract() {
        for inp in [
            input(JointState::TYPE, &["velocity", "position"], &["a", "b", "c"], 50.0),
            input(Float32MultiArray::TYPE, &["data[3..5]", "data[0]"], &[], 50.0),
            input(Imu::TYPE, &["orientation.w", "angular_velocity.y", "linear_acceleration.x"], &[], 50.0),
            input(Twist::TYPE, &["angular.z", "linear.y"], &[], 50.0),
            input(Point::TYPE, &["z", "x"], &[], 50.0),
        ] {
            let e = Extractor::new(&inp);
            let values: Vec<f64> = (0..e.width).map(|i| i as f64 * 0.5 - 1.0).collect();
            let mut out = vec![0.0; e.width];
            e.extract_cdr(&e.compose(&values).encode().unwrap(), &mut out).unwrap();
            assert_eq!(out.iter().map(|&v| v as f64).collect::<Vec<_>>(), values, "{}", e.type_name);
        }
    }

    #[test]
    fn arrays_slices_and_scalars() {
        let e = Extractor::new(&input(Float64MultiArray::TYPE, &["data[1..3]", "data[0]"], &[], 50.0));
        let mut out = [0.0; 3];
        let m = Float64MultiArray { data: vec![5.0, 6.0, 7.0], ..Default::default() };
        e.extract_cdr(&cdr::encode(&m).unwrap(), &mut out).unwrap();
        assert_eq!(out, [6.0, 7.0, 5.0]);
        let short = Float64MultiArray { data: vec![5.0, 6.0], ..Default::default() };
        let err = e.extract_cdr(&cdr::encode(&short).unwrap(), &mut out).unwrap_err();
        assert_eq!(err, ExtractError::WrongLength { field: "data".into(), len: 2, need: 3 });
        let t = Extractor::new(&input(Twist::TYPE, &["angular.z", "linear.x"], &[], 50.0));
        let mut out = [0.0; 2];
        let tw = Twist { linear: Vector3 { x: 0.5, y: 0.0, z: 0.0 }, angular: Vector3 { x: 0.0, y: 0.0, z: -1.0 } };
        t.extract_cdr(&cdr::encode(&tw).unwrap(), &mut out).unwrap();
        assert_eq!(out, [-1.0, 0.5]);
        let imu = Extractor::new(&input(Imu::TYPE, &["orientation.w", "linear_acceleration.z"], &[], 50.0));
        let m = Imu { linear_acceleration: Vector3 { x: 0.0, y: 0.0, z: 9.81 }, ..Default::default() };
        imu.extract_cdr(&cdr::encode(&m).unwrap(), &mut out).unwrap();
        assert_eq!(out, [1.0, 9.81]);
    }

    #[test]
    fn assembler_stacks_history_oldest_first_and_reports_staleness() {
        let epoch = Instant::now();
        let inputs = [input(Point::TYPE, &["x"], &[], 100.0), input(Vector3::TYPE, &["y"], &[], 100.0)];
        let Observer { mut writers, assembler: mut a, .. } = observer(&inputs, &[], 2, epoch);
        let t0 = Instant::now();
        assert_eq!(a.tick(t0), Err(NotReady::Stale { input: 0, age: None }));
        let point = |x: f64| cdr::encode(&Point { x, y: 0.0, z: 0.0 }).unwrap();
        let vec3 = |y: f64| cdr::encode(&Vector3 { x: 0.0, y, z: 0.0 }).unwrap();
        writers[0].on_message(&point(1.0), t0).unwrap();
        writers[1].on_message(&vec3(10.0), t0).unwrap();
        assert_eq!(a.tick(t0), Err(NotReady::Filling));
        writers[0].on_message(&point(2.0), t0).unwrap();
        assert_eq!(a.tick(t0).unwrap(), &[1.0, 10.0, 2.0, 10.0]);
        let late = t0 + Duration::from_millis(150);
        assert!(matches!(a.tick(late), Err(NotReady::Stale { input: 0, age: Some(_) })));
        writers[0].on_message(&point(3.0), late).unwrap();
        writers[1].on_message(&vec3(20.0), late).unwrap();
        assert_eq!(a.tick(late), Err(NotReady::Filling), "history restarts after a stale input");
        assert_eq!(a.tick(late).unwrap(), &[3.0, 20.0, 3.0, 20.0]);
        writers[0].on_message(&point(4.0), late).unwrap();
        assert_eq!(a.peek(late).unwrap(), &[3.0, 20.0, 4.0, 20.0], "peek sees the newest value");
        assert_eq!(a.tick(late).unwrap(), &[3.0, 20.0, 4.0, 20.0], "and does not commit it");
        assert!(writers[0].on_message(&[1, 2, 3, 4, 5], late).is_err());
        assert_eq!(writers[0].stats.rejected[0].load(Ordering::Relaxed), 1);
        assert_eq!(writers[0].stats.accepted.load(Ordering::Relaxed), 4);
    }
}
